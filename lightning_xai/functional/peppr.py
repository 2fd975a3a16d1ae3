"""PEPPR: Progressive Erasing Plus Progressive Restoration of pixels ranked by a global map.

Engelmann, Storkey and Bernabeu, "Global explainability in aligned image modalities" (arXiv:2112.09591, 2021)
validate a global map with PEPPR. Only the name and purpose are public; this is the project's documented
reconstruction (METHODS.md, section 1), with these choices:

- **One ranking for all images.** Images are aligned, so the global map's pixels, sorted from most to least
  important, give one ranking shared by every image. A per-label map ``(L, 1, H, W)`` gives one ranking per label
  and each image uses the ranking of its own label. Ties are broken in raster order (stable sort), all channels
  of a pixel go together.
- **Steps.** ``steps + 1`` points, erasing ``n_k = floor(k * H * W / steps)`` pixels at point ``k = 0..steps``; the
  curves' x values are the fractions ``n_k / (H * W)`` actually erased, from 0 to 1.
- **Erasing** sets the ``n_k`` top-ranked pixels to ``baseline`` (default 0, the mean in normalised space);
  **restoration** starts from the fully erased image and puts the ``n_k`` top-ranked pixels back.
- **Performance** is measured per image as the score of its label (the head's probability by default: softmax
  for a multi-class head, sigmoid for a single-logit head; ``score="sigmoid"`` gives the per-label sigmoid scores
  of a multi-label head, the global-explanations paper's setting) and as accuracy (``argmax == label`` for a
  softmax head, ``logit > 0`` for a sigmoid head), averaged over images. For multi-label data, pass one row per
  (image, positive label) pair with that label and ``score="sigmoid"``; the global map ranking of each row is
  then that label's. The model is not fine-tuned on erased images.
- **Summary.** Each curve is summarised by its area (trapezoid rule over the fractions). A faithful global map
  gives a low erasing AUC (performance falls fast) and a high restoration AUC (a few pixels recover it). "Plus"
  is read as *both* curves; ``peppr = restoration_auc - erasing_auc`` combines them into one number (higher is
  better). The same curves for a seeded random ranking (one random permutation shared by all images) are the
  reference a faithful map must beat.

The curve states are sums over images, so memory is ``O(steps)`` whatever the number of images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_finite, check_image_batch, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import (
    SCORE_KINDS,
    ScoreKind,
    check_class_range,
    check_target,
    predicted_correct,
    target_scores,
)
from lightning_xai.functional.perturbation_curves import perturbed_chunk
from lightning_xai.functional.ranking import rank_positions

DIRECTIONS: tuple[str, str] = ("erasing", "restoration")


def global_map_ranks(global_map: Tensor) -> Tensor:
    """Rank position of every pixel under a global map, 0 for the most important, shape ``(R, H * W)``.

    Args:
        global_map: ``(H, W)``, ``(1, H, W)`` (one ranking, ``R = 1``) or per-label ``(L, 1, H, W)`` (``R = L``).

    Example:
        >>> import torch
        >>> global_map_ranks(torch.tensor([[0.1, 0.9], [0.5, 0.5]]))
        tensor([[3, 0, 1, 2]])
    """
    if not isinstance(global_map, Tensor):
        raise TypeError(
            f"`global_map` must be a torch.Tensor of shape (H, W), (1, H, W) or (L, 1, H, W), got "
            f"{type(global_map).__name__}."
        )
    shape = tuple(global_map.shape)
    if global_map.ndim == 2 or (global_map.ndim == 3 and shape[0] == 1):
        flat = global_map.reshape(1, -1)
    elif global_map.ndim == 4 and shape[1] == 1:
        flat = global_map.flatten(1)
    else:
        raise ValueError(f"`global_map` must have shape (H, W), (1, H, W) or per-label (L, 1, H, W), got {shape}.")
    if flat.numel() == 0 or not global_map.is_floating_point():
        raise ValueError(f"`global_map` must be a non-empty floating-point map, got {global_map.dtype}, shape {shape}.")
    check_finite(flat, "global_map")
    return rank_positions(flat)


def random_ranks(num_pixels: int, seed: int = 0) -> Tensor:
    """Rank positions ``(1, num_pixels)`` of one random pixel order drawn from a local generator seeded by ``seed``.

    Example:
        >>> random_ranks(4, seed=0).shape
        torch.Size([1, 4])
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_pixels, generator=generator)
    return torch.empty_like(order).scatter_(0, order, torch.arange(num_pixels)).view(1, -1)


def erased_counts(num_pixels: int, steps: int) -> Tensor:
    """How many pixels are erased at each of the ``steps + 1`` points: ``floor(k * num_pixels / steps)``.

    Example:
        >>> erased_counts(10, 4)
        tensor([ 0,  2,  5,  7, 10])
    """
    check_positive_int(steps, "steps")
    return torch.arange(steps + 1, dtype=torch.long) * num_pixels // steps


def _peppr_update(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    ranks: Tensor,
    counts: Tensor,
    baseline: Tensor,
    batch_size: ChunkSize,
    score: ScoreKind = "probability",
) -> Tensor:
    """Per-image erasing and restoration curves, shape ``(B, 2, 2, steps + 1)`` in float64.

    Axis 1 is the direction (erasing, restoration), axis 1 the measure (label score, accuracy). Call it under
    :func:`~lightning_xai._model_state.explanation_mode` without autograd.

    Args:
        model: the classifier, outputs ``(B, num_classes)``.
        inputs: images ``(B, C, H, W)``.
        labels: class indices ``(B,)`` on the inputs' device.
        ranks: rank positions ``(R, H * W)``; ``R = 1`` (shared) or one row per label (row ``labels[i]`` is used).
        counts: pixels erased at each point, ``(steps + 1,)``, on the inputs' device.
        baseline: the erased value, broadcastable to ``(C, H, W)``, on the inputs' device.
        batch_size: how many perturbed images are scored at once.
        score: ``"probability"`` (softmax; sigmoid for a single-logit head), ``"softmax"``, ``"sigmoid"``,
            ``"logit"`` or ``"log_probability"`` of the label (:func:`lightning_xai._targets.class_scores`).
    """
    batch, points = inputs.shape[0], counts.shape[0]
    sample_ranks = ranks.expand(batch, -1) if ranks.shape[0] == 1 else ranks[labels]
    repeated_labels = labels.repeat_interleave(points)

    def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
        outputs = model(chunk)
        chunk_labels = repeated_labels[start:stop]
        check_class_range(outputs, chunk_labels, "labels")
        scores = target_scores(outputs, chunk_labels, score, "labels")
        correct = predicted_correct(outputs, chunk_labels, score).to(scores.dtype)
        return torch.stack([scores, correct], dim=1).to(torch.float64)

    erased = baseline.expand_as(inputs)
    sums = []
    for direction in DIRECTIONS:
        # erasing replaces the top-ranked pixels of the image by the baseline; restoration puts them back into it
        start_images, replacement = (inputs, erased) if direction == "erasing" else (erased, inputs)

        def make_inputs(start: int, stop: int, first: Tensor = start_images, second: Tensor = replacement) -> Tensor:
            return perturbed_chunk(first, second, sample_ranks, counts, start, stop)

        values = score_in_chunks(forward, make_inputs, batch * points, batch_size, model=model, like=inputs)
        sums.append(values.view(batch, points, 2).transpose(1, 2))
    return torch.stack(sums, dim=1)


def expand_multi_hot(inputs: Tensor, labels: Tensor, score: ScoreKind) -> tuple[Tensor, Tensor, ScoreKind]:
    """One row per (image, positive label) pair of multi-hot ``labels`` ``(B, L)``; class indices pass through.

    With multi-hot labels the head is a multi-label one, so ``score="probability"`` becomes the per-label
    ``"sigmoid"`` (the global-explanations paper's setting); ``"log_probability"`` is refused as ambiguous.

    Returns:
        ``(inputs (P, C, H, W), labels (P,), score)``.
    """
    if labels.ndim != 2:
        return inputs, labels, score
    if labels.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"A multi-label `labels` must have shape (B, L) with B = {inputs.shape[0]}, got {tuple(labels.shape)}."
        )
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("A multi-label `labels` (B, L) must hold only 0 and 1 (or booleans).")
    if score == "log_probability":
        raise ValueError(
            "`score='log_probability'` is ambiguous for multi-hot `labels`; pass score='sigmoid' (per-label "
            "probabilities) or 'logit'."
        )
    image, label = labels.nonzero(as_tuple=True)
    return inputs[image], label, ("sigmoid" if score == "probability" else score)


def _peppr_compute(curve_sums: Tensor, count: Tensor, counts: Tensor, num_pixels: int) -> dict[str, Tensor]:
    """Mean curves, their areas and ``peppr`` from the summed curves ``(2 rankings, 2 directions, 2 measures, S)``.

    Ranking 0 is the global map's, ranking 1 the random one. See :func:`peppr` for the keys.
    """
    fractions = counts.to(torch.float64) / num_pixels
    means = curve_sums / count.clamp(min=1)
    result: dict[str, Tensor] = {"fractions": fractions.to(torch.float32)}
    for ranking, prefix in enumerate(("", "random_")):
        for direction_index, direction in enumerate(DIRECTIONS):
            for measure, suffix in enumerate(("", "_accuracy")):
                curve = means[ranking, direction_index, measure]
                result[f"{prefix}{direction}{suffix}_curve"] = curve.to(torch.float32)
                result[f"{prefix}{direction}{suffix}_auc"] = torch.trapezoid(curve, fractions).to(torch.float32)
        result[f"{prefix}peppr"] = result[f"{prefix}restoration_auc"] - result[f"{prefix}erasing_auc"]
    return result


def check_peppr_batch(inputs: Tensor, labels: Tensor, ranks: Tensor, image_size: tuple[int, int]) -> None:
    """Raise unless ``inputs`` match the global map's ``image_size`` and ``labels`` index its rankings."""
    check_image_batch(inputs, method="PEPPR")
    check_finite(inputs, "inputs")
    check_target(labels, inputs.shape[0], "labels")
    if tuple(inputs.shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"`inputs` must have the global map's spatial size {tuple(image_size)}, got shape {tuple(inputs.shape)}."
        )
    if ranks.shape[0] > 1 and int(labels.max()) >= ranks.shape[0]:
        raise ValueError(
            f"`labels` holds class index {int(labels.max())}, but the per-label global map has "
            f"{ranks.shape[0]} labels (valid indices 0..{ranks.shape[0] - 1})."
        )


def baseline_tensor(baseline: float | Tensor, inputs: Tensor) -> Tensor:
    """The erased value as a tensor on the inputs' device, broadcastable to one image ``(C, H, W)``."""
    if isinstance(baseline, Tensor):
        value = baseline.to(device=inputs.device, dtype=inputs.dtype)
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        value = torch.tensor(float(baseline), device=inputs.device, dtype=inputs.dtype)
    else:
        raise TypeError(f"`baseline` must be a number or a tensor broadcastable to (C, H, W), got {baseline!r}.")
    try:
        fits = torch.broadcast_shapes(value.shape, inputs.shape[1:]) == inputs.shape[1:]
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"`baseline` of shape {tuple(value.shape)} does not broadcast to the images' (C, H, W) = "
            f"{tuple(inputs.shape[1:])}."
        )
    return value


def peppr(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    global_map: Tensor,
    steps: int = 20,
    baseline: float | Tensor = 0.0,
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    score: ScoreKind = "probability",
) -> dict[str, Tensor]:
    """PEPPR curves of one batch of aligned images under one global map (reconstruction; see the module docstring).

    Args:
        model: the classifier, outputs ``(B, num_classes)``; run in eval mode without autograd, restored after.
        inputs: aligned images ``(B, C, H, W)``.
        labels: class indices ``(B,)``, each image's curves following the score of its label; or multi-hot
            ``(B, L)`` 0/1 labels, each (image, positive label) pair then counting as one row, scored by that label's
            sigmoid (``score="probability"`` means ``"sigmoid"`` here) and ranked by that label's map when the
            global map is per-label; per-label AUCs are added to the result.
        global_map: ``(H, W)``, ``(1, H, W)`` or per-label ``(L, 1, H, W)``.
        steps: the number of erasing steps (``steps + 1`` points).
        baseline: the erased value, a number or a tensor broadcastable to ``(C, H, W)``.
        batch_size: how many perturbed images are scored at once.
        seed: seed of the random reference ranking.
        score: ``"probability"`` (softmax; sigmoid for a single-logit head), ``"softmax"``, ``"sigmoid"``
            (per-label, multi-label heads), ``"logit"`` or ``"log_probability"``.

    Returns:
        ``"fractions"`` ``(steps + 1,)``; for ``<d>`` in ``erasing``, ``restoration``: ``"<d>_curve"`` (mean label
        score), ``"<d>_accuracy_curve"``, ``"<d>_auc"``, ``"<d>_accuracy_auc"``; ``"peppr"`` (restoration minus
        erasing AUC, higher is better); and every curve, AUC and ``peppr`` again with the prefix ``"random_"`` for
        the random ranking. Lower erasing and higher restoration AUCs than the random ones mean a faithful map.
        With multi-hot labels also ``"per_label_*"`` ``(L,)`` entries (:func:`per_label_results`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> result = peppr(model, torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 1]), torch.rand(2, 2), steps=4)
        >>> result["fractions"]
        tensor([0.0000, 0.2500, 0.5000, 0.7500, 1.0000])
        >>> bool(torch.allclose(result["erasing_curve"][-1], result["restoration_curve"][0]))
        True
    """
    check_positive_int(steps, "steps")
    check_batch_size(batch_size)
    if score not in SCORE_KINDS:
        raise ValueError(f"`score` must be one of {SCORE_KINDS}, got {score!r}.")
    ranks = global_map_ranks(global_map.detach())
    image_size = (int(global_map.shape[-2]), int(global_map.shape[-1]))
    multi_hot = isinstance(labels, Tensor) and labels.ndim == 2
    num_labels = int(labels.shape[1]) if multi_hot else 0
    inputs, labels, score = expand_multi_hot(inputs, labels, score)
    if labels.numel() == 0:
        raise ValueError("`labels` has no positive label in this batch; PEPPR needs at least one (image, label).")
    check_peppr_batch(inputs, labels, ranks, image_size)
    num_pixels = image_size[0] * image_size[1]
    device = inputs.device
    counts = erased_counts(num_pixels, steps).to(device)
    value = baseline_tensor(baseline, inputs)
    labels = labels.to(device).long()
    inputs = inputs.detach()
    rows = []
    with explanation_mode(model, grad=False):
        for ranking in (ranks.to(device), random_ranks(num_pixels, seed).to(device)):
            rows.append(_peppr_update(model, inputs, labels, ranking, counts, value, batch_size, score))
    per_row = torch.stack(rows, dim=1)  # (P, 2 rankings, 2 directions, 2 measures, S)
    count = torch.tensor(float(inputs.shape[0]), dtype=torch.float64, device=device)
    result = _peppr_compute(per_row.sum(dim=0), count, counts, num_pixels)
    if multi_hot:
        label_sums = torch.zeros(num_labels, *per_row.shape[1:], dtype=torch.float64, device=device)
        label_sums.index_add_(0, labels, per_row)
        label_count = torch.bincount(labels, minlength=num_labels).to(torch.float64)
        result.update(per_label_results(label_sums, label_count, counts, num_pixels))
    return result


def per_label_results(label_sums: Tensor, label_count: Tensor, counts: Tensor, num_pixels: int) -> dict[str, Tensor]:
    """Per-label AUCs ``(L,)`` from curves summed per label ``(L, 2 rankings, 2 directions, 2 measures, S)``.

    Keys: ``"per_label_count"`` and, with and without the ``"random_"`` prefix, ``"per_label_erasing_auc"``,
    ``"per_label_restoration_auc"``, their ``_accuracy_auc`` forms and ``"per_label_peppr"``. A label with no
    (image, label) pair has NaN AUCs (not 0, which would read as a result).
    """
    fractions = counts.to(device=label_sums.device, dtype=torch.float64) / num_pixels
    means = label_sums / label_count.to(label_sums.device).clamp(min=1).view(-1, 1, 1, 1, 1)
    areas = torch.trapezoid(means, fractions, dim=-1)  # (L, 2, 2, 2)
    seen = label_count.to(label_sums.device) > 0
    areas = torch.where(seen.view(-1, 1, 1, 1), areas, torch.full_like(areas, float("nan")))
    result: dict[str, Tensor] = {"per_label_count": label_count.to(torch.float32)}
    for ranking, prefix in enumerate(("", "random_")):
        for direction_index, direction in enumerate(DIRECTIONS):
            for measure, suffix in enumerate(("", "_accuracy")):
                key = f"{prefix}per_label_{direction}{suffix}_auc"
                result[key] = areas[:, ranking, direction_index, measure].to(torch.float32)
        result[f"{prefix}per_label_peppr"] = (
            result[f"{prefix}per_label_restoration_auc"] - result[f"{prefix}per_label_erasing_auc"]
        )
    return result

"""How natural a generated input is: its internal activations against those of real images of its class.

The per-layer L1 distance and Spearman rank correlation follow the validation of Tagade and Rumbelow,
arXiv:2309.17144, as recalled (not confirmed) in METHODS.md section 4: a documented reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_image_batch, check_positive_int
from lightning_xai._layers import find_layer
from lightning_xai._model_state import explanation_mode
from lightning_xai.functional.ranking import spearman_correlation

Reduction = Literal["channel_mean", "flatten"]
REDUCTIONS: tuple[str, ...] = ("channel_mean", "flatten")


def layer_activations(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[str],
    reduction: Reduction = "flatten",
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Activations of ``model`` at ``layers`` for ``inputs``, one vector per input.

    Captured with forward hooks (removed in ``finally``) under
    :func:`~lightning_xai._model_state.explanation_mode` without autograd, ``batch_size`` inputs at a time.

    Args:
        model: the model.
        inputs: ``(N, C, H, W)``.
        layers: dotted module names (as in ``model.named_modules()``).
        reduction: ``"channel_mean"`` averages a ``(N, C_l, ...)`` output over its spatial positions into
            ``(N, C_l)``; ``"flatten"`` keeps every unit, ``(N, C_l * H_l * W_l)``.
        batch_size: inputs per forward pass.

    Returns:
        ``{layer: float32 (N, D_layer)}``.
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    check_positive_int(batch_size, "batch_size")
    modules = {name: find_layer(model, name) for name in layers}
    captured: dict[str, list[Tensor]] = {name: [] for name in layers}

    def make_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(tensor, Tensor):
                raise TypeError(f"Layer {name!r} returned {type(tensor).__name__}, not a tensor.")
            tensor = tensor.detach().float()
            if reduction == "channel_mean" and tensor.ndim > 2:
                tensor = tensor.flatten(2).mean(2)
            captured[name].append(tensor.flatten(1).clone())

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        with explanation_mode(model, grad=False):
            for start in range(0, inputs.shape[0], batch_size):
                model(inputs[start : start + batch_size].detach().clone())
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(chunks) for name, chunks in captured.items()}


def activation_similarity(
    model: nn.Module,
    prototypes: Tensor,
    natural_inputs: Tensor,
    layers: Sequence[str] | str,
    *,
    natural_labels: Tensor,
    classes: Sequence[int] | Tensor | None = None,
    baseline: Tensor | None = None,
    reduction: Reduction = "flatten",
    batch_size: int = 64,
) -> dict[str, dict[str, Tensor]]:
    """Per layer, how close the activations of class prototypes are to those of natural images of the class.

    For prototype ``k`` of class ``c_k`` and each layer, the prototype's activation vector ``a_k`` (see
    ``reduction``) is compared with ``m_c``, the mean activation vector of the natural inputs labelled ``c_k``:

    * ``"l1"``: the mean absolute difference ``mean_d |a_k[d] - m_c[d]|``; **lower is more natural**;
    * ``"spearman"``: the Spearman rank correlation of ``a_k`` and ``m_c`` over units; **higher is more
      natural** (NaN where either vector is constant).

    With ``baseline`` (for example the prototypes of :meth:`PrototypeGeneration.unregularised`, same steps
    and seed), the same scores are returned for it under ``"baseline_l1"`` and ``"baseline_spearman"``.

    Follows the validation of Tagade and Rumbelow, arXiv:2309.17144; **a documented reconstruction**
    (METHODS.md section 4, recalled, not confirmed): the choice of L1 and Spearman against the class mean,
    the reduction and the per-unit mean in L1 (so layers of different widths compare) are the project's.
    The default ``"flatten"`` compares every unit, so spatial structure counts; on our trained
    digits models the channel means barely told regularised prototypes from the baseline (Spearman
    differences of +-0.03 either way), while flattened activations did at every layer.

    Args:
        model: the model (frozen; hooks removed in ``finally``; state restored).
        prototypes: ``(K, C, H, W)``.
        natural_inputs: ``(N, C, H, W)`` real images.
        layers: a dotted module name or a list of them.
        natural_labels: ``(N,)`` class indices of ``natural_inputs``.
        classes: ``(K,)`` class of each prototype (default ``0..K-1``). Every class needs at least one
            natural input.
        baseline: optional ``(K, C, H, W)`` baseline visualisations of the same classes.
        reduction: ``"flatten"`` (default; every unit) or ``"channel_mean"`` (average over spatial positions).
        batch_size: inputs per forward pass.

    Returns:
        ``{layer: {"l1": (K,), "spearman": (K,)[, "baseline_l1": (K,), "baseline_spearman": (K,)]}}``,
        float32 on the inputs' device.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        ...                             torch.nn.Linear(4 * 6 * 6, 2))
        >>> natural, labels = torch.rand(6, 1, 8, 8), torch.tensor([0, 0, 0, 1, 1, 1])
        >>> scores = activation_similarity(model, torch.rand(2, 1, 8, 8), natural, ["1"], natural_labels=labels)
        >>> sorted(scores["1"]), tuple(scores["1"]["l1"].shape)
        (['l1', 'spearman'], (2,))
    """
    layer_names = [layers] if isinstance(layers, str) else list(layers)
    if not layer_names or not all(isinstance(name, str) for name in layer_names):
        raise ValueError(f"`layers` must be a dotted module name or a non-empty list of them, got {layers!r}.")
    check_image_batch(prototypes, "prototypes")
    check_image_batch(natural_inputs, "natural_inputs")
    if baseline is not None:
        check_image_batch(baseline, "baseline")
        if baseline.shape != prototypes.shape:
            raise ValueError(
                f"`baseline` must have the prototypes' shape {tuple(prototypes.shape)}, got {tuple(baseline.shape)}."
            )
    if natural_inputs.shape[1:] != prototypes.shape[1:]:
        raise ValueError(
            f"`natural_inputs` must have the prototypes' (C, H, W) = {tuple(prototypes.shape[1:])}, got "
            f"{tuple(natural_inputs.shape[1:])}."
        )
    if not isinstance(natural_labels, Tensor) or natural_labels.shape != (natural_inputs.shape[0],):
        got = tuple(natural_labels.shape) if isinstance(natural_labels, Tensor) else type(natural_labels).__name__
        raise ValueError(f"`natural_labels` must be a tensor of shape ({natural_inputs.shape[0]},), got {got}.")
    count = prototypes.shape[0]
    class_indices = torch.arange(count) if classes is None else torch.as_tensor(classes).long().flatten()
    if class_indices.shape != (count,):
        raise ValueError(f"`classes` must hold one class per prototype, ({count},), got {tuple(class_indices.shape)}.")
    device = prototypes.device
    class_indices = class_indices.to(device)
    labels = natural_labels.to(device).long()
    missing = sorted(set(class_indices.tolist()) - set(labels.tolist()))
    if missing:
        raise ValueError(
            f"`natural_inputs` hold no image of classes {missing}; every prototype's class needs natural images "
            f"(`natural_labels` has classes {sorted(set(labels.tolist()))})."
        )

    natural = layer_activations(model, natural_inputs.to(device), layer_names, reduction, batch_size)
    generated = {"": layer_activations(model, prototypes, layer_names, reduction, batch_size)}
    if baseline is not None:
        generated["baseline_"] = layer_activations(model, baseline.to(device), layer_names, reduction, batch_size)

    results: dict[str, dict[str, Tensor]] = {}
    for name in layer_names:
        # Mean natural activation of each class: one index_add over the samples, no loop over them.
        width = natural[name].shape[1]
        sums = torch.zeros(int(labels.max()) + 1, width, device=device).index_add_(0, labels, natural[name])
        counts = torch.bincount(labels, minlength=sums.shape[0]).clamp_min(1).to(sums.dtype)
        class_means = (sums / counts[:, None])[class_indices]
        results[name] = {}
        for prefix, activations in generated.items():
            results[name][f"{prefix}l1"] = (activations[name] - class_means).abs().mean(1)
            results[name][f"{prefix}spearman"] = spearman_correlation(activations[name], class_means).float()
    return results

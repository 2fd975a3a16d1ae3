"""Robustness of explanations to small input perturbations: average sensitivity, local Lipschitz, relative stability.

Every function re-runs an explainer on ``n_samples`` perturbed copies of each image and compares the maps with
the map at the unperturbed image, through the engine MaxSensitivity uses
(:func:`~lightning_xai.functional.sensitivity.perturbed_explanation_scores`): the perturbations are drawn once per
call with :func:`~lightning_xai.functional.noise.perturbation_noise` (``noise="uniform"``: ``U(-radius, radius)``,
the L-infinity ball; ``"normal"``: ``radius * N(0, 1)``), seeded, shared by every sample of the batch, and the
perturbed images are explained in chunks of ``batch_size`` on the device. A sample's score depends only on the
sample, the explainer and the seed. **Lower is better** for all of them (a more robust explanation).

Quantus 0.6 (``quantus.AvgSensitivity``, ``LocalLipschitzEstimate``, ``RelativeInputStability``,
``RelativeOutputStability``, ``RelativeRepresentationStability``) computes the same quantities; the tests hand it
our perturbations through its ``perturb_func`` and match it. Conventions that differ from its defaults:

* perturbations: Quantus draws fresh noise per sample (AvgSensitivity ``U(-0.2, 0.2)``, LocalLipschitzEstimate
  ``N(0, 0.1^2)``, the stabilities a one-sided ``U(0.02, 0.2)``); ours are shared by the samples and symmetric.
* no normalisation of the maps (Quantus' LocalLipschitzEstimate normalises by the maximum by default; the others
  do not);
* a zero reference-map norm in the sensitivities is replaced by 1 (Captum's convention; Quantus divides by 0);
* ``keep_prediction`` (stabilities, default True, Quantus' ``return_nan_when_prediction_changes``): Quantus
  marks a perturbation that changes the predicted class NaN and then takes ``np.max``, so one such perturbation
  makes the sample NaN; we leave it out of the maximum, and a sample with no perturbation left scores NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_bool, check_choice, check_image_batch, check_in_range, check_positive_int
from lightning_xai._layers import find_layer
from lightning_xai._scoring import ChunkSize, check_batch_size
from lightning_xai._targets import check_target
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.functional.noise import NoiseDistribution, perturbation_noise
from lightning_xai.functional.sensitivity import (
    ExplainerFn,
    NormOrder,
    _norms,
    check_norm_order,
    perturbed_explanation_scores,
)

NOISE_DISTRIBUTIONS = ("uniform", "normal")
#: Agarwal et al.'s ``epsilon_min`` (Quantus' ``eps_min``): guards the divisions of the relative stabilities.
EPS_MIN = 1e-6
#: Quantus' ``lipschitz_constant`` adds this to the input distance.
LIPSCHITZ_EPS = 1e-10


def _check_common(
    explainer: ExplainerFn,
    inputs: Tensor,
    target: TargetType,
    radius: float,
    n_samples: int,
    noise: str,
    batch_size: ChunkSize,
) -> None:
    check_image_batch(inputs, method="this robustness metric")
    check_target(target, inputs.shape[0])
    check_in_range(radius, "radius", 0.0, float("inf"), low_inclusive=False)
    check_positive_int(n_samples, "n_samples")
    check_choice(noise, "noise", NOISE_DISTRIBUTIONS)
    check_batch_size(batch_size)
    if not callable(explainer):
        raise TypeError(f"`explainer` must be callable as explainer(model, inputs, target), got {explainer!r}.")


def _flat(values: Tensor) -> Tensor:
    return values.flatten(1).double()


def _relative_change(reference: Tensor, perturbed: Tensor, eps: float) -> Tensor:
    """``(a - a') / a`` element-wise, a zero ``a`` replaced by ``eps`` (Agarwal et al.; Quantus' guard)."""
    reference, perturbed = _flat(reference), _flat(perturbed)
    return (reference - perturbed) / (reference + (reference == 0) * eps)


def _guarded(norms: Tensor, eps: float) -> Tensor:
    return norms + (norms == 0) * eps


def _predictions(outputs: Tensor) -> Tensor:
    """The predicted class ``(B,)`` of ``(B, K)`` logits: the argmax, or ``logit > 0`` for one logit."""
    if not isinstance(outputs, Tensor) or outputs.ndim != 2:
        got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(
            f"`keep_prediction=True` needs model outputs of shape (B, num_classes), got {got}; pass "
            "keep_prediction=False for other outputs."
        )
    return outputs.argmax(dim=1) if outputs.shape[1] > 1 else (outputs[:, 0] > 0).long()


def average_sensitivity(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    *,
    radius: float = 0.2,
    n_samples: int = 10,
    noise: NoiseDistribution = "uniform",
    norm_ord: NormOrder = "fro",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    attributions: Tensor | None = None,
) -> Tensor:
    """Per-sample average sensitivity ``(B,)`` (Yeh et al., NeurIPS 2019, arXiv:1901.09392); lower is better.

    ``SENS_avg = mean_s ||phi(x + d_s) - phi(x)|| / ||phi(x)||`` over ``n_samples`` perturbations ``d_s``: the
    mean where :func:`~lightning_xai.functional.sensitivity.max_sensitivity` takes the maximum. The default
    radius is Quantus' (``lower_bound=0.2``).

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``, re-run on chunks of perturbed inputs.
        model: the classifier.
        inputs: images ``(B, C, H, W)``.
        target: class indices ``(B,)`` or a row-wise callable ``(outputs) -> scores``.
        radius: scale of the perturbation (half-width for ``"uniform"``, standard deviation for ``"normal"``).
        n_samples: perturbations per image.
        noise: ``"uniform"`` or ``"normal"``.
        norm_ord: ``"fro"`` or a positive number, the norm of the map difference and of the reference map.
        batch_size: perturbed images explained per call, or ``"auto"`` (default): chosen by a short timed probe and
            remembered per model and input shape (see :func:`~lightning_xai._scoring.score_in_chunks`).
        seed: seed of the perturbations.
        attributions: ``explainer(model, inputs, target)`` when already computed.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> def constant(model, inputs, target):
        ...     return torch.ones(inputs.shape[0], 1, *inputs.shape[2:])
        >>> average_sensitivity(constant, model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1])).tolist()
        [0.0, 0.0]
    """
    _check_common(explainer, inputs, target, radius, n_samples, noise, batch_size)
    check_norm_order(norm_ord)
    reference, distances = perturbed_explanation_scores(
        explainer,
        model,
        inputs,
        target,
        perturbation_noise(inputs, n_samples, radius, noise, seed),
        lambda rows, perturbed, explanations, reference: _norms(explanations - reference, norm_ord),
        batch_size=batch_size,
        attributions=attributions,
    )
    reference_norms = _norms(reference, norm_ord)
    reference_norms = torch.where(reference_norms == 0, torch.ones_like(reference_norms), reference_norms)
    return (distances / reference_norms[:, None]).mean(dim=1).to(torch.float32)


def local_lipschitz_estimate(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    *,
    radius: float = 0.1,
    n_samples: int = 10,
    noise: NoiseDistribution = "normal",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    attributions: Tensor | None = None,
) -> Tensor:
    """Per-sample local Lipschitz estimate ``(B,)`` (Alvarez-Melis and Jaakkola 2018, arXiv:1806.08049).

    ``L(x) = max_s ||phi(x) - phi(x + d_s)||_2 / (||d_s||_2 + 1e-10)``, the maximum over ``n_samples`` sampled
    neighbours (the paper maximises over the ball with an optimiser; sampling it is Quantus' estimate, with its
    Gaussian ``perturb_std=0.1`` as default). Lower is better. Quantus normalises the maps by their maximum by
    default (``normalise=True``); we do not (pass ``normalise=False`` to compare).

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``.
        model: the classifier.
        inputs: images ``(B, C, H, W)``.
        target: class indices ``(B,)`` or a row-wise callable.
        radius: scale of the perturbation (standard deviation for ``"normal"``, half-width for ``"uniform"``).
        n_samples: neighbours per image.
        noise: ``"normal"`` (default) or ``"uniform"``.
        batch_size: perturbed images explained per call, or ``"auto"`` (default): chosen by a short timed probe and
            remembered per model and input shape (see :func:`~lightning_xai._scoring.score_in_chunks`).
        seed: seed of the perturbations.
        attributions: ``explainer(model, inputs, target)`` when already computed.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> def input_map(model, inputs, target):  # phi(x) = x is 1-Lipschitz
        ...     return inputs.sum(1, keepdim=True)
        >>> round(local_lipschitz_estimate(input_map, model, torch.rand(1, 1, 2, 2), torch.tensor([0])).item(), 4)
        1.0
    """
    _check_common(explainer, inputs, target, radius, n_samples, noise, batch_size)
    flat_inputs = _flat(inputs)

    def score(rows: Tensor, perturbed: Tensor, explanations: Tensor, reference: Tensor) -> Tensor:
        numerator = torch.linalg.vector_norm(_flat(reference) - _flat(explanations), dim=1)
        denominator = torch.linalg.vector_norm(flat_inputs[rows] - _flat(perturbed), dim=1)
        return numerator / (denominator + LIPSCHITZ_EPS)

    _, ratios = perturbed_explanation_scores(
        explainer,
        model,
        inputs,
        target,
        perturbation_noise(inputs, n_samples, radius, noise, seed),
        score,
        batch_size=batch_size,
        attributions=attributions,
    )
    return ratios.amax(dim=1).to(torch.float32)


def _representations(model: nn.Module, inputs: Tensor, layers: Sequence[nn.Module]) -> tuple[Tensor, Tensor]:
    """The model's outputs and the flattened outputs of ``layers``, concatenated in the order they ran."""
    captured: list[Tensor] = []
    handles = []
    for module in layers:

        def hook(module: nn.Module, args: object, output: object) -> None:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"`layers` must name modules that return a tensor, {type(module).__name__} returned "
                    f"{type(output).__name__}."
                )
            captured.append(output.detach().flatten(1).double().clone())

        handles.append(module.register_forward_hook(hook))
    try:
        outputs = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, torch.cat(captured, dim=1)


#: What the denominator of a relative stability compares: the inputs, the logits, or hidden representations.
_Compared = Literal["input", "output", "representation"]


def _stability(
    compared: _Compared,
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    radius: float,
    n_samples: int,
    noise: NoiseDistribution,
    batch_size: ChunkSize,
    seed: int,
    eps: float,
    keep_prediction: bool,
    attributions: Tensor | None,
    layers: LayerType | Sequence[LayerType] | None = None,
) -> Tensor:
    """The relative stabilities of Agarwal et al.: ``max_s`` of the maps' relative change per change of ``compared``.

    The arguments after ``target`` are the public functions' keyword arguments, in the order of their signatures
    (they pass them as one tuple); ``layers`` only for ``compared="representation"``.
    """
    _check_common(explainer, inputs, target, radius, n_samples, noise, batch_size)
    check_in_range(eps, "eps", 0.0, float("inf"), low_inclusive=False)
    check_bool(keep_prediction, "keep_prediction")
    modules: list[nn.Module] = []
    if compared == "representation":
        names = [layers] if layers is None or isinstance(layers, (str, nn.Module)) else list(layers)
        if not names:
            raise ValueError("`layers` must name at least one layer, got an empty sequence.")
        modules = [find_layer(model, name) for name in names]
    with torch.no_grad():
        outputs, hidden = (
            _representations(model, inputs, modules) if modules else (model(inputs), inputs.new_zeros(0, 0))
        )
    predicted = _predictions(outputs) if keep_prediction else None
    flat_inputs, flat_outputs = _flat(inputs), _flat(outputs) if compared == "output" else None

    def score(rows: Tensor, perturbed: Tensor, explanations: Tensor, reference: Tensor) -> Tensor:
        numerator = torch.linalg.vector_norm(_relative_change(reference, explanations, eps), dim=1)
        perturbed_outputs: Tensor | None
        if compared == "representation":
            perturbed_outputs, perturbed_hidden = _representations(model, perturbed, modules)
            change = torch.linalg.vector_norm(_relative_change(hidden[rows], perturbed_hidden, eps), dim=1)
        elif compared == "input":
            perturbed_outputs = model(perturbed) if predicted is not None else None  # only to check the class
            change = torch.linalg.vector_norm(_relative_change(flat_inputs[rows], perturbed, eps), dim=1)
        else:
            perturbed_outputs = model(perturbed)
            assert flat_outputs is not None
            change = torch.linalg.vector_norm(flat_outputs[rows] - _flat(perturbed_outputs), dim=1)
        ratio = numerator / _guarded(change, eps)
        if predicted is not None:
            assert perturbed_outputs is not None
            kept = _predictions(perturbed_outputs) == predicted[rows]
            ratio = torch.where(kept, ratio, torch.full_like(ratio, float("nan")))
        return ratio

    _, ratios = perturbed_explanation_scores(
        explainer,
        model,
        inputs,
        target,
        perturbation_noise(inputs, n_samples, radius, noise, seed),
        score,
        batch_size=batch_size,
        attributions=attributions,
    )
    defined = ~ratios.isnan()
    maxima = torch.where(defined, ratios, torch.full_like(ratios, -float("inf"))).amax(dim=1)
    return torch.where(defined.any(dim=1), maxima, torch.full_like(maxima, float("nan"))).to(torch.float32)


def relative_input_stability(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    *,
    radius: float = 0.2,
    n_samples: int = 10,
    noise: NoiseDistribution = "uniform",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    eps: float = EPS_MIN,
    keep_prediction: bool = True,
    attributions: Tensor | None = None,
) -> Tensor:
    """Per-sample relative input stability ``(B,)`` (Agarwal et al. 2022, arXiv:2203.06877); lower is better.

    ``RIS(x) = max_s ||(e_x - e_x') / e_x||_2 / max(||(x - x') / x||_2, eps)`` with ``x' = x + d_s``: the
    relative change of the map per relative change of the input. A zero entry of ``e_x`` or ``x`` is replaced by
    ``eps`` in the division, and a zero denominator by ``eps``, as Quantus guards them. With
    ``keep_prediction`` only the perturbations that keep the predicted class count (see the module notes).

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``.
        model: the classifier; its outputs ``(B, K)`` decide the prediction with ``keep_prediction``.
        inputs: images ``(B, C, H, W)``.
        target: class indices ``(B,)`` or a row-wise callable.
        radius: scale of the perturbation.
        n_samples: perturbations per image.
        noise: ``"uniform"`` (default) or ``"normal"``.
        batch_size: perturbed images explained per call, or ``"auto"`` (default): chosen by a short timed probe and
            remembered per model and input shape (see :func:`~lightning_xai._scoring.score_in_chunks`).
        seed: seed of the perturbations.
        eps: Agarwal et al.'s ``epsilon_min`` (Quantus' ``eps_min``, 1e-6).
        keep_prediction: leave out the perturbations that change the predicted class.
        attributions: ``explainer(model, inputs, target)`` when already computed.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> def constant(model, inputs, target):
        ...     return torch.ones(inputs.shape[0], 1, 2, 2)
        >>> relative_input_stability(constant, model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1])).tolist()
        [0.0, 0.0]
    """
    options = radius, n_samples, noise, batch_size, seed, eps, keep_prediction, attributions
    return _stability("input", explainer, model, inputs, target, *options)


def relative_output_stability(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    *,
    radius: float = 0.2,
    n_samples: int = 10,
    noise: NoiseDistribution = "uniform",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    eps: float = EPS_MIN,
    keep_prediction: bool = True,
    attributions: Tensor | None = None,
) -> Tensor:
    """Per-sample relative output stability ``(B,)`` (Agarwal et al. 2022); lower is better.

    ``ROS(x) = max_s ||(e_x - e_x') / e_x||_2 / max(||h(x) - h(x')||_2, eps)``, ``h`` the model's outputs
    (logits), not relative, as in the paper and Quantus. Arguments as
    :func:`relative_input_stability`.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> def constant(model, inputs, target):
        ...     return torch.ones(inputs.shape[0], 1, 2, 2)
        >>> relative_output_stability(constant, model, torch.rand(1, 1, 2, 2), torch.tensor([0])).tolist()
        [0.0]
    """
    options = radius, n_samples, noise, batch_size, seed, eps, keep_prediction, attributions
    return _stability("output", explainer, model, inputs, target, *options)


def relative_representation_stability(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    *,
    layers: LayerType | Sequence[LayerType] | None = None,
    radius: float = 0.2,
    n_samples: int = 10,
    noise: NoiseDistribution = "uniform",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    eps: float = EPS_MIN,
    keep_prediction: bool = True,
    attributions: Tensor | None = None,
) -> Tensor:
    """Per-sample relative representation stability ``(B,)`` (Agarwal et al. 2022); lower is better.

    ``RRS(x) = max_s ||(e_x - e_x') / e_x||_2 / max(||(L_x - L_x') / L_x||_2, eps)``, ``L_x`` the outputs of
    ``layers`` at ``x``, flattened and concatenated in the order they run (as Quantus'
    ``get_hidden_representations``; pass its ``layer_names`` the same names to compare). Quantus' default takes
    every layer; ours is the last ``nn.Conv2d``. ``layers`` is a dotted module name, a module, or a sequence of
    them (None: the last ``nn.Conv2d``); the other arguments are those of :func:`relative_input_stability`.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(8, 2))
        >>> def constant(model, inputs, target):
        ...     return torch.ones(inputs.shape[0], 1, 2, 2)
        >>> relative_representation_stability(constant, model, torch.rand(1, 1, 2, 2), torch.tensor([0])).tolist()
        [0.0]
    """
    options = radius, n_samples, noise, batch_size, seed, eps, keep_prediction, attributions
    return _stability("representation", explainer, model, inputs, target, *options, layers=layers)

"""Robustness metrics over :mod:`~lightning_xai.functional.robustness`; lower is better for all of them.

They measure how much an explainer's map moves when the input moves a little.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_bool, check_choice, check_in_range, check_positive_int
from lightning_xai._typing import TargetType
from lightning_xai.functional.noise import NoiseDistribution
from lightning_xai.functional.robustness import (
    EPS_MIN,
    NOISE_DISTRIBUTIONS,
    average_sensitivity,
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)
from lightning_xai.functional.sensitivity import ExplainerFn, NormOrder, check_norm_order
from lightning_xai.metrics.base import FaithfulnessMetric

#: The functional core of each relative stability, by what its denominator compares.
_STABILITIES: dict[str, Callable[..., Tensor]] = {
    "input": relative_input_stability,
    "output": relative_output_stability,
    "representation": relative_representation_stability,
}


class _PerturbationRobustness(FaithfulnessMetric):
    """Shared arguments of the metrics that re-run ``explainer`` on perturbed inputs (as ``MaxSensitivity``).

    ``explainer`` may be None at construction: the :class:`~lightning_xai.ExplanationMonitor` binds each copy to
    the explainer whose maps it measures. The map at the unperturbed input is recomputed by ``explainer`` (like for
    like); the ``attributions`` given to :meth:`update` are checked but not used.
    """

    higher_is_better = False

    def __init__(
        self,
        explainer: ExplainerFn | None,
        radius: float,
        n_samples: int,
        noise: NoiseDistribution,
        batch_size: int | Literal["auto"],
        seed: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        if explainer is not None and not callable(explainer):
            raise TypeError(f"`explainer` must be callable as explainer(model, inputs, target), got {explainer!r}.")
        check_in_range(radius, "radius", 0.0, math.inf, low_inclusive=False)
        check_positive_int(n_samples, "n_samples")
        check_choice(noise, "noise", NOISE_DISTRIBUTIONS)
        check_positive_int(seed, "seed", minimum=0)
        self.explainer = explainer
        self.radius = radius
        self.n_samples = n_samples
        self.noise = noise
        self.seed = seed

    def _explainer(self) -> ExplainerFn:
        if self.explainer is None:
            raise ValueError(f"{type(self).__name__} needs an `explainer` to re-run on perturbed inputs; got None.")
        return self.explainer

    def _options(self) -> dict[str, Any]:
        return {
            "radius": self.radius,
            "n_samples": self.n_samples,
            "noise": self.noise,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }


class AvgSensitivity(_PerturbationRobustness):
    """Average sensitivity (Yeh et al., NeurIPS 2019): ``mean_s ||phi(x + d_s) - phi(x)|| / ||phi(x)||``.

    :class:`~lightning_xai.metrics.MaxSensitivity` with the mean over the ``n_samples`` perturbations in place of
    the maximum (see :func:`~lightning_xai.functional.robustness.average_sensitivity`). **Lower is better**.
    ``summary()`` gives ``avg_sensitivity`` and ``avg_sensitivity_stderr``.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``, or None for the monitor to bind.
        radius: scale of the perturbation (Quantus: 0.2), in the inputs' units.
        n_samples: perturbations per image.
        noise: ``"uniform"`` (the L-infinity ball) or ``"normal"``.
        norm_ord: ``"fro"`` or a positive number.
        batch_size: perturbed images explained per call, or ``"auto"`` (default: chosen by a short timed probe).
        seed: seed of the perturbations (drawn at every update, shared by the samples).
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> def weights(model, inputs, target):
        ...     return model[1].weight[target].detach().view(-1, 1, 4, 4)
        >>> metric = AvgSensitivity(weights, n_samples=3)
        >>> metric.update(model, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))
        >>> metric.compute().item()
        0.0
    """

    name = "avg_sensitivity"

    def __init__(
        self,
        explainer: ExplainerFn | None = None,
        radius: float = 0.2,
        n_samples: int = 10,
        noise: NoiseDistribution = "uniform",
        norm_ord: NormOrder = "fro",
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(explainer, radius, n_samples, noise, batch_size, seed, **kwargs)
        check_norm_order(norm_ord)
        self.norm_ord = norm_ord

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        return average_sensitivity(self._explainer(), model, inputs, target, norm_ord=self.norm_ord, **self._options())


class LocalLipschitzEstimate(_PerturbationRobustness):
    """Local Lipschitz estimate (Alvarez-Melis and Jaakkola 2018): ``max_s ||phi(x) - phi(x')|| / ||x - x'||``.

    Over ``n_samples`` sampled neighbours ``x' = x + d_s`` (Gaussian by default, Quantus' ``perturb_std=0.1``);
    see :func:`~lightning_xai.functional.robustness.local_lipschitz_estimate`. **Lower is better**.
    ``summary()`` gives ``local_lipschitz_estimate`` and its ``_stderr``.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``, or None for the monitor to bind.
        radius: scale of the perturbation (standard deviation for ``"normal"``).
        n_samples: neighbours per image.
        noise: ``"normal"`` (default) or ``"uniform"``.
        batch_size: perturbed images explained per call, or ``"auto"`` (default: chosen by a short timed probe).
        seed: seed of the perturbations.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> def input_map(model, inputs, target):
        ...     return inputs.sum(1, keepdim=True)
        >>> metric = LocalLipschitzEstimate(input_map, n_samples=3)
        >>> inputs = torch.rand(2, 1, 4, 4)
        >>> metric.update(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), inputs, inputs, torch.tensor([0, 1]))
        >>> round(metric.compute().item(), 4)
        1.0
    """

    name = "local_lipschitz_estimate"

    def __init__(
        self,
        explainer: ExplainerFn | None = None,
        radius: float = 0.1,
        n_samples: int = 10,
        noise: NoiseDistribution = "normal",
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(explainer, radius, n_samples, noise, batch_size, seed, **kwargs)

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        return local_lipschitz_estimate(self._explainer(), model, inputs, target, **self._options())


class _RelativeStability(_PerturbationRobustness):
    """Agarwal et al.'s relative stabilities, with NaN-aware means.

    A sample whose every perturbation changed the prediction (with ``keep_prediction``) has no score (NaN in
    :meth:`per_sample`) and is left out of the mean and its standard error. Subclasses name in ``_compared`` what
    the denominator compares (the key of ``_STABILITIES``); the arguments are those of
    :class:`RelativeInputStability`.
    """

    _compared: ClassVar[str]

    def __init__(
        self,
        explainer: ExplainerFn | None = None,
        radius: float = 0.2,
        n_samples: int = 10,
        noise: NoiseDistribution = "uniform",
        eps: float = EPS_MIN,
        keep_prediction: bool = True,
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(explainer, radius, n_samples, noise, batch_size, seed, **kwargs)
        check_in_range(eps, "eps", 0.0, math.inf, low_inclusive=False)
        check_bool(keep_prediction, "keep_prediction")
        self.eps = eps
        self.keep_prediction = keep_prediction

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        return _STABILITIES[self._compared](self._explainer(), model, inputs, target, **self._options())

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "eps": self.eps, "keep_prediction": self.keep_prediction}

    def _mean(self, values: Tensor) -> Tensor:
        if values.numel() == 0:
            return super()._mean(values)  # raises: compute() before update()
        defined = values[~values.isnan()]
        return defined.mean() if defined.numel() else values.new_tensor(float("nan"))

    def _standard_error(self) -> Tensor:
        values = self.per_sample()
        values = values[~values.isnan()]
        if values.numel() < 2:
            return torch.zeros((), device=values.device)
        return values.std(unbiased=True) / math.sqrt(values.numel())


class RelativeInputStability(_RelativeStability):
    """Relative input stability (Agarwal et al. 2022): ``max_s ||(e_x - e_x')/e_x|| / max(||(x - x')/x||, eps)``.

    See :func:`~lightning_xai.functional.robustness.relative_input_stability`. **Lower is better**. ``summary()``
    gives ``relative_input_stability`` and its ``_stderr``.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``, or None for the monitor to bind.
        radius: scale of the perturbation.
        n_samples: perturbations per image.
        noise: ``"uniform"`` (default) or ``"normal"``.
        eps: Agarwal et al.'s ``epsilon_min`` (1e-6).
        keep_prediction: count only the perturbations that keep the predicted class.
        batch_size: perturbed images explained per call, or ``"auto"`` (default: chosen by a short timed probe).
        seed: seed of the perturbations.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> def constant(model, inputs, target):
        ...     return torch.ones(inputs.shape[0], 1, 4, 4)
        >>> metric = RelativeInputStability(constant, n_samples=3)
        >>> inputs = torch.rand(2, 1, 4, 4)
        >>> metric.update(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), inputs, inputs, torch.tensor([0, 1]))
        >>> metric.compute().item()
        0.0
    """

    name = "relative_input_stability"
    _compared = "input"


class RelativeOutputStability(_RelativeStability):
    """Relative output stability (Agarwal et al. 2022): the map's relative change per change of the logits.

    ``max_s ||(e_x - e_x')/e_x|| / max(||h(x) - h(x')||, eps)``, ``h`` the model's outputs; see
    :func:`~lightning_xai.functional.robustness.relative_output_stability`. **Lower is better**. Arguments as
    :class:`RelativeInputStability`; ``summary()`` gives ``relative_output_stability`` and its ``_stderr``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> def constant(model, inputs, target):
        ...     return torch.ones(inputs.shape[0], 1, 4, 4)
        >>> metric = RelativeOutputStability(constant, n_samples=3)
        >>> inputs = torch.rand(2, 1, 4, 4)
        >>> metric.update(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), inputs, inputs, torch.tensor([0, 1]))
        >>> metric.compute().item()
        0.0
    """

    name = "relative_output_stability"
    _compared = "output"


class RelativeRepresentationStability(_RelativeStability):
    """Relative representation stability (Agarwal et al. 2022): the map's change per change of a hidden layer.

    ``max_s ||(e_x - e_x')/e_x|| / max(||(L_x - L_x')/L_x||, eps)``, ``L_x`` the outputs of ``layers``; see
    :func:`~lightning_xai.functional.robustness.relative_representation_stability`. **Lower is better**.
    ``summary()`` gives ``relative_representation_stability`` and its ``_stderr``.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``, or None for the monitor to bind.
        layers: a dotted module name or a sequence of them (names, not modules: the monitor deep-copies its
            metrics); None for the last ``nn.Conv2d``.
        radius: scale of the perturbation.
        n_samples: perturbations per image.
        noise: ``"uniform"`` (default) or ``"normal"``.
        eps: Agarwal et al.'s ``epsilon_min`` (1e-6).
        keep_prediction: count only the perturbations that keep the predicted class.
        batch_size: perturbed images explained per call, or ``"auto"`` (default: chosen by a short timed probe).
        seed: seed of the perturbations.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> def constant(model, inputs, target):
        ...     return torch.ones(inputs.shape[0], 1, 4, 4)
        >>> metric = RelativeRepresentationStability(constant, layers="0", n_samples=3)
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(32, 2))
        >>> inputs = torch.rand(2, 1, 4, 4)
        >>> metric.update(model, inputs, inputs, torch.tensor([0, 1]))
        >>> metric.compute().item()
        0.0
    """

    name = "relative_representation_stability"
    _compared = "representation"

    def __init__(
        self,
        explainer: ExplainerFn | None = None,
        layers: str | Sequence[str] | None = None,
        radius: float = 0.2,
        n_samples: int = 10,
        noise: NoiseDistribution = "uniform",
        eps: float = EPS_MIN,
        keep_prediction: bool = True,
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(explainer, radius, n_samples, noise, eps, keep_prediction, batch_size, seed, **kwargs)
        names = [layers] if isinstance(layers, str) else layers
        if names is not None and (
            not isinstance(names, Sequence) or not names or not all(isinstance(name, str) for name in names)
        ):
            raise TypeError(f"`layers` must be None, a dotted module name or a non-empty list of them, got {layers!r}.")
        self.layers = None if names is None else list(names)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "layers": self.layers}

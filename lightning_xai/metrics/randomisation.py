"""Randomisation sanity checks as metrics over :mod:`~lightning_xai.functional.randomisation`.

Lower similarity is better for both: the explanation depends on the weights (:class:`ModelRandomisation`) or
on the class explained (:class:`RandomLogit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_positive_int
from lightning_xai._typing import TargetType
from lightning_xai.functional.randomisation import (
    ORDERS,
    Order,
    Similarity,
    check_similarity,
    model_randomisation,
    random_logit,
)
from lightning_xai.functional.sensitivity import ExplainerFn
from lightning_xai.metrics.base import FaithfulnessMetric, _cat_state


def _check_explainer(explainer: object) -> None:
    if explainer is not None and not callable(explainer):
        raise TypeError(f"`explainer` must be callable as explainer(model, inputs, target), got {explainer!r}.")


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")


class ModelRandomisation(FaithfulnessMetric):
    """The model parameter randomisation test (MPRT) of Adebayo et al., NeurIPS 2018, as a metric.

    At every :meth:`update` a deep copy of the model has its layers re-initialised step by step (``"cascading"``:
    from the output down, cumulatively; ``"independent"``: one at a time), ``explainer`` re-explains the inputs on
    each step and the map is compared with the trained model's map (recomputed by ``explainer``) by Spearman rank
    correlation or SSIM (see :func:`~lightning_xai.functional.randomisation.model_randomisation` for the
    conventions and the comparison with Quantus). The trained model, its buffers and the global RNG are left
    untouched. The explainer is called with the copy, so a layer explainer must name its layer by its dotted name
    (``GradCAM(layer="features.4")``, or its default), not by a module object of the trained model. Cost per
    update: one deep copy of the model and ``L + 1`` explanations of the batch for ``L`` steps (name blocks in
    ``layers`` to make ``L`` small on a deep network).

    A sample's score is its similarity averaged over the steps; ``compute()`` is the mean over steps and samples.
    **Lower is better** (``higher_is_better = False``): the explanation depends on the weights. An explainer that
    ignores the model scores 1. ``summary()`` gives ``<name>``, ``<name>_stderr`` and ``<name>_last`` (the mean
    similarity at the last step: every layer randomised for ``"cascading"``); ``curves()`` the mean similarity
    after each step, ``x = k / L`` for step ``k`` of ``L`` (the fraction of layers randomised when cascading), with
    the step names in :attr:`steps`. ``name`` is ``mprt_<similarity>`` (``mprt_independent_<similarity>`` for the
    independent order).

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``, re-run on the randomised copies; None for
            the :class:`~lightning_xai.ExplanationMonitor` to bind the explainer whose maps it measures.
        order: ``"cascading"`` or ``"independent"``.
        similarity: ``"spearman"`` or ``"ssim"`` (torchmetrics' SSIM).
        layers: dotted names of the steps (a block re-initialises every layer under it); None for every module with
            ``reset_parameters`` (as Quantus).
        abs: compare absolute maps (Adebayo et al., Quantus).
        batch_size: images explained per call, or ``"auto"`` (default: chosen by a short timed probe).
        seed: ``torch.manual_seed(seed)`` before each step's re-initialisation, so every update and every rank
            randomises the same way.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))
        >>> def edges(model, inputs, target):  # ignores the model: fails the test
        ...     return (inputs[..., 1:, 1:] - inputs[..., :-1, :-1]).abs().repeat(1, 1, 2, 2)[..., :4, :4]
        >>> metric = ModelRandomisation(edges)
        >>> inputs = torch.rand(2, 1, 4, 4)
        >>> metric.update(model, inputs, edges(model, inputs, None), torch.tensor([0, 2]))
        >>> metric.compute().item(), metric.steps
        (1.0, ['2', '0'])
    """

    higher_is_better = False
    layer_scores: list[Tensor]
    #: Axis labels of :meth:`curves` for a plot (the x-axis is not a fraction of pixels).
    curve_xlabel = "fraction of layers randomised"
    curve_ylabel = "similarity to the trained model's map"

    def __init__(
        self,
        explainer: ExplainerFn | None = None,
        order: Order = "cascading",
        similarity: Similarity = "spearman",
        layers: Sequence[str] | None = None,
        abs: bool = True,
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        _check_explainer(explainer)
        check_choice(order, "order", ORDERS)
        check_similarity(similarity)
        if layers is not None and (
            isinstance(layers, str)
            or not isinstance(layers, Sequence)
            or not layers
            or not all(isinstance(layer, str) for layer in layers)
        ):
            raise TypeError(f"`layers` must be None or a non-empty list of dotted module names, got {layers!r}.")
        _check_flag(abs, "abs")
        check_positive_int(seed, "seed", minimum=0)
        self.explainer = explainer
        self.order = order
        self.similarity = similarity
        self.layers = None if layers is None else list(layers)
        self.abs = abs
        self.seed = seed
        self.name = f"mprt_{similarity}" if order == "cascading" else f"mprt_independent_{similarity}"
        #: Names of the randomisation steps, in the order of :meth:`curves` (set by the first update).
        self.steps: list[str] | None = None
        self.add_state("layer_scores", default=[], dist_reduce_fx="cat")

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        if self.explainer is None:
            raise ValueError("ModelRandomisation needs an `explainer` to re-explain the randomised model; got None.")
        similarities, steps = model_randomisation(
            self.explainer,
            model,
            inputs,
            target,
            order=self.order,
            similarity=self.similarity,
            layers=self.layers,
            abs=self.abs,
            batch_size=self.batch_size,
            seed=self.seed,
        )
        if self.steps is not None and steps != self.steps:
            raise ValueError(f"the model's randomisation steps changed between updates: {self.steps} then {steps}.")
        self.steps = steps
        self.layer_scores.append(similarities.to(torch.float32))
        return similarities.mean(dim=1)

    def _per_layer(self) -> Tensor:
        values = _cat_state(self.layer_scores, self.device)
        if values.numel() == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() was called before any update().")
        return values

    def summary(self) -> dict[str, Tensor]:
        """``{name: mean similarity, name_stderr: its standard error, name_last: mean at the last step}``."""
        with self.sync_context():
            return {
                self.name: self._mean(self.per_sample()),
                f"{self.name}_stderr": self._standard_error(),
                f"{self.name}_last": self._per_layer()[:, -1].mean(),
            }

    def curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"<similarity> (<order>)": (k / L, mean similarity after step k)}`` for ``k = 1..L``."""
        with self.sync_context():
            per_layer = self._per_layer().mean(dim=0)
        steps = per_layer.shape[0]
        x = torch.arange(1, steps + 1, dtype=torch.float32, device=per_layer.device) / steps
        return {f"{self.similarity} ({self.order})": (x, per_layer)}


class RandomLogit(FaithfulnessMetric):
    """Random-logit sanity check (Sixt et al., ICML 2020): the map of the target against a random other class.

    At every :meth:`update` the explainer explains the target class and one other class per sample (drawn
    uniformly with ``seed``; the sample at position ``i`` of a batch gets draw ``i``, as Quantus draws per batch)
    and the two maps are compared by SSIM (Quantus' default) or Spearman; see
    :func:`~lightning_xai.functional.randomisation.random_logit`. **Lower is better**: the explanation depends on
    the class. Needs class-index targets and at least two classes (not a binary single-logit head).
    ``summary()`` gives ``random_logit_<similarity>`` and its ``_stderr``.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``; None for the monitor to bind.
        similarity: ``"ssim"`` or ``"spearman"``.
        abs: compare absolute maps (Quantus: False).
        batch_size: images explained per call, or ``"auto"`` (default: chosen by a short timed probe).
        seed: seed of the other classes.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        >>> def inputs_only(model, inputs, target):  # the same map for every class: fails the check
        ...     return inputs.clone()
        >>> metric = RandomLogit(inputs_only)
        >>> inputs = torch.rand(2, 1, 8, 8)
        >>> metric.update(model, inputs, inputs, torch.tensor([0, 2]))
        >>> metric.compute().item()
        1.0
    """

    higher_is_better = False

    def __init__(
        self,
        explainer: ExplainerFn | None = None,
        similarity: Similarity = "ssim",
        abs: bool = False,
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        _check_explainer(explainer)
        check_similarity(similarity)
        _check_flag(abs, "abs")
        check_positive_int(seed, "seed", minimum=0)
        self.explainer = explainer
        self.similarity = similarity
        self.abs = abs
        self.seed = seed
        self.name = f"random_logit_{similarity}"

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        if self.explainer is None:
            raise ValueError("RandomLogit needs an `explainer` to explain the other class; got None.")
        if not isinstance(target, Tensor):
            raise TypeError("RandomLogit needs class-index targets (B,); a callable target has no other class.")
        return random_logit(
            self.explainer,
            model,
            inputs,
            target,
            similarity=self.similarity,
            abs=self.abs,
            batch_size=self.batch_size,
            seed=self.seed,
        )

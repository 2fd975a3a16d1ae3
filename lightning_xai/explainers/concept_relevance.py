"""Concept Relevance Propagation through zennit-crp: which channels of a layer a prediction relies on, and where.

Achtibat et al., "From attribution maps to human-understandable explanations through Concept Relevance
Propagation" (Nature Machine Intelligence 5, 2023). The relevance LRP brings to a layer is summed over each channel's
positions: the channel ("concept") relevance. Conditioning the backward pass on one channel, i.e. masking the
relevance of every other channel of the layer, gives that concept's own heatmap on the input. zennit-crp's
``CondAttribution`` does the masking and Zennit the propagation; this module picks the channels, batches the
conditions and keeps our explainer contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_image_batch, check_positive_int
from lightning_xai._layers import find_layer
from lightning_xai._model_state import explanation_mode
from lightning_xai._targets import check_target
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.explainers.base import Explainer
from lightning_xai.explainers.lrp import (
    _EXTRA_HINT,
    build_composite,
    check_composite_and_canonizers,
    import_zennit,
    output_relevance,
)


def import_crp() -> Any:
    """Import zennit-crp lazily; raise an ``ImportError`` that names the extra when it is missing."""
    import_zennit()
    try:
        import crp.attribution
        import crp.concepts
    except ImportError as error:
        raise ImportError(f"Concept relevance needs zennit-crp (BSD-3-Clause-Clear); {_EXTRA_HINT}.") from error
    return crp


class Concepts(NamedTuple):
    """The top concepts of each sample (see :meth:`ConceptRelevance.concepts`).

    Attributes:
        ids: channel indices of the layer ``(B, k)``, most relevant first.
        relevances: their relevance ``(B, k)`` (the layer relevance summed over the channel's positions).
        heatmaps: their conditional input heatmaps ``(B, k, H, W)``; each sums to about its relevance.
    """

    ids: Tensor
    relevances: Tensor
    heatmaps: Tensor


def layer_name(model: nn.Module, layer: LayerType) -> str:
    """The dotted name of ``layer`` in ``model`` as called (a forward wrapper adds its prefix)."""
    module = find_layer(model, layer)
    for name, candidate in model.named_modules():
        if candidate is module and name:
            return name
    raise ValueError(f"`layer` {layer!r} must be a submodule of the model, not the model itself.")


class ConceptRelevance(Explainer):
    """Concept Relevance Propagation of one layer's channels (Achtibat et al. 2023) with zennit-crp.

    ``explainer(model, inputs, target)`` returns the full LRP relevance map ``(B, 1, H, W)`` (all concepts);
    :meth:`channel_relevance` the relevance of every channel of ``layer`` ``(B, C)``; :meth:`concepts` the ``top_k``
    channels of each sample with their conditional heatmaps. The output relevance is the target logit, as in
    :class:`~lightning_xai.explainers.LRP` (same heads, same callable targets).

    Conditioning follows zennit-crp's defaults: the relevance at ``layer`` is masked to the chosen channel and the
    backward pass is restricted to the path through ``layer`` (``exclude_parallel``), so relevance that bypasses the
    layer through a skip connection is not counted in a concept's heatmap.

    Args:
        layer: the layer whose output channels are the concepts: a dotted module name or the module. Its output must
            be a tensor ``(B, C, ...)``.
        top_k: how many concepts :meth:`concepts` returns per sample (at most the layer's channel count).
        composite: a Zennit composite name or ``Composite``, as for :class:`~lightning_xai.explainers.LRP`.
        canonizers: ``"auto"``, a list of Zennit canonizers or ``None``, as for LRP.
        composite_kwargs: extra arguments of a named composite.
        chunk_size: how many conditional heatmaps are computed in one forward/backward pass.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
        >>> crp = ConceptRelevance("0", top_k=2, composite="epsilon_plus", canonizers=None)
        >>> result = crp.concepts(model, torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0]))
        >>> result.ids.shape, result.heatmaps.shape
        (torch.Size([3, 2]), torch.Size([3, 2, 4, 4]))
    """

    def __init__(
        self,
        layer: LayerType,
        top_k: int = 6,
        composite: Any = "epsilon_plus_flat",
        canonizers: Any = "auto",
        composite_kwargs: dict[str, Any] | None = None,
        chunk_size: int = 64,
    ) -> None:
        if not isinstance(layer, (str, nn.Module)):
            raise TypeError(f"`layer` must be a dotted module name (str) or an nn.Module, got {type(layer).__name__}.")
        check_positive_int(top_k, "top_k")
        check_positive_int(chunk_size, "chunk_size")
        check_composite_and_canonizers(composite, canonizers)
        import_crp()
        self.layer = layer
        self.top_k = top_k
        self.composite = composite
        self.canonizers = canonizers
        self.composite_kwargs = composite_kwargs
        self.chunk_size = chunk_size

    # ------------------------------------------------------------------ the contract
    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """The full relevance map: zennit-crp's attribution with no concept condition."""
        heatmap, _ = self._attribute(model, inputs, target, conditions=None, record=False)
        return heatmap.unsqueeze(1)

    def channel_relevance(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """The relevance of every channel of ``layer`` for each sample's target, ``(B, C)`` float32.

        It is the layer's relevance summed over each channel's positions (zennit-crp's ``ChannelConcept.attribute``
        without normalisation); higher means the channel carries more evidence for the target. For a conserving
        composite the channels sum to about the target logit (less what bypasses ``layer``).
        """
        return self._guarded(model, inputs, target, self._channel_relevance)

    def concepts(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Concepts:
        """The ``top_k`` most relevant channels of each sample and their conditional heatmaps.

        Args:
            model: the model.
            inputs: images ``(B, C, H, W)``.
            target: class indices ``(B,)`` or a callable ``(outputs) -> (B,)``.

        Returns:
            :class:`Concepts` with ``ids (B, k)`` (int64, most relevant first, by signed relevance),
            ``relevances (B, k)`` and ``heatmaps (B, k, H, W)`` (float32, on the inputs' device).
        """

        def work(model: nn.Module, inputs: Tensor, target: TargetType) -> Concepts:
            relevance = self._channel_relevance(model, inputs, target)
            channels = relevance.shape[1]
            if self.top_k > channels:
                raise ValueError(
                    f"`top_k` must be at most the {channels} channels of layer {self.layer!r}, got {self.top_k}."
                )
            values, ids = relevance.topk(self.top_k, dim=1)
            return Concepts(ids, values, self._conditional_heatmaps(model, inputs, target, ids))

        return self._guarded(model, inputs, target, work)

    def conditional_heatmaps(self, model: nn.Module, inputs: Tensor, target: TargetType, ids: Tensor) -> Tensor:
        """Heatmaps ``(B, k, H, W)`` of the given channels ``ids (B, k)`` of ``layer``, one per channel."""
        if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.shape[0] != inputs.shape[0] or ids.is_floating_point():
            got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(
                f"`ids` must be integer channel indices of shape (B, k) = ({inputs.shape[0]}, k), got {got}."
            )
        return self._guarded(
            model, inputs, target, lambda m, x, t: self._conditional_heatmaps(m, x, t, ids.to(x.device).long())
        )

    # ------------------------------------------------------------------ the work
    def _guarded(self, model: nn.Module, inputs: Tensor, target: TargetType, work: Callable[..., Any]) -> Any:
        """Check the arguments and run ``work`` as :meth:`Explainer.__call__` runs ``attribute``."""
        check_image_batch(inputs, method=type(self).__name__)
        check_target(target, inputs.shape[0])
        with explanation_mode(model, grad=True):
            batch = inputs.detach().clone()
            if isinstance(target, Tensor):
                target = target.detach().clone().to(device=batch.device, dtype=torch.long)
            result = work(model, batch, target)
        if isinstance(result, Concepts):
            return Concepts(result.ids, result.relevances.float(), result.heatmaps.float())
        return result.detach().float()

    def _channel_relevance(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        from crp.concepts import ChannelConcept

        _, relevance = self._attribute(model, inputs, target, conditions=None, record=True)
        return ChannelConcept().attribute(relevance, abs_norm=False).detach()

    def _conditional_heatmaps(self, model: nn.Module, inputs: Tensor, target: TargetType, ids: Tensor) -> Tensor:
        batch, k = ids.shape
        rows = torch.arange(batch, device=inputs.device).repeat_interleave(k)
        channels = ids.flatten().tolist()
        pieces = []
        for start in range(0, rows.numel(), self.chunk_size):
            chunk = rows[start : start + self.chunk_size]
            # a callable target acts row-wise on the outputs (as Captum assumes too)
            chunk_target = target[chunk] if isinstance(target, Tensor) else target
            heatmap, _ = self._attribute(
                model, inputs[chunk], chunk_target, conditions=channels[start : start + self.chunk_size], record=False
            )
            pieces.append(heatmap)
        return torch.cat(pieces).view(batch, k, *inputs.shape[-2:])

    def _attribute(
        self, model: nn.Module, inputs: Tensor, target: TargetType, conditions: list[int] | None, record: bool
    ) -> tuple[Tensor, Tensor]:
        """One CondAttribution call: heatmaps ``(N, H, W)`` and, if ``record``, the layer relevance ``(N, C, ...)``."""
        from crp.attribution import CondAttribution

        name = layer_name(model, self.layer)
        composite = build_composite(self.composite, self.canonizers, model, inputs, self.composite_kwargs)
        attribution = CondAttribution(model, device=inputs.device, no_param_grad=False)
        data = inputs.detach().clone().requires_grad_(True)
        condition_list: list[dict[str, list[int]]] = (
            [{} for _ in range(inputs.shape[0])] if conditions is None else [{name: [c]} for c in conditions]
        )
        with _layer_errors(model, name):
            result = attribution(
                data,
                condition_list,
                composite,
                record_layer=[name] if record else [],
                init_rel=lambda outputs: output_relevance(outputs, target),
            )
        if not record:
            return result.heatmap.detach(), inputs.new_zeros(0)
        if name not in result.relevances:
            raise ValueError(f"`layer` {name!r} was not called in the model's forward pass; it has no relevance.")
        relevance = result.relevances[name]
        if relevance.ndim < 2 or relevance.shape[1] < 1:
            raise ValueError(
                f"`layer` {name!r} must output channels (B, C, ...), got an output of shape {tuple(relevance.shape)}."
            )
        return result.heatmap.detach(), relevance.detach()


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextmanager
def _layer_errors(model: nn.Module, name: str) -> Iterator[None]:
    """Run zennit-crp so that a failure leaves no hook behind and names the layer.

    zennit-crp removes its recording hooks only when the attribution succeeds; on an error they would stay on the
    model (and fire in training). Every hook added inside is removed on the way out, whatever happens. Its failure on
    a layer whose output is not a tensor becomes an error naming the layer.
    """
    modules = list(model.modules())
    before = [{kind: set(getattr(module, kind)) for kind in _HOOK_DICTS} for module in modules]
    try:
        yield
    except AttributeError as error:
        if "retain_grad" in str(error):
            raise ValueError(
                f"`layer` {name!r} must output one tensor with channels (B, C, ...), but its output is not a tensor."
            ) from error
        raise
    finally:
        for module, known in zip(modules, before, strict=True):
            for kind in _HOOK_DICTS:
                hooks = getattr(module, kind)
                for key in [key for key in hooks if key not in known[kind]]:
                    del hooks[key]

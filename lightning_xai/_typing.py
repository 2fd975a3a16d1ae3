"""Type aliases shared by explainers, metrics and callbacks."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

#: What to explain: a LongTensor of class indices of shape ``(B,)``, or a callable that maps the model's
#: outputs to one score per sample, shape ``(B,)`` (for regression heads or embedding similarities). A
#: :class:`~lightning_xai._targets.RowAwareTarget` (such as :class:`~lightning_xai.SimilarityTarget`) is such a
#: callable that also takes the sample index of each output row, ``target(outputs, rows)``.
TargetType = Tensor | Callable[[Tensor], Tensor]

#: A layer given by its dotted module name (``"backbone.layer4"``) or as the module itself.
LayerType = str | nn.Module

#: ``forward_fn(module, inputs) -> outputs``: how to call a model whose ``forward`` is not ``outputs = model(inputs)``.
ForwardFn = Callable[[nn.Module, Tensor], Tensor]

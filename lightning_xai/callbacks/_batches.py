"""From a dataloader batch to ``(inputs, labels)``, and a model wrapper for custom forwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_xai._typing import ForwardFn

INPUT_KEYS = ("image", "images", "input", "inputs", "x")
LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def default_batch_transform(batch: Any) -> tuple[Tensor, Tensor | None]:
    """Split a batch into ``(inputs, labels)``.

    Accepted: a tensor (inputs only; labels None), a tuple or list ``(inputs, labels, ...)``, or a mapping
    with an input key in ``("image", "images", "input", "inputs", "x")`` and optionally a label key in
    ``("label", "labels", "target", "targets", "y")``. Anything else raises ``TypeError`` asking for a
    ``batch_transform``.

    Example:
        >>> import torch
        >>> x, y = default_batch_transform({"image": torch.zeros(2, 1, 4, 4), "label": torch.tensor([0, 1])})
        >>> tuple(x.shape), y.tolist()
        ((2, 1, 4, 4), [0, 1])
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 1 and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) >= 2 and isinstance(batch[1], Tensor) else None
        return batch[0], labels
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in INPUT_KEYS if k in batch and isinstance(batch[k], Tensor)), None)
        if inputs is not None:
            labels = next((batch[k] for k in LABEL_KEYS if k in batch and isinstance(batch[k], Tensor)), None)
            return inputs, labels
        raise TypeError(
            f"The default `batch_transform` found no input tensor in a batch dict with keys {sorted(map(str, batch))}; "
            f"it looks for {INPUT_KEYS} (labels: {LABEL_KEYS}). Pass `batch_transform=lambda batch: (inputs, labels)`."
        )
    raise TypeError(
        f"The default `batch_transform` cannot unpack a batch of type {type(batch).__name__}; it accepts a tensor, "
        f"a tuple/list (inputs, labels, ...) or a dict with keys from {INPUT_KEYS} and {LABEL_KEYS}. "
        "Pass `batch_transform=lambda batch: (inputs, labels)`."
    )


class ForwardWrapper(nn.Module):
    """Present ``forward_fn(module, inputs)`` as a module, so explainers can call it as ``model(inputs)``.

    Layer names stay relative to the wrapped module (``find_layer`` looks through ``wrapped_module``).
    """

    def __init__(self, module: nn.Module, forward_fn: ForwardFn) -> None:
        super().__init__()
        self.wrapped_module = module
        self.forward_fn = forward_fn

    def forward(self, inputs: Tensor) -> Tensor:
        """Call ``forward_fn(wrapped_module, inputs)``."""
        return self.forward_fn(self.wrapped_module, inputs)

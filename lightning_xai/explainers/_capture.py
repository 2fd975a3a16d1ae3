"""Capture one layer's output during a forward pass, checked the same way for every layer-based explainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai._layers import ReshapeType, find_layer, layer_name, to_spatial
from lightning_xai._typing import LayerType


@dataclass
class CapturedLayer:
    """What :func:`capture_layer` returns.

    Attributes:
        outputs: the model's outputs.
        raw: the layer's output as the layer returned it (a leaf requiring grad when captured with ``grad=True``).
        activations: ``raw`` brought to ``(B, K, h, w)`` by the ``reshape`` rule, detached, float32; for clip
            inputs ``(B, C, T, H, W)`` a spatio-temporal layer's ``(B, K, t, h, w)``.
        name: the layer's dotted name (for messages).
    """

    outputs: Tensor
    raw: Tensor
    activations: Tensor
    name: str
    module: nn.Module
    reshape: ReshapeType
    model: nn.Module
    image_size: tuple[int, int]

    def spatial(self, tensor: Tensor) -> Tensor:
        """Apply the layer's ``reshape`` to a tensor shaped like ``raw`` (its gradient, for instance)."""
        return to_spatial(tensor, self.reshape, model=self.model, module=self.module, image_size=self.image_size)


def _dimension_mismatch(method: str, described: str, inputs: Tensor, raw: Tensor, spatial: Tensor, clip: bool) -> str:
    """The message for a 2-D layer under a clip, or a 3-D layer under an image."""
    after = f" ({tuple(spatial.shape)} after `reshape`)" if spatial.shape != raw.shape else ""
    if clip:
        return (
            f"{method}: the inputs are clips (B, C, T, H, W) of shape {tuple(inputs.shape)}, but {described} outputs "
            f"a 4-D map {tuple(raw.shape)}{after} (an nn.Conv2d's (B, K, h, w)); a clip needs a spatio-temporal "
            "layer whose output is (B, K, t, h, w), such as an nn.Conv3d or a block of them."
        )
    return (
        f"{method}: the inputs are images (B, C, H, W) of shape {tuple(inputs.shape)}, but {described} outputs a "
        f"5-D map {tuple(raw.shape)}{after}; an image needs a layer whose output is (B, K, h, w), such as an "
        "nn.Conv2d."
    )


def capture_layer(
    model: nn.Module,
    layer: LayerType | None,
    inputs: Tensor,
    *,
    reshape: ReshapeType,
    method: str,
    grad: bool,
    keep_graph: bool = False,
) -> CapturedLayer:
    """Run ``model(inputs)`` once with a forward hook (removed in ``finally``) on ``layer`` and check its output.

    With ``grad=True`` the layer's output is replaced by a clone of a leaf that requires grad (returned as
    ``raw``), so ``torch.autograd.grad(score, raw)`` is the gradient at the layer, and in-place operations after
    the layer (``ReLU(inplace=True)``) change the clone, never the captured value. With ``grad=False`` a detached
    copy is kept. A layer returning a tuple (``nn.MultiheadAttention``) is captured at its first element. With
    ``keep_graph=True`` (and ``grad=True``) an output that requires grad is captured as it is, still attached to the
    parameters before the layer, so a loss built from it trains them (the guidance losses); the rest of the network
    still gets a clone.

    Raises:
        ValueError: naming the layer, when it is not called in the forward pass, runs more than once per forward
            (every layer-based explainer refuses such a layer: its map would silently follow one call only), does
            not return a tensor, or whose output (after ``reshape``) is not ``(B, K, h, w)`` (``(B, K, t, h, w)`` for
            clips ``(B, C, T, H, W)``: a 2-D layer under a clip, or a 3-D one under an image, is refused by name);
            the message prints the layer's output shape.
    """
    module = find_layer(model, layer, inputs)
    name = layer if isinstance(layer, str) else layer_name(model, module)
    captured: list[Any] = []

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        value = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(value, Tensor):
            captured.append(value)
            return None
        if not grad:
            captured.append(value.detach().clone())
            return None
        leaf = value if keep_graph and value.requires_grad else value.detach().requires_grad_(True)
        captured.append(leaf)
        replacement = leaf.clone()
        if isinstance(output, (tuple, list)):
            return type(output)([replacement, *output[1:]])
        return replacement

    handle = module.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(grad):
            outputs = model(inputs)
    finally:
        handle.remove()
    described = f"`layer` {name!r} ({type(module).__name__})"
    if not captured:
        raise ValueError(
            f"{method}: {described} was not called during the model's forward pass; choose a layer on the path "
            "from the inputs to the outputs (see model.named_modules())."
        )
    if len(captured) > 1:
        raise ValueError(
            f"{method}: {described} ran {len(captured)} times in one forward pass; a layer-based explainer needs a "
            "layer that runs once (a module reused in a loop gives no single map): pass the block that contains it "
            "or a module used once."
        )
    raw = captured[0]
    if not isinstance(raw, Tensor):
        raise ValueError(f"{method}: {described} returns {type(raw).__name__}; one tensor (B, K, h, w) is needed.")
    image_size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    result = CapturedLayer(
        outputs=outputs,
        raw=raw,
        activations=raw,
        name=name,
        module=module,
        reshape=reshape,
        model=model,
        image_size=image_size,
    )
    spatial = result.spatial(raw.detach())
    clip = inputs.ndim == 5
    wanted = 5 if clip else 4
    batch_matches = isinstance(spatial, Tensor) and spatial.shape[0] == inputs.shape[0]
    if batch_matches and spatial.ndim in (4, 5) and spatial.ndim != wanted:
        raise ValueError(_dimension_mismatch(method, described, inputs, raw, spatial, clip))
    if not isinstance(spatial, Tensor) or spatial.ndim != wanted or spatial.shape[0] != inputs.shape[0]:
        got = tuple(spatial.shape) if isinstance(spatial, Tensor) else type(spatial).__name__
        after = f" ({got} after `reshape`={reshape!r})" if got != tuple(raw.shape) else ""
        if clip:
            raise ValueError(
                f"{method} on clips (B, C, T, H, W) needs a `layer` with a spatio-temporal output (B, K, t, h, w), "
                f"B = {inputs.shape[0]} (an nn.Conv3d or a block of them); {described} outputs shape "
                f"{tuple(raw.shape)}{after}. A layer that folds time into the batch (B * T, K, h, w) gives no "
                "single map per clip: choose a spatio-temporal block."
            )
        raise ValueError(
            f"{method} needs a `layer` with a spatial output (B, K, h, w), B = {inputs.shape[0]}; {described} "
            f"outputs shape {tuple(raw.shape)}{after}. Choose a convolutional block, or pass `reshape` "
            "('tokens' for (B, N, D) tokens, 'channels_last' for (B, h, w, D), or a callable) for a token layer."
        )
    result.activations = spatial.float()
    return result

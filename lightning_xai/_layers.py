"""Find the layer a layer-based explainer hooks, by dotted name or default."""

from __future__ import annotations

import difflib

from torch import nn

from lightning_xai._typing import LayerType


def _root(model: nn.Module) -> nn.Module:
    # ``ForwardWrapper`` (callbacks) wraps the user's module; names are relative to the user's module.
    inner = getattr(model, "wrapped_module", None)
    return inner if isinstance(inner, nn.Module) else model


def last_conv2d_name(model: nn.Module) -> str:
    """Dotted name of the last ``nn.Conv2d`` registered in ``model``; ``ValueError`` if it has none."""
    names = [name for name, module in _root(model).named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise ValueError(
            "`layer` was not given and the model has no nn.Conv2d to default to; pass `layer` as a dotted module "
            "name (as in model.named_modules()) or as the module itself."
        )
    return names[-1]


def find_layer(model: nn.Module, layer: LayerType | None) -> nn.Module:
    """Resolve ``layer`` inside ``model``.

    Args:
        model: the model (or a ``ForwardWrapper`` around it).
        layer: a dotted module name such as ``"backbone.layer4"``, a module of ``model``, or None for the last
            ``nn.Conv2d``.

    Raises:
        ValueError: for an unknown name (the message lists close candidates) or a module not inside ``model``.
    """
    root = _root(model)
    if layer is None:
        layer = last_conv2d_name(root)
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in root.modules()):
            raise ValueError(f"`layer` {type(layer).__name__} is not a submodule of the model being explained.")
        return layer
    if not isinstance(layer, str):
        raise TypeError(
            f"`layer` must be a dotted module name (str), an nn.Module or None, got {type(layer).__name__}."
        )
    modules = dict(root.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    candidates = difflib.get_close_matches(layer, [name for name in modules if name], n=5, cutoff=0.4)
    hint = f" Close candidates: {candidates}." if candidates else f" Available: {[n for n in modules if n][:20]}."
    raise ValueError(f"`layer` {layer!r} is not a module of the model.{hint}")

"""Find the layer a layer-based explainer hooks (by dotted name or by default), and bring its output to (B, K, h, w).

Default layers (``layer=None``), in the order they are tried:

1. Vision Transformers, DeiT and Swin (torchvision and timm): the **last block's first normalisation**, as
   pytorch-grad-cam's documentation does (``blocks[-1].norm1``): torchvision ``encoder.layers[-1].ln_1``, timm
   ViT/DeiT ``blocks[-1].norm1``, torchvision Swin ``features[-1][-1].norm1``, timm Swin
   ``layers[-1].blocks[-1].norm1``. Its output is tokens, brought to a grid by :func:`to_spatial`.
2. timm CNNs: the module of the last entry of ``model.feature_info`` (timm's own last feature block: ResNet
   ``layer4``, EfficientNet ``blocks.6``, ConvNeXt ``stages.3``).
3. torchvision CNNs: ResNet/ResNeXt/Wide-ResNet ``layer4``; every model whose convolutional trunk is a
   ``features`` child (DenseNet, VGG, AlexNet, MobileNet v2/v3, EfficientNet, ConvNeXt, MNASNet, RegNet uses
   ``trunk_output``) that trunk's output, i.e. its last block's output, post-activation.
4. Any other model: the **last module, in execution order, whose output is a spatial map** ``(B, K, h, w)`` (for
   clips ``(B, C, T, H, W)``, a spatio-temporal map ``(B, K, t, h, w)``, as a 3-D conv net's last block gives) with
   ``h * w > 1`` and not the output of a pooling layer (found with one forward pass of the batch being explained;
   a container that finishes after its last child wins, so the block output is taken, not the convolution inside
   it). Pooling outputs are passed over because a head that starts with ``AdaptiveMaxPool2d(4)`` would otherwise
   give a 4 x 4 map of max positions instead of the trunk's last feature map. Without a batch (static look-up), the
   last ``nn.Conv2d``.
"""

from __future__ import annotations

import difflib
import math
import warnings
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_xai._typing import LayerType

#: How a layer's output becomes ``(B, K, h, w)``: ``"auto"``, ``"tokens"``, ``"channels_last"``, ``None`` (as is) or
#: a callable ``(Tensor) -> (B, K, h, w)`` (pytorch-grad-cam's ``reshape_transform``).
ReshapeType = Literal["auto", "tokens", "channels_last"] | Callable[[Tensor], Tensor] | None
RESHAPES: tuple[str | None, ...] = ("auto", "tokens", "channels_last", None)
#: Pooling layers, whose outputs the default-layer search passes over.
_POOLING = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool3d,
    nn.LPPool3d,
    nn.FractionalMaxPool3d,
)
#: At most this many prefix tokens (class, distillation, register tokens) are inferred when the model does not say.
MAX_PREFIX_TOKENS = 8


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside our ``ForwardWrapper`` (``wrapped_module``), DDP (``module``) or ``torch.compile``
    (``_orig_mod``): layer names are relative to it and explainers run it eagerly.
    """  # noqa: D205
    seen = 0
    while seen < 8:
        seen += 1
        for attribute in ("wrapped_module", "_orig_mod"):
            inner = getattr(model, attribute, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            inner = getattr(model, "module", None)
            if type(model).__name__ in ("DistributedDataParallel", "DataParallel") and isinstance(inner, nn.Module):
                model = inner
                continue
            return model
    return model


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.compile`` wrapper (``OptimizedModule``, holding ``_orig_mod``)."""
    return isinstance(getattr(module, "_orig_mod", None), nn.Module)


def eager_model(model: nn.Module, method: str = "explainer") -> nn.Module:
    """The module to explain: the original module of a ``torch.compile`` wrapper, run eagerly.

    Explainers hook layers and differentiate through the model; a compiled graph can skip module hooks, and in
    plain torch a compiled BatchNorm in eval mode can return wrong input gradients. So a compiled top-level model
    is replaced by its ``_orig_mod`` (the same parameters and buffers, so nothing is copied and the training run is
    not affected). A compiled *submodule* (``self.backbone = torch.compile(backbone)``) cannot be swapped from the
    outside: a ``UserWarning`` says so and the explanation runs it compiled.
    """
    while is_compiled(model):
        model = model._orig_mod  # type: ignore[assignment]
    compiled = [name for name, module in model.named_modules() if name and is_compiled(module)]
    if compiled:
        warnings.warn(
            f"{method}: the model holds torch.compile'd submodules {compiled[:5]}; they run compiled during the "
            "explanation, where layer hooks may not fire and a compiled BatchNorm in eval mode can give wrong input "
            "gradients. Compile the whole model (its original module is explained eagerly) or pass the "
            "uncompiled module.",
            UserWarning,
            stacklevel=3,
        )
    return model


def _root(model: nn.Module) -> nn.Module:
    return unwrap_model(model)


def last_conv2d_name(model: nn.Module) -> str:
    """Dotted name of the last ``nn.Conv2d`` registered in ``model``; ``ValueError`` if it has none."""
    names = [name for name, module in _root(model).named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise ValueError(
            "`layer` was not given and the model has no nn.Conv2d to default to; pass `layer` as a dotted module "
            "name (as in model.named_modules()) or as the module itself."
        )
    return names[-1]


def _family(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__name__}"


def is_transformer(model: nn.Module) -> bool:
    """Whether ``model`` is a torchvision or timm ViT, DeiT or Swin (by class and module name)."""
    name = _family(model).lower()
    return any(key in name for key in ("visiontransformer", "vision_transformer", "swin", "deit", ".vit"))


def _is_swin(model: nn.Module) -> bool:
    return "swin" in _family(model).lower()


def family_layer_name(model: nn.Module) -> str | None:
    """Default layer of a known torchvision or timm family (module docstring, rules 1-3), or None."""
    root = _root(model)
    modules = dict(root.named_modules())
    if is_transformer(root):
        norms = [n for n, m in modules.items() if n.endswith((".norm1", ".ln_1")) and isinstance(m, nn.LayerNorm)]
        if norms:
            return norms[-1]
    info = getattr(root, "feature_info", None)
    if isinstance(info, (list, tuple)) and info and isinstance(info[-1], dict):
        name = info[-1].get("module")
        if isinstance(name, str) and name in modules and not is_transformer(root):
            return name
    module_name = type(root).__module__
    if module_name.startswith("torchvision.models"):
        if "layer4" in modules and "fc" in modules:
            return "layer4"
        if "trunk_output" in modules:
            return "trunk_output"
        if "features" in modules:
            return "features"
    return None


#: The last spatial module found per model (weakly held), keyed by what decides it (see last_spatial_module_name).
_LAST_SPATIAL: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, str]] = weakref.WeakKeyDictionary()


def last_spatial_module_name(model: nn.Module, inputs: Tensor) -> str:
    """The last module, in execution order, with a spatial output that is not a pooling layer's (one forward).

    Spatial means ``(B, K, h, w)`` with ``h * w > 1``; for clips ``(B, C, T, H, W)``, spatio-temporal
    ``(B, K, t, h, w)`` with ``t * h * w > 1`` (the last ``nn.Conv3d`` block of a 3-D conv net).

    The answer is remembered per model (weakly), ``forward_fn``, input shape (without the batch), dtype, device
    type and module structure (every ``(name, type)``), so the forward runs once and not at every explanation; a
    model whose modules are replaced is searched again.
    """
    root = _root(model)
    structure = tuple((name, type(module)) for name, module in root.named_modules())
    key = (getattr(model, "forward_fn", None), tuple(inputs.shape[1:]), inputs.dtype, inputs.device.type, structure)
    known = _LAST_SPATIAL.get(root)
    if known is not None and key in known:
        return known[key]
    name = _find_last_spatial_module(model, root, inputs)
    _LAST_SPATIAL.setdefault(root, {})[key] = name
    return name


def _find_last_spatial_module(model: nn.Module, root: nn.Module, inputs: Tensor) -> str:
    dims = inputs.ndim
    finished: list[str] = []
    pooled: list[Tensor] = []  # outputs of pooling layers (a container returning one is passed over too)
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            spatial = isinstance(output, Tensor) and output.ndim == dims and output.shape[0] == inputs.shape[0]
            if not spatial or math.prod(output.shape[2:]) <= 1:
                return
            if isinstance(module, _POOLING) or any(output is value for value in pooled):
                pooled.append(output)
                return
            finished.append(name)

        return hook

    for name, module in root.named_modules():
        if name:
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not finished and dims == 5:
        raise ValueError(
            "`layer` was not given and no module of the model outputs a spatio-temporal map (B, K, t, h, w) with "
            f"t * h * w > 1 for the clips of shape {tuple(inputs.shape)}; pass `layer` as a dotted module name (as in "
            "model.named_modules()) naming an nn.Conv3d or a block of them."
        )
    if not finished:
        raise ValueError(
            "`layer` was not given and no module of the model outputs a spatial map (B, K, h, w) with h * w > 1; "
            "pass `layer` as a dotted module name (as in model.named_modules()) and `reshape` for token layers."
        )
    return finished[-1]


def default_layer_name(model: nn.Module, inputs: Tensor | None = None) -> str:
    """The default layer's dotted name: the family rule, else the last spatial module (or the last ``nn.Conv2d``)."""
    name = family_layer_name(model)
    if name is not None:
        return name
    if inputs is not None:
        return last_spatial_module_name(model, inputs)
    return last_conv2d_name(model)


def layer_name(model: nn.Module, module: nn.Module) -> str:
    """Dotted name of ``module`` inside ``model`` (``"?"`` when absent), for error messages."""
    for name, candidate in _root(model).named_modules():
        if candidate is module:
            return name
    return "?"


def find_layer(model: nn.Module, layer: LayerType | None, inputs: Tensor | None = None) -> nn.Module:
    """Resolve ``layer`` inside ``model``.

    Args:
        model: the model (or a ``ForwardWrapper``, DDP or ``torch.compile`` wrapper around it).
        layer: a dotted module name such as ``"backbone.layer4"``, a module of ``model``, or None for the default
            layer (module docstring).
        inputs: the batch being explained; lets the default of an unknown model be found by one forward pass.

    Raises:
        ValueError: for an unknown name (the message lists close candidates) or a module not inside ``model``.
    """
    root = _root(model)
    if layer is None:
        layer = default_layer_name(root, inputs)
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


def check_reshape(reshape: object) -> None:
    """Raise unless ``reshape`` is one of :data:`RESHAPES` or a callable."""
    if callable(reshape):
        return
    if reshape not in RESHAPES:
        raise ValueError(
            f"`reshape` must be one of {RESHAPES} or a callable (Tensor) -> (B, K, h, w), got {reshape!r}."
        )


def prefix_tokens(model: nn.Module) -> int | None:
    """Prefix (class, distillation, register) tokens of a torchvision or timm ViT; None when the model does not say."""
    root = _root(model)
    count = getattr(root, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    if isinstance(getattr(root, "class_token", None), Tensor):  # torchvision VisionTransformer
        return 1
    return None


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w == tokens`` and ``h / w`` the image's aspect ratio, or None."""
    if tokens <= 0:
        return None
    rows = max(1, round(math.sqrt(tokens * height / width)))
    for candidate in (rows, rows - 1, rows + 1):
        if candidate > 0 and tokens % candidate == 0:
            columns = tokens // candidate
            if abs(candidate / columns - height / width) <= 0.5 * height / width:
                return candidate, columns
    return None


def tokens_to_grid(tokens: Tensor, prefix: int | None, image_size: tuple[int, int]) -> Tensor:
    """Tokens ``(B, N, D)`` -> ``(B, D, h, w)``, dropping ``prefix`` leading tokens (inferred when None)."""
    batch, count, dims = tokens.shape
    height, width = image_size
    candidates = [prefix] if prefix is not None else range(min(MAX_PREFIX_TOKENS, count - 1) + 1)
    for drop in candidates:
        grid = token_grid(count - drop, height, width)
        if grid is not None:
            return tokens[:, drop:].reshape(batch, grid[0], grid[1], dims).permute(0, 3, 1, 2)
    raise ValueError(
        f"`reshape='tokens'` cannot lay {count} tokens (prefix {prefix if prefix is not None else 'unknown'}) on a "
        f"grid with the image's aspect ratio {height}x{width}; pass `reshape` as a callable (Tensor) -> "
        "(B, D, h, w)."
    )


def _channels_last_layer(model: nn.Module, module: nn.Module, output: Tensor) -> bool:
    """Whether a 4-D output is laid out ``(B, h, w, D)`` (a 5-D one ``(B, t, h, w, D)``): a Swin model's block output
    (torchvision's video ``swin3d_*`` too), or a plain LayerNorm over it.
    """  # noqa: D205
    normalised = getattr(module, "normalized_shape", None)
    if isinstance(module, nn.LayerNorm) and not type(module).__name__.endswith(("2d", "3d")):
        return tuple(normalised or ()) == (output.shape[-1],)
    convolution = isinstance(module, (nn.Conv2d, nn.Conv3d))
    return _is_swin(_root(model)) and not convolution and output.shape[1] != output.shape[-1]


def to_spatial(
    output: Tensor, reshape: ReshapeType, *, model: nn.Module, module: nn.Module, image_size: tuple[int, int]
) -> Tensor:
    """Bring a layer's output to ``(B, K, h, w)``.

    ``"auto"``: a 3-D output ``(B, N, D)`` is tokens (``"tokens"``); a 4-D output is channels-last
    (``"channels_last"``) when the layer is an ``nn.LayerNorm`` over its last dimension or the model is a Swin
    (torchvision and timm Swin blocks work on ``(B, h, w, D)``), and used as is otherwise; likewise a 5-D output
    ``(B, t, h, w, D)`` of a video Swin (``swin3d_t``) or of a LayerNorm becomes ``(B, D, t, h, w)``. ``"tokens"``
    drops the prefix tokens (the model's ``num_prefix_tokens`` in timm: 1 for ViT, 2 for distilled DeiT; 1 for
    torchvision's ``class_token``; otherwise the fewest, at most 8, that leave a grid with the image's aspect ratio)
    and lays the rest on an ``h x w`` grid row by row, as pytorch-grad-cam's ``reshape_transform`` does. ``None``
    takes the output as is. A callable is applied as is (it must be a pure re-indexing, since it is also applied to
    gradients). The result is checked by the caller.
    """
    if callable(reshape):
        return reshape(output)
    if reshape is None:
        return output
    if reshape == "auto":
        if output.ndim == 3:
            reshape = "tokens"
        elif output.ndim in (4, 5) and _channels_last_layer(model, module, output):
            reshape = "channels_last"
        else:
            return output
    if reshape == "tokens":
        if output.ndim != 3:
            raise ValueError(f"`reshape='tokens'` needs a (B, N, D) layer output, got shape {tuple(output.shape)}.")
        return tokens_to_grid(output, prefix_tokens(model), image_size)
    if output.ndim == 5:  # a clip layer (B, t, h, w, D)
        return output.permute(0, 4, 1, 2, 3)
    if output.ndim != 4:
        raise ValueError(
            f"`reshape='channels_last'` needs a (B, h, w, D) layer output (or (B, t, h, w, D) for clips), got shape "
            f"{tuple(output.shape)}."
        )
    return output.permute(0, 3, 1, 2)

"""Any ``captum.attr`` attribution class behind the explainer contract, and the seeded RNG the Captum wrappers share."""

from __future__ import annotations

import difflib
import inspect
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import captum.attr
import numpy as np
import torch
from captum.attr._utils.attribution import Attribution, LayerAttribution, NeuronAttribution, PerturbationAttribution
from torch import Tensor, nn

from lightning_xai._checks import check_positive_int
from lightning_xai._layers import find_layer
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.explainers.base import (
    ChannelReduction,
    Explainer,
    captum_forward,
    check_channel_reduction,
    reduce_channels,
    upsample_to,
)


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global generators that draw on ``device`` with ``seed``, and put their streams back on exit.

    Captum draws its randomness from global generators: torch's (NoiseTunnel's noise, Lime's samples), NumPy's
    (GradientShap's path points and baseline choice) and Python's ``random`` (``ProductBaselines``). Inside this
    context the CPU generator, for a CUDA ``device`` that device's generator, NumPy's and Python's restart from
    ``seed``, so an explanation is the same on every call; on exit every stream continues exactly where it was.
    Unlike ``torch.manual_seed``, no other CUDA device is reseeded and no lazy seed is queued for one.

    Example:
        >>> import torch
        >>> with seeded_rng(0, torch.device("cpu")):
        ...     first = torch.rand(2)
        >>> with seeded_rng(0, torch.device("cpu")):
        ...     second = torch.rand(2)
        >>> torch.equal(first, second)
        True
    """
    cuda_devices: list[int] = []
    if device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            for index in cuda_devices:
                torch.cuda.default_generators[index].manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _constructor_parameters(method: type) -> list[str]:
    return [name for name in inspect.signature(method).parameters if name != "self"]


def _accepted_methods() -> list[str]:
    """Names of the ``captum.attr`` classes this adapter can run (primary and layer attributions)."""
    names = []
    for name in captum.attr.__all__:
        candidate = getattr(captum.attr, name, None)
        if isinstance(candidate, type) and _unsupported_reason(candidate) is None:
            names.append(name)
    return names


def _unsupported_reason(method: type) -> str | None:
    if not issubclass(method, Attribution) or not callable(getattr(method, "attribute", None)):
        return "it is not a captum.attr attribution class with an `attribute` method"
    if issubclass(method, NeuronAttribution):
        return "neuron attributions explain one hidden neuron, not a target score"
    parameters = _constructor_parameters(method)
    if not parameters or parameters[0] not in ("forward_func", "model"):
        return "its first argument is not the model or its forward function (use SmoothGrad for NoiseTunnel)"
    return None


def resolve_captum_method(method: str | type) -> type[Attribution]:
    """The ``captum.attr`` class named by ``method`` (a class or its name), or a ``ValueError`` listing options."""
    if isinstance(method, str):
        resolved = getattr(captum.attr, method, None) if method in captum.attr.__all__ else None
        if resolved is None:
            accepted = _accepted_methods()
            close = difflib.get_close_matches(method, accepted, n=5, cutoff=0.4)
            hint = f"Close candidates: {close}." if close else f"Accepted: {accepted}."
            raise ValueError(f"`method` {method!r} is not a class of captum.attr. {hint}")
        method = resolved
    if not isinstance(method, type):
        raise TypeError(f"`method` must be a captum.attr class or its name, got {type(method).__name__}.")
    reason = _unsupported_reason(method)
    if reason is not None:
        raise ValueError(f"`method` {method.__name__} is not supported: {reason}. Accepted: {_accepted_methods()}.")
    return cast(type[Attribution], method)


def _tuples(value: Any) -> Any:
    # YAML gives lists where Captum expects tuples (sliding_window_shapes, strides, baselines per input).
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(item, device) for item in value)
    return value


class _ScoreModule(nn.Module):
    """A module whose forward is a Captum forward function, for methods that need ``model: nn.Module``.

    The explained model is a submodule, so hook-based methods (GuidedBackprop, DeepLift, LRP) find its layers.
    """

    def __init__(self, model: nn.Module, forward: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, inputs: Tensor) -> Tensor:
        return self._forward(inputs)


class Captum(Explainer):
    """Any ``captum.attr`` primary or layer attribution method behind the ``explainer(model, inputs, target)`` contract.

    The method is built for each call on the model being explained, with a forward function that implements our
    target contract (:func:`~lightning_xai.explainers.base.captum_forward`), and run inside the explainer's safe
    context. Pixel attributions ``(B, C, H, W)`` are reduced over channels; a layer method's map ``(B, K, h, w)``
    is reduced over its ``K`` channels (LayerGradCam already gives ``K = 1``) and upsampled (bilinear) to the
    input size. Methods that draw random numbers (GradientShap, Lime, KernelShap, FeaturePermutation,
    ShapleyValueSampling) draw them from a generator seeded with ``seed``, so results are repeatable and the
    global RNG stream is left untouched.

    Works on models with in-place operations, with one Captum limitation found on ``ResidualCNN`` (Captum 0.9):
    ``LayerIntegratedGradients`` fails ("a leaf Variable that requires grad is being used in an in-place
    operation") on a layer whose output is modified in place afterwards (a BatchNorm followed by
    ``ReLU(inplace=True)``); choose the module that applies the in-place op (the ReLU or its enclosing block)
    instead. LayerGradCam, LayerGradientXActivation, LayerConductance and the others clone the hooked output and
    are not affected.

    Reference: N. Kokhlikyan et al., "Captum: A unified and generic model interpretability library for PyTorch",
    arXiv:2009.07896, 2020; each method's own paper is cited in Captum's documentation.

    Args:
        method: a ``captum.attr`` class or its name, e.g. ``"GuidedBackprop"``, ``"DeepLift"``,
            ``"LayerGradCam"``. Neuron attributions and ``NoiseTunnel`` are refused (see :class:`SmoothGrad`).
        layer: for layer methods (and GuidedGradCam), the layer: a dotted module name or a module; None picks
            the last ``nn.Conv2d``. Refused for methods that take no layer.
        channel_reduction: ``"sum"`` (signed, default), ``"abs_sum"``, ``"max_abs"`` or None to keep every
            channel (the input's ``C``, or a layer method's ``K``).
        seed: seed of the random numbers drawn by stochastic methods.
        init_kwargs: extra arguments of the method's constructor (e.g. ``{"multiply_by_inputs": False}``).
        attribute_kwargs: arguments of the method's ``attribute`` (e.g. ``sliding_window_shapes``, ``n_steps``,
            ``baselines``), as a dict: the form a LightningCLI YAML config gives. Lists are passed as tuples and
            tensors are moved to the inputs' device; ``inputs`` and ``target`` are supplied by the explainer.
        **kwargs: more ``attribute`` arguments, merged into ``attribute_kwargs`` (convenient from Python).

    Returns (when called):
        float32 ``(B, 1, H, W)`` (or ``(B, C, H, W)``/``(B, K, H, W)`` with ``channel_reduction=None``); the
        meaning of higher is the method's own (for most, more evidence for the target score).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                       nn.Linear(4, 2))
        >>> Captum("GuidedBackprop")(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
        >>> Captum("LayerGradCam", layer="0", relu_attributions=True)(model, torch.rand(2, 3, 8, 8),
        ...                                                           torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        method: str | type,
        *,
        layer: LayerType | None = None,
        channel_reduction: ChannelReduction | None = "sum",
        seed: int = 0,
        init_kwargs: dict[str, Any] | None = None,
        attribute_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        resolved = resolve_captum_method(method)
        duplicated = sorted(set(attribute_kwargs or {}) & set(kwargs))
        if duplicated:
            raise ValueError(f"{duplicated} given both in `attribute_kwargs` and as keyword arguments; give them once.")
        attribute_kwargs = {**(attribute_kwargs or {}), **kwargs}
        check_channel_reduction(channel_reduction)
        check_positive_int(seed, "seed", minimum=0)
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise TypeError(f"`layer` must be a dotted module name (str), an nn.Module or None, got {layer!r}.")
        constructor = _constructor_parameters(resolved)
        self._takes_layer = "layer" in constructor
        if layer is not None and not self._takes_layer:
            raise ValueError(f"`layer` is only accepted by layer methods; {resolved.__name__} takes no layer.")
        init_kwargs = dict(init_kwargs or {})
        reserved = {"forward_func", "model", "layer"} & set(init_kwargs)
        if reserved:
            raise ValueError(f"`init_kwargs` must not set {sorted(reserved)}: the explainer supplies them.")
        self._check_kwargs(resolved, init_kwargs, "init_kwargs", resolved.__name__)
        if {"inputs", "target"} & set(attribute_kwargs):
            raise ValueError("`inputs` and `target` are supplied when the explainer is called; do not pass them.")
        self._check_kwargs(resolved.attribute, attribute_kwargs, "attribute_kwargs", resolved.__name__)
        self.method = resolved.__name__
        self.layer = layer
        self.channel_reduction = channel_reduction
        self.seed = seed
        self.init_kwargs = init_kwargs
        self.attribute_kwargs = {key: _tuples(value) for key, value in attribute_kwargs.items()}
        self._method = resolved
        self._is_layer_method = issubclass(resolved, LayerAttribution)
        self._takes_target = "target" in inspect.signature(resolved.attribute).parameters
        self._takes_model = constructor[0] == "model"

    @staticmethod
    def _check_kwargs(function: Callable[..., Any], kwargs: dict[str, Any], name: str, method: str) -> None:
        parameters = inspect.signature(function).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        accepted = [key for key in parameters if key not in ("self", "forward_func", "model", "layer", "inputs")]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"`{name}` holds {unknown}, which {method} does not accept; accepted: {accepted}.")

    @property
    def name(self) -> str:
        """Name used in logged keys: the Captum class name, e.g. ``GuidedBackprop``."""
        return self.method

    @property
    def needs_grad(self) -> bool:  # type: ignore[override]
        """Perturbation methods (Occlusion, Lime, KernelShap, ...) only run forwards."""
        return not issubclass(self._method, PerturbationAttribution)

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Run the Captum method and bring its output to the ``(B, 1, H, W)`` contract."""
        forward, captum_target = captum_forward(model, target)
        subject: Callable[[Tensor], Tensor] = _ScoreModule(model, forward) if self._takes_model else forward
        init_args: list[Any] = [subject]
        if self._takes_layer:
            init_args.append(find_layer(model, self.layer))
        attribution = self._method(*init_args, **self.init_kwargs)
        kwargs = {key: _to_device(value, inputs.device) for key, value in self.attribute_kwargs.items()}
        if self._takes_target:
            kwargs["target"] = captum_target
        if self.needs_grad:
            # Our clone. LayerDeepLift hooks the layer output, which needs a graph to hook; the primary methods
            # would otherwise warn on every call that the inputs did not require gradients.
            inputs.requires_grad_(True)
        with seeded_rng(self.seed, inputs.device):
            result = attribution.attribute(inputs, **kwargs)
        if isinstance(result, (tuple, list)):
            if len(result) != 1:
                raise ValueError(f"{self.method} returned {len(result)} attributions; one tensor is supported.")
            result = result[0]
        if not isinstance(result, Tensor) or result.ndim != 4:
            got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise ValueError(
                f"{self.method} returned attributions of shape {got}; expected (B, K, h, w) maps (a layer with "
                "spatial output for layer methods)."
            )
        result = reduce_channels(result.detach(), self.channel_reduction)
        return upsample_to(result, (inputs.shape[-2], inputs.shape[-1]))

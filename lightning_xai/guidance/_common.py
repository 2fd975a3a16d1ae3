"""What the guidance losses share: argument checks, the masks' shapes, and an autograd context that trains or logs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from lightning_xai._checks import _describe, check_finite


def check_weight(weight: object, name: str = "weight") -> float:
    """Return ``weight`` as a float; raise unless it is a finite real number ``>= 0``."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"`{name}` must be a real number >= 0, got {_describe(weight)}.")
    if not (weight >= 0 and weight != float("inf")):
        raise ValueError(f"`{name}` must be a finite real number >= 0, got {weight}.")
    return float(weight)


def check_guided_model(model: object, owner: str) -> None:
    """Raise unless ``model`` is a callable module that is not a ``DistributedDataParallel`` wrapper.

    The penalty runs its own forward inside the training step. Through DDP's wrapper that forward would be a second
    DDP forward before one backward (and Lightning's wrapper routes it to ``training_step``); the module inside
    gets its gradients reduced by the loss's backward all the same.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError(
            f"{owner} got a DistributedDataParallel wrapper as `model`; pass the module inside it (`self` in a "
            f"LightningModule's training_step, `model.module` in plain PyTorch). The loss's backward still reduces "
            f"the penalty's gradients across processes."
        )
    if not callable(model):
        raise TypeError(f"`model` must be a callable nn.Module, got {type(model).__name__}.")


def check_guided_inputs(inputs: object, owner: str) -> None:
    """Raise unless ``inputs`` is a floating-point ``(B, C, H, W)`` batch, the only kind that has an input gradient."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}.")
    if inputs.ndim != 4:
        raise ValueError(f"`inputs` must have shape (B, C, H, W) (4 dimensions), got shape {tuple(inputs.shape)}.")
    if inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must hold at least one sample, got shape {tuple(inputs.shape)}.")
    if not inputs.is_floating_point():
        raise TypeError(
            f"{owner} differentiates the model with respect to `inputs`, which must be a floating-point tensor; got "
            f"dtype {inputs.dtype} (convert the images to float before the penalty, e.g. `inputs.float() / 255`)."
        )


def broadcast_mask(
    mask: object, inputs: Tensor, name: str = "forbidden", *, allow_channels: bool = True, at_most_one: bool = False
) -> Tensor:
    """Check a region ``mask`` against ``inputs (B, C, H, W)`` and return it as a float ``(B, 1 or C, H, W)`` tensor.

    Accepted shapes: ``(H, W)`` (one region for every sample), ``(B, 1, H, W)`` (one per sample) and, where
    ``allow_channels``, ``(B, C, H, W)`` (one per sample and channel). Bool masks become 0/1; every value must be
    finite and ``>= 0`` (``<= 1`` too where ``at_most_one``). The result is on the inputs' device, in float32 or the
    inputs' dtype when that is wider.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor (a 0/1 mask or non-negative weights), got {type(mask).__name__}."
        )
    batch, channels, height, width = inputs.shape
    accepted = [(height, width), (batch, 1, height, width)]
    if allow_channels:
        accepted.append((batch, channels, height, width))
    if tuple(mask.shape) not in accepted:
        names = "(H, W), (B, 1, H, W)" + (" or (B, C, H, W)" if allow_channels else "")
        raise ValueError(
            f"`{name}` must have shape {names} matching the inputs' {tuple(inputs.shape)}, i.e. one of {accepted}; "
            f"got {tuple(mask.shape)}."
        )
    if mask.is_complex():
        raise TypeError(f"`{name}` must be real (a 0/1 mask or non-negative weights), got dtype {mask.dtype}.")
    dtype = torch.promote_types(inputs.dtype, torch.float32)
    values = mask.detach().to(device=inputs.device, dtype=dtype)
    check_finite(values, name)
    if values.numel() and float(values.min()) < 0:
        raise ValueError(f"`{name}` must hold 0/1 values or non-negative weights, got minimum {float(values.min())}.")
    if at_most_one and values.numel() and float(values.max()) > 1:
        raise ValueError(
            f"`{name}` must hold values in [0, 1] (a share is penalised), got maximum {float(values.max())}."
        )
    return values.expand(batch, 1, height, width) if values.ndim == 2 else values


@contextmanager
def differentiable_or_logged() -> Iterator[bool]:
    """Autograd on for the penalty; yields whether the result may carry a graph to the parameters.

    In a ``training_step`` (autograd enabled) the penalty is built with ``create_graph=True`` so it trains the
    model. Under ``torch.no_grad()`` or ``torch.inference_mode()`` (Lightning's validation and test) autograd is
    switched on locally, outside inference mode, only to compute the input gradient; the value comes back detached,
    for logging.
    """
    trains = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    with torch.inference_mode(False), torch.enable_grad():
        yield trains


def leaf_inputs(inputs: Tensor, trains: bool) -> Tensor:
    """The tensor the input gradient is taken at.

    Inputs that already require grad (the output of a differentiable augmentation, say) are used as they are, so
    the penalty's gradient reaches what produced them; otherwise a detached clone that requires grad, so nothing
    is ever written to the caller's tensor (a clone also leaves inference mode).
    """
    if trains and inputs.requires_grad:
        return inputs
    return inputs.detach().clone().requires_grad_(True)

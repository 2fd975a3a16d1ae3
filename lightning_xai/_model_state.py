"""Run a model for explanation and leave it, and the global RNG, exactly as found."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: Models inside an :func:`explanation_mode` of this thread; a nested call on one of them only switches autograd.
_ACTIVE: set[tuple[int, int]] = set()


@contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore the global CPU and CUDA random streams on exit, so training draws the same numbers afterwards."""
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _set_training(module: nn.Module, flag: bool) -> None:
    """``module.training = flag`` without ``nn.Module.__setattr__``'s lookups (a plain instance attribute)."""
    if "training" in module.__dict__:
        module.__dict__["training"] = flag
    else:
        module.training = flag


@contextmanager
def explanation_mode(model: nn.Module, *, grad: bool = True) -> Iterator[None]:
    """Context in which ``model`` is explained or scored without changing anything training computes.

    Inside the context the model is in ``eval()`` mode, its parameters do not require gradients (so no
    parameter ``.grad`` can be written and no weight gradients are computed), ``torch.inference_mode`` is
    off (Lightning's ``validate``/``test`` run under it) and autograd is on when ``grad`` is True, off
    otherwise. On exit, whatever happens, every module's ``training`` flag, every parameter's
    ``requires_grad`` flag and the global RNG streams are put back as they were.

    Args:
        model: the module to explain.
        grad: whether autograd is enabled inside (True for gradient methods, False for scoring).

    Cost: one walk over the modules; only the flags that change (modules in training mode, parameters that
    require gradients) are written, and a nested call on a model already in explanation mode (a metric's
    ``update`` calling its functional form) only switches autograd, the outer call restoring everything.
    """
    key = (threading.get_ident(), id(model))
    if key in _ACTIVE:  # nested (a metric's update calling its functional): the outer call restores
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            yield
        return
    modules = list(model.modules())
    training_flags = [module.training for module in modules]
    seen: set[int] = set()
    parameters = []  # each parameter once (shared ones appear under several modules)
    for module in modules:
        for parameter in module._parameters.values():
            if parameter is not None and id(parameter) not in seen:
                seen.add(id(parameter))
                parameters.append(parameter)
    trainable = [parameter for parameter in parameters if parameter.requires_grad]  # only these change
    _ACTIVE.add(key)
    try:
        with preserved_global_rng(), torch.inference_mode(False), torch.set_grad_enabled(grad):
            for module, flag in zip(modules, training_flags, strict=True):
                if flag:
                    _set_training(module, False)
            for parameter in trainable:
                parameter.requires_grad_(False)
            yield
    finally:
        _ACTIVE.discard(key)
        for module, flag in zip(modules, training_flags, strict=True):
            if module.training != flag:
                _set_training(module, flag)
        for parameter in parameters:  # every parameter, in case the explained code flipped one
            if parameter.requires_grad:
                parameter.requires_grad_(False)
        for parameter in trainable:
            parameter.requires_grad_(True)

"""Run a model for explanation and leave it, and the global RNG, exactly as found."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


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
    """
    training_flags = [(module, module.training) for module in model.modules()]
    grad_flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        with preserved_global_rng(), torch.inference_mode(False), torch.set_grad_enabled(grad):
            model.eval()
            for parameter, _ in grad_flags:
                parameter.requires_grad_(False)
            yield
    finally:
        for module, flag in training_flags:
            module.training = flag
        for parameter, flag in grad_flags:
            parameter.requires_grad_(flag)

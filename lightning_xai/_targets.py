"""Targets: which score of the model's outputs an explanation or a metric follows."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_xai._typing import TargetType

ScoreKind = Literal["probability", "logit", "log_probability"]
SCORE_KINDS: tuple[str, ...] = ("probability", "logit", "log_probability")


def check_target(target: TargetType, batch_size: int, name: str = "target") -> None:
    """Raise unless ``target`` is a callable or an integer tensor of shape ``(batch_size,)`` with no negatives."""
    if callable(target) and not isinstance(target, torch.Tensor):
        return
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a LongTensor of class indices of shape (B,) or a callable (outputs) -> (B,) scores, "
            f"got {type(target).__name__}."
        )
    if target.dtype in (torch.bool,) or target.is_floating_point() or target.is_complex():
        raise TypeError(f"`{name}` must hold integer class indices, got dtype {target.dtype}.")
    if tuple(target.shape) != (batch_size,):
        raise ValueError(
            f"`{name}` must have shape (B,) = ({batch_size},), one class index per sample, got shape "
            f"{tuple(target.shape)}."
        )
    if target.numel() and int(target.min()) < 0:
        raise ValueError(f"`{name}` must hold class indices >= 0, got {int(target.min())}.")


def select_scores(outputs: Tensor, target: TargetType, name: str = "target") -> Tensor:
    """Pick one score per sample from the model's ``outputs``.

    Args:
        outputs: the model's outputs, ``(B, num_classes)`` for a class-index target, anything the callable
            accepts otherwise.
        target: class indices ``(B,)`` or a callable ``(outputs) -> (B,)``.
        name: the argument name used in error messages.

    Returns:
        Tensor of shape ``(B,)``.
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        scores = target(outputs)
        batch = outputs.shape[0] if isinstance(outputs, Tensor) else None
        if not isinstance(scores, Tensor) or scores.ndim != 1 or (batch is not None and scores.shape[0] != batch):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"The callable `{name}` must return one score per sample, shape (B,), got {got}.")
        return scores
    check_class_range(outputs, target, name)
    return outputs.gather(1, target.to(outputs.device).long().view(-1, 1)).squeeze(1)


def check_class_range(outputs: Tensor, target: Tensor, name: str = "target") -> None:
    """Raise unless every class index in ``target`` exists in ``outputs`` of shape ``(B, num_classes)``."""
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"A class-index `{name}` needs the model to return a tensor of logits (B, num_classes), but it returned "
            f"{type(outputs).__name__}; pass `forward_fn` (for example `lambda module, x: module(x)['logits']`) or a "
            f"callable `{name}` that picks the score from the outputs."
        )
    if outputs.ndim != 2:
        raise ValueError(
            f"A class-index `{name}` needs model outputs of shape (B, num_classes), got {tuple(outputs.shape)}; "
            f"pass a callable `{name}` to explain other outputs."
        )
    if target.numel() and int(target.max()) >= outputs.shape[1]:
        raise ValueError(
            f"`{name}` holds class index {int(target.max())}, but the model outputs {outputs.shape[1]} classes "
            f"(valid indices 0..{outputs.shape[1] - 1})."
        )


def class_scores(outputs: Tensor, kind: ScoreKind) -> Tensor:
    """Turn logits ``(B, num_classes)`` into the requested kind of score (softmax over classes for probabilities)."""
    if kind == "logit":
        return outputs
    if kind == "probability":
        return torch.softmax(outputs, dim=1)
    return torch.log_softmax(outputs, dim=1)


def target_scores(outputs: Tensor, target: TargetType, kind: ScoreKind = "probability", name: str = "target") -> Tensor:
    """Scores ``(B,)`` of ``target`` in ``outputs``; ``kind`` applies to class indices, callables are used as is."""
    if callable(target) and not isinstance(target, torch.Tensor):
        return select_scores(outputs, target, name)
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        return select_scores(outputs, target, name)  # raises the type or shape error
    return select_scores(class_scores(outputs, kind), target, name)


def repeat_target(target: TargetType, repeats: int) -> TargetType:
    """Repeat a class-index target for ``repeats`` perturbed copies of each sample (sample-major order).

    A callable target is returned unchanged; callers that score perturbed copies with a callable target
    must keep the copies of one sample together and call it on outputs aligned with the original batch.
    """
    if isinstance(target, torch.Tensor):
        return target.repeat_interleave(repeats)
    return target


def class_index_labels(labels: Tensor | None, mode: str) -> Tensor:
    """Ground-truth labels ``(B,)`` as class indices for ``mode``; refuse what would be silently truncated.

    Integer labels pass; floating-point labels pass only when every value is a whole number (``1.0``), so
    regression targets or soft labels (``0.2``, ``1.7``) are refused instead of being truncated to a class.

    Example:
        >>> class_index_labels(torch.tensor([0.0, 2.0]), "target='label'").tolist()
        [0, 2]
    """
    if labels is None:
        raise ValueError(
            f"`{mode}` needs labels, but `batch_transform` returned none; use target='predicted' "
            "or a `batch_transform` that returns (inputs, labels)."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"`{mode}` needs one class index per sample, shape (B,), got labels of shape {tuple(labels.shape)}; "
            "for multi-hot labels (B, L) use target='positive_labels'."
        )
    if labels.is_floating_point() or labels.is_complex():
        whole = torch.isfinite(labels) & (labels == labels.round())
        if not bool(whole.all()):
            bad = labels[~whole][:4].tolist()
            raise ValueError(
                f"`{mode}` needs integer class indices, got labels that are not whole numbers (e.g. {bad}); "
                "pass a callable `target` for regression or soft-label heads."
            )
    if bool((labels < 0).any()):
        raise ValueError(f"`{mode}` needs class indices >= 0, got {int(labels.min())}.")
    return labels.long()


def multi_hot_labels(labels: Tensor | None, mode: str) -> Tensor:
    """Multi-hot ground-truth labels ``(B, L)`` of 0/1 (or bool) as a bool tensor; refuse anything else.

    Example:
        >>> multi_hot_labels(torch.tensor([[1, 0, 1]]), "target='positive_labels'").tolist()
        [[True, False, True]]
    """
    if labels is None:
        raise ValueError(f"`{mode}` needs multi-hot labels (B, L), but `batch_transform` returned none.")
    if labels.ndim != 2:
        raise ValueError(
            f"`{mode}` needs multi-hot labels of shape (B, L), got shape {tuple(labels.shape)}; for one class index "
            "per sample use target='label'."
        )
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(
            f"`{mode}` needs multi-hot labels of 0 and 1, got values such as {labels.unique()[:4].tolist()}."
        )
    return labels.bool()

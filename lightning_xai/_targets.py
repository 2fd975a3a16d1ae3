"""Targets: which score of the model's outputs an explanation or a metric follows."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai._typing import TargetType

#: Which score of a class-index target is read from the model's outputs ``(B, C)`` (see :func:`class_scores`).
ScoreKind = Literal["probability", "softmax", "sigmoid", "logit", "log_probability"]
SCORE_KINDS: tuple[str, ...] = ("probability", "softmax", "sigmoid", "logit", "log_probability")


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


def head_activation(outputs: Tensor, kind: ScoreKind) -> Literal["softmax", "sigmoid", "identity"]:
    """The activation a score ``kind`` applies to outputs ``(B, C)``: ``"probability"`` and ``"log_probability"``
    resolve to the softmax over classes when ``C > 1`` and to the sigmoid for a single-logit head ``C == 1``.
    """  # noqa: D205
    if kind == "logit":
        return "identity"
    if kind in ("softmax", "sigmoid"):
        return kind
    return "sigmoid" if outputs.ndim == 2 and outputs.shape[1] == 1 else "softmax"


def class_scores(outputs: Tensor, kind: ScoreKind) -> Tensor:
    """Turn logits ``(B, C)`` into the requested kind of score, one helper for every metric and black-box explainer.

    - ``"probability"`` (the default everywhere): the head's own probability, the softmax over classes for a
      multi-class head (``C > 1``) and the sigmoid of the logit for a binary single-logit head (``C == 1``). A
      softmax of one logit is 1 for any input, which would score every map as perfect.
    - ``"softmax"``: the softmax over classes, whatever ``C``.
    - ``"sigmoid"``: each logit's own sigmoid, for multi-label heads (per-label probabilities) and binary heads.
    - ``"logit"``: the raw outputs (identity), for regression heads or when the logit is wanted.
    - ``"log_probability"``: the log of ``"probability"`` (``log_softmax`` or ``logsigmoid``), computed stably.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[0.0], [2.0]])
        >>> class_scores(logits, "probability").flatten().tolist() == torch.sigmoid(logits).flatten().tolist()
        True
        >>> two = torch.tensor([[0.0, 2.0]])
        >>> class_scores(two, "sigmoid").tolist() == torch.sigmoid(two).tolist()
        True
    """
    activation = head_activation(outputs, kind)
    if activation == "identity":
        return outputs
    if kind == "log_probability":
        return F.logsigmoid(outputs) if activation == "sigmoid" else torch.log_softmax(outputs, dim=1)
    return torch.sigmoid(outputs) if activation == "sigmoid" else torch.softmax(outputs, dim=1)


def predicted_correct(outputs: Tensor, labels: Tensor, kind: ScoreKind) -> Tensor:
    """Whether each label is predicted, float ``(B,)``: the argmax for a softmax head, ``logit > 0`` (sigmoid > 0.5)
    for a sigmoid head (binary or multi-label, where several labels can be predicted at once).
    """  # noqa: D205
    labels = labels.to(outputs.device).long()
    if head_activation(outputs, kind) == "sigmoid":
        return (outputs.gather(1, labels.view(-1, 1)).squeeze(1) > 0).float()
    return (outputs.argmax(dim=1) == labels).float()


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

"""Targets: which score of the model's outputs an explanation or a metric follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai._typing import TargetType

#: Which score of a class-index target is read from the model's outputs ``(B, C)`` (see :func:`class_scores`).
ScoreKind = Literal["probability", "softmax", "sigmoid", "logit", "log_probability"]
SCORE_KINDS: tuple[str, ...] = ("probability", "softmax", "sigmoid", "logit", "log_probability")


class RowAwareTarget(ABC):
    """A target whose score for an output row depends on which sample the row was built from.

    The plain callable contract, ``target(outputs) -> (n,)``, cannot tell the engines' perturbed copies apart:
    outputs of ``n`` perturbed images hold no record of the sample each came from. A row-aware target is called
    as ``target(outputs, rows)`` where ``rows`` (LongTensor ``(n,)``) is the index of each output row's sample
    in the explained batch; the perturbation engines (metrics' chunk scorer, occlusion, RISE, Sobol, Score-CAM,
    SIDU) pass it, and :meth:`at` gives a view of the target for a subset or a repetition of the samples. With
    ``rows=None`` the outputs are taken to be aligned with the batch (row ``i`` is sample ``i``).

    Subclasses implement :meth:`scores` and set :attr:`batch_size` (None when the score is the same function of
    the output for every sample, so the rows do not matter).
    """

    #: Number of samples the target knows (a per-sample reference), or None when the rows do not matter.
    batch_size: int | None = None

    @abstractmethod
    def scores(self, outputs: Tensor, rows: Tensor) -> Tensor:
        """Scores ``(n,)`` of ``outputs`` (``n`` rows), row ``i`` read for sample ``rows[i]``."""

    def __call__(self, outputs: Tensor, rows: Tensor | None = None) -> Tensor:
        """Scores ``(n,)``; ``rows`` (``(n,)``) maps each output row to its sample, None for aligned outputs."""
        if rows is None:
            count = outputs.shape[0] if isinstance(outputs, Tensor) else None
            if self.batch_size is not None and count != self.batch_size:
                raise ValueError(
                    f"{type(self).__name__} holds {self.batch_size} per-sample rows, but the outputs have {count} "
                    "rows and no row index says which sample each came from; pass `rows` (the engines do) or "
                    "outputs of one row per sample."
                )
            rows = torch.arange(count or 0, device=outputs.device if isinstance(outputs, Tensor) else None)
        return self.scores(outputs, rows)

    def score_table(self, outputs: Tensor) -> Tensor:
        """Scores of every output row for every sample, ``(n, batch_size)`` (Captum gathers from it)."""
        count = int(self.batch_size or 1)
        columns = [
            self.scores(outputs, torch.full((outputs.shape[0],), j, device=outputs.device)) for j in range(count)
        ]
        return torch.stack(columns, dim=1)

    def check_batch(self, batch_size: int, name: str = "target") -> None:
        """Raise unless the target can score a batch of ``batch_size`` samples."""
        if self.batch_size is not None and self.batch_size != batch_size:
            raise ValueError(
                f"`{name}` ({type(self).__name__}) holds {self.batch_size} per-sample rows, but the batch has "
                f"{batch_size} samples; give one row per sample or a single shared row."
            )

    def at(self, rows: Tensor) -> RowAwareTarget:
        """The target for the samples ``rows`` (a subset, a repetition): its sample ``i`` is this one's ``rows[i]``."""
        if self.batch_size is None:
            return self
        return _RowView(self, rows)


class _RowView(RowAwareTarget):
    """A :class:`RowAwareTarget` seen through a row map: sample ``i`` of the view is sample ``rows[i]`` of the base."""

    def __init__(self, base: RowAwareTarget, rows: Tensor) -> None:
        self.base = base
        self.rows = rows.long()
        self.batch_size = int(rows.numel())

    def scores(self, outputs: Tensor, rows: Tensor) -> Tensor:
        return self.base.scores(outputs, self.rows.to(rows.device)[rows])

    def at(self, rows: Tensor) -> RowAwareTarget:
        return _RowView(self.base, self.rows.to(rows.device)[rows.long()])


def take_rows(target: TargetType, rows: Tensor) -> TargetType:
    """``target`` for the samples ``rows``: class indices gathered, a row-aware target viewed, a callable as is."""
    if isinstance(target, Tensor):
        return target[rows.to(target.device)]
    if isinstance(target, RowAwareTarget):
        return target.at(rows)
    return target


def check_embeddings(outputs: object, name: str = "the model's outputs", width: int | None = None) -> Tensor:
    """Return ``outputs`` if it is a floating embedding batch ``(B, D)`` (with ``D == width`` if given), else raise."""
    if not isinstance(outputs, Tensor):
        raise TypeError(
            f"A similarity needs {name} to be embeddings, a tensor (B, D), got {type(outputs).__name__}; pass "
            "`forward_fn` (for example `lambda module, x: module(x)['embedding']`)."
        )
    if outputs.ndim != 2 or not outputs.is_floating_point():
        raise ValueError(
            f"A similarity needs {name} to be embeddings of shape (B, D), floating point, got shape "
            f"{tuple(outputs.shape)} ({outputs.dtype}); flatten or pool them (`forward_fn`) to one vector per sample."
        )
    if width is not None and outputs.shape[1] != width:
        raise ValueError(
            f"The reference embedding has width D = {width}, but {name} have width {outputs.shape[1]} "
            f"(shape {tuple(outputs.shape)}); the reference must come from the same embedding."
        )
    return outputs


class SimilarityTarget(RowAwareTarget):
    """Explain the cosine similarity ``cos(f(x), r)`` of the model's embedding to a fixed reference ``r``.

    Any explainer and metric accepts it as ``target``: the model's outputs must be embeddings ``(B, D)``, and the
    score of a sample is the cosine similarity of its embedding to the reference, in ``[-1, 1]`` (higher means
    more alike). The reference is one embedding ``(D,)`` shared by every sample, or one per sample ``(B, D)``
    (the other view of a pair, say); the per-sample form is row-aware (:class:`RowAwareTarget`), so perturbation
    engines and Captum's expanded batches score each perturbed copy against its own sample's reference.

    Paper: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Self-Supervised Vision
    Learning", arXiv:2206.09753 (the similarity of two views as the explained score).

    Args:
        reference: ``(D,)`` or ``(B, D)``, finite, floating point; detached and kept as given.
        eps: the floor of the norms in the cosine (``torch.nn.functional.cosine_similarity``'s ``eps``).

    Example:
        >>> import torch
        >>> target = SimilarityTarget(torch.tensor([1.0, 0.0]))
        >>> target(torch.tensor([[2.0, 0.0], [0.0, 3.0]])).tolist()
        [1.0, 0.0]
    """

    def __init__(self, reference: Tensor, eps: float = 1e-8) -> None:
        if not isinstance(reference, Tensor):
            raise TypeError(f"`reference` must be a tensor (D,) or (B, D), got {type(reference).__name__}.")
        if reference.ndim not in (1, 2) or not reference.is_floating_point() or reference.shape[-1] == 0:
            raise ValueError(
                f"`reference` must be a floating-point embedding (D,) or one per sample (B, D), got shape "
                f"{tuple(reference.shape)} ({reference.dtype})."
            )
        if not bool(torch.isfinite(reference).all()):
            raise ValueError("`reference` holds non-finite values (NaN or inf).")
        self.reference = reference.detach()
        self.eps = float(eps)
        self.width = int(reference.shape[-1])
        self.batch_size = int(reference.shape[0]) if reference.ndim == 2 else None

    def _unit_reference(self, like: Tensor) -> Tensor:
        reference = self.reference.to(device=like.device, dtype=like.dtype)
        return reference / reference.norm(dim=-1, keepdim=True).clamp_min(self.eps)

    def scores(self, outputs: Tensor, rows: Tensor) -> Tensor:
        """``cos(outputs[i], reference[rows[i]])`` (the shared reference for a ``(D,)`` one), shape ``(n,)``."""
        embeddings = check_embeddings(outputs, width=self.width)
        reference = self.reference.to(device=embeddings.device, dtype=embeddings.dtype)
        if reference.ndim == 2:
            reference = reference[rows.to(embeddings.device).long()]
        return F.cosine_similarity(embeddings, reference.expand_as(embeddings), dim=1, eps=self.eps)

    def score_table(self, outputs: Tensor) -> Tensor:
        """``(n, B)`` cosines of every output row to every reference row (one matrix product)."""
        embeddings = check_embeddings(outputs, width=self.width)
        unit = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(self.eps)
        return unit @ self._unit_reference(embeddings).reshape(-1, self.width).T

    def __repr__(self) -> str:
        return f"SimilarityTarget(reference=<{tuple(self.reference.shape)}>)"


def check_target(target: TargetType, batch_size: int, name: str = "target") -> None:
    """Raise unless ``target`` is a callable or an integer tensor of shape ``(batch_size,)`` with no negatives.

    A :class:`RowAwareTarget` must also fit the batch (a per-sample reference with one row per sample).
    """
    if isinstance(target, RowAwareTarget):
        target.check_batch(batch_size, name)
        return
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


def select_scores(outputs: Tensor, target: TargetType, name: str = "target", rows: Tensor | None = None) -> Tensor:
    """Pick one score per sample from the model's ``outputs``.

    Args:
        outputs: the model's outputs, ``(B, num_classes)`` for a class-index target, anything the callable
            accepts otherwise.
        target: class indices ``(B,)``, a callable ``(outputs) -> (B,)`` or a :class:`RowAwareTarget`.
        name: the argument name used in error messages.
        rows: for a :class:`RowAwareTarget`, the sample index of each output row (None: aligned with the
            batch); class indices and plain callables ignore it (their callers align them first).

    Returns:
        Tensor of shape ``(B,)``.
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        scores = target(outputs, rows) if isinstance(target, RowAwareTarget) else target(outputs)
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


def target_scores(
    outputs: Tensor,
    target: TargetType,
    kind: ScoreKind = "probability",
    name: str = "target",
    rows: Tensor | None = None,
) -> Tensor:
    """Scores ``(B,)`` of ``target`` in ``outputs``; ``kind`` applies to class indices, callables are used as is.

    ``rows`` is passed to a :class:`RowAwareTarget` (see :func:`select_scores`).
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        return select_scores(outputs, target, name, rows=rows)
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        return select_scores(outputs, target, name)  # raises the type or shape error
    return select_scores(class_scores(outputs, kind), target, name)


def repeat_target(target: TargetType, repeats: int) -> TargetType:
    """Repeat a class-index target for ``repeats`` perturbed copies of each sample (sample-major order).

    A plain callable target is returned unchanged (it must act row by row); a :class:`RowAwareTarget` is viewed
    so that copy ``i`` reads sample ``i // repeats``.
    """
    if isinstance(target, torch.Tensor):
        return target.repeat_interleave(repeats)
    if isinstance(target, RowAwareTarget) and target.batch_size is not None:
        return target.at(torch.arange(target.batch_size).repeat_interleave(repeats))
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

"""Right for the Right Reasons: penalise the input gradient inside regions that must not matter."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._targets import check_target, select_scores
from lightning_xai.guidance._common import (
    broadcast_mask,
    check_guided_inputs,
    check_guided_model,
    check_weight,
    differentiable_or_logged,
    leaf_inputs,
)

GuidanceTarget = Tensor | Callable[[Tensor], Tensor] | None


def _at_least_float32(values: Tensor) -> Tensor:
    # bf16/fp16 outputs of mixed precision are scored in float32; float64 stays float64 (finite-difference tests)
    return values.to(torch.promote_types(values.dtype, torch.float32))


def log_probability_scores(outputs: Tensor, target: GuidanceTarget = None, multi_label: bool = False) -> Tensor:
    """The per-sample log-probability score ``(B,)`` whose input gradient Right for the Right Reasons constrains.

    Args:
        outputs: logits ``(B, K)``. ``K >= 2`` with ``multi_label=False``: one softmax over the classes. ``K == 1``:
            a binary head, the logit of the positive class (probability ``sigmoid(z)``). ``multi_label=True``: ``K``
            independent labels, each with probability ``sigmoid(z_k)``.
        target: None for every class (the paper's choice), class indices ``(B,)``, or a callable
            ``(outputs) -> (B,)`` whose scores are used as they are.
        multi_label: whether the ``K`` logits are independent labels (log-sigmoid) rather than one softmax.

    Returns:
        ``(B,)`` in float32 (float64 for float64 outputs):

        * softmax head: ``sum_k log softmax(z)_k`` for ``target=None``, ``log softmax(z)_t`` for class ``t``;
        * binary ``(B, 1)`` head: ``log sigmoid(z) + log sigmoid(-z)`` (both classes' log-probabilities, which is
          the two-class softmax over logits ``(0, z)``) for None; ``log sigmoid(z)`` for ``t = 1`` and
          ``log sigmoid(-z)`` for ``t = 0``;
        * multi-label: ``sum_k [log sigmoid(z_k) + log sigmoid(-z_k)]`` (both outcomes of every label) for None;
          ``log sigmoid(z_t)`` (label ``t`` present) for index ``t``.

    Example:
        >>> import torch
        >>> scores = log_probability_scores(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        >>> round(scores.item(), 4)  # log(1/2)
        -0.6931
    """
    if callable(target) and not isinstance(target, Tensor):
        return _at_least_float32(select_scores(outputs, target))
    if not isinstance(outputs, Tensor) or outputs.ndim != 2:
        got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(
            f"The model must return logits of shape (B, K) when `target` is None or class indices, got {got}; pass a "
            f"callable `target` (outputs) -> (B,) scores for other outputs."
        )
    logits = _at_least_float32(outputs)
    batch, classes = logits.shape
    if target is not None:
        check_target(target, batch)
        index = target.to(logits.device).long().view(-1, 1)
        limit = 2 if classes == 1 and not multi_label else classes
        if index.numel() and int(index.max()) >= limit:
            accepted = "0 (negative) or 1 (positive) for a binary (B, 1) head" if limit == 2 else f"0..{classes - 1}"
            raise ValueError(f"`target` holds class index {int(index.max())}; accepted: {accepted}.")
    if multi_label or classes == 1:
        positive, negative = F.logsigmoid(logits), F.logsigmoid(-logits)
        if target is None:
            return (positive + negative).sum(dim=1)
        if classes == 1 and not multi_label:
            return torch.where(index.view(-1) == 1, positive[:, 0], negative[:, 0])
        return positive.gather(1, index).squeeze(1)
    log_probabilities = F.log_softmax(logits, dim=1)
    if target is None:
        return log_probabilities.sum(dim=1)
    return log_probabilities.gather(1, index).squeeze(1)


def input_gradient_penalty(
    outputs: Tensor,
    inputs: Tensor,
    forbidden: Tensor,
    target: GuidanceTarget = None,
    *,
    multi_label: bool = False,
    create_graph: bool = True,
) -> Tensor:
    """``mean_b sum_{c,h,w} (forbidden * d score_b / d inputs)^2`` for ``outputs`` computed from ``inputs``.

    ``inputs`` must require grad and ``outputs`` must have been computed from them (one forward serves the loss and
    the penalty). ``forbidden``: ``(H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)``, 0/1 or non-negative weights. The
    gradient is taken of the summed scores (see :func:`log_probability_scores`), one ``torch.autograd.grad`` call
    for the batch; nothing is written to any ``.grad``. Returns a scalar in float32 (float64 for float64 inputs).
    """
    check_guided_inputs(inputs, "input_gradient_penalty")
    if not inputs.requires_grad:
        raise ValueError(
            "`inputs` must require grad and `outputs` must be computed from them: "
            "`x = x.detach().requires_grad_(True); outputs = model(x)` (or call RightForTheRightReasons itself)."
        )
    forbidden = broadcast_mask(forbidden, inputs, "forbidden")
    scores = log_probability_scores(outputs, target, multi_label)
    (gradients,) = torch.autograd.grad(scores.sum(), inputs, create_graph=create_graph, allow_unused=True)
    if gradients is None:
        raise ValueError("The model's outputs do not depend on `inputs`: there is no input gradient to constrain.")
    masked = forbidden * gradients.to(forbidden.dtype)
    return masked.pow(2).flatten(1).sum(dim=1).mean()


class RightForTheRightReasons(nn.Module):
    """Right for the Right Reasons: a penalty on the input gradient inside a forbidden region.

    ``penalty = weight * mean_b sum_{c,h,w} (A_bchw * d/dx_bchw sum_k log p(k | x_b))^2``

    where ``A`` is the ``forbidden`` mask (1 where the input must not matter) and the sum runs over all classes
    (``target=None``, the paper's choice) or is the target's log-probability alone (class indices). The paper sums
    over the batch; here the sum over channels and pixels is averaged over the batch, so ``weight`` does not depend
    on the batch size (the paper's ``lambda_1`` with ``N`` samples is ``weight = N * lambda_1``). Lower is better: 0
    means the log-probabilities are locally insensitive to every forbidden pixel.

    Inside a ``training_step`` the penalty is differentiable with respect to the model's parameters (double
    backpropagation, ``create_graph=True``), so ``loss.backward()`` trains the model to move its input gradient out
    of the forbidden region. The penalty runs its own forward of ``model`` on a clone of ``inputs`` that requires
    grad (so no ``.grad`` is ever written to the caller's ``inputs``; inputs that already require grad, say the
    output of a differentiable augmentation, are used as they are). Module flags are left alone: in training mode
    that forward draws its own dropout masks and updates BatchNorm running statistics like any forward, and
    BatchNorm's batch statistics couple the samples, so the gradient of the summed scores has the cross-sample terms
    that autograd over a batch gives (as in the paper's own implementation). To reuse the training forward instead,
    call :meth:`from_outputs` on logits computed from inputs that require grad (a step cost 3.1 plain steps instead
    of 4.4 in ``benchmarks/guidance.py``).
    Under ``torch.no_grad()`` or ``torch.inference_mode()`` (``validation_step``, ``test_step``) the value is
    computed all the same and returned detached, for logging.

    Works under DDP (the penalty is part of the loss that DDP's backward reduces), with gradient accumulation and
    with ``precision="bf16-mixed"`` (the scores, the mask product and the sum are float32).

    Heads: a softmax over ``K >= 2`` classes; a binary single logit ``(B, 1)``, scored with log-sigmoid (both
    classes' log-probabilities ``log sigmoid(z) + log sigmoid(-z)`` for None, which is the two-class softmax over
    ``(0, z)``; a log-softmax over one logit would be constant and its gradient zero); and, with
    ``multi_label=True``, ``K`` independent sigmoid labels (both outcomes of every label for None, ``log sigmoid(z_t)``
    for label ``t``). See :func:`log_probability_scores`.

    Recipe::

        class Model(L.LightningModule):
            def __init__(self):
                ...
                self.rrr = RightForTheRightReasons(weight=10.0)

            def training_step(self, batch, batch_idx):
                x, y = batch["image"], batch["label"]
                logits = self(x)
                # per-sample annotations from the batch, (B, 1, H, W); or a fixed (H, W) region for every image
                loss = F.cross_entropy(logits, y) + self.rrr(self, x, batch["forbidden"])
                return loss

    Paper: A. S. Ross, M. C. Hughes, F. Doshi-Velez, "Right for the Right Reasons: Training Differentiable Models
    by Constraining their Explanations", IJCAI 2017 (arXiv:1703.03717).

    Args:
        weight: the penalty's factor, ``>= 0`` (the paper's ``lambda_1``, per sample). 0 gives a zero penalty.
        multi_label: whether the model's ``K`` logits are independent labels (log-sigmoid) rather than one softmax.

    Shapes (when called as ``rrr(model, inputs, forbidden, target=None)``):
        inputs: floating-point ``(B, C, H, W)``. forbidden: ``(H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)``, a bool or
        0/1 mask or non-negative weights (a weight ``a`` scales that pixel's squared gradient by ``a^2``), moved to
        the inputs' device. target: None, class indices ``(B,)`` or a callable ``(outputs) -> (B,)``. Returns a scalar,
        float32 (float64 for float64 inputs).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> rrr = RightForTheRightReasons(weight=1.0)
        >>> inputs, forbidden = torch.rand(2, 1, 4, 4), torch.zeros(4, 4)
        >>> rrr(model, inputs, forbidden).item()  # nothing is forbidden
        0.0
        >>> forbidden[0, 0] = 1
        >>> penalty = rrr(model, inputs, forbidden)
        >>> penalty.backward()  # trains the model; inputs.grad stays None
        >>> inputs.grad is None, model[1].weight.grad.shape
        (True, torch.Size([3, 16]))
    """

    def __init__(self, weight: float = 1.0, multi_label: bool = False) -> None:
        super().__init__()
        self.weight = check_weight(weight)
        if not isinstance(multi_label, bool):
            raise TypeError(f"`multi_label` must be a bool, got {multi_label!r}.")
        self.multi_label = multi_label

    def forward(self, model: nn.Module, inputs: Tensor, forbidden: Tensor, target: GuidanceTarget = None) -> Tensor:
        """The weighted penalty, a scalar; differentiable w.r.t. the parameters where autograd is on."""
        check_guided_model(model, type(self).__name__)
        check_guided_inputs(inputs, type(self).__name__)
        mask = broadcast_mask(forbidden, inputs, "forbidden")
        if target is not None:
            check_target(target, inputs.shape[0])
        with differentiable_or_logged() as trains:
            batch = leaf_inputs(inputs, trains)
            outputs = model(batch)
            penalty = input_gradient_penalty(
                outputs, batch, mask, target, multi_label=self.multi_label, create_graph=trains
            )
        penalty = self.weight * penalty
        return penalty if trains else penalty.detach()

    def from_outputs(self, outputs: Tensor, inputs: Tensor, forbidden: Tensor, target: GuidanceTarget = None) -> Tensor:
        """The weighted penalty from the training forward's own ``outputs``, saving the penalty's forward.

        ``inputs`` must require grad and ``outputs = model(inputs)``; the loss's backward then writes
        ``inputs.grad`` (pass a detached copy to keep the batch clean)::

            x = batch["image"].detach().requires_grad_(True)
            logits = self(x)
            loss = F.cross_entropy(logits, y) + self.rrr.from_outputs(logits, x, batch["forbidden"])
        """
        trains = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        penalty = input_gradient_penalty(
            outputs, inputs, forbidden, target, multi_label=self.multi_label, create_graph=trains
        )
        return self.weight * penalty

    def extra_repr(self) -> str:
        """The configuration, shown by ``repr``."""
        return f"weight={self.weight}, multi_label={self.multi_label}"

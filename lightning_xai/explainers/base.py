"""The explainer contract: ``explainer(model, inputs, target) -> Tensor`` of shape ``(B, 1, H, W)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_image_batch
from lightning_xai._layers import eager_model
from lightning_xai._model_state import explanation_mode
from lightning_xai._targets import RowAwareTarget, check_class_range, check_target, select_scores
from lightning_xai._typing import TargetType

ChannelReduction = Literal["sum", "abs_sum", "max_abs"]
CHANNEL_REDUCTIONS: tuple[str | None, ...] = ("sum", "abs_sum", "max_abs", None)


def reduce_channels(attributions: Tensor, reduction: ChannelReduction | None) -> Tensor:
    """Reduce ``(B, C, H, W)`` pixel attributions to ``(B, 1, H, W)``; ``None`` keeps them as they are.

    ``"sum"`` keeps the sign, ``"abs_sum"`` sums magnitudes, ``"max_abs"`` takes the largest magnitude.

    Example:
        >>> import torch
        >>> a = torch.tensor([1.0, -3.0]).view(1, 2, 1, 1)
        >>> [reduce_channels(a, r).item() for r in ("sum", "abs_sum", "max_abs")]
        [-2.0, 4.0, 3.0]
    """
    if reduction is None:
        return attributions
    if reduction == "sum":
        return attributions.sum(dim=1, keepdim=True)
    if reduction == "abs_sum":
        return attributions.abs().sum(dim=1, keepdim=True)
    if reduction == "max_abs":
        return attributions.abs().amax(dim=1, keepdim=True)
    raise ValueError(f"`channel_reduction` must be one of {CHANNEL_REDUCTIONS}, got {reduction!r}.")


def upsample_to(maps: Tensor, size: tuple[int, ...], mode: str = "bilinear") -> Tensor:
    """Resize ``(B, K, h, w)`` maps to ``size = (H, W)`` (``align_corners=False`` for the smooth modes).

    Spatio-temporal maps ``(B, K, t, h, w)`` with ``size = (T, H, W)`` are resized in time and space at once;
    ``"bilinear"`` then means ``"trilinear"`` (``align_corners=False``).

    Example:
        >>> upsample_to(torch.ones(1, 1, 2, 3, 3), (4, 6, 6)).shape
        torch.Size([1, 1, 4, 6, 6])
    """
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    if maps.ndim == 5 and mode == "bilinear":
        mode = "trilinear"
    if mode in ("bilinear", "bicubic", "trilinear"):
        return F.interpolate(maps, size=size, mode=mode, align_corners=False)
    return F.interpolate(maps, size=size, mode=mode)


def captum_forward(model: nn.Module, target: TargetType) -> tuple[Callable[[Tensor], Tensor], Tensor | None]:
    """A forward function and a Captum ``target`` implementing our target contract.

    A class-index target is handed to Captum (which expands it with the batch, for instance for
    Integrated Gradients' internal batches) and the forward checks that the indices exist. A callable target is
    folded into the forward, which then returns one score per sample and Captum gets ``target=None``; such a
    callable must act row-wise on the outputs, since Captum may call the forward on expanded batches.

    A per-sample :class:`~lightning_xai._targets.RowAwareTarget` (one reference per sample) cannot see which
    sample a row of an expanded batch came from; its forward returns the table ``(n, B)`` of every row's score
    for every sample (:meth:`~lightning_xai._targets.RowAwareTarget.score_table`) and Captum gets the target
    ``arange(B)``, which it expands the way it expands the inputs (repeated for Integrated Gradients and
    Occlusion, interleaved for NoiseTunnel), so each row is scored for its own sample whatever the method.
    """
    if isinstance(target, RowAwareTarget) and target.batch_size is not None:
        row_target, samples = target, target.batch_size

        def forward_table(inputs: Tensor) -> Tensor:
            return row_target.score_table(model(inputs))

        # A list of ints, which Captum expands like the inputs and puts on the outputs' device when it gathers
        # (a tensor would have to be on the model's device, which this function does not know).
        return forward_table, cast(Tensor, list(range(samples)))

    if isinstance(target, Tensor):

        def forward_with_check(inputs: Tensor) -> Tensor:
            outputs = model(inputs)
            check_class_range(outputs, target)
            return outputs

        return forward_with_check, target

    def forward_scores(inputs: Tensor) -> Tensor:
        return select_scores(model(inputs), target)

    return forward_scores, None


class Explainer(ABC):
    """Base class of every explainer.

    ``explainer(model, inputs, target)`` checks the arguments, runs :meth:`attribute` inside
    :func:`~lightning_xai._model_state.explanation_mode` on a clone of the inputs taken out of inference mode
    (so it works in ``fit``'s validation, ``trainer.validate()`` and ``trainer.test()``), and checks that the
    result is finite. A ``torch.compile``'d model is explained through its original module, eagerly (as DDP's
    wrapper is looked through; see :func:`lightning_xai._layers.eager_model`). The model is left as found:
    training flags, ``requires_grad`` flags, parameter ``.grad`` (never written) and the global RNG stream.

    Subclasses implement :meth:`attribute` and set ``needs_grad = False`` when they only run forwards.
    """

    #: Whether :meth:`attribute` needs autograd (gradient methods) or only forward passes (black-box methods).
    needs_grad: bool = True
    #: Whether :meth:`attribute` applies a callable target exactly once, to the outputs of one forward of the
    #: inputs as given (not an expanded or perturbed batch). A monitor explaining the predicted class then lets
    #: that forward pick the class instead of running one of its own.
    scores_one_forward: bool = False
    #: Whether the method has a spatio-temporal meaning and accepts clips ``(B, C, T, H, W)``, returning
    #: ``(B, 1, T, H, W)`` maps. Explainers without it refuse 5-D inputs with an error naming them.
    supports_video: bool = False

    @property
    def name(self) -> str:
        """Name used in logged keys, ``xai/<name>/...``: the class name."""
        return type(self).__name__

    def __call__(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Explain ``model``'s ``target`` score at ``inputs``.

        Args:
            model: the model; called as ``model(inputs)``.
            inputs: images ``(B, C, H, W)``, or clips ``(B, C, T, H, W)`` where :attr:`supports_video` is set.
            target: class indices ``(B,)`` (LongTensor), a callable ``(outputs) -> (B,)`` scores, or a row-aware
                target such as :class:`~lightning_xai.SimilarityTarget` (the cosine of an embedding to a reference).

        Returns:
            float32 attributions on the inputs' device, ``(B, 1, H, W)`` (or ``(B, C, H, W)`` where a
            ``channel_reduction=None`` asks for it); for clips ``(B, 1, T, H, W)``. Higher means more important
            for the target score.
        """
        check_image_batch(inputs, video=self.supports_video, method=self.name)
        check_target(target, inputs.shape[0])
        model = eager_model(model, self.name)
        with explanation_mode(model, grad=self.needs_grad):
            batch = inputs.detach().clone()
            if isinstance(target, Tensor):
                target = target.detach().clone().to(device=batch.device, dtype=torch.long)
            attributions = self.attribute(model, batch, target)
        attributions = attributions.detach().to(dtype=torch.float32)
        finite = torch.isfinite(attributions)
        if not bool(finite.all()):
            bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"{self.name} produced non-finite attributions (NaN or inf) for samples {bad[:10]}.")
        return attributions

    @abstractmethod
    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Compute attributions; called inside the safe context with checked, cloned arguments."""

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({arguments})"


def check_channel_reduction(value: object) -> None:
    """Raise unless ``value`` is an accepted ``channel_reduction``."""
    check_choice(value, "channel_reduction", CHANNEL_REDUCTIONS)

"""A differentiable Grad-CAM penalised by the share of its mass inside a forbidden region."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_choice
from lightning_xai._targets import check_target, select_scores
from lightning_xai._typing import LayerType
from lightning_xai.explainers._capture import capture_layer
from lightning_xai.explainers.base import upsample_to
from lightning_xai.explainers.cam import _check_layer_argument
from lightning_xai.guidance._common import (
    broadcast_mask,
    check_guided_inputs,
    check_guided_model,
    check_weight,
    differentiable_or_logged,
)
from lightning_xai.guidance.right_reasons import GuidanceTarget

MaskMeaning = Literal["forbidden", "allowed"]


def differentiable_gradcam(
    activations: Tensor,
    scores: Tensor,
    create_graph: bool = True,
    spatial: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Grad-CAM ``ReLU(sum_k w_k A_k)``, ``w_k = mean_ij dS/dA_kij``, differentiable w.r.t. what produced ``A``.

    Args:
        activations: the layer's output ``A`` ``(B, K, h, w)``, part of the graph that produced ``scores``.
        scores: the target scores ``S`` ``(B,)``.
        create_graph: keep the graph of the weights ``w_k`` so the map can be differentiated again.
        spatial: brings the layer's output and its gradient to ``(B, K, h, w)`` (a token layer's ``reshape``);
            ``activations`` are then the layer's raw output, the one ``scores`` were computed from.

    Returns:
        ``(B, 1, h, w)``, non-negative, float32 (float64 for float64 activations).
    """
    (gradients,) = torch.autograd.grad(scores.sum(), activations, create_graph=create_graph, allow_unused=True)
    if gradients is None:
        raise ValueError("The target scores do not depend on the Grad-CAM layer; choose a layer on the path.")
    if spatial is not None:
        activations, gradients = spatial(activations), spatial(gradients)
    dtype = torch.promote_types(activations.dtype, torch.float32)
    weights = gradients.to(dtype).mean(dim=(2, 3), keepdim=True)
    return (weights * activations.to(dtype)).sum(dim=1, keepdim=True).clamp(min=0)


class GradCAMGuidance(nn.Module):
    """Penalise the share of a differentiable Grad-CAM map that falls inside a forbidden region.

    ``penalty = weight * mean_b [sum_hw M_bhw L_bhw / sum_hw L_bhw]``, where ``L = ReLU(sum_k w_k A_k)`` is the
    Grad-CAM of the target's logit at ``layer`` (``w_k`` the spatial mean of the logit's gradient w.r.t. the layer's
    output ``A``), upsampled bilinearly to the input size like :class:`~lightning_xai.explainers.GradCAM`, and ``M``
    the forbidden region (``region="forbidden"``) or ``1 - allowed`` (``region="allowed"``: the share *outside* the
    allowed region). The share lies in ``[0, 1]`` and is the relevance mass the monitor logs for a region; lower is
    better. A sample whose map is zero everywhere contributes 0. The map is built with ``create_graph=True``, so
    the penalty is differentiable w.r.t. the parameters both before the layer (through ``A``) and after it (through
    ``w_k``).

    The layer's output is captured by a forward hook that is removed in ``finally`` (the hook hands the network a
    clone, so in-place operations after the layer do not disturb the capture); the layer must run once per forward.
    Like :class:`RightForTheRightReasons`, it runs its own forward of ``model``; no flag is changed, no ``.grad``
    written, and under ``no_grad``/``inference_mode`` it returns the value detached, for logging.

    Paper followed: the RRR-G ("right for the right reasons" with Grad-CAM) penalty of P. Schramowski, W. Stammer,
    S. Teso et al., "Making deep neural networks right for the right scientific reasons by interacting with their
    explanations", Nature Machine Intelligence 2020, as compared in F. Friedrich, W. Stammer, P. Schramowski,
    K. Kersting, "A typology for exploring the mitigation of shortcut behaviour", Nature Machine Intelligence 2023:
    a differentiable Grad-CAM of the decision is penalised inside the annotated region. Reconstructed, not the
    authors' formula: they square the min-max normalised map inside the mask downsampled to the layer's
    resolution; here the ReLU map is upsampled to the input and its *share* of mass inside the region is penalised
    (the relevance mass of L. Arras, A. Osman, W. Samek, "CLEVR-XAI", Information Fusion 2022), which is bounded,
    scale-free and equal to what the monitor's ``relevance_mass_<region>`` keys report for Grad-CAM. Grad-CAM:
    R. R. Selvaraju et al., ICCV 2017.

    A caution, measured on the decoy digits of ``tests/integration/test_guidance_shortcut.py``: with ``weight=10``
    the share fell below 0.1 % while the swapped-watermark accuracy stayed at 0.33 (RRR: 0.94). The model can hide a
    pixel-level shortcut from a coarse Grad-CAM rather than unlearn it; check a swapped test set, not only the map.

    Args:
        layer: a dotted module name (``"backbone.layer4"``), a module, or None for the last ``nn.Conv2d`` (the
            explainers' default, :func:`lightning_xai._layers.find_layer`).
        weight: the penalty's factor, ``>= 0``.
        region: whether the mask passed at call time is ``"forbidden"`` (penalise the share inside) or
            ``"allowed"`` (penalise the share outside).

    Shapes (when called as ``guidance(model, inputs, mask, target=None)``):
        inputs: floating-point ``(B, C, H, W)``. mask: ``(H, W)`` or ``(B, 1, H, W)``, bool or values in ``[0, 1]``.
        target: None for the predicted class (argmax of the logits, as RRR-G does), class indices ``(B,)`` (pass the
        labels in training) or a callable ``(outputs) -> (B,)``; a binary ``(B, 1)`` head's only logit is index 0,
        a multi-label head's label ``t`` is index ``t``. Returns a scalar in ``[0, weight]``, float32 (float64 for
        float64 inputs).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                       nn.Linear(4, 2))
        >>> guidance = GradCAMGuidance(layer="0")
        >>> inputs, target = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> guidance(model, inputs, torch.zeros(8, 8), target).item()  # nothing is forbidden
        0.0
        >>> left_half = torch.zeros(8, 8)
        >>> left_half[:, :4] = 1
        >>> share = guidance(model, inputs, left_half, target)
        >>> 0.0 <= share.item() <= 1.0, share.requires_grad  # a share of the map's mass, differentiable
        (True, True)
    """

    def __init__(self, layer: LayerType | None = None, weight: float = 1.0, region: MaskMeaning = "forbidden") -> None:
        super().__init__()
        _check_layer_argument(layer)
        self.layer = layer
        self.weight = check_weight(weight)
        check_choice(region, "region", ("forbidden", "allowed"))
        self.region = region

    def forward(self, model: nn.Module, inputs: Tensor, mask: Tensor, target: GuidanceTarget = None) -> Tensor:
        """The weighted share, a scalar; differentiable w.r.t. the parameters where autograd is on."""
        check_guided_model(model, type(self).__name__)
        check_guided_inputs(inputs, type(self).__name__)
        region = broadcast_mask(mask, inputs, "mask", allow_channels=False, at_most_one=True)
        if self.region == "allowed":
            region = 1 - region
        if target is not None:
            check_target(target, inputs.shape[0])
        with differentiable_or_logged() as trains:
            batch = inputs if trains and inputs.requires_grad else inputs.detach().clone()
            captured = capture_layer(
                model, self.layer, batch, reshape="auto", method=type(self).__name__, grad=True, keep_graph=trains
            )
            outputs = captured.outputs
            if target is None:
                if not isinstance(outputs, Tensor) or outputs.ndim != 2:
                    got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
                    raise ValueError(
                        f"With `target=None` the model must return logits of shape (B, K) (the predicted class is "
                        f"explained), got {got}; pass class indices or a callable `target`."
                    )
                target = outputs.detach().argmax(dim=1)
            scores = select_scores(outputs, target)
            maps = differentiable_gradcam(captured.raw, scores, create_graph=trains, spatial=captured.spatial)
            maps = upsample_to(maps, (inputs.shape[-2], inputs.shape[-1]))
            inside = (region * maps).flatten(1).sum(dim=1)
            total = maps.flatten(1).sum(dim=1)
            share = torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)
            penalty = self.weight * share.mean()
        return penalty if trains else penalty.detach()

    def extra_repr(self) -> str:
        """The configuration, shown by ``repr``."""
        return f"layer={self.layer!r}, weight={self.weight}, region={self.region!r}"

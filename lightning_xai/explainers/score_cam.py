"""Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel and Hu, CVPR Workshops 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._checks import check_choice
from lightning_xai._layers import ReshapeType, check_reshape
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import ScoreKind, take_rows, target_scores
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.explainers._capture import capture_layer
from lightning_xai.explainers._masks import check_layer_argument
from lightning_xai.explainers.base import Explainer, upsample_to

SCORE_CAM_SCORES: tuple[str, ...] = ("probability", "softmax", "sigmoid", "logit")


def min_max_normalise(maps: Tensor) -> Tensor:
    """Rescale each ``(B, 1, H, W)`` map to ``[0, 1]``; a constant map becomes zeros."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    spread = high - low
    return torch.where(
        spread > 0, (maps - low) / spread.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps)
    )


class ScoreCAM(Explainer):
    """Score-CAM: the layer's activation maps weighted by the target score of the image masked by each of them.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR Workshops
    2020, arXiv:1910.01279, following the official code (``haofanwang/Score-CAM``, ``cam/scorecam.py``): for each
    channel k of the layer's activations ``A`` (captured with a forward hook), ``Up(A_k)`` is the bilinear
    upsampling to the image (``align_corners=False``); a channel whose map is constant is skipped; the weight is the
    softmax probability of the target on ``X * (Up(A_k) - min) / (max - min)`` (the paper's baseline term is
    constant and dropped); the map is ``ReLU(sum_k weight_k * Up(A_k))`` on the **un-normalised** activations,
    then min-max normalised to ``[0, 1]`` per image (a constant map gives zeros, where the official code returns
    None). Unlike pytorch-grad-cam, the weights are not softmax-normalised across channels. Higher means more
    important for the target.

    Cost: one forward pass per layer channel and image (skipped channels cost nothing), plus one clean forward
    for the activations.

    Args:
        layer: the layer whose activations ``(B, K, h, w)`` become masks: a dotted module name, a module of the
            model, or None for the default layer (as :class:`~lightning_xai.explainers.GradCAM`: the block output
            the reference implementations use, a ViT's last ``norm1``). It must run once per forward.
        batch_size: masked images per forward pass.
        score: score of a class-index target: ``"probability"`` (official code's softmax for a multi-class head,
            the sigmoid for a single-logit head; see :func:`lightning_xai._targets.class_scores`), ``"softmax"``,
            ``"sigmoid"`` (per label, multi-label heads) or the ``"logit"``. A
            callable target is applied to the model's outputs on the masked images, so it must act row-wise.
        reshape: how the layer's output becomes ``(B, K, h, w)`` (tokens of a ViT, Swin's channels-last maps); as
            :class:`~lightning_xai.explainers.GradCAM`.

    Shapes:
        ``inputs (B, C, H, W)``, ``target (B,)`` -> ``(B, 1, H, W)`` float32 in ``[0, 1]`` on the inputs' device.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> ScoreCAM(layer="0")(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
    """

    needs_grad = False

    def __init__(
        self,
        layer: LayerType | None = None,
        batch_size: ChunkSize = "auto",
        score: ScoreKind = "probability",
        reshape: ReshapeType = "auto",
    ) -> None:
        check_layer_argument(layer)
        check_batch_size(batch_size)
        check_choice(score, "score", SCORE_CAM_SCORES)
        check_reshape(reshape)
        self.layer = layer
        self.batch_size = batch_size
        self.score = score
        self.reshape = reshape

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Score-CAM map ``(B, 1, H, W)`` of ``target`` at ``inputs``."""
        height, width = inputs.shape[-2:]
        activations = capture_layer(
            model, self.layer, inputs, reshape=self.reshape, method=self.name, grad=False
        ).activations
        flat = activations.flatten(2)
        samples, channels = (flat.amax(dim=-1) > flat.amin(dim=-1)).nonzero(as_tuple=True)
        weights = torch.zeros(activations.shape[:2], device=activations.device)
        if samples.numel():
            upsampled_constant: dict[str, Tensor] = {}

            def make_inputs(start: int, stop: int) -> Tensor:
                maps = upsample_to(activations[samples[start:stop], channels[start:stop]][:, None], (height, width))
                # The official test is max == min on the upsampled map; it can differ from the layer's map only
                # when the layer is larger than the image.
                upsampled_constant["mask"] = maps.amax(dim=(-2, -1)) == maps.amin(dim=(-2, -1))
                return inputs[samples[start:stop]] * min_max_normalise(maps).to(inputs.dtype)

            def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
                chunk_target = take_rows(target, samples[start:stop])
                scores = target_scores(model(chunk), chunk_target, self.score).detach().float()
                return scores.masked_fill(upsampled_constant["mask"].view(-1), 0.0)

            scores = score_in_chunks(
                forward, make_inputs, total=samples.numel(), batch_size=self.batch_size, model=model, like=inputs
            )
            weights[samples, channels] = scores
        # Bilinear upsampling is linear: sum_k w_k Up(A_k) = Up(sum_k w_k A_k), without B x K full-size maps.
        cam = torch.einsum("bk,bkhw->bhw", weights, activations)[:, None]
        cam = F.relu(upsample_to(cam, (height, width), mode="bilinear"))
        return min_max_normalise(cam)

"""SIDU: Similarity Difference and Uniqueness (Muddamsetty, Jahromi and Moeslund, ICIP 2020; Pattern Recogn. 2022)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_in_range
from lightning_xai._layers import ReshapeType, check_reshape
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import ScoreKind, class_scores, select_scores, take_rows
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.explainers._capture import capture_layer
from lightning_xai.explainers._masks import check_layer_argument, skimage_resize
from lightning_xai.explainers.base import Explainer

#: Width of the similarity-difference kernel of the reference code.
SIDU_SIGMA = 0.25
SIDU_SCORES: tuple[str, ...] = ("probability", "softmax", "sigmoid")
#: Activation threshold of the binary masks: the reference code's current value (0.5 until early 2022; METHODS.md).
SIDU_THRESHOLD = 0.1
#: The reference's constant ``p1`` in ``S / (N * p1)``; it does not change the ranking.
SIDU_P1 = 0.5


def _prediction_vectors(outputs: Tensor, target: TargetType, score: ScoreKind) -> tuple[Tensor, Tensor]:
    """``(vectors (n, D), target scores (n,))``: the head's probabilities for class indices, raw outputs otherwise."""
    if isinstance(target, Tensor):
        probabilities = class_scores(outputs.float(), score)
        return probabilities, select_scores(probabilities, target)
    return outputs.float().flatten(1), select_scores(outputs, target).float()


class SIDU(Explainer):
    """SIDU: binary feature-activation masks weighted by similarity difference and uniqueness of their predictions.

    Muddamsetty, Jahromi and Moeslund, "SIDU: Similarity Difference and Uniqueness Method for Explainable AI", ICIP
    2020, arXiv:2006.03122, and "Visual explanation of black-box model: SIDU method", Pattern Recognition 2022,
    arXiv:2101.10710, following the reference code (``satyamahesh84/SIDU_XAI_CODE``, ``SIDU_XAI.py``):

    1. the layer's activations ``A`` (``(K, h, w)`` per image, captured with a forward hook) are thresholded on
       their raw values, ``B_k = 1[A_k > threshold]`` (0.1, the reference's current code; its 2021 code used 0.5),
       and resized bilinearly to the image, ``M_k``
       (skimage ``resize(order=1, mode="reflect", anti_aliasing=False)``: mirrored borders);
    2. ``P_k = softmax(f(X * M_k))`` and ``P = softmax(f(X))`` (``score``: the sigmoid for a single-logit head or
       with ``score="sigmoid"``);
    3. similarity difference of the target class c: ``SD_k = exp(-(P^c - P_k^c) ** 2 / (2 sigma ** 2))``,
       ``sigma = 0.25``;
    4. uniqueness ``U_k = sum_j ||P_k - P_j||_2`` (cdist row sums over the full prediction vectors), min-max
       normalised per image with ``1e-13`` in the denominator;
    5. ``S = sum_k SD_k * U_k * M_k / (K * p1)``, ``p1 = 0.5``.

    Higher means more important for the target. With a callable target, ``P^c`` is the callable's score and the
    uniqueness uses the model's raw (flattened) outputs as prediction vectors; the callable must act row-wise.
    The ``(K, D)`` prediction vectors of each image are kept (D classes) for the uniqueness.

    When every mask of an image is empty (no activation above ``threshold``, as at a layer whose activations are
    mostly negative, e.g. a LayerNorm), the map of that image would be all zeros: SIDU warns (``UserWarning``
    naming the images and the largest activation) and falls back, for those images only, to masks thresholded
    at each channel's mean activation, so the map still ranks regions.

    Cost: ``K + 1`` forward passes per image, K the number of channels of the layer (the clean forward also
    captures the activations).

    Args:
        layer: the layer whose activations ``(B, K, h, w)`` become masks: a dotted module name, a module of the
            model, or None for the default layer (as :class:`~lightning_xai.explainers.GradCAM`; the reference
            uses ResNet-50's last block output and VGG19's ``block5_conv4``). It must run once per forward.
        batch_size: masked images per forward pass (reference: 100).
        threshold: activation threshold of the binary masks (reference code: 0.1).
        reshape: how the layer's output becomes ``(B, K, h, w)``; as :class:`~lightning_xai.explainers.GradCAM`.
        score: the prediction vectors: ``"probability"`` (softmax, the reference; sigmoid for a single-logit
            head), ``"softmax"`` or ``"sigmoid"`` (per-label, multi-label heads).

    Shapes:
        ``inputs (B, C, H, W)``, ``target (B,)`` -> ``(B, 1, H, W)`` float32 on the inputs' device.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> SIDU(layer="1")(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
    """

    needs_grad = False

    def __init__(
        self,
        layer: LayerType | None = None,
        batch_size: ChunkSize = "auto",
        threshold: float = SIDU_THRESHOLD,
        reshape: ReshapeType = "auto",
        score: ScoreKind = "probability",
    ) -> None:
        check_layer_argument(layer)
        check_batch_size(batch_size)
        check_in_range(threshold, "threshold", -math.inf, math.inf)
        check_reshape(reshape)
        check_choice(score, "score", SIDU_SCORES)
        self.score = score
        self.layer = layer
        self.batch_size = batch_size
        self.threshold = threshold
        self.reshape = reshape

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """SIDU map ``(B, 1, H, W)`` of ``target`` at ``inputs``."""
        batch, _, height, width = inputs.shape
        captured = capture_layer(model, self.layer, inputs, reshape=self.reshape, method=self.name, grad=False)
        outputs, activations = captured.outputs, captured.activations
        channels = activations.shape[1]
        binary = sidu_binary_masks(activations, self.threshold, captured.name)

        def make_inputs(start: int, stop: int) -> Tensor:
            index = torch.arange(start, stop, device=inputs.device)
            samples = index // channels
            masks = skimage_resize(binary[samples, index % channels], height, width)[:, None]
            return inputs[samples] * masks.to(inputs.dtype)

        def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
            samples = torch.arange(start, stop, device=inputs.device) // channels
            vectors, scores = _prediction_vectors(model(chunk), take_rows(target, samples), self.score)
            return torch.cat([scores[:, None], vectors], dim=1)

        results = score_in_chunks(
            forward, make_inputs, total=batch * channels, batch_size=self.batch_size, model=model, like=inputs
        )
        results = results.view(batch, channels, -1)
        masked_scores, vectors = results[..., 0], results[..., 1:]
        _, clean_scores = _prediction_vectors(outputs, target, self.score)

        similarity = torch.exp(-(clean_scores[:, None] - masked_scores).square() / (2 * SIDU_SIGMA**2))
        uniqueness = torch.cdist(vectors, vectors, compute_mode="donot_use_mm_for_euclid_dist").sum(dim=-1)
        low = uniqueness.amin(dim=1, keepdim=True)
        uniqueness = (uniqueness - low) / (uniqueness.amax(dim=1, keepdim=True) - low + 1e-13)
        weights = similarity * uniqueness / (channels * SIDU_P1)
        # The resize is linear: sum_k w_k Up(B_k) = Up(sum_k w_k B_k), without B x K full-size masks.
        return skimage_resize(torch.einsum("bk,bkhw->bhw", weights, binary), height, width)[:, None]


def sidu_binary_masks(activations: Tensor, threshold: float, layer: str = "?") -> Tensor:
    """SIDU's binary masks ``1[A > threshold]`` ``(B, K, h, w)``; images whose masks are all empty fall back, with a
    warning, to ``1[A_k > mean(A_k)]`` per channel.

    Example:
        >>> import torch
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     sidu_binary_masks(torch.tensor([[[[-1.0, -2.0]]]]), 0.1).tolist()
        [[[[1.0, 0.0]]]]
    """  # noqa: D205
    binary = activations > threshold
    empty = ~binary.flatten(1).any(dim=1)
    if bool(empty.any()):
        images = empty.nonzero().flatten().tolist()
        warnings.warn(
            f"SIDU: no activation of `layer` {layer!r} exceeds `threshold`={threshold} for images {images[:10]} "
            f"(largest activation {float(activations[empty].max()):.4g}), so every mask is empty; using masks "
            "thresholded at each channel's mean activation for them. Pass a lower `threshold` or another `layer`.",
            UserWarning,
            stacklevel=3,
        )
        means = activations[empty].mean(dim=(2, 3), keepdim=True)
        binary[empty] = activations[empty] > means
    return binary.float()

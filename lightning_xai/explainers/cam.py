"""Class activation maps of a layer: Grad-CAM and Grad-CAM++ (convolutional maps, or tokens laid on their grid)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_xai._layers import ReshapeType, check_reshape
from lightning_xai._targets import select_scores
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.explainers._capture import capture_layer
from lightning_xai.explainers.base import Explainer, upsample_to

#: Added to Grad-CAM++'s alpha denominator, as in pytorch-grad-cam's ``grad_cam_plusplus.py`` (METHODS.md s. 8).
GRADCAM_PLUSPLUS_EPS = 1e-6


def _check_layer_argument(layer: object) -> None:
    if layer is not None and not isinstance(layer, (str, nn.Module)):
        raise TypeError(
            f"`layer` must be a dotted module name (str, e.g. 'backbone.layer4'), an nn.Module or None (the default "
            f"layer of lightning_xai._layers), got {layer!r}."
        )


def layer_gradients(
    model: nn.Module, layer: LayerType | None, inputs: Tensor, target: TargetType, reshape: ReshapeType, method: str
) -> tuple[Tensor, Tensor]:
    """The layer's activations and the target scores' gradients there, both ``(B, K, h, w)`` after ``reshape``.

    For clips ``(B, C, T, H, W)`` the layer must be spatio-temporal and both are ``(B, K, t, h, w)``.

    One forward with the layer's output captured as a leaf (:func:`~lightning_xai.explainers._capture.capture_layer`)
    and ``torch.autograd.grad`` of the summed target scores w.r.t. it (samples are independent in eval mode).
    """
    captured = capture_layer(model, layer, inputs, reshape=reshape, method=method, grad=True)
    scores = select_scores(captured.outputs, target)
    (gradients,) = torch.autograd.grad(scores.sum(), captured.raw, allow_unused=True)
    if gradients is None:
        raise ValueError(
            f"{method}: the target scores do not depend on `layer` {captured.name!r}; choose a layer on the path "
            "from the inputs to the outputs."
        )
    return captured.activations, captured.spatial(gradients).float()


class GradCAM(Explainer):
    """Grad-CAM: the layer's channels weighted by their spatially averaged gradients, ReLU, upsampled.

    ``L = ReLU(sum_k w_k A_k)`` with ``w_k = mean_ij dS/dA_kij``, where ``A`` is the layer's output
    ``(B, K, h, w)`` and ``S`` the target score, as ``captum.attr.LayerGradCam`` (the tests' reference) and
    pytorch-grad-cam compute it, then upsampled to the input size (bilinear, ``align_corners=False``, like
    Captum's ``LayerAttribution.interpolate``). Higher means the region of the layer's receptive field that the
    target class's evidence comes from; the map is coarse (the layer's resolution).

    The layer's output is captured as a leaf in one forward pass and ``g = dS/dA`` taken there with
    ``torch.autograd.grad`` (no gradient reaches the inputs or the parameters). Layers followed by in-place
    operations (a BatchNorm before ``ReLU(inplace=True)``, a residual sum) work. A layer that runs more than once
    per forward, is not on the forward path, or whose output is not spatial is refused with an error naming it
    and printing its output shape (the same rule as Grad-CAM++, Score-CAM and SIDU).

    Transformers: token layers ``(B, N[+prefix], D)`` and Swin's channels-last ``(B, h, w, D)`` are brought to
    ``(B, D, h, w)`` by ``reshape`` (see :func:`lightning_xai._layers.to_spatial`); the default layer of a
    torchvision or timm ViT, DeiT or Swin is its last block's first normalisation (pytorch-grad-cam's choice).

    Clips ``(B, C, T, H, W)``: the layer must be spatio-temporal (``nn.Conv3d`` or a block of them, output
    ``(B, K, t, h, w)``); the weights are the gradients' mean over ``(t, h, w)`` and the map is upsampled
    trilinearly (``align_corners=False``) to ``(T, H, W)``, giving ``(B, 1, T, H, W)``. A 2-D layer (an
    ``nn.Conv2d``, or one that folds time into the batch) named for a clip model is refused by name. The default
    layer of a torchvision video ResNet (``r3d_18``, ``mc3_18``, ``r2plus1d_18``) is ``layer4``; of any other
    model, the last module with a spatio-temporal output.

    Paper: R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra, "Grad-CAM: Visual
    Explanations from Deep Networks via Gradient-based Localization", ICCV 2017 (arXiv:1610.02391).

    Args:
        layer: a dotted module name (``"backbone.layer4"``), a module, or None for the default layer (ResNet
            ``layer4``, DenseNet/VGG/MobileNet/EfficientNet/ConvNeXt ``features``, timm's last ``feature_info``
            module, a ViT's last ``norm1``/``ln_1``; otherwise the last module with a spatial output; see
            :mod:`lightning_xai._layers`).
        relu: apply the paper's ReLU (default); False keeps negative evidence.
        reshape: how the layer's output becomes ``(B, K, h, w)``: ``"auto"`` (default: tokens and Swin layouts
            recognised, convolutional maps as they are), ``"tokens"``, ``"channels_last"``, None, or a callable
            (pytorch-grad-cam's ``reshape_transform``, applied to activations and gradients).

    Returns (when called):
        float32 ``(B, 1, H, W)`` (``(B, 1, T, H, W)`` for clips), non-negative with ``relu=True``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                       nn.Linear(4, 2))
        >>> GradCAM()(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
    """

    supports_video = True
    scores_one_forward = True  # layer_gradients: one forward, the target applied to its outputs

    def __init__(self, layer: LayerType | None = None, relu: bool = True, reshape: ReshapeType = "auto") -> None:
        _check_layer_argument(layer)
        if not isinstance(relu, bool):
            raise TypeError(f"`relu` must be a bool, got {relu!r}.")
        check_reshape(reshape)
        self.layer = layer
        self.relu = relu
        self.reshape = reshape

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Grad-CAM at the layer, upsampled to the input size."""
        activations, gradients = layer_gradients(model, self.layer, inputs, target, self.reshape, self.name)
        weights = gradients.mean(dim=tuple(range(2, gradients.ndim)), keepdim=True)
        maps = (weights * activations).sum(dim=1, keepdim=True)
        if self.relu:
            maps = maps.clamp(min=0)
        return upsample_to(maps, tuple(inputs.shape[2:]))


class GradCAMPlusPlus(Explainer):
    """Grad-CAM++: Grad-CAM with pixel-wise weights ``alpha`` that credit every positive-gradient location.

    Follows METHODS.md section 8 (the paper's Eq. 19 with ``Y = exp(S)``, so the higher derivatives are powers
    of the first, ``g = dS/dA``), as pytorch-grad-cam's ``grad_cam_plusplus.py`` does::

        alpha_kij = g^2 / (2 g^2 + sum_ab A_kab * g^3 + eps),  alpha = 0 where g == 0,  eps = 1e-6
        w_k       = sum_ij alpha_kij * ReLU(g_kij)          (spatial SUM, not mean)
        L         = ReLU(sum_k w_k A_k), upsampled (bilinear) to the input size

    Clips ``(B, C, T, H, W)`` with a spatio-temporal layer, as :class:`GradCAM`: the sums over ``(h, w)`` run over
    ``(t, h, w)`` and the map is upsampled trilinearly to ``(B, 1, T, H, W)``.

    Captum has no Grad-CAM++: the layer's output is captured by a forward hook (removed in ``finally``) and
    ``g`` is ``torch.autograd.grad`` of the summed target scores w.r.t. it (samples are independent in eval
    mode). Higher means more positive evidence for the target score in that region.

    Paper: A. Chattopadhay, A. Sarkar, P. Howlader, V. N. Balasubramanian, "Grad-CAM++: Generalized
    Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018 (arXiv:1710.11063).

    Args:
        layer: a dotted module name (``"backbone.layer4"``), a module, or None for the default layer (as
            :class:`GradCAM`). The layer must run once per forward.
        reshape: as :class:`GradCAM`.

    Returns (when called):
        float32 ``(B, 1, H, W)``, non-negative.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                       nn.Linear(4, 2))
        >>> maps = GradCAMPlusPlus(layer="0")(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
        >>> maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 1, 8, 8]), True)
    """

    supports_video = True
    scores_one_forward = True  # layer_gradients: one forward, the target applied to its outputs

    def __init__(self, layer: LayerType | None = None, reshape: ReshapeType = "auto") -> None:
        _check_layer_argument(layer)
        check_reshape(reshape)
        self.layer = layer
        self.reshape = reshape

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Capture the layer's activation and gradient, then apply the Grad-CAM++ weights."""
        activations, gradients = layer_gradients(model, self.layer, inputs, target, self.reshape, self.name)
        maps = gradcam_plusplus_map(activations, gradients)
        return upsample_to(maps, tuple(inputs.shape[2:]))


def gradcam_plusplus_map(activations: Tensor, gradients: Tensor, eps: float = GRADCAM_PLUSPLUS_EPS) -> Tensor:
    """Grad-CAM++ map ``(B, 1, h, w)`` from a layer's activations and the target score's gradients ``(B, K, h, w)``.

    Spatio-temporal ``(B, K, t, h, w)`` give ``(B, 1, t, h, w)``: the sums run over time and space.

    Example:
        >>> import torch
        >>> activations = torch.ones(1, 1, 2, 2)
        >>> gradients = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
        >>> [round(v, 4) for v in gradcam_plusplus_map(activations, gradients).flatten().tolist()]  # alpha = 1/(2+4)
        [0.1667, 0.1667, 0.1667, 0.1667]
    """
    squared = gradients.pow(2)
    cubed = squared * gradients
    dims = tuple(range(2, activations.ndim))
    spatial_sum = activations.sum(dim=dims, keepdim=True)
    alpha = squared / (2 * squared + spatial_sum * cubed + eps)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * gradients.clamp(min=0)).sum(dim=dims, keepdim=True)
    return (weights * activations).sum(dim=1, keepdim=True).clamp(min=0)

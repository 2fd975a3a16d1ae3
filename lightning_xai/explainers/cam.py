"""Class activation maps of a convolutional layer: Grad-CAM (Captum's LayerGradCam) and Grad-CAM++ (native)."""

from __future__ import annotations

from typing import Any

import captum.attr
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_xai._layers import find_layer
from lightning_xai._targets import select_scores
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.explainers.base import Explainer, captum_forward, upsample_to

#: Added to Grad-CAM++'s alpha denominator, as in pytorch-grad-cam's ``grad_cam_plusplus.py`` (METHODS.md s. 8).
GRADCAM_PLUSPLUS_EPS = 1e-6


def _check_layer_argument(layer: object) -> None:
    if layer is not None and not isinstance(layer, (str, nn.Module)):
        raise TypeError(
            f"`layer` must be a dotted module name (str, e.g. 'backbone.layer4'), an nn.Module or None (the last "
            f"nn.Conv2d), got {layer!r}."
        )


def _check_spatial(maps: Tensor, layer: LayerType | None, method: str) -> None:
    if maps.ndim != 4:
        raise ValueError(
            f"{method} needs a `layer` with spatial output (B, K, h, w); layer {layer!r} gives maps of shape "
            f"{tuple(maps.shape)}."
        )


class GradCAM(Explainer):
    """Grad-CAM: the layer's channels weighted by their spatially averaged gradients, ReLU, upsampled.

    ``L = ReLU(sum_k w_k A_k)`` with ``w_k = mean_ij dS/dA_kij``, where ``A`` is the layer's output
    ``(B, K, h, w)`` and ``S`` the target score. Computed by ``captum.attr.LayerGradCam`` (with
    ``relu_attributions=relu``), then upsampled to the input size (bilinear, ``align_corners=False``, like
    ``LayerAttribution.interpolate``). Higher means the region of the layer's receptive field that the target
    class's evidence comes from; the map is coarse (the layer's resolution).

    Captum clones the hooked output, so layers followed by in-place operations (a BatchNorm before
    ``ReLU(inplace=True)``, a residual sum) work; a layer called more than once per forward gives the map of
    its last call.

    Paper: R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra, "Grad-CAM: Visual
    Explanations from Deep Networks via Gradient-based Localization", ICCV 2017 (arXiv:1610.02391).

    Args:
        layer: a dotted module name (``"backbone.layer4"``), a module, or None for the last ``nn.Conv2d``.
        relu: apply the paper's ReLU (default); False keeps negative evidence.

    Returns (when called):
        float32 ``(B, 1, H, W)``, non-negative with ``relu=True``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                       nn.Linear(4, 2))
        >>> GradCAM()(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, layer: LayerType | None = None, relu: bool = True) -> None:
        _check_layer_argument(layer)
        if not isinstance(relu, bool):
            raise TypeError(f"`relu` must be a bool, got {relu!r}.")
        self.layer = layer
        self.relu = relu

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Captum's LayerGradCam at the layer, upsampled to the input size."""
        module = find_layer(model, self.layer)
        forward, captum_target = captum_forward(model, target)
        maps = captum.attr.LayerGradCam(forward, module).attribute(
            inputs, target=captum_target, relu_attributions=self.relu
        )
        _check_spatial(maps, self.layer, self.name)
        return upsample_to(maps.detach(), (inputs.shape[-2], inputs.shape[-1]))


class GradCAMPlusPlus(Explainer):
    """Grad-CAM++: Grad-CAM with pixel-wise weights ``alpha`` that credit every positive-gradient location.

    Follows METHODS.md section 8 (the paper's Eq. 19 with ``Y = exp(S)``, so the higher derivatives are powers
    of the first, ``g = dS/dA``), as pytorch-grad-cam's ``grad_cam_plusplus.py`` does::

        alpha_kij = g^2 / (2 g^2 + sum_ab A_kab * g^3 + eps),  alpha = 0 where g == 0,  eps = 1e-6
        w_k       = sum_ij alpha_kij * ReLU(g_kij)          (spatial SUM, not mean)
        L         = ReLU(sum_k w_k A_k), upsampled (bilinear) to the input size

    Captum has no Grad-CAM++: the layer's output is captured by a forward hook (removed in ``finally``) and
    ``g`` is ``torch.autograd.grad`` of the summed target scores w.r.t. it (samples are independent in eval
    mode). Higher means more positive evidence for the target score in that region.

    Paper: A. Chattopadhay, A. Sarkar, P. Howlader, V. N. Balasubramanian, "Grad-CAM++: Generalized
    Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018 (arXiv:1710.11063).

    Args:
        layer: a dotted module name (``"backbone.layer4"``), a module, or None for the last ``nn.Conv2d``.
            The layer must run once per forward and return one tensor ``(B, K, h, w)``.

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

    def __init__(self, layer: LayerType | None = None) -> None:
        _check_layer_argument(layer)
        self.layer = layer

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Capture the layer's activation and gradient, then apply the Grad-CAM++ weights."""
        module = find_layer(model, self.layer)
        activations, outputs = _forward_with_captured_activation(model, module, inputs, self.layer)
        _check_spatial(activations, self.layer, self.name)
        scores = select_scores(outputs, target)
        (gradients,) = torch.autograd.grad(scores.sum(), activations, allow_unused=True)
        if gradients is None:
            raise ValueError(f"The target scores do not depend on `layer` {self.layer!r}; choose a layer on the path.")
        maps = gradcam_plusplus_map(activations.detach(), gradients)
        return upsample_to(maps, (inputs.shape[-2], inputs.shape[-1]))


def gradcam_plusplus_map(activations: Tensor, gradients: Tensor, eps: float = GRADCAM_PLUSPLUS_EPS) -> Tensor:
    """Grad-CAM++ map ``(B, 1, h, w)`` from a layer's activations and the target score's gradients ``(B, K, h, w)``.

    Example:
        >>> import torch
        >>> activations = torch.ones(1, 1, 2, 2)
        >>> gradients = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
        >>> [round(v, 4) for v in gradcam_plusplus_map(activations, gradients).flatten().tolist()]  # alpha = 1/(2+4)
        [0.1667, 0.1667, 0.1667, 0.1667]
    """
    squared = gradients.pow(2)
    cubed = squared * gradients
    spatial_sum = activations.sum(dim=(2, 3), keepdim=True)
    alpha = squared / (2 * squared + spatial_sum * cubed + eps)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * gradients.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1, keepdim=True).clamp(min=0)


def _forward_with_captured_activation(
    model: nn.Module,
    module: nn.Module,
    inputs: Tensor,
    layer: LayerType | None,
    *,
    keep_graph: bool = False,
    method: str = "Grad-CAM++",
) -> tuple[Tensor, Tensor]:
    """Run ``model(inputs)`` capturing ``module``'s output as a tensor that requires grad; return it and the outputs.

    By default the activation is made a leaf (detached), so nothing upstream of the layer is differentiated. With
    ``keep_graph`` an activation that requires grad keeps its graph to the parameters before the layer (the
    guidance losses differentiate through it). The hook hands the rest of the network a clone, so in-place
    operations after the layer (``ReLU(inplace=True)``) modify the clone and never the captured activation. The
    hook is removed in ``finally``.
    """
    captured: list[Tensor] = []

    def capture(_module: nn.Module, _args: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor):
            raise ValueError(f"`layer` {layer!r} returns {type(output).__name__}; one tensor (B, K, h, w) is needed.")
        activation = output if keep_graph and output.requires_grad else output.detach().requires_grad_(True)
        captured.append(activation)
        return activation.clone()

    handle: RemovableHandle = module.register_forward_hook(capture)
    try:
        outputs = model(inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(
            f"`layer` {layer!r} ran {len(captured)} times in one forward; {method} needs a layer that runs once."
        )
    return captured[0], outputs

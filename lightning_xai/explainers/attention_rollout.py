"""Attention rollout (Abnar and Zuidema, ACL 2020) for torchvision and timm Vision Transformers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_in_range
from lightning_xai._layers import _is_swin, prefix_tokens, token_grid, unwrap_model
from lightning_xai._typing import TargetType
from lightning_xai.explainers.base import Explainer, upsample_to

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The global self-attention modules of a torchvision (``nn.MultiheadAttention``) or timm (``Attention``) ViT."""
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
        or (hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module))
    ]


@contextmanager
def captured_attentions(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect every attention matrix ``(B, heads, N, N)`` (softmax rows) computed while the context is open.

    torchvision: a forward pre-hook asks each ``nn.MultiheadAttention`` for ``need_weights=True,
    average_attn_weights=False`` and a forward hook keeps the weights. timm: ``fused_attn`` is switched off (the
    unfused path computes the same attention explicitly) and a forward hook on ``attn_drop`` (the identity in eval
    mode) keeps its input. Hooks are removed and ``fused_attn`` flags restored in ``finally``.
    """
    root = unwrap_model(model)
    modules = _attention_modules(root)
    if _is_swin(root) or not modules:
        what = "Swin's shifted-window attention is not global" if _is_swin(root) else "it has no attention module"
        raise ValueError(
            f"AttentionRollout needs a Vision Transformer with global self-attention over all tokens "
            f"(torchvision VisionTransformer, timm ViT or DeiT); {type(root).__name__} cannot be rolled out: {what}. "
            "Use GradCAM with its default layer (the last block's norm1) instead."
        )
    attentions: list[Tensor] = []
    handles = []
    flags: list[tuple[nn.Module, Any]] = []

    def ask_for_weights(_module: nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep_weights(_module: nn.Module, _args: Any, output: Any) -> None:
        attentions.append(output[1].detach())

    def keep_input(_module: nn.Module, args: Any, _output: Any) -> None:
        attentions.append(args[0].detach())

    try:
        for module in modules:
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(ask_for_weights, with_kwargs=True))
                handles.append(module.register_forward_hook(keep_weights))
            else:
                flags.append((module, module.fused_attn))
                setattr(module, "fused_attn", False)  # noqa: B010
                drop = getattr(module, "attn_drop")  # noqa: B009
                handles.append(drop.register_forward_hook(keep_input))
        yield attentions
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            setattr(module, "fused_attn", flag)  # noqa: B010


def rollout(attentions: list[Tensor], head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Roll attention out through the layers: ``R = A_L' ... A_1'`` with ``A' = rownorm((fuse(A) + I) / 2)``.

    Args:
        attentions: per layer, in forward order, ``(B, heads, N, N)`` attention rows.
        head_fusion: how the heads are fused (``"mean"``, as in the paper, ``"max"`` or ``"min"``).
        discard_ratio: fraction of each fused matrix's lowest entries set to zero before the identity is added
            (jacobgil/vit-explain's option; the class token's attention to itself is never dropped).

    Returns:
        ``(B, N, N)`` rolled-out attention; each row sums to 1.

    Example:
        >>> uniform = [torch.full((1, 2, 3, 3), 1 / 3)] * 2  # two layers of uniform attention over 3 tokens
        >>> [round(v, 6) for v in rollout(uniform)[0, 0].tolist()]  # 2**-2 * I + (1 - 2**-2) / 3
        [0.5, 0.25, 0.25]
    """
    result: Tensor | None = None
    for attention in attentions:
        attention = attention.double()
        if head_fusion == "mean":
            fused = attention.mean(dim=1)
        elif head_fusion == "max":
            fused = attention.amax(dim=1)
        else:
            fused = attention.amin(dim=1)
        batch, tokens, _ = fused.shape
        if discard_ratio > 0:
            flat = fused.flatten(1).clone()
            count = int(flat.shape[1] * discard_ratio)
            if count:
                lowest = flat.topk(count, dim=1, largest=False).indices
                keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
                keep[:, 0] = False
                flat = flat.masked_fill(keep, 0.0)
            fused = flat.view(batch, tokens, tokens)
        identity = torch.eye(tokens, dtype=fused.dtype, device=fused.device)
        layer = (fused + identity) / 2
        layer = layer / layer.sum(dim=-1, keepdim=True)
        result = layer if result is None else layer @ result
    if result is None:
        raise ValueError("`attentions` must hold at least one layer's attention.")
    return result


class AttentionRollout(Explainer):
    """Attention rollout: how much the class token attends to each patch, through every layer, residuals included.

    Abnar and Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020 (arXiv:2005.00928): each layer's
    attention is fused over heads, the residual connection is modelled by adding the identity and the rows are
    renormalised, ``A' = rownorm((A + I) / 2)``; the layers are multiplied, ``R = A'_L ... A'_1``, and the map is
    the class token's row of ``R`` over the patch tokens (prefix tokens dropped: the class token, DeiT's
    distillation token), laid on the patch grid and upsampled bilinearly to the image. ``head_fusion`` and
    ``discard_ratio`` follow jacobgil/vit-explain (there the rows are renormalised along the wrong axis; here they
    sum to 1). Higher means the class token's representation draws more on that patch. The map is class-agnostic:
    ``target`` is checked but does not change it (use GradCAM for a class-specific map).

    Works on torchvision ``VisionTransformer`` (``nn.MultiheadAttention``, asked for its per-head weights) and timm
    ViT/DeiT (``Attention`` with its fused kernel switched off for the call); refuses Swin (window attention) and
    models without attention. Cost: one forward pass.

    Args:
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over heads.
        discard_ratio: fraction in ``[0, 1)`` of the lowest fused attentions set to zero in each layer (0: none).

    Returns (when called):
        float32 ``(B, 1, H, W)``, non-negative; at patch resolution the values over the patches sum to at most 1.

    Example:
        >>> import torch, torchvision
        >>> vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
        ...                                            hidden_dim=8, mlp_dim=16, num_classes=2)
        >>> AttentionRollout()(vit, torch.rand(2, 3, 16, 16), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 16, 16])
    """

    needs_grad = False

    def __init__(self, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0) -> None:
        check_choice(head_fusion, "head_fusion", HEAD_FUSIONS)
        check_in_range(discard_ratio, "discard_ratio", 0.0, 1.0, high_inclusive=False)
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Rolled-out class-token attention ``(B, 1, H, W)``."""
        batch, _, height, width = inputs.shape
        with captured_attentions(model) as attentions:
            model(inputs)
        shapes = {tuple(a.shape) for a in attentions}
        if not attentions or len(shapes) != 1 or len(next(iter(shapes))) != 4:
            raise ValueError(
                f"AttentionRollout expects one (B, heads, N, N) attention per layer, all of one shape; got {shapes}."
            )
        rolled = rollout(attentions, self.head_fusion, self.discard_ratio)
        tokens = rolled.shape[-1]
        prefix = prefix_tokens(model)
        if prefix is None:
            prefix = 1
        grid = token_grid(tokens - prefix, height, width)
        if grid is None or prefix < 1:
            raise ValueError(
                f"AttentionRollout cannot lay {tokens} tokens (prefix {prefix}) on a patch grid with the image's "
                f"aspect ratio {height}x{width}."
            )
        maps = rolled[:, 0, prefix:].float().reshape(batch, 1, *grid)
        return upsample_to(maps, (height, width))

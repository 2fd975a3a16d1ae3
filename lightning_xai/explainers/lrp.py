"""Layer-wise Relevance Propagation through Zennit: composites by name, canonizers chosen for the model.

LRP (Bach et al., "On pixel-wise explanations for non-linear classifier decisions by layer-wise relevance
propagation", PLOS ONE 2015; rules and composites as in Montavon et al., "Layer-wise relevance propagation: an
overview", 2019) redistributes the target's output relevance layer by layer down to the pixels. We do not
implement any rule: Zennit's ``Gradient`` attributor with a Zennit ``Composite`` does the propagation; this module
chooses the composite and canonizers, sets the output relevance from our target contract and leaves the model
exactly as found.

Zennit (LGPL-3.0) and zennit-crp (BSD-3-Clause-Clear) are optional: ``pip install "lightning-xai[concepts]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai._targets import check_class_range, select_scores
from lightning_xai._typing import TargetType
from lightning_xai.explainers.base import ChannelReduction, Explainer, check_channel_reduction, reduce_channels

#: The composites accepted by name (Zennit's registry names); ``epsilon_gamma_box`` needs pixel bounds.
COMPOSITE_NAMES: tuple[str, ...] = (
    "epsilon_plus_flat",
    "epsilon_plus",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "excitation_backprop",
    "guided_backprop",
    "deconvnet",
)

_EXTRA_HINT = 'install the extra: pip install "lightning-xai[concepts]"'


def import_zennit() -> Any:
    """Import Zennit lazily; raise an ``ImportError`` that names the extra when it is missing."""
    try:
        import zennit
        import zennit.attribution
        import zennit.canonizers
        import zennit.composites
        import zennit.core
    except ImportError as error:
        raise ImportError(f"LRP and concept relevance need Zennit (LGPL-3.0); {_EXTRA_HINT}.") from error
    return zennit


def check_composite(composite: object) -> None:
    """Raise unless ``composite`` is an accepted composite name or a Zennit ``Composite``."""
    if isinstance(composite, str):
        if composite not in COMPOSITE_NAMES:
            raise ValueError(f"`composite` must be one of {COMPOSITE_NAMES} or a zennit Composite, got {composite!r}.")
        return
    zennit = import_zennit()
    if not isinstance(composite, zennit.core.Composite):
        raise TypeError(
            f"`composite` must be a composite name {COMPOSITE_NAMES} or a zennit.core.Composite, got "
            f"{type(composite).__name__}."
        )


def check_canonizers(canonizers: object) -> None:
    """Raise unless ``canonizers`` is ``"auto"``, ``None`` or a sequence of Zennit ``Canonizer`` objects."""
    if canonizers is None or canonizers == "auto":
        return
    if isinstance(canonizers, str) or not isinstance(canonizers, Sequence):
        raise ValueError(f"`canonizers` must be 'auto', None or a list of zennit Canonizers, got {canonizers!r}.")
    zennit = import_zennit()
    for index, canonizer in enumerate(canonizers):
        if not isinstance(canonizer, zennit.canonizers.Canonizer):
            raise TypeError(
                f"`canonizers[{index}]` must be a zennit.canonizers.Canonizer, got {type(canonizer).__name__}."
            )


def check_composite_and_canonizers(composite: object, canonizers: object) -> None:
    """Check both, and refuse canonizers beside a ``Composite`` object, which carries its own."""
    check_composite(composite)
    check_canonizers(canonizers)
    if not isinstance(composite, str) and canonizers not in ("auto", None):
        raise ValueError(
            "`canonizers` applies to composite names only; a zennit Composite carries its own canonizers "
            f"(pass them to it), got canonizers={canonizers!r} with a {type(composite).__name__}."
        )


def auto_canonizers(model: nn.Module) -> list[Any]:
    """Zennit's canonizers for ``model``: what ``canonizers="auto"`` picks.

    - a model holding torchvision ResNet blocks (``BasicBlock``/``Bottleneck``) gets Zennit's ``ResNetCanonizer``
      (BatchNorm merged into the convolution before it, the residual sum as a module LRP can take);
    - any other model with BatchNorm gets ``SequentialMergeBatchNorm`` (Zennit's ``VGGCanonizer``), which merges
      every BatchNorm that directly follows a Linear or convolution in the order of the modules;
    - a model without BatchNorm gets none.

    A residual sum written as ``a + b`` in a custom ``forward`` cannot be seen from the modules and is not
    canonized: relevance then passes the sum as a gradient does (to both branches unchanged). Zennit's ``Sum``
    module, used in the model, lets the composite's rule take it.

    Raises:
        ValueError: when a BatchNorm does not directly follow a Linear or convolution module (Zennit cannot merge it,
            and the composites have no rule for it); the message names the module. Pass ``canonizers`` explicitly
            (for example Zennit's ``NamedMergeBatchNorm``) or ``None`` to explain such a model anyway.
    """
    zennit = import_zennit()
    from zennit.core import collect_leaves
    from zennit.types import BatchNorm, Linear

    names = {module: name for name, module in model.named_modules()}
    unmerged, last = [], None
    for leaf in collect_leaves(model):
        if isinstance(leaf, BatchNorm) and not isinstance(last, Linear):
            unmerged.append(names.get(leaf, type(leaf).__name__))
        last = leaf
    if unmerged:
        raise ValueError(
            f"`canonizers='auto'` cannot merge BatchNorm module(s) {unmerged[:5]} into a preceding Linear or "
            "convolution (Zennit merges a BatchNorm only when it directly follows one in module order); pass "
            "`canonizers` explicitly, e.g. [zennit.canonizers.NamedMergeBatchNorm([(('conv',), 'bn')])], or None."
        )
    from torchvision.models.resnet import BasicBlock, Bottleneck  # torchvision is a Zennit dependency

    modules = list(model.modules())
    if any(isinstance(module, (BasicBlock, Bottleneck)) for module in modules):
        from zennit.torchvision import ResNetCanonizer

        return [ResNetCanonizer()]
    if any(isinstance(module, BatchNorm) for module in modules):
        return [zennit.canonizers.SequentialMergeBatchNorm()]
    return []


def build_composite(
    composite: Any, canonizers: Any, model: nn.Module, inputs: Tensor, composite_kwargs: dict[str, Any] | None = None
) -> Any:
    """A fresh Zennit ``Composite`` for one explanation of ``model`` at ``inputs``.

    A name builds Zennit's registered composite with the canonizers (``"auto"``: :func:`auto_canonizers`). For
    ``"epsilon_gamma_box"`` the ZBox pixel bounds ``low``/``high`` come from ``composite_kwargs`` or, when absent,
    are the batch's per-channel minimum and maximum. A ``Composite`` instance is used as it is (its own canonizers).
    """
    zennit = import_zennit()
    if not isinstance(composite, str):
        return composite
    kwargs = dict(composite_kwargs or {})
    if composite == "epsilon_gamma_box":
        low = inputs.detach().amin(dim=(0, 2, 3), keepdim=True)
        high = inputs.detach().amax(dim=(0, 2, 3), keepdim=True)
        kwargs.setdefault("low", low.expand_as(inputs[:1]))
        kwargs.setdefault("high", high.expand_as(inputs[:1]))
    chosen = auto_canonizers(model) if canonizers == "auto" else list(canonizers or [])
    return zennit.composites.COMPOSITES[composite](canonizers=chosen, **kwargs)


def output_relevance(outputs: Tensor, target: TargetType) -> Tensor:
    """The relevance LRP starts from at the model's outputs: the target score, nothing else.

    A class index ``t`` puts the logit ``outputs[i, t]`` on its output and zero elsewhere (Bach et al.'s
    initialisation), so the input relevance of a conserving rule sums to that logit. A callable target ``s(outputs)``
    starts from ``outputs * ds/doutputs``, which is the same for a selection (``s = outputs[:, t]``) and puts
    ``s`` itself on the outputs for any linear, bias-free ``s`` (``-outputs[:, 0]`` for a binary head's negative
    class, a sum of logits for several labels).

    Args:
        outputs: the model's outputs ``(B, ...)``, detached.
        target: class indices ``(B,)`` or a callable ``(outputs) -> (B,)``.

    Returns:
        A tensor shaped as ``outputs``.
    """
    if isinstance(target, Tensor):
        check_class_range(outputs, target)
        onehot = torch.zeros_like(outputs).scatter_(1, target.to(outputs.device).long().view(-1, 1), 1.0)
        return onehot * outputs
    with torch.enable_grad():
        leaf = outputs.detach().requires_grad_(True)
        scores = select_scores(leaf, target)
        (gradient,) = torch.autograd.grad(scores.sum(), leaf, allow_unused=True)
    if gradient is None:
        return torch.zeros_like(outputs)
    return gradient * outputs.detach()


class LRP(Explainer):
    """Layer-wise Relevance Propagation with a Zennit composite (Bach et al. 2015; Montavon et al. 2019).

    Zennit's ``Gradient`` attributor runs one forward and one modified backward pass under the composite; the output
    relevance is the target logit (see :func:`output_relevance`). Canonizers rewrite the model while it is explained
    (BatchNorm merged into the layer before it, residual sums made explicit) and Zennit puts every parameter and
    buffer back afterwards; the model is left bitwise as found, with no hook.

    Heads: a class index explains that logit. A binary single-logit head ``(B, 1)`` takes index 0 (the positive
    class; a negative relevance speaks for the other class), or the callable ``lambda o: -o[:, 0]`` for the negative
    class. A multi-label head explains one label's logit per sample by index (each label is its own sigmoid), or
    any linear combination through a callable.

    Args:
        composite: a Zennit composite name (one of :data:`COMPOSITE_NAMES`; default ``"epsilon_plus_flat"``: flat
            rule on the first layer, z+ on convolutions, epsilon on dense layers) or a ``zennit.core.Composite``
            (used with its own canonizers).
        canonizers: ``"auto"`` (see :func:`auto_canonizers`), a list of Zennit canonizers, or ``None`` for none.
            Only for composite names.
        channel_reduction: how ``(B, C, H, W)`` pixel relevances become one map: ``"sum"`` (signed, conserves the
            total), ``"abs_sum"``, ``"max_abs"`` or ``None`` (keep the channels).
        composite_kwargs: extra arguments of the named composite (``low``/``high`` for ``"epsilon_gamma_box"``,
            which otherwise default to the batch's per-channel range).

    Returns (on call):
        ``(B, 1, H, W)`` float32 relevance; higher means more evidence for the target. With the epsilon rule on
        every layer of a bias-free ReLU network the map sums to the target logit up to what epsilon absorbs,
        ``R_j * eps / (|z_j| + eps)`` at each neuron: with Zennit's default ``eps = 1e-6`` and logits of order 1,
        within 1e-4 relative (measured: at most 4e-5). Biases, z+ and flat rules do not conserve exactly.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
        >>> lrp = LRP(composite="epsilon_plus", canonizers=None)
        >>> x = torch.rand(1, 1, 2, 2)
        >>> bool(torch.isclose(lrp(model, x, torch.tensor([1])).sum(), model(x)[0, 1], atol=1e-4))
        True
    """

    def __init__(
        self,
        composite: Any = "epsilon_plus_flat",
        canonizers: Any = "auto",
        channel_reduction: ChannelReduction | None = "sum",
        composite_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_composite_and_canonizers(composite, canonizers)
        check_channel_reduction(channel_reduction)
        if composite_kwargs is not None and not isinstance(composite_kwargs, dict):
            raise TypeError(f"`composite_kwargs` must be a dict or None, got {type(composite_kwargs).__name__}.")
        self.composite = composite
        self.canonizers = canonizers
        self.channel_reduction = channel_reduction
        self.composite_kwargs = composite_kwargs

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Zennit's Gradient attributor under the composite, from the target's output relevance."""
        zennit = import_zennit()
        composite = build_composite(self.composite, self.canonizers, model, inputs, self.composite_kwargs)
        with zennit.attribution.Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(inputs, lambda outputs: output_relevance(outputs, target))
        return reduce_channels(relevance, self.channel_reduction)

"""Explaining the similarity of two views: the pair methods of xai-ssl (Sammani et al., arXiv:2206.09753).

A self-supervised or metric-learning model maps an image to an embedding ``f(x)`` of shape ``(D,)``; what it
learns is that two views of one image are alike, ``cos(f(x1), f(x2))`` high. A pair method explains that
similarity on both images at once: ``explainer.explain_pair(model, x1, x2) -> (maps1, maps2)``, each
``(B, 1, H, W)``, where ``maps1`` says which pixels of ``x1`` the similarity to ``x2`` rests on, and ``maps2`` the
same for ``x2``. To explain ``cos(f(x), r)`` for a fixed reference with any single-image explainer, use
:class:`~lightning_xai.SimilarityTarget` instead.

Paper: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Self-Supervised Vision
Learning", arXiv:2206.09753, 2022 (code: fawazsammani/xai-ssl, read for the semantics of each method; the
batched, chunked form and the choices said in each docstring are ours).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_image_batch, check_in_range, check_positive_int
from lightning_xai._layers import eager_model
from lightning_xai._model_state import explanation_mode, preserved_global_rng
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import check_embeddings
from lightning_xai._typing import LayerType
from lightning_xai.explainers._capture import capture_layer
from lightning_xai.explainers.base import upsample_to
from lightning_xai.explainers.cam import _check_layer_argument
from lightning_xai.explainers.occlusion import _window

__all__ = [
    "AveragedTransforms",
    "ConditionalOcclusion",
    "ContextAgnosticConditionalOcclusion",
    "InteractionCAM",
    "PairExplainer",
    "PairwiseOcclusion",
    "PixelInvariance",
    "check_pair",
]


def check_pair(x1: object, x2: object) -> None:
    """Raise unless ``x1`` and ``x2`` are image batches ``(B, C, H, W)`` of the same shape, device and dtype."""
    check_image_batch(x1, "x1")
    check_image_batch(x2, "x2")
    assert isinstance(x1, Tensor) and isinstance(x2, Tensor)  # for mypy; checked above
    if x1.shape != x2.shape:
        raise ValueError(
            f"The two views of a pair must have the same shape (B, C, H, W): `x1` has {tuple(x1.shape)} and `x2` "
            f"has {tuple(x2.shape)}; resize or crop them to one size, and give as many of each."
        )
    if x1.device != x2.device or x1.dtype != x2.dtype:
        raise ValueError(
            f"The two views of a pair must share device and dtype: `x1` is {x1.dtype} on {x1.device}, `x2` is "
            f"{x2.dtype} on {x2.device}."
        )


def embed(model: nn.Module, inputs: Tensor, name: str = "the model's outputs") -> Tensor:
    """``model(inputs)`` checked to be embeddings ``(B, D)`` (one per input)."""
    outputs = check_embeddings(model(inputs), name)
    if outputs.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"A similarity needs one embedding per image: {inputs.shape[0]} images gave {name} of shape "
            f"{tuple(outputs.shape)}."
        )
    return outputs


class PairExplainer(ABC):
    """Base class of the pair methods: ``explain_pair(model, x1, x2) -> (maps1, maps2)``, each ``(B, 1, H, W)``.

    :meth:`explain_pair` checks the pair (same shape), runs :meth:`attribute_pair` inside
    :func:`~lightning_xai._model_state.explanation_mode` on clones of the views taken out of inference mode, and
    checks that both maps are finite. The model must return embeddings ``(B, D)``. It is left as found: training
    flags, ``requires_grad`` flags, parameter ``.grad`` (never written) and the global RNG stream.

    Attributes:
        needs_grad: whether the method needs autograd (False for the occlusion methods, forwards only).
        symmetric: whether swapping the views swaps the maps (``explain_pair(m, x2, x1) == (maps2, maps1)``).
    """

    needs_grad: bool = True
    symmetric: bool = True

    @property
    def name(self) -> str:
        """Name used in logged keys, ``xai/similarity/<name>/...``: the class name."""
        return type(self).__name__

    def explain_pair(self, model: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Explain ``cos(model(x1), model(x2))`` on both views.

        Args:
            model: an embedding model, ``model(x) -> (B, D)``.
            x1: the first views ``(B, C, H, W)``.
            x2: the second views, the same shape as ``x1`` (pair ``i`` is ``(x1[i], x2[i])``).

        Returns:
            ``(maps1, maps2)``, float32 ``(B, 1, H, W)`` each on the views' device; higher means the pixel matters
            more to the similarity of the pair.
        """
        check_pair(x1, x2)
        model = eager_model(model, self.name)
        with explanation_mode(model, grad=self.needs_grad):
            maps1, maps2 = self.attribute_pair(model, x1.detach().clone(), x2.detach().clone())
        results = []
        for view, maps in (("x1", maps1), ("x2", maps2)):
            maps = maps.detach().to(torch.float32)
            finite = torch.isfinite(maps)
            if not bool(finite.all()):
                bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(f"{self.name} produced non-finite maps of `{view}` for samples {bad[:10]}.")
            results.append(maps)
        return results[0], results[1]

    __call__ = explain_pair

    @abstractmethod
    def attribute_pair(self, model: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Compute both maps; called inside the safe context with checked, cloned views."""

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({arguments})"


# ---------------------------------------------------------------------------------------------- sliding windows
def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one side: ``0, s, 2s, ...`` and a last window flush with the border (all pixels covered).

    Example:
        >>> window_starts(10, 4, 3)
        [0, 3, 6]
        >>> window_starts(10, 4, 4)
        [0, 4, 6]
    """
    if window > size:
        raise ValueError(f"`window` side {window} is larger than the image side {size}; use a window that fits.")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


class _Windows:
    """The grid of square (or rectangular) windows of one image size, and their masks built on the device."""

    def __init__(self, height: int, width: int, window: tuple[int, int], stride: tuple[int, int], device: torch.device):
        tops = window_starts(height, window[0], stride[0])
        lefts = window_starts(width, window[1], stride[1])
        grid = torch.tensor([(top, left) for top in tops for left in lefts], device=device)
        self.tops, self.lefts = grid[:, 0], grid[:, 1]
        self.window = window
        self.count = int(grid.shape[0])
        self.rows = torch.arange(height, device=device)
        self.columns = torch.arange(width, device=device)

    def masks(self, start: int, stop: int) -> Tensor:
        """Bool masks ``(stop - start, 1, H, W)``, True inside windows ``start:stop``."""
        tops, lefts = self.tops[start:stop, None], self.lefts[start:stop, None]
        inside_rows = (self.rows >= tops) & (self.rows < tops + self.window[0])
        inside_columns = (self.columns >= lefts) & (self.columns < lefts + self.window[1])
        return (inside_rows[:, :, None] & inside_columns[:, None, :])[:, None]

    def credit(self, scores: Tensor, chunk: int = 64) -> Tensor:
        """Pixel maps ``(B, 1, H, W)`` from window scores ``(B, N)``: each pixel the mean over its covering windows."""
        total = scores.new_zeros(scores.shape[0], self.rows.numel(), self.columns.numel())
        count = scores.new_zeros(self.rows.numel(), self.columns.numel())
        for start in range(0, self.count, chunk):
            masks = self.masks(start, min(start + chunk, self.count))[:, 0].to(scores.dtype)
            total += torch.einsum("bn,nhw->bhw", scores[:, start : start + chunk], masks)
            count += masks.sum(dim=0)
        return (total / count.clamp_min(1.0))[:, None]


def _items_per_chunk(batch_size: ChunkSize, images_per_item: int) -> ChunkSize:
    """A fixed ``batch_size`` counts perturbed images; :func:`score_in_chunks` counts items (windows)."""
    return "auto" if batch_size == "auto" else max(1, int(batch_size) // images_per_item)


def _min_max(values: Tensor) -> Tensor:
    """Each row of ``(B, ...)`` scaled to ``[0, 1]`` (a constant row becomes 0)."""
    flat = values.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(values)


def _image_window(value: object, name: str) -> tuple[int, int]:
    """An int or a pair ``(height, width)`` of ints >= 1: the pair methods explain images, not clips."""
    window = _window(value, name)
    if len(window) != 2:
        raise ValueError(f"`{name}` must be an int or a pair (height, width) for image pairs, got {value!r}.")
    return window[0], window[1]


class _WindowPairExplainer(PairExplainer):
    """Shared arguments of the occlusion pair methods."""

    needs_grad = False

    def __init__(
        self,
        window: int | tuple[int, int] = 8,
        stride: int | tuple[int, int] = 4,
        baseline: float = 0.0,
        batch_size: ChunkSize = "auto",
    ) -> None:
        self.window = _image_window(window, "window")
        self.stride = _image_window(stride, "stride")
        check_in_range(baseline, "baseline", -float("inf"), float("inf"), low_inclusive=False, high_inclusive=False)
        check_batch_size(batch_size)
        self.baseline = float(baseline)
        self.batch_size = batch_size

    def _windows(self, inputs: Tensor) -> _Windows:
        return _Windows(inputs.shape[-2], inputs.shape[-1], self.window, self.stride, inputs.device)

    def _occluded(self, inputs: Tensor, masks: Tensor) -> Tensor:
        """``(k * B, C, H, W)``: every image with each of ``k`` windows painted with the baseline (window-major)."""
        painted = torch.where(masks[:, None], torch.full_like(inputs[:1], self.baseline)[None], inputs[None])
        return painted.flatten(0, 1)

    def _score_window_views(
        self,
        model: nn.Module,
        like: Tensor,
        windows: _Windows,
        views: Sequence[Callable[[Tensor], Tensor]],
        score: Callable[..., Tensor],
    ) -> Tensor:
        """Every window's painted views of the ``B`` images (shaped as ``like``), embedded in chunks, then ``score``.

        Each of ``views`` maps a chunk's window masks ``(k, H, W)`` to its painted images ``(k * B, C, H, W)``
        (for instance one view occluded by each window); ``score`` gets the embeddings ``(k, B, D)`` of every view,
        in the order of ``views``, and returns ``(k, ...)``; the results are concatenated over all windows,
        ``(N, ...)``.
        """
        count, batch = len(views), like.shape[0]

        def make_inputs(start: int, stop: int) -> Tensor:
            masks = windows.masks(start, stop)
            return torch.cat([view(masks) for view in views])

        def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
            return score(*embed(model, chunk).view(count, stop - start, batch, -1).unbind(0))

        return score_in_chunks(
            forward,
            make_inputs,
            total=windows.count,
            batch_size=_items_per_chunk(self.batch_size, count * batch),
            model=model,
            images_per_item=count * batch,
            like=like,
        )

    def _kept(self, inputs: Tensor, masks: Tensor) -> Tensor:
        """``(k * B, C, H, W)``: only each window of every image kept, the rest painted with the baseline."""
        painted = torch.where(masks[:, None], inputs[None], torch.full_like(inputs[:1], self.baseline)[None])
        return painted.flatten(0, 1)


class ConditionalOcclusion(_WindowPairExplainer):
    """Conditional occlusion: how much the pair's similarity drops when a window of one view is occluded.

    For each window ``w`` (a ``window`` patch slid with ``stride``, a last window flush with the border), the map
    of ``x1`` is ``cos(f(x1), f(x2)) - cos(f(x1 with w painted by baseline), f(x2))``: the second view is the
    condition, fixed; the map of ``x2`` is the same with the roles exchanged. Higher means occluding that region
    lowers the similarity more. Each pixel holds the mean over the windows covering it (our
    :class:`~lightning_xai.explainers.Occlusion`'s convention; xai-ssl keeps the coarse window grid).

    Symmetric in the pair. Forwards only: ``2 * B`` occluded images per window, built on the device and scored in
    chunks under ``no_grad`` (:func:`~lightning_xai._scoring.score_in_chunks`).

    Paper: Sammani et al., arXiv:2206.09753 (conditional occlusion); the occluded pixels are set to 0 in their code,
    ``baseline`` here.

    Args:
        window: side of the occluding patch in pixels, or ``(height, width)``.
        stride: step between window positions, int or ``(height, width)``.
        baseline: the value painted into the window (0, as xai-ssl).
        batch_size: perturbed images per forward, or ``"auto"`` (:mod:`lightning_xai._scoring`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8))
        >>> x1, x2 = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
        >>> maps1, maps2 = ConditionalOcclusion(window=2, stride=2)(model, x1, x2)
        >>> maps1.shape, maps2.shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2, 1, 4, 4]))
    """

    def attribute_pair(self, model: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Window drops of the similarity for each view, the other view fixed, credited to pixels."""
        batch = x1.shape[0]
        windows = self._windows(x1)
        e1, e2 = embed(model, torch.cat([x1, x2])).split(batch)
        base = F.cosine_similarity(e1, e2, dim=1)

        def drops_of(occluded1: Tensor, occluded2: Tensor) -> Tensor:
            drop1 = base - F.cosine_similarity(occluded1, e2[None], dim=-1)
            drop2 = base - F.cosine_similarity(occluded2, e1[None], dim=-1)
            return torch.stack([drop1, drop2], dim=-1).float()  # (k, B, 2)

        occluded = (functools.partial(self._occluded, x1), functools.partial(self._occluded, x2))
        drops = self._score_window_views(model, x1, windows, occluded, drops_of)
        return windows.credit(drops[..., 0].T), windows.credit(drops[..., 1].T)


class ContextAgnosticConditionalOcclusion(_WindowPairExplainer):
    """Context-agnostic conditional occlusion: the embedding of a window alone, compared with the other view.

    For each window ``w`` of ``x1``, the window's own contribution is ``f(x1 with only w kept) - f(x1 with w
    painted)`` (the rest, or the window, painted with ``baseline``), which removes the context's share of the
    embedding; its cosine similarity to ``f(x2)`` is the window's score. The scores of a view are min-max scaled
    to ``[0, 1]`` per sample over the windows (as xai-ssl does), then each pixel holds the mean over the windows
    covering it. The map of ``x2`` is the same with the roles exchanged. Higher means the region, on its own,
    looks more like the other view.

    Symmetric in the pair. Forwards only: ``4 * B`` perturbed images per window, built on the device and scored in
    chunks under ``no_grad``.

    Paper: Sammani et al., arXiv:2206.09753 (context-agnostic conditional occlusion).

    Args:
        window: side of the window in pixels, or ``(height, width)``.
        stride: step between window positions.
        baseline: the value painted outside (kept image) or inside (occluded image) the window.
        batch_size: perturbed images per forward, or ``"auto"``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8))
        >>> explainer = ContextAgnosticConditionalOcclusion(window=2, stride=2)
        >>> maps1, _ = explainer(model, torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))
        >>> bool(maps1.min() >= 0), bool(maps1.max() <= 1)
        (True, True)
    """

    def attribute_pair(self, model: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Cosine of each window's own embedding to the other view's, min-max scaled, credited to pixels."""
        batch = x1.shape[0]
        windows = self._windows(x1)
        e1, e2 = embed(model, torch.cat([x1, x2])).split(batch)

        def own_scores(kept1: Tensor, occluded1: Tensor, kept2: Tensor, occluded2: Tensor) -> Tensor:
            score1 = F.cosine_similarity(kept1 - occluded1, e2[None], dim=-1)
            score2 = F.cosine_similarity(kept2 - occluded2, e1[None], dim=-1)
            return torch.stack([score1, score2], dim=-1).float()

        views = [functools.partial(paint, image) for image in (x1, x2) for paint in (self._kept, self._occluded)]
        scores = self._score_window_views(model, x1, windows, views, own_scores)
        return windows.credit(_min_max(scores[..., 0].T)), windows.credit(_min_max(scores[..., 1].T))


class PairwiseOcclusion(_WindowPairExplainer):
    """Pairwise occlusion: occlude a window in both views at once and credit the joint drop of the similarity.

    For every pair of windows ``(i, j)``, ``i`` in ``x1`` and ``j`` in ``x2``, the joint drop is
    ``d_ij = cos(f(x1), f(x2)) - cos(f(x1 without i), f(x2 without j))``; the drops of a pair of views become
    weights ``p_ij = softmax_ij(d_ij / temperature)`` over all window pairs, and window ``i`` of ``x1`` gets the
    marginal ``sum_j p_ij`` (window ``j`` of ``x2``: ``sum_i p_ij``). Each pixel holds the mean over its covering
    windows, and each map is min-max scaled to ``[0, 1]``. Higher means occluding the region, together with any
    region of the other view, lowers the similarity more.

    Reconstructed (xai-ssl's code draws ``num_erases`` random erasures of both views, takes the softmax of their
    joint drops and credits each erasure pair to the one view whose erased embedding has the smaller norm, then
    divides each map by its maximum). Here the erasures are the deterministic grid of all window pairs and each
    pair's weight is credited to both views (the marginals of the joint weights), so the method needs no seed and
    is symmetric: swapping the views swaps the maps. Only ``2 * B * N`` forwards are needed for the ``N ** 2``
    window pairs, since the embeddings of the ``N`` occluded copies of each view are combined by one cosine table;
    scaled by the min and max rather than the max, because the marginals of a softmax over ``N ** 2`` pairs all lie
    near ``1 / N``.

    Paper: Sammani et al., arXiv:2206.09753 (pairwise occlusion).

    Args:
        window: side of the occluding patch in pixels, or ``(height, width)``.
        stride: step between window positions.
        baseline: the value painted into the windows.
        temperature: of the softmax over window pairs (1, as xai-ssl); lower concentrates the weight on the
            pairs with the largest drops.
        batch_size: perturbed images per forward, or ``"auto"``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8))
        >>> x1, x2 = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
        >>> maps1, maps2 = PairwiseOcclusion(window=2, stride=2)(model, x1, x2)
        >>> swapped2, swapped1 = PairwiseOcclusion(window=2, stride=2)(model, x2, x1)
        >>> torch.allclose(maps1, swapped1, atol=1e-5), torch.allclose(maps2, swapped2, atol=1e-5)
        (True, True)
    """

    def __init__(
        self,
        window: int | tuple[int, int] = 8,
        stride: int | tuple[int, int] = 4,
        baseline: float = 0.0,
        temperature: float = 1.0,
        batch_size: ChunkSize = "auto",
    ) -> None:
        super().__init__(window, stride, baseline, batch_size)
        check_in_range(temperature, "temperature", 0.0, float("inf"), low_inclusive=False, high_inclusive=False)
        self.temperature = float(temperature)

    def attribute_pair(self, model: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax weights of the joint drops over all window pairs, marginalised onto each view."""
        batch = x1.shape[0]
        windows = self._windows(x1)
        e1, e2 = embed(model, torch.cat([x1, x2])).split(batch)
        base = F.cosine_similarity(e1, e2, dim=1)

        def units_of(occluded1: Tensor, occluded2: Tensor) -> Tensor:
            embeddings = torch.stack([occluded1, occluded2], dim=1).float()  # (k, 2, B, D)
            return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-8)

        occluded = (functools.partial(self._occluded, x1), functools.partial(self._occluded, x2))
        units = self._score_window_views(model, x1, windows, occluded, units_of)
        occluded1, occluded2 = units[:, 0].transpose(0, 1), units[:, 1].transpose(0, 1)  # (B, N, D) each
        joint = torch.einsum("bid,bjd->bij", occluded1, occluded2)  # cos(f(x1 \ i), f(x2 \ j))
        drops = base.float()[:, None, None] - joint
        weights = torch.softmax(drops.flatten(1) / self.temperature, dim=1).view_as(drops)
        maps1 = windows.credit(weights.sum(dim=2))
        maps2 = windows.credit(weights.sum(dim=1))
        return _min_max(maps1), _min_max(maps2)


class InteractionCAM(PairExplainer):
    """Interaction-CAM: Grad-CAM of the pair's similarity, weighted by the channels both views activate.

    With ``A1, A2`` the layer's activations ``(B, K, h, w)`` for the two views and ``G1, G2`` the gradients of
    ``s = cos(f(x1), f(x2))`` there, the map of ``x1`` is ``sum_k A1_k * J_k * v * ReLU(G1_k)`` where
    ``J_k = pool(A1_k) * pool(A2_k)`` (``reduction``: spatial mean or max) weights the channels active in both
    views and ``v = 1 - mean_d |n(f(x1))_d - n(f(x2))_d|`` (``n``: min-max scaling of an embedding over its ``D``
    entries) is the pair's invariance, a scalar per pair; the map of ``x2`` swaps the roles. The maps are upsampled
    to the input size (bilinear). Higher means the region drives the similarity through channels both views share.
    One forward of both views (``2 * B`` images) and one ``torch.autograd.grad`` at the layer.

    Symmetric in the pair. xai-ssl's third reduction (attention pooling) is not provided; xai-ssl scales the
    embeddings over the whole (single-pair) batch, here per sample.

    Paper: Sammani et al., arXiv:2206.09753 (Interaction-CAM).

    Args:
        layer: a dotted module name, a module, or None for the default layer (:mod:`lightning_xai._layers`).
        reduction: how the joint channel weights pool the activations, ``"mean"`` (default) or ``"max"``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> maps1, maps2 = InteractionCAM()(model, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
        >>> maps1.shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, layer: LayerType | None = None, reduction: Literal["mean", "max"] = "mean") -> None:
        _check_layer_argument(layer)
        check_choice(reduction, "reduction", ("mean", "max"))
        self.layer = layer
        self.reduction = reduction

    def attribute_pair(self, model: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """One forward of both views with the layer captured, the similarity's gradient there, the joint CAM."""
        batch = x1.shape[0]
        both = torch.cat([x1, x2])
        captured = capture_layer(model, self.layer, both, reshape="auto", method=self.name, grad=True)
        embeddings = check_embeddings(captured.outputs)
        e1, e2 = embeddings.split(batch)
        similarity = F.cosine_similarity(e1, e2, dim=1)
        (gradients,) = torch.autograd.grad(similarity.sum(), captured.raw, allow_unused=True)
        if gradients is None:
            raise ValueError(
                f"{self.name}: the embeddings do not depend on `layer` {captured.name!r}; choose a layer on the path "
                "from the inputs to the embedding."
            )
        activations, grads = captured.activations, captured.spatial(gradients).float()
        a1, a2 = activations.split(batch)
        g1, g2 = grads.split(batch)
        pooled = activations.mean(dim=(2, 3)) if self.reduction == "mean" else activations.amax(dim=(2, 3))
        joint = (pooled[:batch] * pooled[batch:])[:, :, None, None]
        scaled1, scaled2 = _min_max(e1.detach().float()), _min_max(e2.detach().float())
        invariance = (1 - (scaled1 - scaled2).abs().mean(dim=1)).view(-1, 1, 1, 1)
        cam1 = (a1 * joint * invariance * F.relu(g1)).sum(dim=1, keepdim=True)
        cam2 = (a2 * joint * invariance * F.relu(g2)).sum(dim=1, keepdim=True)
        size = (x1.shape[-2], x1.shape[-1])
        return upsample_to(cam1, size), upsample_to(cam2, size)


class AveragedTransforms(PairExplainer):
    """Averaged transforms: input-times-gradient of the similarity, averaged over images mixed between the views.

    The mixed images ``m_k = (1 - a_k) x1 + a_k x2`` with ``a_k = k / steps`` (``k = 1..steps``, so ``m_steps =
    x2``) walk from the first view to the second; ``g1`` and ``g2`` are the gradients of ``cos(f(x1), f(m_k))``
    w.r.t. ``x1`` and ``m_k``, averaged over ``k``. The maps are ``max_c |x1 * g1|`` and ``max_c |x2 * g2|``.
    Higher means the pixel's value moves the similarity more along the path between the views.

    Not symmetric: ``x1`` is the anchor every mixed image is compared with. Reconstructed from xai-ssl's code, which
    mixes an image with a transform of itself (``lambda`` from 1 down to ``step``), optionally adds noise and uses
    the last mixed image (not ``x2``) in the product; here the path ends at ``x2`` and there is no noise. The
    gradients are taken w.r.t. the inputs with ``torch.autograd.grad`` (no parameter ``.grad``).

    Paper: Sammani et al., arXiv:2206.09753 (averaged transforms).

    Args:
        steps: number of mixed images.
        internal_batch_size: at most this many mixed images per forward (``2 *`` as many images); None: all.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.Tanh())
        >>> maps1, maps2 = AveragedTransforms(steps=4)(model, torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))
        >>> maps2.shape, bool((maps2 >= 0).all())
        (torch.Size([2, 1, 4, 4]), True)
    """

    symmetric = False

    def __init__(self, steps: int = 10, internal_batch_size: int | None = None) -> None:
        check_positive_int(steps, "steps")
        if internal_batch_size is not None:
            check_positive_int(internal_batch_size, "internal_batch_size")
        self.steps = steps
        self.internal_batch_size = internal_batch_size

    def attribute_pair(self, model: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Mean gradients of the similarity along the mixing path, times the views, max over channels."""
        batch = x1.shape[0]
        alphas = torch.arange(1, self.steps + 1, device=x1.device, dtype=x1.dtype) / self.steps
        per_chunk = self.steps if self.internal_batch_size is None else max(1, self.internal_batch_size // batch)
        grads1, grads2 = torch.zeros_like(x1), torch.zeros_like(x2)
        for first in range(0, self.steps, per_chunk):
            chunk = alphas[first : first + per_chunk].view(-1, 1, 1, 1, 1)
            anchors = x1[None].expand(chunk.shape[0], *x1.shape).reshape(-1, *x1.shape[1:]).clone()
            mixed = ((1 - chunk) * x1[None] + chunk * x2[None]).flatten(0, 1).detach()
            anchors.requires_grad_(True)
            mixed.requires_grad_(True)
            e1, e2 = embed(model, torch.cat([anchors, mixed])).split(anchors.shape[0])
            similarity = F.cosine_similarity(e1, e2, dim=1)
            g_anchor, g_mixed = torch.autograd.grad(similarity.sum(), (anchors, mixed))
            grads1 += g_anchor.view(-1, *x1.shape).sum(dim=0)
            grads2 += g_mixed.view(-1, *x2.shape).sum(dim=0)
        maps1 = (x1 * grads1 / self.steps).abs().amax(dim=1, keepdim=True)
        maps2 = (x2 * grads2 / self.steps).abs().amax(dim=1, keepdim=True)
        return maps1, maps2


class PixelInvariance(PairExplainer):
    """Pixel invariance: which pixels of a view, when an augmentation alters them, change the pair's similarity.

    For the map of ``x2``, ``num_augments`` augmented copies ``a_n = augment(x2, g)`` are drawn (``g`` a local
    generator seeded with ``seed``; the global RNG is restored afterwards) and scored ``y_n = cos(f(x1), f(a_n))``
    against the fixed first view; a linear surrogate ``y ~ w . a + b`` is fitted to them by ridge regression, and
    the map is ``max_c w`` (over channels), min-max scaled to ``[0, 1]``. The map of ``x1`` is the same with the
    roles exchanged. Higher means the similarity rises with the pixel's value across augmentations: the model
    relies on the pixel staying as it is. ``augment(images (N, C, H, W), generator) -> (N, C, H, W)`` must not
    move pixels (random erasing, noise, colour changes; no crops or flips), so that a pixel keeps its place; it
    gets the views on their device and a generator on that device (pass ``device=images.device`` to its draws).

    Reconstructed (xai-ssl trains the linear surrogate with SGD and a logistic loss for a number of epochs on
    images resized to a small side, and optionally adds an L1 penalty, zeroes values below 0.5 and blurs the
    map). Here the surrogate is the closed-form ridge solution on the full-size pixels (``ridge`` times the mean
    squared feature as penalty), solved in the dual (``num_augments x num_augments``) on the device, which is
    deterministic and needs no learning rate or epochs; the augmented copies are scored in chunks under
    ``no_grad``. Symmetric in the pair (the views' roles are exchanged, the generator restarts for each view).

    Paper: Sammani et al., arXiv:2206.09753 (pixel invariance).

    Args:
        augment: ``augment(images, generator) -> images`` of the same shape, without moving pixels.
        num_augments: augmented copies per view.
        ridge: strength of the ridge penalty, relative to the mean squared (centred) pixel value.
        seed: seed of the augmentations' generator.
        batch_size: augmented images per forward, or ``"auto"``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> erase = lambda x, g: x * (torch.rand(x.shape, generator=g, device=x.device) > 0.3)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
        >>> x1, x2 = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> maps1, maps2 = PixelInvariance(erase, num_augments=32)(model, x1, x2)
        >>> maps1.shape, bool(maps2.max() <= 1)
        (torch.Size([2, 1, 4, 4]), True)
    """

    needs_grad = False

    def __init__(
        self,
        augment: Callable[[Tensor, torch.Generator], Tensor],
        num_augments: int = 256,
        ridge: float = 1.0,
        seed: int = 0,
        batch_size: ChunkSize = "auto",
    ) -> None:
        if not callable(augment):
            raise TypeError(
                f"`augment` must be a callable (images, generator) -> images, got {type(augment).__name__}."
            )
        check_positive_int(num_augments, "num_augments", minimum=2)
        check_in_range(ridge, "ridge", 0.0, float("inf"), low_inclusive=False, high_inclusive=False)
        check_positive_int(seed, "seed", minimum=0)
        check_batch_size(batch_size)
        self.augment = augment
        self.num_augments = num_augments
        self.ridge = float(ridge)
        self.seed = seed
        self.batch_size = batch_size

    def _augmented(self, view: Tensor) -> Tensor:
        """``(num_augments, B, C, H, W)`` copies of ``view`` from a generator seeded with ``seed``."""
        generator = torch.Generator(device=view.device).manual_seed(self.seed)
        copies = []
        with preserved_global_rng():
            for _ in range(self.num_augments):
                copy = self.augment(view.clone(), generator)
                if not isinstance(copy, Tensor) or copy.shape != view.shape:
                    got = tuple(copy.shape) if isinstance(copy, Tensor) else type(copy).__name__
                    raise ValueError(
                        f"{self.name}: `augment` must return images of the input's shape {tuple(view.shape)} "
                        f"(without moving pixels), got {got}."
                    )
                copies.append(copy.to(view.dtype))
        return torch.stack(copies)

    def _map(self, model: nn.Module, view: Tensor, anchor: Tensor) -> Tensor:
        batch = view.shape[0]
        augmented = self._augmented(view)  # (N, B, C, H, W)

        def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
            embeddings = embed(model, chunk.flatten(0, 1)).view(stop - start, batch, -1)
            return F.cosine_similarity(embeddings, anchor[None], dim=-1).float()

        scores = score_in_chunks(
            forward,
            lambda start, stop: augmented[start:stop],
            total=self.num_augments,
            batch_size=_items_per_chunk(self.batch_size, batch),
            model=model,
            images_per_item=batch,
            like=view,
        ).T  # (B, N)
        features = augmented.transpose(0, 1).flatten(2).float()  # (B, N, C * H * W)
        features = features - features.mean(dim=1, keepdim=True)
        targets = scores - scores.mean(dim=1, keepdim=True)
        gram = features @ features.transpose(1, 2)  # (B, N, N): the dual of the ridge problem
        penalty = self.ridge * features.square().mean(dim=(1, 2)).clamp_min(1e-12) * features.shape[-1]
        eye = torch.eye(self.num_augments, device=gram.device, dtype=gram.dtype)
        dual = torch.linalg.solve(gram + penalty[:, None, None] * eye, targets[..., None])
        weights = (features.transpose(1, 2) @ dual)[..., 0].view(batch, *view.shape[1:])
        return _min_max(weights.amax(dim=1, keepdim=True))

    def attribute_pair(self, model: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Ridge surrogates of the similarity on each view's augmented pixels, the other view fixed."""
        e1, e2 = embed(model, torch.cat([x1, x2])).split(x1.shape[0])
        return self._map(model, x1, e2), self._map(model, x2, e1)

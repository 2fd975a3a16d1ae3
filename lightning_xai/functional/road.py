"""ROAD: RemOve And Debias with noisy linear imputation (Rong et al., ICML 2022, arXiv:2202.00449).

Removed pixels are not set to a constant (whose shape leaks the class) but imputed: each removed pixel equals
the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct ones, 1/12 for the diagonals; neighbours
outside the image are dropped from the row's weight sum), solved jointly for all removed pixels, one
right-hand side per channel, then ``noise * N(0, 1)`` is added to them (``NoisyLinearImputer(noise=0.01)`` of
``tleemann/road_evaluation``). The reference solves the sparse system with ``scipy.sparse.linalg.spsolve`` on the
CPU, one image at a time; here the same system is solved on the device, batched over images, percentages and
channels, by conjugate gradients preconditioned with a multigrid V-cycle (about 24 iterations at 64 and 128 px
where the original diagonal preconditioner needed 208 and 384; ``multigrid=False`` keeps that original solver).
The system matrix (weighted degree minus the weights between removed pixels) is symmetric positive definite
whenever at least one pixel is kept, so CG converges to the direct solution; it stops when every residual is
below ``tolerance`` times its right-hand side.

Orders and sign convention (this implementation, following ``pytorch-grad-cam``'s ``ROADCombined``):

* MoRF at percentage ``p`` removes the ``floor(p * H * W)`` most relevant pixels; a lower score is better.
* LeRF at percentage ``p`` removes the ``floor(p * H * W)`` least relevant pixels (the road_evaluation repo's
  LeRF percentage is the fraction *kept*; here both orders count removed pixels); a higher score is better.
* The combined per-sample score is ``mean_p (LeRF_p - MoRF_p) / 2``: higher is better, about 0 for a random map.

Ranking: attribution summed over channels, ties broken by a stable sort (lower pixel index first) instead of the
reference's random ``1e-4 N(0, 1)`` tie-breaker, so a constant map gives a well-defined result. The noise is
one ``(C, H, W)`` image per call, from a local generator seeded with ``seed``, shared by every sample and
perturbation, so a sample's score depends only on the sample, its map and the seed (not on the chunk size, the
rest of the batch or how batches are split across processes). It is added in the inputs' space: the reference
imputes in ``[0, 1]`` pixel space, so for normalised inputs pass ``noise = 0.01 / std``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_xai._checks import check_in_range
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import ScoreKind
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import check_metric_arguments, check_score, chunk_scores, local_generator
from lightning_xai.functional.perturbation_curves import pixel_ranks

#: The reference's percentages of removed pixels.
ROAD_PERCENTAGES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)

#: Conjugate-gradient iterations between convergence checks (each a host sync): every 2 on the CPU, where a check
#: is free and an iteration is not, every 8 on an accelerator, where a sync stalls the stream.
_CHECK_EVERY = {"cpu": 2}
_CHECK_EVERY_DEFAULT = 8
#: Imputed images solved together (bytes of one image array), independently of the forward chunk: the solve is a
#: few dozen passes over a dozen such arrays per iteration, so arrays of 1 - 3 MiB keep them in the last-level cache
#: while the per-operation overhead stays small (56 imputations in blocks of 14 - 28 were about 10 % faster than one
#: block at 64 px and 17 % at 128 px; at 32 px one block of 56, the size this gives, was the fastest).
_SOLVE_BYTES = 2 * 2**20
_COARSEST = 4
_OMEGA = 0.8
_COARSE_SWEEPS = 16
#: Coarse grids of at most this many pixels are solved through the dense matrix of their part of the V-cycle.
_DENSE_PIXELS = 64


def default_tolerance(noise: float) -> float:
    """The conjugate-gradient tolerance ROAD uses by default: ``max(noise / 10, 1e-6)``, 1e-3 for ``noise=0.01``.

    The imputed pixels get ``noise * N(0, 1)`` added afterwards, so solving much closer than the noise buys nothing.
    Measured on smooth (bilinear 4x4) maps, random images, the paper's percentages, MoRF and LeRF (3 seeds of 4
    images), the multigrid solve at 1e-3 moves imputed pixels by at most 1.5e-3 / 1.9e-3 / 2.2e-3 at 32 / 64 /
    128 px from a 1e-7 solve: at most 22 % of the noise's standard deviation (0.01), for 15 - 25 % less CPU than
    1e-4 (the default before, which moved them by at most 3e-4). Without noise the solve goes to 1e-6.

    Example:
        >>> default_tolerance(0.01), default_tolerance(0.0)
        (0.001, 1e-06)
    """
    return max(noise / 10, 1e-6)


def check_percentages(percentages: Sequence[float], name: str = "percentages") -> None:
    """Raise unless ``percentages`` is a non-empty sequence of fractions in the open interval ``(0, 1)``."""
    if isinstance(percentages, (str, Tensor)) or not isinstance(percentages, Sequence) or len(percentages) == 0:
        raise TypeError(f"`{name}` must be a non-empty sequence of fractions in (0, 1), got {percentages!r}.")
    for index, value in enumerate(percentages):
        check_in_range(value, f"{name}[{index}]", 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def _buffer(
    scratch: dict[Any, Tensor] | None,
    tag: Any,
    like: Tensor,
    shape: Sequence[int] | None = None,
    *,
    zeros: bool = False,
) -> Tensor | None:
    """A reused tensor of ``shape`` (default: ``like``'s) and ``like``'s dtype, kept in ``scratch`` under ``tag``.

    None without a scratch. The buffer is the first ``shape[0]`` rows of one kept for the largest count asked, so
    the solve's shrinking batches (images leave as they converge) and its successive blocks reuse the same memory.
    Arrays allocated afresh on every iteration went back to the operating system when freed (glibc's ``malloc``
    trims and maps large blocks) and were page-faulted in again: 2,000 - 9,500 minor faults per 56 imputations at
    64 px, 0 - 1,200 with the buffers kept (when they are first touched). ``zeros``: a newly kept buffer starts at
    zero (for callers that write only its interior).
    """
    if scratch is None:
        return None
    size = tuple(like.shape if shape is None else shape)
    key = (tag, size[1:], like.dtype, like.device)
    kept = scratch.get(key)
    if kept is None or kept.shape[0] < size[0]:
        make = torch.zeros if zeros else torch.empty
        kept = scratch[key] = make(size, dtype=like.dtype, device=like.device)
    return kept[: size[0]]


def _padded(scratch: dict[Any, Tensor], tag: Any, like: Tensor) -> Tensor:
    """A reused zero-bordered ``(N, ..., H + 2, W + 2)`` buffer for images shaped like ``like``.

    Only its interior ``[..., 1:-1, 1:-1]`` is ever written, so the border stays zero and :func:`_box_sum` reads
    it as it is.
    """
    *lead, height, width = like.shape
    padded = _buffer(scratch, tag, like, (*lead, height + 2, width + 2), zeros=True)
    assert padded is not None
    return padded


def _interior(padded: Tensor) -> Tensor:
    """The image inside a zero-bordered buffer of :func:`_padded` (a view)."""
    return padded[..., 1:-1, 1:-1]


def _box_sum(values: Tensor, scratch: dict[Any, Tensor] | None = None, padded: Tensor | None = None) -> Tensor:
    """The ``[1, 2, 1] x [1, 2, 1]`` weighted sum over each pixel's 3 x 3 neighbourhood (centre included, zero outside).

    ``(N, ..., H, W)`` in, ``(N, ..., H, W)`` out. The imputation's 8-neighbour weighted sum (1/6 direct, 1/12
    diagonal) is ``(box - 4 * centre) / 12``; the solver works with 12 times its system, so that an operator
    application is ``box(ones) * v - box(v)`` and costs five passes over the images instead of seven. The sum is done
    with shifted adds (4 - 5x faster on the CPU than a one-channel 3x3 ``conv2d``), fused (``add(a, b, alpha=2)``,
    then in place). With ``scratch`` (see :func:`_buffer`) the zero-bordered copy, the row sums and the result live
    in reused buffers: the result is then only valid until the next call of that shape, for callers that consume it
    at once. ``padded``: a zero-bordered ``(N, ..., H + 2, W + 2)`` array whose interior ``values`` is (see
    :func:`_padded`), summed in place of the copy, a pass that cost about 40 % of the sum.
    """
    *lead, height, width = values.shape
    if scratch is None:
        bordered = F.pad(values, (1, 1, 1, 1))
        sums = torch.add(bordered[..., :, :-2], bordered[..., :, 1:-1], alpha=2).add_(bordered[..., :, 2:])
        return torch.add(sums[..., :-2, :], sums[..., 1:-1, :], alpha=2).add_(sums[..., 2:, :])
    if padded is None:
        padded = _padded(scratch, "box padded", values)
        _interior(padded).copy_(values)
    rows = _buffer(scratch, "box rows", values, (*lead, height + 2, width))
    box = _buffer(scratch, "box", values)
    assert rows is not None and box is not None
    torch.add(padded[..., :, :-2], padded[..., :, 1:-1], alpha=2, out=rows).add_(padded[..., :, 2:])
    return torch.add(rows[..., :-2, :], rows[..., 1:-1, :], alpha=2, out=box).add_(rows[..., 2:, :])


def _restrict(values: Tensor, scratch: dict[Any, Tensor] | None = None) -> Tensor:
    """The sum of every 2 x 2 block of ``(..., H, W)`` (``ceil`` sides, a missing row or column counting zero).

    Strided adds: about 10 times faster on the CPU than ``avg_pool2d(..., divisor_override=1)``, the same sums.
    With ``scratch`` the row sums and the result live in reused buffers (the result valid until the next call).
    """
    *lead, height, width = values.shape
    if height % 2 or width % 2:
        values = F.pad(values, (0, width % 2, 0, height % 2))
    half = (-(-height // 2), -(-width // 2))
    rows = torch.add(
        values[..., 0::2, :],
        values[..., 1::2, :],
        out=_buffer(scratch, "restrict rows", values, (*lead, half[0], width + width % 2)),
    )
    return torch.add(rows[..., 0::2], rows[..., 1::2], out=_buffer(scratch, "restricted", values, (*lead, *half)))


def _prolong_into(correction: Tensor, coarse: Tensor, mask: Tensor) -> None:
    """``correction += mask * (coarse repeated over 2 x 2 blocks)``, in place, without building the repeated image."""
    for row in (0, 1):
        for column in (0, 1):
            target = correction[..., row::2, column::2]
            height, width = target.shape[-2:]
            target.addcmul_(coarse[..., :height, :width], mask[..., row::2, column::2])


class _Level:
    """One grid of the solve, for 12 times the imputation system: ``A v = (centre * v - box(v)) * mask``.

    ``centre`` is ``box(ones)`` (12 times the weighted degree, plus 4), the diagonal is ``centre - 4``, and
    ``relaxation`` is ``omega / diagonal`` (damped Jacobi). The operator is applied as ``masked_centre * v -
    mask * box(v)`` (two fused passes after the box sum, where the plain expression takes three).
    """

    def __init__(self, mask: Tensor, scratch: dict[Any, Tensor]) -> None:
        ones = torch.ones(1, 1, *mask.shape[-2:], device=mask.device, dtype=mask.dtype)
        self.mask = mask
        self.centre = _box_sum(ones)
        self.masked_centre = mask * self.centre
        self.relaxation = self.centre.sub(4).reciprocal_().mul_(_OMEGA)
        self.scratch = scratch

    def apply(self, values: Tensor, tag: str = "apply", padded: Tensor | None = None) -> Tensor:
        """The operator on ``values`` that are zero outside the unknowns; the result lives in a reused buffer.

        ``padded``: the zero-bordered buffer whose interior ``values`` is, if any (see :func:`_box_sum`).
        """
        product = torch.mul(self.masked_centre, values, out=_buffer(self.scratch, tag, values))
        return product.addcmul_(self.mask, _box_sum(values, self.scratch, padded), value=-1)

    def remainder(self, residual: Tensor, values: Tensor, padded: Tensor | None = None) -> Tensor:
        """``residual - A values``, in a reused buffer (valid until the next call at this level)."""
        out = torch.addcmul(residual, self.masked_centre, values, value=-1, out=_buffer(self.scratch, "rest", values))
        return out.addcmul_(self.mask, _box_sum(values, self.scratch, padded))

    def smooth(self, correction: Tensor, residual: Tensor, padded: Tensor | None = None) -> Tensor:
        """One damped Jacobi sweep, in place: ``correction + relaxation * (residual - A correction)``."""
        return correction.addcmul_(self.remainder(residual, correction, padded), self.relaxation)

    def select(self, index: Tensor) -> None:
        """Keep only the images ``index`` (those still iterating)."""
        self.mask = self.mask[index]
        self.masked_centre = self.masked_centre[index]


class _Multigrid:
    """A symmetric V-cycle for the imputation operator, used as the preconditioner of CG (MGCG).

    Level 0 is the image; each coarser level halves the sides (``ceil``), a coarse pixel is unknown when any
    pixel of its 2x2 block is, and carries the same 8-neighbour stencil rediscretised on its grid. Prolongation
    is piecewise constant (masked to the unknowns), restriction its transpose (the 2x2 sum); damped Jacobi
    (``omega = 0.8``) smooths once before and once after the coarse correction, so the cycle is a symmetric
    positive definite operator and CG stays CG. The iteration count then hardly grows with the image size.
    """

    def __init__(self, finest: _Level) -> None:
        mask, scratch = finest.mask, finest.scratch  # the coarse levels share the finest level's buffers
        self.levels = [finest]
        while min(self.levels[-1].mask.shape[-2:]) >= 2 * _COARSEST:  # a coarse pixel is unknown if any of its 4 is
            self.levels.append(_Level(_restrict(self.levels[-1].mask).clamp_(max=1), scratch))
        # The cycle from a coarse grid of at most _DENSE_PIXELS pixels down is a small linear map per image: its
        # matrix, the cycle of every unit vector (one per channel), is built once, coarsest grid first (each from
        # the one below), and applied as one batched product instead of the few hundred tiny operations of those
        # grids' sweeps.
        self.dense: Tensor | None = None
        self.dense_depth = len(self.levels)
        for depth in range(len(self.levels) - 1, 0, -1):
            level = self.levels[depth]
            height, width = level.mask.shape[-2:]
            if height * width > _DENSE_PIXELS:
                break
            basis = torch.eye(height * width, dtype=mask.dtype, device=mask.device).view(1, -1, height, width)
            basis = basis * level.mask
            if depth == len(self.levels) - 1:
                self.dense = self._sweeps_matrix(level, basis)
            else:
                self.dense = self.cycle(basis, depth).flatten(2).clone()  # (N, pixels, pixels), symmetric
            self.dense_depth = depth

    @staticmethod
    def _sweeps_matrix(level: _Level, basis: Tensor) -> Tensor:
        """The matrix of the coarsest grid's ``_COARSE_SWEEPS`` damped Jacobi sweeps from zero, ``(N, n, n)``.

        The sweeps map ``r`` to ``sum_{k < s} J^k D r`` with ``D = diag(relaxation)`` and ``J = I - D A``; the
        sum is built by doubling (``S <- S + P S``, ``P <- P P``), so ``_COARSE_SWEEPS`` is a power of two.
        """
        operator = level.apply(basis).flatten(2)  # A, masked: rows and columns of kept pixels are zero
        relaxation = level.relaxation.flatten()
        power = (
            torch.eye(operator.shape[-1], dtype=operator.dtype, device=operator.device) - relaxation[:, None] * operator
        )
        total = torch.diag_embed(relaxation).expand_as(operator)
        for _ in range(_COARSE_SWEEPS.bit_length() - 1):
            total = total + power @ total
            power = power @ power
        return total.mT

    def select(self, index: Tensor) -> None:
        """Keep only the images ``index`` (those still iterating) at every level."""
        for level in self.levels:
            level.select(index)
        if self.dense is not None:
            self.dense = self.dense[index]

    def cycle(self, residual: Tensor, depth: int = 0, out: Tensor | None = None) -> Tensor:
        """The V-cycle from grid ``depth`` down, applied to ``residual``.

        The correction is written into the interior of ``out``, a zero-bordered buffer of that grid (see
        :func:`_padded`; default: one kept for the grid), whose box sums then need no copy; the dense grids
        return a plain buffer.
        """
        scratch = self.levels[0].scratch
        if depth == self.dense_depth and self.dense is not None:  # symmetric: rows or columns alike
            flat = residual.flatten(2)
            product = torch.matmul(flat, self.dense, out=_buffer(scratch, ("correction", depth), flat))
            return product.view(residual.shape)
        level = self.levels[depth]
        padded = _padded(scratch, ("correction", depth), residual) if out is None else out
        correction = torch.mul(residual, level.relaxation, out=_interior(padded))  # the first sweep, from 0
        if depth == len(self.levels) - 1:  # coarsest: a few more Jacobi sweeps
            for _ in range(_COARSE_SWEEPS - 1):
                level.smooth(correction, residual, padded)
            return correction
        remainder = level.remainder(residual, correction, padded)
        _prolong_into(correction, self.cycle(_restrict(remainder, scratch), depth + 1), level.mask)
        return level.smooth(correction, residual, padded)


def linear_imputation(
    images: Tensor,
    removed: Tensor,
    *,
    tolerance: float = 1e-6,
    max_iterations: int | None = None,
    multigrid: bool = True,
) -> Tensor:
    """Impute the ``removed`` pixels of ``images`` by the 8-neighbour weighted-mean system (no noise).

    Args:
        images: ``(N, C, H, W)``.
        removed: ``(N, 1, H, W)`` bool, True where a pixel is imputed (all channels); at least one pixel of each
            image must be kept.
        tolerance: stop when ``||r|| <= tolerance * ||b||`` for every image and channel.
        max_iterations: CG iteration cap; None means ``4 * (H + W) + 100``. A warning says when it is reached.
        multigrid: precondition CG by a multigrid V-cycle (:class:`_Multigrid`) instead of the diagonal;
            False is the original Jacobi-preconditioned solver, kept as the tests' reference. Both stop at the
            same relative residual and agree to the tolerance.

    Returns:
        ``(N, C, H, W)``: kept pixels unchanged, removed pixels solved, in the images' dtype.

    Example:
        >>> image = torch.tensor([[[[1.0, 2.0, 3.0]]]])
        >>> removed = torch.tensor([[[[False, True, False]]]])
        >>> linear_imputation(image, removed).flatten().tolist()
        [1.0, 2.0, 3.0]
    """
    if not bool(removed.flatten(1).logical_not().any(1).all()):
        raise ValueError("Linear imputation needs at least one kept pixel per image; every pixel was removed.")
    return _solve(images, removed, tolerance, max_iterations, multigrid, {})


def _solve(
    images: Tensor,
    removed: Tensor,
    tolerance: float,
    max_iterations: int | None,
    multigrid: bool,
    scratch: dict[Any, Tensor],
) -> Tensor:
    """:func:`linear_imputation`, with its working images in ``scratch`` (see :func:`_buffer`).

    A caller solving several blocks of images in turn keeps ``scratch`` from one block to the next.
    """
    height, width = images.shape[-2:]
    work = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    unknown = removed.to(work.dtype)
    # 12 times the system (see _box_sum): A x = b with A v = (box(1) v - box(v)) on the unknowns and b the box sum
    # of the kept pixels there (zero on the unknowns, so the centre drops out); the same solution, fewer passes.
    grid = _Level(unknown, scratch)  # the image's grid: CG's operator, and the finest level of the cycle
    cycle = _Multigrid(grid) if multigrid and min(height, width) >= 2 * _COARSEST else None

    def dot(left: Tensor, right: Tensor) -> Tensor:
        return torch.mul(left, right, out=_buffer(scratch, "dot", left)).sum(dim=(2, 3), keepdim=True)

    def precondition(values: Tensor, slot: int) -> Tensor:
        """The preconditioned ``values`` in the interior of the zero-bordered buffer ``slot`` (returned whole)."""
        padded = _padded(scratch, ("direction", slot), values)
        if cycle is None:
            torch.mul(values, grid.relaxation, out=_interior(padded)).div_(_OMEGA)
        else:
            cycle.cycle(values, out=padded)
        return padded

    rhs = _box_sum(work * (1 - unknown)).mul_(unknown)
    threshold = tolerance * torch.linalg.vector_norm(rhs, dim=(2, 3), keepdim=True)
    result = torch.zeros_like(work)  # the solutions, written as images converge
    solution = torch.zeros_like(work)
    residual = rhs
    # the search direction lives in one of two zero-bordered buffers (its box sums need no copy), the next
    # preconditioned residual is written into the other
    slot = 1
    padded = precondition(residual, slot)
    direction = _interior(padded)
    rz = dot(residual, direction)
    limit = 4 * (height + width) + 100 if max_iterations is None else max_iterations
    check_every = _CHECK_EVERY.get(work.device.type, _CHECK_EVERY_DEFAULT)
    converged = False
    active = torch.ones_like(threshold, dtype=torch.bool)
    live = torch.arange(work.shape[0], device=work.device)  # images still iterating, in the order of the rows kept
    for iteration in range(limit + 1):
        if iteration % check_every == 0 or iteration == limit:
            # each (image, channel) stops at its own check, so its result does not depend on the chunk it is in
            active = torch.linalg.vector_norm(residual, dim=(2, 3), keepdim=True) > threshold
            converged = not bool(active.any())
            if converged or iteration == limit:
                break
            going = active.flatten(1).any(dim=1)
            if not bool(going.all()):  # images whose every channel converged leave the iteration
                result[live[~going]] = solution[~going]
                live, keep = live[going], going.nonzero().flatten()
                solution, residual, moved = solution[keep], residual[keep], direction[keep]
                padded = _padded(scratch, ("direction", slot), moved)  # the first rows of the same buffer
                direction = _interior(padded).copy_(moved)
                rz, threshold, active = rz[keep], threshold[keep], active[keep]
                (grid if cycle is None else cycle).select(keep)  # the cycle selects its finest level, the grid
        product = grid.apply(direction, "operator", padded)
        curvature = dot(direction, product)
        step = torch.where(curvature > 0, rz / curvature.clamp_min(torch.finfo(work.dtype).tiny), 0.0)
        step = step * active
        solution.addcmul_(step, direction)
        residual.addcmul_(step, product, value=-1)
        slot = 1 - slot
        padded = precondition(residual, slot)
        preconditioned = _interior(padded)
        rz_next = dot(residual, preconditioned)
        momentum = torch.where(rz > 0, rz_next / rz.clamp_min(torch.finfo(work.dtype).tiny), 0.0)
        direction = preconditioned.addcmul_(direction, momentum)
        rz = rz_next
    result[live] = solution
    if not converged:
        rank_zero_warn(
            f"ROAD's linear imputation stopped after {limit} conjugate-gradient iterations before reaching "
            f"`tolerance`={tolerance}; raise `max_iterations` for a closer solve."
        )
    return torch.where(removed, result, work, out=result).to(images.dtype)


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    seed: int = 0,
    tolerance: float = 1e-6,
    max_iterations: int | None = None,
) -> Tensor:
    """:func:`linear_imputation` plus ``noise * N(0, 1)`` on the removed pixels (local generator, ``seed``).

    Example:
        >>> image = torch.zeros(1, 1, 3, 3)
        >>> removed = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
        >>> removed[..., 1, 1] = True
        >>> bool(noisy_linear_imputation(image, removed, noise=0.01)[..., 1, 1].abs() > 0)
        True
    """
    imputed = linear_imputation(images, removed, tolerance=tolerance, max_iterations=max_iterations)
    if noise == 0:
        return imputed
    draws = torch.randn(
        images.shape, generator=local_generator(seed, images.device), device=images.device, dtype=images.dtype
    )
    return imputed + noise * draws * removed


def road_curves(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType,
    *,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    score: ScoreKind = "probability",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    tolerance: float | None = None,
    max_iterations: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Target scores after MoRF and LeRF imputation at every percentage, each ``(B, P)``.

    Args:
        model: the classifier (run in eval mode, without autograd).
        inputs: images ``(B, C, H, W)``.
        attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``; higher means more important.
        target: class indices ``(B,)`` or a row-wise callable ``(outputs) -> scores``.
        percentages: fractions of pixels removed, each in ``(0, 1)``.
        noise: standard deviation of the noise added to imputed pixels, in the inputs' units.
        score: ``"probability"`` (default, as the reference reports), ``"logit"`` or ``"log_probability"``.
        batch_size: imputed images per chunk (solved together, then scored in one forward pass).
        seed: seed of the noise.
        tolerance: relative residual at which conjugate gradients stop; None (default) chooses it from the
            noise that is added afterwards, :func:`default_tolerance` (``1e-3`` for ``noise=0.01``, which moves
            imputed pixels by at most about 2e-3 from a tight solve, a fifth of the noise's standard deviation).
        max_iterations: conjugate-gradient iteration cap (None: ``4 * (H + W) + 100``).

    Returns:
        ``(morf, lerf)`` float32 scores.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> morf, lerf = road_curves(model, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
        >>> morf.shape, lerf.shape
        (torch.Size([2, 7]), torch.Size([2, 7]))
    """
    check_metric_arguments(inputs, attributions, target, method="road_curves")
    check_percentages(percentages)
    check_in_range(noise, "noise", 0.0, float("inf"))
    check_batch_size(batch_size)
    check_score(score)
    if tolerance is None:
        tolerance = default_tolerance(noise)
    batch, channels, height, width = inputs.shape
    pixels = height * width
    with explanation_mode(model, grad=False):
        ranks = pixel_ranks(attributions.to(inputs.device))
        counts = torch.tensor([int(pixels * p) for p in percentages], device=inputs.device)
        points = counts.shape[0]
        draws = torch.randn(  # one noise image shared by every sample and perturbation
            (1, channels, height, width),
            generator=local_generator(seed, inputs.device),
            device=inputs.device,
            dtype=inputs.dtype,
        )

        total = batch * 2 * points
        # The solve runs over blocks of about _SOLVE_BYTES of images (at least one chunk, of even sizes), not per
        # forward chunk: its cost is mostly passes over the images, and each image's solve is its own anyway.
        solve_items = max(1, _SOLVE_BYTES // (channels * pixels * inputs.element_size()))
        solve_items = -(-total // -(-total // solve_items))  # the same number of blocks, split evenly
        block: dict[str, Any] = {"first": 0, "stop": 0, "images": None}
        scratch: dict[Any, Tensor] = {}  # the solve's working images, reused by every block

        def prepare(first: int, stop: int) -> None:
            if not (block["first"] <= first and stop <= block["stop"]):
                # chunks come in order: a chunk that straddles the block's end keeps the part already imputed
                start = block["stop"] if block["first"] <= first < block["stop"] else first
                end = min(total, max(stop, start + solve_items))
                images = impute(start, end)
                if start > first:
                    images = torch.cat([block["images"][first - block["first"] :], images])
                block["first"], block["stop"], block["images"] = first, end, images

        def make_inputs(first: int, stop: int) -> Tensor:  # score_in_chunks has called prepare for the chunk
            return block["images"][first - block["first"] : stop - block["first"]]

        def impute(first: int, stop: int) -> Tensor:
            items = torch.arange(first, stop, device=inputs.device)
            rows, lerf, columns = items // (2 * points), (items // points) % 2 == 1, items % points
            threshold = torch.where(lerf, pixels - counts[columns], counts[columns])[:, None]
            row_ranks = ranks[rows]
            removed = torch.where(lerf[:, None], row_ranks >= threshold, row_ranks < threshold)
            removed = removed.view(-1, 1, height, width)
            imputed = _solve(inputs[rows], removed, tolerance, max_iterations, True, scratch)
            return imputed.addcmul_(removed, draws, value=noise)

        def forward(chunk: Tensor, first: int, stop: int) -> Tensor:
            rows = torch.arange(first, stop, device=inputs.device) // (2 * points)
            return chunk_scores(model, chunk, target, rows, score, first=first == 0)

        scores = score_in_chunks(
            forward, make_inputs, total, batch_size, model=model, like=inputs, purpose="road", prepare=prepare
        ).view(batch, 2, points)
    return scores[:, 0], scores[:, 1]


def road_combined(morf: Tensor, lerf: Tensor) -> Tensor:
    """Per-sample combined ROAD score ``mean_p (LeRF_p - MoRF_p) / 2``, ``(B,)``; higher is better.

    Example:
        >>> road_combined(torch.tensor([[0.2, 0.0]]), torch.tensor([[0.8, 0.6]])).tolist()
        [0.30000001192092896]
    """
    return (lerf - morf).mean(dim=-1) / 2

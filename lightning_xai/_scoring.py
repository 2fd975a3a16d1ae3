"""Chunked scoring of perturbed inputs: the hot loop shared by perturbation metrics and black-box explainers.

The chunk (how many perturbed images one forward pass holds) is either an integer or ``"auto"``, the default of
every metric and black-box explainer. ``"auto"`` picks the chunk from a short timed probe made of the real work:
the first chunks of the first calls for a (model, image shape, device, dtype, purpose) are scored at each
candidate size in turn (CPU: 4, 8, 16, 32, 64 images; CUDA: 16 to 256), each candidate measured
:data:`PROBE_ROUNDS` times (CPU: process CPU time; CUDA: synchronised wall time), and the size with the lowest
time per image is kept for that key from then on (see :func:`tuned_chunk`). Only full chunks are measured, each
from the building of its perturbed images to its scores (a larger chunk also builds into more memory), but work
done per block of chunks (``prepare``: ROAD's imputation) outside the clock. A candidate larger than every call of
the key becomes that call's size (the whole call in one chunk), so calls smaller than the largest candidate still
settle. Nothing is scored twice and nothing is thrown away, so the probe costs only the difference between the
candidates; every perturbed input is scored exactly once whatever the chunk, so the results are the same as with
any fixed chunk (up to the float rounding of a batched forward, far below 1e-6).

Why not a fixed 64: on a CPU, once the activations of a chunk fall out of cache the time per image grows
1.4 - 2x (measured at 64 - 128 px), and which size fits depends on the model, the image size and the machine.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Hashable
from typing import Literal

import torch
from torch import Tensor, nn

#: A chunk size: a positive number of perturbed images per forward, or ``"auto"``.
ChunkSize = int | Literal["auto"]

#: Candidate chunk sizes (perturbed images per forward) probed by ``"auto"``, per device type.
CANDIDATES: dict[str, tuple[int, ...]] = {"cpu": (4, 8, 16, 32, 64), "cuda": (16, 32, 64, 128, 256)}
#: Times every candidate is measured before one is chosen (the fastest of them is compared).
PROBE_ROUNDS = 3

_Key = tuple[Hashable, ...]
_CHOSEN: dict[_Key, int] = {}
_TRIALS: dict[_Key, dict[int, list[float]]] = {}
_LARGEST: dict[_Key, int] = {}  # the most perturbed images one call of a key has scored, while it probes
_MODEL_IDS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
_NEXT_MODEL_ID = [0]


def check_batch_size(value: object, name: str = "batch_size") -> None:
    """Raise unless ``value`` is ``"auto"`` or a positive integer (not a bool)."""
    if value == "auto" and isinstance(value, str):
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= 1 or 'auto', got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"`{name}` must be an int >= 1 or 'auto', got {value}.")


def _model_id(model: nn.Module | None) -> int | None:
    """A stable id per live model (a weak map, so a freed model's number is never reused for another)."""
    if model is None:
        return None
    if model not in _MODEL_IDS:
        _MODEL_IDS[model] = _NEXT_MODEL_ID[0]
        _NEXT_MODEL_ID[0] += 1
    return _MODEL_IDS[model]


def tuning_key(model: nn.Module | None, sample: Tensor, purpose: Hashable = "") -> _Key:
    """The key under which ``"auto"`` remembers its chunk: model, one input's shape, device, dtype, purpose."""
    return (_model_id(model), tuple(sample.shape[1:]), str(sample.device), str(sample.dtype), purpose)


def tuned_chunk(key: _Key) -> int | None:
    """The chunk ``"auto"`` chose for ``key``, or None while it is still probing."""
    return _CHOSEN.get(key)


def clear_tuning() -> None:
    """Forget every chunk chosen by ``"auto"`` (the next calls probe again)."""
    _CHOSEN.clear()
    _TRIALS.clear()
    _LARGEST.clear()


class _Probe:
    """The next chunk to try for one key, and the bookkeeping of the measured ones.

    A candidate is only measured on a full chunk, so a candidate larger than every call seen for the key (a ROAD
    call of 56 imputed images never fills a chunk of 64) is replaced by the size of the largest call: the whole
    call in one chunk. Otherwise the key would stay in its probing phase forever.
    """

    def __init__(self, key: _Key, device: torch.device, total: int) -> None:
        self.key = key
        self.device = device
        self.candidates = CANDIDATES["cuda" if device.type == "cuda" else "cpu"]
        self.trials = _TRIALS.setdefault(key, {})
        _LARGEST[key] = max(_LARGEST.get(key, 0), total)

    def _open(self) -> list[int]:
        """The candidates, each at most the largest call seen (at least one image)."""
        largest = max(1, _LARGEST.get(self.key, 1))
        return sorted({min(size, largest) for size in self.candidates})

    def next_size(self, remaining: int) -> int:
        chosen = _CHOSEN.get(self.key)
        if chosen is not None:
            return chosen
        # round-robin: the candidate with the fewest measurements, smallest first, among those that fit the rest
        sizes = self._open()
        fitting = [size for size in sizes if size <= remaining] or sizes[:1]
        return min(fitting, key=lambda size: (len(self.trials.get(size, [])), size))

    def record(self, size: int, seconds_per_image: float) -> None:
        if self.key in _CHOSEN:
            return
        self.trials.setdefault(size, []).append(seconds_per_image)
        sizes = self._open()
        if all(len(self.trials.get(s, [])) >= PROBE_ROUNDS for s in sizes):
            _CHOSEN[self.key] = min(sizes, key=lambda s: (min(self.trials[s]), s))
            _TRIALS.pop(self.key, None)
            _LARGEST.pop(self.key, None)

    def clock(self) -> float:
        """Wall time on CUDA (after a synchronisation); on the CPU this process' CPU time.

        Other jobs on a shared machine do not inflate CPU time the way they inflate wall time.
        """
        return time.perf_counter() if self.device.type == "cuda" else time.process_time()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def score_in_chunks(
    forward: Callable[[Tensor, int, int], Tensor],
    make_inputs: Callable[[int, int], Tensor],
    total: int,
    batch_size: ChunkSize,
    *,
    model: nn.Module | None = None,
    images_per_item: int = 1,
    purpose: Hashable = "",
    like: Tensor | None = None,
    prepare: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Build and score ``total`` perturbed inputs, ``batch_size`` at a time, under ``torch.no_grad()``.

    Only one chunk of perturbed inputs exists at any time, so peak memory is bounded by the chunk and not by
    ``total``.

    Args:
        forward: ``forward(chunk, start, stop)`` returning the scores of inputs ``start:stop``, shape
            ``(stop - start, ...)``.
        make_inputs: ``make_inputs(start, stop)`` building inputs ``start:stop`` on the device.
        total: how many inputs to score.
        batch_size: the chunk size in items, or ``"auto"`` (see the module docstring): then the chunk is chosen
            in perturbed images and remembered per ``(model, image shape, device, dtype, purpose)``.
        model: the model the chunks are forwarded through (part of the ``"auto"`` key).
        images_per_item: perturbed images one item holds (``make_inputs`` may return several per item).
        purpose: distinguishes callers whose per-image cost differs (an explainer re-run, an imputation).
        like: a tensor whose ``shape[1:]``, device and dtype are those of one perturbed image (usually the
            inputs); when None, the first perturbed image is built once more to read them.
        prepare: ``prepare(start, stop)``, called before ``make_inputs`` for every chunk and outside the chunk's
            timing: work done per block of items rather than per chunk (ROAD solves its imputations for a block
            of images at once, whichever chunk first asks for them), which must not count against that chunk.

    Returns:
        The concatenated scores, shape ``(total, ...)``.

    Example:
        >>> import torch
        >>> x = torch.arange(10.0)
        >>> score_in_chunks(lambda chunk, a, b: chunk * 2, lambda a, b: x[a:b], total=10, batch_size=3)
        tensor([ 0.,  2.,  4.,  6.,  8., 10., 12., 14., 16., 18.])
    """
    check_batch_size(batch_size)
    outputs = []
    with torch.no_grad():
        if batch_size != "auto":
            size = int(batch_size)
            for start in range(0, total, size):
                stop = min(start + size, total)
                if prepare is not None:
                    prepare(start, stop)
                outputs.append(forward(make_inputs(start, stop), start, stop))
            return torch.cat(outputs, dim=0)
        if like is None:  # describe the perturbed images by the first one (built again with its chunk)
            like = make_inputs(0, min(1, total)) if total else torch.zeros(1)
        per_item = max(1, images_per_item)
        probe = _Probe(tuning_key(model, like, purpose), like.device, total * per_item)
        start = 0
        while start < total:
            images = probe.next_size((total - start) * per_item)
            items = max(1, images // per_item)
            stop = min(start + items, total)
            measuring = tuned_chunk(probe.key) is None and stop - start == items
            if prepare is not None:
                prepare(start, stop)
            if measuring:
                probe.synchronize()
                began = probe.clock()
            outputs.append(forward(make_inputs(start, stop), start, stop))
            if measuring:
                probe.synchronize()
                probe.record(images, (probe.clock() - began) / (items * per_item))
            start = stop
    return torch.cat(outputs, dim=0)

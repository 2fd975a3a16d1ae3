"""What the benchmarks share: the model they time, a device synchronisation, paired rounds and their ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """A CIFAR-sized classifier: three conv blocks (32, 64, 128 channels), global pooling, a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired(functions: dict[str, Callable[[], Any]], device: torch.device, rounds: int) -> dict[str, list[float]]:
    """Seconds of every function in each of ``rounds`` interleaved rounds (order rotated), after one warm-up."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    for function in functions.values():
        function()
    names = list(functions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = clock()
            functions[name]()
            synchronize(device)
            times[name].append(clock() - start)
    return times


def ratio(times: dict[str, list[float]], top: str, bottom: str | list[str]) -> tuple[float, float]:
    """Min and median over rounds of ``top / bottom`` (``bottom`` a list: the fastest of them in each round)."""
    bottoms = [bottom] if isinstance(bottom, str) else bottom
    values = [t / min(times[b][i] for b in bottoms) for i, t in enumerate(times[top])]
    return min(values), statistics.median(values)

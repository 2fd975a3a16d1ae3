"""A small CNN trained for a few seconds on the 8x8 sklearn digits, shared by the probe tests."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn


def digits_cnn() -> nn.Sequential:
    """conv(16) - ReLU - maxpool - conv(32) - ReLU - linear: ReLU outputs at "1" (16x8x8) and "4" (32x4x4)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


@pytest.fixture(scope="session")
def digits() -> tuple[Tensor, Tensor]:
    """All 1797 digits as (N, 1, 8, 8) floats in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0, torch.tensor(data.target)


@pytest.fixture(scope="session")
def digits_model(digits: tuple[Tensor, Tensor]) -> nn.Module:
    """The CNN above after 8 epochs of Adam (about 99 % training accuracy), in eval mode, frozen weights."""
    inputs, labels = digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and robust to a loaded machine
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = digits_cnn()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            generator = torch.Generator().manual_seed(0)
            for _ in range(8):
                order = torch.randperm(len(inputs), generator=generator)
                for start in range(0, len(inputs), 64):
                    index = order[start : start + 64]
                    loss = nn.functional.cross_entropy(model(inputs[index]), labels[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95, accuracy
    return model

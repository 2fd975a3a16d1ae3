"""The shortcut unlearnt: decoy digits, a small CNN with and without Right for the Right Reasons."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from examples.digits import load_digits_tensors
from examples.shortcut_digits import accuracy, shortcut_test_sets, stamp_watermark, watermark_region
from lightning_xai.guidance import RightForTheRightReasons

WATERMARKED = 3


def _decoy_digits() -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
    images, labels = load_digits_tensors(16)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, held_out = order[:1400], order[1400:]
    train_images = stamp_watermark(images[train], labels[train] == WATERMARKED, float(images.max()))
    return train_images, labels[train], shortcut_test_sets(images[held_out], labels[held_out], WATERMARKED)


def _train(images: Tensor, labels: Tensor, rrr_weight: float, epochs: int = 10) -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rrr, forbidden = RightForTheRightReasons(weight=rrr_weight), watermark_region(16)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(64):
            x, y = images[batch], labels[batch]
            loss = F.cross_entropy(model(x), y) + rrr(model, x, forbidden)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def test_right_for_the_right_reasons_unlearns_the_watermark_shortcut() -> None:
    images, labels, test_sets = _decoy_digits()
    results = {}
    for name, weight in (("plain", 0.0), ("guided", 10.0)):
        model = _train(images, labels, weight)
        results[name] = {key: accuracy(model, *test_sets[key]) for key in ("clean", "swapped", "watermarked")}
    plain, guided = results["plain"], results["guided"]
    # without guidance the model reads the watermark: moving it onto the other digits collapses accuracy
    assert plain["swapped"] < plain["clean"] - 0.25, results
    # with it, the watermark no longer matters: swapped, clean and watermarked accuracies agree
    assert abs(guided["swapped"] - guided["clean"]) < 0.05, results
    assert guided["swapped"] > plain["swapped"] + 0.3 and guided["clean"] > 0.8, results

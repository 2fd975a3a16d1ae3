"""Deletion and insertion over voxels of clips: against a per-sample loop, scipy's per-frame blur, known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from lightning_xai.functional import deletion_auc, deletion_curve, insertion_curve, make_baseline
from tests.helpers.models import ClipRegionModel, TinyClipNet, clip_region_mask


def _batch(seed: int = 0, batch: int = 3) -> tuple[TinyClipNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = TinyClipNet().eval()
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(batch, 3, 4, 6, 6, generator=generator)
    maps = torch.rand(batch, 1, 4, 6, 6, generator=generator)
    maps[0, 0, 1, 2, 3] = maps[0, 0, 0, 0, 0]  # a tie: broken by the lower flat index (frame-major)
    return model, inputs, maps, torch.tensor([0, 2, 1])[:batch]


def _loop_curve(model, clip, saliency, label, start, replacement, steps) -> list[float]:
    """One clip's curve by hand: rank the voxels (stable, descending), swap the top k voxels, all channels together."""
    flat = saliency.sum(dim=0).flatten()
    order = sorted(range(flat.numel()), key=lambda index: (-float(flat[index]), index))
    curve = []
    for k in range(steps + 1):
        count = int(np.floor((2 * k * flat.numel() + steps) / (2 * steps)))  # nearest voxel count of k / steps
        current = start.clone().reshape(clip.shape[0], -1)
        chosen = torch.tensor(order[:count], dtype=torch.long)
        current[:, chosen] = replacement.reshape(clip.shape[0], -1)[:, chosen]
        with torch.no_grad():
            probabilities = torch.softmax(model(current.view(1, *clip.shape)), dim=1)
        curve.append(float(probabilities[0, label]))
    return curve


@pytest.mark.parametrize("baseline", [0.0, "mean", "blur"])
def test_deletion_and_insertion_curves_over_voxels_match_a_per_sample_loop(baseline) -> None:
    model, inputs, maps, target = _batch()
    steps = 7
    deletion = deletion_curve(model, inputs, maps, target, steps=steps, baseline=baseline, batch_size=5)
    insertion = insertion_curve(model, inputs, maps, target, steps=steps, baseline=baseline, batch_size=5)
    for index in range(inputs.shape[0]):
        clip = inputs[index]
        if baseline == "blur":  # each frame blurred spatially: scipy, sigma = a quarter of the shorter side
            blurred = np.stack(
                [[gaussian_filter(frame, sigma=1.5, mode="reflect") for frame in channel] for channel in clip.numpy()]
            )
            substrate = torch.from_numpy(blurred).float()
        elif baseline == "mean":  # the clip's per-channel mean over all its frames
            substrate = clip.mean(dim=(1, 2, 3), keepdim=True).expand_as(clip)
        else:
            substrate = torch.zeros_like(clip)
        label = int(target[index])
        expected_deletion = _loop_curve(model, clip, maps[index], label, clip, substrate, steps)
        expected_insertion = _loop_curve(model, clip, maps[index], label, substrate, clip, steps)
        np.testing.assert_allclose(deletion[index].numpy(), expected_deletion, atol=1e-5)
        np.testing.assert_allclose(insertion[index].numpy(), expected_insertion, atol=1e-5)


def test_the_blur_baseline_of_a_clip_is_scipys_blur_of_every_frame() -> None:
    clips = torch.rand(2, 3, 5, 12, 8, generator=torch.Generator().manual_seed(1))
    ours = make_baseline(clips, "blur")
    expected = np.stack(
        [
            [[gaussian_filter(f, sigma=2.0, mode="reflect") for f in channel] for channel in clip]
            for clip in clips.numpy()
        ]
    )
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5)


def test_a_map_of_the_region_deletes_the_evidence_faster_than_a_map_elsewhere() -> None:
    model, region = ClipRegionModel(), clip_region_mask()
    inputs = torch.rand(4, 3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    target = torch.zeros(4, dtype=torch.long)
    faithful = region.expand(4, 1, 4, 8, 8) + 0.01 * torch.rand(4, 1, 4, 8, 8)
    other_frame = torch.roll(faithful, shifts=1, dims=2)  # the right square, the wrong frame
    good = deletion_auc(model, inputs, faithful, target, steps=16)
    bad = deletion_auc(model, inputs, other_frame, target, steps=16)
    assert bool((good < 0.52).all()), good  # the score falls to its floor, 0.5, at the first steps
    assert bool((good < bad - 0.05).all()), (good, bad)

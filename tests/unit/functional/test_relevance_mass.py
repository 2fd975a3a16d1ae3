from __future__ import annotations

import pytest
import torch

from lightning_xai.functional.relevance_mass import pointing_game, relevance_mass


def test_by_hand() -> None:
    # map 0: |values| 1, 2, 3, 4 with the region on the first row -> (1 + 2) / 10, peak 4 outside
    # map 1: peak 5 inside the region, mass 5 / 6
    attributions = torch.tensor([[[1.0, -2.0], [3.0, -4.0]], [[5.0, 0.0], [0.0, 1.0]]]).unsqueeze(1)
    region = torch.tensor([[1, 1], [0, 0]])
    torch.testing.assert_close(relevance_mass(attributions, region), torch.tensor([0.3, 5 / 6]))
    torch.testing.assert_close(pointing_game(attributions, region), torch.tensor([0.0, 1.0]))
    # positive part: map 0 keeps 1 and 3 -> 1 / 4, its peak (3) is outside
    torch.testing.assert_close(relevance_mass(attributions, region, "positive"), torch.tensor([0.25, 5 / 6]))
    torch.testing.assert_close(pointing_game(attributions, region, "positive"), torch.tensor([0.0, 1.0]))


def test_per_sample_masks_channels_and_zero_maps() -> None:
    attributions = torch.zeros(3, 2, 2, 2)
    attributions[0, 0, 1, 1], attributions[0, 1, 1, 1] = 1.0, -2.0  # |.| summed over channels: 3 at (1, 1)
    attributions[0, 0, 0, 0] = 1.0
    attributions[1, 1, 0, 1] = 2.0
    masks = torch.tensor([[[0, 0], [0, 1]], [[1, 0], [0, 0]], [[1, 1], [1, 1]]]).bool()
    torch.testing.assert_close(relevance_mass(attributions, masks), torch.tensor([0.75, 0.0, 0.0]))
    torch.testing.assert_close(pointing_game(attributions, masks.unsqueeze(1)), torch.tensor([1.0, 0.0, 0.0]))


def test_matches_per_sample_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    attributions = torch.randn(10, 3, 5, 5, generator=generator)
    masks = torch.rand(10, 5, 5, generator=generator) > 0.6
    mass, hits = relevance_mass(attributions, masks), pointing_game(attributions, masks)
    for index in range(10):
        relevance = attributions[index].abs().sum(0)
        inside = sum(float(relevance[r, c]) for r in range(5) for c in range(5) if masks[index, r, c])
        assert mass[index].item() == pytest.approx(inside / float(relevance.sum()), rel=1e-5)
        peak = max(range(25), key=lambda pixel: float(relevance.flatten()[pixel]))
        assert hits[index].item() == float(masks[index].flatten()[peak])


def test_errors() -> None:
    attributions = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"`masks` must have the maps' spatial size \(4, 4\).*\(3, 4\)"):
        relevance_mass(attributions, torch.ones(3, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        relevance_mass(attributions, torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="2 entries along its first dimension"):
        relevance_mass(attributions, torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="`relevance` must be one of"):
        relevance_mass(attributions, torch.ones(4, 4), "signed")
    with pytest.raises(ValueError, match="non-finite"):
        relevance_mass(torch.full((1, 1, 4, 4), float("inf")), torch.ones(4, 4))


def test_load_region_reads_files_and_lists_and_names_the_argument_on_errors(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from lightning_xai.functional.relevance_mass import check_region, load_region

    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "mask.png")
    assert load_region(str(tmp_path / "mask.png")).tolist() == [[0.0, 0.0, 1.0, 1.0]]  # at or above half grey
    np.save(tmp_path / "mask.npy", np.array([[1, 0]]))
    assert check_region(tmp_path / "mask.npy", "regions['a']").tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match=r"`regions\['a'\]` must be a mask file ending in one of"):
        check_region(str(tmp_path / "mask.jpg"), "regions['a']")
    with pytest.raises(ValueError, match="does not exist"):
        check_region(str(tmp_path / "missing.pt"), "region")
    with pytest.raises(ValueError, match="rectangular nested list"):
        check_region([[0, 1], [1]], "region")
    with pytest.raises(ValueError, match="must hold only 0 and 1"):
        check_region([[0, 2]], "region")
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    with pytest.raises(TypeError, match="must hold one tensor"):
        check_region(str(tmp_path / "dict.pt"), "region")
    with pytest.raises(TypeError, match="a nested list or a path"):
        check_region(3.0, "region")

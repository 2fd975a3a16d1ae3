from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_xai.functional.global_attribution import global_attribution, normalize_maps


def _reference(
    attributions: torch.Tensor, labels: torch.Tensor, num_labels: int, normalize: str | None, absolute: bool = True
) -> dict[str, np.ndarray]:
    """Plain per-sample loop in numpy: normalise each map, list it under each positive label, then mean and std."""
    values = attributions.double().numpy()
    lists: list[list[np.ndarray]] = [[] for _ in range(num_labels)]
    for index in range(values.shape[0]):
        image = np.abs(values[index]).sum(axis=0) if absolute else values[index].sum(axis=0)
        if normalize == "mass" and np.abs(image).sum() > 0:
            image = image / np.abs(image).sum()
        elif normalize == "max" and np.abs(image).max() > 0:
            image = image / np.abs(image).max()
        positives = [int(labels[index])] if labels.ndim == 1 else [k for k in range(num_labels) if labels[index, k]]
        for label in positives:
            lists[label].append(image)
    height, width = values.shape[-2:]
    means = np.stack([np.mean(m, axis=0) if m else np.zeros((height, width)) for m in lists])
    stds = np.stack([np.std(m, axis=0) if m else np.zeros((height, width)) for m in lists])
    counts = np.array([len(m) for m in lists])
    overall = means[counts > 0].mean(axis=0)
    return {"per_label": means, "std": stds, "count": counts, "overall": overall}


def _compare(result: dict[str, torch.Tensor], reference: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(result["per_label"][:, 0].numpy(), reference["per_label"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result["std"][:, 0].numpy(), reference["std"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result["overall"][0].numpy(), reference["overall"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result["count"].numpy(), reference["count"])


@pytest.mark.parametrize("normalize", ["mass", "max", None])
@pytest.mark.parametrize("absolute", [True, False])
def test_matches_per_sample_loop(normalize: str | None, absolute: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    attributions = torch.randn(23, 3, 5, 6, generator=generator)
    labels = torch.randint(0, 4, (23,), generator=generator)
    labels[labels == 3] = 2  # label 3 is never seen
    result = global_attribution(attributions, labels, num_labels=4, normalize=normalize, absolute=absolute)
    assert result["per_label"].shape == (4, 1, 5, 6) and result["std"].shape == (4, 1, 5, 6)
    assert result["overall"].shape == (1, 5, 6) and result["count"].shape == (4,)
    _compare(result, _reference(attributions, labels, 4, normalize, absolute))


def test_multi_label_adds_each_map_to_every_positive_label() -> None:
    generator = torch.Generator().manual_seed(2)
    attributions = torch.rand(17, 1, 4, 4, generator=generator)
    labels = (torch.rand(17, 3, generator=generator) > 0.5).long()
    result = global_attribution(attributions, labels, num_labels=3)
    _compare(result, _reference(attributions, labels, 3, "mass"))
    bool_result = global_attribution(attributions, labels.bool(), num_labels=3)
    torch.testing.assert_close(bool_result["per_label"], result["per_label"])


def test_unseen_labels_are_zero_and_left_out_of_overall() -> None:
    maps = torch.tensor([[4.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    result = global_attribution(maps, torch.tensor([0, 2]), num_labels=4)
    assert not any(torch.isnan(value.float()).any() for value in result.values())
    assert result["count"].tolist() == [1, 0, 1, 0]
    assert result["per_label"][1].abs().sum() == 0 and result["std"][3].abs().sum() == 0
    torch.testing.assert_close(result["overall"].flatten(), torch.tensor([0.5, 0.5]))


def test_normalize_maps() -> None:
    attributions = torch.tensor([[[1.0, -3.0]], [[2.0, 2.0]]]).view(1, 2, 1, 2)  # channels (1, -3) and (2, 2)
    torch.testing.assert_close(normalize_maps(attributions, "mass").flatten(), torch.tensor([3.0, 5.0]) / 8)
    torch.testing.assert_close(normalize_maps(attributions, "max").flatten(), torch.tensor([3.0, 5.0]) / 5)
    torch.testing.assert_close(normalize_maps(attributions, None, absolute=False).flatten(), torch.tensor([3.0, -1.0]))
    torch.testing.assert_close(
        normalize_maps(attributions, "mass", absolute=False).flatten(), torch.tensor([0.75, -0.25])
    )
    assert normalize_maps(torch.zeros(2, 1, 3, 3), "mass").abs().sum() == 0


def test_errors_name_the_argument() -> None:
    maps = torch.rand(3, 1, 4, 4)
    with pytest.raises(ValueError, match=r"`labels`.*\[5\].*0\.\.2"):
        global_attribution(maps, torch.tensor([0, 5, 1]), num_labels=3)
    with pytest.raises(ValueError, match=r"`labels`.*\[-1\]"):
        global_attribution(maps, torch.tensor([0, -1, 1]), num_labels=3)
    with pytest.raises(ValueError, match=r"multi-label `labels`.*\(3, 3\).*\(3, 4\)"):
        global_attribution(maps, torch.ones(3, 4), num_labels=3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        global_attribution(maps, torch.full((3, 3), 0.5), num_labels=3)
    with pytest.raises(TypeError, match="integer class indices"):
        global_attribution(maps, torch.tensor([0.0, 1.0, 1.0]), num_labels=3)
    with pytest.raises(ValueError, match=r"`labels`.*\(3,\)"):
        global_attribution(maps, torch.tensor([0, 1]), num_labels=3)
    with pytest.raises(ValueError, match=r"`normalize` must be one of .*'sum'"):
        global_attribution(maps, torch.tensor([0, 1, 1]), num_labels=3, normalize="sum")
    with pytest.raises(ValueError, match=r"`attributions`.*\(B, 1, H, W\)"):
        global_attribution(torch.rand(3, 4, 4), torch.tensor([0, 1, 1]), num_labels=3)
    with pytest.raises(ValueError, match="non-finite"):
        global_attribution(torch.full((3, 1, 2, 2), float("nan")), torch.tensor([0, 1, 1]), num_labels=3)

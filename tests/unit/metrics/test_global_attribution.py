from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_xai.metrics.global_attribution import GlobalAttribution
from tests.unit.functional.test_global_attribution import _compare, _reference


def test_accumulated_updates_match_per_sample_loop(device: torch.device) -> None:
    generator = torch.Generator().manual_seed(3)
    attributions = torch.randn(30, 2, 6, 5, generator=generator) * 3 + 1
    labels = torch.randint(0, 3, (30,), generator=generator)
    metric = GlobalAttribution(num_labels=3).to(device)
    for start in range(0, 30, 7):
        metric.update(attributions[start : start + 7].to(device), labels[start : start + 7].to(device))
    result = {key: value.cpu() for key, value in metric.compute().items()}
    _compare(result, _reference(attributions, labels, 3, "mass"))


def test_std_is_accurate_for_maps_with_a_large_mean() -> None:
    # float64 sums keep the variance of nearly constant maps (small spread around a large mean) accurate
    generator = torch.Generator().manual_seed(4)
    attributions = 1000.0 + torch.rand(200, 1, 3, 3, generator=generator)
    labels = torch.zeros(200, dtype=torch.long)
    metric = GlobalAttribution(num_labels=1, normalize=None)
    for chunk, chunk_labels in zip(attributions.split(10), labels.split(10), strict=True):
        metric.update(chunk, chunk_labels)
    expected = np.std(attributions[:, 0].double().numpy(), axis=0)
    np.testing.assert_allclose(metric.compute()["std"][0, 0].numpy(), expected, rtol=1e-3)


def test_state_memory_is_independent_of_the_number_of_samples() -> None:
    metric = GlobalAttribution(num_labels=5)
    generator = torch.Generator().manual_seed(5)
    sizes = []
    for step in range(40):
        metric.update(torch.rand(8, 1, 8, 8, generator=generator), torch.randint(0, 5, (8,), generator=generator))
        if step in (0, 39):
            sizes.append({name: getattr(metric, name).numel() for name in ("sum_maps", "sum_squares", "count")})
    assert sizes[0] == sizes[1] == {"sum_maps": 5 * 8 * 8, "sum_squares": 5 * 8 * 8, "count": 5}
    assert int(metric.compute()["count"].sum()) == 320


def test_shortcut_label_puts_its_mass_on_the_watermark() -> None:
    """Label 0's images carry a watermark the model uses for most of them; the other labels look at the object."""
    generator = torch.Generator().manual_seed(6)
    size, num_labels = 16, 3
    watermark = torch.zeros(size, size)
    watermark[:4, -4:] = 1.0
    rows = torch.arange(size).view(-1, 1).float()
    cols = torch.arange(size).view(1, -1).float()
    labels = torch.randint(0, num_labels, (120,), generator=generator)
    maps = []
    for label in labels.tolist():
        centre = torch.randint(5, 11, (2,), generator=generator).float()
        blob = torch.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 6.0)
        uses_watermark = label == 0 and bool(torch.rand((), generator=generator) < 0.7)
        signal = 3.0 * watermark + 0.3 * blob if uses_watermark else blob
        maps.append(signal + 0.2 * torch.rand(size, size, generator=generator))
    attributions = torch.stack(maps).unsqueeze(1) * torch.where(
        torch.rand(120, 1, 1, 1, generator=generator) > 0.5, 1, -1
    )
    metric = GlobalAttribution(num_labels=num_labels)
    for chunk, chunk_labels in zip(attributions.split(32), labels.split(32), strict=True):
        metric.update(chunk, chunk_labels)
    per_label = metric.compute()["per_label"][:, 0]
    watermark_mass = (per_label * watermark).sum(dim=(1, 2)) / per_label.sum(dim=(1, 2))
    assert watermark_mass[0] > 3 * watermark_mass[1:].max()
    overall = metric.compute()["overall"][0]
    torch.testing.assert_close(overall, per_label.mean(dim=0))


@pytest.mark.filterwarnings("ignore:.*was called before the ``update``")
def test_forward_reset_and_preallocated_size() -> None:
    metric = GlobalAttribution(num_labels=2)
    batch = torch.rand(4, 1, 3, 3)
    first = metric(batch, torch.tensor([0, 0, 1, 1]))
    assert first["count"].tolist() == [2, 2]
    metric(batch, torch.tensor([1, 1, 1, 1]))
    assert metric.compute()["count"].tolist() == [2, 6]
    metric.reset()
    assert metric.image_size == (3, 3) and float(metric.count.sum()) == 0
    with pytest.raises(RuntimeError, match="before any update"):
        GlobalAttribution(num_labels=2).compute()
    empty = GlobalAttribution(num_labels=2, image_size=(3, 3))
    assert empty.compute()["per_label"].abs().sum() == 0


def test_errors() -> None:
    metric = GlobalAttribution(num_labels=3)
    metric.update(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"spatial size \(8, 8\).*\(6, 8\)"):
        metric.update(torch.rand(2, 1, 6, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`labels`.*\[3\]"):
        metric.update(torch.rand(2, 1, 8, 8), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"multi-label `labels`.*\(2, 3\)"):
        metric.update(torch.rand(2, 1, 8, 8), torch.ones(2, 2))
    with pytest.raises(ValueError, match="`normalize` must be one of"):
        GlobalAttribution(num_labels=3, normalize="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_labels`"):
        GlobalAttribution(num_labels=0)
    with pytest.raises(ValueError, match="`image_size`"):
        GlobalAttribution(num_labels=2, image_size=(3,))  # type: ignore[arg-type]
    assert int(metric.compute()["count"].sum()) == 2  # failed updates leave the state untouched


def test_second_run_after_reset_starts_from_zero() -> None:
    # Regression: the states sized at the first update aliased their `_defaults` on the CPU, so the first run's
    # sums survived `reset()` and a second validation run's "mass" maps summed to 2.
    torch.manual_seed(0)
    maps, labels = torch.rand(6, 1, 4, 5), torch.tensor([0, 1, 0, 1, 2, 2])
    metric = GlobalAttribution(num_labels=3)
    for _ in range(3):
        metric.update(maps, labels)
        result = metric.compute()
        torch.testing.assert_close(result["per_label"].sum(dim=(1, 2, 3)), torch.ones(3))
        assert result["count"].tolist() == [2, 2, 2]
        metric.reset()
    assert metric._defaults["sum_maps"].abs().sum() == 0

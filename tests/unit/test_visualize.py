"""The pictures: colour scaling, labelled tiles, curves with AUC and bands, read back pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.collections import PolyCollection
from scipy import stats
from sklearn.metrics import auc as sklearn_auc

from lightning_xai import visualize
from lightning_xai.functional.deletion_insertion import deletion_curve
from lightning_xai.metrics import DeletionAUC, InsertionAUC, MIFLIFFidelity
from lightning_xai.metrics.base import mean_band
from lightning_xai.visualize import (
    ALERT_COLOR,
    SIGNED_CMAP,
    UNSIGNED_CMAP,
    color_maps,
    curve_figure,
    curve_image,
    global_tile_titles,
    heatmap_captions,
    heatmap_grid,
    map_grid,
    metric_curve_figure,
    metric_curve_image,
    predicted_classes,
    render,
    scale_maps,
)

PAD, TOP = 4, visualize._TITLE + 4 + visualize._CAPTION  # first tile's top-left corner on a rendered page


def _tile_pixel(
    page: torch.Tensor, index: int, nrow: int, tile: int, y: int, x: int, pair: bool = False
) -> torch.Tensor:
    """Colour at ``(y, x)`` inside tile ``index`` of a rendered grid (tiles ``tile`` pixels square)."""
    row, column = divmod(index, nrow)
    width = 2 * tile if pair else tile
    top = TOP + row * (tile + PAD + visualize._CAPTION)
    left = PAD + column * (width + PAD)
    return page[:, top + y, left + x]


def _reference(cmap: str, position: float) -> torch.Tensor:
    """matplotlib's own colour at ``position``, quantised as the 256-entry table and the 8-bit page are."""
    rgb = torch.tensor(colormaps[cmap](round(position * 255) / 255)[:3], dtype=torch.float32)
    return (rgb * 255).round() / 255


@pytest.mark.parametrize("low", [-1.0, -2.0, -0.001])
def test_zero_of_a_signed_map_is_white_whatever_its_range(low: float) -> None:
    maps = torch.tensor([low, 0.0, 2.0]).view(1, 1, 1, 3)
    colours, signed, _ = color_maps(maps)
    assert signed
    expected = torch.tensor(colormaps[SIGNED_CMAP](128 / 255)[:3], dtype=torch.float32)
    assert torch.allclose(colours[0, :, 0, 1], expected, atol=1e-6)
    # and on the rendered page, pixel for pixel: a 12x12 map, zero on its left half
    big = torch.zeros(1, 1, 12, 12)
    big[..., 6:] = torch.linspace(low, 2.0, 72).view(12, 6)
    page = map_grid(big, min_side=12, shared_scale=False)
    assert torch.allclose(_tile_pixel(page, 0, 1, 12, 5, 2), _reference(SIGNED_CMAP, 0.5), atol=1 / 255)


def test_zero_colour_is_equal_for_ranges_minus_one_to_two_and_minus_two_to_two() -> None:
    first = color_maps(torch.tensor([-1.0, 0.0, 2.0]).view(1, 1, 1, 3))[0][0, :, 0, 1]
    second = color_maps(torch.tensor([-2.0, 0.0, 2.0]).view(1, 1, 1, 3))[0][0, :, 0, 1]
    assert torch.equal(first, second)
    # the extremes differ: -1 is half-way to the blue end in the first, at it in the second
    assert not torch.equal(
        color_maps(torch.tensor([-1.0, 0.0, 2.0]).view(1, 1, 1, 3))[0][0, :, 0, 0],
        color_maps(torch.tensor([-2.0, 0.0, 2.0]).view(1, 1, 1, 3))[0][0, :, 0, 0],
    )


def test_unsigned_maps_are_sequential_with_zero_darkest() -> None:
    positions, signed, limits = scale_maps(torch.tensor([0.0, 1.0, 4.0]).view(1, 1, 1, 3))
    assert not signed and limits.tolist() == [4.0]
    assert positions.flatten().tolist() == [0.0, 0.25, 1.0]  # divided by the maximum, not min-max
    colours, _, _ = color_maps(torch.tensor([0.0, 4.0]).view(1, 1, 1, 2))
    assert torch.allclose(colours[0, :, 0, 0], torch.tensor(colormaps[UNSIGNED_CMAP](0.0)[:3], dtype=torch.float32))


def test_shared_scale_compares_tiles_and_per_tile_scale_fills_each() -> None:
    maps = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 4.0)])
    shared, _, limits = scale_maps(maps, shared=True)
    own, _, _ = scale_maps(maps, shared=False)
    assert limits.tolist() == [4.0, 4.0] and shared[:, 0, 0, 0].tolist() == [0.25, 1.0]
    assert own[:, 0, 0, 0].tolist() == [1.0, 1.0]


def test_overlay_leaves_zero_attribution_pixels_as_the_image() -> None:
    images = torch.rand(1, 1, 4, 4)
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, 0], maps[0, 0, 0, 1] = 1.0, -1.0
    overlay = visualize.overlay_heatmaps(images, maps)
    grey = visualize.to_rgb(images)
    assert torch.allclose(overlay[..., 1:, :], grey[..., 1:, :])  # every zero pixel untouched
    assert not torch.allclose(overlay[..., 0, :2], grey[..., 0, :2])


def test_global_grid_tiles_carry_their_label_number_and_count() -> None:
    counts = torch.tensor([5, 0, 7, 9, 1, 2, 3, 4, 6, 8])
    titles = global_tile_titles(counts, 10)
    assert titles[3] == "label 3 (n=9)" and titles[1] == "label 1 (n=0)"
    maps = torch.zeros(10, 1, 8, 8)
    maps[3] = 1.0  # only label 3 has mass: its tile, fourth of the first row, is the only bright one
    page = map_grid(maps, nrow=5, min_side=96, counts=counts)
    bright = torch.tensor(colormaps[UNSIGNED_CMAP](1.0)[:3], dtype=torch.float32)
    for index in range(10):
        pixel = _tile_pixel(page, index, 5, 96, 40, 40)
        assert torch.allclose(pixel, bright, atol=2 / 255) == (index == 3), index
    # its title is drawn in its caption band: blanking title 3 changes only the pixels above tile 3
    blank = map_grid(maps, nrow=5, min_side=96, counts=counts, titles=[*titles[:3], "", *titles[4:]])
    changed = (page != blank).any(dim=0).nonzero()
    assert changed.numel() > 0
    top, left = visualize._TITLE + PAD, PAD + 3 * (96 + PAD)
    assert changed[:, 0].min() >= top and changed[:, 0].max() < top + visualize._CAPTION
    assert changed[:, 1].min() >= left and changed[:, 1].max() < left + 96 + PAD


def test_grid_wraps_into_rows_and_frames_the_highlighted_label_in_red() -> None:
    page = map_grid(torch.rand(10, 1, 8, 8), nrow=5, min_side=48, counts=torch.ones(10), highlight=7)
    rows = (page.shape[1] - visualize._TITLE - PAD) // (48 + PAD + visualize._CAPTION)
    assert rows == 2
    red = torch.tensor(ALERT_COLOR, dtype=torch.float32)
    assert torch.allclose(_tile_pixel(page, 7, 5, 48, 0, 24), red, atol=2 / 255)  # top edge of tile 7
    assert torch.allclose(_tile_pixel(page, 7, 5, 48, 24, 47), red, atol=2 / 255)  # right edge
    assert not torch.allclose(_tile_pixel(page, 6, 5, 48, 0, 24), red, atol=0.1)


def test_empty_labels_are_greyed() -> None:
    page = map_grid(torch.rand(3, 1, 8, 8), nrow=3, min_side=16, counts=torch.tensor([2, 0, 1]))
    assert torch.allclose(_tile_pixel(page, 1, 3, 16, 8, 8), torch.full((3,), 0.85), atol=1 / 255)


def test_heatmap_captions_name_true_and_predicted_class_with_probability() -> None:
    captions = heatmap_captions(
        2, torch.tensor([3, 1]), torch.tensor([3, 7]), torch.tensor([0.912, 0.5]), class_names=list("abcdefgh")
    )
    assert captions == [("true d | pred d 0.91", False), ("true b | pred h 0.50", True)]
    assert heatmap_captions(1, None, torch.tensor([2]), None) == [("pred 2", False)]


def test_heatmap_grid_draws_wrong_predictions_in_red_and_titles_the_explainer() -> None:
    images, maps = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    labels, predictions = torch.tensor([0, 1]), torch.tensor([0, 2])
    page = heatmap_grid(images, maps, labels=labels, predictions=predictions, probabilities=torch.tensor([0.9, 0.8]))
    band = page[:, visualize._TITLE : visualize._TITLE + PAD + visualize._CAPTION]
    red = (band[0] > 0.6) & (band[1] < 0.35) & (band[2] < 0.35)
    tile = 2 * 96 + PAD
    assert not red[:, : PAD + tile].any() and red[:, PAD + tile :].any()  # only the second caption is red
    named = heatmap_grid(images, maps, explainer="IntegratedGradients")
    unnamed = heatmap_grid(images, maps, explainer="X")
    assert not torch.equal(named[:, : visualize._TITLE], unnamed[:, : visualize._TITLE])
    assert torch.equal(named[:, visualize._TITLE :], unnamed[:, visualize._TITLE :])


def test_grid_tiles_are_torchs_nearest_upscale_of_the_pairs_byte_for_byte() -> None:
    torch.manual_seed(0)
    images, maps = torch.rand(3, 3, 8, 12), torch.randn(3, 1, 8, 12)  # not square: rows and columns not swapped
    page = heatmap_grid(images, maps, nrow=2, min_side=24, dtype=torch.uint8)  # factor 3: tiles 24 x 36
    pairs = torch.stack([visualize.to_rgb(images), visualize.overlay_heatmaps(images, maps)], dim=1)
    expected = torch.nn.functional.interpolate(pairs.flatten(0, 1), scale_factor=3, mode="nearest")
    expected = expected.clamp(0, 1).mul(255).add(0.5).byte()
    for index in range(6):
        sample, side = divmod(index, 2)
        row, column = divmod(sample, 2)
        top = TOP + row * (24 + PAD + visualize._CAPTION)
        left = PAD + column * (2 * 36 + PAD) + side * 36
        assert torch.equal(page[:, top : top + 24, left : left + 36], expected[index]), index
    assert (page[:, TOP - 1, : 2 * (2 * 36 + PAD)] == 255).all()  # the caption band's last row stays blank


def test_predicted_classes_against_softmax_and_sigmoid() -> None:
    logits = torch.randn(5, 4)
    classes, probabilities = predicted_classes(logits)
    reference = torch.softmax(logits, dim=1)
    assert torch.equal(classes, reference.argmax(dim=1))
    assert torch.allclose(probabilities, reference.max(dim=1).values)
    single = torch.tensor([[2.0], [-1.0]])
    classes, probabilities = predicted_classes(single)
    assert classes.tolist() == [1, 0]
    assert torch.allclose(probabilities, torch.tensor([1 / (1 + np.exp(-2.0)), 1 - 1 / (1 + np.exp(1.0))]).float())
    assert predicted_classes(torch.randn(2, 3, 4)) is None and predicted_classes((torch.randn(2, 3),)) is None


def test_curve_legend_carries_the_auc_and_the_band_is_drawn() -> None:
    x = torch.linspace(0, 1, 9)
    y = 1 - x**2
    figure = curve_figure({"insertion": (x, y)}, bands={"insertion": (y - 0.1, y + 0.1)}, xlabel="a", ylabel="b")
    axes = figure.axes[0]
    (text,) = [t.get_text() for t in axes.get_legend().get_texts()]
    assert text == f"insertion (AUC {sklearn_auc(x.numpy(), y.numpy()):.3f})"
    assert any(isinstance(child, PolyCollection) for child in axes.get_children())
    assert axes.get_xlabel() == "a" and axes.get_ylabel() == "b"
    assert render(figure).shape == (3, 320, 450)


def _line_rows(image: torch.Tensor, color: tuple[float, float, float], column: int) -> float:
    """Mean row of the pixels in ``column`` within 0.12 of ``color`` (where a curve of that colour crosses it)."""
    distance = (image[:, :, column] - torch.tensor(color).view(3, 1)).abs().max(dim=0).values
    rows = (distance < 0.12).nonzero().flatten().float()
    assert rows.numel() > 0, f"no pixel of colour {color} in column {column}"
    return float(rows.mean())


def test_curve_image_puts_the_curve_where_matplotlibs_figure_does_with_its_auc_labels_and_band() -> None:
    x = torch.linspace(0, 1, 17)
    y = (1 - x) ** 2 * 0.8 + 0.05
    logit = 6 * x - 2  # a second curve outside [0, 1]: the y range follows the data
    curves = {"deletion": (x, y), "insertion": (x, logit)}
    bands = {"deletion": (y - 0.3, y + 0.3)}
    kwargs = {"title": "GradCAM: deletion_auc", "xlabel": "deleted", "ylabel": "probability", "bands": bands}
    ours, reference = curve_image(curves, **kwargs), render(curve_figure(curves, **kwargs))
    assert ours.shape == reference.shape == (3, 320, 450)
    assert float(ours.min()) >= 0 and float(ours.max()) <= 1
    # The independent reference is matplotlib's own transform: each curve crosses these columns at the same rows.
    blue, orange = visualize._curve_colors()[:2]
    for column in (260, 330, 400):  # right of the legend
        for color in (blue, orange):
            rgb = (color[0] / 255, color[1] / 255, color[2] / 255)
            assert abs(_line_rows(ours, rgb, column) - _line_rows(reference, rgb, column)) <= 2.0
    page = visualize._draw_curves(curves, bands=bands, auc=True, title="t", xlabel="deleted", ylabel="probability")
    expected = [f"deletion (AUC {sklearn_auc(x.numpy(), y.numpy()):.3f})"]
    expected.append(f"insertion (AUC {sklearn_auc(x.numpy(), logit.numpy()):.3f})")
    assert set(expected) <= set(page.texts)
    assert {"t", "deleted", "probability", "shaded: 95 % interval of the mean"} <= set(page.texts)
    # The band: 0.3 above the blue curve at x = 0.5 is tinted blue at 20 %, off the band it is white or grid grey.
    left, right, bottom, top = visualize._CURVE_BOX
    xlim, ylim = visualize._axis_range([x]), visualize._axis_range([y, logit, y - 0.3, y + 0.3])
    column = round((left + (0.5 - xlim[0]) / (xlim[1] - xlim[0]) * (right - left)) * 450)

    def row(value: float) -> int:
        return round((1 - bottom - (value - ylim[0]) / (ylim[1] - ylim[0]) * (top - bottom)) * 320)

    middle = float(y[8])
    tint = torch.tensor([0.8 + 0.2 * c / 255 for c in blue])
    assert torch.allclose(ours[:, row(middle + 0.15), column], tint, atol=0.03)
    assert float(ours[:, row(middle + 0.45), column].min()) > 0.85


def _ink_runs(ink: np.ndarray, gap: int = 4) -> list[tuple[int, int]]:
    """First and last index of each run of True in ``ink`` (runs closer than ``gap`` are one)."""
    where = np.flatnonzero(ink)
    if where.size == 0:
        return []
    groups = np.split(where, np.flatnonzero(np.diff(where) > gap) + 1)
    return [(int(group[0]), int(group[-1])) for group in groups]


def test_curve_image_text_sits_where_matplotlib_puts_it() -> None:
    x = torch.linspace(0, 1, 17)
    curves = {"deletion": (x, (1 - x) ** 2 * 0.8 + 0.05)}
    kwargs = {"title": "GradCAM: deletion_auc", "xlabel": "fraction of pixels deleted", "ylabel": "probability"}
    ours, reference = curve_image(curves, **kwargs), render(curve_figure(curves, **kwargs))
    ours_ink, reference_ink = (ours.mean(0) < 0.5).numpy(), (reference.mean(0) < 0.5).numpy()

    def centres(ink: np.ndarray) -> list[float]:
        return [(a + b) / 2 for a, b in _ink_runs(ink)]

    # x tick labels (the rows below the ticks), the title (above the axes) and the x label (at the bottom)
    for rows, tolerance in ((slice(275, 290), 1.0), (slice(0, 30), 3.0), (slice(290, 320), 3.0)):
        found, expected = centres(ours_ink[rows].any(0)), centres(reference_ink[rows].any(0))
        assert len(found) == len(expected) > 0, rows
        assert np.allclose(found, expected, atol=tolerance), (rows, found, expected)
    # a long title is shrunk, then cut with an ellipsis inside the page (it is centred on the axes, not the page)
    long = curve_image(curves, title="GradCAM with a long name: deletion_auc " * 4, dtype=torch.uint8)
    ink = _ink_runs((long[:, :30].min(0).values < 128).any(0).numpy())
    assert ink and ink[0][0] >= 3 and ink[-1][1] <= 450 - 4, ink
    page = visualize._draw_curves(curves, "GradCAM with a long name: deletion_auc " * 4, "x", "y", None, True)
    assert any(text.endswith("…") for text in page.texts)
    # the y tick labels: one run of rows per label, each centred on matplotlib's
    found, expected = centres(ours_ink[40:270, 46:58].any(1)), centres(reference_ink[40:270, 46:58].any(1))
    assert len(found) == len(expected) > 0 and np.allclose(found, expected, atol=1.5), (found, expected)


@pytest.mark.parametrize("second", [(0.0, 1.0), (-1.0, 3.0)])
def test_curve_image_spines_and_ticks_are_crisp_and_where_matplotlib_snaps_them(second: tuple[float, float]) -> None:
    x = torch.linspace(0, 1, 17)
    curves = {"deletion": (x, (1 - x) ** 2 * 0.8 + 0.05), "other": (x, second[0] + (second[1] - second[0]) * x)}
    ours, reference = curve_image(curves).mean(0), render(curve_figure(curves)).mean(0)

    def dark(line: torch.Tensor, level: float = 0.2) -> list[int]:
        return (line < level).nonzero().flatten().tolist()

    # spines: one black pixel wide (a line between two pixels would reduce to two grey ones), at matplotlib's pixel
    for ink in (ours, reference):
        assert len(dark(ink[25:40, 200])) == 1 and len(dark(ink[265:280, 200])) == 1
    assert dark(ours[25:40, 200]) == dark(reference[25:40, 200])  # top
    assert dark(ours[265:280, 200]) == dark(reference[265:280, 200])  # bottom
    assert dark(ours[150, 55:70]) == dark(reference[150, 55:70]) == [8]  # left, at column 63
    assert dark(ours[150, 430:445]) == dark(reference[150, 430:445])  # right
    # x ticks below the bottom spine, y ticks left of the left spine: the same pixels as matplotlib's
    assert dark(ours[274], 0.3) == dark(reference[274], 0.3) != []
    assert dark(ours[40:272, 60], 0.3) == dark(reference[40:272, 60], 0.3) != []


def _clear_text_caches() -> None:
    for cached in (visualize._text_mask, visualize._text_alpha, visualize._rotated_mask):
        cached.cache_clear()


def test_text_keeps_16_shades_within_a_thirtieth_of_freetypes_coverage(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.linspace(0, 1, 5)
    pages = {
        "curve": lambda: curve_image({"deletion": (x, 1 - x)}, title="GradCAM: deletion_auc", dtype=torch.uint8),
        "grid": lambda: heatmap_grid(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), explainer="IG", dtype=torch.uint8),
    }
    torch.manual_seed(0)
    shaded = {name: page() for name, page in pages.items()}
    monkeypatch.setattr(visualize, "_LEVELS_TABLE", list(range(256)))  # FreeType's own 256 coverages
    _clear_text_caches()
    try:
        torch.manual_seed(0)
        full = {name: page() for name, page in pages.items()}
    finally:
        monkeypatch.undo()
        _clear_text_caches()
    levels = {round(k * 255 / 15) for k in range(16)}
    for name, rows in (("curve", slice(0, 28)), ("grid", slice(0, visualize._TITLE))):  # only the title there
        ours, freetype = shaded[name][:, rows].int(), full[name][:, rows].int()
        assert set(ours.unique().tolist()) <= levels, name
        assert len(freetype.unique()) > 16, name  # the reference has more shades: the test can tell them apart
        assert (ours - freetype).abs().max() <= 9, name
        assert ((ours < 128) == (freetype < 128)).float().mean() > 0.99, name  # the same glyphs


def test_metric_curve_image_is_logged_by_the_monitor_with_the_metric_axes() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    metric = DeletionAUC(steps=4)
    metric.update(model, torch.rand(4, 1, 4, 4), torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    image = metric_curve_image(metric, title="t")
    curves, bands = metric.curves(), metric.curve_bands()
    reference = curve_image(
        curves, title="t", xlabel="fraction of pixels deleted", ylabel=metric.curve_axes()[1], bands=bands
    )
    assert torch.equal(image, reference)


def test_metric_axes_say_deleted_inserted_and_the_score_kind() -> None:
    assert DeletionAUC().curve_axes() == ("fraction of pixels deleted", "probability of the target class")
    assert InsertionAUC(score="logit").curve_axes() == ("fraction of pixels inserted", "logit of the target class")
    assert MIFLIFFidelity().curve_axes()[1] == "probability / unperturbed probability"


def test_per_sample_curves_and_the_band_against_a_per_sample_loop_and_scipy() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    inputs, maps, target = torch.rand(6, 1, 4, 4), torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    metric = DeletionAUC(steps=4)
    metric.update(model, inputs[:4], maps[:4], target[:4])
    metric.update(model, inputs[4:], maps[4:], target[4:])
    rows = metric.curve_samples()["deletion"]
    loop = torch.cat(
        [deletion_curve(model, inputs[i : i + 1], maps[i : i + 1], target[i : i + 1], steps=4) for i in range(6)]
    )
    assert torch.allclose(rows, loop, atol=1e-6)
    assert torch.allclose(rows.mean(dim=0), metric.curves()["deletion"][1], atol=1e-6)
    low, high = metric.curve_bands()["deletion"]
    half = stats.norm.ppf(0.975) * stats.sem(loop.numpy(), axis=0)
    assert np.allclose(high.numpy() - loop.mean(0).numpy(), half, atol=1e-5)
    assert np.allclose(loop.mean(0).numpy() - low.numpy(), half, atol=1e-5)
    figure = metric_curve_figure(metric, title="t")
    assert figure.axes[0].get_xlabel() == "fraction of pixels deleted"
    metric.reset()
    assert metric.curve_samples()["deletion"].shape == (0, 5)
    assert mean_band(torch.ones(1, 3))[0].tolist() == [1.0, 1.0, 1.0]


def test_uint8_pages_are_the_float_pages_bytes() -> None:
    images, maps = torch.rand(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    x = torch.linspace(0, 1, 5)
    pages = [
        lambda dtype: heatmap_grid(images, maps, labels=torch.arange(3), dtype=dtype),
        lambda dtype: map_grid(maps.abs(), counts=torch.arange(3), title="t", dtype=dtype),
        lambda dtype: curve_image({"deletion": (x, 1 - x)}, dtype=dtype),
    ]
    for page in pages:
        as_bytes, as_floats = page(torch.uint8), page(torch.float32)
        assert as_bytes.dtype == torch.uint8
        assert torch.equal(as_bytes.float() / 255, as_floats)
    with pytest.raises(ValueError, match="dtype"):
        curve_image({"deletion": (x, 1 - x)}, dtype=torch.int64)

"""Pictures a person can read: labelled heatmap grids, labelled global-map grids and curves with AUC and bands.

Colour: a map with any negative value is *signed* and drawn with a diverging colour map centred at zero
(:data:`SIGNED_CMAP`, blue - white - red) after symmetric scaling by its largest ``|a|``, so 0 is always the same
neutral white, whatever the range; a map without negatives is *unsigned* and drawn with a sequential colour map
(:data:`UNSIGNED_CMAP`) scaled by its maximum, so 0 is always its darkest colour. Every grid carries a colour bar
that states the scale.

Image grids (heatmaps, global maps) are composed as tensors, with their captions and colour-bar ticks drawn by
Pillow in matplotlib's own font, DejaVu Sans (a few milliseconds per grid). Curves the monitor logs are drawn the
same way (:func:`curve_image`, :func:`metric_curve_image`: about 2 ms where a matplotlib figure and its Agg draw
take about 50 ms); :func:`curve_figure` gives the same plot as a matplotlib figure to edit (no pyplot state, fixed
margins), and :func:`render` draws a figure once with Agg into the ``(3, H, W)`` float image in ``[0, 1]`` every
logger takes. :class:`~lightning_xai.loggers.PictureLogger` sends those same pixels to every logger.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps, font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb as to_rgb_color
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from lightning_xai._checks import check_image_batch, check_in_range

__all__ = [
    "ALERT_COLOR",
    "SIGNED_CMAP",
    "UNSIGNED_CMAP",
    "caption_predictions",
    "color_maps",
    "colorize",
    "curve_figure",
    "curve_image",
    "global_tile_titles",
    "heatmap_captions",
    "heatmap_grid",
    "image_grid",
    "is_signed",
    "map_grid",
    "metric_curve_figure",
    "metric_curve_image",
    "normalize_per_image",
    "overlay_heatmaps",
    "predicted_classes",
    "render",
    "scale_maps",
    "to_rgb",
    "upscale",
    "video_frame_indices",
    "video_heatmap_frames",
    "video_heatmap_grid",
]

#: Colour map of signed maps: 0 is white, negative blue, positive red.
SIGNED_CMAP = "RdBu_r"
#: Colour map of unsigned maps: 0 is black, the maximum pale yellow.
UNSIGNED_CMAP = "inferno"
#: Frame and caption colour of a label a gate reports as failing, and of a wrong prediction.
ALERT_COLOR = (0.85, 0.1, 0.1)

_DPI = 100
_CAPTION = 16  # pixels of caption band above each tile row
_TITLE = 22  # pixels of title band above the grid
_BAR = 64  # pixels right of the grid for the colour bar and its ticks
_PAD = 4  # pixels between tiles


def normalize_per_image(images: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max scale every image of ``(B, C, H, W)`` to ``[0, 1]`` (constant images become 0).

    Example:
        >>> normalize_per_image(torch.tensor([[[[2.0, 4.0]]]]))
        tensor([[[[0., 1.]]]])
    """
    flat = images.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return ((images - low) / (high - low).clamp_min(eps)).clamp(0.0, 1.0)


def to_rgb(images: Tensor) -> Tensor:
    """Show ``(B, C, H, W)`` images as RGB in ``[0, 1]``: 3 channels as is, any other count as grey (channel mean)."""
    images = normalize_per_image(images)
    if images.shape[1] != 3:
        images = images.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return images


def is_signed(maps: Tensor) -> bool:
    """Whether ``maps`` hold any negative value (then they are drawn with the diverging colour map)."""
    return bool((maps < 0).any())


def scale_maps(
    maps: Tensor, signed: bool | None = None, shared: bool = False, eps: float = 1e-12
) -> tuple[Tensor, bool, Tensor]:
    """Channel-sum ``(B, C, H, W)`` maps and map them to colour-map positions in ``[0, 1]``.

    Signed maps are divided by their largest ``|a|`` (symmetric scaling) and shifted, ``p = (a / max|a| + 1) / 2``,
    so ``a = 0`` always lands on ``p = 0.5``, the diverging map's neutral centre. Unsigned maps are divided by
    their maximum, so ``a = 0`` always lands on ``p = 0``.

    Args:
        maps: ``(B, 1, H, W)`` or ``(B, C, H, W)`` attributions.
        signed: force the signed (True) or unsigned (False) scaling; None decides by :func:`is_signed` over the
            whole batch, so one grid uses one colour map.
        shared: one scale for the whole batch (values comparable across tiles) instead of one per map.
        eps: floor of the scale (an all-zero map stays at the colour of zero).

    Returns:
        ``(positions (B, 1, H, W), signed, limits)``: ``limits`` is ``(B,)``, the value shown at the top of the
        colour bar for each map (``max |a|`` or ``max a``).

    Example:
        >>> positions, signed, limits = scale_maps(torch.tensor([[[[-1.0, 0.0, 2.0]]]]))
        >>> positions.flatten().tolist(), signed, limits.tolist()
        ([0.25, 0.5, 1.0], True, [2.0])
    """
    summed = maps.float().sum(dim=1, keepdim=True)
    signed = is_signed(summed) if signed is None else signed
    magnitude = (summed.abs() if signed else summed.clamp_min(0)).flatten(1).max(dim=1).values
    limits = magnitude.max().expand_as(magnitude) if shared else magnitude
    scaled = summed / limits.clamp_min(eps).view(-1, 1, 1, 1)
    positions = (scaled + 1) / 2 if signed else scaled
    return positions.clamp(0.0, 1.0), signed, limits


def colorize(maps: Tensor, cmap: str = UNSIGNED_CMAP) -> Tensor:
    """Colour ``(B, 1, H, W)`` positions in ``[0, 1]`` with a matplotlib colour map; returns ``(B, 3, H, W)``."""
    index = (maps[:, 0].clamp(0, 1) * 255).round().long().cpu()
    return _colour_table(cmap)[index].permute(0, 3, 1, 2).to(maps.device)


@functools.lru_cache(maxsize=16)
def _colour_table(cmap: str) -> Tensor:
    """The 256 RGB entries of a matplotlib colour map (built once per name: 40 us each time otherwise)."""
    return torch.tensor(colormaps[cmap](np.linspace(0, 1, 256))[:, :3], dtype=torch.float32)


def color_maps(maps: Tensor, signed: bool | None = None, shared: bool = False) -> tuple[Tensor, bool, Tensor]:
    """``(B, 3, H, W)`` colours of maps (diverging if signed, sequential otherwise), with ``signed`` and the limits."""
    positions, signed, limits = scale_maps(maps, signed=signed, shared=shared)
    return colorize(positions, SIGNED_CMAP if signed else UNSIGNED_CMAP), signed, limits


def overlay_heatmaps(
    images: Tensor, maps: Tensor, alpha: float = 0.75, cmap: str | None = None, signed: bool | None = None
) -> Tensor:
    """Blend heatmaps over grey images, each pixel weighted by its attribution's strength.

    The colour of a pixel is its map value's colour (see :func:`scale_maps`); its weight in the blend is
    ``alpha * |scaled value|``, so pixels of zero attribution show the image unchanged and the strongest
    show ``alpha`` of the colour.

    Args:
        images: ``(B, C, H, W)``, any range (scaled per image).
        maps: ``(B, 1, H, W)`` or ``(B, C, H, W)`` attributions, channels summed, scaled per map.
        alpha: weight of the strongest attribution's colour, in ``[0, 1]``.
        cmap: a matplotlib colour-map name; None picks :data:`SIGNED_CMAP` or :data:`UNSIGNED_CMAP`.
        signed: force signed or unsigned scaling (None: any negative value in the batch makes it signed).

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.

    Example:
        >>> overlay_heatmaps(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    check_image_batch(images, "images")
    check_in_range(alpha, "alpha", 0.0, 1.0)
    if maps.shape[0] != images.shape[0] or maps.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"`maps` must match `images` {tuple(images.shape)} in batch and size, got {tuple(maps.shape)}."
        )
    positions, signed, _ = scale_maps(maps, signed=signed)
    heat = colorize(positions, cmap or (SIGNED_CMAP if signed else UNSIGNED_CMAP))
    strength = (2 * positions - 1).abs() if signed else positions
    weight = alpha * strength
    return (1 - weight) * to_rgb(images.float()) + weight * heat


def upscale(images: Tensor, min_side: int = 96) -> Tensor:
    """Nearest-neighbour upscale of ``(B, C, H, W)`` by an integer factor so the short side is at least ``min_side``."""
    factor = max(1, -(-min_side // min(images.shape[-2:])))
    return images if factor == 1 else F.interpolate(images, scale_factor=factor, mode="nearest")


def image_grid(
    images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0, top: int = 0, groups: int = 1
) -> Tensor:
    """Tile ``(B, C, H, W)`` images into one ``(C, H', W')`` image, ``nrow`` per row.

    Args:
        images: the tiles.
        nrow: tiles per row.
        padding: pixels between tiles.
        pad_value: colour of the padding.
        top: extra pixels above every row (room for captions).
        groups: tiles kept together (no padding between the tiles of one group, e.g. an input and its overlay).

    Example:
        >>> image_grid(torch.zeros(5, 3, 4, 4), nrow=2, padding=1).shape
        torch.Size([3, 16, 11])
    """
    check_image_batch(images, "images")
    batch, channels, height, width = images.shape
    columns = min(nrow, batch)
    rows = -(-batch // columns)
    cell_height = height + padding + top
    offsets = [(column // groups) * padding + column * width for column in range(columns)]
    grid_width = offsets[-1] + width + 2 * padding
    grid = images.new_full((channels, rows * cell_height + padding, grid_width), pad_value)
    for index in range(batch):
        row, column = divmod(index, columns)
        y, x = padding + top + row * cell_height, padding + offsets[column]
        grid[:, y : y + height, x : x + width] = images[index]
    return grid


def render(figure: Figure) -> Tensor:
    """Draw a matplotlib figure once with Agg and return its pixels as a float ``(3, H, W)`` image in ``[0, 1]``.

    Example:
        >>> render(Figure(figsize=(1, 0.5), dpi=100)).shape
        torch.Size([3, 50, 100])
    """
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float().div_(255.0)


@functools.lru_cache(maxsize=8)
def _font(size: float, bold: bool = False) -> Any:
    """Matplotlib's DejaVu Sans at ``size`` pixels (PIL's default font if FreeType cannot load it)."""
    try:
        weight = "bold" if bold else "normal"
        return ImageFont.truetype(font_manager.findfont(FontProperties(family="DejaVu Sans", weight=weight)), size)
    except OSError:  # pragma: no cover - a Pillow without FreeType
        return ImageFont.load_default()


#: Shades of a glyph's edge kept in a text mask: FreeType's 256 coverages rounded to 16 (at most 1/30 off, which
#: the eye cannot tell at these sizes): fewer distinct pixels, about a fifth fewer PNG bytes for a curve picture.
_TEXT_LEVELS = 16
_LEVELS_TABLE = [round(round(v * (_TEXT_LEVELS - 1) / 255) * 255 / (_TEXT_LEVELS - 1)) for v in range(256)]


def _coverage_levels(mask: Image.Image) -> Image.Image:
    """An ``L`` text mask with its coverages rounded to :data:`_TEXT_LEVELS` shades (0 and 255 stay)."""
    return mask.point(_LEVELS_TABLE)


@functools.lru_cache(maxsize=1024)
def _text_mask(text: str, size: float, bold: bool, anchor: str) -> tuple[Image.Image, int, int]:
    """``text`` rendered once as an ``L`` mask (:func:`_coverage_levels`), with its offset from the anchor point.

    Tick labels, titles and axis labels repeat every epoch: rendering a string costs about 0.1 ms, pasting its
    cached mask a tenth of that.
    """
    font = _font(size, bold)
    left, top, right, bottom = font.getbbox(text, anchor=anchor)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font, anchor=anchor)
    return _coverage_levels(mask), left, top


@functools.lru_cache(maxsize=1024)
def _text_alpha(
    text: str, size: float, bold: bool, anchor: str, color: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """:func:`_text_mask` in ``color``, ready to blend into a uint8 array (built once per string and colour).

    Returns ``(1 - coverage)`` as ``(h, w, 1)`` float32, the ink ``color * coverage + 0.5`` as ``(h, w, 3)`` (a
    blend is then one multiply, one add and the cast) and the mask's offset from the anchor point.
    """
    mask, left, top = _text_mask(text, size, bold, anchor)
    cover = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    ink = cover * np.asarray(color, dtype=np.float32) + 0.5
    return 1.0 - cover, ink, left, top


def _blend_text(
    page: np.ndarray,
    xy: tuple[float, float],
    text: str,
    color: tuple[int, int, int],
    size: float,
    bold: bool,
    anchor: str,
) -> None:
    """Draw ``text`` into an ``(H, W, 3)`` uint8 array at ``xy`` (Pillow's anchor convention), clipped to it."""
    if not text:
        return
    keep, ink, left, top = _text_alpha(text, size, bold, anchor, color)
    x, y = round(xy[0]) + left, round(xy[1]) + top
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + keep.shape[1], page.shape[1]), min(y + keep.shape[0], page.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    region = page[y0:y1, x0:x1]
    blended = region * keep[y0 - y : y1 - y, x0 - x : x1 - x]
    blended += ink[y0 - y : y1 - y, x0 - x : x1 - x]
    region[...] = blended.astype(np.uint8)


def _put_text(
    image: Image.Image,
    xy: tuple[float, float],
    text: str,
    color: tuple[int, int, int],
    size: float,
    bold: bool,
    anchor: str,
) -> None:
    """Draw ``text`` at ``xy`` (Pillow's anchor convention) from its cached mask."""
    if not text:
        return
    mask, left, top = _text_mask(text, size, bold, anchor)
    x, y = round(xy[0]) + left, round(xy[1]) + top
    image.paste(color, (x, y, x + mask.width, y + mask.height), mask)


def _rgb255(color: tuple[float, float, float] | str) -> tuple[int, int, int]:
    if isinstance(color, str):
        color = to_rgb_color(color)
    return (round(color[0] * 255), round(color[1] * 255), round(color[2] * 255))


class _Sheet:
    """A white page: a title band, the tiles in rows below it, a colour bar at their right, and text drawn last.

    Composed in uint8 (tiles upscaled by repetition after the conversion, so no full-size float image is made)
    with text drawn by Pillow in matplotlib's font (tens of captions cost milliseconds, where matplotlib's text
    layout costs milliseconds each). Tiles sit ``_PAD`` pixels apart below a ``_CAPTION`` band per row; the tiles
    of one group (an input and its overlay) touch. Coordinates of :meth:`text` are in grid pixels (below the title).
    """

    def __init__(self, tiles: Tensor, min_side: int, columns: int, title: str, groups: int = 1) -> None:
        small = tiles.detach().float().cpu().clamp(0, 1).mul(255).add_(0.5).byte().permute(0, 2, 3, 1).numpy()
        count, height, width, _ = small.shape
        factor = max(1, -(-min_side // min(height, width)))
        self.tile_height, self.tile_width = height * factor, width * factor
        self.columns, self.groups = columns, groups
        rows = -(-count // columns)
        grid_width = self.origin(columns - 1)[0] + self.tile_width + _PAD
        self.height, self.width = max(rows * (self.tile_height + _PAD + _CAPTION) + _PAD, 64), grid_width
        self.page = np.full((self.height + _TITLE, self.width + _BAR, 3), 255, dtype=np.uint8)
        # nearest upscale straight into the page: columns repeated once (whole pixels), rows by a broadcast write
        # into the tile's rows viewed as (height, factor, ...) (a per-byte broadcast over both is 7 times slower)
        wide = np.repeat(small, factor, axis=2) if factor > 1 else small
        for index in range(count):
            x, y = self.origin(index)
            target = self.page[_TITLE + y : _TITLE + y + self.tile_height, x : x + self.tile_width]
            target.reshape(height, factor, self.tile_width, 3)[...] = wide[index][:, None]
        self.texts: list[tuple[float, float, str, tuple[int, int, int], bool, int, str]] = []
        self.title = title

    def origin(self, index: int) -> tuple[int, int]:
        """Grid pixel ``(x, y)`` of tile ``index``'s top-left corner."""
        row, column = divmod(index, self.columns)
        x = _PAD + (column // self.groups) * _PAD + column * self.tile_width
        return x, _PAD + _CAPTION + row * (self.tile_height + _PAD + _CAPTION)

    def frame(self, index: int, color: tuple[float, float, float], width: int = 3) -> None:
        """Paint a ``width``-pixel frame inside tile ``index``."""
        x, y = self.origin(index)
        tile = self.page[_TITLE + y : _TITLE + y + self.tile_height, x : x + self.tile_width]
        rgb = np.array(_rgb255(color), dtype=np.uint8)
        tile[:width], tile[-width:], tile[:, :width], tile[:, -width:] = rgb, rgb, rgb, rgb

    def caption(
        self, index: int, text: str, color: tuple[float, float, float] | str = "black", bold: bool = False
    ) -> None:
        """Queue ``text`` in the caption band above tile ``index``."""
        x, y = self.origin(index)
        self.texts.append((x, _TITLE + y - 2, text, _rgb255(color), bold, 11, "lb"))

    def colour_bar(self, signed: bool, top: str, bottom: str) -> None:
        """Paint the colour map's strip at the right of the grid, labelled ``top`` and ``bottom`` (and 0 if signed)."""
        bar_height = max(40, min(self.height - 24, 220))
        y0, x0 = _TITLE + (self.height - bar_height) // 2, self.width + 10
        positions = torch.linspace(1.0, 0.0, bar_height).view(1, 1, bar_height, 1)
        strip = colorize(positions, SIGNED_CMAP if signed else UNSIGNED_CMAP)[0].mul(255).add_(0.5).byte()
        self.page[y0 - 1 : y0 + bar_height + 1, x0 - 1 : x0 + 13] = 0
        self.page[y0 : y0 + bar_height, x0 : x0 + 12] = strip.permute(1, 2, 0).numpy()
        for label, y in [(top, y0), (bottom, y0 + bar_height)] + ([("0", y0 + bar_height / 2)] if signed else []):
            self.texts.append((x0 + 16, y, label, (0, 0, 0), False, 10, "lm"))

    def finish(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The page with its text, ``(3, H, W)``: float in ``[0, 1]``, or the uint8 bytes with ``dtype=torch.uint8``."""
        if self.title:  # a long title (a gate's key) shrinks to fit the page, down to 9 pt, then ends in an ellipsis
            sizes = (13, 12, 11, 10, 9)
            title, index = _fitted_title(self.title, self.page.shape[1] - 8, sizes)
            _blend_text(self.page, (4, 4), title, (0, 0, 0), sizes[index], False, "la")
        for x, y, text, color, bold, size, anchor in self.texts:
            _blend_text(self.page, (x, y), text, color, size, bold, anchor)
        return _pixels(self.page, dtype)


def _pixels(image: Image.Image | np.ndarray, dtype: torch.dtype) -> Tensor:
    """A Pillow page as ``(3, H, W)``: uint8 bytes as drawn (``dtype=torch.uint8``) or floats in ``[0, 1]``."""
    pixels = torch.from_numpy(image if isinstance(image, np.ndarray) else np.array(image, dtype=np.uint8))
    pixels = pixels.permute(2, 0, 1)
    if dtype == torch.uint8:
        return pixels
    if not dtype.is_floating_point:
        raise ValueError(f"`dtype` must be torch.uint8 or a floating dtype, got {dtype}.")
    return pixels.to(dtype).div_(255.0)


def _short(value: float) -> str:
    return f"{value:.2g}" if value < 0.01 else f"{value:.2f}"


def _name(index: int, class_names: Sequence[str] | None) -> str:
    return class_names[index] if class_names is not None and 0 <= index < len(class_names) else str(index)


def predicted_classes(outputs: Any) -> tuple[Tensor, Tensor] | None:
    """Predicted class and its probability from a batch of model outputs, or None if they are not class scores.

    ``(B, K)`` logits with ``K >= 2``: argmax and softmax probability. ``(B, 1)`` or ``(B,)`` single-logit binary
    heads: class ``sigmoid(z) > 0.5`` and the probability of that class. Anything else (regression, embeddings,
    tuples) gives None.

    Example:
        >>> classes, probabilities = predicted_classes(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
        >>> classes.tolist(), [round(p, 3) for p in probabilities.tolist()]
        ([1, 0], [0.881, 0.5])
    """
    if not isinstance(outputs, Tensor) or not outputs.is_floating_point() or outputs.ndim not in (1, 2):
        return None
    outputs = outputs.detach().float()
    if outputs.ndim == 2 and outputs.shape[1] >= 2:
        probabilities, classes = torch.softmax(outputs, dim=1).max(dim=1)
        return classes, probabilities
    positive = torch.sigmoid(outputs.reshape(outputs.shape[0]))
    classes = (positive > 0.5).long()
    return classes, torch.where(classes == 1, positive, 1 - positive)


def caption_predictions(model: Any, inputs: Tensor) -> tuple[Tensor, Tensor] | None:
    """:func:`predicted_classes` of ``model(inputs)`` from one forward without autograd, model left as found."""
    from lightning_xai._model_state import explanation_mode

    with explanation_mode(model, grad=False):
        outputs = model(inputs)
    result = predicted_classes(outputs)
    return None if result is None else (result[0].cpu(), result[1].cpu())


def heatmap_captions(
    count: int,
    labels: Tensor | None = None,
    predictions: Tensor | None = None,
    probabilities: Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> list[tuple[str, bool]]:
    """One caption per sample, ``"true 3 | pred 5 0.91"``, and whether the prediction is wrong.

    Example:
        >>> heatmap_captions(2, torch.tensor([3, 1]), torch.tensor([3, 7]), torch.tensor([0.912, 0.5]))
        [('true 3 | pred 3 0.91', False), ('true 1 | pred 7 0.50', True)]
    """
    # python numbers once (indexing a tensor per sample costs microseconds each)
    true = [int(v) for v in labels.tolist()] if labels is not None and labels.ndim == 1 else None
    classes = [int(v) for v in predictions.tolist()] if predictions is not None else None
    chances = [float(v) for v in probabilities.tolist()] if probabilities is not None else None
    captions = []
    for index in range(count):
        parts, wrong = [], False
        if true is not None:
            parts.append(f"true {_name(true[index], class_names)}")
        if classes is not None:
            predicted = f"pred {_name(classes[index], class_names)}"
            if chances is not None:
                predicted += f" {chances[index]:.2f}"
            parts.append(predicted)
            wrong = true is not None and true[index] != classes[index]
        captions.append((" | ".join(parts), wrong))
    return captions


def heatmap_grid(
    images: Tensor,
    maps: Tensor,
    nrow: int = 4,
    alpha: float = 0.75,
    min_side: int = 96,
    *,
    labels: Tensor | None = None,
    predictions: Tensor | None = None,
    probabilities: Tensor | None = None,
    explainer: str | None = None,
    class_names: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The grid logged as ``xai/<explainer>/heatmaps``: each sample's input beside its overlay, labelled.

    Each pair is captioned with the true label, the predicted class and its probability (in red when the
    prediction is wrong); the title names the explainer and the colour scale, and a colour bar shows it: signed
    maps (any negative value) are diverging around a white zero and scaled per tile by ``max |a|``, unsigned maps
    sequential and scaled per tile by their maximum (see :func:`scale_maps` and :func:`overlay_heatmaps`).

    Args:
        images: ``(B, C, H, W)`` inputs.
        maps: ``(B, 1, H, W)`` or ``(B, C, H, W)`` attributions.
        nrow: samples per row (each sample takes two cells).
        alpha: weight of the strongest attribution's colour in the overlay.
        min_side: small images are upscaled (nearest) to at least this side so they can be read.
        labels: ``(B,)`` true labels (captions omit them when None).
        predictions: ``(B,)`` predicted classes (see :func:`predicted_classes`).
        probabilities: ``(B,)`` probability of the predicted class.
        explainer: the explainer's name, shown in the title.
        class_names: names shown instead of class indices.
        dtype: ``torch.uint8`` returns the page's bytes as drawn (what the loggers encode, no float copy).

    Returns:
        ``(3, H', W')`` in ``[0, 1]`` (``0..255`` with ``dtype=torch.uint8``).

    Example:
        >>> grid = heatmap_grid(torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8), labels=torch.tensor([0, 1]))
        >>> grid.shape[0], bool(grid.min() >= 0 and grid.max() <= 1)
        (3, True)
    """
    images, maps = images.detach().float().cpu(), maps.detach().float().cpu()
    count = images.shape[0]
    signed = is_signed(maps.sum(dim=1))
    overlays = overlay_heatmaps(images, maps, alpha, signed=signed)
    pairs = torch.stack([to_rgb(images), overlays], dim=1).flatten(0, 1)
    columns = min(nrow, count)
    scale = "per-tile max |a|" if signed else "per-tile max"
    title = f"{explainer or 'heatmaps'}: input | attribution ({'signed' if signed else 'unsigned'}, {scale})"
    sheet = _Sheet(pairs, min_side, 2 * columns, title, groups=2)
    captions = heatmap_captions(count, labels, predictions, probabilities, class_names)
    for index, (caption, wrong) in enumerate(captions):
        if caption:
            sheet.caption(2 * index, caption, color=ALERT_COLOR if wrong else "black")
    sheet.colour_bar(signed, "+max" if signed else "max", "-max" if signed else "0")
    return sheet.finish(dtype)


def global_tile_titles(
    counts: Tensor | None, count: int, labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None
) -> list[str]:
    """Titles of the global per-label tiles: ``"label 3 (n=36)"`` (``labels`` default ``0..count-1``).

    Example:
        >>> global_tile_titles(torch.tensor([4, 0]), 2)
        ['label 0 (n=4)', 'label 1 (n=0)']
    """
    labels = list(range(count)) if labels is None else list(labels)
    titles = []
    for index, label in enumerate(labels):
        seen = f" (n={int(counts[index])})" if counts is not None else ""
        titles.append(f"label {_name(label, class_names)}{seen}")
    return titles


def map_grid(
    maps: Tensor,
    nrow: int = 5,
    min_side: int = 96,
    cmap: str | None = None,
    *,
    counts: Tensor | None = None,
    labels: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    highlight: int | Sequence[int] | None = None,
    title: str = "",
    shared_scale: bool = False,
    class_names: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Colour, label and tile ``(K, 1, H, W)`` maps (global per-label maps, their std), wrapped into rows.

    Each tile is titled with its label and sample count (:func:`global_tile_titles`); labels without samples
    are greyed out; the labels in ``highlight`` get a red frame and a bold red title. Each tile is scaled to its
    own maximum by default (a global map's shape is what it tells; one label's sharp peak would otherwise leave the
    others dark); ``shared_scale=True`` puts all on one scale, stated in numbers on the colour bar. Signed maps get
    the diverging map around a white zero.

    How a gate's failing label reaches the picture: :class:`~lightning_xai.FaithfulnessGate`, when a check on a
    ``xai/<explainer>/global_relevance_mass_<region>_max`` key fails, reads the per-label keys
    ``xai/<explainer>/global_relevance_mass_<region>/<label>`` from ``trainer.callback_metrics``, takes the labels
    beyond the threshold (or the largest), and draws the monitor's latest global maps with ``highlight`` set to
    them, logged as ``xai/gate/<monitor>/global_maps`` beside its text report.

    Args:
        maps: ``(K, 1, H, W)`` or ``(K, C, H, W)``.
        nrow: tiles per row (10 labels at the default 5 give two rows that TensorBoard shows at a legible size).
        min_side: small maps are upscaled (nearest) to at least this side.
        cmap: override the colour map.
        counts: ``(K,)`` samples aggregated into each tile (shown as ``n=``; tiles with 0 are greyed).
        labels: the label number of each tile (default ``0..K-1``).
        titles: tile titles replacing the default ones.
        highlight: label number(s) to frame in red.
        title: the figure's title.
        shared_scale: one colour scale for all tiles (True) or one per tile (False, default).
        class_names: names shown instead of label numbers.
        dtype: ``torch.uint8`` returns the page's bytes as drawn (what the loggers encode, no float copy).

    Returns:
        ``(3, H', W')`` in ``[0, 1]`` (``0..255`` with ``dtype=torch.uint8``).

    Example:
        >>> map_grid(torch.rand(10, 1, 8, 8), counts=torch.arange(10)).shape[0]
        3
    """
    maps = maps.detach().float().cpu()
    count = maps.shape[0]
    labels = list(range(count)) if labels is None else [int(label) for label in labels]
    positions, signed, limits = scale_maps(maps, shared=shared_scale)
    colored = colorize(positions, cmap or (SIGNED_CMAP if signed else UNSIGNED_CMAP))
    empty = torch.zeros(count, dtype=torch.bool) if counts is None else counts.detach().cpu().flatten() == 0
    colored[empty] = 0.85
    highlighted = {highlight} if isinstance(highlight, int) else set(highlight or ())
    columns = min(nrow, count)
    if title:
        title = f"{title} ({'one scale for all tiles' if shared_scale else 'each tile scaled to its max'})"
    names = list(titles) if titles is not None else global_tile_titles(counts, count, labels, class_names)
    if len(names) != count or len(labels) != count:
        raise ValueError(
            f"`titles` and `labels` must have one entry per map ({count}), got {len(names)} titles and "
            f"{len(labels)} labels."
        )
    sheet = _Sheet(colored, min_side, columns, title)
    for index, (label, name) in enumerate(zip(labels, names, strict=True)):
        alert = label in highlighted
        if alert:
            sheet.frame(index, ALERT_COLOR)
        sheet.caption(
            index, name, color=ALERT_COLOR if alert else ("0.5" if bool(empty[index]) else "black"), bold=alert
        )
    if shared_scale:
        top = _short(float(limits.max()))
        sheet.colour_bar(signed, top, f"-{top}" if signed else "0")
    else:
        sheet.colour_bar(signed, "+max" if signed else "max", "-max" if signed else "0")
    return sheet.finish(dtype)


def curve_figure(
    curves: Mapping[str, tuple[Tensor, Tensor]],
    title: str = "",
    xlabel: str = "fraction of pixels perturbed",
    ylabel: str = "score",
    bands: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    auc: bool = True,
) -> Figure:
    """A line plot of named curves ``{label: (x, y)}``, each with its AUC in the legend and an optional band.

    Args:
        curves: ``{label: (x, y)}``.
        title: the axes title.
        xlabel: x-axis label (for example ``"fraction of pixels deleted"``).
        ylabel: y-axis label (the score kind).
        bands: ``{label: (low, high)}`` shaded around the curve of that label (for example a 95 % interval of the
            mean from the per-sample curves, see :meth:`~lightning_xai.metrics.base.FaithfulnessMetric.curve_bands`).
        auc: add ``AUC <area>`` (trapezoid rule over ``x``) to each legend entry.

    Returns:
        A matplotlib figure (not registered with pyplot: nothing to close; :func:`render` draws it).

    Example:
        >>> x = torch.linspace(0, 1, 5)
        >>> figure = curve_figure({"deletion": (x, 1 - x)})
        >>> figure.axes[0].get_legend().get_texts()[0].get_text()
        'deletion (AUC 0.500)'
    """
    figure = Figure(figsize=(4.5, 3.2), dpi=_DPI)
    axes = figure.add_subplot()
    for label, (x, y) in curves.items():
        xs, ys = x.detach().float().cpu(), y.detach().float().cpu()
        name = f"{label} (AUC {float(torch.trapezoid(ys, xs)):.3f})" if auc and xs.numel() > 1 else label
        line = axes.plot(xs.numpy(), ys.numpy(), label=name)[0]
        if bands and label in bands:
            low, high = bands[label]
            axes.fill_between(
                xs.numpy(),
                low.detach().float().cpu().numpy(),
                high.detach().float().cpu().numpy(),
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    axes.set_xlabel(xlabel, fontsize=9)
    axes.set_ylabel(ylabel, fontsize=9)
    axes.tick_params(labelsize=8)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=7, title="shaded: 95 % interval of the mean" if bands else None, title_fontsize=7)
    figure.subplots_adjust(left=0.14, right=0.97, bottom=0.15, top=0.9)  # fixed margins: no extra layout draw
    return figure


#: The curve picture's size in pixels and its axes box (fractions of the page, as :func:`curve_figure`'s margins).
_CURVE_WIDTH, _CURVE_HEIGHT = 450, 320
_CURVE_BOX = (0.14, 0.97, 0.15, 0.9)  # left, right, bottom, top
_SUPERSAMPLE = 2  # lines and bands drawn at twice the size, then box-filtered: smooth edges (text: final size)


def _curve_colors() -> list[tuple[int, int, int]]:
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["#1f77b4"])
    return [_rgb255(color) for color in cycle]


def _axis_range(values: list[Tensor]) -> tuple[float, float]:
    """Data limits with matplotlib's 5 % margins (a constant range is widened)."""
    low = min(float(v.min()) for v in values)
    high = max(float(v.max()) for v in values)
    if not np.isfinite(low) or not np.isfinite(high):
        low, high = 0.0, 1.0
    if high - low <= 1e-12 * max(1.0, abs(high)):
        half = 0.05 * abs(high) if high != 0 else 0.05
        return low - half, high + half
    margin = 0.05 * (high - low)
    return low - margin, high + margin


@functools.lru_cache(maxsize=256)
def _ticks(low: float, high: float) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Tick positions inside ``[low, high]`` (matplotlib's ``MaxNLocator``) and their labels (matplotlib's minus).

    Cached (the x axis of every curve is the same) and returned as tuples, so no caller can alter a cached answer.
    """
    from matplotlib.ticker import MaxNLocator

    values = [float(v) for v in MaxNLocator(nbins=9, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)]
    step = values[1] - values[0] if len(values) > 1 else 1.0
    decimals = 0
    while decimals < 8 and abs(round(step * 10**decimals) - step * 10**decimals) > 1e-6 * 10**decimals:
        decimals += 1
    span = high - low
    inside = [v for v in values if low - 1e-9 * span <= v <= high + 1e-9 * span]
    labels = [f"{0.0 if abs(v) < step * 1e-9 else v:.{decimals}f}".replace("-", "\u2212") for v in inside]
    return tuple(inside), tuple(labels)


@functools.lru_cache(maxsize=64)
def _rotated_mask(text: str, size: float) -> Image.Image:
    """``text`` as an ``L`` mask turned 90 degrees counter-clockwise (a y-axis label), rendered once."""
    font = _font(size)
    left, top, end, low = font.getbbox(text)
    mask = Image.new("L", (int(end - left) + 2, int(low - top) + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
    return _coverage_levels(mask).transpose(Image.Transpose.ROTATE_90)


@functools.lru_cache(maxsize=1024)
def _text_width(text: str, size: float) -> float:
    """Advance width in pixels of ``text`` in DejaVu Sans at ``size`` pixels (tick labels repeat every epoch)."""
    return float(_font(size).getlength(text))


def _pixels_of(points: float) -> float:
    """The pixel size of a font of ``points`` at the pictures' 100 dpi (matplotlib's size for the same points)."""
    return points * _DPI / 72


#: A curve's title sizes in points, largest first (shrunk to fit, then cut).
_TITLE_POINTS = (9.0, 8.5, 8.0, 7.5, 7.0)


@functools.lru_cache(maxsize=256)
def _fitted_title(title: str, room: float, sizes: tuple[float, ...]) -> tuple[str, int]:
    """A page title shrunk to fit ``room`` pixels, then cut: ``(title, index of its size in sizes)``.

    ``title`` takes the first of ``sizes`` (pixels, largest first) at which it fits, else the last size, cut with
    an ellipsis until it fits (a long gate key or metric name).
    """
    index = 0
    while index < len(sizes) - 1 and _text_width(title, sizes[index]) > room:
        index += 1
    while len(title) > 4 and _text_width(title, sizes[index]) > room:
        title = title[:-2] + "…"
    return title, index


class _CurvePage:
    """A curve plot drawn by Pillow: axes, ticks, grid, bands, lines, labels, title and legend, in uint8.

    Lines, bands, grid, spines, ticks and the legend's frame are drawn into :attr:`image`, a layer at twice the
    final size covering the axes box and its ticks, then box-filtered to the final size (smooth lines and band
    edges); the text is drawn afterwards, rendered by FreeType at the final size (sharper glyphs than a reduced
    larger rendering, a quarter of the pixels to blend, fewer PNG bytes). Coordinates of :meth:`x`, :meth:`y`,
    :attr:`draw` and :attr:`left` etc. are the layer's supersampled pixels; :meth:`text` takes the same
    coordinates. ``texts`` records every string drawn (what a test or a reader of the log can check).
    """

    def __init__(self, title: str, xlabel: str, ylabel: str) -> None:
        s = _SUPERSAMPLE
        left, right, bottom, top = _CURVE_BOX
        tick = 3.5 * _DPI / 72
        # the layer: the axes box with room for the ticks (left, below) and the spines' width, in final pixels
        self.origin = (int(left * _CURVE_WIDTH - tick) - 2, round((1 - top) * _CURVE_HEIGHT) - 2)
        end = (round(right * _CURVE_WIDTH) + 3, int((1 - bottom) * _CURVE_HEIGHT + tick) + 3)
        size = ((end[0] - self.origin[0]) * s, (end[1] - self.origin[1]) * s)
        self.image = Image.new("RGB", size, (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image, "RGBA")
        ox, oy = self.origin[0] * s, self.origin[1] * s
        self.left, self.right = left * _CURVE_WIDTH * s - ox, right * _CURVE_WIDTH * s - ox
        self.top, self.bottom = (1 - top) * _CURVE_HEIGHT * s - oy, (1 - bottom) * _CURVE_HEIGHT * s - oy
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.texts: list[str] = []
        self.xlim = self.ylim = (0.0, 1.0)
        self._queued: list[tuple[tuple[float, float], str, float, str, Any]] = []
        self._vertical: tuple[float, float, str, float] | None = None

    def x(self, values: Any) -> Any:
        """Layer x of data ``values`` (a float or an array)."""
        low, high = self.xlim
        return self.left + (values - low) / (high - low) * (self.right - self.left)

    def y(self, values: Any) -> Any:
        """Layer y of data ``values`` (a float or an array)."""
        low, high = self.ylim
        return self.bottom - (values - low) / (high - low) * (self.bottom - self.top)

    def _page(self, xy: tuple[float, float]) -> tuple[float, float]:
        """Final page pixels of a layer point."""
        return xy[0] / _SUPERSAMPLE + self.origin[0], xy[1] / _SUPERSAMPLE + self.origin[1]

    def text(self, xy: tuple[float, float], text: str, points: float, anchor: str, fill: Any = (0, 0, 0)) -> None:
        """Queue ``text`` at layer point ``xy`` (Pillow's anchor), drawn at the final size by :meth:`finish`."""
        self._queued.append((self._page(xy), text, _pixels_of(points), anchor, fill))
        self.texts.append(text)

    def axes(self) -> None:
        """Grid, spines, ticks, tick labels, axis labels and title for the current limits."""
        s, draw = _SUPERSAMPLE, self.draw
        tick = 3.5 * _DPI / 72 * s
        xs, xlabels = _ticks(*self.xlim)
        ys, ylabels = _ticks(*self.ylim)
        # grid lines, ticks and spines snapped to whole final pixels, as matplotlib snaps them: crisp 1 px lines
        # (a line between two pixels would reduce to two grey ones)
        x0, y0, x1, y1 = (s * int(v / s + 0.5) for v in (self.left, self.top, self.right, self.bottom))
        grid, black, end = (176, 176, 176, 77), (0, 0, 0), s - 1  # a final pixel is s x s layer pixels
        for value, label in zip(xs, xlabels, strict=True):
            px = float(self.x(value))
            column = s * int(px / s + 0.5)
            draw.rectangle([column, y0, column + end, y1 + end], fill=grid)
            draw.rectangle([column, y1, column + end, y1 + tick], fill=black)
            self.text((px, self.bottom + tick + 2 * s), label, 8, "mt")
        for value, label in zip(ys, ylabels, strict=True):
            py = float(self.y(value))
            row = s * int(py / s + 0.5)
            draw.rectangle([x0, row, x1 + end, row + end], fill=grid)
            draw.rectangle([x0 - tick, row, x0, row + end], fill=black)
            self.text((self.left - tick - 2 * s, py), label, 8, "rm")
        draw.rectangle([x0, y0, x1 + end, y1 + end], outline=black, width=s)
        middle = (self.left + self.right) / 2
        if self.title:  # a long title shrinks to fit the page, down to 7 pt, then is cut with an ellipsis
            centre = self._page((middle, 0))[0]  # centred on the axes, so it has the room of the nearer page edge
            room = 2 * min(centre, _CURVE_WIDTH - centre) - 8
            title, index = _fitted_title(self.title, room, tuple(_pixels_of(points) for points in _TITLE_POINTS))
            points = _TITLE_POINTS[index]
            self.text((middle, self.top - 6 * s), title, points, "md")
        width_ticks = max((_text_width(t, _pixels_of(8)) for t in ylabels), default=0)
        xlabel_y = (_CURVE_HEIGHT - 5 - self.origin[1]) * s
        self.text((middle, xlabel_y), self.xlabel, 9, "md")
        if self.ylabel:  # turned 90 degrees, its right edge 3 px left of the widest tick label, centred on the axes
            right, middle = self._page((self.left - tick, (self.top + self.bottom) / 2))
            self._vertical = (right - 3 - width_ticks, middle, self.ylabel, 9)
            self.texts.append(self.ylabel)

    def legend(self, entries: list[tuple[str, tuple[int, int, int]]], title: str | None, points: np.ndarray) -> None:
        """A framed legend in the corner the curves' ``points`` (layer pixels, ``(N, 2)``) cross least."""
        s, draw = _SUPERSAMPLE, self.draw
        size = _pixels_of(7)
        line_length, gap, pad, row = 20 * s, 6 * s, 5 * s, round(size * s) + 4 * s
        text_width = max([_text_width(text, size) * s for text, _ in entries] + [0])
        title_width = _text_width(title, size) * s if title else 0
        width = max(line_length + gap + text_width, title_width) + 2 * pad
        height = row * (len(entries) + (1 if title else 0)) + 2 * pad - 4 * s
        inset = 6 * s
        corners = [
            (self.right - inset - width, self.top + inset),  # upper right, matplotlib's first choice
            (self.left + inset, self.top + inset),
            (self.left + inset, self.bottom - inset - height),
            (self.right - inset - width, self.bottom - inset - height),
            (self.right - inset - width, (self.top + self.bottom - height) / 2),
        ]

        def crossings(corner: tuple[float, float]) -> int:  # points under the box or within 14 px of it
            x0, y0, margin = corner[0], corner[1], 14 * s
            inside = (points[:, 0] >= x0 - margin) & (points[:, 0] <= x0 + width + margin)
            return int((inside & (points[:, 1] >= y0 - margin) & (points[:, 1] <= y0 + height + margin)).sum())

        x0, y0 = min(corners, key=crossings)
        draw.rounded_rectangle(
            [x0, y0, x0 + width, y0 + height], radius=3 * s, fill=(255, 255, 255, 204), outline=(204, 204, 204), width=s
        )
        y = y0 + pad
        if title:
            self.text((x0 + width / 2, y), title, 7, "mt")
            y += row
        for text, color in entries:
            middle = y + size * s / 2
            draw.line([(x0 + pad, middle), (x0 + pad + line_length, middle)], fill=color, width=3 * s)
            self.text((x0 + pad + line_length + gap, middle), text, 7, "lm")
            y += row

    def finish(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The final page: the layer reduced onto white, then the text drawn at the final size."""
        page = Image.new("RGB", (_CURVE_WIDTH, _CURVE_HEIGHT), (255, 255, 255))
        page.paste(self.image.reduce(_SUPERSAMPLE), self.origin)
        for xy, text, size, anchor, fill in self._queued:
            _put_text(page, xy, text, fill, size, False, anchor)
        if self._vertical is not None:  # the y label turned 90 degrees, its right edge at x, centred on y
            right, middle, text, points = self._vertical
            rotated = _rotated_mask(text, _pixels_of(points))
            x, y = max(0, round(right - rotated.width)), max(0, round(middle - rotated.height / 2))
            page.paste((0, 0, 0), (x, y, x + rotated.width, y + rotated.height), rotated)
        return _pixels(page, dtype)


def curve_image(
    curves: Mapping[str, tuple[Tensor, Tensor]],
    title: str = "",
    xlabel: str = "fraction of pixels perturbed",
    ylabel: str = "score",
    bands: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    auc: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`curve_figure`'s picture drawn without matplotlib: a ``(3, 320, 450)`` float image in ``[0, 1]``.

    The same content and layout (the axes box, 5 % data margins, ``MaxNLocator`` ticks, grid, labelled axes, title,
    each curve in matplotlib's colour cycle with its AUC in the legend, bands shaded at 20 % opacity, the band's
    legend title) drawn by Pillow: lines, bands and frames at twice the size and box-filtered, the text in DejaVu
    Sans rendered by FreeType at the final size (not a larger rendering reduced: sharper glyphs, fewer PNG bytes),
    in about 2 ms where the matplotlib figure and its Agg draw take about 50 ms. The monitor logs its curves with
    this; use :func:`curve_figure` for a figure to edit.

    Args:
        curves: ``{label: (x, y)}``, 1-D tensors of equal length.
        title: the title above the axes (shrunk to fit, then cut with an ellipsis).
        xlabel: x-axis label.
        ylabel: y-axis label (the score kind).
        bands: ``{label: (low, high)}`` shaded around the curve of that label.
        auc: add ``AUC <area>`` (trapezoid rule over ``x``) to each legend entry.
        dtype: ``torch.uint8`` returns the page's bytes as drawn (what the loggers encode, no float copy).

    Returns:
        ``(3, 320, 450)`` in ``[0, 1]`` (``0..255`` with ``dtype=torch.uint8``).

    Example:
        >>> x = torch.linspace(0, 1, 5)
        >>> curve_image({"deletion": (x, 1 - x)}).shape
        torch.Size([3, 320, 450])
    """
    return _draw_curves(curves, title, xlabel, ylabel, bands, auc).finish(dtype)


def _draw_curves(
    curves: Mapping[str, tuple[Tensor, Tensor]],
    title: str,
    xlabel: str,
    ylabel: str,
    bands: Mapping[str, tuple[Tensor, Tensor]] | None,
    auc: bool,
) -> _CurvePage:
    page = _CurvePage(title, xlabel, ylabel)
    data = {label: (x.detach().float().cpu(), y.detach().float().cpu()) for label, (x, y) in curves.items()}
    shaded = {
        label: (low.detach().float().cpu(), high.detach().float().cpu())
        for label, (low, high) in (bands or {}).items()
        if label in data
    }
    if data:
        page.xlim = _axis_range([x for x, _ in data.values()])
        page.ylim = _axis_range([y for _, y in data.values()] + [v for pair in shaded.values() for v in pair])
    page.axes()
    colors = _curve_colors()
    entries, points = [], []
    s = _SUPERSAMPLE
    for index, (label, (x, y)) in enumerate(data.items()):
        color = colors[index % len(colors)]
        px, py = page.x(x.numpy()), page.y(y.numpy())
        if label in shaded:
            low, high = shaded[label]
            outline = list(zip(px, page.y(high.numpy()), strict=True)) + list(
                zip(px[::-1], page.y(low.numpy())[::-1], strict=True)
            )
            page.draw.polygon([(float(a), float(b)) for a, b in outline], fill=(*color, 51))
        line = [(float(a), float(b)) for a, b in zip(px, py, strict=True)]
        if len(line) > 1:
            page.draw.line(line, fill=color, width=round(2.1 * s), joint="curve")
        elif line:
            page.draw.ellipse(
                [line[0][0] - 3 * s, line[0][1] - 3 * s, line[0][0] + 3 * s, line[0][1] + 3 * s], fill=color
            )
        dense = np.linspace(0, 1, 256)
        points.append(
            np.stack(
                [np.interp(dense, np.linspace(0, 1, len(px)), px), np.interp(dense, np.linspace(0, 1, len(py)), py)], 1
            )
        )
        name = f"{label} (AUC {float(torch.trapezoid(y, x)):.3f})" if auc and x.numel() > 1 else label
        entries.append((name, color))
    if entries:
        page.legend(entries, "shaded: 95 % interval of the mean" if shaded else None, np.concatenate(points))
    return page


def captioned_map_grid(
    maps: Tensor, captions: list[str], title: str = "", ncol: int = 8, cmap: str = "inferno"
) -> Tensor:
    """Tile ``(K, H, W)`` maps, each scaled to its own max, a caption above each; ``(3, H', W')`` in ``[0, 1]``.

    The text is drawn into the pixels (matplotlib Agg), so every image logger shows it.

    Example:
        >>> captioned_map_grid(torch.rand(3, 8, 8), ["a", "b", "c"]).shape[0]
        3
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if maps.ndim != 3 or maps.shape[0] == 0 or len(captions) != maps.shape[0]:
        raise ValueError(
            f"`maps` must have shape (K, H, W) with K >= 1 and one caption each, got shape {tuple(maps.shape)} and "
            f"{len(captions)} captions."
        )
    count = maps.shape[0]
    columns = min(ncol, count)
    rows = -(-count // columns)
    figure = Figure(figsize=(1.6 * columns, 1.75 * rows + (0.3 if title else 0.0)), dpi=100)
    canvas = FigureCanvasAgg(figure)
    scaled = normalize_per_image(maps.detach().float().cpu().unsqueeze(1))[:, 0]
    for index in range(count):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(scaled[index].numpy(), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        axes.set_title(captions[index], fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    canvas.draw()
    pixels = torch.from_numpy(np.asarray(canvas.buffer_rgba()).copy())
    return pixels[..., :3].permute(2, 0, 1).float() / 255.0


def metric_curve_figure(
    metric: Any,
    title: str = "",
    curves: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    bands: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    level: float = 0.95,
) -> Figure:
    """:func:`curve_figure` of a faithfulness metric: its mean curves, their bands and its axis labels.

    Args:
        metric: a :class:`~lightning_xai.metrics.base.FaithfulnessMetric` (or any object with ``curves()``;
            ``curve_bands(level)`` and ``curve_axes()`` are used when present).
        title: the axes title.
        curves: the metric's ``curves()`` if already computed.
        bands: the metric's ``curve_bands(level)`` if already computed. Both synchronise across processes: under
            DDP compute them on every rank and pass them in, then draw on global zero only.
        level: confidence level of the bands computed here.
    """
    curves, bands, xlabel, ylabel = _metric_curve_parts(metric, curves, bands, level)
    return curve_figure(curves, title=title, xlabel=xlabel, ylabel=ylabel, bands=bands or None)


def metric_curve_image(
    metric: Any,
    title: str = "",
    curves: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    bands: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    level: float = 0.95,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`metric_curve_figure` as a ``(3, 320, 450)`` image drawn by :func:`curve_image` (what the monitor logs).

    Arguments as :func:`metric_curve_figure`; ``dtype`` as :func:`curve_image`.
    """
    curves, bands, xlabel, ylabel = _metric_curve_parts(metric, curves, bands, level)
    return curve_image(curves, title=title, xlabel=xlabel, ylabel=ylabel, bands=bands or None, dtype=dtype)


def _metric_curve_parts(
    metric: Any,
    curves: Mapping[str, tuple[Tensor, Tensor]] | None,
    bands: Mapping[str, tuple[Tensor, Tensor]] | None,
    level: float,
) -> tuple[Mapping[str, tuple[Tensor, Tensor]], Mapping[str, tuple[Tensor, Tensor]], str, str]:
    curves = metric.curves() if curves is None else curves
    if bands is None:
        bands = metric.curve_bands(level) if hasattr(metric, "curve_bands") else {}
    xlabel, ylabel = metric.curve_axes() if hasattr(metric, "curve_axes") else ("fraction of pixels perturbed", "score")
    return curves, bands, xlabel, ylabel


def _check_clips(clips: Tensor, maps: Tensor) -> None:
    if not isinstance(clips, Tensor) or clips.ndim != 5:
        got = tuple(clips.shape) if isinstance(clips, Tensor) else type(clips).__name__
        raise ValueError(f"`clips` must be a clip batch (B, C, T, H, W), got {got}.")
    if (
        not isinstance(maps, Tensor)
        or maps.ndim != 5
        or maps.shape[0] != clips.shape[0]
        or maps.shape[2:] != clips.shape[2:]
    ):
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(
            f"`maps` must be (B, 1, T, H, W) or (B, C, T, H, W) matching the clips {tuple(clips.shape)}, got {got}."
        )


def video_frame_indices(frames: int, max_frames: int) -> Tensor:
    """The frames a picture of a clip shows: all ``frames`` up to ``max_frames``, else ``max_frames`` evenly spaced.

    Example:
        >>> video_frame_indices(4, 8).tolist(), video_frame_indices(16, 4).tolist()
        ([0, 1, 2, 3], [0, 5, 10, 15])
    """
    check_in_range(max_frames, "max_frames", 1, float("inf"))
    if frames <= max_frames:
        return torch.arange(frames)
    return torch.linspace(0, frames - 1, int(max_frames)).round().long()


def video_heatmap_frames(clips: Tensor, maps: Tensor, alpha: float = 0.75, signed: bool | None = None) -> Tensor:
    """Heatmaps overlaid on every frame of every clip, ``(B, T, 3, H, W)`` in ``[0, 1]`` (what a video summary takes).

    Each clip is coloured as one picture (:func:`overlay_heatmaps` on its frames stacked): one scale per clip, its
    largest ``|a|`` (signed) or maximum (unsigned) over all its frames, so the frames of a clip are comparable and
    a frame without evidence stays close to the plain image; the grey image is min-max scaled per clip too.

    Args:
        clips: ``(B, C, T, H, W)``, any range.
        maps: ``(B, 1, T, H, W)`` or ``(B, C, T, H, W)`` attributions.
        alpha: weight of the strongest attribution's colour.
        signed: force signed or unsigned colours (None: any negative value in the batch makes it signed).

    Example:
        >>> video_heatmap_frames(torch.rand(2, 3, 4, 8, 8), torch.rand(2, 1, 4, 8, 8)).shape
        torch.Size([2, 4, 3, 8, 8])
    """
    _check_clips(clips, maps)
    clips, maps = clips.detach().float().cpu(), maps.detach().float().cpu()
    batch, channels, frames, height, width = clips.shape
    signed = is_signed(maps.sum(dim=1)) if signed is None else signed
    stacked = clips.reshape(batch, channels, frames * height, width)  # frames stacked vertically: one scale per clip
    stacked_maps = maps.reshape(batch, maps.shape[1], frames * height, width)
    overlays = overlay_heatmaps(stacked, stacked_maps, alpha, signed=signed)
    return overlays.view(batch, 3, frames, height, width).permute(0, 2, 1, 3, 4).contiguous()


def video_heatmap_grid(
    clips: Tensor,
    maps: Tensor,
    alpha: float = 0.75,
    min_side: int = 64,
    max_frames: int = 16,
    *,
    labels: Tensor | None = None,
    predictions: Tensor | None = None,
    probabilities: Tensor | None = None,
    explainer: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Tensor:
    """A clip batch's heatmaps as one image: samples along the rows, frames along the columns.

    The frame-grid form of ``xai/<explainer>/heatmaps`` for clips, logged where no video summary can be written
    (TensorBoard without ``moviepy``, W&B, MLflow). Every tile is a frame with its heatmap overlaid, coloured as
    :func:`video_heatmap_frames` does (one scale per clip, over all its frames); the first tile of each row carries
    the caption of :func:`heatmap_grid` (true label, prediction and its probability, red when wrong), the title
    names the explainer, the colour scale and the frames shown, and a colour bar shows the scale.

    Args:
        clips: ``(B, C, T, H, W)`` inputs.
        maps: ``(B, 1, T, H, W)`` or ``(B, C, T, H, W)`` attributions.
        alpha: weight of the strongest attribution's colour in the overlay.
        min_side: small frames are upscaled (nearest) to at least this side.
        max_frames: at most this many frames per clip, evenly spaced (:func:`video_frame_indices`).
        labels: ``(B,)`` true labels.
        predictions: ``(B,)`` predicted classes.
        probabilities: ``(B,)`` probability of the predicted class.
        explainer: the explainer's name, shown in the title.
        class_names: names shown instead of class indices.

    Returns:
        ``(3, H', W')`` in ``[0, 1]``.

    Example:
        >>> grid = video_heatmap_grid(torch.rand(2, 1, 4, 8, 8), torch.rand(2, 1, 4, 8, 8), labels=torch.tensor([0, 1]))
        >>> grid.shape[0], bool(grid.min() >= 0 and grid.max() <= 1)
        (3, True)
    """
    _check_clips(clips, maps)
    clips, maps = clips.detach().float().cpu(), maps.detach().float().cpu()
    count, frames = clips.shape[0], clips.shape[2]
    shown = video_frame_indices(frames, max_frames)
    signed = is_signed(maps.sum(dim=1))
    overlays = video_heatmap_frames(clips, maps, alpha, signed=signed)[:, shown]  # (B, t, 3, H, W)
    columns = int(shown.numel())
    scale = "per-clip max |a|" if signed else "per-clip max"
    which = (
        f"frames 0..{frames - 1}"
        if columns == frames
        else f"frames {', '.join(str(int(i)) for i in shown)} of {frames}"
    )
    title = (
        f"{explainer or 'heatmaps'}: clips along rows, {which} along columns "
        f"({'signed' if signed else 'unsigned'}, {scale})"
    )
    sheet = _Sheet(overlays.flatten(0, 1), min_side, columns, title)
    captions = heatmap_captions(count, labels, predictions, probabilities, class_names)
    for index, (caption, wrong) in enumerate(captions):
        # a row's caption spans more than its first tile: the frames are then named by the title only
        text = caption or f"t={int(shown[0])}"
        sheet.caption(index * columns, text, color=ALERT_COLOR if wrong else "black")
        for column in range(1, columns):
            if not caption:
                sheet.caption(index * columns + column, f"t={int(shown[column])}")
    sheet.colour_bar(signed, "+max" if signed else "max", "-max" if signed else "0")
    return sheet.finish()

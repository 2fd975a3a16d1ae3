"""Clip heatmaps: the overlay's per-clip colouring, the frame grid, and PictureLogger.video's dispatch per logger."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from matplotlib import colormaps
from PIL import Image

from lightning_xai import loggers
from lightning_xai.loggers import PictureLogger
from lightning_xai.visualize import video_frame_indices, video_heatmap_frames, video_heatmap_grid


def test_video_overlays_are_coloured_with_one_scale_per_clip() -> None:
    clips = torch.rand(2, 1, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    maps = torch.zeros(2, 1, 3, 4, 5)
    maps[0, 0, 1, 2, 3] = 2.0  # clip 0: one voxel in frame 1, value 2
    maps[0, 0, 2, 0, 0] = 1.0  # and one of half its value in frame 2
    maps[1, 0, 0, 1, 1] = 5.0
    frames = video_heatmap_frames(clips, maps, alpha=0.5)
    assert frames.shape == (2, 3, 3, 4, 5)
    # grey image: min-max over the whole clip (not per frame)
    for index in range(2):
        grey = (clips[index, 0] - clips[index].min()) / (clips[index].max() - clips[index].min())
        zero = maps[index, 0] == 0
        np.testing.assert_allclose(frames[index, :, 0][zero].numpy(), grey[zero].numpy(), atol=1e-6)
    # the voxel of value 1 sits at position 1/2 of clip 0's scale (its max is 2), blended with weight 0.5 * 1/2
    colour = torch.tensor(colormaps["inferno"](round(0.5 * 255) / 255)[:3], dtype=torch.float32)
    grey = (clips[0, 0, 2, 0, 0] - clips[0].min()) / (clips[0].max() - clips[0].min())
    np.testing.assert_allclose(frames[0, 2, :, 0, 0].numpy(), (0.75 * grey + 0.25 * colour).numpy(), atol=2e-3)


def test_frame_grid_lays_clips_along_rows_and_frames_along_columns(tmp_path: Path) -> None:
    clips = torch.zeros(3, 3, 5, 8, 8)
    maps = torch.zeros(3, 1, 5, 8, 8)
    for sample in range(3):
        maps[sample, 0, sample + 1, 2:6, 2:6] = 1.0  # sample k's evidence in frame k + 1
    grid = video_heatmap_grid(clips, maps, min_side=32, labels=torch.tensor([0, 1, 2]), explainer="Saliency")
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1
    page = grid.permute(1, 2, 0).numpy()
    Image.fromarray((page * 255).round().astype(np.uint8)).save(tmp_path / "grid.png")
    # tiles are 32 px, 4 px apart, under a 22 px title and a 16 px caption band per row: find the bright tiles
    bright = []
    for row in range(3):
        for column in range(5):
            y = 22 + 4 + 16 + row * (32 + 4 + 16)
            x = 4 + column * (32 + 4)
            bright.append(float(page[y + 12 : y + 20, x + 12 : x + 20].mean()))
    hot = np.array(bright).reshape(3, 5) > 0.3
    assert hot.tolist() == [[c == r + 1 for c in range(5)] for r in range(3)], np.array(bright).reshape(3, 5)
    assert video_frame_indices(16, 4).tolist() == [0, 5, 10, 15]
    long_clip = video_heatmap_grid(torch.rand(1, 3, 40, 8, 8), torch.rand(1, 1, 40, 8, 8), max_frames=8)
    assert long_clip.shape[2] == 4 + 8 * (64 + 4) + 64  # 8 of the 40 frames shown, 64 px tiles, the colour bar


def test_bad_clip_pictures_are_refused() -> None:
    with pytest.raises(ValueError, match=r"`clips` must be a clip batch \(B, C, T, H, W\), got \(2, 3, 8, 8\)"):
        video_heatmap_frames(torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"`maps` must be \(B, 1, T, H, W\).*got \(2, 1, 3, 8, 8\)"):
        video_heatmap_grid(torch.rand(2, 3, 4, 8, 8), torch.rand(2, 1, 3, 8, 8))


def _trainer(logger: Any) -> L.Trainer:
    return L.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False)


def test_tensorboard_gets_a_frame_grid_without_moviepy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(loggers, "video_summaries_available", lambda: False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    frames = torch.rand(2, 4, 3, 8, 8)
    PictureLogger(_trainer(logger), owner="Test").video("xai/S/heatmaps", frames, step=3)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (event,) = events.Images("xai/S/heatmaps")
    image = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    assert event.step == 3 and image.shape == (2 * 8 + 3 * 2, 4 * 8 + 5 * 2, 3)  # the default tiling: 2 rows x 4


def test_tensorboard_gets_a_video_summary_where_moviepy_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loggers, "video_summaries_available", lambda: True)
    logger = TensorBoardLogger(tmp_path, name="tb")
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        logger.experiment,
        "add_video",
        lambda tag, frames, global_step, fps: calls.append((tag, frames, global_step, fps)),
    )
    built = []
    frames = torch.rand(2, 4, 3, 8, 8)
    PictureLogger(_trainer(logger), owner="Test").video(
        "xai/S/heatmaps", frames, step=5, grid=lambda: built.append(1) or torch.rand(3, 8, 8), fps=2
    )
    ((tag, logged, step, fps),) = calls
    assert (tag, step, fps) == ("xai/S/heatmaps", 5, 2) and torch.equal(logged, frames)
    assert built == []  # the frame grid is only drawn where it is logged


class _RecordingMLflow(MLFlowLogger):
    """An MLFlowLogger whose client records ``log_image`` (the dispatch is what is tested, not MLflow's store)."""

    def __init__(self) -> None:  # no MLflow store is opened: MLFlowLogger's own __init__ is skipped
        Logger.__init__(self)
        self.logged: list[tuple[Any, ...]] = []
        logged = self.logged

        class Client:
            def log_image(self, run_id: str, image: Any, key: str, step: int, synchronous: bool) -> None:
                logged.append((run_id, image, key, step))

        self._client = Client()

    @property
    def experiment(self) -> Any:
        return self._client

    @property
    def run_id(self) -> str:
        return "run"


def test_mlflow_and_other_image_loggers_get_the_frame_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loggers, "video_summaries_available", lambda: True)  # even where TensorBoard could
    logger = _RecordingMLflow()
    grid = torch.rand(3, 20, 30)
    PictureLogger(_trainer(logger), owner="Test").video("xai/S/heatmaps", torch.rand(1, 2, 3, 8, 8), step=1, grid=grid)
    ((run_id, image, key, step),) = logger.logged
    assert (run_id, key, step) == ("run", "xai/S/heatmaps", 1)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8  # the grid, as the (H, W, 3) array MLflow takes
    with pytest.raises(ValueError, match=r"`frames` must be \(N, T, 3, H, W\).*got shape \(2, 3, 8, 8\)"):
        PictureLogger(_trainer(logger), owner="Test").video("xai/S/heatmaps", torch.rand(2, 3, 8, 8), step=1)

"""ExplanationMonitor on a clip classifier in real Trainers: two validation runs, resume, validate, test, TensorBoard
pictures, bitwise-identical training, clear refusals, DDP; and a torchvision video ResNet (slow)."""

from __future__ import annotations

import glob
import io
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples.video_clips import ClipClassifier, ClipsDataModule
from lightning_xai import ExplanationMonitor, ProbeMonitor
from lightning_xai.explainers import GradCAM, Saliency, Sobol
from lightning_xai.loggers import video_summaries_available
from lightning_xai.metrics import DeletionAUC, MIFLIFFidelity
from tests.helpers.ddp import load_rank_results, run_ddp_script

SCRIPT = Path(__file__).with_name("_video_monitor_ddp_script.py")
STAGES = ["fit", "validate", "test"]


def _monitor(**kwargs: Any) -> ExplanationMonitor:
    return ExplanationMonitor(
        {"Saliency": Saliency(), "GradCAM": GradCAM()},
        metrics=[DeletionAUC(steps=6)],
        probe_size=4,
        class_balanced=True,
        **kwargs,
    )


def _data() -> ClipsDataModule:
    return ClipsDataModule(batch_size=16, train_size=64, val_size=32)


def _trainer(root: Path, callbacks: list, epochs: int = 2, logger: Any = False, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=3,
        deterministic=True,
        **kwargs,
    )


def _events(log_dir: str) -> EventAccumulator:
    files = sorted(glob.glob(str(Path(log_dir) / "events.out.tfevents.*")))
    assert files, "no TensorBoard event file written"
    events = EventAccumulator(log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_clip_monitor_fits_resumes_validates_and_tests(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    monitor = _monitor(stages=STAGES)
    trainer = _trainer(tmp_path, [monitor, checkpoint], logger=logger)
    trainer.fit(ClipClassifier(width=4), datamodule=_data())
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("xai/")}
    for key in ("xai/Saliency/deletion_auc", "xai/GradCAM/deletion_auc_stderr", "xai/GradCAM/drift_probe"):
        assert key in metrics and np.isfinite(metrics[key]), sorted(metrics)
    assert monitor._probe_inputs is not None and monitor._probe_inputs.shape == (4, 1, 6, 16, 16)

    events = _events(logger.log_dir)
    tags = events.Tags()["images"]
    assert {"xai/Saliency/heatmaps", "xai/GradCAM/heatmaps", "xai/GradCAM/deletion_auc_curve"} <= set(tags), tags
    heatmaps = events.Images("xai/GradCAM/heatmaps")
    assert len(heatmaps) == 2  # two validation runs
    encoded = heatmaps[-1].encoded_image_string
    if not video_summaries_available():  # a frame grid: 4 clips along the rows, 6 frames along the columns
        image = Image.open(io.BytesIO(encoded))
        image.save(tmp_path / "gradcam_frame_grid.png")
        assert image.size[0] > 6 * 64 and image.size[1] > 4 * 64

    # resume for a third epoch: the probe comes back from the checkpoint
    resumed = _monitor(stages=STAGES)
    resumed_trainer = _trainer(tmp_path, [resumed], epochs=3, logger=TensorBoardLogger(str(tmp_path), name="tb2"))
    resumed_trainer.fit(ClipClassifier(width=4), datamodule=_data(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert torch.equal(resumed._probe_inputs, monitor._probe_inputs)
    assert "xai/GradCAM/drift_probe" in resumed_trainer.callback_metrics  # the reference maps came back too

    for run in (resumed_trainer.validate, resumed_trainer.test):
        run(resumed_trainer.lightning_module, datamodule=_data(), verbose=False)
        assert np.isfinite(float(resumed_trainer.callback_metrics["xai/Saliency/deletion_auc"]))


def _weights(root: Path, callbacks: list) -> dict[str, torch.Tensor]:
    L.seed_everything(3, verbose=False)
    model = ClipClassifier(width=4)
    _trainer(root, callbacks, enable_checkpointing=False).fit(model, datamodule=_data())
    return {key: value.detach().clone() for key, value in model.state_dict().items()}, torch.rand(4)


def test_training_a_clip_model_is_bitwise_identical_with_and_without_the_monitor(tmp_path: Path) -> None:
    plain, plain_rng = _weights(tmp_path / "a", [])
    monitored, monitored_rng = _weights(tmp_path / "b", [_monitor(max_samples=16)])
    assert plain.keys() == monitored.keys()
    for key, value in plain.items():
        assert torch.equal(value, monitored[key]), key
    assert torch.equal(plain_rng, monitored_rng)  # the global random stream is left as found


def test_image_only_explainers_and_metrics_are_refused_on_clips_by_name(tmp_path: Path) -> None:
    monitor = ExplanationMonitor({"Sobol": Sobol(), "Saliency": Saliency()}, metrics=[MIFLIFFidelity(steps=4)])
    with pytest.raises(
        ValueError, match=r"clips \(B, C, T, H, W\).*explainers \['Sobol'\] and metrics \['MIFLIFFidelity'\]"
    ):
        _trainer(tmp_path, [monitor], epochs=1, enable_checkpointing=False).fit(
            ClipClassifier(width=4), datamodule=_data()
        )
    probes = ProbeMonitor(num_samples=4)
    with pytest.raises(ValueError, match=r"clip batch \(B, C, T, H, W\).*but ProbeMonitor has no spatio-temporal"):
        _trainer(tmp_path, [probes], epochs=1, enable_checkpointing=False).fit(
            ClipClassifier(width=4), datamodule=_data()
        )
    with pytest.raises(ValueError, match=r"but ProbeMonitor has no spatio-temporal"):
        ProbeMonitor(inputs=torch.rand(2, 1, 6, 16, 16), labels=torch.tensor([0, 1]))


def test_image_analyses_are_skipped_for_clips_with_one_warning(tmp_path: Path) -> None:
    region = torch.zeros(16, 16)
    region[:4, :4] = 1
    monitor = _monitor(num_labels=2, max_samples=16, regions={"corner": region})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer(tmp_path, [monitor], enable_checkpointing=False)
        trainer.fit(ClipClassifier(width=4), datamodule=_data())
    skipped = [w for w in caught if "are skipped for clips" in str(w.message)]
    assert len(skipped) == 1, [str(w.message) for w in caught]
    assert "['regions', 'global_maps']" in str(skipped[0].message)
    keys = set(trainer.callback_metrics)
    assert "xai/GradCAM/deletion_auc" in keys and "xai/GradCAM/drift_probe" in keys
    assert not any("relevance_mass" in key or "global" in key for key in keys), sorted(keys)


@pytest.mark.slow  # ~20 s; the sharded clip DeletionAUC runs over 2 gloo processes in the default suite
@pytest.mark.ddp
def test_clip_monitor_under_ddp_logs_the_same_synchronised_values_on_every_rank(tmp_path: Path) -> None:
    result = run_ddp_script(SCRIPT, tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = load_rank_results(tmp_path)
    assert {"xai/GradCAM/deletion_auc", "xai/Saliency/deletion_auc", "xai/Saliency/drift_probe"} <= rank0[
        "metrics"
    ].keys()
    assert rank0["metrics"] == rank1["metrics"]
    assert rank0["count"] == rank1["count"] == 2 * 16  # 16 clips per rank and epoch, gathered from both ranks
    for key, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_video_resnet_gradcam_default_layer_and_saliency(name: str) -> None:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models.video, name)(weights=None).eval()
    clip = torch.rand(1, 3, 4, 32, 32)
    target = model(clip).argmax(dim=1)  # the predicted class (a random class of an untrained net can be all-negative)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    from lightning_xai._layers import default_layer_name

    assert default_layer_name(model, clip) == "layer4"
    cam = GradCAM()(model, clip, target)
    saliency = Saliency()(model, clip, target)
    assert cam.shape == saliency.shape == (1, 1, 4, 32, 32)
    assert bool(torch.isfinite(cam).all()) and float(cam.max()) > 0 and float(saliency.max()) > 0
    assert all(parameter.grad is None for parameter in model.parameters())
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match=r"spatio-temporal output|outputs a 4-D map"):
        GradCAM(layer="fc")(model, clip, target)


def test_where_moviepy_is_the_monitor_writes_a_video_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from lightning_xai import loggers

    calls: list[tuple[str, torch.Tensor, int, int]] = []
    monkeypatch.setattr(loggers, "video_summaries_available", lambda: True)
    monkeypatch.setattr(
        SummaryWriter,
        "add_video",
        lambda self, tag, frames, global_step, fps: calls.append((tag, frames, global_step, fps)),
    )
    trainer = _trainer(tmp_path, [_monitor()], epochs=1, logger=TensorBoardLogger(str(tmp_path), name="tb"))
    trainer.fit(ClipClassifier(width=4), datamodule=_data())
    assert sorted(tag for tag, *_ in calls) == ["xai/GradCAM/heatmaps", "xai/Saliency/heatmaps"]
    for _, frames, step, fps in calls:
        assert frames.shape == (4, 6, 3, 64, 64) and step == trainer.global_step and fps == 4  # 16 px frames x 4
        assert float(frames.min()) >= 0 and float(frames.max()) <= 1
    assert "xai/GradCAM/heatmaps" not in _events(trainer.logger.log_dir).Tags()["images"]  # no frame grid as well


@pytest.mark.slow
def test_the_example_trains_and_its_maps_find_the_flash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from examples import video_clips
    from examples.video_clips import make_clips

    pictures = tmp_path / "pictures"
    monkeypatch.setattr(sys, "argv", ["video_clips.py", "--logdir", str(tmp_path), "--save-pictures", str(pictures)])
    video_clips.main()
    printed = capsys.readouterr().out
    (accuracy,) = [line.split()[-1] for line in printed.splitlines() if line.startswith("  val/acc ")]
    assert float(accuracy) >= 0.95
    for name in ("Saliency_heatmaps", "GradCAM_heatmaps", "GradCAM_deletion_auc_curve"):
        assert np.asarray(Image.open(pictures / f"{name}.png").convert("RGB")).std() > 10, name

    L.seed_everything(0, verbose=False)  # the same run in process, to explain clips whose flash we know
    model = ClipClassifier()
    L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    ).fit(model, datamodule=ClipsDataModule())
    clips, labels, flashes = make_clips(64, seed=5)
    clips, flashes = clips[labels == 1][:16], flashes[labels == 1][:16]
    target = torch.ones(16, dtype=torch.long)
    for explainer in (GradCAM(), Saliency()):
        mass = explainer(model.eval(), clips, target).clamp(min=0)[:, 0]
        share = ((mass * flashes[:, 0]).flatten(1).sum(1) / mass.flatten(1).sum(1)).mean()
        assert float(share) > 0.15, (explainer.name, float(share))  # the flash is 1 % of the voxels
    frame_of_flash = flashes[:, 0].sum(dim=(2, 3)).argmax(dim=1)
    cam = GradCAM()(model, clips, target)[:, 0]
    assert bool((cam.sum(dim=(2, 3)).argmax(dim=1) == frame_of_flash).all())  # Grad-CAM's heaviest frame is the flash's


@pytest.mark.slow
def test_torchvision_video_swin_gradcam_reads_its_channels_last_layer() -> None:
    import torch.nn.functional as F
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.video.swin3d_t(weights=None).eval()
    clip = torch.rand(1, 3, 4, 64, 64)
    target = model(clip).argmax(dim=1)
    reference = torchvision.models.video.swin3d_t(weights=None).eval()  # a copy: .grad may be written there
    reference.load_state_dict(model.state_dict())
    stored: dict[str, torch.Tensor] = {}
    layer = dict(reference.named_modules())["features.6.1.norm1"]  # the last block's first norm, (B, t, h, w, D)
    handle = layer.register_forward_hook(lambda _m, _a, output: stored.__setitem__("a", output))
    try:
        (gradient,) = torch.autograd.grad(reference(clip)[0, target].sum(), stored["a"])
    finally:
        handle.remove()
    activation, gradient = stored["a"].detach().permute(0, 4, 1, 2, 3), gradient.permute(0, 4, 1, 2, 3)
    assert activation.shape[1] == 768  # the channels, once the layout is read as channels-last
    cam = torch.relu((gradient.mean(dim=(2, 3, 4), keepdim=True) * activation).sum(dim=1, keepdim=True))
    expected = F.interpolate(cam, size=(4, 64, 64), mode="trilinear", align_corners=False)
    torch.testing.assert_close(GradCAM()(model, clip, target), expected, rtol=1e-4, atol=1e-6)

"""The guidance losses inside a real training_step: DDP, gradient accumulation, bf16-mixed, validation."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_xai.guidance import GradCAMGuidance, RightForTheRightReasons
from tests.integration._guidance_ddp_script import GuidedModule, forbidden_region, guided_data

SCRIPT = Path(__file__).with_name("_guidance_ddp_script.py")


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def _manual_fit(model: GuidedModule, batches: list, accumulate: int) -> GuidedModule:
    """The same training written as a plain PyTorch loop: the reference for Lightning's accumulation."""
    optimizer = torch.optim.SGD(model.parameters(), lr=model.lr)
    for index, (x, y, forbidden) in enumerate(batches):
        penalty = model.rrr(model, x, forbidden) + (
            model.gradcam(model, x, forbidden, y) if model.gradcam.weight else 0
        )
        loss = F.cross_entropy(model(x), y) + penalty
        (loss / accumulate).backward()
        if (index + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
    return model


@pytest.mark.parametrize("gradcam_weight", [0.0, 1.0])
def test_gradient_accumulation_matches_a_plain_loop(tmp_path: Path, gradcam_weight: float) -> None:
    data = guided_data(16)
    model = GuidedModule(gradcam_weight=gradcam_weight)
    reference = _manual_fit(copy.deepcopy(model), list(DataLoader(data, batch_size=4)), accumulate=2)
    _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2).fit(model, DataLoader(data, batch_size=4))
    initial = GuidedModule(gradcam_weight=gradcam_weight)
    for (name, got), expected, before in zip(
        model.state_dict().items(), reference.state_dict().values(), initial.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(got, before), f"{name} did not train"
    assert all(p > 0 for p in model.penalties)


def test_without_accumulation_the_penalty_changes_the_weights(tmp_path: Path) -> None:
    data = DataLoader(guided_data(16), batch_size=4)
    guided, plain = GuidedModule(rrr_weight=10.0), GuidedModule(rrr_weight=0.0)
    _trainer(tmp_path, max_epochs=1).fit(guided, data)
    _trainer(tmp_path, max_epochs=1).fit(plain, data)
    reference = _manual_fit(GuidedModule(rrr_weight=10.0), list(data), accumulate=1)
    for got, expected in zip(guided.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(guided.net[0].weight, plain.net[0].weight)
    assert plain.penalties == [0.0] * 4


def test_bf16_mixed_on_cpu(tmp_path: Path) -> None:
    data = DataLoader(guided_data(16), batch_size=4)
    mixed, full = GuidedModule(gradcam_weight=1.0), GuidedModule(gradcam_weight=1.0)
    trainer = _trainer(tmp_path, max_epochs=1, precision="bf16-mixed", limit_val_batches=1)
    trainer.fit(mixed, data, DataLoader(guided_data(4), batch_size=4))
    _trainer(tmp_path, max_epochs=1).fit(full, data)
    assert set(mixed.output_dtypes) == {torch.bfloat16}  # autocast was on in training_step
    assert all(torch.isfinite(p).all() for p in mixed.parameters())
    # the penalty is computed in float32 from bf16 activations: close to the float32 run's, step by step
    torch.testing.assert_close(torch.tensor(mixed.penalties), torch.tensor(full.penalties), rtol=0.1, atol=1e-3)
    for got, expected in zip(mixed.parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0.05, atol=0.02)
    assert torch.isfinite(trainer.callback_metrics["val/rrr"])


def test_validation_logs_the_penalty_under_inference_mode(tmp_path: Path) -> None:
    model = GuidedModule()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, DataLoader(guided_data(8), batch_size=4), DataLoader(guided_data(8, seed=1), batch_size=4))
    x, _, forbidden = guided_data(8, seed=1).tensors
    expected = torch.stack([model.rrr(model.eval(), x[i : i + 4], forbidden[i : i + 4]) for i in (0, 4)]).mean()
    torch.testing.assert_close(trainer.callback_metrics["val/rrr"], expected.detach(), rtol=1e-5, atol=1e-8)


def test_a_ddp_wrapper_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        module = GuidedModule().net
        wrapped = torch.nn.parallel.DistributedDataParallel(module)
        x, forbidden = torch.randn(2, 1, 8, 8), forbidden_region()
        for penalty in (RightForTheRightReasons(), GradCAMGuidance()):
            with pytest.raises(TypeError, match=r"DistributedDataParallel wrapper as `model`; pass the module inside"):
                penalty(wrapped, x, forbidden)
        assert RightForTheRightReasons()(wrapped.module, x, forbidden) > 0
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_fit_with_guidance_ranks_agree(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    initial = GuidedModule().state_dict()
    for key, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][key]), key
        assert not torch.equal(value, initial[key]), f"{key} did not train"
    # each rank saw its own half of the data: different penalties, the same synchronised weights
    assert len(rank0["penalties"]) == len(rank1["penalties"]) == 8 and rank0["penalties"] != rank1["penalties"]
    assert all(p > 0 for p in rank0["penalties"] + rank1["penalties"])
    assert rank0["val_rrr"] == rank1["val_rrr"] > 0


def test_resume_validate_and_test_with_the_penalty(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    train = DataLoader(guided_data(16), batch_size=4)
    val = DataLoader(guided_data(8, seed=1), batch_size=4)
    straight = GuidedModule(gradcam_weight=1.0)
    _trainer(tmp_path / "a", max_epochs=2).fit(straight, train, val)

    first = GuidedModule(gradcam_weight=1.0)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    L.Trainer(
        accelerator="cpu",
        logger=False,
        max_epochs=1,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(first, train, val)
    resumed = GuidedModule(gradcam_weight=1.0)
    trainer = _trainer(tmp_path / "b", max_epochs=2)
    trainer.fit(resumed, train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)
    for metrics in (trainer.validate(resumed, val, verbose=False), trainer.validate(resumed, val, verbose=False)):
        assert metrics[0]["val/rrr"] > 0
    resumed.test_step = resumed.validation_step  # the same logging under trainer.test (inference mode)
    assert trainer.test(resumed, val, verbose=False)[0]["val/rrr"] == pytest.approx(metrics[0]["val/rrr"])

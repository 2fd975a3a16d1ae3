"""A LightningModule trained with both guidance penalties; run as a 2-process CPU DDP script by the tests.

Usage: ``python _guidance_ddp_script.py OUT_DIR``. Lightning's launcher re-executes this script for rank 1. Each
rank saves its final weights, the penalties it logged and its rank to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lightning_xai.guidance import GradCAMGuidance, RightForTheRightReasons

SIZE = 8


def forbidden_region() -> Tensor:
    """(H, W): the left half of the image must not matter."""
    region = torch.zeros(SIZE, SIZE)
    region[:, : SIZE // 2] = 1
    return region


def guided_data(samples: int = 32, seed: int = 0) -> TensorDataset:
    """Images ``(N, 1, 8, 8)``, labels ``(N,)`` in 0..2 and per-sample forbidden masks ``(N, 1, 8, 8)``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(samples, 1, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, 3, (samples,), generator=generator)
    images[:, :, :, : SIZE // 2] += labels.view(-1, 1, 1, 1).float()  # a shortcut in the forbidden half
    forbidden = forbidden_region().expand(samples, 1, SIZE, SIZE).clone()
    return TensorDataset(images, labels, forbidden)


class GuidedModule(L.LightningModule):
    """A tiny CNN (no BatchNorm, no dropout: exact references); its loss adds RRR and, optionally, Grad-CAM guidance."""

    def __init__(self, rrr_weight: float = 10.0, gradcam_weight: float = 0.0, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        )
        self.rrr = RightForTheRightReasons(weight=rrr_weight)
        self.gradcam = GradCAMGuidance(layer="net.2", weight=gradcam_weight)
        self.lr = lr
        self.penalties: list[float] = []
        self.output_dtypes: list[torch.dtype] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, forbidden = batch
        logits = self(x)
        self.output_dtypes.append(logits.dtype)
        penalty = self.rrr(self, x, forbidden)
        if self.gradcam.weight > 0:
            penalty = penalty + self.gradcam(self, x, forbidden, y)
        self.penalties.append(float(penalty.detach()))
        self.log("train/penalty", penalty)
        return F.cross_entropy(logits, y) + penalty

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, _, forbidden = batch
        self.log("val/rrr", self.rrr(self, x, forbidden), sync_dist=True)  # inference mode: the value, detached

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        default_root_dir=str(out_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accumulate_grad_batches=2,
    )
    model = GuidedModule(gradcam_weight=1.0)
    loader = DataLoader(guided_data(), batch_size=4)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=DataLoader(guided_data(8, seed=1), batch_size=4))
    torch.save(
        {
            "rank": trainer.global_rank,
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "penalties": model.penalties,
            "val_rrr": float(trainer.callback_metrics["val/rrr"]),
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

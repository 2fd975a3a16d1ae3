"""A LightningModule that logs a scripted metric series: the gate's tests drive it, epoch by epoch."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

KEY = "xai/GradCAM/deletion_auc"


class ScriptedMetricModule(LightningModule):
    """Logs ``values[epoch]`` under ``key`` (and ``stderrs[epoch]`` under ``<key>_stderr``) at each validation end.

    Args:
        values: one value per epoch, or one such list per rank (``values[rank][epoch]``) for DDP runs; ``None`` logs
            nothing that epoch (a monitor off its schedule).
        stderrs: standard errors logged beside the values, or None.
        key: the logged key.
        sanity_value: what to log during the sanity check (nothing when None).
        sync_dist: reduce the logged value over ranks (mean), as a synchronised metric would be.
    """

    def __init__(
        self,
        values: list[float | None] | list[list[float]],
        stderrs: list[float] | None = None,
        key: str = KEY,
        sanity_value: float | None = None,
        sync_dist: bool = False,
    ) -> None:
        super().__init__()
        self.values, self.stderrs, self.key = values, stderrs, key
        self.sanity_value, self.sync_dist = sanity_value, sync_dist
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.mse_loss(self.layer(inputs), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            if self.sanity_value is not None:
                self.log(self.key, self.sanity_value)
            return
        series = self.values[self.global_rank] if isinstance(self.values[0], list) else self.values
        if series[self.current_epoch] is None:
            return
        self.log(self.key, series[self.current_epoch], sync_dist=self.sync_dist)
        if self.stderrs is not None:
            self.log(f"{self.key}_stderr", self.stderrs[self.current_epoch], sync_dist=self.sync_dist)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(8, 2, generator=generator), torch.randn(8, 1, generator=generator))
        return DataLoader(data, batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return self.train_dataloader()

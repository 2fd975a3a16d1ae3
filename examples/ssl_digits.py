"""Train a tiny SimCLR-style embedding model on scikit-learn's digits, with lightning_xai explaining its similarity.

Two random augmentations of each image are pulled together by the NT-Xent loss (Chen et al., SimCLR, 2020);
a SimilarityMonitor explains, on a fixed probe of augmented pairs, which pixels of each view the similarity of
the pair rests on, and scores those maps with the similarity deletion and insertion AUCs. Runs on the CPU in
about a minute and writes TensorBoard logs to ./runs:

    python examples/ssl_digits.py
    tensorboard --logdir runs

Nothing is downloaded: the 1,797 8x8 digit images ship with scikit-learn.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from examples._common import example_parser, train_and_report
    from examples.digits import DigitsDataModule
except ImportError:  # run as a script from examples/ (python ssl_digits.py)
    from _common import example_parser, train_and_report  # type: ignore[no-redef]
    from digits import DigitsDataModule  # type: ignore[no-redef]


def augment(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One random view of each image ``(N, C, H, W)``: a small rotation, scaling and shift, plus a little noise.

    Randomness comes from ``generator`` (the monitor's seeded one) or, when None, the global stream (training).
    The digits are standardised to ``[-1, 1]`` with -1 the background, which fills what the warp uncovers.
    """
    count = images.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    angle, scale = uniform(-math.pi / 12, math.pi / 12), uniform(0.85, 1.15)
    shift_x, shift_y = uniform(-0.15, 0.15), uniform(-0.15, 0.15)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    warped = F.grid_sample(images + 1, grid, align_corners=False, padding_mode="zeros") - 1
    noise = 0.1 * torch.randn(images.shape, generator=generator).to(images)
    return (warped + noise).clamp(-1, 1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """SimCLR's normalised temperature-scaled cross entropy of two batches of embeddings ``(N, D)``."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    count = z1.shape[0]
    positives = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(z.device)
    return F.cross_entropy(logits, positives)


class SimCLRDigits(L.LightningModule):
    """A small CNN encoder and a projection head; ``forward`` returns the projection ``(B, dim)``, the embedding.

    The last convolution, ``encoder.4``, is Interaction-CAM's default layer.
    """

    def __init__(self, width: int = 16, dim: int = 32, lr: float = 3e-3, temperature: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.projection = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.ReLU(), nn.Linear(2 * width, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.encoder(x))

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, _ = batch
        z1, z2 = self(augment(images)), self(augment(images))
        loss = nt_xent(z1, z2, self.hparams.temperature)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def default_monitor(**kwargs: Any) -> Any:
    """The monitor of the README: three pair explainers and both similarity metrics on 16 augmented pairs.

    Occlusion and deletion paint the background value (-1), so a removed pixel carries no stroke.
    """
    from lightning_xai import SimilarityMonitor
    from lightning_xai.explainers import ConditionalOcclusion, InteractionCAM, PairwiseOcclusion
    from lightning_xai.metrics import SimilarityDeletionAUC, SimilarityInsertionAUC

    background = -1.0  # the digits' background after standardisation: what deleting a pixel should leave
    return SimilarityMonitor(
        augment=augment,
        explainers=[
            ConditionalOcclusion(window=4, stride=2, baseline=background),
            PairwiseOcclusion(window=4, stride=2, baseline=background),
            InteractionCAM(),
        ],
        metrics=[SimilarityDeletionAUC(steps=16, baseline=background), SimilarityInsertionAUC(steps=16)],
        num_pairs=16,
        heatmap_pairs=6,
        **kwargs,
    )


def main() -> None:
    args = example_parser(__doc__, epochs=5).parse_args()
    train_and_report(
        args, "ssl_digits", SimCLRDigits, lambda: DigitsDataModule(seed=args.seed), lambda: [default_monitor()]
    )


if __name__ == "__main__":
    main()

"""SimilarityMonitor: explain what an embedding model's similarity of two views rests on, every few epochs."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_xai._checks import check_bool, check_choice, check_image_batch, check_positive_int
from lightning_xai._model_state import explanation_mode, preserved_global_rng
from lightning_xai._typing import ForwardFn
from lightning_xai.callbacks._evaluation import BatchTransform, EvaluationCallback
from lightning_xai.explainers.similarity import ConditionalOcclusion, InteractionCAM, PairExplainer, check_pair, embed
from lightning_xai.functional._common import local_generator
from lightning_xai.loggers import PictureLogger, PictureLoggerNotice
from lightning_xai.metrics.similarity import SimilarityDeletionAUC, SimilarityInsertionAUC
from lightning_xai.visualize import heatmap_grid

#: ``augment(images (N, C, H, W) on the CPU, generator) -> (N, C, H, W)``: one random view of each image.
Augment = Callable[[Tensor, torch.Generator], Tensor]
SIMILARITY_METRICS: tuple[str, ...] = ("similarity_deletion_auc", "similarity_insertion_auc")


class SimilarityMonitor(EvaluationCallback):
    r"""Monitor an embedding model (self-supervised, metric learning): explain the similarity of pairs of views.

    A fixed probe of pairs is built once: ``num_pairs`` images (``inputs``, or the first images of the first
    validation dataloader, collected on the first monitored validation epoch) and two views of each,
    ``x1 = augment(images, g)`` then ``x2 = augment(images, g)`` with ``g`` a local ``torch.Generator`` seeded
    with ``seed`` (inside a guard that restores the global RNG, so training draws the same numbers with and
    without the monitor, even if ``augment`` reads the global stream). The pairs are kept in the ``state_dict``,
    so a resumed run explains the same pairs. On every monitored epoch each pair explainer
    (:class:`~lightning_xai.explainers.PairExplainer`) explains the pairs, the similarity deletion and insertion
    metrics (:class:`~lightning_xai.metrics.SimilarityDeletionAUC`,
    :class:`~lightning_xai.metrics.SimilarityInsertionAUC`) score its maps, and the pair heatmaps are drawn. The
    model is left as found (eval mode, no parameter ``.grad``, flags and the global RNG restored;
    :func:`~lightning_xai._model_state.explanation_mode`).

    The model must return embeddings ``(B, D)`` (or pass ``forward_fn``). Under DDP each rank builds its probe
    from its own validation batches; the metrics' states are synchronised (``"cat"``/``"sum"``), so the logged
    numbers are over every rank's pairs, and every rank logs the same keys (a failure on one rank skips the
    explainer on all, agreed with ``trainer.strategy.reduce_boolean_decision``).

    Logged keys (scalars through ``pl_module.log`` with ``sync_dist=True``, so ``trainer.callback_metrics``,
    ``EarlyStopping`` and ``ModelCheckpoint`` see them; images to every ``TensorBoardLogger`` (and W&B, MLflow) on
    global zero through :class:`~lightning_xai.loggers.PictureLogger`):

    * ``xai/similarity/pair_similarity`` (scalar): mean ``cos(f(x1), f(x2))`` over the probe (higher: the model
      is more invariant to ``augment``).
    * ``xai/similarity/<explainer>/similarity_deletion_auc`` and ``..._stderr`` (scalars; lower is better).
    * ``xai/similarity/<explainer>/similarity_insertion_auc`` and ``..._stderr`` (scalars; higher is better).
    * ``xai/similarity/<explainer>/pair_heatmaps`` (image): one pair per row, ``x1 | its map | x2 | its map``.

    Args:
        augment: ``augment(images, generator) -> views``, images ``(N, C, H, W)`` on the CPU; draw randomness
            from ``generator`` (``torch.rand(..., generator=generator)``) for reproducible views.
        explainers: pair explainers, a list (keys: their class names) or a ``{name: explainer}`` mapping; default
            ``ConditionalOcclusion()`` and ``InteractionCAM()``.
        metrics: any of ``"similarity_deletion_auc"`` and ``"similarity_insertion_auc"`` (made with ``steps`` and
            ``batch_size``), or configured :class:`~lightning_xai.metrics.SimilarityDeletionAUC` and
            :class:`~lightning_xai.metrics.SimilarityInsertionAUC` instances (copied for each explainer), for
            instance with the baseline that removes the evidence of your inputs (their background value).
        steps: steps of the deletion and insertion curves of metrics given by name.
        batch_size: perturbed images per forward pass of metrics given by name, or ``"auto"``.
        num_pairs: size of the probe collected from the validation dataloader.
        inputs: the probe's images ``(N, C, H, W)`` instead of collected ones.
        seed: seed of the views' generator.
        every_n_epochs: inside ``fit``, run on every ``n``-th epoch that validates, starting with the first.
        stages: in which trainer functions to run: any of ``"fit"``, ``"validate"``, ``"test"``.
        batch_transform: ``batch -> (inputs, labels)``; the default handles tensors, tuples and dicts.
        forward_fn: ``(module, inputs) -> embeddings`` when ``module(inputs)`` does not return them.
        log_heatmaps: whether to draw and log the pair heatmaps.
        heatmap_pairs: how many pairs the heatmap grid shows.
        on_error: ``"raise"`` to fail the run when an explainer or metric fails, ``"warn"`` to skip it this epoch.

    Example:
        >>> import torch
        >>> flip = lambda images, generator: torch.where(
        ...     torch.rand(len(images), 1, 1, 1, generator=generator) < 0.5, images, images.flip(-1))
        >>> monitor = SimilarityMonitor(augment=flip, num_pairs=8)
        >>> sorted(monitor.explainers)
        ['ConditionalOcclusion', 'InteractionCAM']
    """

    def __init__(
        self,
        augment: Augment,
        explainers: Sequence[PairExplainer] | Mapping[str, PairExplainer] | None = None,
        metrics: Sequence[str | SimilarityDeletionAUC | SimilarityInsertionAUC] = SIMILARITY_METRICS,
        steps: int = 20,
        batch_size: int | Literal["auto"] = "auto",
        num_pairs: int = 16,
        inputs: Tensor | None = None,
        seed: int = 0,
        every_n_epochs: int = 1,
        stages: Sequence[str] = ("fit",),
        batch_transform: BatchTransform | None = None,
        forward_fn: ForwardFn | None = None,
        log_heatmaps: bool = True,
        heatmap_pairs: int = 8,
        on_error: Literal["raise", "warn"] = "raise",
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            stages=stages,
            batch_transform=batch_transform,
            forward_fn=forward_fn,
            on_error=on_error,
        )
        if not callable(augment):
            raise TypeError(
                f"`augment` must be a callable (images (N, C, H, W), generator) -> views, got {type(augment).__name__}."
            )
        if explainers is None:
            explainers = [ConditionalOcclusion(), InteractionCAM()]
        given = list(explainers.values()) if isinstance(explainers, Mapping) else list(explainers)
        if not given or not all(isinstance(e, PairExplainer) for e in given):
            got = [type(e).__name__ for e in given]
            raise TypeError(
                "`explainers` must be a non-empty list or mapping of PairExplainer (ConditionalOcclusion, "
                f"PairwiseOcclusion, InteractionCAM, ...), got {got}."
            )
        named = dict(explainers) if isinstance(explainers, Mapping) else {e.name: e for e in given}
        if isinstance(metrics, str) or not isinstance(metrics, Sequence):
            raise TypeError(f"`metrics` must be a list drawn from {SIMILARITY_METRICS}, got {metrics!r}.")
        for metric in metrics:
            if not isinstance(metric, (SimilarityDeletionAUC, SimilarityInsertionAUC)):
                check_choice(metric, "metrics", SIMILARITY_METRICS)
        check_positive_int(steps, "steps")
        check_positive_int(num_pairs, "num_pairs")
        check_positive_int(seed, "seed", minimum=0)
        check_positive_int(heatmap_pairs, "heatmap_pairs")
        check_bool(log_heatmaps, "log_heatmaps")
        if inputs is not None:
            check_image_batch(inputs, "inputs")
        self.augment = augment
        self.explainers: dict[str, PairExplainer] = named
        self.metric_specs = list(metrics)
        self.steps = steps
        self.batch_size = batch_size
        self.num_pairs = num_pairs
        self.seed = seed
        self.log_heatmaps = log_heatmaps
        self.heatmap_pairs = heatmap_pairs
        self.metrics = {name: self._make_metrics(batch_size) for name in named}
        self._images: Tensor | None = None if inputs is None else inputs.detach().cpu().clone()
        self._pairs: tuple[Tensor, Tensor] | None = None
        self._pending: list[Tensor] = []
        self._notice = PictureLoggerNotice(type(self).__name__)

    def _make_metrics(self, batch_size: int | Literal["auto"]) -> list[SimilarityDeletionAUC | SimilarityInsertionAUC]:
        made: list[SimilarityDeletionAUC | SimilarityInsertionAUC] = []
        for spec in self.metric_specs:
            if not isinstance(spec, str):
                made.append(copy.deepcopy(spec))
            elif spec == "similarity_deletion_auc":
                made.append(SimilarityDeletionAUC(steps=self.steps, batch_size=batch_size))
            else:
                made.append(SimilarityInsertionAUC(steps=self.steps, batch_size=batch_size))
        names = [metric.name for metric in made]
        if len(set(names)) != len(names):
            raise ValueError(f"`metrics` names a metric twice ({names}); each logs under its own key, give it once.")
        return made

    def __repr__(self) -> str:
        parts = [
            f"explainers={list(self.explainers.values())!r}",
            f"metrics={[m if isinstance(m, str) else m.name for m in self.metric_specs]!r}",
            f"num_pairs={self.num_pairs}",
            f"seed={self.seed}",
            f"every_n_epochs={self.every_n_epochs}",
            f"stages={list(self.stages)!r}",
        ]
        return f"{type(self).__name__}({', '.join(parts)})"

    @property
    def state_key(self) -> str:
        """Distinguishes monitors with different explainers or seeds in a checkpoint."""
        return self._generate_state_key(explainers=tuple(self.explainers), seed=self.seed)

    # ------------------------------------------------------------------ the probe of pairs
    def _on_batch_end(self, trainer: Trainer, pl_module: LightningModule, batch: Any, dataloader_idx: int) -> None:
        """Collect the probe's images from the first batches of the first dataloader."""
        if self._images is not None or self._pairs is not None or dataloader_idx != 0 or self._should_skip(trainer):
            return
        have = sum(x.shape[0] for x in self._pending)
        if have >= self.num_pairs:
            return
        inputs, _ = self.batch_transform(batch)
        if not isinstance(inputs, Tensor):
            raise TypeError(f"`batch_transform` must return (inputs: Tensor, labels), got {type(inputs).__name__}.")
        self._pending.append(inputs[: self.num_pairs - have].detach().cpu().clone())

    def make_pairs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The two views ``(x1, x2)`` of ``images``: ``augment`` twice with one generator seeded with ``seed``.

        The global RNG streams are restored afterwards, so training is unaffected whatever ``augment`` draws.
        """
        generator = local_generator(self.seed)
        with preserved_global_rng(), torch.no_grad():
            x1 = self.augment(images.clone(), generator)
            x2 = self.augment(images.clone(), generator)
        check_pair(x1, x2)
        if x1.shape[0] != images.shape[0]:
            raise ValueError(
                f"`augment` must return one view per image: {images.shape[0]} images gave views of shape "
                f"{tuple(x1.shape)}."
            )
        return x1.detach().cpu(), x2.detach().cpu()

    def _probe(self) -> tuple[Tensor, Tensor] | None:
        if self._pairs is None:
            if self._images is None and self._pending:
                self._images = torch.cat(self._pending)
                self._pending = []
            if self._images is not None:
                self._pairs = self.make_pairs(self._images)
        return self._pairs

    # ------------------------------------------------------------------ the work
    def _handle_error(self, name: str, error: Exception) -> None:
        if self.on_error == "raise":
            raise error
        rank_zero_warn(f"SimilarityMonitor: {name} failed and is skipped this epoch: {type(error).__name__}: {error}")

    def _on_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._should_skip(trainer):
            return
        pairs = self._probe()
        # Under DDP a rank without pairs must not leave the others waiting in the synchronised logs: agree first.
        if not trainer.strategy.reduce_boolean_decision(pairs is not None, all=True) or pairs is None:
            rank_zero_warn(
                "SimilarityMonitor: no validation samples were seen (on at least one rank); there are no pairs to "
                "explain this epoch."
            )
            return
        self._notice.maybe_notify(trainer)
        model = self._model(pl_module)
        x1, x2 = (view.to(pl_module.device) for view in pairs)
        pictures = PictureLogger(trainer, owner=type(self).__name__)
        with explanation_mode(model, grad=False):
            e1, e2 = embed(model, torch.cat([x1, x2])).split(x1.shape[0])
            pair_similarity = F.cosine_similarity(e1, e2, dim=1).mean()
        pl_module.log("xai/similarity/pair_similarity", pair_similarity.float(), on_epoch=True, sync_dist=True)
        for name, explainer in self.explainers.items():
            started = time.perf_counter()
            scalars: dict[str, Tensor] = {}
            try:
                maps1, maps2 = explainer.explain_pair(model, x1, x2)
                for metric in self.metrics[name]:
                    metric.to(pl_module.device)
                    metric.reset()
                    metric.update(model, x1, x2, maps1, maps2)
                ok = True
            except Exception as error:
                self._handle_error(f"explainer {name!r}", error)
                ok = False
            # Every rank must take part in the metrics' synchronisation, or none: agree first.
            if not trainer.strategy.reduce_boolean_decision(ok, all=True):
                continue
            for metric in self.metrics[name]:
                for key, value in metric.summary().items():
                    scalars[f"xai/similarity/{name}/{key}"] = value
            for key, value in scalars.items():
                pl_module.log(key, value.float(), on_step=False, on_epoch=True, sync_dist=True)
            if self.log_heatmaps and pictures.active:
                pictures.image(
                    f"xai/similarity/{name}/pair_heatmaps",
                    self.pair_grid(x1, x2, maps1, maps2, name),
                    trainer.global_step,
                )
            rank_zero_info(f"SimilarityMonitor: {name} done in {time.perf_counter() - started:.1f} s.")

    def pair_grid(self, x1: Tensor, x2: Tensor, maps1: Tensor, maps2: Tensor, name: str) -> Tensor:
        """The logged picture: one pair per row, ``x1 | overlay of maps1 | x2 | overlay of maps2``, ``(3, H', W')``."""
        shown = slice(0, self.heatmap_pairs)
        images = torch.stack([x1[shown], x2[shown]], dim=1).flatten(0, 1).detach().cpu()
        maps = torch.stack([maps1[shown], maps2[shown]], dim=1).flatten(0, 1).detach().cpu()
        return heatmap_grid(images, maps, nrow=2, explainer=f"{name} (each row: view 1, view 2)")

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The probe's images and views (on the CPU) and the schedule's count."""
        return {"images": self._images, "pairs": self._pairs, **self._schedule_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe and the schedule (keys missing in old checkpoints are skipped)."""
        self._load_schedule_state(state_dict)
        if state_dict.get("images") is not None:
            self._images = state_dict["images"]
        if state_dict.get("pairs") is not None:
            self._pairs = state_dict["pairs"]


__all__ = ["Augment", "SimilarityMonitor"]

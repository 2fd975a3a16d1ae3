"""``ConceptAnalysis``: each label's top concepts, their drift between epochs and the probe's concept heatmaps.

Concept Relevance Propagation (Achtibat et al., Nature Machine Intelligence 2023) per epoch, inside
:class:`~lightning_xai.ExplanationMonitor`::

    ExplanationMonitor({"LRP": LRP()}, analyses=[ConceptAnalysis(layer="backbone.layer3", num_labels=10)])

The analysis runs its own :class:`~lightning_xai.explainers.ConceptRelevance` on the samples the monitor streams
(it needs the model, the inputs and the target, not the explainer's maps), so it gives the same result under any
explainer it is attached to; attach it to one explainer (it is copied to each) to avoid repeating the work.
"""

from __future__ import annotations

from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from lightning_xai._checks import check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch
from lightning_xai.explainers.concept_relevance import ConceptRelevance, Concepts
from lightning_xai.functional.ranking import spearman_correlation
from lightning_xai.metrics.global_concepts import GlobalConceptRelevance
from lightning_xai.visualize import to_rgb


def concept_table(per_label: Tensor, count: Tensor, top: int, label_names: list[str] | None = None) -> str:
    """A Markdown table of each seen label's ``top`` concepts: channel id and mean relevance.

    Args:
        per_label: mean channel relevance per label ``(L, C)``.
        count: samples per label ``(L,)``; labels with none are left out.
        top: how many concepts per label.
        label_names: display names of the labels, or None for their indices.

    Example:
        >>> print(concept_table(torch.tensor([[0.1, 0.7, 0.2]]), torch.tensor([5]), top=2))
        | label | samples | concept 1 | concept 2 |
        |---|---|---|---|
        | 0 | 5 | ch 1 (0.700) | ch 2 (0.200) |
    """
    top = min(top, per_label.shape[1])
    header = "| label | samples | " + " | ".join(f"concept {i + 1}" for i in range(top)) + " |"
    lines = [header, "|" + "---|" * (top + 2)]
    values, ids = per_label.topk(top, dim=1)
    for label in range(per_label.shape[0]):
        if int(count[label]) == 0:
            continue
        name = label_names[label] if label_names is not None else str(label)
        cells = " | ".join(f"ch {int(i)} ({float(v):.3f})" for i, v in zip(ids[label], values[label], strict=True))
        lines.append(f"| {name} | {int(count[label])} | {cells} |")
    if len(lines) == 2:
        lines.append("| (no samples) | 0 |" + " |" * top)
    return "\n".join(lines)


def concept_grid(inputs: Tensor, concepts: Concepts, targets: Tensor | None = None) -> Tensor:
    """One ``(3, H', W')`` image: a row per sample, its input and its top concepts' conditional heatmaps.

    Each heatmap tile is titled with its channel id and relevance and drawn with a diverging colormap (red:
    evidence for the target, blue: against), symmetric around 0 and scaled per tile.
    """
    samples, k = concepts.ids.shape
    figure, axes = plt.subplots(samples, k + 1, figsize=(1.6 * (k + 1), 1.75 * samples), squeeze=False, dpi=100)
    pictures = to_rgb(inputs.detach().float().cpu()).permute(0, 2, 3, 1).numpy()
    heatmaps = concepts.heatmaps.detach().float().cpu()
    for row in range(samples):
        axes[row, 0].imshow(pictures[row], interpolation="nearest")
        title = "input" if targets is None else f"input, target {int(targets[row])}"
        axes[row, 0].set_title(title, fontsize=7)
        for column in range(k):
            heat = heatmaps[row, column]
            bound = max(float(heat.abs().max()), 1e-12)
            axis = axes[row, column + 1]
            axis.imshow(heat.numpy(), cmap="bwr", vmin=-bound, vmax=bound, interpolation="nearest")
            channel, relevance = int(concepts.ids[row, column]), float(concepts.relevances[row, column])
            axis.set_title(f"ch {channel}\nR={relevance:.3g}", fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout(pad=0.6)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]
    plt.close(figure)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0


class ConceptAnalysis(Analysis):
    """Per epoch, which concepts (channels of ``layer``) each label relies on, and how that ranking drifts.

    Updates on the streamed validation samples: their channel relevances (CRP with the target the monitor
    explains) go into a :class:`~lightning_xai.metrics.GlobalConceptRelevance` grouped by the monitor's aggregation
    labels (``global_labels``). At the end of each monitored epoch it logs, under ``xai/<explainer>/``:

    - ``concepts/top`` (text): a table of each label's ``top_k`` concepts and their mean relevance;
    - ``concepts/heatmaps`` (image): for the first ``grid_samples`` probe images, the input and the conditional
      heatmaps of its ``top_k`` concepts, each tile titled with its channel id;
    - ``concept_drift/<label>`` and ``concept_drift`` (their mean over labels), ``concept_drift_min`` (scalars): the
      Spearman correlation of each label's concept-relevance vector with the previous monitored epoch's (1 = same
      ranking); logged from the second monitored epoch on, for labels seen in both; a gate can watch them. The
      previous epoch's vectors are kept in :meth:`state_dict`, so a resumed run continues the series.

    The probe's target is the one the monitor explained when the context gives it, otherwise the predicted class
    (a single-logit head: index 0).

    Under DDP the relevance sums are synchronised (exact); pass ``num_channels`` if a rank may see no sample.

    It takes the streamed samples only: give the monitor ``max_samples`` (``None`` or ``> 0``; with the default 0 no
    batch is streamed and nothing is logged).

    Args:
        layer: the layer whose channels are the concepts (dotted name or module).
        num_labels: the number of labels ``L``.
        top_k: concepts per label in the table and per probe image in the grid.
        composite: Zennit composite name or ``Composite`` (see :class:`~lightning_xai.explainers.LRP`).
        canonizers: ``"auto"``, a list of Zennit canonizers or ``None``.
        num_channels: the layer's channel count, or None to take it from the first batch.
        normalize: normalise each sample's channel relevances by their absolute sum before averaging.
        grid_samples: how many probe images the heatmap grid shows (0: no grid).
        label_names: display names of the labels in the table.
        composite_kwargs: extra arguments of a named composite.
    """

    name: ClassVar[str] = "concepts"

    def __init__(
        self,
        layer: LayerType,
        num_labels: int,
        top_k: int = 6,
        composite: Any = "epsilon_plus_flat",
        canonizers: Any = "auto",
        num_channels: int | None = None,
        normalize: bool = True,
        grid_samples: int = 4,
        label_names: list[str] | None = None,
        composite_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_positive_int(grid_samples, "grid_samples", minimum=0)
        if label_names is not None and (not isinstance(label_names, (list, tuple)) or len(label_names) != num_labels):
            raise ValueError(f"`label_names` must be a list of {num_labels} names or None, got {label_names!r}.")
        self.explainer = ConceptRelevance(
            layer, top_k=top_k, composite=composite, canonizers=canonizers, composite_kwargs=composite_kwargs
        )
        self.global_concepts = GlobalConceptRelevance(num_labels, num_channels=num_channels, normalize=normalize)
        self.top_k = top_k
        self.grid_samples = grid_samples
        self.label_names = list(label_names) if label_names is not None else None
        self.previous: Tensor | None = None
        self.previous_count: Tensor | None = None

    def metrics(self) -> list[Any]:
        """The per-label relevance sums (synchronised by summation)."""
        return [self.global_concepts]

    def update(self, batch: ExplainedBatch) -> None:
        """Add the channel relevances of one streamed batch to the sums of its aggregation labels."""
        if batch.groups is None:
            return
        relevance = self.explainer.channel_relevance(batch.model, batch.inputs, batch.target)
        self.global_concepts.update(relevance, batch.groups)

    def log(self, context: EpochContext) -> None:
        """Log the table, the drift against the previous monitored epoch and the probe's concept heatmaps."""
        if self.global_concepts.num_channels is None:
            return  # no sample this epoch (on any rank, or the sums could not be synchronised anyway)
        result = self.global_concepts.compute()
        per_label, count = result["per_label"].detach().cpu(), result["count"].detach().cpu()
        context.text("concepts/top", concept_table(per_label, count, self.top_k, self.label_names))
        self._log_drift(context, per_label, count)
        self.previous, self.previous_count = per_label.clone(), count.clone()
        if self.grid_samples and context.pictures.active and context.probe_inputs is not None:
            inputs = context.probe_inputs[: self.grid_samples]
            target = self._probe_target(context, context.model, inputs)
            concepts = self.explainer.concepts(context.model, inputs, target)
            shown = target if isinstance(target, Tensor) else None
            context.image("concepts/heatmaps", concept_grid(inputs, concepts, shown))

    def _log_drift(self, context: EpochContext, per_label: Tensor, count: Tensor) -> None:
        previous, previous_count = self.previous, self.previous_count
        if previous is None or previous_count is None or previous.shape != per_label.shape:
            return
        values: dict[str, Tensor] = {}
        for label in ((count > 0) & (previous_count > 0)).nonzero().flatten().tolist():
            correlation = spearman_correlation(per_label[label], previous[label])
            if bool(torch.isfinite(correlation)):
                name = self.label_names[label] if self.label_names is not None else str(label)
                values[f"concept_drift/{name}"] = correlation
        if values:
            stacked = torch.stack(list(values.values()))
            values["concept_drift"] = stacked.mean()
            values["concept_drift_min"] = stacked.min()
            context.log(values)

    def _probe_target(self, context: EpochContext, model: nn.Module, inputs: Tensor) -> TargetType:
        target = context.probe_target
        if isinstance(target, Tensor):
            return target[: inputs.shape[0]]
        if target is not None:
            return target
        with explanation_mode(model, grad=False):
            outputs = model(inputs)
        if outputs.ndim != 2:
            raise ValueError(
                "ConceptAnalysis needs the probe's target or logits (P, num_classes), got outputs "
                f"{tuple(outputs.shape)}."
            )
        return outputs.argmax(dim=1)

    def state_dict(self) -> dict[str, Any]:
        """The previous monitored epoch's per-label vectors and counts (for the drift after a resume)."""
        return {"previous": self.previous, "previous_count": self.previous_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.previous = state_dict.get("previous")
        self.previous_count = state_dict.get("previous_count")

    def __repr__(self) -> str:
        return (
            f"ConceptAnalysis(layer={self.explainer.layer!r}, num_labels={self.global_concepts.num_labels}, "
            f"top_k={self.top_k})"
        )

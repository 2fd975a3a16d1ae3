"""Randomisation sanity checks: does an explanation depend on the model's weights and on the class explained?

* :func:`model_randomisation`: the model parameter randomisation test (MPRT) of Adebayo et al., "Sanity Checks
  for Saliency Maps", NeurIPS 2018 (arXiv:1810.03292). The layers of a deep copy of the model are re-initialised
  one after the other, from the output down (``"cascading"``) or one at a time with the others trained
  (``"independent"``), the copy is re-explained after each step and the map compared with the trained model's by
  Spearman rank correlation or SSIM. An explanation that depends on the weights loses its similarity as layers are
  randomised; one that does not (an edge detector, a constant) keeps similarity 1 and fails the check.
* :func:`random_logit`: Sixt et al., "When Explanations Lie: Why Many Modified BP Attributions Fail", ICML 2020
  (arXiv:1912.09818): the similarity of the map of the target class with that of a random other class.

For both, **lower similarity is better** (the explanation depends more on the model / on the class).

Conventions (Quantus 0.6, ``quantus.MPRT`` and ``quantus.RandomLogit``, is the reference the tests match):

* which layers: every module with a ``reset_parameters`` method (``Conv2d``, ``Linear``, ``BatchNorm``, ...), in
  ``named_modules()`` order, as Quantus; a step re-initialises its module(s) with ``reset_parameters()`` after
  ``torch.manual_seed(seed)`` in a restored global RNG (Quantus seeds ``seed + 1``: our ``seed=s`` is its
  ``seed=s - 1``). ``layers=`` names the steps instead (a named block re-initialises everything under it).
* the reference map is the trained model's (the ``attributions`` given, else recomputed), and Quantus'
  ``"original"`` entry (the trained model compared with itself) is not reported.
* ``abs`` (MPRT default True as Quantus; RandomLogit False as Quantus); no normalisation (Quantus normalises by
  the maximum by default, which Spearman ignores and which we leave out so SSIM compares the maps as they are).
* Spearman of a constant map is undefined (scipy and Quantus return NaN): two identical maps score 1, a constant
  map against a different one 0.
* SSIM is torchmetrics' 2-D SSIM (Gaussian window 11, sigma 1.5, the window clipped to the map) with Quantus' data
  range, ``max - min`` over both maps of a pair. Quantus' own ``ssim`` runs skimage on the *flattened* maps
  (a 1-D window of 7), which is not reproduced.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from lightning_xai._checks import check_choice, check_image_batch, check_positive_int
from lightning_xai._layers import _root, find_layer
from lightning_xai._model_state import explanation_mode, preserved_global_rng
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import check_class_range, check_target
from lightning_xai._typing import LayerType, TargetType
from lightning_xai.functional._common import local_generator
from lightning_xai.functional.ranking import spearman_correlation
from lightning_xai.functional.sensitivity import ExplainerFn

Similarity = Literal["spearman", "ssim"]
SIMILARITIES: tuple[str, ...] = ("spearman", "ssim")
Order = Literal["cascading", "independent"]
ORDERS: tuple[str, ...] = ("cascading", "independent")


def check_similarity(similarity: object) -> None:
    """Raise unless ``similarity`` is ``"spearman"`` or ``"ssim"``."""
    check_choice(similarity, "similarity", SIMILARITIES)


def _ssim_sigma(sigma: float, side: int) -> tuple[float, int]:
    """``sigma`` and the window half-width ``pad`` (``int(3.5 sigma + 0.5)``), shrunk so ``2 pad < side``."""
    largest = (side - 1) // 2
    if largest < 1:
        raise ValueError(f"SSIM needs maps of at least 3 x 3 pixels, got a smallest side of {side}.")
    if int(3.5 * sigma + 0.5) > largest:
        sigma = (largest + 0.4) / 3.5
    return sigma, int(3.5 * sigma + 0.5)


def map_similarity(a: Tensor, b: Tensor, similarity: Similarity = "spearman", *, sigma: float = 1.5) -> Tensor:
    """Similarity of two batches of maps ``(B, C|1, H, W)``, one value per pair ``(B,)``, float64; 1 = the same.

    ``"spearman"``: rank correlation of the flattened maps (average ranks for ties), in ``[-1, 1]``; identical
    maps score 1 and a constant map against a different one 0 (where scipy returns NaN).

    ``"ssim"``: torchmetrics' SSIM image with a Gaussian window of ``sigma`` (11 pixels for 1.5), averaged over
    the pixels whose window stays inside the map, with the data range ``max - min`` of each pair (1 where both
    maps are one constant): the same number as ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=...)``. For maps under ``2 * 5 + 1`` pixels ``sigma``
    shrinks until the window fits.

    Example:
        >>> maps = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> map_similarity(maps, maps).tolist(), map_similarity(maps, maps, "ssim").tolist()
        ([1.0, 1.0], [1.0, 1.0])
    """
    check_similarity(similarity)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"maps to compare must share one (B, C, H, W) shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    a, b = a.double(), b.to(a.device).double()
    if similarity == "spearman":
        flat_a, flat_b = a.flatten(1), b.flatten(1)
        correlation = spearman_correlation(flat_a, flat_b)
        same = (flat_a == flat_b).all(dim=1)
        fallback = torch.where(same, torch.ones_like(correlation), torch.zeros_like(correlation))
        return torch.where(correlation.isnan(), fallback, correlation)
    pairs = torch.cat([a.flatten(1), b.flatten(1)], dim=1)
    data_range = pairs.amax(dim=1) - pairs.amin(dim=1)
    data_range = torch.where(data_range > 0, data_range, torch.ones_like(data_range)).view(-1, 1, 1, 1)
    sigma, pad = _ssim_sigma(sigma, min(a.shape[-2:]))
    _, image = structural_similarity_index_measure(
        a / data_range, b / data_range, sigma=sigma, data_range=1.0, reduction="none", return_full_image=True
    )
    return torch.as_tensor(image)[..., pad:-pad, pad:-pad].flatten(1).mean(dim=1).double()


def randomisation_steps(model: nn.Module, layers: Sequence[LayerType] | None = None) -> list[tuple[str, list[str]]]:
    """The randomisation steps of ``model`` in its module order: ``[(step name, [module names to reset])]``.

    Args:
        model: the model (names are relative to it, or to the module a ``ForwardWrapper`` wraps).
        layers: None for every module with ``reset_parameters`` (one step each, as Quantus); otherwise dotted names
            or modules, each a step that resets the module, or, for a block without ``reset_parameters``, every
            module under it that has one.

    Example:
        >>> randomisation_steps(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3)))
        [('0', ['0']), ('3', ['3'])]
    """
    root = _root(model)
    names = {module: name for name, module in root.named_modules()}
    order = {name: index for index, name in enumerate(names.values())}

    def resettable(module: nn.Module) -> list[str]:
        return [names[m] for m in module.modules() if callable(getattr(m, "reset_parameters", None)) and m in names]

    if layers is None:
        steps = [(name, [name]) for name in resettable(root)]
        if not steps:
            raise ValueError(
                f"`model` ({type(root).__name__}) has no layer with parameters to randomise (no module with "
                "`reset_parameters`): the randomisation test needs a model with weights."
            )
        return steps
    if isinstance(layers, (str, nn.Module)) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"`layers` must be None or a non-empty sequence of dotted names or modules, got {layers!r}.")
    steps = []
    for layer in layers:
        module = find_layer(root, layer)
        reset = resettable(module)
        if not reset:
            raise ValueError(f"`layers` entry {names[module]!r} has no module with `reset_parameters` to randomise.")
        steps.append((names[module], reset))
    return sorted(steps, key=lambda step: order[step[1][0]])


def _explain(
    explainer: ExplainerFn, model: nn.Module, inputs: Tensor, target: TargetType, batch_size: ChunkSize
) -> Tensor:
    def forward(chunk: Tensor, first: int, stop: int) -> Tensor:
        return explainer(model, chunk, target[first:stop] if isinstance(target, Tensor) else target).detach()

    return score_in_chunks(
        forward,
        lambda first, stop: inputs[first:stop],
        inputs.shape[0],
        batch_size,
        model=model,
        like=inputs,
        purpose=explainer,
    )


def _check_explainer(explainer: object) -> None:
    if not callable(explainer):
        raise TypeError(f"`explainer` must be callable as explainer(model, inputs, target), got {explainer!r}.")


def model_randomisation(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    *,
    order: Order = "cascading",
    similarity: Similarity = "spearman",
    layers: Sequence[LayerType] | None = None,
    abs: bool = True,
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    attributions: Tensor | None = None,
) -> tuple[Tensor, list[str]]:
    """Per-sample, per-step MPRT similarity ``(B, L)`` and the step names; lower is better.

    Step ``k`` of ``"cascading"`` has the top ``k + 1`` steps randomised (the output layer first, so the names run
    from the top down); step ``k`` of ``"independent"`` has only step ``k`` randomised (in the model's order).
    The trained ``model`` is never modified: the steps run on one ``copy.deepcopy`` of it, and the global RNG is
    restored.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``, re-run on the randomised copies.
        model: the trained classifier.
        inputs: images ``(B, C, H, W)``.
        target: class indices ``(B,)`` or a row-wise callable (applied to the randomised model's outputs).
        order: ``"cascading"`` or ``"independent"``.
        similarity: ``"spearman"`` or ``"ssim"`` (see :func:`map_similarity`).
        layers: the steps (see :func:`randomisation_steps`); None for every module with ``reset_parameters``.
        abs: compare the absolute values of the maps (Adebayo et al. and Quantus do).
        batch_size: images explained per call.
        seed: ``torch.manual_seed(seed)`` before each step's ``reset_parameters()``.
        attributions: the trained model's maps ``(B, C|1, H, W)``; ``explainer(model, inputs, target)`` when None.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))
        >>> def edges(model, inputs, target):  # ignores the model
        ...     return (inputs[..., 1:, :] - inputs[..., :-1, :]).abs().sum(1, keepdim=True)[..., :3, :3]
        >>> similarity, steps = model_randomisation(edges, model, torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))
        >>> steps, similarity.tolist()
        (['2', '0'], [[1.0, 1.0], [1.0, 1.0]])
    """
    check_image_batch(inputs, method="model_randomisation")
    check_target(target, inputs.shape[0])
    _check_explainer(explainer)
    check_choice(order, "order", ORDERS)
    check_similarity(similarity)
    if not isinstance(abs, bool):
        raise TypeError(f"`abs` must be True or False, got {abs!r}.")
    check_batch_size(batch_size)
    check_positive_int(seed, "seed", minimum=0)
    steps = randomisation_steps(model, layers)
    if order == "cascading":
        steps = steps[::-1]
    with explanation_mode(model, grad=False):
        outputs = model(inputs)
    if isinstance(target, Tensor):
        check_class_range(outputs, target)
    reference = _explain(explainer, model, inputs, target, batch_size) if attributions is None else attributions
    reference = reference.detach().to(inputs.device)
    if abs:
        reference = reference.abs()
    trained = dict(_root(model).named_modules())
    with preserved_global_rng():
        randomised = copy.deepcopy(model)
        modules = dict(_root(randomised).named_modules())
        similarities = []
        previous: list[str] = []
        for _, names in steps:
            if order == "independent":
                for name in previous:
                    modules[name].load_state_dict(trained[name].state_dict())
            torch.manual_seed(seed)
            with torch.no_grad():
                for name in names:
                    modules[name].reset_parameters()
            previous = names
            maps = _explain(explainer, randomised, inputs, target, batch_size)
            if maps.shape != reference.shape:
                raise ValueError(
                    f"`explainer` returned maps of shape {tuple(maps.shape)} for the randomised model but "
                    f"{tuple(reference.shape)} for the trained one."
                )
            similarities.append(map_similarity(reference, maps.abs() if abs else maps, similarity))
    return torch.stack(similarities, dim=1), [name for name, _ in steps]


def random_other_class(target: Tensor, num_classes: int, seed: int = 0) -> Tensor:
    """One class other than ``target[i]`` per sample, uniformly, from a generator seeded with ``seed``.

    Draw ``i`` of the generator is the index among the ``num_classes - 1`` other classes in increasing order
    (Quantus' ``RandomLogit`` mapping): sample ``i`` of a batch always gets draw ``i``.

    Example:
        >>> off = random_other_class(torch.tensor([0, 1, 2, 2]), num_classes=3, seed=1)
        >>> bool((off != torch.tensor([0, 1, 2, 2])).all())
        True
    """
    generator = local_generator(seed, target.device)
    draws = torch.randint(0, num_classes - 1, target.shape, generator=generator, device=target.device)
    return draws + (draws >= target).long()


def random_logit(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: Tensor,
    *,
    similarity: Similarity = "ssim",
    abs: bool = False,
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    off_target: Tensor | None = None,
    attributions: Tensor | None = None,
) -> Tensor:
    """Per-sample similarity ``(B,)`` of the map of ``target`` with the map of a random other class; lower is better.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``.
        model: the classifier, outputs ``(B, K)`` with ``K >= 2``.
        inputs: images ``(B, C, H, W)``.
        target: class indices ``(B,)`` (a callable has no "other class").
        similarity: ``"ssim"`` (Quantus' default) or ``"spearman"``.
        abs: compare the absolute values of the maps.
        batch_size: images explained per call.
        seed: seed of :func:`random_other_class`.
        off_target: the other classes ``(B,)``, drawn with ``seed`` when None.
        attributions: the maps of ``target``; ``explainer(model, inputs, target)`` when None.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> def weights(model, inputs, target):  # the class's own weights: a class-sensitive map
        ...     return model[1].weight[target].detach().view(-1, 1, 4, 4)
        >>> float(random_logit(weights, model, torch.rand(2, 1, 4, 4), torch.tensor([0, 2])).max()) < 0.9
        True
    """
    check_image_batch(inputs, method="random_logit")
    _check_explainer(explainer)
    if not isinstance(target, Tensor):
        raise TypeError(
            f"`target` must be class indices (B,) for RandomLogit (a callable has no other class), got {target!r}."
        )
    check_target(target, inputs.shape[0])
    check_similarity(similarity)
    check_batch_size(batch_size)
    check_positive_int(seed, "seed", minimum=0)
    with explanation_mode(model, grad=False):
        outputs = model(inputs)
    if not isinstance(outputs, Tensor) or outputs.ndim != 2 or outputs.shape[1] < 2:
        got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(f"RandomLogit needs model outputs (B, num_classes) with num_classes >= 2, got {got}.")
    target = target.to(inputs.device).long()
    check_class_range(outputs, target)
    if off_target is None:
        off_target = random_other_class(target, outputs.shape[1], seed)
    else:
        check_target(off_target, inputs.shape[0], "off_target")
        off_target = off_target.to(inputs.device).long()
        check_class_range(outputs, off_target, "off_target")
    if attributions is None:  # both classes in one pass of chunks
        both = _explain(explainer, model, torch.cat([inputs, inputs]), torch.cat([target, off_target]), batch_size)
        reference, other = both[: inputs.shape[0]], both[inputs.shape[0] :]
    else:
        reference, other = (
            attributions.detach().to(inputs.device),
            _explain(explainer, model, inputs, off_target, batch_size),
        )
    if abs:
        reference, other = reference.abs(), other.abs()
    return map_similarity(reference, other, similarity).to(torch.float32)

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_xai.probes import FillInTheBlanks, center_mask, class_mean_fills, grid_mask, random_patch_mask
from tests.helpers.models import LinearModel, RegionModel, region_mask


# ----------------------------------------------------------------------------- masks against plain loops
def test_center_and_grid_masks_match_plain_loops() -> None:
    height, width = 7, 10
    mask = center_mask(height, width, 3)
    top, left = (height - 3) // 2, (width - 3) // 2
    for i in range(height):
        for j in range(width):
            assert mask[i, j] == (0.0 if top <= i < top + 3 and left <= j < left + 3 else 1.0)
    grid = grid_mask(height, width, 2)
    for i in range(height):
        for j in range(width):
            assert grid[i, j] == (1.0 if (i // 2 + j // 2) % 2 == 0 else 0.0)


def test_random_patch_mask_matches_a_plain_loop_over_the_same_draws() -> None:
    batch, height, width, size, patches = 3, 9, 11, 3, 2
    mask = random_patch_mask(batch, height, width, size, patches, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    tops = torch.randint(0, height - size + 1, (batch, patches, 1), generator=generator)
    lefts = torch.randint(0, width - size + 1, (batch, patches, 1), generator=generator)
    expected = torch.ones(batch, 1, height, width)
    for b in range(batch):
        for p in range(patches):
            top, left = int(tops[b, p, 0]), int(lefts[b, p, 0])
            expected[b, 0, top : top + size, left : left + size] = 0.0
    assert torch.equal(mask, expected)
    assert not torch.equal(mask[0], mask[1])  # one draw per image


# ----------------------------------------------------------------------------- known answers
def test_logit_fill_of_a_linear_model_matches_the_adam_sign_rule() -> None:
    # The logit gradient w.r.t. a blank pixel is W[y] there, constant: Adam moves it by lr * sign(W[y]) per step.
    model = LinearModel(shape=(2, 6, 6), num_classes=3)
    inputs = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 2])
    steps, lr = 6, 0.01
    probe = FillInTheBlanks(mask="center", patch_size=2, steps=steps, lr=lr, objective="logit", init="zeros")
    result = probe(model, inputs, target)
    blank = result["mask"] == 0
    for row in range(2):
        expected = steps * lr * torch.sign(model.weight_map(int(target[row])))
        hole = blank[row].expand(2, -1, -1)
        torch.testing.assert_close(result["filled"][row][hole], expected[hole], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(result["fill"][row][hole], expected[hole], rtol=1e-4, atol=1e-6)
    assert torch.equal(result["filled"][~blank.expand_as(inputs)], inputs[~blank.expand_as(inputs)])
    assert torch.equal(result["fill"][~blank.expand_as(inputs)], torch.zeros_like(inputs)[~blank.expand_as(inputs)])


def test_a_model_that_reads_only_one_region_gets_filled_only_there() -> None:
    model = RegionModel(num_classes=3)  # reads only rows/columns 4..7 of 16x16
    inputs = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 2, 2, 0])
    # Blank the region the model reads: filling raises the target score.
    over_region = FillInTheBlanks(mask=1 - region_mask(), steps=20, lr=0.1, init="mean")(model, inputs, target)
    assert bool((over_region["score_after"] > over_region["score_before"] + 0.1).all())
    # Blank elsewhere: the model is blind there, the gradient is zero and the fill stays at its initial value.
    elsewhere = torch.ones(16, 16)
    elsewhere[10:14, 10:14] = 0.0
    blind = FillInTheBlanks(mask=elsewhere, steps=20, lr=0.1, init="mean")(model, inputs, target)
    assert torch.equal(blind["filled"], blind["masked"])
    torch.testing.assert_close(blind["score_after"], blind["score_before"])
    torch.testing.assert_close(blind["score_before"], blind["score_original"])


# ----------------------------------------------------------------------------- on a trained digits model
@pytest.mark.parametrize("mask", ["center", "random", "grid"])
def test_filling_raises_the_target_score_and_keeps_the_kept_pixels(
    mask: str, digits_model: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    inputs, labels = digits[0][:48], digits[1][:48]
    result = FillInTheBlanks(mask=mask, steps=30, lr=0.1, input_range=(0.0, 1.0))(digits_model, inputs, labels)
    gain = result["score_after"] - result["score_before"]
    assert float((gain > 0).float().mean()) >= 0.9, gain
    assert float(result["score_after"].mean()) > 0.9
    keep = result["mask"].bool().expand_as(inputs)
    assert torch.equal(result["filled"][keep], inputs[keep])  # bit-identical
    assert torch.equal(result["masked"][keep], inputs[keep])
    assert bool((~keep).any()) and bool(keep.any())
    # The reported scores are the model's probabilities of the target (independent forward).
    with torch.no_grad():
        after = digits_model(result["filled"]).softmax(1).gather(1, labels[:, None]).squeeze(1)
        before = digits_model(result["masked"]).softmax(1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(result["score_after"], after)
    torch.testing.assert_close(result["score_before"], before)


def test_class_mean_fills_match_a_per_class_loop(
    digits_model: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    inputs, labels = digits[0][:30], digits[1][:30]
    result = FillInTheBlanks(mask="random", steps=3, patch_size=3, num_patches=2)(digits_model, inputs, labels)
    means = class_mean_fills(result, labels, 12)
    whole = class_mean_fills(result, labels, 12, region_only=False)
    assert means.shape == (12, 1, 8, 8)
    for k in range(12):
        members = (labels == k).nonzero().flatten().tolist()
        if not members:
            assert not means[k].any() and not whole[k].any()
            continue
        torch.testing.assert_close(whole[k], torch.stack([result["filled"][i] for i in members]).mean(0))
        for i in range(8):
            for j in range(8):
                values = [float(result["filled"][m, 0, i, j]) for m in members if result["mask"][m, 0, i, j] == 0]
                expected = sum(values) / len(values) if values else 0.0
                assert abs(float(means[k, 0, i, j]) - expected) < 1e-5


# ----------------------------------------------------------------------------- options
def test_user_masks_chunking_and_callable_targets() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 6, 4))
    inputs = torch.rand(5, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 3, 0])
    per_image = (torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    result = FillInTheBlanks(mask=per_image, steps=4)(model, inputs, target)
    assert torch.equal(result["mask"], per_image)
    shared = FillInTheBlanks(mask=per_image[0, 0], steps=4)(model, inputs, target)
    assert torch.equal(shared["mask"], per_image[0:1].expand(5, -1, -1, -1))
    # Images do not interact: chunks give the same result.
    whole = FillInTheBlanks(mask="random", init="noise", steps=4, seed=7)(model, inputs, target)
    chunked = FillInTheBlanks(mask="random", init="noise", steps=4, seed=7, batch_size=2)(model, inputs, target)
    for key in ("filled", "mask", "score_after"):
        torch.testing.assert_close(whole[key], chunked[key])
    # A callable target is maximised as is.
    scores = FillInTheBlanks(mask="center", steps=10, lr=0.1)(
        model, inputs, lambda outputs: outputs[:, 1] - outputs[:, 2]
    )
    assert bool((scores["score_after"] > scores["score_before"]).all())


def test_initial_fills() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    inputs = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    zeros = FillInTheBlanks(mask="center", init="zeros", steps=1)(model, inputs, torch.tensor([0, 1]))
    mean = FillInTheBlanks(mask="center", init="mean", steps=1)(model, inputs, torch.tensor([0, 1]))
    blank = zeros["mask"] == 0
    assert not zeros["masked"][blank].any()
    keep = center_mask(4, 4, 2).bool()
    for row in range(2):
        assert torch.allclose(mean["masked"][row, 0][~keep], inputs[row, 0][keep].mean().expand(4))


# ----------------------------------------------------------------------------- safety
def test_model_state_and_global_rng_are_left_untouched() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    model.train()
    model[4 + 1].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    inputs = torch.rand(3, 1, 6, 6)
    rng = torch.get_rng_state()
    result = FillInTheBlanks(mask="random", init="noise", steps=5, tv_weight=0.1, l2_weight=0.1)(
        model, inputs, torch.tensor([0, 1, 2])
    )
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(module.training for module in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, False, True]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not result["filled"].requires_grad


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(context: type) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    inputs, target = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    expected = FillInTheBlanks(steps=5)(model, inputs, target)["filled"]
    with context():
        inputs_here, target_here = inputs.clone(), target.clone()
        got = FillInTheBlanks(steps=5)(model, inputs_here, target_here)["filled"]
    torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(steps=0), "`steps`"),
        (dict(lr=0.0), "`lr`"),
        (dict(mask="circle"), "`mask` must be one of"),
        (dict(mask=torch.full((4, 4), 0.5)), "only 0 .* and 1"),
        (dict(mask=torch.ones(2, 3, 4, 4)), r"\(H, W\) or \(B, 1, H, W\)"),
        (dict(objective="mse"), "`objective`"),
        (dict(init="random"), "`init`"),
        (dict(tv_weight=-1.0), "`tv_weight`"),
        (dict(patch_size=0), "`patch_size`"),
        (dict(score="odds"), "`score`"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        FillInTheBlanks(**kwargs)


def test_bad_call_arguments_are_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    inputs = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="does not match the inputs"):
        FillInTheBlanks(mask=torch.ones(5, 5))(model, inputs, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`size` must be at most the image side"):
        FillInTheBlanks(mask="center", patch_size=5)(model, inputs, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`target` must have shape"):
        FillInTheBlanks()(model, inputs, torch.tensor([0]))
    with pytest.raises(ValueError, match="`target` holds class index 3"):
        FillInTheBlanks(steps=1)(model, inputs, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"`inputs` must have shape \(B, C, H, W\)"):
        FillInTheBlanks()(model, torch.rand(1, 4, 4), torch.tensor([0]))


def test_runs_on_the_inputs_device(device: torch.device) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    inputs, target = torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 2])
    probe = FillInTheBlanks(mask="random", init="noise", steps=4, patch_size=2)
    cpu = probe(model, inputs, target)
    result = probe(model.to(device), inputs.to(device), target.to(device))
    assert all(value.device.type == device.type for value in result.values())
    torch.testing.assert_close(result["filled"].cpu(), cpu["filled"], rtol=1e-3, atol=1e-4)
    assert torch.equal(result["mask"].cpu(), cpu["mask"])

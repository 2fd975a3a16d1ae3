from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_xai.guidance import RightForTheRightReasons, input_gradient_penalty, log_probability_scores
from tests.helpers.models import LinearModel, RegionModel, ResidualCNN, region_mask
from tests.unit.guidance._models import flags_of, hooks_of, random_mask, smooth_cnn


def plain_rrr(model: nn.Module, inputs: Tensor, mask: Tensor, weight: float, log_probs=None) -> Tensor:
    """The paper's formula written out with autograd: the reference the penalty is compared with."""
    x = inputs.detach().clone().requires_grad_(True)
    logits = model(x)
    log_p = F.log_softmax(logits, dim=1) if log_probs is None else log_probs(logits)
    (gradient,) = torch.autograd.grad(log_p.sum(), x, create_graph=True)
    if mask.ndim == 2:
        mask = mask[None, None]
    return weight * ((mask * gradient) ** 2).sum(dim=(1, 2, 3)).mean()


@pytest.mark.parametrize("mask_shape", ["hw", "b1hw", "bchw"])
def test_value_matches_plain_autograd(mask_shape: str) -> None:
    model = ResidualCNN(in_channels=3, num_classes=4).double().eval()
    inputs = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    shape = {"hw": (8, 8), "b1hw": (5, 1, 8, 8), "bchw": (5, 3, 8, 8)}[mask_shape]
    mask = random_mask(shape)
    penalty = RightForTheRightReasons(weight=3.0)(model, inputs, mask)
    expected = plain_rrr(model, inputs, mask, 3.0)
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=0)
    assert penalty.dtype == torch.float64 and penalty.ndim == 0 and penalty > 0


def test_value_matches_plain_autograd_in_training_mode_with_batchnorm() -> None:
    model = ResidualCNN(in_channels=3, num_classes=4).train()
    reference = copy.deepcopy(model)
    inputs, mask = torch.randn(6, 3, 8, 8), region_mask(8, 8, 0, 0, 3)
    penalty = RightForTheRightReasons(weight=2.0)(model, inputs, mask)
    torch.testing.assert_close(penalty, plain_rrr(reference, inputs, mask, 2.0), rtol=1e-5, atol=1e-9)
    # the penalty's forward is an ordinary forward: BatchNorm statistics move exactly as the reference's did
    for (name, buffer), (_, expected) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(buffer, expected, msg=name)


def closed_form_gradient(model: LinearModel, inputs: Tensor, head: str, target: Tensor | None) -> Tensor:
    """d score / d x for a linear model, derived by hand: logits z = W x + b."""
    weights = model.linear.weight.detach()  # (K, D)
    z = model(inputs).detach()
    if head == "softmax":
        p = z.softmax(1)
        mean_w = p @ weights  # sum_j p_j W_j
        g = weights.sum(0, keepdim=True) - weights.shape[0] * mean_w if target is None else weights[target] - mean_w
    elif head == "binary":
        s = torch.sigmoid(z)  # (B, 1)
        factor = (1 - 2 * s) if target is None else torch.where(target[:, None] == 1, 1 - s, -s)
        g = factor * weights[0]
    else:  # multi-label
        s = torch.sigmoid(z)
        g = (1 - 2 * s) @ weights if target is None else (1 - s.gather(1, target[:, None])) * weights[target]
    return g.view(inputs.shape)


@pytest.mark.parametrize("head", ["softmax", "binary", "multilabel"])
@pytest.mark.parametrize("with_target", [False, True])
def test_known_answer_on_a_linear_model(head: str, with_target: bool) -> None:
    classes = 1 if head == "binary" else 4
    model = LinearModel(shape=(2, 5, 5), num_classes=classes).double()
    inputs = torch.randn(6, 2, 5, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 1, 0, 1, 0]) if head == "binary" else torch.tensor([0, 3, 1, 2, 2, 0])
    target = target if with_target else None
    mask = random_mask((6, 2, 5, 5))
    rrr = RightForTheRightReasons(weight=1.5, multi_label=head == "multilabel")
    gradient = closed_form_gradient(model, inputs, head, target)
    expected = 1.5 * ((mask * gradient) ** 2).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(rrr(model, inputs, mask, target).double(), expected, rtol=1e-6, atol=0)


def test_binary_single_logit_is_the_two_class_softmax() -> None:
    """A (B, 1) head scored with log-sigmoid equals a softmax head with logits (0, z): the paper's rule holds."""
    single = LinearModel(shape=(1, 4, 4), num_classes=1).double()

    class TwoClass(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            z = single(x)
            return torch.cat([torch.zeros_like(z), z], dim=1)

    inputs, mask = torch.randn(5, 1, 4, 4, dtype=torch.float64), random_mask((4, 4))
    rrr = RightForTheRightReasons()
    torch.testing.assert_close(rrr(single, inputs, mask), rrr(TwoClass(), inputs, mask))
    target = torch.tensor([1, 0, 1, 1, 0])
    torch.testing.assert_close(rrr(single, inputs, mask, target), rrr(TwoClass(), inputs, mask, target))
    assert rrr(single, inputs, mask) > 0  # a log-softmax over one logit would give exactly 0


def test_class_target_uses_the_targets_log_probability() -> None:
    model = smooth_cnn()
    inputs, mask, target = torch.randn(4, 2, 6, 6, dtype=torch.float64), random_mask((6, 6)), torch.tensor([2, 0, 1, 1])
    picked = RightForTheRightReasons()(model, inputs, mask, target)
    expected = plain_rrr(model, inputs, mask, 1.0, lambda z: F.log_softmax(z, 1).gather(1, target[:, None]))
    torch.testing.assert_close(picked.double(), expected, rtol=1e-6, atol=0)
    callable_target = RightForTheRightReasons()(model, inputs, mask, lambda z: F.log_softmax(z, 1)[:, 0])
    expected = plain_rrr(model, inputs, mask, 1.0, lambda z: F.log_softmax(z, 1)[:, 0])
    torch.testing.assert_close(callable_target.double(), expected, rtol=1e-6, atol=0)


def test_parameter_gradient_matches_finite_differences() -> None:
    model = smooth_cnn()
    inputs, mask = torch.randn(3, 2, 5, 5, dtype=torch.float64), random_mask((3, 1, 5, 5))
    names = [name for name, _ in model.named_parameters()]
    rrr = RightForTheRightReasons(weight=2.0)

    def penalty_of(*parameters: Tensor) -> Tensor:
        def forward(x: Tensor) -> Tensor:
            return functional_call(model, dict(zip(names, parameters, strict=True)), (x,))

        x = inputs.clone().requires_grad_(True)
        return 2.0 * input_gradient_penalty(forward(x), x, mask, None)

    parameters = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(penalty_of, parameters, eps=1e-6, atol=1e-7, rtol=1e-5)
    # and the module's own path gives the same parameter gradient as the functional one
    rrr(model, inputs, mask).backward()
    expected = torch.autograd.grad(penalty_of(*parameters), parameters)
    for parameter, grad in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-5, atol=1e-9)


def test_from_outputs_reuses_the_training_forward() -> None:
    model = ResidualCNN(in_channels=3, num_classes=4).eval()
    inputs, mask, target = torch.randn(3, 3, 8, 8), random_mask((3, 3, 8, 8)).float(), torch.tensor([1, 0, 3])
    rrr = RightForTheRightReasons(weight=4.0)
    x = inputs.clone().requires_grad_(True)
    torch.testing.assert_close(rrr.from_outputs(model(x), x, mask, target), rrr(model, inputs, mask, target))
    with pytest.raises(ValueError, match="`inputs` must require grad"):
        rrr.from_outputs(model(inputs), inputs, mask)


def test_zero_for_an_empty_mask_and_its_gradient_is_zero() -> None:
    model = smooth_cnn(dtype=torch.float32)
    inputs = torch.randn(4, 2, 6, 6)
    penalty = RightForTheRightReasons(weight=5.0)(model, inputs, torch.zeros(6, 6))
    assert penalty.item() == 0.0
    penalty.backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())
    assert RightForTheRightReasons(weight=0.0)(model, inputs, torch.ones(6, 6)).item() == 0.0


def test_known_answer_on_a_model_that_reads_one_region() -> None:
    model = RegionModel(num_classes=3)
    inputs = torch.randn(4, 1, 16, 16)
    rrr = RightForTheRightReasons()
    outside = 1 - region_mask()
    assert rrr(model, inputs, outside).item() == 0.0  # the model never looks there
    assert rrr(model, inputs, region_mask()).item() > 0


def test_per_sample_masks_match_a_per_sample_loop_and_bool_masks_work() -> None:
    model = ResidualCNN(in_channels=3, num_classes=4).eval()
    inputs = torch.randn(4, 3, 8, 8)
    masks = torch.rand(4, 1, 8, 8) > 0.5
    rrr = RightForTheRightReasons()
    loop = torch.stack([rrr(model, inputs[i : i + 1], masks[i, 0]) for i in range(4)]).mean()
    torch.testing.assert_close(rrr(model, inputs, masks), loop, rtol=1e-5, atol=0)
    torch.testing.assert_close(rrr(model, inputs, masks), rrr(model, inputs, masks.float()))
    # a weight a scales the squared gradient by a^2
    torch.testing.assert_close(rrr(model, inputs, 3 * masks.float()), 9 * rrr(model, inputs, masks.float()))


def test_leaves_no_grad_on_inputs_no_flags_changed_no_hooks() -> None:
    model = ResidualCNN(in_channels=3, num_classes=4).train()
    model.fc.requires_grad_(False)
    before, hooks = flags_of(model), hooks_of(model)
    inputs = torch.randn(3, 3, 8, 8)
    penalty = RightForTheRightReasons()(model, inputs, torch.ones(8, 8))
    assert all(p.grad is None for p in model.parameters())  # only autograd.grad, no accumulation
    (F.cross_entropy(model(inputs), torch.tensor([0, 1, 2])) + penalty).backward()
    assert inputs.grad is None and not inputs.requires_grad
    assert flags_of(model) == before and hooks_of(model) == hooks
    assert model.fc.weight.grad is None and model.stem[0].weight.grad is not None


def test_inputs_that_require_grad_pass_the_gradient_upstream() -> None:
    """A differentiable augmentation before the model: the penalty reaches its parameter, as plain autograd does."""
    model = smooth_cnn()
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    raw, mask = torch.randn(3, 2, 5, 5, dtype=torch.float64), random_mask((5, 5))
    RightForTheRightReasons()(model, raw * scale, mask).backward()
    got = scale.grad.clone()

    scale.grad = None
    x = raw * scale
    (gradient,) = torch.autograd.grad(F.log_softmax(model(x), 1).sum(), x, create_graph=True)
    ((mask * gradient) ** 2).sum(dim=(1, 2, 3)).mean().backward()
    torch.testing.assert_close(got, scale.grad)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_under_no_grad_and_inference_mode_the_value_is_returned_detached(context) -> None:
    model = smooth_cnn(dtype=torch.float32)
    inputs, mask = torch.randn(4, 2, 6, 6), torch.ones(6, 6)
    expected = RightForTheRightReasons()(model, inputs, mask).detach()
    with context():
        inputs_here = inputs.clone()  # an inference tensor under inference_mode
        value = RightForTheRightReasons()(model, inputs_here, mask)
    assert not value.requires_grad
    torch.testing.assert_close(value, expected)
    assert all(p.grad is None for p in model.parameters())


def test_log_probability_scores_heads() -> None:
    z = torch.tensor([[1.0, -2.0, 0.5]])
    torch.testing.assert_close(log_probability_scores(z), F.log_softmax(z, 1).sum(1))
    torch.testing.assert_close(log_probability_scores(z, multi_label=True), (F.logsigmoid(z) + F.logsigmoid(-z)).sum(1))
    torch.testing.assert_close(log_probability_scores(z, torch.tensor([2]), multi_label=True), F.logsigmoid(z[:, 2]))
    binary = torch.tensor([[0.7], [0.7]])
    torch.testing.assert_close(
        log_probability_scores(binary, torch.tensor([1, 0])),
        torch.stack([F.logsigmoid(binary[0, 0]), F.logsigmoid(-binary[1, 0])]),
    )


def test_bad_inputs_get_clear_errors() -> None:
    model = smooth_cnn(dtype=torch.float32)
    inputs = torch.randn(2, 2, 6, 6)
    rrr = RightForTheRightReasons()
    with pytest.raises(ValueError, match=r"`forbidden` must have shape .*\(2, 2, 6, 6\).*got \(5, 6\)"):
        rrr(model, inputs, torch.ones(5, 6))
    with pytest.raises(ValueError, match=r"`forbidden` must have shape.*got \(2, 3, 6, 6\)"):
        rrr(model, inputs, torch.ones(2, 3, 6, 6))
    with pytest.raises(ValueError, match=r"`forbidden` must hold 0/1 values or non-negative weights, got minimum -1"):
        rrr(model, inputs, -torch.ones(6, 6))
    with pytest.raises(ValueError, match="`forbidden` holds non-finite"):
        rrr(model, inputs, torch.full((6, 6), float("nan")))
    with pytest.raises(TypeError, match=r"`forbidden` must be a torch\.Tensor"):
        rrr(model, inputs, [[1.0]])
    with pytest.raises(ValueError, match=r"`weight` must be a finite real number >= 0, got -1"):
        RightForTheRightReasons(weight=-1)
    with pytest.raises(TypeError, match="`weight` must be a real number"):
        RightForTheRightReasons(weight=True)
    with pytest.raises(TypeError, match="`multi_label` must be a bool"):
        RightForTheRightReasons(multi_label="yes")
    with pytest.raises(TypeError, match=r"`inputs`, which must be a floating-point tensor; got dtype torch.uint8"):
        rrr(model, torch.zeros(2, 2, 6, 6, dtype=torch.uint8), torch.ones(6, 6))
    with pytest.raises(ValueError, match=r"`inputs` must have shape \(B, C, H, W\)"):
        rrr(model, torch.randn(2, 6, 6), torch.ones(6, 6))
    with pytest.raises(ValueError, match=r"logits of shape \(B, K\).*got \(2, 2, 6, 6\)"):
        rrr(nn.Conv2d(2, 2, 1), inputs, torch.ones(6, 6))
    with pytest.raises(ValueError, match=r"`target` holds class index 3; accepted: 0..2"):
        rrr(model, inputs, torch.ones(6, 6), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"`target` must have shape \(B,\)"):
        rrr(model, inputs, torch.ones(6, 6), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"class index 2; accepted: 0 \(negative\) or 1 \(positive\)"):
        rrr(nn.Sequential(nn.Flatten(), nn.Linear(72, 1)), inputs, torch.ones(6, 6), torch.tensor([2, 0]))

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(1, 3))

        def forward(self, x: Tensor) -> Tensor:
            return self.bias.expand(x.shape[0], 3)

    with pytest.raises(ValueError, match="do not depend on `inputs`"):
        rrr(Constant(), inputs, torch.ones(6, 6))


def test_torchvision_resnet_in_training_mode_matches_plain_autograd() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=3).train()
    reference = copy.deepcopy(model)
    inputs, mask = torch.randn(2, 3, 32, 32), region_mask(32, 32, 24, 24, 8)
    before, hooks = flags_of(model), hooks_of(model)
    penalty = RightForTheRightReasons(weight=10.0)(model, inputs, mask)
    torch.testing.assert_close(penalty, plain_rrr(reference, inputs, mask, 10.0), rtol=1e-4, atol=1e-10)
    penalty.backward()
    assert model.conv1.weight.grad is not None and inputs.grad is None
    assert flags_of(model) == before and hooks_of(model) == hooks

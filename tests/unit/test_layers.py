"""The default layer of a model outside the known families: found by one forward, then remembered."""

import torch
from torch import nn

from lightning_xai._layers import default_layer_name
from lightning_xai.callbacks._batches import ForwardWrapper


def _counted(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def test_the_last_spatial_module_is_found_once_per_model_and_input_shape() -> None:
    model = _net()
    calls = _counted(model)
    inputs = torch.rand(2, 1, 8, 8)
    assert default_layer_name(model, inputs) == "2" and calls[0] == 1
    assert default_layer_name(model, torch.rand(5, 1, 8, 8)) == "2" and calls[0] == 1  # another batch size
    assert default_layer_name(model, torch.rand(2, 1, 12, 12)) == "2" and calls[0] == 2  # another image size
    other = _net()
    other_calls = _counted(other)
    assert default_layer_name(other, inputs) == "2" and other_calls[0] == 1  # another model searches again


def test_a_model_whose_modules_change_or_another_forward_fn_is_searched_again() -> None:
    model = _net()
    calls = _counted(model)
    inputs = torch.rand(2, 1, 8, 8)
    assert default_layer_name(model, inputs) == "2"
    model[2] = nn.MaxPool2d(1)  # the last convolution replaced by a pooling layer: the ReLU is now the last
    assert default_layer_name(model, inputs) == "1" and calls[0] == 2
    first = ForwardWrapper(model, lambda module, x: module(x))
    second = ForwardWrapper(model, lambda module, x: module(x * 2))
    default_layer_name(first, inputs)
    default_layer_name(first, inputs)
    default_layer_name(second, inputs)
    assert calls[0] == 4

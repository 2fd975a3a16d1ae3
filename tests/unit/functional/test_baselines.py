import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_xai.functional.baselines import gaussian_blur, gaussian_kernel, make_baseline


def _rise_gkern(klen: int, nsig: float) -> np.ndarray:
    """RISE's gkern: scipy's gaussian_filter of a centred delta (evaluation.py)."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    return ndimage.gaussian_filter(delta, nsig)


@pytest.mark.parametrize(("klen", "nsig"), [(11, 5.0), (5, 1.0), (7, 2.5)])
def test_gaussian_kernel_matches_scipy_gaussian_filter_of_a_delta(klen: int, nsig: float) -> None:
    np.testing.assert_allclose(gaussian_kernel(klen, nsig).numpy(), _rise_gkern(klen, nsig), rtol=1e-5, atol=1e-7)


def test_gaussian_blur_is_a_zero_padded_per_channel_convolution() -> None:
    image = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    kernel = _rise_gkern(11, 5.0)
    expected = np.stack(
        [
            np.stack(
                [ndimage.convolve(image[b, c].double().numpy(), kernel, mode="constant", cval=0.0) for c in range(3)]
            )
            for b in range(2)
        ]
    )
    np.testing.assert_allclose(gaussian_blur(image).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_make_baseline_kinds() -> None:
    x = torch.rand(2, 3, 4, 5)
    assert torch.equal(make_baseline(x, 0.5), torch.full_like(x, 0.5))
    mean = make_baseline(x, "mean")
    assert torch.allclose(mean[:, :, 1, 2], x.mean(dim=(2, 3)))
    noise = make_baseline(x, "noise", seed=3)
    assert torch.equal(noise, make_baseline(x, "noise", seed=3))
    assert not torch.equal(noise, make_baseline(x, "noise", seed=4))
    assert torch.equal(make_baseline(x, torch.ones(3, 1, 1)), torch.ones_like(x))
    assert torch.equal(make_baseline(x, lambda inputs: inputs * 2), x * 2)


@pytest.mark.parametrize(
    ("baseline", "error"),
    [
        ("zeros", ValueError),
        (True, TypeError),
        ([0.0], TypeError),
        (float("nan"), ValueError),
        (torch.ones(5), ValueError),
    ],
)
def test_make_baseline_rejects_bad_values(baseline: object, error: type) -> None:
    with pytest.raises(error, match="baseline"):
        make_baseline(torch.rand(1, 3, 4, 4), baseline)

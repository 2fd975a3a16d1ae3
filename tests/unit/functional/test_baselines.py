"""Baselines against scipy: RISE's gkern and blur, and the size-scaled default blur (scipy's gaussian_filter)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from lightning_xai.functional import baselines
from lightning_xai.functional.baselines import gaussian_blur, gaussian_kernel, make_baseline, scaled_blur


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


@pytest.mark.parametrize(
    ("shape", "klen", "nsig"),
    [((2, 3, 12, 10), 11, 5.0), ((1, 3, 224, 224), 11, 5.0), ((3, 1, 9, 31), 5, 1.0), ((2, 2, 6, 5), 7, 2.5)],
)
def test_separable_blur_agrees_with_the_2d_convolution_of_scipys_kernel(shape: tuple, klen: int, nsig: float) -> None:
    image = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    kernel = torch.from_numpy(_rise_gkern(klen, nsig)).float().expand(shape[1], 1, klen, klen)
    expected = F.conv2d(image, kernel, padding=klen // 2, groups=shape[1])  # RISE: conv2d, padding = klen // 2
    assert (gaussian_blur(image, klen, nsig) - expected).abs().max() < 1e-6


@pytest.mark.parametrize(("shape", "fraction"), [((2, 3, 32, 32), 0.25), ((1, 2, 20, 48), 0.25), ((2, 1, 5, 7), 0.6)])
def test_scaled_blur_is_scipy_gaussian_filter_with_reflected_borders(shape: tuple, fraction: float) -> None:
    # (5, 7) with sigma = 3 px: the 4-sigma radius (12) folds the borders more than once.
    image = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sigma = fraction * min(shape[-2:])
    expected = np.stack(
        [
            [ndimage.gaussian_filter(channel, sigma, mode="reflect", truncate=4.0) for channel in b]
            for b in image.numpy()
        ]
    )
    np.testing.assert_allclose(scaled_blur(image, fraction).numpy(), expected, rtol=0, atol=1e-12)
    assert scaled_blur(image.float(), fraction).dtype == torch.float32


def test_default_blur_scales_with_the_image_and_keeps_the_mean() -> None:
    small = torch.zeros(1, 1, 32, 32)
    small[..., 8:24, 12:20] = 1.0
    large = F.interpolate(small, size=(224, 224), mode="nearest")  # the same picture, 7x larger
    blurred_small, blurred_large = make_baseline(small, "blur"), make_baseline(large, "blur")
    shrunk = F.avg_pool2d(blurred_large, 7)
    assert (shrunk - blurred_small).abs().max() < 0.01  # sigma = side / 4 at both sizes
    assert torch.allclose(blurred_large.mean(), large.mean())  # reflection, unlike zero padding, keeps the mass
    assert torch.equal(make_baseline(small, "rise_blur"), gaussian_blur(small))
    assert torch.equal(blurred_small, scaled_blur(small, baselines.BLUR_SIGMA_FRACTION))
    assert baselines.BLUR_SIGMA_FRACTION == 0.25


def test_blur_operators_are_cached_and_the_public_kernel_is_a_fresh_tensor() -> None:
    image = torch.rand(2, 3, 17, 19)
    gaussian_blur(image)
    scaled_blur(image)
    rise_hits = baselines._zero_padded_blur_matrix.cache_info().hits
    scaled_hits = baselines._reflect_blur_matrix.cache_info().hits
    gaussian_blur(image)
    scaled_blur(image)
    assert baselines._zero_padded_blur_matrix.cache_info().hits == rise_hits + 2
    assert baselines._reflect_blur_matrix.cache_info().hits == scaled_hits + 2
    kernel = gaussian_kernel()
    kernel.zero_()
    assert gaussian_kernel().sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x: gaussian_blur(x, kernel_size=10), ValueError, r"`kernel_size` must be odd.*got 10"),
        (lambda x: gaussian_blur(x, kernel_size=0), ValueError, r"`kernel_size` must be an int >= 1"),
        (lambda x: gaussian_blur(x, sigma=0.0), ValueError, r"`sigma` must lie in \(0.0, inf\), got 0.0"),
        (lambda x: gaussian_kernel(11, "5"), TypeError, r"`sigma` must be a number"),
        (lambda x: scaled_blur(x, -0.1), ValueError, r"`sigma_fraction` must lie in \(0.0, inf\), got -0.1"),
    ],
)
def test_blur_arguments_are_checked(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call(torch.rand(1, 3, 8, 8))  # type: ignore[operator]


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
        ("gaussian", ValueError),
        (True, TypeError),
        ([0.0], TypeError),
        (float("nan"), ValueError),
        (torch.ones(5), ValueError),
    ],
)
def test_make_baseline_rejects_bad_values(baseline: object, error: type) -> None:
    with pytest.raises(error, match="baseline"):
        make_baseline(torch.rand(1, 3, 4, 4), baseline)

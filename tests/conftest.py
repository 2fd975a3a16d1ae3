import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(
    params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Run a test on the CPU and, where there is one, on a CUDA device."""
    return torch.device(request.param)


# The suite's models are tiny: one thread avoids oversubscribing a small CI machine (a conv on an 8x8 batch took
# 45 ms with the default threads and 0.5 ms with one under load).
torch.set_num_threads(1)

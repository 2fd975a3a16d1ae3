import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Run a test on the CPU and, where there is one, on a CUDA device."""
    return torch.device(request.param)

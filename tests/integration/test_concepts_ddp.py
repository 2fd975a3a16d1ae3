"""ConceptAnalysis under a real 2-process CPU DDP fit: concept sums synchronised, drift equal on every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("_concepts_ddp_script.py")


@pytest.mark.ddp
@pytest.mark.slow
def test_concept_drift_and_sums_are_the_same_on_every_rank(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert {"xai/LRP/concept_drift", "xai/LRP/concept_drift_min"} <= rank0["metrics"].keys(), sorted(rank0["metrics"])
    assert rank0["metrics"] == rank1["metrics"]
    assert int(rank0["count"].sum()) == 48  # 2 ranks x 24 streamed samples in the last epoch
    assert torch.equal(rank0["count"], rank1["count"])
    torch.testing.assert_close(rank0["previous"], rank1["previous"], rtol=0, atol=0)

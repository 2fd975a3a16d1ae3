"""ConceptAnalysis under a real 2-process CPU DDP fit: concept sums synchronised, drift equal on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.ddp import load_rank_results, run_ddp_script

SCRIPT = Path(__file__).with_name("_concepts_ddp_script.py")


@pytest.mark.ddp
@pytest.mark.slow
def test_concept_drift_and_sums_are_the_same_on_every_rank(tmp_path: Path) -> None:
    result = run_ddp_script(SCRIPT, tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = load_rank_results(tmp_path)
    assert {"xai/LRP/concept_drift", "xai/LRP/concept_drift_min"} <= rank0["metrics"].keys(), sorted(rank0["metrics"])
    assert rank0["metrics"] == rank1["metrics"]
    assert int(rank0["count"].sum()) == 48  # 2 ranks x 24 streamed samples in the last epoch
    assert torch.equal(rank0["count"], rank1["count"])
    torch.testing.assert_close(rank0["previous"], rank1["previous"], rtol=0, atol=0)

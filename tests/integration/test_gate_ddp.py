"""FaithfulnessGate under a real 2-process CPU DDP run: every rank raises together, nothing hangs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.ddp import run_ddp_script

SCRIPT = Path(__file__).with_name("_gate_ddp_script.py")
ERROR = "FaithfulnessRegressionError: FaithfulnessGate failed on `xai/GradCAM/deletion_auc`"


def _run(variant: str, out_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_ddp_script(SCRIPT, variant, out_dir, timeout=120, cwd=SCRIPT.parent)


def _outcomes(out_dir: Path) -> list[str]:
    return [(out_dir / f"rank{rank}.txt").read_text() for rank in range(2)]


@pytest.mark.ddp
def test_gate_raises_on_every_rank_without_hanging(tmp_path: Path) -> None:
    result = _run("synced", tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert ERROR in output
    outcomes = _outcomes(tmp_path)
    for outcome in outcomes:
        assert outcome.startswith(ERROR), outcomes
        assert "at epoch 2" in outcome and "value 0.5" in outcome and "floor 0.7" in outcome


@pytest.mark.ddp
def test_gate_acts_on_every_rank_when_only_one_rank_fails(tmp_path: Path) -> None:
    result = _run("one_rank", tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert ERROR in output
    rank0, rank1 = _outcomes(tmp_path)
    # rank 1's own value broke the rule; rank 0's passed, and it raised at the same epoch because rank 1 failed
    assert rank1.startswith(ERROR) and "at epoch 1" in rank1 and "value 0.5 < floor 0.7" in rank1
    assert rank0.startswith(ERROR) and "at epoch 1" in rank0 and "failed on another rank" in rank0

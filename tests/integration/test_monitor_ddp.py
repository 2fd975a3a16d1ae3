"""ExplanationMonitor under a real 2-process CPU DDP fit: synchronised values, identical on every rank, no hang."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.ddp import load_rank_results, run_ddp_script

SCRIPT = Path(__file__).with_name("_monitor_ddp_script.py")


@pytest.mark.ddp
def test_monitor_logs_the_same_synchronised_values_on_every_rank(tmp_path: Path) -> None:
    result = run_ddp_script(SCRIPT, tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = load_rank_results(tmp_path)
    expected = {
        "xai/GradCAM/deletion_auc",
        "xai/GradCAM/deletion_auc_stderr",
        "xai/Saliency/mif_lif_fidelity",
        "xai/GradCAM/relevance_mass_corner",
        "xai/GradCAM/global_relevance_mass_corner_max",
        "xai/GradCAM/peppr/erasing_auc",
        "xai/Saliency/drift_probe",
        "xai/Saliency/drift_global",
    }
    assert expected <= rank0["metrics"].keys(), sorted(rank0["metrics"])
    assert rank0["metrics"] == rank1["metrics"]
    # 2 ranks x 24 explained samples per epoch were aggregated, on both ranks alike
    assert int(rank0["global"]["GradCAM"]["count"].sum()) == 48
    torch.testing.assert_close(rank0["global"]["GradCAM"]["per_label"], rank1["global"]["GradCAM"]["per_label"])
    for key, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][key]), key

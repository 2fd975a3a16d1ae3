"""Smoke test of the one benchmark entry point: ``benchmarks/run.py --quick`` runs every section and prints ratios."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_run_quick_prints_every_section() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    for line in (
        "DeletionAUC / Quantus PixelFlipping",
        "DeletionAUC / best-chunk floor",
        "per forwarded image",
        "ROAD (chunk",
        "/ forward floor (best chunk",
        "ExplanationMonitor(GradCAM()) fit / fit without it",
        "quickstart: added CPU per validation epoch / its own work",
        "quickstart: validation epoch, curves on / curves off",
        "ExtremalPerturbation / floor",
        "per-sample loop / ExtremalPerturbation",
    ):
        assert line in result.stdout, result.stdout

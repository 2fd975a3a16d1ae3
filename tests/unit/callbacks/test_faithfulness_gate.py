"""FaithfulnessGate: every rule on a scripted metric series, against hand-computed expectations."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import lightning_xai
from lightning_xai import FaithfulnessGate, FaithfulnessRegressionError
from tests.helpers.scripted import KEY, ScriptedMetricModule

NAN, INF = float("nan"), float("inf")
Z95 = NormalDist().inv_cdf(0.975)  # independent of the package's normal_quantile


def close(expected: Any) -> Any:
    """Equal up to the float32 precision of values that went through ``self.log``."""
    return pytest.approx(expected, abs=1e-6)


def make_trainer(max_epochs: int, callbacks: list[Callback], **overrides: Any) -> Trainer:
    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_train_batches": 1,
        "limit_val_batches": 1,
        "log_every_n_steps": 1,
    }
    options.update(overrides)
    return Trainer(callbacks=callbacks, **options)


def run(
    values: list[float], gate: FaithfulnessGate, stderrs: list[float] | None = None, **overrides: Any
) -> tuple[Trainer, BaseException | None]:
    """Fit on the scripted series; return the trainer and the exception raised (or None)."""
    trainer = make_trainer(len(values), [gate], **overrides)
    try:
        trainer.fit(ScriptedMetricModule(values, stderrs))
    except (FaithfulnessRegressionError, ValueError) as error:
        return trainer, error
    return trainer, None


def raised_at(values: list[float], gate: FaithfulnessGate, **kwargs: Any) -> int | None:
    """Epoch at which the gate raised (None if it did not)."""
    _, error = run(values, gate, **kwargs)
    if error is None:
        return None
    assert isinstance(error, FaithfulnessRegressionError), error
    assert gate.history[-1]["acted"] and gate.stopped_epoch == gate.history[-1]["epoch"]
    return gate.stopped_epoch


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "lower", "threshold": 0.5}, ValueError, r"`mode` must be one of \('max', 'min'\), got 'lower'"),
        ({"baseline": "last", "max_regression": 0.1}, ValueError, r"`baseline` must be one of \('best', 'first'\)"),
        ({"action": "warn", "threshold": 0.5}, ValueError, r"`action` must be one of \('raise', 'stop'\)"),
        ({"confidence": 1.0, "threshold": 0.5}, ValueError, r"`confidence` must lie in \(0.0, 1.0\), got 1.0"),
        ({"confidence": 0.0, "threshold": 0.5}, ValueError, r"`confidence` must lie in \(0.0, 1.0\)"),
        ({"confidence": "95%", "threshold": 0.5}, TypeError, r"`confidence` must be a number"),
        ({"patience": -1, "threshold": 0.5}, ValueError, r"`patience` must be an int >= 0, got -1"),
        ({"patience": 1.5, "threshold": 0.5}, TypeError, r"`patience` must be an int >= 0"),
        ({"min_epochs": -2, "threshold": 0.5}, ValueError, r"`min_epochs` must be an int >= 0, got -2"),
        ({"max_regression": -0.1}, ValueError, r"`max_regression` must be a finite number >= 0.0 or None, got -0.1"),
        ({"threshold": NAN}, ValueError, r"`threshold` must be a finite number or None, got nan"),
        ({"threshold": "0.5"}, TypeError, r"`threshold` must be a finite number or None"),
        ({}, ValueError, r"needs at least one rule: set `threshold`.*`max_regression`"),
        ({"relative": True, "threshold": 0.5}, ValueError, r"`relative=True` scales `max_regression`"),
        ({"relative": 1, "max_regression": 0.1}, TypeError, r"`relative` must be True or False, got 1"),
        ({"strict": "yes", "threshold": 0.5}, TypeError, r"`strict` must be True or False"),
        ({"check_finite": None, "threshold": 0.5}, TypeError, r"`check_finite` must be True or False"),
    ],
)
def test_arguments_are_validated(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        FaithfulnessGate(KEY, **kwargs)


def test_monitor_must_be_a_key() -> None:
    with pytest.raises(TypeError, match="`monitor` must be a non-empty str"):
        FaithfulnessGate("", threshold=0.5)


def test_exported_names() -> None:
    assert lightning_xai.FaithfulnessGate is FaithfulnessGate
    assert issubclass(lightning_xai.FaithfulnessRegressionError, RuntimeError)
    assert {"FaithfulnessGate", "FaithfulnessRegressionError"} <= set(lightning_xai.__all__)


# --------------------------------------------------------------------------- rules
def test_threshold_floor_raises_at_first_value_below_it_with_a_useful_message() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.7)
    _, error = run([0.9, 0.8, 0.6, 0.9], gate)
    assert isinstance(error, FaithfulnessRegressionError)
    message = str(error)
    for part in (KEY, "epoch 2", "value 0.6", "best 0.9 (epoch 0)", "threshold", "floor 0.7"):
        assert part in message, (part, message)
    assert [entry["failing"] for entry in gate.history] == [False, False, True]
    assert gate.history[-1]["margin"] == close(0.6 - 0.7)
    assert gate.stopped_epoch == 2 and gate.reason == message


def test_threshold_ceiling_in_min_mode() -> None:
    assert raised_at([0.2, 0.3, 0.5, 0.1], FaithfulnessGate(KEY, mode="min", threshold=0.4)) == 2
    # a value exactly at the limit passes (the rule is strict), and the margin is 0
    gate = FaithfulnessGate(KEY, mode="min", threshold=0.25)
    assert raised_at([0.25, 0.25], gate) is None
    assert [entry["margin"] for entry in gate.history] == [0.0, 0.0]


def test_max_regression_absolute_from_best() -> None:
    # best 0.9 at epoch 1: 0.85 drops 0.05 (allowed), 0.75 drops 0.15 > 0.1
    gate = FaithfulnessGate(KEY, max_regression=0.1)
    assert raised_at([0.5, 0.9, 0.85, 0.75, 0.95], gate) == 3
    assert gate.history[0]["margin"] is None and gate.history[0]["baseline"] is None  # no baseline yet
    assert gate.history[-1]["baseline"] == close(0.9) and gate.history[-1]["baseline_epoch"] == 1
    assert gate.history[-1]["margin"] == close(0.1 - 0.15)
    assert "max_regression" in gate.reason and "best value 0.9 (epoch 1)" in gate.reason


def test_max_regression_baseline_first_versus_best() -> None:
    values = [0.8, 0.9, 0.75, 0.6]
    # best = 0.9: 0.75 drops 0.15 > 0.1 at epoch 2; first = 0.8: 0.75 drops 0.05, 0.6 drops 0.2 at epoch 3
    assert raised_at(values, FaithfulnessGate(KEY, max_regression=0.1, baseline="best")) == 2
    gate = FaithfulnessGate(KEY, max_regression=0.1, baseline="first")
    assert raised_at(values, gate) == 3
    assert [entry["baseline"] for entry in gate.history] == [None, close(0.8), close(0.8), close(0.8)]


def test_max_regression_relative_is_a_fraction_of_the_baseline() -> None:
    values = [2.0, 1.7, 1.5]
    # relative: allowed 0.2 * |2.0| = 0.4; 1.7 drops 0.3 (passes), 1.5 drops 0.5 (fails). Absolute 0.2 fails at 1.7.
    gate = FaithfulnessGate(KEY, max_regression=0.2, relative=True)
    assert raised_at(values, gate) == 2
    assert gate.history[1]["margin"] == close(0.4 - 0.3)
    assert raised_at(values, FaithfulnessGate(KEY, max_regression=0.2)) == 1


def test_max_regression_relative_in_min_mode_with_negative_values() -> None:
    # lower is better; best -2.0; worsening = value - best; allowed 0.2 * |-2.0| = 0.4
    gate = FaithfulnessGate(KEY, mode="min", max_regression=0.2, relative=True)
    assert raised_at([-2.0, -1.7, -2.1, -1.6], gate) == 3
    assert gate.history[2]["baseline"] == -2.0 and gate.history[3]["baseline"] == close(-2.1)
    assert gate.history[3]["margin"] == close(0.2 * 2.1 - 0.5)


def test_threshold_and_regression_together_fail_on_either() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.5, max_regression=0.3, patience=5, action="stop")
    run([0.9, 0.55, 0.45, 0.9], gate)
    history = gate.history
    assert [entry["failing"] for entry in history] == [False, True, True, False]
    assert len(history[1]["reasons"]) == 1 and history[1]["reasons"][0].startswith("max_regression")
    assert len(history[2]["reasons"]) == 2  # both rules broken
    assert history[1]["margin"] == close(min(0.55 - 0.5, 0.3 - 0.35))


def test_patience_tolerates_n_failing_checks_and_a_pass_resets_it() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.7, patience=2)
    assert raised_at([0.9, 0.5, 0.5, 0.9, 0.5, 0.5, 0.5, 0.9], gate) == 6
    assert [entry["wait_count"] for entry in gate.history] == [0, 1, 2, 0, 1, 2, 3]
    assert [entry["acted"] for entry in gate.history] == [False] * 6 + [True]
    assert "Failing checks in a row: 3" in gate.reason


def test_min_epochs_records_checks_but_acts_only_from_that_epoch() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.7, min_epochs=2)
    assert raised_at([0.5, 0.5, 0.5, 0.5], gate) == 2
    assert [(entry["epoch"], entry["failing"], entry["wait_count"]) for entry in gate.history] == [
        (0, True, 1),
        (1, True, 2),
        (2, True, 3),
    ]
    # a pass at min_epochs means no action; the next failure acts at once (wait 1 > patience 0)
    gate = FaithfulnessGate(KEY, threshold=0.7, min_epochs=2)
    assert raised_at([0.5, 0.5, 0.9, 0.5], gate) == 3


def test_stop_sets_should_stop_and_records_the_reason() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.7, action="stop")
    with pytest.warns(RuntimeWarning, match="stopping the trainer"):
        trainer, error = run([0.9, 0.5, 0.9, 0.9], gate)
    assert error is None
    assert trainer.should_stop and trainer.current_epoch == 2  # stopped after epoch 1 of 4
    assert gate.stopped_epoch == 1 and gate.reason is not None and "threshold" in gate.reason
    assert len(gate.history) == 2


def test_raise_is_a_runtime_error_and_leaves_no_stop_flag() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.7, action="raise")
    trainer, error = run([0.9, 0.5, 0.9, 0.9], gate)
    assert isinstance(error, FaithfulnessRegressionError) and isinstance(error, RuntimeError)
    assert "raising FaithfulnessRegressionError" in str(error) and gate.stopped_epoch == 1
    assert not trainer.should_stop


@pytest.mark.parametrize(("mode", "bad"), [("max", NAN), ("max", INF), ("max", -INF), ("min", -INF)])
def test_non_finite_value_fails_with_its_own_reason(mode: str, bad: float) -> None:
    # +inf in mode max (or -inf in mode min) would pass the threshold: check_finite catches it
    gate = FaithfulnessGate(KEY, mode=mode, threshold=0.0 if mode == "max" else 10.0)
    assert raised_at([1.0, bad], gate) == 1
    assert gate.history[-1]["reasons"] == [f"non-finite: the value is {bad} (check_finite=True)"]
    assert gate.history[-1]["margin"] is None
    assert gate.best_value == 1.0  # a non-finite value never becomes a baseline


def test_non_finite_value_without_check_finite_passes_and_is_not_a_baseline() -> None:
    gate = FaithfulnessGate(KEY, max_regression=0.1, check_finite=False)
    assert raised_at([0.9, NAN, 0.7], gate) == 2
    assert [entry["failing"] for entry in gate.history] == [False, False, True]
    assert gate.history[-1]["baseline"] == close(0.9)


def test_confidence_small_noisy_regression_passes_big_one_fails() -> None:
    tolerance = Z95 * math.sqrt(0.03**2 + 0.03**2)  # 0.0832
    # drop 0.04 with se 0.03 on both checks: not significant
    gate = FaithfulnessGate(KEY, max_regression=0.0, confidence=0.95)
    assert raised_at([0.80, 0.76], gate, stderrs=[0.03, 0.03]) is None
    assert gate.history[-1]["margin"] == close(tolerance - 0.04)
    # without confidence the same drop fails
    assert raised_at([0.80, 0.76], FaithfulnessGate(KEY, max_regression=0.0), stderrs=[0.03, 0.03]) == 1
    # a big drop fails even with confidence
    gate = FaithfulnessGate(KEY, max_regression=0.0, confidence=0.95)
    assert raised_at([0.80, 0.60], gate, stderrs=[0.03, 0.03]) == 1
    assert gate.history[-1]["margin"] == close(tolerance - 0.20)
    assert "confidence 0.95" in gate.reason


def test_confidence_uses_the_baseline_stderr_and_allowance() -> None:
    # excess drop 0.15 - 0.05 = 0.10; tolerance z90 * sqrt(0.01^2 + 0.08^2) = 0.1326 (baseline se dominates)
    z90 = NormalDist().inv_cdf(0.95)
    gate = FaithfulnessGate(KEY, max_regression=0.05, confidence=0.9)
    assert raised_at([0.9, 0.75], gate, stderrs=[0.08, 0.01]) is None
    assert gate.history[-1]["margin"] == close(0.05 + z90 * math.hypot(0.01, 0.08) - 0.15)
    assert raised_at([0.9, 0.75], FaithfulnessGate(KEY, max_regression=0.05, confidence=0.9), stderrs=[0.01, 0.01]) == 1


@pytest.mark.parametrize("mode", ["max", "min"])
def test_confidence_threshold_needs_the_whole_interval_beyond_it(mode: str) -> None:
    sign = 1.0 if mode == "max" else -1.0
    threshold = 0.7 if mode == "max" else -0.7
    # value 0.04 beyond the limit with se 0.03: interval [value - 0.059, value + 0.059] still reaches the limit
    gate = FaithfulnessGate(KEY, mode=mode, threshold=threshold, confidence=0.95)
    assert raised_at([sign * 0.66], gate, stderrs=[0.03]) is None
    assert gate.history[-1]["margin"] == close(0.66 + Z95 * 0.03 - 0.7)
    gate = FaithfulnessGate(KEY, mode=mode, threshold=threshold, confidence=0.95)
    assert raised_at([sign * 0.60], gate, stderrs=[0.03]) == 0
    assert "interval" in gate.reason


def test_missing_stderr_with_confidence_is_an_error_under_strict() -> None:
    gate = FaithfulnessGate(KEY, max_regression=0.0, confidence=0.95)
    _, error = run([0.8, 0.76], gate)
    assert isinstance(error, ValueError)
    assert f"'{KEY}_stderr'" in str(error) and f"`{KEY}`" in str(error)  # names the key and lists what exists


def test_missing_stderr_without_strict_warns_once_and_uses_zero() -> None:
    gate = FaithfulnessGate(KEY, max_regression=0.0, confidence=0.95, strict=False, patience=5)
    with pytest.warns(UserWarning, match="Using a standard error of 0") as record:
        run([0.8, 0.76, 0.7], gate)
    assert sum("standard error of 0" in str(item.message) for item in record) == 1
    assert [entry["failing"] for entry in gate.history] == [False, True, True]


def test_missing_monitor_lists_the_available_keys() -> None:
    gate = FaithfulnessGate("xai/GradCAM/insertion_auc", threshold=0.5)
    _, error = run([0.8], gate)
    assert isinstance(error, ValueError)
    assert "'xai/GradCAM/insertion_auc' is not in trainer.callback_metrics" in str(error)
    assert f"Available keys: `{KEY}`" in str(error)


def test_missing_monitor_without_strict_warns_once_and_skips() -> None:
    gate = FaithfulnessGate("missing", threshold=0.5, strict=False)
    with pytest.warns(UserWarning, match="is skipped") as record:
        _, error = run([0.1, 0.1, 0.1], gate)
    assert error is None and gate.history == []
    assert sum("is skipped" in str(item.message) for item in record) == 1


def test_sanity_check_and_validate_are_not_gated() -> None:
    # the sanity check logs NaN: a gate that checked it would raise
    gate = FaithfulnessGate(KEY, threshold=0.5)
    trainer = make_trainer(3, [gate], num_sanity_val_steps=1)
    model = ScriptedMetricModule([0.9, 0.8, 0.7], sanity_value=NAN)
    trainer.fit(model)
    assert [entry["epoch"] for entry in gate.history] == [0, 1, 2]
    model.values = [0.1] * 4  # would fail the threshold
    trainer.validate(model, verbose=False)
    assert len(gate.history) == 3 and gate.stopped_epoch is None


def test_several_checks_per_epoch_count_for_patience() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.7, patience=1)
    trainer = make_trainer(2, [gate], limit_train_batches=2, val_check_interval=1)
    model = ScriptedMetricModule([0.5, 0.5])
    with pytest.raises(FaithfulnessRegressionError):
        trainer.fit(model)
    assert [(entry["epoch"], entry["global_step"]) for entry in gate.history] == [(0, 1), (0, 2)]


# --------------------------------------------------------------------------- state
def test_state_key_separates_monitor_and_mode() -> None:
    keys = {
        FaithfulnessGate(KEY, threshold=0.5).state_key,
        FaithfulnessGate(KEY, mode="min", threshold=0.5).state_key,
        FaithfulnessGate("xai/IG/deletion_auc", threshold=0.5).state_key,
    }
    assert len(keys) == 3


def test_two_gates_coexist_in_one_checkpoint(tmp_path: Path) -> None:
    floor = FaithfulnessGate(KEY, threshold=0.1, action="stop")
    ceiling = FaithfulnessGate(KEY, mode="min", threshold=0.85, action="stop", patience=5)
    trainer = make_trainer(2, [floor, ceiling], enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(ScriptedMetricModule([0.8, 0.9]))
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)  # type: ignore[union-attr]
    states = checkpoint["callbacks"]
    assert states[floor.state_key]["wait_count"] == 0 and states[ceiling.state_key]["wait_count"] == 1
    restored = FaithfulnessGate(KEY, mode="min", threshold=0.85)
    restored.load_state_dict(states[ceiling.state_key])
    assert restored.history == ceiling.history and restored.best_value == close(0.8)


def test_load_state_dict_accepts_missing_keys() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.5)
    gate.load_state_dict({"wait_count": 2})
    assert gate.wait_count == 2 and gate.history == [] and gate.best_value is None


RESUME_VALUES = [0.9, 0.95, 0.8, 0.8, 0.8, 0.8, 0.8]


def _resume_gate() -> FaithfulnessGate:
    # best 0.95 at epoch 1; epochs 2, 3, 4 drop 0.15 > 0.1; patience 2 acts at epoch 4
    return FaithfulnessGate(KEY, max_regression=0.1, patience=2)


@pytest.mark.parametrize("resume_after_epoch", [1, 2, 3])
def test_resume_decides_as_an_uninterrupted_run(tmp_path: Path, resume_after_epoch: int) -> None:
    uninterrupted = _resume_gate()
    assert raised_at(RESUME_VALUES, uninterrupted) == 4

    first = _resume_gate()
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    make_trainer(resume_after_epoch + 1, [first, saver], enable_checkpointing=True).fit(
        ScriptedMetricModule(RESUME_VALUES)
    )
    resumed = _resume_gate()
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = make_trainer(len(RESUME_VALUES), [resumed, saver], enable_checkpointing=True)
    with pytest.raises(FaithfulnessRegressionError) as info:
        trainer.fit(ScriptedMetricModule(RESUME_VALUES), ckpt_path=tmp_path / f"epoch={resume_after_epoch}.ckpt")
    assert resumed.stopped_epoch == 4
    assert resumed.history == uninterrupted.history
    assert str(info.value) == uninterrupted.reason


# --------------------------------------------------------------------------- logging
def _events(log_dir: str) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_status_scalars_and_text_report_reach_tensorboard(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="gate")
    gate = FaithfulnessGate(KEY, threshold=0.7, patience=1)
    _, error = run([0.9, 0.8, 0.5, 0.6], gate, logger=logger)
    assert isinstance(error, FaithfulnessRegressionError)
    events = _events(logger.log_dir)
    failing = events.Scalars(f"xai/gate/{KEY[4:]}/failing")
    assert [(event.step, event.value) for event in failing] == [(1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0)]
    margins = [event.value for event in events.Scalars(f"xai/gate/{KEY[4:]}/margin")]
    assert margins == close([0.2, 0.1, -0.2, -0.1])
    text_tags = [tag for tag in events.Tags()["tensors"] if tag.startswith(f"xai/gate/{KEY[4:]}")]
    assert len(text_tags) == 1
    reports = {event.step: event.tensor_proto.string_val[0].decode() for event in events.Tensors(text_tags[0])}
    assert sorted(reports) == [3, 4]  # every failing check, the tolerated one and the one acted on
    assert "tolerated (patience=1)" in reports[3]
    assert "raising FaithfulnessRegressionError" in reports[4] and "floor 0.7" in reports[4]
    assert "| 3 | 4 | 0.6 |" in reports[4]  # the history table


def test_margin_is_not_logged_before_a_rule_applies(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="gate")
    run([0.9, 0.85], FaithfulnessGate(KEY, max_regression=0.1), logger=logger)
    events = _events(logger.log_dir)
    assert [event.step for event in events.Scalars(f"xai/gate/{KEY[4:]}/failing")] == [1, 2]
    assert [(event.step, close(event.value)) for event in events.Scalars(f"xai/gate/{KEY[4:]}/margin")] == [
        (2, close(0.05))
    ]


class _LogInValidationEnd(Callback):
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.log("anything", 1.0)


def test_pl_module_log_is_refused_in_on_validation_end() -> None:
    """Why the gate logs through ``trainer.loggers``: Lightning refuses ``self.log`` in this hook."""
    trainer = make_trainer(1, [_LogInValidationEnd()], num_sanity_val_steps=0)
    with warnings.catch_warnings(), pytest.raises(MisconfigurationException, match="on_validation_end"):
        trainer.fit(ScriptedMetricModule([0.5]))


def test_stale_values_are_not_judged_again() -> None:
    # Regression: on epochs the monitor skips, callback_metrics still holds the previous value; with patience=1 the
    # gate counted it as a second failing check and raised after a single measurement below the floor.
    gate = FaithfulnessGate(KEY, threshold=0.8, patience=1, strict=False)
    with pytest.warns(UserWarning, match="not logged by this validation run") as record:
        _, error = run([0.9, None, 0.5, None, 0.9, None], gate)  # type: ignore[list-item]
    assert error is None
    assert [entry["epoch"] for entry in gate.history] == [0, 2, 4]
    assert [entry["wait_count"] for entry in gate.history] == [0, 1, 0]
    assert sum("not logged by this validation run" in str(item.message) for item in record) == 1
    # two fresh failing measurements in a row still act
    gate = FaithfulnessGate(KEY, threshold=0.8, patience=1, strict=False)
    assert raised_at([0.9, None, 0.5, None, 0.5], gate) == 4  # type: ignore[list-item]


def test_stale_value_under_strict_is_an_error_that_says_why() -> None:
    gate = FaithfulnessGate(KEY, threshold=0.8)
    _, error = run([0.9, None, 0.9], gate)  # type: ignore[list-item]
    assert isinstance(error, ValueError)
    assert "was not logged by this validation run (epoch 1)" in str(error) and "strict=False" in str(error)

"""FaithfulnessGate: fail or stop a training run when a monitored faithfulness score regresses."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_xai._checks import check_bool, check_choice, check_in_range, check_positive_int
from lightning_xai.loggers import PictureLogger
from lightning_xai.metrics.base import normal_quantile
from lightning_xai.visualize import map_grid

__all__ = ["FaithfulnessGate", "FaithfulnessRegressionError"]

_MODES = ("max", "min")
_BASELINES = ("best", "first")
_ACTIONS = ("raise", "stop")


class FaithfulnessRegressionError(RuntimeError):
    """Raised on every rank by :class:`FaithfulnessGate` with ``action="raise"`` when a gate fails.

    The message names the monitored metric, its value, the best value so far, the epoch and the rule broken.
    """


@dataclass
class _Verdict:
    """What one rank concludes from one check, before the ranks agree."""

    failing: bool = False
    reasons: list[str] = field(default_factory=list)
    margin: float | None = None  # min over the rules that apply; None when no rule applies yet


def _number(value: Any, name: str, *, minimum: float | None = None) -> None:
    """Raise unless ``value`` is ``None`` or a finite real number (``>= minimum`` when given)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a finite number or None, got {value!r}.")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        accepted = "a finite number" + (f" >= {minimum}" if minimum is not None else "")
        raise ValueError(f"`{name}` must be {accepted} or None, got {value!r}.")


def _latest_global_maps(trainer: Trainer, explainer: str) -> dict[str, Any] | None:
    """The latest global maps of ``explainer`` a callback of ``trainer`` holds (``global_maps[explainer]``), or None."""
    for callback in getattr(trainer, "callbacks", []):
        held = getattr(callback, "global_maps", None)
        if isinstance(held, dict) and isinstance(held.get(explainer), dict) and "per_label" in held[explainer]:
            return held[explainer]
    return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


class FaithfulnessGate(Callback):
    r"""Fail (or stop) a training run when a monitored faithfulness score falls below a floor or regresses.

    The gate reads ``trainer.callback_metrics[monitor]`` in ``on_validation_end``, i.e. a scalar that a callback
    or the module logged with ``pl_module.log`` during validation (the :class:`ExplanationMonitor` logs
    ``xai/<explainer>/<metric>``, for example ``xai/GradCAM/deletion_auc``, with its standard error under
    ``xai/<explainer>/<metric>_stderr``). It only judges; it computes nothing.

    When it checks:
        After every validation run **during** ``trainer.fit``: never in the sanity check, never in
        ``trainer.validate()``/``trainer.test()`` (those runs are not gated and leave the gate's state alone).
        With ``val_check_interval < 1`` there are several checks per epoch; ``patience`` counts checks, not epochs.

    Rules (a check *fails* if any rule fails; ``z`` is the two-sided standard-normal quantile of ``confidence``,
    1.96 for 0.95, and ``z = 0`` without ``confidence``; ``se`` is the value's standard error, read from
    ``<monitor>_stderr``; "worse" means lower for ``mode="max"`` and higher for ``mode="min"``):

    * **non-finite** (``check_finite=True``): a NaN or infinite value fails, with its own reason, and no other
      rule is evaluated for it. With ``check_finite=False`` the value goes through the rules below as a float
      (a NaN fails none of them and so counts as a passing check). A non-finite value never becomes a baseline.
    * **threshold** (floor for ``mode="max"``, ceiling for ``mode="min"``): fails when the whole confidence
      interval lies on the wrong side, i.e. ``value + z*se < threshold`` (max) or ``value - z*se > threshold``
      (min). Without ``confidence``: ``value < threshold`` (max), ``value > threshold`` (min).
    * **max_regression**: ``drop = baseline - value`` (max) or ``value - baseline`` (min), where ``baseline`` is the
      best finite value of the *previous* checks (``baseline="best"``) or the first finite value of the run
      (``baseline="first"``). ``allowed = max_regression``, or ``max_regression * |baseline|`` with
      ``relative=True``. Fails when ``drop - allowed > z * sqrt(se**2 + se_baseline**2)``, where ``se_baseline`` is
      the standard error recorded with the baseline value (a one-sided test of the excess drop, at the same ``z``
      as the interval). The uncertainty of ``|baseline|`` in the relative allowance is ignored. The first check has
      no baseline, so this rule does not apply to it.
    * **margin**: the signed distance to failing, the minimum over the rules that apply of
      ``value + z*se - threshold`` (max) / ``threshold - (value - z*se)`` (min) and
      ``allowed + z*sqrt(se**2 + se_baseline**2) - drop``. Positive (or zero) means passing.

    Patience and actions:
        The gate keeps ``wait_count``, the number of consecutive failing checks (a passing check resets it to 0). It
        *acts* when a check fails with ``wait_count > patience`` (so ``patience=N`` tolerates N consecutive failing
        checks and acts at the (N+1)-th) and ``trainer.current_epoch >= min_epochs`` (0-based). Checks before
        ``min_epochs`` are still made, recorded in :attr:`history` and counted in ``wait_count``; they only never act.
        ``action="raise"`` raises :class:`FaithfulnessRegressionError` (on every rank); ``action="stop"`` sets
        ``trainer.should_stop`` like ``EarlyStopping``. Either way :attr:`stopped_epoch` and :attr:`reason` record it.

    Confidence:
        With ``confidence`` set, the standard error is read from ``<monitor>_stderr``. If that key is missing,
        ``strict=True`` raises a ``ValueError`` listing the available keys; ``strict=False`` warns once and uses
        ``se = 0`` (the point estimate). A non-finite or negative standard error is also used as ``se = 0``, with a
        one-time warning. Without ``confidence`` the standard error is ignored.

    Distributed runs:
        Each rank decides on its own ``callback_metrics``; the ranks then agree with
        ``trainer.strategy.reduce_boolean_decision(..., all=False)`` (a check fails everywhere if it fails on any
        rank; a metric missing on any rank is missing everywhere), so every rank raises or stops together and no rank
        is left waiting in a collective. Log the monitored value with ``sync_dist=True`` (torchmetrics values are
        already synchronised) so every rank judges the same number; otherwise the baselines are per rank, and a
        resumed run restores rank 0's.

    Missing or stale metric:
        ``strict=True`` raises a ``ValueError`` naming ``monitor`` and listing the keys of ``callback_metrics``;
        ``strict=False`` warns once and skips the check (nothing is recorded). A value is judged only if it was logged
        by the validation run just ended: ``callback_metrics`` keeps the last value of a key that was not logged again
        (an :class:`ExplanationMonitor` with ``every_n_epochs > 1`` between its runs, or an explainer skipped with
        ``on_error="warn"``), and such a stale value counts as missing. (Lightning re-creates the tensor of every key
        logged in a run and leaves the others as they were, so freshness is the identity of the tensor held in
        ``callback_metrics`` against the one seen at the previous check.) With a monitor that runs every ``n``
        epochs, use ``strict=False``.

    Logged keys (through every logger of ``trainer.loggers``, ``log_metrics(..., step=trainer.global_step)``: a
    callback may not ``pl_module.log`` in ``on_validation_end``):

    ``<monitor>`` stands for the monitored key without its leading ``xai/`` (``xai/gate/GradCAM/deletion_auc/failing``).

    * ``xai/gate/<monitor>/failing``: 1.0 if the check failed (on any rank), else 0.0; logged at every check.
    * ``xai/gate/<monitor>/margin``: the margin above (of this rank, i.e. rank 0 for the loggers); not logged when no
      rule applies yet or when it is not finite (non-finite value).
    * text ``xai/gate/<monitor>`` (every logger with a picture backend, see :mod:`lightning_xai.loggers`, global zero
      only, at ``trainer.global_step``): a report of every failing check, tolerated or acted on.
    * image ``xai/gate/<monitor>/global_maps``, when ``monitor`` is a monitor's
      ``xai/<explainer>/global_relevance_mass_<region>_max``: that explainer's latest global per-label maps with the
      failing labels framed in red. The failing labels are read from the per-label keys
      ``xai/<explainer>/global_relevance_mass_<region>/<label>`` in ``trainer.callback_metrics``: those beyond
      ``threshold``, or, without one, the label holding the worst value; the maps come from the callback that holds
      them (``global_maps[<explainer>]``, as :class:`~lightning_xai.ExplanationMonitor` does).

    State (``state_dict``/``load_state_dict``; resuming from a checkpoint decides exactly as an uninterrupted run):
    ``wait_count``, the best and first values with their standard errors and epochs, ``stopped_epoch``, ``reason``
    and :attr:`history`, one dict per check with keys ``epoch``, ``global_step``, ``value``, ``stderr``, ``baseline``,
    ``baseline_epoch``, ``failing``, ``local_failing``, ``reasons``, ``margin``, ``wait_count``, ``acted``.
    ``state_key`` holds ``monitor`` and ``mode``, so gates on different metrics or modes coexist in one checkpoint.

    Args:
        monitor: key of ``trainer.callback_metrics`` to judge, e.g. ``"xai/GradCAM/deletion_auc"``.
        mode: ``"max"`` if higher values are better (the metric's ``higher_is_better``), ``"min"`` otherwise (deletion
            AUC, for example).
        threshold: absolute floor (``mode="max"``) or ceiling (``mode="min"``); ``None`` for no threshold rule.
        max_regression: allowed worsening from the baseline, ``>= 0``; ``None`` for no regression rule.
        relative: read ``max_regression`` as a fraction of ``|baseline|`` instead of an absolute amount.
        baseline: ``"best"`` (best value of the previous checks) or ``"first"`` (first value of the run).
        patience: number of consecutive failing checks tolerated, ``>= 0``.
        min_epochs: no action before this (0-based) epoch, ``>= 0``.
        confidence: level in ``(0, 1)`` of the interval that must lie beyond the limit, or ``None``.
        action: ``"raise"`` (:class:`FaithfulnessRegressionError`) or ``"stop"`` (``trainer.should_stop``).
        check_finite: fail on a NaN or infinite value.
        strict: raise when ``monitor`` (or, with ``confidence``, ``<monitor>_stderr``) is missing, instead of
            warning once.

    Attributes:
        history: one dict per check (see State above).
        wait_count: consecutive failing checks so far.
        stopped_epoch: epoch at which the gate acted, ``None`` if it has not.
        reason: message of the action, ``None`` if it has not acted.

    Raises:
        ValueError: an argument out of its accepted values, or neither ``threshold`` nor ``max_regression``.
        TypeError: an argument of the wrong type.

    Example:
        >>> from lightning_xai import FaithfulnessGate
        >>> gate = FaithfulnessGate("xai/GradCAM/deletion_auc", mode="min", threshold=0.4, max_regression=0.1,
        ...                         relative=True, patience=1, confidence=0.95)
        >>> gate.state_key
        "FaithfulnessGate{'monitor': 'xai/GradCAM/deletion_auc', 'mode': 'min'}"
        >>> FaithfulnessGate("xai/GradCAM/deletion_auc", mode="lower")
        Traceback (most recent call last):
        ...
        ValueError: `mode` must be one of ('max', 'min'), got 'lower'.
    """

    def __init__(
        self,
        monitor: str,
        mode: Literal["max", "min"] = "max",
        threshold: float | None = None,
        max_regression: float | None = None,
        relative: bool = False,
        baseline: Literal["best", "first"] = "best",
        patience: int = 0,
        min_epochs: int = 0,
        confidence: float | None = None,
        action: Literal["raise", "stop"] = "raise",
        check_finite: bool = True,
        strict: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"`monitor` must be a non-empty str (a key of trainer.callback_metrics), got {monitor!r}.")
        check_choice(mode, "mode", _MODES)
        _number(threshold, "threshold")
        _number(max_regression, "max_regression", minimum=0.0)
        check_bool(relative, "relative")
        check_choice(baseline, "baseline", _BASELINES)
        check_positive_int(patience, "patience", minimum=0)
        check_positive_int(min_epochs, "min_epochs", minimum=0)
        if confidence is not None:
            check_in_range(confidence, "confidence", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_choice(action, "action", _ACTIONS)
        check_bool(check_finite, "check_finite")
        check_bool(strict, "strict")
        if threshold is None and max_regression is None:
            raise ValueError(
                "FaithfulnessGate needs at least one rule: set `threshold` (a floor or ceiling) and/or "
                "`max_regression` (the allowed drop from the baseline); got threshold=None, max_regression=None."
            )
        if relative and max_regression is None:
            raise ValueError("`relative=True` scales `max_regression`, which is None; set `max_regression` too.")

        self.monitor = monitor
        self.mode = mode
        self.threshold = None if threshold is None else float(threshold)
        self.max_regression = None if max_regression is None else float(max_regression)
        self.relative = relative
        self.baseline = baseline
        self.patience = patience
        self.min_epochs = min_epochs
        self.confidence = confidence
        self.action = action
        self.check_finite = check_finite
        self.strict = strict
        self.z = 0.0 if confidence is None else normal_quantile(confidence)

        self.wait_count = 0
        self.best_value: float | None = None
        self.best_stderr = 0.0
        self.best_epoch: int | None = None
        self.first_value: float | None = None
        self.first_stderr = 0.0
        self.first_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.reason: str | None = None
        self.history: list[dict[str, Any]] = []
        self._warned: set[str] = set()
        self._last_seen: Any = None  # the callback_metrics tensor judged at the previous check

    # ------------------------------------------------------------------ keys and state
    @property
    def state_key(self) -> str:
        """Identifies this gate's state in a checkpoint: class name, ``monitor`` and ``mode``."""
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def stderr_key(self) -> str:
        """Key of the monitored value's standard error in ``callback_metrics``: ``<monitor>_stderr``."""
        return f"{self.monitor}_stderr"

    @property
    def status_prefix(self) -> str:
        """Prefix of the keys the gate logs: ``xai/gate/<monitor>``, the monitor's own ``xai/`` not repeated.

        Example:
            >>> FaithfulnessGate("xai/GradCAM/deletion_auc", mode="min", threshold=0.4).status_prefix
            'xai/gate/GradCAM/deletion_auc'
        """
        return f"xai/gate/{self.monitor.removeprefix('xai/')}"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to decide after a restart exactly as without one."""
        return {
            "wait_count": self.wait_count,
            "best_value": self.best_value,
            "best_stderr": self.best_stderr,
            "best_epoch": self.best_epoch,
            "first_value": self.first_value,
            "first_stderr": self.first_stderr,
            "first_epoch": self.first_epoch,
            "stopped_epoch": self.stopped_epoch,
            "reason": self.reason,
            "history": [dict(entry, reasons=list(entry["reasons"])) for entry in self.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (keys missing from older checkpoints keep their defaults)."""
        self.wait_count = int(state_dict.get("wait_count", 0))
        self.best_value = state_dict.get("best_value")
        self.best_stderr = float(state_dict.get("best_stderr", 0.0))
        self.best_epoch = state_dict.get("best_epoch")
        self.first_value = state_dict.get("first_value")
        self.first_stderr = float(state_dict.get("first_stderr", 0.0))
        self.first_epoch = state_dict.get("first_epoch")
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self.reason = state_dict.get("reason")
        self.history = [dict(entry, reasons=list(entry["reasons"])) for entry in state_dict.get("history", [])]

    # ------------------------------------------------------------------ the check
    def _should_skip(self, trainer: Trainer) -> bool:
        """Checks run only after validation inside ``fit``, never in the sanity check."""
        return trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Read the monitored value, agree across ranks, record, log and act."""
        if self._should_skip(trainer):
            return
        value, stderr, missing_message = self._read(trainer)
        missing = trainer.strategy.reduce_boolean_decision(missing_message is not None, all=False)
        if missing:
            message = missing_message or (
                f"FaithfulnessGate: `monitor`={self.monitor!r} (or its `_stderr`) is missing from "
                "trainer.callback_metrics on another rank; log it on every rank (not with rank_zero_only=True)."
            )
            if self.strict:
                raise ValueError(message)
            self._warn_once("missing", message + " The check is skipped (strict=False).")
            return
        assert value is not None  # for mypy: not missing on this rank

        verdict = self._evaluate(value, stderr)
        failing = trainer.strategy.reduce_boolean_decision(verdict.failing, all=False)
        reasons = verdict.reasons if verdict.failing else []
        if failing and not verdict.failing:
            reasons = ["the check failed on another rank (this rank's value passes every rule)"]
        self.wait_count = self.wait_count + 1 if failing else 0
        epoch = trainer.current_epoch
        acted = failing and self.wait_count > self.patience and epoch >= self.min_epochs

        baseline_value, _, baseline_epoch = self._baseline()
        self.history.append(
            {
                "epoch": epoch,
                "global_step": trainer.global_step,
                "value": value,
                "stderr": stderr,
                "baseline": baseline_value,
                "baseline_epoch": baseline_epoch,
                "failing": failing,
                "local_failing": verdict.failing,
                "reasons": reasons,
                "margin": verdict.margin,
                "wait_count": self.wait_count,
                "acted": acted,
            }
        )
        self._update_baselines(value, stderr, epoch)
        self._log_status(trainer, failing, verdict.margin)
        if not failing:
            return

        message = self._message(epoch, trainer.global_step, value, stderr, reasons, acted)
        self._write_report(trainer, message)
        if not acted:
            rank_zero_info(message)
            return
        self.stopped_epoch = epoch
        self.reason = message
        if self.action == "stop":
            trainer.should_stop = True
            rank_zero_warn(message, category=RuntimeWarning)
            return
        raise FaithfulnessRegressionError(message)

    def _read(self, trainer: Trainer) -> tuple[float | None, float, str | None]:
        """``(value, stderr, missing_message)`` from ``callback_metrics``; ``value`` is None when missing."""
        logs = trainer.callback_metrics
        available = ", ".join(f"`{key}`" for key in sorted(logs)) or "none"
        if self.monitor not in logs:
            missing = f"FaithfulnessGate: `monitor`={self.monitor!r} is not in trainer.callback_metrics."
            return None, 0.0, f"{missing} Available keys: {available}."
        if logs[self.monitor] is self._last_seen:
            return (
                None,
                0.0,
                (
                    f"FaithfulnessGate: `monitor`={self.monitor!r} was not logged by this validation run (epoch "
                    f"{trainer.current_epoch}); trainer.callback_metrics still holds the value of an earlier run, "
                    "which is not judged again. This happens between the runs of an ExplanationMonitor with "
                    "every_n_epochs > 1 or when its explainer was skipped (on_error='warn'); pass strict=False to skip "
                    "such checks."
                ),
            )
        self._last_seen = logs[self.monitor]
        value = float(logs[self.monitor].squeeze())
        if self.confidence is None:
            return value, 0.0, None
        if self.stderr_key not in logs:
            message = (
                f"FaithfulnessGate: `confidence`={self.confidence} needs the standard error {self.stderr_key!r}, "
                f"which is not in trainer.callback_metrics. Available keys: {available}."
            )
            if self.strict:
                return None, 0.0, message
            self._warn_once("stderr", message + " Using a standard error of 0 (strict=False).")
            return value, 0.0, None
        stderr = float(logs[self.stderr_key].squeeze())
        if not (math.isfinite(stderr) and stderr >= 0.0):
            self._warn_once(
                "bad_stderr", f"FaithfulnessGate: {self.stderr_key!r} = {stderr} is not a finite number >= 0; using 0."
            )
            stderr = 0.0
        return value, stderr, None

    def _baseline(self) -> tuple[float | None, float, int | None]:
        if self.baseline == "best":
            return self.best_value, self.best_stderr, self.best_epoch
        return self.first_value, self.first_stderr, self.first_epoch

    def _evaluate(self, value: float, stderr: float) -> _Verdict:
        """This rank's verdict on ``value`` against every rule (see the class docstring)."""
        verdict = _Verdict()
        if self.check_finite and not math.isfinite(value):
            verdict.failing = True
            verdict.reasons.append(f"non-finite: the value is {value} (check_finite=True)")
            return verdict
        sign = 1.0 if self.mode == "max" else -1.0  # sign * value is "higher is better"
        margins: list[float] = []
        if self.threshold is not None:
            bound = value + sign * self.z * stderr  # the end of the interval nearest to passing
            margin = sign * (bound - self.threshold)
            margins.append(margin)
            if margin < 0:
                side, limit = ("<", "floor") if self.mode == "max" else (">", "ceiling")
                reason = f"threshold: value {_fmt(value)} {side} {limit} {_fmt(self.threshold)}"
                if self.confidence is not None:
                    end, op = ("upper", "+") if self.mode == "max" else ("lower", "-")
                    reason += (
                        f", and so does the whole {self.confidence:g} interval (its {end} end {_fmt(value)} {op} "
                        f"{self.z:.4g} x se {_fmt(stderr)} = {_fmt(bound)} {side} {_fmt(self.threshold)})"
                    )
                verdict.reasons.append(reason)
        baseline_value, baseline_stderr, baseline_epoch = self._baseline()
        if self.max_regression is not None and baseline_value is not None:
            drop = sign * (baseline_value - value)
            allowed = self.max_regression * (abs(baseline_value) if self.relative else 1.0)
            tolerance = self.z * math.sqrt(stderr**2 + baseline_stderr**2)
            margin = allowed + tolerance - drop
            margins.append(margin)
            if margin < 0:
                rule = f"{self.max_regression:g} x |baseline|" if self.relative else f"{self.max_regression:g}"
                detail = (
                    f"max_regression: worsened by {_fmt(drop)} from the {self.baseline} value {_fmt(baseline_value)} "
                    f"(epoch {baseline_epoch}), more than the allowed {_fmt(allowed)} (= {rule})"
                )
                if self.confidence is not None:
                    detail += (
                        f" by {_fmt(drop - allowed)} > {self.z:.4g} x sqrt(se^2 + se_baseline^2) = {_fmt(tolerance)}"
                        f" (se {_fmt(stderr)}, se_baseline {_fmt(baseline_stderr)}, confidence {self.confidence:g})"
                    )
                verdict.reasons.append(detail)
        verdict.failing = bool(verdict.reasons)
        verdict.margin = min(margins) if margins else None
        return verdict

    def _update_baselines(self, value: float, stderr: float, epoch: int) -> None:
        if not math.isfinite(value):
            return
        if self.first_value is None:
            self.first_value, self.first_stderr, self.first_epoch = value, stderr, epoch
        better = self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value)
        if better:
            self.best_value, self.best_stderr, self.best_epoch = value, stderr, epoch

    # ------------------------------------------------------------------ reporting
    def _message(
        self, epoch: int, global_step: int, value: float, stderr: float, reasons: list[str], acted: bool
    ) -> str:
        error = f" (standard error {_fmt(stderr)})" if self.confidence is not None else ""
        if acted:
            outcome = "raising FaithfulnessRegressionError" if self.action == "raise" else "stopping the trainer"
        elif epoch < self.min_epochs:
            outcome = f"no action before min_epochs={self.min_epochs}"
        else:
            outcome = f"tolerated (patience={self.patience})"
        return (
            f"FaithfulnessGate failed on `{self.monitor}` (mode={self.mode}) at epoch {epoch}, global step "
            f"{global_step}: value {_fmt(value)}{error}; best {_fmt(self.best_value)} (epoch {self.best_epoch}), "
            f"first {_fmt(self.first_value)} (epoch {self.first_epoch}). Rule broken: {'; '.join(reasons)}. "
            f"Failing checks in a row: {self.wait_count}; {outcome}."
        )

    def _log_status(self, trainer: Trainer, failing: bool, margin: float | None) -> None:
        metrics = {f"{self.status_prefix}/failing": float(failing)}
        if margin is not None and math.isfinite(margin):
            metrics[f"{self.status_prefix}/margin"] = margin
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()

    def _write_report(self, trainer: Trainer, message: str) -> None:
        rows = "\n".join(
            f"| {entry['epoch']} | {entry['global_step']} | {_fmt(entry['value'])} | {_fmt(entry['baseline'])} "
            f"| {_fmt(entry['margin'])} | {int(entry['failing'])} |"
            for entry in self.history[-10:]
        )
        report = (
            f"{message}\n\n| epoch | step | value | baseline | margin | failing |\n|---|---|---|---|---|---|\n{rows}"
        )
        pictures = PictureLogger(trainer, owner=type(self).__name__)
        pictures.text(self.status_prefix, report, trainer.global_step)
        if pictures.active and (picture := self._failing_labels_picture(trainer)) is not None:
            pictures.image(f"{self.status_prefix}/global_maps", picture, trainer.global_step)

    def failing_labels(self, trainer: Trainer) -> list[int]:
        """Labels to blame when ``monitor`` is a ``..._max`` over per-label global masses (see "Logged keys")."""
        match = re.fullmatch(r"xai/([^/]+)/(global_relevance_mass_.+)_max", self.monitor)
        if match is None:
            return []
        prefix = f"xai/{match.group(1)}/{match.group(2)}/"
        values = {
            int(key[len(prefix) :]): float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(prefix) and key[len(prefix) :].isdigit()
        }
        if not values:
            return []
        if self.threshold is not None:
            beyond = [label for label, value in values.items() if (value > self.threshold) == (self.mode == "min")]
            if beyond:
                return sorted(beyond)
        worst = max if self.mode == "min" else min
        return [worst(values, key=values.__getitem__)]

    def _failing_labels_picture(self, trainer: Trainer) -> Any:
        labels = self.failing_labels(trainer)
        if not labels:
            return None
        explainer = self.monitor.split("/")[1]
        maps = _latest_global_maps(trainer, explainer)
        if maps is None:
            return None
        title = f"{explainer}: the gate fails for label(s) {', '.join(map(str, labels))} (framed)"
        return map_grid(maps["per_label"], counts=maps.get("count"), highlight=labels, title=title)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message, category=UserWarning)

"""Two-process CPU DDP in tests: a function in two gloo processes, or a script under Lightning's DDP launcher.

:func:`run_distributed` spawns ``fn`` itself. The ``_*_ddp_script.py`` integration scripts instead build a
:func:`ddp_trainer` (Lightning's launcher re-executes the script for rank 1), save each rank's result with
:func:`save_rank_result`; their tests start them with :func:`run_ddp_script` and read the results back with
:func:`load_rank_results`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; return each rank's result.

    ``fn`` must be importable (defined at module level of a test module) and return something ``torch.save``
    can store. The process group is set up and torn down around it.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, _free_port(), fn, args, out_dir), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


#: Variables of a surrounding distributed run: a script must start without them to launch its own 2 processes.
_DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")


def run_ddp_script(
    script: Path, *args: str | Path, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python script *args`` in a fresh process (one thread, unbuffered, no inherited rank variables).

    Returns the completed process with its stdout and stderr as text; raises ``subprocess.TimeoutExpired`` after
    ``timeout`` seconds.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in _DISTRIBUTED_ENV:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def load_rank_results(out_dir: Path, world_size: int = 2) -> list[Any]:
    """What each rank saved with :func:`save_rank_result` to ``out_dir/rank<r>.pt``, in rank order."""
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def seed_single_threaded(seed: int = 0) -> None:
    """One torch thread per rank (2 cores shared) and Lightning's global seed."""
    torch.set_num_threads(1)
    L.seed_everything(seed, verbose=False)


def ddp_trainer(out_dir: Path, **kwargs: Any) -> L.Trainer:
    """A 2-process CPU ``ddp`` Trainer rooted at ``out_dir``: no logger, progress bar, model summary or checkpoints.

    ``kwargs`` (epochs, batch limits, callbacks, ...) are passed to ``L.Trainer``.
    """
    return L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        default_root_dir=str(out_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def xai_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The ``xai/`` entries of ``trainer.callback_metrics`` as floats."""
    return {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("xai/")}


def save_rank_result(trainer: L.Trainer, out_dir: Path, result: Any) -> None:
    """Save this rank's ``result`` to ``out_dir/rank<global_rank>.pt`` (read by :func:`load_rank_results`)."""
    torch.save(result, out_dir / f"rank{trainer.global_rank}.pt")

"""Complete, atomic checkpoints, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds everything a resumed run needs to continue exactly where it stopped: model and EMA
state dicts, optimizer, learning-rate scheduler and gradient scaler states, the step, the number of
samples used, the RNG states (Python, NumPy, torch, CUDA) of every rank, and the resolved config.
Every value is a tensor or plain Python data, so no pickled code runs on load. Files are written to a
temporary name and renamed, so a crash never leaves a truncated ``last.pt``.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctsr_models.io.atomic import atomic_file

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_NUMBERED = re.compile(r"step_(\d+)\.pt$")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it onto ``path``."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint of this trainer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path.name} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "config" not in state:
        raise ValueError(f"{path.name} is not a checkpoint of this trainer (format {CHECKPOINT_FORMAT})")
    return state


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def numbered_name(step: int) -> str:
    """File name of the periodic checkpoint of ``step``."""
    return f"step_{step:07d}.pt"


def prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest numbered checkpoints in ``folder`` (``last.pt`` is never touched)."""
    numbered = sorted((int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _NUMBERED.search(p.name)))
    for _, path in numbered[: max(len(numbered) - keep, 0)]:
        path.unlink(missing_ok=True)
        log.debug("removed old checkpoint %s", path.name)

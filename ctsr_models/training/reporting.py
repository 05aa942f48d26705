"""What a run shows and leaves behind, written by rank 0 only: a progress bar, log lines, TensorBoard
scalars and image panels (``tb/``), and the final ``summary.json``."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ctsr_models.io.atomic import atomic_file

log = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and NumPy scalars as Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic, indented JSON (non-finite floats become ``null``)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n")


class Reporter:
    """Rank 0's outputs; on other ranks every method does nothing.

    Args:
        run_dir: the run folder (``None``: nothing is written).
        enabled: True on rank 0.
        tensorboard: write TensorBoard event files to ``run_dir / "tb"``.
        total_steps: steps of the whole run (progress bar length).
        start_step: step the run starts (or resumes) at.
    """

    def __init__(self, run_dir: Path | None, enabled: bool, tensorboard: bool, total_steps: int, start_step: int) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        show_bar = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not show_bar,
                        dynamic_ncols=True)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Route log lines above the progress bar while training."""
        with logging_redirect_tqdm():
            yield

    def step(self, loss: float | None, samples_per_s: float | None) -> None:
        """Advance the progress bar by one step and show the latest loss and throughput."""
        if not self.enabled:
            return
        self.bar.update(1)
        if loss is not None:
            post = {"loss": f"{loss:.4g}"}
            if samples_per_s:
                post["samples/s"] = f"{samples_per_s:.1f}"
            self.bar.set_postfix(post, refresh=False)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        """``prefix/name`` TensorBoard scalars (non-finite values are skipped)."""
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Grey images ``(H, W)`` in ``[0, 1]`` as TensorBoard image panels."""
        if self.writer is None:
            return
        for name, image in images.items():
            self.writer.add_image(name, np.clip(image, 0.0, 1.0)[None], step, dataformats="CHW")

    def summary(self, data: dict[str, Any]) -> Path | None:
        """Write ``summary.json``; returns its path on rank 0."""
        if not self.enabled or self.run_dir is None:
            return None
        path = self.run_dir / "summary.json"
        write_json(path, data)
        return path

    def close(self) -> None:
        """Close the progress bar and flush TensorBoard."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

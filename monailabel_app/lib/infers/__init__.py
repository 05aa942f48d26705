"""The infer tasks this app can serve, by name. A new task is one module here and one line in ``TASKS``
(see ``docs/server.md``, "Adding a task")."""
from __future__ import annotations

from collections.abc import Callable

from monailabel.interfaces.tasks.infer_v2 import InferTask

from .base import InputSpec, VolumeInferTask
from .denoise import CTDenoise
from .super_resolution import CTSuperResolution
from .xray_to_ct import XrayToCT

TASKS: dict[str, Callable[[dict[str, str]], InferTask]] = {
    "ct_super_resolution": lambda conf: CTSuperResolution(max_output_voxels=int(conf["max_output_voxels"])),
    "xray_to_ct": lambda conf: XrayToCT(),
    "ct_denoise": lambda conf: CTDenoise(),
}
"""Task name -> factory taking the app's ``--conf`` values (with defaults filled in)."""

__all__ = ["TASKS", "CTDenoise", "CTSuperResolution", "InputSpec", "VolumeInferTask", "XrayToCT"]

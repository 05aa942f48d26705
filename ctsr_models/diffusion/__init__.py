"""Noise maths and the one sampling loop, no networks inside.

Every scheduler implements :class:`FewStepScheduler`: it holds a noise schedule and nothing else
(``set_timesteps``, ``prior_sample``, ``add_noise``, ``training_target``, ``predict_x0``, ``step``).
:func:`sample` is the one loop that turns a network into samples; :func:`build_scheduler` picks a
scheduler by its registered name (``"resshift"``, ``"ddim"``, ``"rflow"``). See ``docs/diffusion.md``.
"""
from __future__ import annotations

from .base import FewStepScheduler
from .ddim import DDIMFewStep
from .registry import SCHEDULERS, build_scheduler
from .resshift import ResShiftScheduler
from .rflow import RFlowFewStep
from .sampling import sample

__all__ = ["SCHEDULERS", "DDIMFewStep", "FewStepScheduler", "RFlowFewStep", "ResShiftScheduler", "build_scheduler",
           "sample"]

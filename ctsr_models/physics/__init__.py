"""How scanners blur: thick-slice simulation in physical space (thin slices integrated by a rect or
Gaussian slice-sensitivity profile, with any thickness, spacing, gap or overlap, and optional noise).
Training tasks degrade patches with :func:`degrade_axis`; CLIs and benchmarks make simulated thick
volumes with exact geometry with :func:`simulate_thick_slices`. The X-ray projector (DRR) will live here too."""
from __future__ import annotations

from .thick_slice import PROFILES, degrade_axis, simulate_thick_slices, slab_centres_for, slab_weights

__all__ = ["PROFILES", "degrade_axis", "simulate_thick_slices", "slab_centres_for", "slab_weights"]

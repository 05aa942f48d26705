"""How scanners blur and project: thick-slice simulation in physical space (thin slices integrated by
a rect or Gaussian slice-sensitivity profile, with any thickness, spacing, gap or overlap, and optional
noise), and the cone-beam X-ray projector (DRR) with its projection geometry. Training tasks degrade
patches with :func:`degrade_axis`; CLIs and benchmarks make simulated thick volumes with exact geometry
with :func:`simulate_thick_slices`; X-ray tasks simulate radiographs with :func:`project`."""
from __future__ import annotations

from .projector import (EFFECTIVE_ENERGY_KEV, MU_AIR_PER_MM, MU_WATER_PER_MM, VolumeGrid, drr, hu_to_mu, project,
                        to_intensity)
from .thick_slice import PROFILES, degrade_axis, simulate_thick_slices, slab_centres_for, slab_weights
from .xray_geometry import VIEWS, ProjectionGeometry, load_geometries, save_geometries, view_name

__all__ = [
    "EFFECTIVE_ENERGY_KEV", "MU_AIR_PER_MM", "MU_WATER_PER_MM", "PROFILES", "VIEWS", "ProjectionGeometry",
    "VolumeGrid", "degrade_axis", "drr", "hu_to_mu", "load_geometries", "project", "save_geometries",
    "simulate_thick_slices", "slab_centres_for", "slab_weights", "to_intensity", "view_name",
]

"""How scanners blur and project: thick-slice simulation in physical space (thin slices integrated by
a rect or Gaussian slice-sensitivity profile, with any thickness, spacing, gap or overlap, and optional
noise), the slab operator and the projection onto acquired slabs (data consistency,
:class:`SlabOperator`), slab-profile estimation from a thick volume itself (:func:`estimate_slice_profile`),
lower-dose simulation by sinogram-domain noise insertion (:func:`simulate_low_dose`), and the
cone-beam X-ray projector (DRR) with its projection geometry. Training tasks degrade
patches with :func:`degrade_axis`; CLIs and benchmarks make simulated thick volumes with exact geometry
with :func:`simulate_thick_slices`; X-ray tasks simulate radiographs with :func:`project`."""
from __future__ import annotations

from .consistency import SlabConstraint, SlabOperator, consistency_rmse
from .dose import DoseSettings, simulate_low_dose
from .profile_estimate import EstimateOptions, ProfileEstimate, ProfileFit, estimate_slice_profile
from .projector import (EFFECTIVE_ENERGY_KEV, MU_AIR_PER_MM, MU_WATER_PER_MM, VolumeGrid, drr, hu_to_mu, project,
                        to_intensity)
from .thick_slice import PROFILES, degrade_axis, simulate_thick_slices, slab_centres_for, slab_weights
from ctsr_models.io.xray_geometry import VIEWS, ProjectionGeometry, load_geometries, save_geometries, view_name

__all__ = [
    "EFFECTIVE_ENERGY_KEV", "MU_AIR_PER_MM", "MU_WATER_PER_MM", "PROFILES", "VIEWS", "ProjectionGeometry",
    "VolumeGrid", "degrade_axis", "drr", "hu_to_mu", "load_geometries", "project", "save_geometries",
    "EstimateOptions", "ProfileEstimate", "ProfileFit", "SlabConstraint", "SlabOperator", "consistency_rmse",
    "estimate_slice_profile",
    "DoseSettings", "simulate_low_dose", "simulate_thick_slices", "slab_centres_for", "slab_weights",
    "to_intensity", "view_name",
]

"""The projection geometry of a radiograph now lives in :mod:`ctsr_models.io.xray_geometry` (geometry
travels with the image it describes, and ``io`` sits below ``physics``); this module re-exports it so
``ctsr_models.physics.xray_geometry`` imports keep working."""
from __future__ import annotations

from ctsr_models.io.xray_geometry import (DEFAULT_SID_MM, DEFAULT_SOD_MM, VIEWS, ProjectionGeometry, load_geometries,
                                          save_geometries, view_name)

__all__ = ["DEFAULT_SID_MM", "DEFAULT_SOD_MM", "VIEWS", "ProjectionGeometry", "load_geometries", "save_geometries",
           "view_name"]

"""The one volume type: an HU array with its exact physical geometry.

Conventions (shared by every module):
    * ``array`` is indexed ``(z, y, x)``: z is the slice index, y the row, x the column.
    * ``spacing``, ``origin`` and ``direction`` are in ITK order ``(x, y, z)``, LPS, millimetres,
      exactly as SimpleITK and DICOM define them: the centre of voxel ``array[k, j, i]`` lies at
      ``origin + D @ (spacing * (i, j, k))`` where ``D`` is ``direction`` as a row-major 3x3 matrix
      whose columns are the unit vectors of the x, y and z axes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

Vec3 = tuple[float, float, float]


@dataclass
class Volume:
    """A CT volume in HU with the geometry that places it in the patient.

    Attributes:
        array: voxel values ``(z, y, x)``, HU (int16 on disk, float32 in compute).
        spacing: voxel size ``(x, y, z)`` in mm; z is the distance between slice centres.
        origin: LPS position (mm) of the centre of voxel ``(0, 0, 0)``.
        direction: 9 numbers, row-major 3x3, columns are the x, y, z axis unit vectors (LPS).
        slice_thickness: nominal thickness of each slice or slab in mm, when known (may differ
            from the z spacing: gaps or overlaps).
        meta: DICOM identity of the source (patient, study, frame of reference), used only to
            write a derived series. Holds patient data: never log it.
        findings: geometry notes made while reading (e.g. that the series was resampled).
    """

    array: np.ndarray
    spacing: Vec3
    origin: Vec3
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    slice_thickness: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a volume array must be 3D (z, y, x), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(d) for d in np.asarray(self.direction).ravel())
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("spacing and origin need 3 numbers and direction 9")
        if min(self.spacing) <= 0 or not np.all(np.isfinite(self.spacing)):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")
        d = self.direction_matrix
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError("direction must be an orthonormal 3x3 matrix")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 matrix whose columns are the x, y, z axis unit vectors (LPS)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit vector (LPS) along which the slice index k grows."""
        return self.direction_matrix[:, 2].copy()

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(..., 3)`` in ``(i, j, k)`` order to LPS points in mm."""
        idx = np.asarray(index_xyz, dtype=np.float64)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction_matrix.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map LPS points ``(..., 3)`` in mm to continuous ``(i, j, k)`` indices."""
        rel = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return (rel @ self.direction_matrix) / np.asarray(self.spacing)

    def slice_positions(self) -> np.ndarray:
        """Positions (mm) of the slice centres along :attr:`slice_normal`, measured from the
        LPS origin (the same number DICOM gives as ``ImagePositionPatient · normal``)."""
        start = float(np.dot(self.origin, self.slice_normal))
        return start + self.spacing[2] * np.arange(self.shape[0], dtype=np.float64)

    def replace(self, **changes: Any) -> Volume:
        """A copy with some fields changed (the array is not copied unless given)."""
        changes.setdefault("meta", dict(self.meta))
        changes.setdefault("findings", list(self.findings))
        return dataclasses.replace(self, **changes)

    def geometry_dict(self) -> dict[str, Any]:
        """Geometry as plain JSON-able numbers (no patient data)."""
        return {
            "size_xyz": [int(self.shape[2]), int(self.shape[1]), int(self.shape[0])],
            "spacing_xyz_mm": [round(s, 6) for s in self.spacing],
            "origin_lps_mm": [round(o, 6) for o in self.origin],
            "direction": [round(d, 6) for d in self.direction],
            "slice_thickness_mm": None if self.slice_thickness is None else round(self.slice_thickness, 6),
        }

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array), isVector=False)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, **fields: Any) -> Volume:
        """Wrap a 3D SimpleITK image (its voxels are copied into a numpy array)."""
        import SimpleITK as sitk

        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("expected a 3D single-component image")
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=img.GetDirection(),
            **fields,
        )

"""Where the slices of a DICOM series really are, what is irregular about them, and how to resample.

Pure numpy (no pydicom): the DICOM reader passes the per-slice ``ImagePositionPatient`` (IPP) and
``ImageOrientationPatient`` (IOP) values and gets back a :class:`SliceGeometryReport` that names every
problem with numbers. The slice normal is ``n = row x col`` of the IOP (LPS); a slice's position is
``IPP . n`` in mm, and slices are sorted so that the index grows along ``n``, as in SimpleITK.

Tolerances (all documented as module constants):
    * positions: a series is regular when every slice lies within ``POSITION_ATOL_MM +
      POSITION_RTOL * spacing`` of the uniform grid through the first and last slice;
    * gantry tilt / shear: a slice's in-plane offset from the line through the first slice along
      ``n`` may be at most ``POSITION_ATOL_MM + SHEAR_RTOL * distance along n`` (0.057 degrees);
    * orientation: direction cosines of all slices agree within ``ORIENTATION_ATOL``;
    * pixel spacing agrees within ``PIXEL_SPACING_ATOL_MM``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

POSITION_ATOL_MM = 0.01
"""Absolute tolerance on slice positions (mm): DICOM positions are decimal strings."""
POSITION_RTOL = 0.01
"""Tolerance on slice positions as a fraction of the slice gap."""
SHEAR_RTOL = 1e-3
"""In-plane drift allowed per mm along the normal before a series counts as tilted (0.057 deg)."""
ORIENTATION_ATOL = 1e-4
"""Largest difference between the direction cosines of two slices of one stack."""
ORTHONORMAL_ATOL = 1e-3
"""How far the IOP row/column vectors may be from unit length and orthogonality."""
PIXEL_SPACING_ATOL_MM = 1e-4
"""Largest difference between the pixel spacings of two slices of one stack (mm)."""
TILT_TAG_ATOL_DEG = 0.01
"""``GantryDetectorTilt`` values within this many degrees of zero count as no tilt."""
FILL_HU = -1024.0
"""Value (HU, air) given to resampled voxels that fall outside a source slice's field of view."""

GANTRY_TILT = "gantry_tilt"
INPLANE_OFFSETS = "inplane_offsets"
NONUNIFORM_SPACING = "nonuniform_spacing"
MISSING_SLICES = "missing_slices"
DUPLICATE_POSITIONS = "duplicate_positions"
MIXED_ORIENTATION = "mixed_orientation"
MIXED_SIZE = "mixed_size"
MIXED_PIXEL_SPACING = "mixed_pixel_spacing"
MISSING_GEOMETRY = "missing_geometry"
INVALID_ORIENTATION = "invalid_orientation"
SINGLE_SLICE = "single_slice"
GANTRY_TILT_TAG = "gantry_tilt_tag"
RESAMPLED_IRREGULAR = "resampled_irregular"

RESAMPLABLE = frozenset({GANTRY_TILT, INPLANE_OFFSETS, NONUNIFORM_SPACING, MISSING_SLICES})
"""Problems that resampling from the true slice positions solves; every other one is refused."""


@dataclass
class SliceGeometryReport:
    """What the slice positions of one stack say about its geometry.

    Attributes:
        normal: unit slice normal ``row x col`` (LPS).
        row: unit vector along a row (direction in which the column index grows), LPS.
        col: unit vector along a column (direction in which the row index grows), LPS.
        order: indices that sort the input slices by position along ``normal``.
        positions: sorted slice positions along ``normal`` (mm).
        gaps: differences between consecutive sorted positions (mm), ``len(positions) - 1``.
        findings: codes of the problems found (empty when the stack is a regular grid).
        messages: one human sentence per finding, with numbers.
        notes: information that is not a problem (e.g. ``"gantry_tilt_tag: ..."``).
        spacing: the uniform slice gap (mm) when regular, else ``None``.
        typical_gap: median gap (mm), ``None`` for fewer than 2 slices.
        tilt_deg: angle between the slice stacking direction and the normal (degrees).
        shear_mm_per_slice: in-plane shift between consecutive slices at the typical gap (mm).
    """

    normal: np.ndarray
    row: np.ndarray
    col: np.ndarray
    order: np.ndarray
    positions: np.ndarray
    gaps: np.ndarray
    findings: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spacing: float | None = None
    typical_gap: float | None = None
    tilt_deg: float = 0.0
    shear_mm_per_slice: float = 0.0

    @property
    def regular(self) -> bool:
        """True when the slices form a regular grid (possibly oblique) that needs no resampling."""
        return not self.findings

    @property
    def resamplable(self) -> bool:
        """True when every problem found is solved by :func:`resample_to_regular`."""
        return bool(self.findings) and set(self.findings) <= RESAMPLABLE

    def summary(self) -> str:
        """All problem messages in one line (empty when regular)."""
        return "; ".join(self.messages)

    def _add(self, code: str, message: str) -> None:
        self.findings.append(code)
        self.messages.append(message)


def orthonormal_axes(iop: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and normal unit vectors from an ``ImageOrientationPatient`` value.

    Args:
        iop: 6 direction cosines (row vector then column vector), LPS.

    Returns:
        ``(row, col, normal)``; ``col`` is made exactly orthogonal to ``row`` (Gram-Schmidt) and
        ``normal = row x col``.

    Raises:
        ValueError: when the vectors are not unit length and orthogonal within ``ORTHONORMAL_ATOL``.
    """
    v = np.asarray(iop, dtype=np.float64).reshape(2, 3)
    row, col = v[0], v[1]
    if (abs(np.linalg.norm(row) - 1) > ORTHONORMAL_ATOL or abs(np.linalg.norm(col) - 1) > ORTHONORMAL_ATOL
            or abs(float(row @ col)) > ORTHONORMAL_ATOL):
        raise ValueError(f"ImageOrientationPatient {np.round(v.ravel(), 6).tolist()} is not two orthogonal "
                         "unit vectors")
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def analyse_slices(
    iops: Sequence[Sequence[float] | None],
    ipps: Sequence[Sequence[float] | None],
    *,
    pixel_spacings: Sequence[Sequence[float] | None] | None = None,
    shapes: Sequence[tuple[int, int]] | None = None,
    gantry_tilts_deg: Sequence[float | None] | None = None,
) -> SliceGeometryReport:
    """Sort the slices of one stack along their normal and name everything irregular.

    Args:
        iops: per slice, the 6 ``ImageOrientationPatient`` cosines (``None`` when missing).
        ipps: per slice, the ``ImagePositionPatient`` (mm, LPS; ``None`` when missing).
        pixel_spacings: per slice, DICOM ``PixelSpacing`` (row spacing, column spacing) in mm.
        shapes: per slice, ``(Rows, Columns)``.
        gantry_tilts_deg: per slice, the ``GantryDetectorTilt`` tag (degrees) when present.

    Returns:
        The report; ``report.regular`` is True only when the positions support one uniform spacing
        along the normal with no in-plane shift, and all slices share orientation and pixel grid.
    """
    n = len(ipps)
    if n == 0 or len(iops) != n:
        raise ValueError(f"need one IPP and one IOP per slice, got {n} and {len(iops)}")
    missing = _missing_geometry(iops, ipps, pixel_spacings)
    if missing:
        return _unusable(n, MISSING_GEOMETRY, missing)
    iop_arr = np.asarray(iops, dtype=np.float64).reshape(n, 6)
    ipp_arr = np.asarray(ipps, dtype=np.float64).reshape(n, 3)
    try:
        row, col, normal = orthonormal_axes(iop_arr[0])
    except ValueError as exc:
        return _unusable(n, INVALID_ORIENTATION, f"{exc}; this cannot be read as a volume")
    positions_unsorted = ipp_arr @ normal
    order = np.argsort(positions_unsorted, kind="stable")
    positions = positions_unsorted[order]
    report = SliceGeometryReport(normal, row, col, order, positions, np.diff(positions))
    if n >= 2:
        report.typical_gap = float(np.median(report.gaps))
    if _check_orientation(report, iop_arr, normal):
        return report
    _check_pixel_grid(report, pixel_spacings, shapes)
    if n == 1:
        report._add(SINGLE_SLICE, "a single slice (2D image), not a volume")
        return report
    _check_shear(report, ipp_arr[order], gantry_tilts_deg)
    _check_spacing(report)
    return report


def _missing_geometry(iops: Sequence[Sequence[float] | None], ipps: Sequence[Sequence[float] | None],
                      pixel_spacings: Sequence[Sequence[float] | None] | None) -> str:
    """A message naming the geometry tags missing on some slices (empty when none is missing)."""
    tags = {"ImagePositionPatient": ipps, "ImageOrientationPatient": iops, "PixelSpacing": pixel_spacings or ()}
    missing = [name for name, values in tags.items() if any(v is None for v in values)]
    if not missing:
        return ""
    count = sum(any(values[i] is None for values in tags.values() if values) for i in range(len(ipps)))
    return (f"{' and '.join(missing)} missing on {count} of {len(ipps)} slices, so the slice positions are "
            "unknown; this cannot be read as a volume")


def _unusable(n: int, code: str, message: str) -> SliceGeometryReport:
    """A report for slices whose positions cannot even be computed."""
    nan, empty = np.full(3, np.nan), np.zeros(0)
    report = SliceGeometryReport(nan, nan.copy(), nan.copy(), np.arange(n), empty, empty)
    report._add(code, message)
    return report


def _check_orientation(report: SliceGeometryReport, iops: np.ndarray, normal: np.ndarray) -> bool:
    """Add ``mixed_orientation`` when the slices do not share one IOP; True when found."""
    deviation = np.abs(iops - iops[0]).max()
    if deviation <= ORIENTATION_ATOL:
        return False
    normals = np.cross(iops[:, :3], iops[:, 3:])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    angle = float(np.degrees(np.arccos(np.clip(np.abs(normals @ normal), -1.0, 1.0))).max())
    n_distinct = len({tuple(np.round(v, 4)) for v in iops})
    report._add(MIXED_ORIENTATION, f"mixed slice orientations ({n_distinct} different ImageOrientationPatient values, "
                                   f"normals up to {angle:.1f}° apart, e.g. localizers or reformats mixed in); "
                                   "choose one series or split it by orientation")
    return True


def _check_pixel_grid(report: SliceGeometryReport, pixel_spacings: Sequence[Sequence[float] | None] | None,
                      shapes: Sequence[tuple[int, int]] | None) -> None:
    """Add ``mixed_size`` / ``mixed_pixel_spacing`` when slices differ in their pixel grid."""
    if shapes is not None and len({tuple(int(v) for v in s) for s in shapes}) > 1:
        sizes = sorted({f"{int(s[0])}x{int(s[1])}" for s in shapes})
        report._add(MIXED_SIZE, f"mixed image sizes (Rows x Columns {', '.join(sizes[:4])}); "
                                "choose one series or split it by image size")
    if pixel_spacings is not None:
        ps = np.asarray(pixel_spacings, dtype=np.float64).reshape(len(pixel_spacings), 2)
        if np.abs(ps - ps[0]).max() > PIXEL_SPACING_ATOL_MM:
            report._add(MIXED_PIXEL_SPACING, f"mixed pixel spacing ({ps.min():.4g} to {ps.max():.4g} mm); "
                                             "choose one series or split it by pixel spacing")


def _check_shear(report: SliceGeometryReport, ipps_sorted: np.ndarray,
                 gantry_tilts_deg: Sequence[float | None] | None) -> None:
    """Find in-plane shifts between slices (gantry tilt) and compare with the tilt tag."""
    rel = ipps_sorted - ipps_sorted[0]
    along = rel @ report.normal
    perp = rel - np.outer(along, report.normal)
    tol = POSITION_ATOL_MM + SHEAR_RTOL * np.abs(along)
    tags = [float(t) for t in (gantry_tilts_deg or []) if t is not None and abs(float(t)) > TILT_TAG_ATOL_DEG]
    tag_text = f"GantryDetectorTilt {tags[0]:g}°" if tags else ""
    if np.all(np.linalg.norm(perp, axis=1) <= tol):
        if tags:
            report.notes.append(f"{GANTRY_TILT_TAG}: {tag_text}, but the slice positions are not sheared "
                                "(the tilt is already in ImageOrientationPatient)")
        return
    denom = float(along @ along)
    slope = (along @ perp) / denom if denom > 0 else np.zeros(3)
    residual = np.linalg.norm(perp - np.outer(along, slope), axis=1)
    report.tilt_deg = float(np.degrees(np.arctan(np.linalg.norm(slope))))
    report.shear_mm_per_slice = float(np.linalg.norm(slope) * (report.typical_gap or 0.0))
    if np.all(residual <= tol):
        extra = f"; {tag_text}" if tag_text else ""
        report._add(GANTRY_TILT, f"gantry tilt of {report.tilt_deg:.1f}° (slices are sheared "
                                 f"{report.shear_mm_per_slice:.2f} mm per slice in-plane{extra})")
    else:
        largest = float(np.linalg.norm(perp, axis=1).max())
        report._add(INPLANE_OFFSETS, f"slices are shifted in-plane by up to {largest:.2f} mm "
                                     "relative to each other, not along their normal")


def _check_spacing(report: SliceGeometryReport) -> None:
    """Classify the gaps: uniform, duplicates, missing slices or non-uniform."""
    positions, gaps = report.positions, report.gaps
    n = len(positions)
    duplicate = gaps <= POSITION_ATOL_MM
    if duplicate.any():
        n_unique = int(n - duplicate.sum())
        report._add(DUPLICATE_POSITIONS, f"duplicate slice positions ({n} slices at {n_unique} distinct "
                                         "positions: several phases or acquisitions in one series?); choose one "
                                         "series or split the phases (e.g. by AcquisitionNumber) before loading")
        return
    mean_gap = float((positions[-1] - positions[0]) / (n - 1))
    grid = positions[0] + mean_gap * np.arange(n)
    if np.abs(positions - grid).max() <= POSITION_ATOL_MM + POSITION_RTOL * mean_gap:
        report.spacing = mean_gap
        return
    typical = float(report.typical_gap)
    multiple = np.rint(gaps / typical)
    tol = POSITION_ATOL_MM + POSITION_RTOL * typical * np.maximum(multiple, 1)
    if np.all(multiple >= 1) and np.all(np.abs(gaps - multiple * typical) <= tol):
        big = gaps[multiple >= 2]
        size = f"{big[0]:.2f} mm" if np.ptp(big) < POSITION_ATOL_MM else f"{big.min():.2f} to {big.max():.2f} mm"
        report._add(MISSING_SLICES, f"missing slices ({len(big)} gap{'s' if len(big) > 1 else ''} of {size} where "
                                    f"the typical gap is {typical:.2f} mm: about {int((multiple - 1).sum())} "
                                    "slice(s) missing)")
    else:
        report._add(NONUNIFORM_SPACING, f"non-uniform slice spacing (gaps {gaps.min():.2f} to {gaps.max():.2f} mm)")


def resample_to_regular(
    slices: np.ndarray,
    ipps: np.ndarray,
    iop: Sequence[float],
    pixel_spacing: Sequence[float],
    spacing_mm: float,
    *,
    fill_value: float = FILL_HU,
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, ...]]:
    """Resample sheared or irregularly spaced slices onto a regular orthogonal grid.

    The target grid has the axes ``(row, col, n)`` of the IOP, the source pixel grid in-plane, and
    slices every ``spacing_mm`` along ``n`` starting at the first (lowest) true slice, up to the
    last true slice. Each source slice ``i`` is first shifted into the target in-plane grid: its
    pixel offset relative to the grid origin ``O`` is ``((O - IPP_i) . row / dx, (O - IPP_i) . col / dy)``
    (bilinear, ``scipy.ndimage.shift``); each target slice is then the linear blend, along ``n``, of
    the two true slices that bracket it. Target voxels outside a source slice's field of view get
    ``fill_value`` (air, -1024 HU, by default).

    Args:
        slices: ``(n, y, x)`` source slices (HU), sorted by position along the normal, n >= 2.
        ipps: ``(n, 3)`` their ``ImagePositionPatient`` (mm, LPS), same order.
        iop: the 6 ``ImageOrientationPatient`` cosines shared by all slices.
        pixel_spacing: DICOM ``PixelSpacing`` ``(row spacing dy, column spacing dx)`` in mm.
        spacing_mm: target distance between slices along the normal (mm).
        fill_value: HU for voxels outside the field of view.

    Returns:
        ``(array, origin, direction)``: the ``(z, y, x)`` float32 array, the LPS origin (IPP of the
        first true slice, mm) and the 9 direction cosines (row-major 3x3, columns row, col, n).
    """
    slices = np.asarray(slices, dtype=np.float32)
    ipps = np.asarray(ipps, dtype=np.float64).reshape(-1, 3)
    if slices.ndim != 3 or len(slices) != len(ipps) or len(ipps) < 2:
        raise ValueError(f"need (n, y, x) slices with one IPP each and n >= 2, got {slices.shape} and {len(ipps)} IPPs")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    row, col, normal = orthonormal_axes(iop)
    positions = ipps @ normal
    if np.any(np.diff(positions) <= 0):
        raise ValueError("slices must be sorted by strictly increasing position along the normal")
    aligned = _align_in_plane(slices, ipps, row, col, pixel_spacing, fill_value)
    count = int(np.floor((positions[-1] - positions[0]) / spacing_mm + 1e-6)) + 1
    out = _blend_along_normal(aligned, positions, positions[0] + spacing_mm * np.arange(count))
    logger.debug("resampled %d slices onto %d regular slices at %.4f mm", len(slices), len(out), spacing_mm)
    direction = tuple(float(v) for v in np.column_stack([row, col, normal]).ravel())
    return out, tuple(float(v) for v in ipps[0]), direction


def _align_in_plane(slices: np.ndarray, ipps: np.ndarray, row: np.ndarray, col: np.ndarray,
                    pixel_spacing: Sequence[float], fill_value: float) -> np.ndarray:
    """Shift every slice into the in-plane pixel grid of the first one (bilinear).

    Slice ``i`` seen from the grid of slice 0 is offset by ``((O - IPP_i) . row / dx,
    (O - IPP_i) . col / dy)`` pixels (columns, rows), ``O = IPP_0``; the offset does not depend on the
    position along the normal because ``row`` and ``col`` are orthogonal to it.
    """
    dy, dx = (float(v) for v in pixel_spacing)
    aligned = np.empty_like(slices)
    for i in range(len(slices)):
        offset_x = float((ipps[0] - ipps[i]) @ row / dx)
        offset_y = float((ipps[0] - ipps[i]) @ col / dy)
        if abs(offset_x) < 1e-6 and abs(offset_y) < 1e-6:
            aligned[i] = slices[i]
        else:
            ndimage.shift(slices[i], (-offset_y, -offset_x), output=aligned[i], order=1, mode="constant",
                          cval=fill_value, prefilter=False)
    return aligned


def _blend_along_normal(aligned: np.ndarray, positions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each target slice is the linear blend of the two aligned slices that bracket its position."""
    out = np.empty((len(targets),) + aligned.shape[1:], dtype=np.float32)
    for k, t in enumerate(targets):
        a = int(np.clip(np.searchsorted(positions, t, side="right") - 1, 0, len(positions) - 2))
        w = float(np.clip((t - positions[a]) / (positions[a + 1] - positions[a]), 0.0, 1.0))
        if w == 0.0 or w == 1.0:
            out[k] = aligned[a + int(w)]
        else:
            np.add((1.0 - w) * aligned[a], w * aligned[a + 1], out=out[k])
    return out

"""Projection geometry of a radiograph from what its file states, with every assumption written down.

A clinical radiograph rarely carries its whole geometry. The rules (see ``docs/xray.md``):

- **View**: the caller's ``view``, else the DICOM ``ViewPosition`` (``PA``, ``AP``, ``LL``, ``RL``,
  ``LATERAL``), else the axis of ``PatientOrientation`` (left/right columns: frontal, assumed PA;
  anterior/posterior columns: lateral), else ``pa``.
- **Source-to-detector (SID)**: the caller's, else ``DistanceSourceToDetector``, else
  :data:`~ctsr_models.physics.xray_geometry.DEFAULT_SID_MM`.
- **Detector pixel**: the caller's, else ``ImagerPixelSpacing`` (always at the detector), else
  ``PixelSpacing`` taken as the detector pixel, else the longer image side spans
  :data:`DEFAULT_FIELD_MM`.
- **Source-to-isocentre (SOD)**: the caller's, else the calibration of ``PixelSpacing`` against
  ``ImagerPixelSpacing`` (magnification), else ``DistanceSourceToPatient`` (the support surface)
  less :data:`HALF_THICKNESS_MM` of the view, else the isocentre lies ``DEFAULT_SID_MM -
  DEFAULT_SOD_MM`` before the detector.
- **Orientation**: the standard view's display convention, mirrored where ``PatientOrientation``
  says the rows or columns run the other way.

Every default used adds a finding that starts with ``geometry assumed:``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .xray_geometry import DEFAULT_SID_MM, DEFAULT_SOD_MM, VIEWS, ProjectionGeometry, view_name

from .errors import InputError

Vec3 = tuple[float, float, float]

DEFAULT_FIELD_MM = 430.0
"""Detector length (a 43 cm, 17 in cassette) assumed along the longer image side without a pixel size."""
CT_LOCALIZER_SID_MM = 1040.0
"""Source-to-detector distance assumed for a CT localizer without ``DistanceSourceToDetector``."""
CT_LOCALIZER_SOD_MM = 570.0
"""Source-to-isocentre distance assumed for a CT localizer without ``DistanceSourceToPatient``."""
HALF_THICKNESS_MM = {"pa": 100.0, "ap": 100.0, "ll": 150.0, "rl": 150.0}
"""Depth of the isocentre (mid-patient) before the patient support surface that DX
``DistanceSourceToPatient`` measures to: half an adult chest's depth (frontal) or width (lateral)."""
LETTER_VECTORS: dict[str, Vec3] = {"L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0), "P": (0.0, 1.0, 0.0),
                                   "A": (0.0, -1.0, 0.0), "H": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0)}
"""DICOM patient-orientation letters as LPS unit vectors."""
_AXIS_WORDS = {"row": "rows", "col": "columns"}


@dataclass(frozen=True)
class GeometryRequest:
    """What the caller says about a radiograph's geometry; each given value overrides the file.

    Attributes:
        view: ``pa``, ``ap``, ``lateral``/``ll`` or ``rl``.
        geometry: the whole geometry (overrides everything else).
        sid: source-to-detector distance, mm.
        sod: source-to-isocentre distance, mm.
        pixel_mm: detector pixel size, mm (one number or ``(row, col)``).
        fallback_view: the view when neither ``view`` nor the file gives one (e.g. ``lateral`` for
            the image a client sent as the lateral one).
    """

    view: str | None = None
    geometry: ProjectionGeometry | None = None
    sid: float | None = None
    sod: float | None = None
    pixel_mm: float | tuple[float, float] | None = None
    fallback_view: str = "pa"

    @property
    def partial(self) -> bool:
        """True when any single value (not a whole geometry) is given."""
        return any(v is not None for v in (self.view, self.sid, self.sod, self.pixel_mm))


def pixel_pair(value: float | tuple[float, float] | list[float]) -> tuple[float, float]:
    """``(row, col)`` pixel size from one number or a pair."""
    pair = (float(value), float(value)) if np.isscalar(value) else tuple(float(v) for v in value)
    if len(pair) != 2 or not min(pair) > 0 or not np.all(np.isfinite(pair)):
        raise InputError(f"pixel size must be one or two positive numbers (mm), got {value}")
    return pair  # type: ignore[return-value]


def standard_geometry(shape: tuple[int, int], findings: list[str], view: str | None = None, sid: float | None = None,
                      sod: float | None = None, pixel_mm: float | tuple[float, float] | None = None,
                      isocentre: Vec3 = (0.0, 0.0, 0.0), fallback_view: str = "pa") -> ProjectionGeometry:
    """A standard view of a detector of ``shape`` pixels, filling what is unknown with defaults.

    Each default used appends a ``geometry assumed: ...`` note to ``findings``.

    Raises:
        InputError: inconsistent values (``sod >= sid``, an unknown view, a bad pixel size).
    """
    if view is None:
        view = checked_view(fallback_view)
        findings.append(f"geometry assumed: view {view} (none given)")
    if sid is None:
        sid = DEFAULT_SID_MM
        findings.append(f"geometry assumed: source-to-detector {DEFAULT_SID_MM:g} mm")
    if sod is None:
        sod = sid - (DEFAULT_SID_MM - DEFAULT_SOD_MM)
        findings.append(f"geometry assumed: isocentre {DEFAULT_SID_MM - DEFAULT_SOD_MM:g} mm before the detector "
                        f"(source-to-isocentre {sod:g} mm)")
    if pixel_mm is None:
        pixel_mm = DEFAULT_FIELD_MM / max(shape)
        findings.append(f"geometry assumed: detector pixel {pixel_mm:.4g} mm (the longer side spans "
                        f"{DEFAULT_FIELD_MM:g} mm)")
    try:
        return ProjectionGeometry.standard(view, sid=float(sid), sod=float(sod), shape=shape,
                                           pixel_mm=pixel_pair(pixel_mm), isocentre=isocentre)
    except ValueError as exc:
        raise InputError(f"radiograph geometry: {exc}") from exc


def view_from_orientation(orientation: list[str], findings: list[str]) -> str | None:
    """A view guessed from the axis of ``PatientOrientation``'s column letter, ``None`` if it says nothing."""
    if len(orientation) != 2 or not orientation[0]:
        return None
    letter = orientation[0][0]
    guess = {"L": "pa", "R": "pa", "P": "ll", "A": "rl"}.get(letter)
    if guess:
        findings.append(f"geometry assumed: view {guess} (no ViewPosition; PatientOrientation columns run "
                        f"towards {letter})")
    return guess


def orient_to_patient(geometry: ProjectionGeometry, orientation: list[str], findings: list[str]) -> ProjectionGeometry:
    """Mirror the detector's rows or columns where DICOM ``PatientOrientation`` says they run the other way.

    Args:
        geometry: a standard view.
        orientation: ``PatientOrientation`` values: the patient direction of growing column index, then
            of growing row index (``["L", "F"]`` for a PA chest as displayed).
        findings: notes are appended here.
    """
    if len(orientation) != 2 or not all(orientation):
        return geometry
    shown = "\\".join(orientation)
    for axis, letters in zip(("col", "row"), orientation):
        if letters[0] not in LETTER_VECTORS:
            findings.append(f"PatientOrientation {shown} not understood; ignored")
            return geometry
        along = float(np.dot(LETTER_VECTORS[letters[0]], getattr(geometry, f"{axis}_dir")))
        if along < -0.5:
            geometry = _mirror(geometry, axis)
            findings.append(f"PatientOrientation {shown}: {_AXIS_WORDS[axis]} mirrored against the "
                            f"{geometry.view} display convention")
        elif along <= 0.5:
            findings.append(f"PatientOrientation {shown} does not fit view {geometry.view}; kept the view's convention")
    return geometry


def _mirror(geometry: ProjectionGeometry, axis: str) -> ProjectionGeometry:
    """The same detector with the row (``"row"``) or column (``"col"``) index running the other way."""
    k = 0 if axis == "row" else 1
    direction = np.asarray(getattr(geometry, f"{axis}_dir"))
    origin = np.asarray(geometry.origin) + direction * geometry.pixel_mm[k] * (geometry.shape[k] - 1)
    return replace(geometry, origin=tuple(origin), **{f"{axis}_dir": tuple(-direction)})


def orientation_letters(direction: Vec3) -> str:
    """DICOM patient-orientation letters of an LPS direction (``"L"``, ``"PF"``, ...), main axis first."""
    d = np.asarray(direction, dtype=np.float64)
    names = (("L", "R"), ("P", "A"), ("H", "F"))
    order = np.argsort(-np.abs(d))
    return "".join(names[i][0 if d[i] > 0 else 1] for i in order if abs(d[i]) > 0.25)


def view_of_beam(beam: np.ndarray) -> str:
    """The standard view whose beam direction is within 10° of ``beam``, else ``"other"``."""
    b = np.asarray(beam, dtype=np.float64) / np.linalg.norm(beam)
    for name, (view_beam, _, _) in VIEWS.items():
        if float(np.dot(b, view_beam)) > np.cos(np.radians(10.0)):
            return name
    return "other"


def checked_view(view: str) -> str:
    """:func:`~ctsr_models.physics.xray_geometry.view_name` with :class:`InputError`."""
    try:
        return view_name(view)
    except ValueError as exc:
        raise InputError(str(exc)) from exc

"""Where an X-ray comes from and where it lands: point source, flat detector, patient coordinates.

One :class:`ProjectionGeometry` describes one radiograph: the source position, the detector plane
(the centre of pixel ``(0, 0)`` and the unit vectors along which the row and column indices grow) and
the detector's pixel size, all in LPS millimetres like :class:`~ctsr_models.io.Volume`. The projector,
the radiograph reader and the X-ray → CT network all use this one object, so a voxel that the
network lifts from pixel ``(r, c)`` is the voxel the projector integrates into pixel ``(r, c)``.

Standard views (:meth:`ProjectionGeometry.standard`) put the isocentre at the middle of the detector,
the source ``sod`` mm before it and the detector ``sid - sod`` mm behind it, and use the display
convention of chest radiographs: rows grow towards the feet; on frontal views the patient's left is on
the image's right (PA and AP alike); on lateral views the patient's front is on the image's left
(``ll``, the standard left lateral, beam from the patient's right to left) or right (``rl``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_file

Vec3 = tuple[float, float, float]

#: view name → (beam direction source → detector, column direction, row direction), LPS unit vectors.
VIEWS: dict[str, tuple[Vec3, Vec3, Vec3]] = {
    "pa": ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "ap": ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "ll": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "rl": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
}
VIEW_ALIASES = {"lateral": "ll", "lat": "ll", "left_lateral": "ll", "right_lateral": "rl", "frontal": "pa"}
DEFAULT_SID_MM = 1800.0  # chest radiography: 180 cm source-to-image distance
DEFAULT_SOD_MM = 1500.0  # isocentre 30 cm before the detector (mid-chest)


def view_name(view: str) -> str:
    """The canonical view name (``pa``, ``ap``, ``ll``, ``rl``) for a name or alias.

    Raises:
        ValueError: an unknown view.
    """
    key = view.strip().lower()
    key = VIEW_ALIASES.get(key, key)
    if key not in VIEWS:
        raise ValueError(f"unknown X-ray view {view!r}: use one of pa, ap, lateral (= ll), ll, rl")
    return key


def _unit(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"not a direction: {tuple(a)}")
    return a / n


@dataclass(frozen=True)
class ProjectionGeometry:
    """A point-source radiograph on a flat detector (LPS, mm).

    Attributes:
        source: the focal spot.
        origin: centre of detector pixel ``(row 0, column 0)``.
        row_dir: unit vector along which the row index grows (down the image).
        col_dir: unit vector along which the column index grows (to the right).
        shape: detector size ``(rows, cols)`` in pixels.
        pixel_mm: pixel size ``(row spacing, column spacing)`` on the detector, mm.
        view: ``pa``, ``ap``, ``ll``, ``rl`` or ``other``; informative, the vectors above rule.
    """

    source: Vec3
    origin: Vec3
    row_dir: Vec3
    col_dir: Vec3
    shape: tuple[int, int]
    pixel_mm: tuple[float, float]
    view: str = "other"

    def __post_init__(self) -> None:
        for name in ("source", "origin", "row_dir", "col_dir"):
            value = tuple(float(x) for x in getattr(self, name))
            if len(value) != 3 or not np.all(np.isfinite(value)):
                raise ValueError(f"{name} needs 3 finite numbers, got {value}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "row_dir", tuple(_unit(self.row_dir)))
        object.__setattr__(self, "col_dir", tuple(_unit(self.col_dir)))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "pixel_mm", tuple(float(p) for p in self.pixel_mm))
        if abs(float(np.dot(self.row_dir, self.col_dir))) > 1e-4:
            raise ValueError("detector row and column directions must be perpendicular")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"detector shape must be (rows, cols) >= 1, got {self.shape}")
        if len(self.pixel_mm) != 2 or not min(self.pixel_mm) > 0 or not np.all(np.isfinite(self.pixel_mm)):
            raise ValueError(f"detector pixel size must be two positive numbers (mm), got {self.pixel_mm}")
        if self.sid < 1e-3:
            raise ValueError("the X-ray source lies on the detector plane")

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def standard(cls, view: str, sid: float = DEFAULT_SID_MM, sod: float = DEFAULT_SOD_MM,
                 shape: tuple[int, int] = (256, 256), pixel_mm: float | tuple[float, float] = 1.6,
                 isocentre: Vec3 = (0.0, 0.0, 0.0)) -> ProjectionGeometry:
        """A standard view whose central ray passes through ``isocentre`` and hits the detector centre.

        Args:
            view: ``pa``, ``ap``, ``lateral``/``ll`` or ``rl``.
            sid: source-to-image (detector) distance, mm.
            sod: source-to-isocentre distance, mm (``0 < sod < sid``).
            shape: detector ``(rows, cols)``.
            pixel_mm: detector pixel size, mm (one number or ``(row, col)``).
            isocentre: LPS point on the central ray.
        """
        key = view_name(view)
        if not 0 < sod < sid:
            raise ValueError(f"need 0 < source-to-isocentre ({sod} mm) < source-to-detector ({sid} mm)")
        beam, col, row = (np.asarray(v) for v in VIEWS[key])
        spacing = (float(pixel_mm), float(pixel_mm)) if np.isscalar(pixel_mm) else tuple(map(float, pixel_mm))
        iso = np.asarray(isocentre, dtype=np.float64)
        source = iso - beam * sod
        centre = source + beam * sid
        rows, cols = int(shape[0]), int(shape[1])
        origin = centre - row * spacing[0] * (rows - 1) / 2 - col * spacing[1] * (cols - 1) / 2
        return cls(tuple(source), tuple(origin), tuple(row), tuple(col), (rows, cols), spacing, key)

    @classmethod
    def from_isocentre_plane(cls, position: Vec3, row_dir: Vec3, col_dir: Vec3, spacing: tuple[float, float],
                             shape: tuple[int, int], sid: float, sod: float, beam_sign: float = 1.0,
                             view: str = "other") -> ProjectionGeometry:
        """The geometry of an image whose pixels are given in the isocentre plane (CT localizers).

        DICOM localizers state ImagePositionPatient / ImageOrientationPatient / PixelSpacing in the
        plane through the isocentre. The source sits ``sod`` mm before that plane, on the normal
        through the image centre, and the detector ``sid`` mm from the source: each isocentre-plane
        pixel maps to the detector pixel of the same index, magnified by ``sid / sod``.

        Args:
            position: LPS centre of pixel (0, 0) in the isocentre plane.
            row_dir: unit vector of growing row index (DICOM IOP's second triplet).
            col_dir: unit vector of growing column index (DICOM IOP's first triplet).
            spacing: ``(row, col)`` pixel spacing in the isocentre plane (DICOM PixelSpacing).
            shape: ``(rows, cols)``.
            sid, sod: source-to-detector and source-to-isocentre distances, mm.
            beam_sign: +1 when the beam travels along ``row_dir x col_dir`` (the image seen from the
                detector side, as in :data:`VIEWS` for pa/ll/rl), -1 for the opposite direction.
        """
        if not 0 < sod < sid:
            raise ValueError(f"need 0 < source-to-isocentre ({sod} mm) < source-to-detector ({sid} mm)")
        row, col = _unit(row_dir), _unit(col_dir)
        beam = _unit(np.cross(row, col)) * (1.0 if beam_sign >= 0 else -1.0)
        rows, cols = int(shape[0]), int(shape[1])
        pos = np.asarray(position, dtype=np.float64)
        centre_iso = pos + row * spacing[0] * (rows - 1) / 2 + col * spacing[1] * (cols - 1) / 2
        source = centre_iso - beam * sod
        mag = sid / sod
        origin = source + (pos - source) * mag
        return cls(tuple(source), tuple(origin), tuple(row), tuple(col), (rows, cols),
                   (spacing[0] * mag, spacing[1] * mag), view)

    # --- derived quantities ---------------------------------------------------------------------
    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the detector, pointing away from the source."""
        n = np.cross(self.row_dir, self.col_dir)
        return n if np.dot(n, np.subtract(self.origin, self.source)) > 0 else -n

    @property
    def sid(self) -> float:
        """Source-to-detector-plane distance (mm)."""
        n = np.cross(self.row_dir, self.col_dir)
        return abs(float(np.dot(np.subtract(self.origin, self.source), n)))

    @property
    def centre(self) -> np.ndarray:
        """LPS centre of the detector."""
        rows, cols = self.shape
        return (np.asarray(self.origin) + np.asarray(self.row_dir) * self.pixel_mm[0] * (rows - 1) / 2
                + np.asarray(self.col_dir) * self.pixel_mm[1] * (cols - 1) / 2)

    def magnification_at(self, point: Vec3) -> float:
        """Detector size / object size for an object at ``point`` (sid / source-to-point depth)."""
        depth = float(np.dot(np.subtract(point, self.source), self.normal))
        return self.sid / depth

    def pixel_centres(self) -> np.ndarray:
        """LPS centres of every detector pixel, ``(rows, cols, 3)``."""
        rows, cols = self.shape
        r = np.arange(rows, dtype=np.float64)[:, None, None] * self.pixel_mm[0] * np.asarray(self.row_dir)
        c = np.arange(cols, dtype=np.float64)[None, :, None] * self.pixel_mm[1] * np.asarray(self.col_dir)
        return np.asarray(self.origin) + r + c

    def to_detector(self, points: np.ndarray) -> np.ndarray:
        """Continuous detector indices ``(..., 2)`` as ``(row, col)`` where rays through ``points`` land.

        Points at or behind the source come out as NaN.
        """
        p = np.asarray(points, dtype=np.float64)
        s, n = np.asarray(self.source), self.normal
        d = p - s
        depth = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(depth > 1e-9, self.sid / depth, np.nan)
        hit = s + d * t[..., None] - np.asarray(self.origin)
        return np.stack([hit @ np.asarray(self.row_dir) / self.pixel_mm[0],
                         hit @ np.asarray(self.col_dir) / self.pixel_mm[1]], axis=-1)

    # --- changes and serialisation ----------------------------------------------------------------
    def moved(self, rotation: np.ndarray | None = None, translation: Vec3 = (0.0, 0.0, 0.0),
              about: Vec3 = (0.0, 0.0, 0.0)) -> ProjectionGeometry:
        """The same source and detector after a rigid motion (rotation about ``about``, then translation)."""
        r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        c, t = np.asarray(about, dtype=np.float64), np.asarray(translation, dtype=np.float64)

        def move(p: Vec3) -> tuple[float, ...]:
            return tuple(r @ (np.asarray(p) - c) + c + t)

        return replace(self, source=move(self.source), origin=move(self.origin),
                       row_dir=tuple(r @ np.asarray(self.row_dir)), col_dir=tuple(r @ np.asarray(self.col_dir)))

    def resized(self, shape: tuple[int, int]) -> ProjectionGeometry:
        """The same detector area sampled with ``shape`` pixels (for network inputs)."""
        rows, cols = self.shape
        spacing = (self.pixel_mm[0] * rows / shape[0], self.pixel_mm[1] * cols / shape[1])
        centre = self.centre
        origin = (centre - np.asarray(self.row_dir) * spacing[0] * (shape[0] - 1) / 2
                  - np.asarray(self.col_dir) * spacing[1] * (shape[1] - 1) / 2)
        return replace(self, origin=tuple(origin), shape=tuple(shape), pixel_mm=spacing)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectionGeometry:
        """Inverse of :meth:`to_dict`; also accepts ``{"view", "sid", "sod", "shape", "pixel_mm",
        "isocentre"}`` for a standard view.

        Raises:
            ValueError: missing or bad fields.
        """
        if "source" in data:
            keys = ("source", "origin", "row_dir", "col_dir", "shape", "pixel_mm")
            missing = [k for k in keys if k not in data]
            if missing:
                raise ValueError(f"projection geometry lacks {', '.join(missing)}")
            return cls(**{k: data[k] for k in keys}, view=str(data.get("view", "other")))
        if "view" not in data:
            raise ValueError("projection geometry needs 'view' (pa, ap, lateral) or explicit source/origin")
        extra = {k: data[k] for k in ("sid", "sod", "shape", "pixel_mm", "isocentre") if k in data}
        return cls.standard(str(data["view"]), **extra)


def save_geometries(geometries: dict[str, ProjectionGeometry], path: str | Path) -> None:
    """Write named geometries as JSON (``{"frontal": {...}, "lateral": {...}}``), atomically."""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps({k: g.to_dict() for k, g in geometries.items()}, indent=1))


def load_geometries(path: str | Path) -> dict[str, ProjectionGeometry]:
    """Read a JSON file of named geometries.

    Raises:
        ValueError: unreadable JSON or a bad entry (the message names it).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read geometry file {Path(path).name}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("a geometry file holds a JSON object of named geometries")
    out = {}
    for name, entry in data.items():
        try:
            out[name] = ProjectionGeometry.from_dict(entry)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"geometry {name!r}: {exc}") from exc
    return out

"""Radiographs with the projection geometry that made them: DICOM DX/CR/CT localizer, PNG and JPEG.

A :class:`Radiograph` is one 2D image whose values grow with attenuation (bone bright) and the
:class:`~ctsr_models.physics.ProjectionGeometry` that says where each pixel's ray came from. A
digitally reconstructed radiograph (``kind="line_integral"``) holds the exact log-domain line
integrals of the projector; a clinical radiograph (``kind="display"``) holds processed values that
are monotonic in attenuation with an unknown scale.

Reading (:func:`read_radiograph`) chooses by content: DICOM (with or without preamble) by the rules
of :mod:`~ctsr_models.io.radiograph_dicom`, PNG/JPEG with the geometry the caller gives, else the
``<name>.geometry.json`` sidecar written beside a PNG, else a standard view from defaults. Every
assumption made is a ``findings`` note (see :mod:`~ctsr_models.io.radiograph_geometry`).

Writing (:func:`write_radiograph`) chooses by suffix: ``.dcm`` (DX, exact geometry in a private
element) or ``.png`` (16-bit, the image's range mapped onto 0..65535 and kept in a ``ctsr`` text
chunk, the geometry in the ``<name>.geometry.json`` sidecar). Inputs are never modified; every
write is atomic.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .xray_geometry import ProjectionGeometry, load_geometries, save_geometries

from .atomic import atomic_file
from .dicom_files import is_dicom_file
from .errors import InputError
from .radiograph_dicom import read_dicom_radiograph, write_dicom_radiograph
from .radiograph_geometry import GeometryRequest, checked_view, standard_geometry

logger = logging.getLogger(__name__)

KINDS = ("line_integral", "display")
"""``line_integral``: exact log-domain DRR; ``display``: a processed radiograph, unknown scale."""
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FILE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd")
"""Image files as 3D Slicer saves a radiograph (one slice): pixel size from the spacing."""
WRITE_SUFFIXES = (".dcm", ".png")
SIDECAR_SUFFIX = ".geometry.json"
_PNG_KEY = "ctsr"
_GREY_MODES = ("L", "I", "I;16", "I;16L", "I;16B", "F")


@dataclass
class Radiograph:
    """One radiograph and its projection geometry.

    Attributes:
        image: ``(rows, cols)`` float32, larger = more attenuation (bone bright); for a DRR the
            log-domain line integral (dimensionless).
        geometry: always present; for files without geometry a standard view from given or default
            values, and ``findings`` says which.
        kind: ``"line_integral"`` or ``"display"`` (see :data:`KINDS`).
        meta: DICOM identity (patient, study) of the source. Patient data: never logged.
        findings: notes made while reading (``"MONOCHROME1 inverted"``, ``"geometry assumed: ..."``).
        isocentre: the LPS point the view is centred on (mm), when known; it gives the
            source-to-isocentre distance written to DICOM.
    """

    image: np.ndarray
    geometry: ProjectionGeometry
    kind: str = "display"
    meta: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    isocentre: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 2:
            raise ValueError(f"a radiograph image is 2D (rows, cols), got shape {self.image.shape}")
        if tuple(self.image.shape) != tuple(self.geometry.shape):
            raise ValueError(f"image {self.image.shape} and detector {self.geometry.shape} differ in size")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.isocentre is not None:
            self.isocentre = tuple(float(v) for v in self.isocentre)  # type: ignore[assignment]


def read_radiograph(path: str | Path, view: str | None = None, geometry: ProjectionGeometry | None = None,
                    sid: float | None = None, sod: float | None = None,
                    pixel_mm: float | tuple[float, float] | None = None, fallback_view: str = "pa") -> Radiograph:
    """Read a radiograph and its projection geometry.

    Args:
        path: DICOM file (DX, CR, RG or CT localizer; with or without preamble), PNG or JPEG, or a
            one-slice NRRD/NIfTI/MHA (as 3D Slicer saves a radiograph).
        view: ``pa``, ``ap``, ``lateral``/``ll`` or ``rl``; overrides the header.
        geometry: the whole geometry (its detector shape must match the image); overrides everything.
        sid: source-to-detector distance, mm; overrides the header.
        sod: source-to-isocentre distance, mm; overrides the header.
        pixel_mm: detector pixel size, mm (one number or ``(row, col)``); overrides the header.
        fallback_view: the view when neither ``view`` nor the file says one (default ``pa``).

    Raises:
        InputError: a missing, corrupt or unsupported file (no pixels, several frames, colour DICOM,
            a CT cross-section), or values that contradict each other; one line a person can act on.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"radiograph not found: {path.name}")
    request = GeometryRequest(view=checked_view(view) if view else None, geometry=geometry, sid=sid, sod=sod,
                              pixel_mm=pixel_mm, fallback_view=checked_view(fallback_view))
    if path.suffix.lower() in PICTURE_SUFFIXES:
        fields = _read_picture(path, request)
    elif path.name.lower().endswith(IMAGE_FILE_SUFFIXES):
        fields = _read_image_file(path, request)
    elif is_dicom_file(path):
        fields = read_dicom_radiograph(path, request)
    else:
        raise InputError(f"{path.name} is not a radiograph file (DICOM, PNG/JPEG, or a one-slice NRRD/NIfTI/MHA)")
    if tuple(fields["geometry"].shape) != fields["image"].shape:
        raise InputError(f"the geometry's detector {tuple(fields['geometry'].shape)} does not match the image "
                         f"{fields['image'].shape} of {path.name}")
    return Radiograph(**fields)


def write_radiograph(rad: Radiograph, path: str | Path) -> None:
    """Write ``rad`` by suffix: ``.dcm`` (DICOM DX) or ``.png`` (16-bit, plus a geometry sidecar).

    Raises:
        InputError: an unsupported suffix.
        ValueError: an image with non-finite values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write a radiograph as {path.name}: use .dcm or .png")
    if not np.all(np.isfinite(rad.image)):
        raise ValueError("the radiograph has non-finite values (NaN or infinity)")
    if suffix == ".dcm":
        write_dicom_radiograph(rad, path)
    else:
        _write_png(rad, path)


def sidecar_path(path: str | Path) -> Path:
    """The geometry sidecar of a picture: ``lateral.png`` → ``lateral.geometry.json``."""
    path = Path(path)
    return path.with_name(path.name.rsplit(".", 1)[0] + SIDECAR_SUFFIX)


def _write_png(rad: Radiograph, path: Path) -> None:
    """16-bit PNG of the image's full range, the range and kind in a text chunk, geometry beside."""
    lo, hi = float(rad.image.min()), float(rad.image.max())
    scale = (hi - lo) / 65535.0 if hi > lo else 1.0
    pixels = np.rint((rad.image.astype(np.float64) - lo) / scale).clip(0, 65535).astype(np.uint16)
    info = PngInfo()
    info.add_text(_PNG_KEY, json.dumps({"kind": rad.kind, "window": [lo, hi], "isocentre": rad.isocentre}))
    with atomic_file(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
    save_geometries({path.name.rsplit(".", 1)[0]: rad.geometry}, sidecar_path(path))
    logger.info("wrote a 16-bit PNG radiograph and its geometry sidecar")


def _read_picture(path: Path, request: GeometryRequest) -> dict[str, Any]:
    """PNG/JPEG: grey values, the ``ctsr`` text chunk if present, geometry from the caller or sidecar."""
    findings: list[str] = []
    try:
        with Image.open(path) as picture:
            picture.load()
            image, text = _grey(picture, findings), dict(getattr(picture, "text", {}) or {})
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path.name} ({type(exc).__name__}); it may be corrupt or truncated") \
            from exc
    record = _png_record(text)
    kind, isocentre = "display", None
    if record is not None:
        lo, hi = record["window"]
        image = (lo + image.astype(np.float64) * ((hi - lo) / 65535.0)).astype(np.float32)
        kind, isocentre = record["kind"], record.get("isocentre")
        findings.append("values restored from the ctsr_models PNG window")
    geometry = request.geometry
    if geometry is not None:
        findings.append("geometry given by the caller")
    elif not request.partial and sidecar_path(path).is_file():
        geometry = _sidecar_geometry(path)
        findings.append(f"geometry from {sidecar_path(path).name}")
    else:
        geometry = standard_geometry(image.shape, findings, request.view, request.sid, request.sod, request.pixel_mm,
                                     fallback_view=request.fallback_view)
        isocentre = (0.0, 0.0, 0.0)
    return {"image": image, "geometry": geometry, "kind": kind, "meta": {}, "findings": findings,
            "isocentre": isocentre}


def _read_image_file(path: Path, request: GeometryRequest) -> dict[str, Any]:
    """A one-slice NRRD/NIfTI/MHA (how 3D Slicer saves a radiograph): values as they are, the pixel size
    from the in-plane spacing unless given, the projection geometry a standard view (file formats of
    volumes carry no source or detector)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read image {path.name}; it may be corrupt or truncated") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path.name} is a colour image; a radiograph must be greyscale")
    array = sitk.GetArrayFromImage(img)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InputError(f"{path.name} holds {array.shape[0]} slices of a volume, not one radiograph; give a single "
                         "X-ray image")
    findings = ["values as stored in the image file (a display radiograph)"]
    geometry = request.geometry
    if geometry is None:
        spacing = img.GetSpacing()
        pixel = request.pixel_mm if request.pixel_mm is not None else (float(spacing[1]), float(spacing[0]))
        if request.pixel_mm is None:
            findings.append(f"detector pixel {pixel[0]:.4g} x {pixel[1]:.4g} mm from the image spacing")
        geometry = standard_geometry(array.shape, findings, request.view, request.sid, request.sod, pixel,
                                     fallback_view=request.fallback_view)
    else:
        findings.append("geometry given by the caller")
    return {"image": array.astype(np.float32), "geometry": geometry, "kind": "display", "meta": {},
            "findings": findings, "isocentre": (0.0, 0.0, 0.0) if request.geometry is None else None}


def _grey(picture: Image.Image, findings: list[str]) -> np.ndarray:
    """The picture's grey values as float32; colour is converted (luma) with a finding."""
    if picture.mode in _GREY_MODES:
        return np.asarray(picture).astype(np.float32)
    if picture.mode in ("1", "P", "PA", "LA"):
        return np.asarray(picture.convert("L")).astype(np.float32)
    rgb = np.asarray(picture.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].astype(np.float32)
    findings.append(f"colour image ({picture.mode}) converted to grey (ITU-R 601 luma)")
    return np.asarray(picture.convert("L")).astype(np.float32)


def _png_record(text: dict[str, Any]) -> dict[str, Any] | None:
    """The ``ctsr`` text chunk written by :func:`write_radiograph`, ``None`` if absent or unreadable."""
    if _PNG_KEY not in text:
        return None
    try:
        record = json.loads(text[_PNG_KEY])
        lo, hi = (float(v) for v in record["window"])
    except (ValueError, KeyError, TypeError):
        logger.warning("ignored an unreadable ctsr_models PNG text chunk")
        return None
    return {**record, "window": (lo, hi)} if record.get("kind") in KINDS else None


def _sidecar_geometry(path: Path) -> ProjectionGeometry:
    """The one geometry in a picture's sidecar."""
    try:
        geometries = load_geometries(sidecar_path(path))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if len(geometries) != 1:
        raise InputError(f"{sidecar_path(path).name} holds {len(geometries)} geometries; a sidecar holds one")
    return next(iter(geometries.values()))

"""The public X2CT-GAN LIDC-IDRI data set (``LIDC-HDF5-256``): one HDF5 file per case.

Layout (as released with X2CT-GAN, Ying et al., CVPR 2019, and read by its ``AlignDataSet``)::

    ROOT/<case name>/ct_xray_data.h5     datasets: ct, xray1 (frontal), xray2 (lateral)
    train.txt, test.txt                  one case name per line

Conventions taken from the X2CT-GAN code (``CT2XRAY/ctpro.py``, ``xraypro.py``, the data loader and
``CT_MIN_MAX: [0, 2500]``), all configurable in :class:`LidcConfig` because the files carry no geometry:
    * ``ct``: a cube resampled to 1 mm and cropped/padded to 320 mm, stored as ``HU + 1024`` in axis
      order ``(y, z, x)`` (the loader permutes it ``(1, 0, 2)`` to ``(z, y, x)``, projects the frontal map
      along its second axis and the lateral one along its third); isocentre at the cube centre.
    * ``xray1`` / ``xray2``: DRRs (plastimatch, source-to-isocentre 541 mm, source-to-detector 949 mm,
      a 500 mm detector) scaled to 0..255, frontal (PA) and lateral; bright = more attenuation.
The orientation of the released arrays cannot be checked offline: :meth:`LidcCase.consistency` scores
the given X-rays against this package's DRRs of the case's CT, which is high only when
``ct_axes``/``ct_flip``/``xray_flip`` are right; check one case before training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctsr_models.io import InputError, Volume
from ctsr_models.physics import ProjectionGeometry, VolumeGrid, drr

from .xray_pairs import normalize_xray

log = logging.getLogger(__name__)

CASE_FILE = "ct_xray_data.h5"
_AXES = ("z", "y", "x")


@dataclass
class LidcConfig:
    """Where the X2CT-GAN LIDC cases are and how to read them (the ``lidc_h5:`` section).

    Attributes:
        root: folder with one sub-folder per case (``None``: not used).
        train_split: text file of training case names (one per line).
        val_split: text file of validation case names (``None``: no LIDC validation).
        use_h5_xrays: feed the X-rays stored in the files (the benchmark's inputs); ``false``: simulate
            them from the case's CT with this package's projector (pose jitter and contrast apply).
        ct_axes: axis order of the stored ``ct`` array (a permutation of ``zyx``).
        ct_flip: axes (of ``z``, ``y``, ``x``) to reverse after reordering.
        ct_offset_hu: added to the stored values to give HU.
        ct_fov_mm: side of the stored cube, mm.
        sid, sod, detector_mm: the geometry the stored X-rays were made with (mm).
        xray_flip: image axes (``rows``, ``cols``) to reverse on both stored X-rays.
        max_cases: read at most this many cases of each split (0: all), for quick runs.
    """

    root: Path | None = None
    train_split: Path | None = None
    val_split: Path | None = None
    use_h5_xrays: bool = True
    ct_axes: str = "yzx"
    ct_flip: list[str] = field(default_factory=list)
    ct_offset_hu: float = -1024.0
    ct_fov_mm: float = 320.0
    sid: float = 949.0
    sod: float = 541.0
    detector_mm: float = 500.0
    xray_flip: list[str] = field(default_factory=list)
    max_cases: int = 0

    def __post_init__(self) -> None:
        if sorted(self.ct_axes) != sorted("zyx") or len(self.ct_axes) != 3:
            raise ValueError(f"ct_axes must be a permutation of zyx, got {self.ct_axes!r}")
        if any(a not in _AXES for a in self.ct_flip) or any(a not in ("rows", "cols") for a in self.xray_flip):
            raise ValueError("ct_flip takes z, y, x and xray_flip takes rows, cols")
        if not 0 < self.sod < self.sid or min(self.ct_fov_mm, self.detector_mm) <= 0 or self.max_cases < 0:
            raise ValueError("need 0 < sod < sid, positive ct_fov_mm and detector_mm, max_cases >= 0")


def read_split(root: Path, split: Path, max_cases: int = 0) -> list[Path]:
    """The case files a split names, in its order.

    Raises:
        InputError: a missing split file, an empty split, or a case without its HDF5 file.
    """
    if not split.is_file():
        raise InputError(f"lidc_h5: split file not found: {split}")
    names = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    if max_cases:
        names = names[:max_cases]
    if not names:
        raise InputError(f"lidc_h5: {split.name} lists no cases")
    paths = [root / name / CASE_FILE for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"lidc_h5: {len(missing)} of {len(paths)} cases of {split.name} have no {CASE_FILE} "
                         f"(first: {missing[0]})")
    return paths


def _resize_image(image: np.ndarray, px: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(px, px), mode="area" if image.shape[0] >= px else "bilinear")[0, 0].numpy()


@dataclass
class LidcCase:
    """One case file, opened only when read (picklable, so data workers read their own)."""

    path: Path
    cfg: LidcConfig

    @property
    def name(self) -> str:
        """The case name (its folder)."""
        return self.path.parent.name

    @property
    def given_xrays(self) -> bool:
        """Whether training feeds the stored X-rays (``use_h5_xrays``) rather than simulated ones."""
        return self.cfg.use_h5_xrays

    def _read(self, key: str) -> np.ndarray:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                return np.asarray(f[key])
        except (OSError, KeyError) as exc:
            raise InputError(f"lidc_h5: cannot read {key!r} of {self.path}: {exc}") from None

    def volume(self) -> Volume:
        """The CT in HU, ``(z, y, x)`` LPS, axis-aligned, centred on the origin."""
        ct = self._read("ct")
        if ct.ndim != 3:
            raise InputError(f"lidc_h5: {self.path} holds a {ct.ndim}D ct, expected 3D")
        order = [self.cfg.ct_axes.index(a) for a in _AXES]
        hu = np.transpose(ct, order).astype(np.float32) + self.cfg.ct_offset_hu
        for axis in self.cfg.ct_flip:
            hu = np.flip(hu, _AXES.index(axis))
        spacing = tuple(self.cfg.ct_fov_mm / n for n in hu.shape[::-1])
        origin = tuple(-(n - 1) * s / 2 for n, s in zip(hu.shape[::-1], spacing))
        return Volume(np.ascontiguousarray(hu), spacing, origin)

    def geometries(self, centre: np.ndarray | None = None) -> list[ProjectionGeometry]:
        """The frontal and lateral geometries of the stored X-rays (isocentre at the CT centre)."""
        shape = self._read("xray1").shape
        iso = tuple(np.zeros(3) if centre is None else centre)
        return [ProjectionGeometry.standard(v, self.cfg.sid, self.cfg.sod, shape,
                                            (self.cfg.detector_mm / shape[0], self.cfg.detector_mm / shape[1]), iso)
                for v in ("pa", "ll")]

    def radiographs(self, px: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored frontal and lateral X-rays resized to ``px``² (area), flipped as configured, raw scale."""
        out = []
        for key in ("xray1", "xray2"):
            image = self._read(key).astype(np.float32)
            if image.ndim == 3:  # (1, h, w) or (h, w, 1) in some copies
                image = image.reshape(image.shape[-2:] if image.shape[0] == 1 else image.shape[:2])
            if "rows" in self.cfg.xray_flip:
                image = image[::-1]
            if "cols" in self.cfg.xray_flip:
                image = image[:, ::-1]
            out.append(_resize_image(image, px))
        return out[0], out[1]

    def consistency(self, px: int = 128) -> dict[str, Any]:
        """PSNR (dB, normalised images) between the stored X-rays and DRRs of the CT made here.

        Well above 20 dB means the orientation settings agree with the files; a flip or a wrong axis
        order gives much lower values.
        """
        vol = self.volume()
        stored = self.radiographs(px)
        out = {}
        for name, geom, image in zip(("frontal", "lateral"), self.geometries(), stored):
            ours = normalize_xray(drr(vol.array, VolumeGrid.of(vol), geom.resized((px, px))))
            mse = float(np.mean((ours - normalize_xray(image)) ** 2))
            out[name] = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
        return out

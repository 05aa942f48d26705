"""Refuse X-ray pairs that cannot be a frontal and a lateral radiograph of one body.

:func:`check_pair` runs before any network work in
:func:`~ctsr_models.inference.xray2ct.reconstruct` and raises :class:`PairError` (an
:class:`~ctsr_models.io.errors.InputError`: CLI exit 2, HTTP 422) with one line a radiologist can act
on. The checks, in order (each measured value and threshold goes into the :class:`PairReport`):

1. **Radiograph** (each image). *Modality*: a DICOM CT that is not a localizer is a CT slice. *Noise*:
   the mean correlation of neighbouring pixels of the central 256² pixels as stored; radiographs are smooth at that
   scale (measured >= 0.82), white or uniform noise is not (about 0). *CT slice*: values that look like
   Hounsfield units of an axial slice (at least :data:`HU_AIR_FRACTION` of the pixels at air, -1000 ±
   100, and :data:`HU_TISSUE_FRACTION` at soft tissue, -150..150; a radiograph never holds negative
   hundreds). *Photograph*: the reader noted a colour picture (radiographs are grey; a chest JPEG
   stored as RGB with equal channels is grey and passes), or the picture has the fine texture of a
   natural scene: the fraction of the thumbnail's gradient energy above 1/8 of its sampling rate
   (:data:`DETAIL_MAX`; radiographs are smooth, photographs are not).
2. **Same picture**: the two 64 px thumbnails, rank-normalised (so any monotonic change of contrast,
   gamma, rescale or inversion of the scale keeps the value) and high-passed (so the shared dark
   background of two DRRs does not count), correlate above :data:`SAME_PICTURE_MIN`; the lateral is
   also tried mirrored left-right (a mirrored copy is the same picture), and each row's mean is removed
   first (the profile along the body, which two views of one body share, check 4). A crop or rotation of the
   same picture is not looked for.
3. **Same view**: both views stated by the files (DICOM ``ViewPosition``, a CT localizer's
   orientation, a DRR's exact geometry, or the caller's geometry) and both frontal or both lateral;
   else, for an image whose view was assumed, the image itself (:func:`view_features`): a frontal
   chest has a bright spine and mediastinum between two dark lungs of equal brightness, a lateral has
   the spine to one side. Frontal: ``central >=`` :data:`FRONTAL_CENTRAL_MIN` and ``asymmetry <=``
   :data:`FRONTAL_ASYMMETRY_MAX`; lateral: ``asymmetry >=`` :data:`LATERAL_ASYMMETRY_MIN`;
   undecided (no refusal) otherwise. Two images both frontal (or both lateral) are refused.
4. **Same body**: both views share the cranio-caudal axis. Detector rows are mapped to patient ``z``
   (mm) in the plane through the point where the central rays meet, through each geometry, when both
   pixel sizes are known; otherwise both fields are assumed to span the same height (rows as fractions
   of the field). Within the common field, the body's cranial and caudal ends must agree within the
   tolerance the geometry allows: an object at the end of the body lies up to
   :data:`HALF_DEPTH_MM` before or behind the reference plane, which moves its image by that fraction
   of the source distance times its distance from the centre, plus :data:`END_SLACK_MM` (tissue ends
   are soft, poses differ by a few degrees); in field fractions :data:`END_SLACK_FRACTION`. And the
   row profiles (mean attenuation per row, the same total for both views of one body) correlate at
   least :data:`PROFILE_MIN` over the common field.

Thresholds were set from the measurements in ``docs/xray.md`` ("Pairs that are refused"): every real
radiograph in ``../shared/data/xray`` and ``dicom_edge``, DRRs (pa, ap, lateral with pose jitter and
X-ray-like contrast) of three real CTs, noise, ``skimage.data`` photographs and axial CT slices.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from ctsr_models.io.errors import InputError
from ctsr_models.io.radiograph import Radiograph

log = logging.getLogger(__name__)

THUMB_PX = 64
"""Side of the thumbnails the pair is compared on (pixels)."""
NOISE_THUMB_PX = 128
"""Side of the thumbnail whose fine detail tells a photograph from a radiograph."""
NOISE_CROP_PX = 256
"""Side of the central crop whose neighbour correlation tells noise from a radiograph."""
NEIGHBOUR_MIN = 0.5
"""Mean neighbour-pixel correlation below which an image is noise (radiographs >= 0.93, noise ~0)."""
DETAIL_MAX = 0.57
"""Fraction of gradient energy at fine scale above which an image is a photograph, not a radiograph."""
HU_AIR_FRACTION = 0.25
HU_TISSUE_FRACTION = 0.10
"""Pixel fractions at air (-1000 ± 100) and soft tissue (-150..150) that make values Hounsfield units."""
SAME_PICTURE_MIN = 0.90
"""High-pass rank correlation of the thumbnails at or above which the two are the same picture."""
FRONTAL_CENTRAL_MIN = 0.25
FRONTAL_ASYMMETRY_MAX = 0.10
LATERAL_ASYMMETRY_MIN = 0.25
"""Frontal: a bright middle band (``central``) and even sides; lateral: uneven sides (:func:`view_features`)."""
HALF_DEPTH_MM = 150.0
"""How far the ends of the body may lie before or behind the reference plane (half a chest's width)."""
END_SLACK_MM = 20.0
END_SLACK_FRACTION = 0.08
"""Extra tolerance on the body's ends, in mm (known geometry) or in fractions of the field."""
PROFILE_MIN = 0.5
"""Correlation of the row profiles at or above which two views can show the same body."""
MIN_COMMON_MM = 50.0
"""The two fields must overlap by at least this much along the body (mm)."""
BODY_LEVEL = 0.15
"""Normalised attenuation above which a pixel shows the body (air and background below)."""
VIEW_KINDS = {"pa": "frontal", "ap": "frontal", "ll": "lateral", "rl": "lateral"}
_Z = np.array([0.0, 0.0, 1.0])


class PairError(InputError):
    """Two images that cannot be a frontal and a lateral radiograph of one body (CLI exit 2, HTTP 422)."""


@dataclass
class PairCheck:
    """One check of a pair.

    Attributes:
        name: ``radiograph``, ``same_picture``, ``same_view`` or ``same_body``.
        passed: ``True``, ``False`` (the pair was refused here) or ``None`` (not decidable; not refused).
        values: what was measured.
        thresholds: what it was compared with.
        note: how it was decided (e.g. ``"views from the files"``).
    """

    name: str
    passed: bool | None
    values: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class PairReport:
    """The checks run on a pair, for the result JSON."""

    checks: list[PairCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"checks": [{name, passed, values, thresholds, note}, ...]}``."""
        return {"checks": [asdict(c) for c in self.checks]}


# ----------------------------------------------------------------------------------------- features
def thumbnail(image: np.ndarray, size: int = THUMB_PX) -> np.ndarray:
    """``(size, size)`` float64 area-averaged copy of ``image``, normalised to 1st..99th percentile [0, 1]."""
    a = np.asarray(image, dtype=np.float64)
    a = np.where(np.isfinite(a), a, np.nanmedian(a) if np.isfinite(a).any() else 0.0)
    factors = (a.shape[0] / size, a.shape[1] / size)
    if max(factors) > 1.5:
        a = gaussian_filter(a, [max(f / 2.0, 0.0) for f in factors], mode="nearest")
    small = zoom(a, (size / a.shape[0], size / a.shape[1]), order=1, mode="nearest", grid_mode=True)
    lo, hi = np.percentile(small, (1.0, 99.0))
    return np.clip((small - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(small)


def rank_image(image: np.ndarray) -> np.ndarray:
    """Pixel ranks scaled to [0, 1] (ties share their mean rank): invariant to monotonic contrast changes."""
    flat = image.ravel()
    order = np.argsort(flat, kind="stable")
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = np.arange(flat.size)
    values, inverse = np.unique(flat, return_inverse=True)
    mean_rank = np.bincount(inverse, ranks) / np.bincount(inverse)
    return (mean_rank[inverse] / max(flat.size - 1, 1)).reshape(image.shape)


def high_pass(image: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """``image`` less its Gaussian blur (sigma in pixels): the detail, without the silhouette."""
    return image - gaussian_filter(image, sigma, mode="nearest")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays; 0 when either is constant."""
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    denom = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b / denom) if denom > 1e-12 else 0.0


def neighbour_correlation(image: np.ndarray) -> float:
    """Mean correlation of horizontally and vertically adjacent pixels of the central (up to)
    ``NOISE_CROP_PX``² pixels, as stored (resampling would correlate noise)."""
    a = np.asarray(image, dtype=np.float64)
    r0, c0 = max((a.shape[0] - NOISE_CROP_PX) // 2, 0), max((a.shape[1] - NOISE_CROP_PX) // 2, 0)
    t = a[r0:r0 + NOISE_CROP_PX, c0:c0 + NOISE_CROP_PX]
    return 0.5 * (correlation(t[:, 1:], t[:, :-1]) + correlation(t[1:], t[:-1]))


def fine_detail(image: np.ndarray) -> float:
    """Fraction of the 128 px thumbnail's gradient energy left after a 2 px Gaussian blur is removed
    from the gradient (fine texture): photographs are textured, radiographs smooth."""
    t = thumbnail(image, NOISE_THUMB_PX)
    gy, gx = np.gradient(t)
    energy = float((gx ** 2 + gy ** 2).sum())
    fine = float((high_pass(gx) ** 2 + high_pass(gy) ** 2).sum())
    return fine / energy if energy > 1e-12 else 0.0


def hu_fractions(image: np.ndarray) -> tuple[float, float]:
    """Fractions of pixels at air (-1000 ± 100) and at soft tissue (-150..150), as in a CT slice in HU."""
    a = np.asarray(image, dtype=np.float64)
    return float(np.mean(np.abs(a + 1000.0) <= 100.0)), float(np.mean(np.abs(a) <= 150.0))


def view_features(image: np.ndarray) -> tuple[float, float]:
    """Two explainable features of the rank thumbnail over the rows 25..60 % of the height (chest).

    Returns:
        ``(central, asymmetry)``: the middle column band (45..55 % of the width) less the mean of the
        two side bands (20..33 % and 67..80 %): positive where a bright spine and mediastinum lie
        between two dark lungs (frontal); and the difference of the two side bands: large where the
        spine lies to one side (lateral).
    """
    t = rank_image(thumbnail(image))
    h, w = t.shape
    band = t[int(0.25 * h):int(0.6 * h)]
    centre = float(band[:, int(0.45 * w):int(0.55 * w)].mean())
    left, right = float(band[:, int(0.2 * w):int(0.33 * w)].mean()), float(band[:, int(0.67 * w):int(0.8 * w)].mean())
    return centre - (left + right) / 2, abs(left - right)


def classify_view(image: np.ndarray) -> tuple[str | None, dict[str, float]]:
    """``"frontal"``, ``"lateral"`` or ``None`` (undecided) from :func:`view_features`."""
    central, asymmetry = view_features(image)
    values = {"central": round(central, 3), "asymmetry": round(asymmetry, 3)}
    if asymmetry >= LATERAL_ASYMMETRY_MIN:
        return "lateral", values
    if central >= FRONTAL_CENTRAL_MIN and asymmetry <= FRONTAL_ASYMMETRY_MAX:
        return "frontal", values
    return None, values


def _without_row_means(image: np.ndarray) -> np.ndarray:
    """``image`` less the mean of each row: the profile along the body that two views of one body share."""
    return image - image.mean(axis=1, keepdims=True)


def same_picture_score(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    """High-pass rank correlation of two images' thumbnails, the best of ``b`` as is and mirrored."""
    ta, tb = (high_pass(_without_row_means(rank_image(thumbnail(x)))) for x in (a, b))
    plain, mirrored = abs(correlation(ta, tb)), abs(correlation(ta, tb[:, ::-1]))
    return max(plain, mirrored), mirrored > plain


# ----------------------------------------------------------------------------------------- body along z
@dataclass
class ZProfile:
    """A radiograph's mean attenuation per height along the body.

    Attributes:
        height: ``(n,)`` patient ``z`` (mm, cranial larger) or field fraction (0 caudal .. 1 cranial).
        profile: ``(n,)`` mean normalised attenuation of each image row (or column) at that height.
        sod: source-to-reference-plane distance, mm (how far body ends may be magnified).
    """

    height: np.ndarray
    profile: np.ndarray
    sod: float


def _scale_known(rad: Radiograph) -> bool:
    return not any(f.startswith("geometry assumed: detector pixel") for f in rad.findings)


def central_rays_meet(a: Radiograph, b: Radiograph) -> np.ndarray | None:
    """Midpoint of the shortest segment between the two central rays; ``None`` if nearly parallel."""
    rays = []
    for g in (a.geometry, b.geometry):
        s = np.asarray(g.source)
        d = g.centre - s
        rays.append((s, d / np.linalg.norm(d)))
    (p, u), (q, v) = rays
    uv, w = float(u @ v), p - q
    denom = 1.0 - uv * uv
    if denom < 0.05:
        return None
    t = (uv * float(v @ w) - float(u @ w)) / denom
    s = (float(v @ w) - uv * float(u @ w)) / denom
    return (p + t * u + q + s * v) / 2


def z_profile(rad: Radiograph, reference: np.ndarray, in_mm: bool) -> ZProfile | None:
    """Rows (or columns) of ``rad`` mapped to patient ``z`` in the plane through ``reference`` facing the
    source; ``None`` when neither image axis runs within 30° of the body's axis."""
    g = rad.geometry
    image = thumbnail(rad.image, 4 * THUMB_PX)
    cos30 = float(np.cos(np.radians(30.0)))
    if abs(float(np.dot(g.row_dir, _Z))) >= cos30:
        along, across, n_along, pixel = np.asarray(g.row_dir), np.asarray(g.col_dir), g.shape[0], g.pixel_mm[0]
        other, profile = g.pixel_mm[1] * (g.shape[1] - 1) / 2, image.mean(axis=1)
    elif abs(float(np.dot(g.col_dir, _Z))) >= cos30:
        along, across, n_along, pixel = np.asarray(g.col_dir), np.asarray(g.row_dir), g.shape[1], g.pixel_mm[1]
        other, profile = g.pixel_mm[0] * (g.shape[0] - 1) / 2, image.mean(axis=0)
    else:
        return None
    index = (np.arange(profile.size) + 0.5) * n_along / profile.size - 0.5
    source, normal = np.asarray(g.source), g.normal
    depth = float((reference - source) @ normal)
    if in_mm:
        points = np.asarray(g.origin) + np.outer(index * pixel, along) + across * other
        t = depth / ((points - source) @ normal)
        height = source[2] + t * (points[:, 2] - source[2])
    else:
        fraction = index / max(n_along - 1, 1)
        height = 1.0 - fraction if float(along @ _Z) < 0 else fraction
    order = np.argsort(height)
    return ZProfile(height[order], profile[order], depth)


def _body_ends(zp: ZProfile, lo: float, hi: float) -> tuple[float, float] | None:
    """Caudal and cranial end of the body (rows above :data:`BODY_LEVEL`) within ``[lo, hi]``."""
    inside = (zp.height >= lo) & (zp.height <= hi)
    body = inside & (zp.profile >= BODY_LEVEL)
    if not body.any():
        return None
    return float(zp.height[body].min()), float(zp.height[body].max())


def body_check(frontal: Radiograph, lateral: Radiograph) -> PairCheck:
    """Check 4 of the module docstring: same body extent and row profile along the shared axis."""
    reference = central_rays_meet(frontal, lateral)
    in_mm = _scale_known(frontal) and _scale_known(lateral)
    thresholds = {"end_slack": END_SLACK_MM if in_mm else END_SLACK_FRACTION, "half_depth_mm": HALF_DEPTH_MM,
                  "profile_min": PROFILE_MIN, "min_common": MIN_COMMON_MM if in_mm else 0.25}
    if reference is None:
        return PairCheck("same_body", None, {}, thresholds, "central rays nearly parallel: not compared")
    profiles = [z_profile(r, reference, in_mm) for r in (frontal, lateral)]
    if profiles[0] is None or profiles[1] is None:
        return PairCheck("same_body", None, {}, thresholds, "an image axis is not along the body: not compared")
    unit = "mm" if in_mm else "field fraction"
    lo = max(p.height[0] for p in profiles)
    hi = min(p.height[-1] for p in profiles)
    values: dict[str, Any] = {"unit": unit, "common_field": round(float(hi - lo), 3)}
    if hi - lo < thresholds["min_common"]:
        raise PairError(f"the frontal and lateral images do not cover a common height of the body "
                        f"({max(hi - lo, 0.0):.3g} {unit} in common): give two views of the same region")
    ends = [_body_ends(p, lo, hi) for p in profiles]
    if ends[0] is None or ends[1] is None:
        empty = "frontal" if ends[0] is None else "lateral"
        raise PairError(f"the {empty} image shows no body where the other shows one: give two views of the same "
                        "body region")
    check = PairCheck("same_body", True, values, thresholds, f"heights in {unit}")
    for k, name in ((0, "caudal"), (1, "cranial")):
        gap = abs(ends[0][k] - ends[1][k])
        tol = _end_tolerance(ends[0][k], reference, profiles, in_mm)
        values[f"{name}_end_difference"], values[f"{name}_end_tolerance"] = round(gap, 3), round(tol, 3)
        if gap > tol:
            raise PairError(f"the body ends {gap:.3g} {unit} apart at the {name} side in the two images (at most "
                            f"{tol:.3g} allowed by the geometry): they cannot show the same body")
    samples = np.linspace(lo, hi, THUMB_PX)
    curves = [np.interp(samples, p.height, p.profile) for p in profiles]
    values["profile_correlation"] = round(correlation(*curves), 3)
    if values["profile_correlation"] < PROFILE_MIN:
        raise PairError(f"the two images' attenuation along the body does not match (row profile correlation "
                        f"{values['profile_correlation']:.2f} < {PROFILE_MIN}): they cannot show the same body")
    return check


def _end_tolerance(end: float, reference: np.ndarray, profiles: list[ZProfile], in_mm: bool) -> float:
    """How far apart one end of the body may lie in the two views (see the module docstring)."""
    if not in_mm:
        return END_SLACK_FRACTION
    nearest_source = min(p.sod for p in profiles)
    return END_SLACK_MM + HALF_DEPTH_MM / nearest_source * abs(end - float(reference[2]))


# ----------------------------------------------------------------------------------------- checks
def radiograph_check(rad: Radiograph, role: str) -> PairCheck:
    """Check 1 of the module docstring for one image (``role``: ``frontal`` or ``lateral``)."""
    modality = str(rad.meta.get("Modality", "")).upper()
    if modality == "CT" and not any("CT localizer" in f for f in rad.findings):
        raise PairError(f"the {role} image is a CT slice, not a radiograph: give an X-ray image")
    if any(f.startswith("colour image") for f in rad.findings):
        raise PairError(f"the {role} image is a colour picture (a photograph?), not a radiograph: give an X-ray "
                        "image")
    values = {"neighbour_correlation": round(neighbour_correlation(rad.image), 3),
              "fine_detail": round(fine_detail(rad.image), 3)}
    air, tissue = hu_fractions(rad.image)
    values.update(hu_air_fraction=round(air, 3), hu_tissue_fraction=round(tissue, 3))
    thresholds = {"neighbour_correlation_min": NEIGHBOUR_MIN, "fine_detail_max": DETAIL_MAX,
                  "hu_air_fraction": HU_AIR_FRACTION, "hu_tissue_fraction": HU_TISSUE_FRACTION}
    if values["neighbour_correlation"] < NEIGHBOUR_MIN:
        raise PairError(f"the {role} image is noise, not a radiograph (neighbouring pixels correlate "
                        f"{values['neighbour_correlation']:.2f}; an X-ray image > {NEIGHBOUR_MIN})")
    if rad.kind == "display" and air >= HU_AIR_FRACTION and tissue >= HU_TISSUE_FRACTION:
        raise PairError(f"the {role} image holds Hounsfield units of a CT slice ({air:.0%} air, {tissue:.0%} soft "
                        "tissue), not a radiograph: give an X-ray image")
    if values["fine_detail"] > DETAIL_MAX:
        raise PairError(f"the {role} image has the fine texture of a photograph or a CT slice (fine detail "
                        f"{values['fine_detail']:.2f} > {DETAIL_MAX}), not of a radiograph: give an X-ray image")
    return PairCheck(f"radiograph_{role}", True, values, thresholds, modality or "no modality tag")


def same_picture_check(frontal: Radiograph, lateral: Radiograph) -> PairCheck:
    """Check 2 of the module docstring."""
    score, mirrored = same_picture_score(frontal.image, lateral.image)
    check = PairCheck("same_picture", True, {"correlation": round(score, 3), "mirrored": mirrored},
                      {"correlation_max": SAME_PICTURE_MIN}, "64 px high-pass rank thumbnails, |correlation|")
    if score >= SAME_PICTURE_MIN:
        how = "a mirrored copy of the same picture" if mirrored else "the same picture"
        raise PairError(f"the frontal and lateral images are {how} (correlation {score:.3f}): give a lateral "
                        "radiograph as the second image")
    return check


def stated_view(rad: Radiograph) -> str | None:
    """``"frontal"`` or ``"lateral"`` when the file or the caller states the view, else ``None``."""
    if any(f.startswith("geometry assumed: view") for f in rad.findings) or rad.geometry.view not in VIEW_KINDS:
        return None
    return VIEW_KINDS[rad.geometry.view]


def same_view_check(frontal: Radiograph, lateral: Radiograph) -> PairCheck:
    """Check 3 of the module docstring."""
    kinds, values, sources = [], {}, []
    for rad, role in ((frontal, "frontal"), (lateral, "lateral")):
        kind = stated_view(rad)
        source = "file"
        if kind is None:
            kind, features = classify_view(rad.image)
            values[f"{role}_features"] = features
            source = "image"
        kinds.append(kind)
        sources.append(source)
        values[f"{role}_view"] = kind
        values[f"{role}_view_from"] = source
    thresholds = {"frontal_central_min": FRONTAL_CENTRAL_MIN, "frontal_asymmetry_max": FRONTAL_ASYMMETRY_MAX,
                  "lateral_asymmetry_min": LATERAL_ASYMMETRY_MIN}
    if kinds[0] is not None and kinds[0] == kinds[1]:
        how = "as their files say" if sources == ["file", "file"] else "by the image features"
        raise PairError(f"both images are {kinds[0]} views ({how}): give one frontal (PA/AP) and one lateral "
                        "radiograph of the same patient")
    return PairCheck("same_view", None if None in kinds else True, values, thresholds,
                     "undecided views are not refused" if None in kinds else "one frontal, one lateral")


def check_pair(frontal: Radiograph, lateral: Radiograph) -> PairReport:
    """Refuse a pair that cannot be a frontal and a lateral radiograph of one body (module docstring).

    Args:
        frontal: the image given as the frontal (PA/AP) view.
        lateral: the image given as the lateral view.

    Returns:
        The checks run, their measured values and thresholds.

    Raises:
        PairError: the first check that fails, as one line a person can act on.
    """
    report = PairReport()
    for rad, role in ((frontal, "frontal"), (lateral, "lateral")):
        report.checks.append(radiograph_check(rad, role))
    report.checks.append(same_picture_check(frontal, lateral))
    report.checks.append(same_view_check(frontal, lateral))
    report.checks.append(body_check(frontal, lateral))
    log.info("pair checks passed: %s", ", ".join(f"{c.name}={c.passed}" for c in report.checks))
    return report

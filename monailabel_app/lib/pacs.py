"""Results stored back to the PACS: a derived CT series of the source's study, sent with STOW-RS.

When the server serves a PACS (``--studies http://HOST:PORT/dicom-web``, MONAI Label's DICOMweb
datastore), a request with ``store: true`` (or every request, with ``--conf store_results true``)
sends its result volume to the same DICOMweb server as a new series of the source's study: new
SeriesInstanceUID and SOPInstanceUIDs; the StudyInstanceUID, patient module and (for CT sources)
FrameOfReferenceUID of the source; ``ImageType`` ``DERIVED\\SECONDARY\\AXIAL``; int16 HU with
rescale ``1, 0``; a SeriesDescription and DerivationDescription that say it is AI-generated, with
the model and slice spacing; a ``ReferencedSeriesSequence`` naming the source series and its
instances. The datasets come from :func:`ctsr_models.io.dicom_write.derived_series_datasets`, the
same code that writes a derived series to a folder.

The instances go in requests of :data:`STOW_BATCH` instances. DICOMweb cannot delete, so a failure
after the first batch leaves part of the series in the PACS; the error says how many were stored.

Errors: a request to store on a server without a PACS, or a result without a DICOM study to join,
is the client's mistake (422); a PACS that cannot be reached is 503, one that refuses the
instances 502; each with one line that names the PACS by address only.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import time
import uuid
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pydicom
import requests
from fastapi import HTTPException
from monailabel.config import settings
from pydicom.dataset import Dataset

from ctsr_models.inference.models import ModelKind, resolve_model
from ctsr_models.io import Volume
from ctsr_models.io.dicom_write import Derivation, derived_series_datasets

from .errors import NotFoundError, ParamError
from .params import Param

log = logging.getLogger(__name__)

STOW_BATCH = 64
"""Instances per STOW-RS request."""
TIMEOUT_S = 60.0
"""Connect/read timeout of one DICOMweb request."""
STORE_PARAM = Param("store", bool, False, "also store the result in the PACS as a new series of the source's study "
                    "(servers started with --studies http://HOST:PORT/dicom-web)")
"""The ``store`` request parameter of every task whose results can go to the PACS."""
_FAILED_SOP_SEQUENCE = "00081198"
_SOP_CLASS, _SOP_INSTANCE = "00080016", "00080018"


@dataclass(frozen=True)
class PacsTarget:
    """Where results are stored.

    Attributes:
        url: DICOMweb root (QIDO/WADO/STOW prefixes below it), e.g. ``http://127.0.0.1:8042/dicom-web``.
        public_url: ``url`` without credentials: the only form shown to clients and written to logs.
        always: store every result (``--conf store_results true``), not only when asked.
        auth: HTTP basic credentials ``(user, password)``, or ``None``.
        timeout_s: timeout of one request in seconds.
    """

    url: str
    public_url: str
    always: bool = False
    auth: tuple[str, str] | None = None
    timeout_s: float = TIMEOUT_S


def pacs_target(studies: str, conf: Mapping[str, str]) -> PacsTarget | None:
    """The PACS of a server started with ``--studies`` (``None`` when that is a folder).

    Credentials are MONAI Label's own for its DICOMweb datastore (``MONAI_LABEL_DICOMWEB_USERNAME``
    and ``MONAI_LABEL_DICOMWEB_PASSWORD``).

    Raises:
        ValueError: ``store_results`` is not ``true``/``false``, or is ``true`` without a PACS.
    """
    always = str(conf.get("store_results", "false")).strip().lower()
    if always not in ("true", "false"):
        raise ValueError(f"--conf store_results must be true or false, not {always!r}")
    if not studies.startswith(("http://", "https://")):
        if always == "true":
            raise ValueError("--conf store_results true needs a PACS: start the server with "
                             "--studies http://HOST:PORT/dicom-web")
        return None
    url = studies.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    public = urllib.parse.urlunsplit(parts._replace(netloc=host))
    user, password = settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
    return PacsTarget(url=url, public_url=public, always=always == "true",
                      auth=(user, password) if user and password else None)


def serve_dicom_folders(studies: str) -> None:
    """Make MONAI Label's DICOMweb datastore hand tasks a series' DICOM folder, not a NIfTI made from it.

    MONAI Label converts a downloaded series to NIfTI by default (``MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI``);
    that file has lost the study identity a stored result needs, and its geometry comes from another
    reader than ``ctsr-enhance``'s. Called before the datastore opens; a folder datastore is untouched.
    """
    if studies.startswith(("http://", "https://")) and settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI:
        log.info("DICOMweb datastore: tasks read the DICOM series (MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI off)")
        settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI = False


def image_uri(datastore: Any, image: str) -> str:
    """``datastore.get_image_uri(image)``; for a DICOMweb datastore also the download of the series.

    Returns:
        The image's path (``""`` when a folder datastore does not hold it).

    Raises:
        NotFoundError: the PACS holds no series ``image`` (MONAI Label raises ``IndexError``).
        HTTPException: 503 when the PACS cannot be reached or fails.
    """
    try:
        return datastore.get_image_uri(image)
    except IndexError:
        raise NotFoundError(f"the PACS holds no series {image!r}; GET /datastore/ lists the CT series") from None
    except requests.RequestException as exc:
        log.warning("PACS download failed: %s", type(exc).__name__)
        raise HTTPException(503, f"the PACS did not deliver the series ({type(exc).__name__}); try again later"
                            ) from None


def enhanced_derivation(model: str, spacing_mm: float) -> Derivation:
    """How a super-resolved series was made: ``AI-enhanced`` for a network, ``Interpolated`` for a baseline."""
    spec = resolve_model(model)
    if spec.kind is ModelKind.INTERPOLATION:
        return Derivation(method="Interpolated", model=spec.name, spacing_mm=spacing_mm,
                          details=f"Through-plane {spec.name} interpolation to thinner slices; no network involved.")
    return Derivation(method="AI-enhanced", model=spec.name, spacing_mm=spacing_mm,
                      details="Through-plane super-resolution by a neural network: AI-generated detail between the "
                              "acquired slices, not an acquired image.")


def xray_derivation(model: str, spacing_mm: float, sources: Iterable[Mapping[str, Any]]) -> Derivation:
    """How a CT estimate from a frontal and a lateral radiograph was made (``sources``: their ``meta``)."""
    spec = resolve_model(model, task="xray2ct")
    series = tuple(dict.fromkeys(str(m["SeriesInstanceUID"]) for m in sources if m.get("SeriesInstanceUID")))
    return Derivation(method="AI estimate from X-rays", model=spec.name,
                      spacing_mm=spacing_mm, source_series=series,
                      details="ESTIMATE: a CT-like volume computed by a neural network from two radiographs; "
                              "not an acquired CT, not for diagnosis.")


def wants_store(target: PacsTarget | None, asked: bool, source_meta: Mapping[str, Any]) -> bool:
    """Whether to store this request's result; checked before the inference runs.

    Args:
        target: the server's PACS (``None``: it serves a folder).
        asked: the request's ``store`` parameter.
        source_meta: DICOM identity of the input (``Volume.meta`` / ``Radiograph.meta``).

    Raises:
        ParamError: storing asked for on a server without a PACS, or for an input without a DICOM study
            (with ``store_results`` alone such a result is returned but not stored).
    """
    if target is None:
        if asked:
            raise ParamError("store needs a server that serves a PACS (--studies http://HOST:PORT/dicom-web); "
                             "this server serves a folder")
        return False
    if not (asked or target.always):
        return False
    if not source_meta.get("StudyInstanceUID"):
        if asked:
            raise ParamError("store needs a DICOM input (a series of the PACS or a DICOM upload): this input has "
                             "no StudyInstanceUID for the result to join")
        log.info("store_results: the input has no DICOM study; its result is not stored")
        return False
    return True


def store_volume(target: PacsTarget, volume: Volume, derivation: Derivation,
                 same_frame_of_reference: bool = True) -> dict[str, Any]:
    """Send ``volume`` to ``target`` as a derived CT series of its source's study (see the module docstring).

    Args:
        target: the PACS.
        volume: the result (HU, its own geometry); ``meta`` holds the source's DICOM identity.
        derivation: how it was made; its source instances are looked up in the PACS when not given.
        same_frame_of_reference: keep the source's FrameOfReferenceUID (True for a CT resampled in its
            own patient coordinates; False for a CT estimated from radiographs: a new one is made).

    Returns:
        For the result JSON: ``stored``, ``pacs`` (the DICOMweb root), ``study_instance_uid``,
        ``series_instance_uid``, ``instances``, ``series_url`` (WADO-RS) and ``seconds``.

    Raises:
        ParamError: the source has no DICOM study (an uploaded NIfTI/NRRD file).
        HTTPException: 503 when the PACS cannot be reached, 502 when it refuses the instances.
    """
    study = str(volume.meta.get("StudyInstanceUID") or "")
    if not study:
        raise ParamError("store needs a DICOM source (a series of the PACS or a DICOM upload): this input has no "
                         "StudyInstanceUID for the result to join")
    if not same_frame_of_reference:
        volume = volume.replace(meta={k: v for k, v in volume.meta.items() if k != "FrameOfReferenceUID"})
    start = time.perf_counter()
    with requests.Session() as session:
        session.auth = target.auth
        meta_series = (str(volume.meta["SeriesInstanceUID"]),) if volume.meta.get("SeriesInstanceUID") else ()
        derivation = dataclasses.replace(derivation, source_series=derivation.source_series or meta_series)
        if derivation.source_series and not derivation.source_instances:
            derivation = _with_source_instances(session, target, derivation, study)
        datasets = derived_series_datasets(volume, dtype="int16", derivation=derivation)
        series, stored = _stow(session, target, study, datasets)
    seconds = time.perf_counter() - start
    log.info("stored a derived series of %d instances in the PACS in %.2f s", stored, seconds)
    return {"stored": True, "pacs": target.public_url, "study_instance_uid": study, "series_instance_uid": series,
            "instances": stored, "series_url": f"{target.public_url}/studies/{study}/series/{series}",
            "series_description": derivation.series_description(), "seconds": round(seconds, 3)}


def _with_source_instances(session: requests.Session, target: PacsTarget, derivation: Derivation,
                           study: str) -> Derivation:
    """``derivation`` with the SOP class and instance UIDs of its first source series, from QIDO-RS.

    A source the PACS does not hold (an uploaded DICOM ZIP) is referenced by its series UID only.
    """
    series = derivation.source_series[0]
    url = f"{target.url}/studies/{study}/series/{series}/instances"
    response = _request(session, "GET", url, target, headers={"Accept": "application/dicom+json"})
    if response.status_code != 200 or not response.content:
        log.info("source instances not listed by the PACS (HTTP %d): referencing the series only",
                 response.status_code)
        return derivation
    pairs = tuple((item[_SOP_CLASS]["Value"][0], item[_SOP_INSTANCE]["Value"][0]) for item in response.json()
                  if _SOP_CLASS in item and _SOP_INSTANCE in item)
    return dataclasses.replace(derivation, source_instances=pairs)


def _stow(session: requests.Session, target: PacsTarget, study: str,
          datasets: Iterable[Dataset]) -> tuple[str, int]:
    """Send ``datasets`` in batches; the new SeriesInstanceUID and the number stored."""
    series, stored, batch = "", 0, []
    for ds in datasets:
        series = series or str(ds.SeriesInstanceUID)
        batch.append(ds)
        if len(batch) == STOW_BATCH:
            stored += _stow_batch(session, target, study, batch, stored)
            batch = []
    if batch:
        stored += _stow_batch(session, target, study, batch, stored)
    return series, stored


def _stow_batch(session: requests.Session, target: PacsTarget, study: str, batch: list[Dataset],
                stored_before: int) -> int:
    """One STOW-RS request (``multipart/related; type="application/dicom"``)."""
    boundary = uuid.uuid4().hex
    parts = []
    for ds in batch:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, write_like_original=False)
        parts.append(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), buffer.getvalue()))
    body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    response = _request(session, "POST", f"{target.url}/studies/{study}", target, headers=headers, data=body)
    failed = _failed_count(response)
    if response.status_code not in (200, 202) or failed:
        log.warning("STOW-RS refused: HTTP %d, %d failed instances", response.status_code, failed)
        partial = f"; {stored_before} instances of the series were stored before" if stored_before else ""
        raise HTTPException(502, f"the PACS at {target.public_url} refused the result (HTTP {response.status_code}, "
                                 f"{failed or len(batch)} of {len(batch)} instances){partial}")
    return len(batch)


def _failed_count(response: requests.Response) -> int:
    """Instances listed in the STOW-RS answer's FailedSOPSequence (0 when the answer is not JSON)."""
    try:
        answer = response.json()
    except ValueError:
        return 0
    return len((answer.get(_FAILED_SOP_SEQUENCE) or {}).get("Value", [])) if isinstance(answer, dict) else 0


def _request(session: requests.Session, method: str, url: str, target: PacsTarget, **kwargs: Any) -> requests.Response:
    """One DICOMweb request; a connection failure or timeout is a 503 naming the PACS."""
    try:
        return session.request(method, url, timeout=target.timeout_s, **kwargs)
    except requests.RequestException as exc:
        log.warning("PACS request failed: %s", type(exc).__name__)
        raise HTTPException(503, f"the PACS at {target.public_url} cannot be reached ({type(exc).__name__}); "
                                 "the result was not stored") from None

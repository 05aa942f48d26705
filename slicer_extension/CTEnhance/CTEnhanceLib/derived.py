"""The DICOM identity of a result saved as a derived series of the input's study.

The Slicer module exports the result with Slicer's own DICOM scalar-volume exporter
(``DICOMScalarVolumePlugin``), placed under the input's study in the subject hierarchy: patient and
study tags (StudyInstanceUID included) are copied from there, so the new series joins the same
study and a PACS files it beside the input. This module decides the series' own tags: a
description that says it is AI-generated, a series number that sorts after the input's (the same
rule as ``ctsr-enhance``'s derived series: input + 1000), and the input's frame of reference (the
result lies in the same patient space).
"""
from __future__ import annotations

from .layout import AI_LABEL

DESCRIPTION_MAX_CHARS = 64
"""SeriesDescription is a DICOM LO value: at most 64 characters."""
LABEL = f"[CT Enhance, {AI_LABEL}]"
SERIES_NUMBER_OFFSET = 1000


def derived_description(input_description: str) -> str:
    """``<input description> [CT Enhance, AI-generated]``, the input's part shortened to fit 64 characters
    (the label is never cut)."""
    room = DESCRIPTION_MAX_CHARS - len(LABEL) - 1
    source = " ".join((input_description or "CT").split())[:room].rstrip()
    return f"{source or 'CT'} {LABEL}"


def derived_series_number(input_series_number: str) -> str:
    """The input's SeriesNumber + 1000, or 1000 when it has none (a DICOM IS value, as text)."""
    try:
        number = int(float(input_series_number))
    except (TypeError, ValueError):
        return str(SERIES_NUMBER_OFFSET)
    return str(number + SERIES_NUMBER_OFFSET) if number >= 0 else str(SERIES_NUMBER_OFFSET)


def derived_series_tags(input_description: str, input_series_number: str, frame_of_reference_uid: str = "",
                        model: str = "") -> dict[str, str]:
    """The series-level tags of the exporter (``exportable.setTag`` names) for a result.

    Args:
        input_description: the input series' SeriesDescription (or its node name).
        input_series_number: the input's SeriesNumber ("" when unknown).
        frame_of_reference_uid: the input's FrameOfReferenceUID ("" lets the exporter make one).
        model: the model that made the result (the exporter's ``Model`` tag), "" when unknown.
    """
    tags = {"Modality": "CT", "SeriesDescription": derived_description(input_description),
            "SeriesNumber": derived_series_number(input_series_number), "Manufacturer": "CT Enhance",
            "Model": f"{model} ({AI_LABEL})" if model else AI_LABEL}
    if frame_of_reference_uid:
        tags["FrameOfReferenceInstanceUID"] = frame_of_reference_uid
    return tags

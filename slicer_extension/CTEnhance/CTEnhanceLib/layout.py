"""The comparison layout, decided without Slicer: a 2x3 grid of slice views, original on top, enhanced below.

Columns are axial, coronal and sagittal. Each row is a view group of its own
(:data:`ROW_VIEW_GROUPS`): Slicer's linked navigation (slice offset, pan, zoom, crosshair jumps)
moves a row's views together, and a linked change of the volume shown (e.g. picking another
volume in one view's controller) reaches only that row, so it can never put the same volume in
both rows. The Logic links each row's slice composite nodes, gives each row its volume
(:func:`volumes_by_view`), and keeps each view at the position of its twin in the other row
(:func:`twin_view`). The layout is registered under :data:`LAYOUT_ID` from :func:`layout_xml`.

An X-ray → CT result has its own layout (:data:`XRAY_LAYOUT_ID`, :func:`xray_layout_xml`): the frontal
and the lateral radiograph on top, each in a view turned to its own image plane and in a view group
of its own (a radiograph is one slice: linked navigation would slide it out of view), and the
reconstructed volume below in linked axial, coronal and sagittal views.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

LAYOUT_ID = 37301
"""Slicer layout id of the comparison layout (custom layouts take ids above Slicer's own, < 1000)."""

VIEW_GROUP = 5
"""The original row's view group (and the X-ray layout's result row): apart from Slicer's default views
(group 0) and its dual layouts (1)."""

ENHANCED_VIEW_GROUP = 8
"""The enhanced row's view group."""

XRAY_LAYOUT_ID = 37302
"""Slicer layout id of the X-ray → CT layout."""

XRAY_VIEW_GROUPS = {"frontal": 6, "lateral": 7}
"""One view group per radiograph view: apart from each other and from the comparison views."""

FOUR_UP_LAYOUT = 3
"""``vtkMRMLLayoutNode.SlicerLayoutFourUpView``: where to return when no previous layout is known."""

ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
ROWS = ("original", "enhanced")
ROW_VIEW_GROUPS = {"original": VIEW_GROUP, "enhanced": ENHANCED_VIEW_GROUP}
"""Comparison row -> its view group."""
VIEW_COLORS = {"Axial": "#F34A33", "Coronal": "#6EB04B", "Sagittal": "#EDD54C"}
"""Slicer's colours for red (axial), green (coronal) and yellow (sagittal) views."""


@dataclass(frozen=True)
class ViewSpec:
    """One slice view of the layout.

    Attributes:
        tag: the view's layout name (singleton tag), e.g. ``CTEnhanceOriginalAxial``.
        row: ``original`` (top) or ``enhanced`` (bottom).
        orientation: ``Axial``, ``Coronal`` or ``Sagittal``.
        label: the short label in the view's corner (``OA`` ... ``ES``).
        color: the view's colour bar.
    """

    tag: str
    row: str
    orientation: str
    label: str
    color: str


def comparison_views() -> tuple[ViewSpec, ...]:
    """The six views, row by row (original then enhanced), each row axial, coronal, sagittal."""
    return tuple(
        ViewSpec(f"CTEnhance{row.capitalize()}{orientation}", row, orientation, f"{row[0].upper()}{orientation[0]}",
                 VIEW_COLORS[orientation])
        for row in ROWS for orientation in ORIENTATIONS)


VIEWS = comparison_views()


XRAY_ROWS = ("xray", "result")
XRAY_INPUTS = ("frontal", "lateral")


def xray_views() -> tuple[ViewSpec, ...]:
    """The X-ray layout's views: frontal and lateral radiograph, then the result's axial, coronal, sagittal."""
    top = tuple(ViewSpec(f"CTEnhanceXray{name.capitalize()}", "xray", "Coronal" if name == "frontal" else "Sagittal",
                         f"X{name[0].upper()}", "#8C8C8C") for name in XRAY_INPUTS)
    bottom = tuple(ViewSpec(f"CTEnhanceXrayResult{o}", "result", o, f"R{o[0]}", VIEW_COLORS[o]) for o in ORIENTATIONS)
    return top + bottom


XRAY_VIEWS = xray_views()


def view_group(view: ViewSpec) -> int:
    """The view group of a view: :data:`XRAY_VIEW_GROUPS` for a radiograph, :data:`ROW_VIEW_GROUPS` for a
    comparison row, else (the X-ray layout's result row) :data:`VIEW_GROUP`."""
    if view.row == "xray":
        return XRAY_VIEW_GROUPS[view.tag.removeprefix("CTEnhanceXray").lower()]
    return ROW_VIEW_GROUPS.get(view.row, VIEW_GROUP)


def twin_view(view: ViewSpec, views: tuple[ViewSpec, ...] = VIEWS) -> ViewSpec:
    """The view of the other comparison row with the same orientation (kept at the same position).

    Raises:
        ValueError: ``view`` is not a comparison view.
    """
    if view not in views:
        raise ValueError(f"{view.tag} is not a view of the comparison layout")
    return next(v for v in views if v.orientation == view.orientation and v.row != view.row)


def layout_xml(views: tuple[ViewSpec, ...] = VIEWS, rows: tuple[str, ...] = ROWS) -> str:
    """Slicer's layout description: a vertical stack of one horizontal row per entry of ``rows``."""
    root = ET.Element("layout", type="vertical", split="true")
    for row in rows:
        row_layout = ET.SubElement(ET.SubElement(root, "item"), "layout", type="horizontal", split="true")
        for view in (v for v in views if v.row == row):
            element = ET.SubElement(ET.SubElement(row_layout, "item"), "view", {"class": "vtkMRMLSliceNode",
                                                                               "singletontag": view.tag})
            for name, value in (("orientation", view.orientation), ("viewlabel", view.label),
                                ("viewcolor", view.color), ("viewgroup", str(view_group(view)))):
                ET.SubElement(element, "property", name=name, action="default").text = value
    return ET.tostring(root, encoding="unicode")


def xray_layout_xml() -> str:
    """Slicer's description of the X-ray → CT layout (two radiographs on top, the result below)."""
    return layout_xml(XRAY_VIEWS, XRAY_ROWS)


def xray_volumes_by_view(frontal_id: str, lateral_id: str, result_id: str) -> dict[str, str]:
    """View tag -> volume id in the X-ray layout.

    Raises:
        ValueError: an id is empty, or two are equal.
    """
    ids = (frontal_id, lateral_id, result_id)
    if not all(ids) or len(set(ids)) != 3:
        raise ValueError(f"three different volumes are needed, got {ids}")
    by_input = dict(zip(XRAY_INPUTS, ids[:2]))
    return {view.tag: by_input[view.tag.removeprefix("CTEnhanceXray").lower()] if view.row == "xray" else result_id
            for view in XRAY_VIEWS}


def volumes_by_view(original_id: str, enhanced_id: str, views: tuple[ViewSpec, ...] = VIEWS) -> dict[str, str]:
    """View tag -> the id of the volume it shows: the original in the top row, the enhanced one below.

    Raises:
        ValueError: the two ids are empty or equal.
    """
    if not original_id or not enhanced_id or original_id == enhanced_id:
        raise ValueError(f"two different volumes are needed, got {original_id!r} and {enhanced_id!r}")
    return {view.tag: original_id if view.row == "original" else enhanced_id for view in views}


def layout_to_restore(previous: int | None, current: int) -> int:
    """The layout the "previous layout" button returns to: the one shown before the comparison, else
    the four-up layout (never the comparison itself)."""
    for candidate in (previous, current):
        if candidate is not None and candidate not in (LAYOUT_ID, XRAY_LAYOUT_ID):
            return candidate
    return FOUR_UP_LAYOUT


AI_LABEL = "AI-generated"
"""What every generated volume's name and DICOM series description say (DESIGN.md, safety)."""


DENOISED_LABEL = "AI-denoised"
"""What a denoised volume's name says (the server's derived-series method for ``ct_denoise``)."""


def result_name(input_name: str, xray: bool = False, denoised: bool = False, ai_generated: bool = False) -> str:
    """The name of the result volume in the scene: ``<input> enhanced (AI-generated)``,
    ``<frontal> CT estimate (AI-generated)``, or ``<input> (AI-denoised)`` (``<input> (AI-denoised,
    AI-generated)`` when a diffusion denoiser added generated detail: ``ai_generated``)."""
    if denoised:
        return f"{input_name} ({DENOISED_LABEL}{', ' + AI_LABEL if ai_generated else ''})"
    return f"{input_name} {'CT estimate' if xray else 'enhanced'} ({AI_LABEL})"

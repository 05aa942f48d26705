"""The comparison layout, decided without Slicer: a 2x3 grid of slice views, original on top, enhanced below.

Columns are axial, coronal and sagittal. All six views belong to one view group
(:data:`VIEW_GROUP`), so Slicer's linked navigation (slice offset, pan, zoom, crosshair jumps)
moves them together; the Logic links their slice composite nodes and gives each row its volume
(:func:`volumes_by_view`). The layout is registered under :data:`LAYOUT_ID` from :func:`layout_xml`.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

LAYOUT_ID = 37301
"""Slicer layout id of the comparison layout (custom layouts take ids above Slicer's own, < 1000)."""

VIEW_GROUP = 5
"""The comparison views' group: apart from Slicer's default views (group 0) and its dual layouts (1)."""

FOUR_UP_LAYOUT = 3
"""``vtkMRMLLayoutNode.SlicerLayoutFourUpView``: where to return when no previous layout is known."""

ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
ROWS = ("original", "enhanced")
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


def layout_xml(views: tuple[ViewSpec, ...] = VIEWS) -> str:
    """Slicer's layout description: a vertical stack of one horizontal row per :data:`ROWS` entry."""
    root = ET.Element("layout", type="vertical", split="true")
    for row in ROWS:
        row_layout = ET.SubElement(ET.SubElement(root, "item"), "layout", type="horizontal", split="true")
        for view in (v for v in views if v.row == row):
            element = ET.SubElement(ET.SubElement(row_layout, "item"), "view", {"class": "vtkMRMLSliceNode",
                                                                               "singletontag": view.tag})
            for name, value in (("orientation", view.orientation), ("viewlabel", view.label),
                                ("viewcolor", view.color), ("viewgroup", str(VIEW_GROUP))):
                ET.SubElement(element, "property", name=name, action="default").text = value
    return ET.tostring(root, encoding="unicode")


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
        if candidate is not None and candidate != LAYOUT_ID:
            return candidate
    return FOUR_UP_LAYOUT


def result_name(input_name: str) -> str:
    """The name of the enhanced volume in the scene."""
    return f"{input_name} enhanced"

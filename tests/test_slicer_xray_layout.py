"""The X-ray → CT layout of the Slicer module, decided without Slicer: two radiographs on top in views
of their own, the reconstruction below in linked axial/coronal/sagittal views."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "CTEnhance"))
from CTEnhanceLib import layout  # noqa: E402


def test_xray_layout_has_two_radiograph_views_over_three_linked_result_views():
    root = ET.fromstring(layout.xray_layout_xml())
    rows = [[view for view in item.iter("view")] for item in root.findall("./item")]
    assert [len(r) for r in rows] == [2, 3]
    groups = [[{p.get("name"): p.text for p in v.iter("property")}["viewgroup"] for v in r] for r in rows]
    assert groups[1] == [str(layout.VIEW_GROUP)] * 3  # the result views move together
    assert len(set(groups[0])) == 2 and not set(groups[0]) & {str(layout.VIEW_GROUP), "0"}
    tags = [v.get("singletontag") for r in rows for v in r]
    assert tags == [v.tag for v in layout.XRAY_VIEWS] and len(set(tags)) == 5
    assert not set(tags) & {v.tag for v in layout.VIEWS}  # both layouts can exist side by side


def test_xray_volumes_go_to_their_views_and_three_distinct_ids_are_required():
    ids = layout.xray_volumes_by_view("F", "L", "R")
    assert [ids[v.tag] for v in layout.XRAY_VIEWS] == ["F", "L", "R", "R", "R"]
    with pytest.raises(ValueError):
        layout.xray_volumes_by_view("F", "F", "R")
    with pytest.raises(ValueError):
        layout.xray_volumes_by_view("F", "", "R")


def test_previous_layout_never_returns_to_either_result_layout():
    assert layout.layout_to_restore(layout.XRAY_LAYOUT_ID, layout.LAYOUT_ID) == layout.FOUR_UP_LAYOUT
    assert layout.layout_to_restore(None, layout.XRAY_LAYOUT_ID) == layout.FOUR_UP_LAYOUT
    assert layout.result_name("chest PA", xray=True) == "chest PA CT estimate (AI-generated)"

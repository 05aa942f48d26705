"""The Slicer extension without Slicer (which cannot be installed here).

Every ``.py`` under ``slicer_extension/`` parses with Python 3.12's grammar (Slicer 5.10+), compiles,
and uses no module Python 3.12 removed nor a NumPy alias NumPy 2 removed; the library imports only
the standard library and nothing imports ``monailabel``; the module's CMakeLists lists every Python,
UI and icon file; the extension's CMake and catalog entry agree; the .ui file defines every widget
the code uses and binds only parameters the parameter node declares, to widgets that can show them.
The pure decisions: the 2x3 layout and its view-to-volume assignment, the image-task filter, and
the predicted output grid, which must equal ``ctsr_models``'s own (an independent implementation).
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

EXTENSION_DIR = REPO / "slicer_extension"
MODULE_DIR = EXTENSION_DIR / "CTEnhance"
sys.path.insert(0, str(MODULE_DIR))

from CTEnhanceLib import layout  # noqa: E402
from CTEnhanceLib.geometry import Grid, super_resolution_grid  # noqa: E402
from CTEnhanceLib.tasks import TaskInfo, image_tasks, result_extension  # noqa: E402

SLICER_PYTHON = (3, 12)
PY_FILES = sorted(p for p in EXTENSION_DIR.rglob("*.py") if "__pycache__" not in p.parts)
LIB_MODULES = ", ".join(f"CTEnhanceLib.{p.stem}" for p in sorted((MODULE_DIR / "CTEnhanceLib").glob("*.py"))
                        if p.stem != "__init__")
REMOVED_IN_312 = {"imp", "distutils", "asynchat", "asyncore", "smtpd"}
REMOVED_IN_NUMPY_2 = {"float_", "complex_", "unicode_", "string_", "NaN", "Inf", "PINF", "NINF", "infty", "int0",
                      "uint0", "bool8", "product", "cumproduct", "sometrue", "alltrue", "asfarray", "round_",
                      "find_common_type", "cast", "source", "lookfor", "who", "safe_eval", "mat"}
WIDGET_FOR_TYPE = {"str": {"QLineEdit"}, "bool": {"QCheckBox"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
                   "int": {"QSpinBox"}, "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}}


def _tree(path: Path) -> ast.Module:
    feature = min(SLICER_PYTHON, sys.version_info[:2])
    return ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=feature)


def _imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_extension_has_python_files():
    names = {p.relative_to(MODULE_DIR).as_posix() for p in PY_FILES}
    assert {"CTEnhance.py", "CTEnhanceLib/client.py", "CTEnhanceLib/layout.py"} <= names


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: p.relative_to(EXTENSION_DIR).as_posix())
def test_module_file_compiles_for_slicers_python(path):
    tree = _tree(path)
    compile(tree, str(path), "exec")
    assert not _imported(tree) & REMOVED_IN_312, "imports a module Python 3.12 removed"
    assert "monailabel" not in _imported(tree), "the Slicer side must not import monailabel"
    numpy_names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                   and n.value.id in ("np", "numpy")}
    assert not numpy_names & REMOVED_IN_NUMPY_2, "uses a NumPy name NumPy 2 removed"


def test_library_imports_only_the_standard_library():
    script = (f"import json, sys; sys.path.insert(0, sys.argv[1]); import {LIB_MODULES}; "
              "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", script, str(MODULE_DIR)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    assert loaded - set(sys.stdlib_module_names) - {"CTEnhanceLib", "__main__"} == set()


def _python_312() -> str | None:
    """A Python 3.12 interpreter (``CTENHANCE_PYTHON312``, else ``python3.12`` on PATH), if one runs."""
    for candidate in (os.environ.get("CTENHANCE_PYTHON312"), shutil.which("python3.12")):
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True, timeout=60, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def test_module_files_compile_and_the_library_imports_with_python_312():
    python = _python_312()
    if python is None:
        pytest.skip("no Python 3.12 found (python3.12 on PATH or CTENHANCE_PYTHON312); the grammar check above ran")
    script = ("import pathlib, sys; root = pathlib.Path(sys.argv[1]); sys.path.insert(0, str(root / 'CTEnhance')); "
              "[compile(p.read_text(encoding='utf-8'), str(p), 'exec') for p in sorted(root.rglob('*.py'))]; "
              f"import {LIB_MODULES}")
    subprocess.run([python, "-I", "-S", "-B", "-c", script, str(EXTENSION_DIR)], check=True, timeout=60)


def test_cmake_lists_every_module_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = {m.replace("${MODULE_NAME}", "CTEnhance") for m in re.findall(r"^\s+(\S+\.(?:py|ui|png))\s*$", text, re.M)}
    present = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
               if p.suffix in (".py", ".ui", ".png") and "__pycache__" not in p.parts}
    assert listed == present
    assert "WITH_GENERIC_TESTS" in text and "slicerMacroBuildScriptedModule(" in text


def test_extension_cmake_and_catalog_entry_agree():
    text = (REPO / "CMakeLists.txt").read_text()
    for needed in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(slicer_extension/CTEnhance)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                   "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in text
    variables = dict(re.findall(r'^set\((EXTENSION_\w+) "([^"]*)"', text, re.M))
    assert {"EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
            "EXTENSION_ICONURL", "EXTENSION_DEPENDS"} <= variables.keys()
    entry = json.loads((EXTENSION_DIR / "CTEnhance.json").read_text())
    assert entry["category"] == variables["EXTENSION_CATEGORY"]
    assert entry["build_subdirectory"] == "." and entry["scm_url"].startswith("https://")
    assert f'"qSlicerAbstractCoreModule", "{entry["category"]}"' in (MODULE_DIR / "CTEnhance.py").read_text()


def test_ui_defines_every_widget_the_code_uses_and_binds_declared_parameters():
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "CTEnhance.ui").getroot()
    widgets = {w.get("name"): w.get("class") for w in ui.iter("widget")}
    module = _tree(MODULE_DIR / "CTEnhance.py")
    used = {n.attr for n in ast.walk(module) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui"}
    assert used and used <= widgets.keys(), used - widgets.keys()
    parameter_node = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "CTEnhanceParameterNode")
    fields = {n.target.id: ast.unparse(n.annotation) for n in parameter_node.body if isinstance(n, ast.AnnAssign)}
    bound = {w.get("name"): w.find("./property[@name='SlicerParameterName']/string").text
             for w in ui.iter("widget") if w.find("./property[@name='SlicerParameterName']") is not None}
    assert set(bound.values()) == set(fields) - {"enhancedVolume"}
    for widget, parameter in bound.items():
        kind = re.sub(r"Annotated\[(\w+),.*", r"\1", fields[parameter])
        assert widgets[widget] in WIDGET_FOR_TYPE[kind], (widget, parameter)


def test_layout_is_two_rows_of_three_views_in_one_group():
    root = ET.fromstring(layout.layout_xml())
    rows = root.findall("./item/layout")
    assert root.get("type") == "vertical" and [r.get("type") for r in rows] == ["horizontal", "horizontal"]
    grid = [[view for view in row.findall("./item/view")] for row in rows]
    assert [len(r) for r in grid] == [3, 3]
    tags = []
    for row_name, row in zip(layout.ROWS, grid):
        for orientation, view in zip(layout.ORIENTATIONS, row):
            properties = {p.get("name"): p.text for p in view.findall("property")}
            assert view.get("class") == "vtkMRMLSliceNode" and row_name.capitalize() in view.get("singletontag")
            assert properties["orientation"] == orientation and properties["viewgroup"] == str(layout.VIEW_GROUP)
            assert properties["viewcolor"] == layout.VIEW_COLORS[orientation]
            tags.append(view.get("singletontag"))
    assert tags == [v.tag for v in layout.VIEWS] and len(set(tags)) == 6
    assert len({v.label for v in layout.VIEWS}) == 6 and layout.VIEW_GROUP != 0


def test_top_row_shows_the_original_and_bottom_row_the_enhanced_volume():
    assignment = layout.volumes_by_view("vtkMRMLScalarVolumeNode1", "vtkMRMLScalarVolumeNode2")
    assert [assignment[v.tag] for v in layout.VIEWS] == ["vtkMRMLScalarVolumeNode1"] * 3 + [
        "vtkMRMLScalarVolumeNode2"] * 3
    with pytest.raises(ValueError, match="two different volumes"):
        layout.volumes_by_view("vtkMRMLScalarVolumeNode1", "vtkMRMLScalarVolumeNode1")
    assert layout.result_name("CT chest") == "CT chest enhanced"


@pytest.mark.parametrize(("previous", "current", "expected"), [
    (2, layout.LAYOUT_ID, 2), (None, 6, 6), (None, layout.LAYOUT_ID, layout.FOUR_UP_LAYOUT),
    (layout.LAYOUT_ID, layout.LAYOUT_ID, layout.FOUR_UP_LAYOUT)])
def test_previous_layout_is_never_the_comparison(previous, current, expected):
    assert layout.layout_to_restore(previous, current) == expected


@pytest.mark.parametrize(("n_slices", "spacing", "target", "direction"), [
    (30, (0.7, 0.7, 5.0), 1.0, np.eye(3)),
    (17, (0.9, 0.8, 3.0), 1.25, np.diag([1.0, 1.0, -1.0])),  # extent not a whole number of targets
    (8, (1.0, 1.0, 6.0), 0.7, np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])),  # sagittal stack
    (12, (0.5, 0.5, 2.5), 1.0, np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])),  # oblique
])
def test_predicted_grid_equals_ctsr_models(n_slices, spacing, target, direction):
    from ctsr_models.inference.grid import through_plane_grid  # imports torch: only here
    from ctsr_models.io import Volume

    origin = (-120.5, 33.25, 410.0)
    thick = Volume(np.zeros((n_slices, 4, 5), np.float32), spacing, origin, direction.ravel())
    reference = through_plane_grid(thick, target)
    expected = reference.output_geometry(thick)
    ours = super_resolution_grid(Grid((5, 4, n_slices), spacing, origin, tuple(map(tuple, direction.T))), target)
    assert ours.size == (5, 4, reference.n_slices)
    np.testing.assert_allclose(ours.spacing, expected["spacing"], atol=1e-9)
    np.testing.assert_allclose(ours.origin, expected["origin"], atol=1e-9)
    np.testing.assert_allclose(np.asarray(ours.axes).T.ravel(), expected["direction"], atol=1e-12)


def test_predicted_grid_refuses_a_target_that_is_not_finer():
    grid = Grid((4, 4, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    for target in (2.0, 3.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="finer than the input's 2 mm"):
            super_resolution_grid(grid, target)


def test_only_image_output_tasks_are_offered():
    info = {"models": {
        "ct_super_resolution": {"type": "others", "dimension": 3, "description": "SR",
                                "params": {"target_spacing": {"type": "number", "default": 1.0},
                                           "model": {"type": "string", "default": "cubic",
                                                     "choices": ["cubic", "linear"]}},
                                "inputs": {"image": "thick CT"}, "models": ["cubic", "linear"],
                                "default_model": "cubic", "output": {"extensions": [".nrrd", ".nii.gz"]}},
        "xray_to_ct": {"type": "others", "inputs": {"image": "frontal X-ray", "label": "lateral X-ray"},
                       "output": {"extensions": [".nrrd"]}},
        "segmentation": {"type": "segmentation", "labels": {"liver": 1}},
        "others_without_output": {"type": "others"},
    }}
    tasks = {t.name: t for t in image_tasks(info)}
    assert list(tasks) == ["ct_super_resolution", "xray_to_ct"]
    sr, xray = tasks["ct_super_resolution"], tasks["xray_to_ct"]
    assert not sr.takes_xray_pair and xray.takes_xray_pair
    assert sr.choices("model") == ("cubic", "linear") and sr.default("target_spacing") == 1.0
    assert sr.request_params(target_spacing=0.5, model=None) == {"target_spacing": 0.5}
    with pytest.raises(ValueError, match="has no parameter steps"):
        sr.request_params(steps=10)
    assert TaskInfo.from_info("x", {"type": "others", "output": {}}) is None


@pytest.mark.parametrize(("name", "extension"), [("a.nii.gz", ".nii.gz"), ("b.NRRD", ".nrrd"), ("c.mha", ".mha"),
                                                 ("d.nii", ".nii")])
def test_result_extension(name, extension):
    assert result_extension(name) == extension


def test_result_extension_refuses_other_types():
    with pytest.raises(ValueError, match="must end in"):
        result_extension("result.dcm")

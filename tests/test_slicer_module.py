"""The Slicer extension without Slicer (which cannot be installed here).

Every ``.py`` under ``slicer_extension/`` parses with Python 3.12's grammar (Slicer 5.10+), compiles,
and uses no module Python 3.12 removed nor a NumPy alias NumPy 2 removed; the library imports only
the standard library and nothing imports ``monailabel``; the module's CMakeLists lists every Python,
UI and icon file; the extension's CMake and catalog entry agree; the .ui file defines every widget
the code uses and binds only parameters the parameter node declares, to widgets that can show them.
The pure decisions: the 2x3 layout (each row its own view group) and its view-to-volume assignment,
the image-task filter, the AI-generated names and derived-series tags, and the predicted output
grid, which must equal ``ctsr_models``'s own (an independent implementation). The panel's click path
without Slicer: the client command (token in the environment only), the progress protocol, the
one-line errors, the Enhance state machine, and Connect -> Enhance -> result on the predicted grid
through the client process against the stub server (``CTEnhanceLib.stubserver``) and the real one.
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
from conftest import REPO, shared

EXTENSION_DIR = REPO / "slicer_extension"
MODULE_DIR = EXTENSION_DIR / "CTEnhance"
sys.path.insert(0, str(MODULE_DIR))

from CTEnhanceLib import layout  # noqa: E402
from CTEnhanceLib.derived import derived_description, derived_series_number, derived_series_tags  # noqa: E402
from CTEnhanceLib.errors import Cancelled, ClientError  # noqa: E402
from CTEnhanceLib.geometry import Grid, super_resolution_grid  # noqa: E402
from CTEnhanceLib.process import (TOKEN_ENV, ClientRun, EnhanceFlow, OutputReader, Phase,  # noqa: E402
                                  SubprocessClient, client_environment, enhance_command, error_message,
                                  info_command, progress_line)
from CTEnhanceLib.progress import Heartbeat, Progress, Stage  # noqa: E402
from CTEnhanceLib.tasks import SR_TASK, TaskInfo, image_tasks, result_extension, tasks_from_records  # noqa: E402

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
    used = {n.attr for path in [MODULE_DIR / "CTEnhance.py", *sorted((MODULE_DIR / "CTEnhanceSlicer").glob("*.py"))]
            for n in ast.walk(_tree(path)) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
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


def test_layout_is_two_rows_of_three_views_each_row_in_its_own_view_group():
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
            assert properties["orientation"] == orientation
            assert properties["viewgroup"] == str(layout.ROW_VIEW_GROUPS[row_name])
            assert properties["viewcolor"] == layout.VIEW_COLORS[orientation]
            tags.append(view.get("singletontag"))
    assert tags == [v.tag for v in layout.VIEWS] and len(set(tags)) == 6
    assert len({v.label for v in layout.VIEWS}) == 6
    # separate groups: a linked volume change in one row cannot reach the other (no collapsed comparison)
    assert len(set(layout.ROW_VIEW_GROUPS.values())) == 2 and not set(layout.ROW_VIEW_GROUPS.values()) & {0, 1}
    twins = {v.tag: layout.twin_view(v).tag for v in layout.VIEWS}
    assert twins["CTEnhanceOriginalAxial"] == "CTEnhanceEnhancedAxial" and twins["CTEnhanceEnhancedSagittal"] == \
        "CTEnhanceOriginalSagittal"
    assert all(twins[twins[tag]] == tag for tag in twins)


def test_top_row_shows_the_original_and_bottom_row_the_enhanced_volume():
    assignment = layout.volumes_by_view("vtkMRMLScalarVolumeNode1", "vtkMRMLScalarVolumeNode2")
    assert [assignment[v.tag] for v in layout.VIEWS] == ["vtkMRMLScalarVolumeNode1"] * 3 + [
        "vtkMRMLScalarVolumeNode2"] * 3
    with pytest.raises(ValueError, match="two different volumes"):
        layout.volumes_by_view("vtkMRMLScalarVolumeNode1", "vtkMRMLScalarVolumeNode1")
    assert layout.result_name("CT chest") == "CT chest enhanced (AI-generated)"
    assert layout.result_name("chest PA", xray=True) == "chest PA CT estimate (AI-generated)"


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


# --- the module's click path without Slicer: client process, progress protocol, Enhance state machine ---------------

PROCESS_TIMEOUT_S = 120.0


def test_the_client_command_keeps_the_token_out_of_the_command_line():
    command = enhance_command("http://127.0.0.1:9", {"image": "/in.nrrd"}, "/out.nrrd", SR_TASK,
                              {"target_spacing": 1.0}, token="s3cret", python="py",
                              base_environment={"PYTHONPATH": "/x", TOKEN_ENV: "stale"})
    arguments = list(command.arguments)
    assert command.program == "py" and arguments[:2] == ["-m", "CTEnhanceLib.client"]
    assert "s3cret" not in " ".join(arguments) and "s3cret" not in repr(command)
    assert command.environment[TOKEN_ENV] == "s3cret"
    assert command.environment["PYTHONPATH"].split(os.pathsep) == [str(MODULE_DIR), "/x"]
    assert "--progress-json" in arguments[:arguments.index("enhance")]
    assert json.loads(arguments[arguments.index("--params") + 1]) == {"target_spacing": 1.0}
    assert "--label" not in arguments
    assert TOKEN_ENV not in client_environment("", {TOKEN_ENV: "stale"})
    xray = enhance_command("http://h:1", {"image": "/pa.dcm", "label": "/lat.dcm"}, "/o.nrrd", "xray_to_ct")
    assert xray.arguments[xray.arguments.index("--label") + 1] == "/lat.dcm"
    with pytest.raises(ValueError, match="'image'"):
        enhance_command("http://h:1", {"label": "/lat.dcm"}, "/o.nrrd", "xray_to_ct")
    assert "info" in info_command("http://h:1", "t").arguments and "t" not in info_command("http://h:1", "t").arguments


def test_progress_lines_are_read_in_any_pieces():
    lines = [progress_line(Progress(Stage.UPLOAD, 5, 10, since=100.0), started=99.0, now=101.0), "INFO not json",
             json.dumps({"output": "/o.nrrd", "task": SR_TASK, "size_bytes": 7})]
    text = "\n".join(lines)  # the last line without its newline: read at close()
    reader = OutputReader()
    for start in range(0, len(text), 7):
        reader.feed(text[start:start + 7])
    assert reader.progress.stage is Stage.UPLOAD and reader.progress.fraction == 0.5
    assert reader.elapsed_s == 2.0 and reader.stage_started_s == {Stage.UPLOAD: 2.0} and reader.result is None
    reader.close()
    assert reader.result == {"output": "/o.nrrd", "task": SR_TASK, "size_bytes": 7}


def test_a_failed_client_process_is_reported_in_its_own_words():
    stderr = "INFO x: y\npython -m CTEnhanceLib.client: error: Nothing is listening at http://127.0.0.1:9.\n"
    assert error_message(stderr, 2) == "Nothing is listening at http://127.0.0.1:9."
    assert error_message("Traceback\nKeyError: 'x'\n", 1).startswith("The client process ended with status 1: KeyError")
    run = ClientRun(info_command("http://h:1"))
    run.stderr(stderr)
    with pytest.raises(ClientError, match="^Nothing is listening"):
        run.finish(2)
    with pytest.raises(ClientError, match="without a result"):
        ClientRun(info_command("http://h:1")).finish(0)
    cancelled = ClientRun(info_command("http://h:1"))
    cancelled.cancel()
    with pytest.raises(Cancelled):
        cancelled.finish(-9)


def test_enhance_stays_disabled_until_the_result_is_loaded():
    flow = EnhanceFlow()
    assert flow.can_enhance(True) and not flow.can_enhance(False)
    flow.start()
    assert not flow.can_enhance(True) and flow.busy
    with pytest.raises(RuntimeError, match="from running to running"):
        flow.start()
    flow.ended(True)
    assert flow.phase is Phase.LOADING and not flow.can_enhance(True)
    flow.loaded()
    assert flow.can_enhance(True)
    flow.start()
    assert flow.cancel() and not flow.cancel()
    flow.ended(True)  # the process won the race, but the user cancelled: nothing to load
    assert flow.phase is Phase.IDLE
    flow.start()
    flow.ended(False)
    assert flow.phase is Phase.IDLE


def test_the_derived_series_says_ai_generated_and_sorts_after_the_input():
    long = derived_description("CHEST 5mm soft tissue " * 5)
    assert len(long) <= 64 and long.startswith("CHEST 5mm") and long.endswith(" [CT Enhance, AI-generated]")
    assert derived_description("") == "CT [CT Enhance, AI-generated]"
    numbers = [derived_series_number(n) for n in ("3", "2.0", "", "x", "-1")]
    assert numbers == ["1003", "1002", "1000", "1000", "1000"]
    assert derived_series_tags("Thorax", "4", "1.2.3", model="sr_unet_small_v3") == {
        "Modality": "CT", "SeriesDescription": "Thorax [CT Enhance, AI-generated]", "SeriesNumber": "1004",
        "Manufacturer": "CT Enhance", "Model": "sr_unet_small_v3 (AI-generated)", "FrameOfReferenceInstanceUID": "1.2.3"}
    assert "FrameOfReferenceInstanceUID" not in derived_series_tags("Thorax", "")


def test_the_heartbeat_repeats_the_latest_report_while_none_comes():
    import time

    seen: list[tuple[Stage, bool]] = []
    with Heartbeat(lambda progress, repeat: seen.append((progress.stage, repeat)), interval_s=0.1) as beat:
        beat(Progress(Stage.INFERENCE))
        time.sleep(0.5)
    assert seen[0] == (Stage.INFERENCE, False)
    assert 2 <= sum(repeat for _, repeat in seen) <= 6


def _sitk_grid(image) -> Grid:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return Grid(image.GetSize(), image.GetSpacing(), image.GetOrigin(), tuple(map(tuple, direction.T)))


def click_path(url: str, ct: Path, folder: Path, target_spacing: float, token: str = "") -> tuple[dict, set[Stage]]:
    """What the panel does, with a subprocess in place of ``qt.QProcess`` and a loop in place of its timer:
    Connect (``info``), pick the task, Enhance (client process, progress polled), load the result.
    Returns the result record and the stages the client's progress lines went through."""
    import time

    import SimpleITK as sitk

    tasks = {t.name: t for t in tasks_from_records(SubprocessClient(info_command(url, token)).wait(PROCESS_TIMEOUT_S)
                                                   ["tasks"])}
    params = tasks[SR_TASK].request_params(target_spacing=target_spacing)
    flow = EnhanceFlow()
    flow.start()
    output = folder / "result.nrrd"
    runner = SubprocessClient(enhance_command(url, {"image": str(ct)}, str(output), SR_TASK, params, token=token))
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not runner.poll():
        assert time.monotonic() < deadline and not flow.can_enhance(True)
        time.sleep(0.05)
    try:
        record = runner.run.finish(runner.exit_code)
    except ClientError:
        flow.ended(False)
        raise
    flow.ended(True)
    assert flow.phase is Phase.LOADING and not flow.can_enhance(True)
    expected = super_resolution_grid(_sitk_grid(sitk.ReadImage(str(ct))), target_spacing)
    loaded = _sitk_grid(sitk.ReadImage(record["output"]))
    assert loaded.size == expected.size
    np.testing.assert_allclose(loaded.spacing, expected.spacing, atol=1e-4)
    np.testing.assert_allclose(loaded.origin, expected.origin, atol=1e-3)
    np.testing.assert_allclose(loaded.axes, expected.axes, atol=1e-6)
    flow.loaded()
    assert flow.can_enhance(True)
    return record, set(runner.run.reader.stage_started_s)


@pytest.fixture
def stub_url(request) -> str:
    """The module's stand-in server (``CTEnhanceLib.stubserver``) in a child process; ``request.param``: its token."""
    token = getattr(request, "param", "")
    process = subprocess.Popen([sys.executable, "-m", "CTEnhanceLib.stubserver", "--token", token],
                               stdout=subprocess.PIPE, text=True, env=client_environment())
    try:
        yield json.loads(process.stdout.readline())["url"]
    finally:
        process.kill()
        process.wait(timeout=30)


def _thick_nrrd(folder: Path) -> Path:
    """A 24x20x6 int16 CT with 5 mm slabs and an oblique direction, as Slicer writes it (uncompressed NRRD)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray((np.arange(6 * 20 * 24).reshape(6, 20, 24) % 2000 - 1000).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 5.0))
    image.SetOrigin((-100.0, 40.0, 300.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 0.8, -0.6, 0.0, 0.6, 0.8))
    path = folder / "thick.nrrd"
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def test_click_path_against_the_stub_server(stub_url, tmp_path):
    import SimpleITK as sitk

    ct = _thick_nrrd(tmp_path)
    record, stages = click_path(stub_url, ct, tmp_path, 1.0)
    assert record["server"]["model"] == "stub" and stages == set(Stage)
    thin, thick = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (record["output"], ct))
    np.testing.assert_array_equal(thin[2::5], thick)  # nearest slab: slice 5k+2 lies in slab k


@pytest.mark.parametrize("stub_url", ["s3cret"], indirect=True)
def test_the_token_reaches_the_server_through_the_environment(stub_url, tmp_path):
    ct = _thick_nrrd(tmp_path)
    record, _ = click_path(stub_url, ct, tmp_path, 2.5, token="s3cret")
    assert Path(record["output"]).is_file()
    with pytest.raises(ClientError, match="access token"):
        click_path(stub_url, ct, tmp_path, 2.5, token="wrong")


def test_click_path_against_the_real_server(tmp_path):
    from server_fixture import running_server

    import SimpleITK as sitk

    source = shared("ct/totalseg/example_ct_sm.nii.gz")
    ct = tmp_path / "thick.nrrd"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(source)), sitk.sitkInt16), str(ct), useCompression=False)
    studies = tmp_path / "studies"
    studies.mkdir()
    with running_server(studies) as server:
        record, stages = click_path(server.url, ct, tmp_path, 1.5)
        cli = subprocess.run([sys.executable, "-m", "CTEnhanceLib.client", "--server", server.url,
                              "--progress-interval", "0.5", "enhance", str(ct), str(tmp_path / "slow.nrrd"),
                              "--target-spacing", "0.075", "--model", "cubic"],
                             capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, env=client_environment())
    assert record["server"]["model"] and stages == set(Stage)
    assert cli.returncode == 0, cli.stderr
    waiting = [line for line in cli.stderr.splitlines() if "Inference on the server" in line]
    assert len(waiting) >= 3, cli.stderr  # about 3 s of server work, one line every 0.5 s
    assert re.match(r"\[\s*\d+ s\] Inference on the server", waiting[-1])

"""``ctsr-drr`` on a real CT: outputs, read-back geometry, and where a bead lands on the detector."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli, shared

from ctsr_models.cli import drr as drr_cli
from ctsr_models.io import read_radiograph, read_volume
from ctsr_models.physics import VolumeGrid, drr, load_geometries

CT = "ct/totalseg/example_ct_sm.nii.gz"  # abdomen, 122 x 101 x 30 voxels of 3 mm, direction diag(-1, -1, 1)
BEAD_INDEX = (40, 30, 20)  # (i, j, k): off the isocentre in x, y and z
BEAD_HU = 30000


@pytest.fixture(scope="module")
def drr_run(tmp_path_factory) -> tuple[Path, Path, np.ndarray, dict]:
    """The CT with a bright one-voxel bead, projected by the command line tool."""
    tmp = tmp_path_factory.mktemp("drr")
    image = sitk.ReadImage(str(shared(CT)))
    array = sitk.GetArrayFromImage(image)
    i, j, k = BEAD_INDEX
    array[k, j, i] = BEAD_HU
    bead_ct = sitk.GetImageFromArray(array)
    bead_ct.CopyInformation(image)
    sitk.WriteImage(bead_ct, str(tmp / "bead.nii.gz"))
    bead = np.array(image.TransformIndexToPhysicalPoint(BEAD_INDEX))
    out = tmp / "out"
    proc = run_cli("ctsr-drr", tmp / "bead.nii.gz", out, "--views", "pa,lateral", "--quiet", check=True)
    return tmp / "bead.nii.gz", out, bead, json.loads(proc.stdout)


def test_writes_every_view_and_the_geometry(drr_run) -> None:
    _, out, _, report = drr_run
    expected = {"pa.dcm", "pa.png", "pa.geometry.json", "lateral.dcm", "lateral.png", "lateral.geometry.json",
                "geometry.json"}
    assert {p.name for p in out.iterdir()} == expected == set(report["files"])
    geometries = load_geometries(out / "geometry.json")
    assert set(geometries) == {"pa", "lateral"}
    pa, lateral = geometries["pa"], geometries["lateral"]
    assert (pa.view, lateral.view, pa.shape, pa.sid) == ("pa", "ll", (256, 256), pytest.approx(1800.0))
    # default pixel: 400 mm at the isocentre over 256 pixels, magnified by sid / sod
    assert pa.pixel_mm == pytest.approx((400 * 1.2 / 256,) * 2)
    volume = read_volume(shared(CT))
    centre = volume.index_to_physical((np.asarray(volume.shape[::-1]) - 1) / 2)
    assert np.allclose(report["isocentre"], centre)
    assert np.allclose(pa.to_detector(centre), (127.5, 127.5)) and np.allclose(lateral.to_detector(centre),
                                                                            (127.5, 127.5))


def test_lateral_reads_back_with_its_geometry(drr_run) -> None:
    ct, out, _, report = drr_run
    geometry = load_geometries(out / "geometry.json")["lateral"]
    rad = read_radiograph(out / "lateral.dcm")
    assert rad.geometry == geometry and rad.kind == "line_integral"
    assert np.allclose(rad.isocentre, report["isocentre"])
    volume = read_volume(ct)
    expected = drr(volume.array, VolumeGrid.of(volume), geometry)
    assert np.abs(rad.image - expected).max() <= 1e-3 * expected.max()
    png = read_radiograph(out / "lateral.png")
    assert png.geometry == geometry and png.kind == "line_integral"
    assert np.abs(png.image - expected).max() <= 1e-3 * expected.max()
    assert report["line_integral_range"]["lateral"] == pytest.approx([expected.min(), expected.max()], rel=1e-4)


@pytest.mark.parametrize("view", ["pa", "lateral"])
def test_bead_lands_where_the_geometry_says(drr_run, view: str) -> None:
    _, out, bead, _ = drr_run
    rad = read_radiograph(out / f"{view}.dcm")
    original = read_volume(shared(CT))
    difference = rad.image - drr(original.array, VolumeGrid.of(original), rad.geometry)
    blob = np.where(difference > 0.1 * difference.max(), difference, 0.0)
    rows, cols = np.indices(blob.shape)
    centroid = np.array([(rows * blob).sum(), (cols * blob).sum()]) / blob.sum()
    predicted = rad.geometry.to_detector(bead)
    assert difference.max() > 0.5  # the bead stands out
    assert np.abs(centroid - predicted).max() < 0.5, (centroid, predicted)
    assert np.abs(np.unravel_index(np.argmax(difference), blob.shape) - predicted).max() <= 1.0


def test_bad_input_fails_in_one_line(tmp_path: Path) -> None:
    """A radiograph given as the CT: the installed script exits 2 with one line and writes nothing."""
    proc = run_cli("ctsr-drr", shared("xray/torchxrayvision/00000001_000.png"), tmp_path / "out")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("ctsr-drr: error: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, exit_code, message", [
    (["absent.nii.gz", "b"], 2, "input not found"),
    ([CT, "c", "--sid", "1000", "--sod", "1200"], 2, "must be less than --sid"),
    ([CT, "d", "--isocentre", "1,2"], 2, "use auto or three numbers"),
    ([CT, "e", "--views", "pa,frontal"], 2, "give each view once"),
    ([CT, "f", "--device", "tpu"], 2, "invalid choice"),
])
def test_bad_arguments_are_refused(tmp_path: Path, capsys, args: list[str], exit_code: int, message: str) -> None:
    args = [str(shared(a)) if a == CT else str(tmp_path / a) if i < 2 else a for i, a in enumerate(args)]
    try:
        code = drr_cli.main(args)
    except SystemExit as stop:  # argparse refuses before running
        code = stop.code
    assert code == exit_code
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not Path(args[1]).exists()


def test_existing_output_is_kept(tmp_path: Path, capsys) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert drr_cli.main([str(shared(CT)), str(tmp_path / "full"), "--views", "pa", "--detector-px", "8"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]

"""Console scripts refuse an output they cannot write before any work, in one line naming the user's path,
and that line stays the last line of stderr whatever libraries printed before it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import BIN, run_cli, shared
from ctsr_models.io.errors import InputError
from ctsr_models.io.output_check import check_output

MISSING_INPUT = "/nonexistent/ctsr-input.nii.gz"
"""An input that does not exist: an error about the OUTPUT proves the output was checked before reading."""

VOLUME_SCRIPTS = {
    "ctsr-enhance": [],
    "ctsr-degrade": ["--thickness", "5"],
}


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.rstrip("\n").split("\n")
    return lines[-1]


def _bad_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Outputs that cannot be written, and a word the refusal must contain."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    full = tmp_path / "full_dicom_folder"
    full.mkdir()
    (full / "IM0001.dcm").write_bytes(b"x")
    return {
        "unknown format": (tmp_path / "result.png", "unknown format"),
        "parent is a file": (a_file / "result.nii.gz", "not a folder"),
        "two-file format": (tmp_path / "result.nhdr", "atomically"),
        "non-empty DICOM folder": (full, "not empty"),
        "unwritable place": (Path("/proc/ctsr-result.nii.gz"), "cannot write"),
    }


def test_every_unwritable_output_is_refused_naming_the_path(tmp_path):
    for case, (out, word) in _bad_outputs(tmp_path).items():
        with pytest.raises(InputError) as info:
            check_output(out)
        assert word in str(info.value) and str(out) in str(info.value), case
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt", "full_dicom_folder"]


@pytest.mark.parametrize("script", sorted(VOLUME_SCRIPTS))
def test_volume_scripts_refuse_bad_outputs_before_reading(script, tmp_path):
    cases = _bad_outputs(tmp_path)
    for case in ("unknown format", "parent is a file", "unwritable place"):
        out, word = cases[case]
        proc = run_cli(script, MISSING_INPUT, out, *VOLUME_SCRIPTS[script])
        assert proc.returncode == 2, (case, proc.stderr)
        line = _last_line(proc)
        assert line.startswith(f"{script}: error: "), (case, line)
        assert word in line and str(out) in line, (case, line)
        assert ".partial" not in line and ".ctsr-write-check" not in line, (case, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt", "full_dicom_folder"]


def test_xray2ct_refuses_a_bad_output_before_reading(tmp_path):
    out = tmp_path / "ct_estimate.jpg"
    proc = run_cli("ctsr-xray2ct", MISSING_INPUT, MISSING_INPUT + "2", out)
    assert proc.returncode == 2
    assert "unknown format" in _last_line(proc) and str(out) in _last_line(proc)


def test_drr_refuses_an_output_folder_inside_a_file(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    proc = run_cli("ctsr-drr", MISSING_INPUT, a_file / "drr")
    assert proc.returncode == 2
    assert "not a folder" in _last_line(proc) and str(a_file) in _last_line(proc)
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_a_good_output_in_a_new_folder_is_accepted_and_nothing_is_left(tmp_path):
    out = tmp_path / "new" / "deeper" / "result.nii.gz"
    assert check_output(out) == out
    assert check_output(tmp_path / "dicom_out") == tmp_path / "dicom_out"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no folder was created
    (tmp_path / "looks_like.nii.gz").mkdir()
    with pytest.raises(InputError, match="existing folder"):
        check_output(tmp_path / "looks_like.nii.gz")


def test_the_error_stays_the_last_line_after_a_real_pydicom_warning(tmp_path):
    """A DICOM file with an invalid UID makes pydicom warn while reading; the refusal that follows
    (one slice is no volume) is still the last line, and the warning is on lines of its own before it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([str(BIN / "ctsr-enhance"), str(shared("dicom_edge/pydicom_data/bad_sequence.dcm")),
                           str(tmp_path / "out.nii.gz")], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 2
    assert "Invalid value for VR UI" in proc.stderr
    assert _last_line(proc).startswith("ctsr-enhance: error: 2D image")


def test_the_error_starts_its_own_line_after_a_half_drawn_progress_bar(tmp_path):
    """A tqdm bar left mid-line (as when the work fails inside it) must not share the error's line."""
    script = textwrap.dedent("""
        import argparse, warnings
        from tqdm import tqdm
        from ctsr_models.cli.common import add_common_args, run_cli
        from ctsr_models.io.errors import InputError

        def run(args):
            bar = tqdm(total=100, desc="enhance", leave=False)
            bar.update(40)
            warnings.warn("a library warning", UserWarning)
            raise InputError("the input is not usable")

        parser = argparse.ArgumentParser(prog="demo")
        add_common_args(parser)
        raise SystemExit(run_cli(parser, run, []))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert proc.returncode == 2
    assert "enhance:" in proc.stderr and "a library warning" in proc.stderr
    assert _last_line(proc) == "-c: error: the input is not usable"

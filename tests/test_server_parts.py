"""The app's parts in-process, no server: parameters, error answers, result formats, and the task base
taking a two-image task (as the X-ray -> CT task will) without changes."""
from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import HTTPException
from server_fixture import REPO

if str(REPO) not in sys.path:  # ``python -m pytest`` from the repository root has it already
    sys.path.insert(0, str(REPO))

from monailabel_app.lib.errors import (NotFoundError, ParamError, TooLargeError, client_message,  # noqa: E402
                                       status_of, to_http)
from monailabel_app.lib.infers import InputSpec, VolumeInferTask  # noqa: E402
from monailabel_app.lib.infers.super_resolution import default_model  # noqa: E402
from monailabel_app.lib.output import result_format  # noqa: E402
from monailabel_app.lib.params import Param, parse_params, protect_reserved  # noqa: E402

from ctsr_models.inference import WeightsError  # noqa: E402
from ctsr_models.io import InputError, Volume, read_volume, write_volume  # noqa: E402

SPACING = Param("target_spacing", float, 1.0, "mm", greater_than=0.0)
MODEL = Param("model", str, "cubic", "model", choices=("linear", "cubic"), choice_error=NotFoundError)
FLAG = Param("resample_irregular", bool, False, "flag")


@pytest.mark.parametrize(("value", "expected"), [(None, 1.0), (2, 2.0), ("0.5", 0.5), (1e-9, 1e-9)])
def test_numbers_come_as_json_numbers_or_numeric_text(value, expected):
    assert SPACING.parse(value) == expected


@pytest.mark.parametrize("value", [0, -1, "nan", float("inf"), True, "thin", [1.0], {}])
def test_bad_numbers_are_refused_with_the_parameter_named(value):
    with pytest.raises(ParamError, match="target_spacing"):
        SPACING.parse(value)


def test_choices_flags_and_defaults():
    assert parse_params({"model_name": "linear", "resample_irregular": "true"}, [SPACING, MODEL, FLAG]) == {
        "target_spacing": 1.0, "model": "linear", "resample_irregular": True}
    with pytest.raises(NotFoundError, match="unknown model 'nope'; available: linear, cubic"):
        MODEL.parse("nope")
    with pytest.raises(ParamError, match="true or false"):
        FLAG.parse(1)
    assert MODEL.describe() == {"type": "string", "default": "cubic", "description": "model",
                                "choices": ["linear", "cubic"]}


def test_a_clients_model_parameter_moves_out_of_monailabels_task_key():
    assert protect_reserved({"model": "cubic", "target_spacing": 2}) == {"model_name": "cubic", "target_spacing": 2}
    assert protect_reserved({"model": "cubic", "model_name": "cubic"}) == {"model_name": "cubic"}
    with pytest.raises(ParamError, match="either model or model_name"):
        protect_reserved({"model": "cubic", "model_name": "linear"})


def test_the_default_model_is_the_network_when_shipped_else_cubic():
    assert default_model(["default", "tiny", "linear", "cubic", "lanczos"]) == "default"
    assert default_model(["linear", "cubic", "lanczos"]) == "cubic"


@pytest.mark.parametrize(("exc", "status"), [
    (NotFoundError("x"), 404), (ParamError("x"), 422), (TooLargeError("x"), 413), (WeightsError("x"), 503),
    (InputError("x"), 400), (MemoryError(), 503), (KeyError("x"), 500), (HTTPException(418, "x"), 418)])
def test_each_failure_has_its_status(exc, status):
    assert status_of(exc) == status == to_http(exc, "task").status_code


def test_messages_hide_server_paths_and_speak_in_parameters():
    exc = InputError("cannot read /tmp/tmpab12cd34.nii.gz: bad; or pass --resample-irregular\nsecond line")
    message = client_message(exc, hide=("/tmp/tmpab12cd34.nii.gz", "tmpab12cd34.nii.gz"))
    assert message == "cannot read the file: bad; or pass resample_irregular"


def test_an_internal_error_answers_a_reference_and_logs_the_traceback(caplog):
    with caplog.at_level(logging.ERROR):
        answer = to_http(RuntimeError("secret detail /data/DOE_JOHN"), "task")
    assert answer.status_code == 500 and "DOE_JOHN" not in answer.detail
    reference = answer.detail.split("reference ")[1].split(")")[0]
    assert reference in caplog.text and "secret detail" in caplog.text


@pytest.mark.parametrize(("request_keys", "expected"), [
    ({}, (".nrrd", "int16", 0)),
    ({"result_extension": ".nii.gz", "result_dtype": "float32"}, (".nii.gz", "float32", 0)),
    ({"result_dtype": "uint8"}, (".nrrd", "int16", 1)),
    ({"result_extension": ".seg.nrrd"}, (".nrrd", "int16", 1)),
])
def test_result_format_keeps_hu(request_keys, expected):
    extension, dtype, notes = result_format(request_keys)
    assert (extension, dtype, len(notes)) == expected


class Difference(VolumeInferTask):
    """A two-image task for the test: ``image - label`` on the image's grid."""

    inputs = (InputSpec("image", "first", session_name="frontal"), InputSpec("label", "second", session_name="lateral"))

    def __init__(self) -> None:
        super().__init__("difference", "image minus label", [Param("scale", float, 1.0, "factor", greater_than=0.0)])

    def run(self, volumes: Mapping[str, Volume], params: Mapping[str, Any]) -> tuple[Volume, dict[str, Any]]:
        first, second = volumes["image"], volumes["label"]
        return first.replace(array=params["scale"] * (first.array - second.array)), {"pair": True}


@pytest.fixture
def pair(tmp_path, monkeypatch) -> dict[str, Path]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # results go here
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("frontal", "lateral"):
        volume = Volume(rng.normal(0, 100, (4, 5, 6)).astype(np.float32) - 500, (0.5, 0.5, 2.0), (1.0, 2.0, 3.0))
        paths[name] = write_volume(volume, tmp_path / "session" / f"{name}.nii.gz", dtype="float32")
    return paths


def test_a_two_image_task_reads_file_and_label(pair):
    path, result = Difference()({"image": str(pair["frontal"]), "label": str(pair["lateral"]), "scale": "2"})
    out = read_volume(path, allow_non_ct=True)
    expected = 2 * (read_volume(pair["frontal"]).array - read_volume(pair["lateral"], allow_non_ct=True).array)
    np.testing.assert_allclose(out.array, np.rint(expected), atol=0.5)
    assert result["pair"] and set(result["input"]) == {"image", "label"} and result["params"] == {"scale": 2.0}


def test_a_two_image_task_reads_a_session_folder_by_name(pair):
    folder = pair["frontal"].parent
    path, result = Difference()({"image": str(folder), "session": {"id": "s"}})
    assert Path(path).exists() and result["input"]["label"]["size_xyz"] == [6, 5, 4]


def test_a_missing_second_image_is_a_404_naming_the_form_field(pair):
    with pytest.raises(HTTPException) as info:
        Difference()({"image": str(pair["frontal"])})
    assert info.value.status_code == 404 and "form field 'label'" in info.value.detail

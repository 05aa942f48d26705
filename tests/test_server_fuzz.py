"""Fuzz the whole HTTP API of the real server with schemathesis: no client mistake gets a 5xx.

One server, with a small CT in its studies folder and ``datastore_writable`` on, so that every route
the app can serve is open and the fuzzer reaches MONAI Label's own datastore handlers (in the
default read-only mode those routes answer 403 before any handler runs: ``test_server_security``).
Schemathesis reads the server's own ``/openapi.json`` and sends valid (positive) and invalid
(negative) requests to every operation: at most :data:`EXAMPLES` cases per operation and mode, seed
:data:`SEED`, loopback only, no shrinking and no example database, so the run is the same every time
and stops by itself (289 cases over 37 operations, about 20 s plus the server's start on a loaded
2-core machine). After every case the server must still answer ``/info/``. Generated ``params`` ask
for the ``linear`` model, so that a generated inference stays cheap.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import hypothesis.errors
import numpy as np
import pytest
import requests
import schemathesis
import SimpleITK as sitk
from hypothesis import HealthCheck, Phase
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from server_fixture import Server, running_server

SEED = 20261201
EXAMPLES = 4
STUDY = "case001"
log = logging.getLogger(__name__)
CONF: dict[str, str] = {"datastore_writable": "true"}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    studies = tmp_path_factory.mktemp("fuzz_studies")
    hu = np.full((4, 24, 24), -1000, np.int16)
    hu[:, 6:18, 6:18] = 40
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((2.0, 2.0, 5.0))
    sitk.WriteImage(image, str(studies / f"{STUDY}.nii.gz"))
    with running_server(studies, conf=CONF) as srv:
        yield srv


def test_no_server_error(server: Server) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=SchemathesisConfig(seed=SEED),
                                           timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 35  # every operation of /openapi.json, none skipped
    failures: list[str] = []
    cases = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.seed(SEED)
            @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                                 phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                nonlocal cases
                cases += 1
                if isinstance(case.body, dict) and "params" in case.body:
                    case.body["params"] = _cheap(case.body["params"])
                response = case.call(base_url=server.url, timeout=60)
                if response.status_code >= 500:
                    failures.append(f"{response.status_code} {case.method} {case.formatted_path} "
                                    f"query={case.query} {response.text[:200]}")
                alive = requests.get(server.url + "/info/", timeout=30).status_code
                assert alive == 200, f"/info/ answered {alive} after {case.method} {case.formatted_path}"

            try:
                run()
            except hypothesis.errors.Unsatisfiable:  # negative mode on an operation that has nothing to break
                assert mode is GenerationMode.NEGATIVE
    log.info("fuzzed %d cases over %d operations", cases, len(operations))
    assert failures == [], f"{len(failures)} of {cases} cases answered 5xx:\n" + "\n".join(failures)
    assert cases >= len(operations) * EXAMPLES


def _cheap(params: object) -> object:
    """Generated ``params`` with the model forced to ``linear`` (a fuzzed network inference could take minutes)."""
    try:
        value = json.loads(params) if isinstance(params, str) else None
    except ValueError:
        return params
    if isinstance(value, dict):
        value.update(model="linear", model_name="linear", adapt=False, refine_steps=0)
        return json.dumps(value)
    return params


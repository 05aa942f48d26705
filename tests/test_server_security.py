"""The server's security over HTTP (``monailabel_app/lib/security.py``), against the real server.

Two servers per module: ``ro`` as started by default (read-only datastore) with one CORS origin and
small body limits; ``rw`` with ``datastore_writable`` and an API token file. Checked: every route of
MONAI Label's ``/openapi.json`` has a policy; traversal ids on every id-taking route write and delete
nothing in the studies folder's parent (403 on refused routes, 400 otherwise, 400 everywhere once
writable); CORS names origins; the token guards every route but ``/health`` and never reaches the log;
body limits answer 413/400 and leave no upload behind; client mistakes answer 4xx, never 5xx.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from server_fixture import REPO, Server, leftovers, running_server

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from monailabel_app.lib.security import (ROUTES, Access, BodyGuard, Refusal, RoutePolicy,  # noqa: E402
                                         SecurityConfig, check_filename, check_id)

STUDY = "case001"
TOKEN = "s3cret-" + uuid.uuid4().hex
ORIGIN = "http://viewer.example:8080"
ID_PARAMS = ("image", "label", "id", "tag", "session_id", "model", "strategy", "method")
TRAVERSALS = ("../x", "..%2Fx", "/abs", "a/b", "x%00")
"""Ids as they appear in the URL (percent-encoded where a client would encode them)."""
VALID = {"tag": "final", "model": "ct_super_resolution"}
LIMIT = 3_000_000


def _ct(path: Path) -> None:
    """A small synthetic CT: a water cylinder with a bone rod in air, 2 x 2 x 5 mm voxels."""
    z, y, x = np.mgrid[0:6, 0:32, 0:32]
    hu = np.where((y - 16) ** 2 + (x - 16) ** 2 < 144, 0, -1000) + np.where((y - 16) ** 2 + (x - 12) ** 2 < 9, 700, 0)
    image = sitk.GetImageFromArray((hu + 0 * z).astype(np.int16))
    image.SetSpacing((2.0, 2.0, 5.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, Path]:
    """``parent/studies/case001.nii.gz`` and a file beside the studies folder that must survive."""
    parent = tmp_path_factory.mktemp("site")
    (parent / "studies").mkdir()
    _ct(parent / "studies" / f"{STUDY}.nii.gz")
    (parent / "x.nii.gz").write_bytes(b"outside the studies folder")
    token_file = tmp_path_factory.mktemp("secret") / "token.txt"
    token_file.write_text(TOKEN + "\n")
    return {"parent": parent, "studies": parent / "studies", "token_file": token_file}


@pytest.fixture(scope="module")
def ro(site) -> Iterator[Server]:
    conf = {"cors_origins": ORIGIN, "max_upload_bytes": str(LIMIT), "max_form_parts": "20"}
    with running_server(site["studies"], conf=conf) as server:
        yield server


@pytest.fixture(scope="module")
def rw(site) -> Iterator[Server]:
    conf = {"datastore_writable": "true", "api_token_file": str(site["token_file"])}
    with running_server(site["studies"], conf=conf) as server:
        yield server


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def raw(server: Server, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    """Send ``target`` exactly as written (no client-side normalisation of ``..``)."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def multipart(files: dict[str, tuple[str, bytes]], data: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart body and its Content-Type, as ``requests`` builds them."""
    prepared = requests.Request("POST", "http://h/", files=files, data=data or {}).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def openapi_operations(server: Server, headers: dict[str, str] | None = None) -> list[tuple[str, str, dict]]:
    spec = requests.get(server.url + "/openapi.json", headers=headers, timeout=10).json()
    return [(method.upper(), path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def traversal_requests(server: Server, headers: dict[str, str] | None = None) -> Iterator[tuple[str, str, str]]:
    """(method, route path, target) for each id parameter of each OpenAPI route and each traversal id."""
    for method, path, op in openapi_operations(server, headers):
        params = [p for p in op.get("parameters", [])  # GET /session/{id}?image=true is a flag, not an id
                  if p["name"] in ID_PARAMS and p.get("schema", {}).get("type") != "boolean"]
        for param in params:
            for bad in TRAVERSALS:
                target = path
                query = []
                for p in params:
                    value = bad if p is param else VALID.get(p["name"], STUDY)
                    if p["in"] == "path":
                        target = target.replace("{" + p["name"] + "}", value.replace("/", "%2F"))
                    else:
                        query.append(f"{p['name']}={value}")
                yield method, path, target + ("?" + "&".join(query) if query else "")


def route_of(method: str, path: str):
    return RoutePolicy(ROUTES).match(method, path)[0]


def assert_json_refusal(status: int, body: bytes, method: str, expected: int, target: str) -> None:
    assert status == expected, (method, target, status, body[:300])
    if method != "HEAD":
        assert isinstance(json.loads(body)["detail"], str)


def test_every_openapi_route_has_a_policy(ro):
    operations = openapi_operations(ro)
    assert len(operations) >= 35  # MONAI Label 0.8.5 publishes 37 operations, CT Enhance's included
    for method, path, _ in operations:
        route = route_of(method, path)
        assert route.path == path and route.method in (method, "GET" if method == "HEAD" else method)
    assert route_of("PUT", "/datastore/image").access is Access.WRITE
    assert route_of("GET", "/datastore/dataset").access is Access.OFF
    assert route_of("GET", "/health").access is Access.PUBLIC
    assert "security: datastore read-only" in ro.log_text()
    assert "not in the security policy table" not in ro.log_text()  # the hidden routes too (install() checks)


def test_a_route_outside_the_table_is_closed(ro):
    status, _, body = raw(ro, "GET", "/some/new/route")
    assert status == 404 and "no such route" in json.loads(body)["detail"]
    status, _, _ = raw(ro, "PATCH", "/info/")
    assert status == 405


def test_traversal_ids_read_only(ro, site):
    before = snapshot(site["parent"])
    body, content_type = multipart({"file": ("x.nii.gz", b"#!/bin/sh\n"), "label": ("x.nii.gz", b"\0")})
    count = 0
    for method, path, target in traversal_requests(ro):
        route = route_of(method, path)
        expected = 400 if route.access in (Access.USER, Access.PUBLIC) else 403
        send = body if method in ("PUT", "POST") else b""
        status, _, answer = raw(ro, method, target, send, {"Content-Type": content_type} if send else {})
        assert_json_refusal(status, answer, method, expected, target)
        count += 1
    assert count >= 100  # 22 id parameters x 5 ids
    assert snapshot(site["parent"]) == before
    assert requests.get(ro.url + "/info/", timeout=10).status_code == 200


def test_the_reported_attack_is_refused(ro, site):
    body, content_type = multipart({"file": ("x.sh", b"#!/bin/sh\necho pwned\n")})
    status, _, answer = raw(ro, "PUT", "/datastore/image?image=../../../pwned2", body, {"Content-Type": content_type})
    assert status == 403 and "read-only" in json.loads(answer)["detail"]
    status, _, _ = raw(ro, "DELETE", "/datastore/image?id=../x")
    assert status == 403
    assert not list(site["parent"].parent.rglob("pwned2*")) and (site["parent"] / "x.nii.gz").exists()


def test_traversal_ids_writable_are_400(rw, site):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = snapshot(site["parent"])
    body, content_type = multipart({"file": ("x.nii.gz", b"#!/bin/sh\n"), "label": ("x.nii.gz", b"\0")})
    for method, path, target in traversal_requests(rw, auth):
        expected = 403 if route_of(method, path).access is Access.OFF else 400
        send = body if method in ("PUT", "POST") else b""
        headers = {**auth, **({"Content-Type": content_type} if send else {})}
        status, _, answer = raw(rw, method, target, send, headers)
        assert_json_refusal(status, answer, method, expected, target)
    assert snapshot(site["parent"]) == before
    assert (site["parent"] / "x.nii.gz").read_bytes() == b"outside the studies folder"


def test_writable_datastore_adds_and_removes_inside_the_studies(rw, site):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    content = (site["studies"] / f"{STUDY}.nii.gz").read_bytes()
    answer = requests.put(rw.url + "/datastore/image", params={"image": "added"}, headers=auth, timeout=30,
                          files={"file": ("upload.nii.gz", content)})
    assert answer.status_code == 200, answer.text
    assert (site["studies"] / "added.nii.gz").read_bytes() == content
    assert requests.delete(rw.url + "/datastore/image", params={"id": "added"}, headers=auth,
                           timeout=30).status_code == 200
    assert not (site["studies"] / "added.nii.gz").exists()
    unnamed = requests.put(rw.url + "/datastore/image", headers=auth, timeout=30,
                           files={"file": ("upload.nii.gz", content)})
    assert unnamed.status_code == 400 and "image is required" in unnamed.json()["detail"]
    unknown = requests.delete(rw.url + "/datastore/image", params={"id": "nobody"}, headers=auth, timeout=30)
    assert unknown.status_code == 404 and isinstance(unknown.json()["detail"], str)
    bad_info = requests.put(rw.url + "/datastore/image/info", params={"image": STUDY}, headers=auth, timeout=30,
                            data={"info": "{not json"})
    assert bad_info.status_code == 400


def test_cors_only_for_named_origins(ro):
    preflight = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization"}
    evil = requests.options(ro.url + "/datastore/image", headers={"Origin": "http://evil.example", **preflight},
                            timeout=10)
    assert "access-control-allow-origin" not in evil.headers
    assert "access-control-allow-credentials" not in evil.headers
    simple = requests.get(ro.url + "/info/", headers={"Origin": "http://evil.example"}, timeout=10)
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
    named = requests.options(ro.url + "/info/", headers={"Origin": ORIGIN, **preflight}, timeout=10)
    assert named.status_code == 200
    assert named.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in named.headers
    refused = requests.get(ro.url + "/datastore/dataset", headers={"Origin": ORIGIN}, timeout=10)
    assert refused.status_code == 403 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_token_guards_every_route_but_health(rw):
    infer = "/infer/ct_super_resolution?image=" + STUDY + "&output=json"
    params = {"params": json.dumps({"target_spacing": 2.5, "model": "linear", "allow_non_ct": True})}
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        for method, path in (("GET", "/info/"), ("GET", "/datastore/"), ("POST", infer), ("GET", "/openapi.json")):
            answer = requests.request(method, rw.url + path, headers=headers, data=params, timeout=30)
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert "token" in answer.json()["detail"]
    assert requests.get(rw.url + "/health", timeout=10).json()["status"] == "ok"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(rw.url + "/info/", headers=auth, timeout=10).status_code == 200
    assert requests.get(rw.url + "/datastore/", headers=auth, timeout=10).status_code == 200
    result = requests.post(rw.url + infer, headers=auth, data=params, timeout=120)
    assert result.status_code == 200, result.text
    assert result.json()["output"]["geometry"]["spacing_xyz_mm"][2] == pytest.approx(2.5)
    assert TOKEN not in rw.log_text()


def test_uploads_over_the_limit_are_413_and_leave_nothing(ro):
    big = b"\0" * (LIMIT + 1000)
    answer = requests.post(ro.url + "/infer/ct_super_resolution", files={"file": ("big.nii.gz", big)}, timeout=60)
    assert answer.status_code == 413 and "max_upload_bytes" in answer.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.nii.gz\"\r\n\r\n"
        for _ in range(LIMIT // 65536 + 2):
            yield b"\1" * 65536
    answer = requests.post(ro.url + "/infer/ct_super_resolution", data=chunks(), timeout=60,
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413
    assert leftovers(ro) == []
    assert requests.get(ro.url + "/info/", timeout=10).status_code == 200


@pytest.mark.parametrize(("case", "expected"), [
    ("too_many_parts", 400), ("long_part_header", 400), ("huge_field", 400), ("path_filename", 400),
    ("nul_filename", 400), ("malformed", 400), ("json_body", 400), ("no_boundary", 400),
    ("bin_label", 400), ("dicom_seg", 400), ("text_body_on_datastore_get", 200)])
def test_client_mistakes_are_4xx(ro, case, expected):
    url = "/infer/ct_super_resolution"
    body, content_type = multipart({"file": ("a.nii.gz", b"x")})
    if case == "too_many_parts":
        body, content_type = multipart({"file": ("a.nii.gz", b"x")}, {f"f{i}": "v" for i in range(30)})
    elif case == "long_part_header":
        body, content_type = multipart({"file": ("a" * 20000 + ".nii.gz", b"x")})
    elif case == "huge_field":
        body, content_type = multipart({"file": ("a.nii.gz", b"x")}, {"params": "{" + " " * 2_000_000 + "}"})
    elif case == "path_filename":
        body, content_type = multipart({"file": ("../../a.nii.gz", b"x")})
    elif case == "nul_filename":
        body = body.replace(b'filename="a.nii.gz"', b'filename="a\0.nii.gz"')
    elif case == "malformed":
        body = body[: len(body) // 2]
    elif case == "json_body":
        body, content_type = b'{"params": {}}', "application/json"
    elif case == "no_boundary":
        content_type = "multipart/form-data"
    elif case == "bin_label":
        body, content_type = multipart({"file": ("a.nii.gz", b"x"), "label": ("scribbles.bin", np.random.default_rng(0)
                                                                              .bytes(4000))})
    elif case == "dicom_seg":
        url += "?output=dicom_seg"
    elif case == "text_body_on_datastore_get":
        url, body, content_type = "/datastore/", b"hello", "text/plain"
    status, _, answer = raw(ro, "POST" if url.startswith("/infer") else "GET", url, body,
                            {"Content-Type": content_type})
    assert status == expected, (case, status, answer[:300])
    assert isinstance(json.loads(answer), dict)
    assert requests.get(ro.url + "/info/", timeout=10).status_code == 200


def test_ids_and_file_names():
    for good in ("case001", "DOE JOHN thick", "a.b-c_d", "ÄÖ", "x" * 200):
        assert check_id("image", good) is None
    for bad in ("../x", "..", "a/b", "/abs", "a\\b", "x\0", ".hidden", "c:x", "x" * 201, "\u00e9" * 101):
        assert check_id("image", bad) is not None, bad
    assert check_filename("scan.nii.gz") is None
    for bad in ("..", "a/b.nii", "a\0", "x" * 256):
        assert check_filename(bad) is not None


def test_security_config_from_conf(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(" abcdefghijklmnopqrstuvwxyz \n")
    config = SecurityConfig.from_conf({"api_token_file": str(token_file), "cors_origins": "https://a.example, "
                                       "http://b.example:8080/", "max_upload_bytes": "1024"}, env={})
    assert config.api_token == "abcdefghijklmnopqrstuvwxyz"
    assert config.cors_origins == ("https://a.example", "http://b.example:8080")
    assert (config.max_upload_bytes, config.datastore_writable) == (1024, False)
    assert "abcdefghij" not in repr(config)
    from_env = SecurityConfig.from_conf({}, env={"CTENHANCE_API_TOKEN": "token-from-the-environment"})
    assert from_env.api_token == "token-from-the-environment"
    assert SecurityConfig.from_conf({}, env={}).api_token is None
    for bad in ({"cors_origins": "*"}, {"cors_origins": "https://a.example/path"}, {"datastore_writable": "yes"},
                {"max_upload_bytes": "-1"}, {"api_token_file": str(tmp_path / "missing")}):
        with pytest.raises(ValueError):
            SecurityConfig.from_conf(bad, env={})
    token_file.write_text("short")
    with pytest.raises(ValueError):
        SecurityConfig.from_conf({"api_token_file": str(token_file)}, env={})


def test_body_guard_sees_a_file_name_split_between_chunks():
    body, content_type = multipart({"file": ("../a.nii.gz", b"x")}, {"params": "{}"})
    guard = BodyGuard(content_type, SecurityConfig())
    with pytest.raises(Refusal) as refused:
        for i in range(0, len(body), 7):
            guard.feed(body[i:i + 7])
    assert refused.value.status == 400 and "file name" in refused.value.detail
    body, content_type = multipart({"file": ("scan.nii.gz", b"\1" * 300_000)}, {"params": "{}"})
    guard = BodyGuard(content_type, SecurityConfig(max_upload_bytes=len(body)))
    for i in range(0, len(body), 4096):
        guard.feed(body[i:i + 4096])
    assert (guard.parts, guard.received) == (2, len(body))
    with pytest.raises(Refusal) as too_big:
        guard.feed(b"\0")
    assert too_big.value.status == 413

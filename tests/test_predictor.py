"""The typed model manifest (kinds, old manifests, refusals) and the one predictor interface per kind."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctsr_models.data.xray_pairs import XraySetup
from ctsr_models.inference import (
    EnhanceOptions, InterpolationPredictor, ModelKind, ModelSpec, RegressionPredictor, WeightsError, enhance,
    interpolate_to_grid, predictor_for, read_manifest, resolve_model, through_plane_grid,
)
from ctsr_models.inference.models import spec_from_entry
from ctsr_models.inference.predictor import resampled_input
from ctsr_models.io import InputError, Volume
from ctsr_models.io.checksum import sha256
from ctsr_models.nets import build_net

SETUP = {"size": 32, "fov_mm": 320.0, "detector_px": 32, "detector_mm": None, "sid": 1800.0, "sod": 1500.0,
         "views": ["pa", "ll"]}


def _entry(**changes) -> dict:
    entry = {"name": "m", "net": "sr_resnet", "net_kwargs": {"features": 4, "num_blocks": 1}, "weights": "m.pt",
             "sha256": "0" * 64, "roi_size": [8, 16, 16]}
    return {**entry, **changes}


def _ramp(n: int = 6, shape: tuple[int, int] = (20, 18)) -> Volume:
    z = np.arange(n, dtype=np.float32)[:, None, None]
    array = np.broadcast_to(-500 + 40 * z, (n, *shape)).astype(np.float32).copy()
    return Volume(array, spacing=(0.8, 0.9, 5.0), origin=(0.0, 0.0, 0.0), slice_thickness=5.0)


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """A weights folder with an untrained SR network (residual head at zero) in an old-style manifest."""
    torch.manual_seed(0)
    torch.save(build_net("sr_resnet", features=4, num_blocks=1).state_dict(), tmp_path / "tiny.pt")
    entry = _entry(name="tiny", weights="tiny.pt", sha256=sha256(tmp_path / "tiny.pt"), roi_size=[16, 16, 16], extra={})
    manifest = {"default": "tiny", "models": [entry]}
    (tmp_path / "models.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("CTSR_WEIGHTS_DIR", str(tmp_path))
    return tmp_path


def test_kind_is_parsed_and_missing_kind_means_regression():
    diffusion = spec_from_entry(_entry(kind="diffusion", diffusion={"scheduler": "resshift", "steps": 2}))
    assert diffusion.kind is ModelKind.DIFFUSION and diffusion.diffusion.steps == 2
    with pytest.raises(WeightsError, match="diffusion settings are required for kind diffusion"):
        spec_from_entry(_entry(kind="diffusion"))
    old = spec_from_entry(_entry())
    assert old.kind is ModelKind.REGRESSION and old.roi_size == (8, 16, 16) and old.task == "sr"


@pytest.mark.parametrize("kind, message", [("gan", "unknown kind 'gan'; allowed: regression, diffusion"),
                                           ("interpolation", "built in"), (None, "unknown kind None")])
def test_unknown_or_built_in_kind_is_refused_with_the_allowed_values(kind, message):
    with pytest.raises(WeightsError, match=message):
        spec_from_entry(_entry(kind=kind))


def test_old_extra_setup_and_new_xray_setup_give_the_same_typed_setup():
    old = spec_from_entry(_entry(task="xray2ct", extra={"setup": SETUP}))
    new = spec_from_entry(_entry(task="xray2ct", xray_setup=SETUP))
    assert isinstance(old.xray_setup, XraySetup) and old == new
    assert old.xray_setup.views == ("pa", "ll") and old.xray_setup.spacing == 10.0
    assert spec_from_entry(old.to_entry()) == old  # the written entry reads back to the same spec


@pytest.mark.parametrize("changes, message", [
    ({"extra": {"setup": SETUP, "gamma": 2}}, "unknown keys: extra.gamma"),
    ({"colour": "red"}, "unknown keys: colour"),
    ({"xray_setup": {**SETUP, "sod": 9000.0}}, "bad xray_setup"),
    ({"sha256": ""}, "needs net, weights and sha256"),
])
def test_bad_entries_are_refused_with_one_line(changes, message):
    with pytest.raises(WeightsError, match=message):
        spec_from_entry(_entry(**changes))


def test_shipped_manifest_is_typed():
    specs, default = read_manifest()
    assert default in specs and specs[default].kind is ModelKind.REGRESSION
    assert all((s.kind is ModelKind.DIFFUSION) == (s.diffusion is not None) for s in specs.values())
    xray, _ = read_manifest(task="xray2ct")
    assert all(isinstance(s.xray_setup, XraySetup) for s in xray.values())
    assert xray["xray2ct_v1"].xray_setup.size == 64


def test_resolve_model_always_returns_a_typed_spec():
    spec = resolve_model("lanczos")
    assert spec == ModelSpec.interpolation("lanczos") and spec.kind is ModelKind.INTERPOLATION
    assert not spec.has_network and resolve_model("default").has_network
    with pytest.raises(ValueError, match="allowed: linear, cubic, lanczos"):
        ModelSpec.interpolation("nearest")


def test_interpolation_predictor_is_the_baseline():
    vol = _ramp()
    grid = through_plane_grid(vol, 1.0)
    predictor = predictor_for(resolve_model("cubic"), None)
    assert isinstance(predictor, InterpolationPredictor) and predictor.kind is ModelKind.INTERPOLATION
    np.testing.assert_array_equal(predictor.predict(vol, grid, 5.0), interpolate_to_grid(vol, grid, "cubic"))
    with pytest.raises(InputError, match="interpolation; it cannot run a network"):
        predictor_for(resolve_model("cubic"), None, net=torch.nn.Identity())


def test_regression_predictor_runs_the_network_it_is_given(tiny_model):
    vol = _ramp()
    grid = through_plane_grid(vol, 1.0)
    spec = resolve_model("default")
    shipped = predictor_for(spec, torch.device("cpu"))
    assert isinstance(shipped, RegressionPredictor) and shipped.roi_size == (16, 16, 16)
    base = shipped.predict(vol, grid, 5.0)
    np.testing.assert_allclose(base, resampled_input(vol, grid), atol=1e-2)  # untrained: the linear input
    np.testing.assert_array_equal(base, enhance(vol, EnhanceOptions(model="default", consistency=False)).array)

    class Plus100(torch.nn.Module):  # +100 HU in network units (HU / 1000)
        def forward(self, x: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
            assert ratios.shape == (x.shape[0], 2) and torch.allclose(ratios, torch.tensor([5.0, 5.0]))
            return x + 0.1

    given = predictor_for(spec, torch.device("cpu"), net=Plus100())
    np.testing.assert_allclose(given.predict(vol, grid, 5.0), resampled_input(vol, grid) + 100.0, atol=1e-2)
    out = enhance(vol, EnhanceOptions(model="default", consistency=False), net=Plus100())
    np.testing.assert_allclose(out.array, resampled_input(vol, grid) + 100.0, atol=1e-2)


def test_regression_forward_is_the_network_in_float32(tiny_model):
    net = build_net("sr_resnet", features=4, num_blocks=1)
    x, ratios = torch.rand(2, 1, 8, 8, 8), torch.full((2, 2), 3.0)
    out = RegressionPredictor("t", net, torch.device("cpu")).forward(x, ratios)
    assert out.dtype == torch.float32 and torch.equal(out, net(x, ratios))

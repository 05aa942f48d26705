"""The adaptation guard (``ctsr_models.training.adapt``): held-out pairs AND data consistency must agree.

Real networks on a real crop: the held-out aorta CT (1.5 mm, never trained on), 64 x 64 in-plane, simulated
as 5 mm rect slabs. A network that is worse at reproducing the acquired slabs is built for real by
wrapping the shipped network and shifting or blurring its output along z (the through-plane axis, the one
the in-plane held-out pairs cannot see at inference).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import shared
from ctsr_models.inference import EnhanceOptions, load_network, resolve_model
from ctsr_models.io import Volume, read_volume
from ctsr_models.physics import simulate_thick_slices
from ctsr_models.training.adapt import (
    CONSISTENCY_TOLERANCE, AdaptOptions, ConsistencyProbe, adapt_network, enhance_adapted, guard_verdict,
)

AORTA = "ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz"
THICK_MM = 5.0
CPU = torch.device("cpu")
# the failure: held-out in-plane PSNR rose 45.25 -> 45.9 dB while the through-plane result got worse
FOOLED = (45.25, 45.90)


class AlongZ(nn.Module):
    """The wrapped network's output shifted by ``shift`` slices along z, or averaged over ``blur`` slices."""

    def __init__(self, net: nn.Module, shift: int = 0, blur: int = 1) -> None:
        super().__init__()
        self.net, self.shift, self.blur = net, shift, blur

    def forward(self, x: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        out = self.net(x, ratios)  # (B, 1, D=z, H, W)
        if self.shift:
            out = torch.roll(out, self.shift, dims=2)
        if self.blur > 1:
            out = nn.functional.avg_pool3d(out, (self.blur, 1, 1), stride=1, padding=(self.blur // 2, 0, 0),
                                           count_include_pad=False)
        return out


@pytest.fixture(scope="module")
def thick() -> Volume:
    vol = read_volume(shared(AORTA))
    z0, y0, x0 = 4, 40, 28
    truth = vol.replace(array=vol.array[z0:z0 + 150, y0:y0 + 64, x0:x0 + 64].astype(np.float32).copy(),
                        origin=tuple(vol.index_to_physical([x0, y0, z0])))
    return simulate_thick_slices(truth, THICK_MM, THICK_MM, "rect")


@pytest.fixture(scope="module")
def probe(thick: Volume) -> ConsistencyProbe:
    return ConsistencyProbe.of_scan(thick, "default", 1.5, THICK_MM, "rect", CPU)


@pytest.fixture(scope="module")
def shipped() -> nn.Module:
    return load_network(resolve_model("default"), CPU)


def test_probe_is_bounded_and_measures_the_raw_output(thick: Volume, probe: ConsistencyProbe,
                                                      shipped: nn.Module) -> None:
    assert probe.volume.shape == (16, 64, 64) and thick.shape[0] == 45  # a middle band of 16 of the 45 slabs
    assert probe.options.consistency is False  # the raw output, before the projection
    first = probe.rmse(shipped)
    # measured with sr_unet_small_v3: 21.0 HU (z-shifted by 2 slices: 149.0, box of 5 slices: 41.1, of 3: 24.0)
    assert 3.0 < first < 40.0, first
    assert abs(probe.rmse(shipped) - first) < 0.01  # deterministic: the 1 % tolerance is above its noise


def test_guard_refuses_an_adaptation_that_worsens_data_consistency(probe: ConsistencyProbe,
                                                                   shipped: nn.Module) -> None:
    pretrained = probe.rmse(shipped)
    for worse in (AlongZ(shipped, shift=2), AlongZ(shipped, blur=5)):
        adapted = probe.rmse(worse)
        assert adapted > 1.3 * pretrained, (adapted, pretrained)  # 3 mm shift / 7.5 mm box: far worse
        verdict = guard_verdict(*FOOLED, pretrained, adapted)
        assert verdict.adapted is False
        assert "reproduces the acquired slabs worse" in verdict.reason
        assert f"{pretrained:.2f} -> {adapted:.2f} HU" in verdict.reason and "45.25 -> 45.90 dB" in verdict.reason
        assert verdict.consistency_limit_hu == pytest.approx(pretrained * (1 + CONSISTENCY_TOLERANCE))


def test_guard_accepts_an_adaptation_that_improves_both(probe: ConsistencyProbe, shipped: nn.Module) -> None:
    # the "pretrained" network reproduces the slabs worse (blurred along z), the "adapted" one is the shipped one
    before, after = probe.rmse(AlongZ(shipped, blur=3)), probe.rmse(shipped)
    assert after < before, (after, before)
    verdict = guard_verdict(40.0, 40.3, before, after)
    assert verdict.adapted is True and verdict.reason.startswith("accepted")
    summary = verdict.to_dict()
    assert summary["consistency_rmse_pretrained_hu"] == round(before, 3)
    assert summary["consistency_rmse_adapted_hu"] == round(after, 3)


def test_guard_rules_at_their_edges() -> None:
    assert guard_verdict(40.0, 40.0, 10.0, 5.0).adapted is False  # held-out pairs must improve
    assert guard_verdict(40.0, 40.2, 10.0, 10.1).adapted is True  # within 1 %
    assert guard_verdict(40.0, 40.2, 10.0, 10.11).adapted is False
    assert guard_verdict(40.0, 40.2, 10.0, math.nan).adapted is False  # an unmeasurable adapted output
    no_body = guard_verdict(40.0, 40.2, math.nan, math.nan)
    assert no_body.adapted is True and "no body voxels" in no_body.reason
    assert guard_verdict(40.0, 40.2, 10.0, 10.5, tolerance=0.1).adapted is True


def test_adaptation_reports_both_signals_in_result_and_findings(thick: Volume) -> None:
    options = AdaptOptions(steps=4, seconds=None, val_every=2, n_val=4, patience=0, lr=1e-3, min_gain_db=-100.0)
    enhance_options = EnhanceOptions(target_spacing=1.5, input_thickness=THICK_MM, device="cpu")
    out, details = enhance_adapted(thick, enhance_options, options)
    summary = details["adaptation"]
    pre, post = summary["consistency_rmse_pretrained_hu"], summary["consistency_rmse_adapted_hu"]
    assert pre is not None and post is not None and 0 < pre < 40 and 0 < post < 40
    assert summary["adapted"] is (post <= summary["consistency_limit_hu"])  # held-out passes (min gain -100 dB)
    assert f"{pre:.2f} -> {post:.2f} HU" in summary["message"] and "held-out in-plane PSNR" in summary["message"]
    assert any(f"{pre:.2f} -> {post:.2f} HU" in f for f in out.findings)
    assert summary["guard"].startswith("accepted" if summary["adapted"] else "refused")


def test_time_budget_includes_the_consistency_probe(thick: Volume) -> None:
    options = AdaptOptions(steps=100_000, seconds=5.0, val_every=5, n_val=4, patience=0)
    result = adapt_network(thick, resolve_model("default"), 1.5, THICK_MM, options, CPU)
    probe = result.settings["consistency_probe"]
    assert probe["shape_zyx"] == [16, 64, 64] and probe["seconds_each"] > 0
    assert result.stopped_by == "time" and result.steps < 100_000
    assert result.seconds >= probe["seconds_each"]  # the probe's time is inside the adaptation's (no wall bound)
    assert result.summary()["consistency_rmse_pretrained_hu"] == pytest.approx(21.0, abs=0.5)  # as measured above

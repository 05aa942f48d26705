"""The 3D CT autoencoder: shapes, the latent scale in the state dict, determinism, and its training task."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared
from ctsr_models.inference.models import ModelKind, load_network, read_manifest, ship_model
from ctsr_models.nets import CTAutoencoder, build_net
from ctsr_models.training import load_checkpoint, run
from ctsr_models.training.tasks.autoencoder import kl_divergence
from test_training_resume import _assert_same_state

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "train" / "configs" / "autoencoder_smoke.yaml"
CROP = "ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz"


def _net(**kwargs) -> CTAutoencoder:
    torch.manual_seed(0)
    return build_net("autoencoder_kl", **{"channels": (8, 16), "norm_num_groups": 4, **kwargs})


@pytest.mark.parametrize(("channels", "factor"), [((8,), 1), ((8, 16), 2), ((8, 8, 16), 4)])
def test_shapes_of_latent_and_reconstruction_follow_the_factor(channels, factor):
    net = _net(channels=channels, latent_channels=3)
    x = torch.randn(2, 1, 8, 16, 24)
    recon, mu, sigma = net(x)
    assert net.factor == factor
    assert recon.shape == x.shape
    assert mu.shape == sigma.shape == (2, 3, 8 // factor, 16 // factor, 24 // factor)
    assert bool((sigma > 0).all())
    net.eval()
    z = net.encode(x)
    assert z.shape == mu.shape
    assert net.decode(z).shape == x.shape


def test_encode_is_the_scaled_posterior_mean_and_deterministic():
    net = _net().eval()
    net.set_latent_scale(0.25)  # std 0.25 -> scale 4
    x = torch.randn(1, 1, 8, 16, 16)
    mu, _ = net.posterior(x)
    z1, z2 = net.encode(x), net.encode(x)
    assert torch.equal(z1, z2)
    assert torch.allclose(z1, 4.0 * mu)
    # decode divides by the scale: decoding a scaled latent equals decoding the raw mean
    assert torch.allclose(net.decode(z1), net.net.decode(mu), atol=1e-6)


def test_latent_scale_is_saved_and_loaded_with_the_state_dict():
    net = _net()
    net.set_latent_scale(0.5)
    state = net.state_dict()
    assert float(state["latent_scale"]) == 2.0
    other = _net()
    assert float(other.latent_scale) == 1.0
    other.load_state_dict(state)
    assert float(other.latent_scale) == 2.0


def test_forward_leaves_the_scale_and_the_running_estimate_follows_the_latent_variance():
    net = _net(latent_momentum=0.5)
    x = torch.randn(2, 1, 8, 16, 16)
    _, mu, _ = net(x)  # training mode: forward alone changes nothing
    assert float(net.latent_scale) == 1.0
    net.update_latent_scale(mu, momentum=1.0)  # the estimate is this batch's variance
    assert float(net.latent_scale) == pytest.approx(1.0 / float(mu.var().sqrt()), rel=1e-5)
    v_old, v_new = float(mu.var()), 4.0 * float(mu.var())
    net.update_latent_scale(2.0 * mu)  # default momentum 0.5: v = 0.5 v_old + 0.5 v_new
    assert float(net.latent_scale) == pytest.approx((0.5 * v_old + 0.5 * v_new) ** -0.5, rel=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channels": (10, 16)}, "norm_num_groups"),
    ({"latent_channels": 0}, "latent_channels"),
    ({"latent_momentum": 1.5}, "latent_momentum"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _net(**kwargs)


def test_inputs_not_divisible_by_the_factor_are_refused():
    net = _net()
    with pytest.raises(ValueError, match="divisible by 2"):
        net.encode(torch.zeros(1, 1, 7, 16, 16))
    with pytest.raises(ValueError, match="latent_scale|std"):
        net.set_latent_scale(0.0)


def test_kl_divergence_is_zero_for_the_prior_and_matches_the_closed_form():
    zeros, ones = torch.zeros(2, 3, 2, 2, 2), torch.ones(2, 3, 2, 2, 2)
    assert float(kl_divergence(zeros, ones)) == 0.0
    # per element 0.5 * (mu^2 + s^2 - log s^2 - 1) with mu = 1, s = 2: 0.5 * (1 + 4 - log 4 - 1); 24 elements
    expected = 24 * 0.5 * (4.0 - np.log(4.0))
    assert float(kl_divergence(ones, 2 * ones)) == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The smoke run (6 steps) on real CT crops and its cache."""
    shared(CROP)
    root = tmp_path_factory.mktemp("autoencoder")
    cache = root / "cache"
    summary = run("autoencoder", SMOKE, out=root / "whole", overrides=[f"data.cache_dir={cache}"])
    return {"root": root, "cache": cache, "summary": summary}


def test_smoke_training_runs_validates_and_ships(trained, tmp_path):
    summary = trained["summary"]
    assert summary["completed"] and summary["step"] == 6
    val = summary["val"]
    assert set(val) == {"psnr", "ssim", "mae_hu_body", "latent_std"}
    assert 5 < val["psnr"] < 60 and -1 <= val["ssim"] <= 1 and val["mae_hu_body"] > 0 and val["latent_std"] > 0
    state = load_checkpoint(trained["root"] / "whole" / "checkpoints" / "last.pt")
    # the running estimate moved the scale away from its initial 1.0, in the raw and in the EMA weights
    assert float(state["model"]["latent_scale"]) != 1.0 and float(state["ema"]["module.latent_scale"]) != 1.0
    spec = ship_model(trained["root"] / "whole" / "checkpoints" / "last.pt", "tiny_ae", description="smoke run",
                      card="", roi_size=(16, 32, 32), folder=tmp_path, task="autoencoder",
                      kind=ModelKind.REGRESSION, default=False)
    specs, default = read_manifest(tmp_path, task="autoencoder")
    assert default is None and specs["tiny_ae"] == spec
    net = load_network(spec, torch.device("cpu"), tmp_path)
    assert float(net.latent_scale) == float(state["ema"]["module.latent_scale"])


def test_stop_and_resume_equals_the_uninterrupted_run(trained):
    root = trained["root"]
    part = run("autoencoder", SMOKE, out=root / "part", overrides=[f"data.cache_dir={trained['cache']}"], stop_at=3)
    assert part["step"] == 3 and part["completed"] is False
    resumed = run("autoencoder", None, resume=root / "part" / "checkpoints" / "last.pt")
    assert resumed["step"] == 6 and resumed["completed"] is True
    whole, again = load_checkpoint(root / "whole/checkpoints/last.pt"), load_checkpoint(root / "part/checkpoints/last.pt")
    _assert_same_state(whole, again)  # model and EMA state dicts include latent_scale
    assert resumed["val"] == trained["summary"]["val"]


def test_shipped_autoencoder_loads_checked_and_reconstructs_held_out_ct():
    from ctsr_models.data import hu_to_net, net_to_hu
    from ctsr_models.inference.models import resolve_model
    from ctsr_models.io import read_volume
    from ctsr_models.metrics import psnr

    spec = resolve_model("autoencoder_kl_v1", task="autoencoder")
    net = load_network(spec, torch.device("cpu"))  # SHA-256 checked
    assert isinstance(net, CTAutoencoder) and net.factor == 2 and 1.0 < float(net.latent_scale) < 3.0
    hu = read_volume(shared("ct/tcia_cptac_gbm_head/head_ct_1.25mm.nii.gz")).array[80:96, 200:296, 180:276]
    with torch.no_grad():
        z = net.encode(torch.from_numpy(hu_to_net(hu.astype(np.float32)))[None, None])
        recon = net_to_hu(net.decode(z)[0, 0].numpy())
    assert z.shape == (1, 4, 8, 48, 48)
    assert 0.5 < float(z.std()) < 2.0  # 0.70 on this head crop; 0.98 on training patches (card)
    assert psnr(recon, hu) > 33.0  # 36.5 dB measured on this 16 x 96 x 96 crop (32.06 dB on the card's larger one)


# ------------------------------------------------------------------------------ residual shortcut
def _numpy_block_projection(x: np.ndarray, rows: int) -> np.ndarray:
    """Projection of every 2x2x2 block on the first ``rows`` 3D Haar vectors, written independently with numpy:
    the block mean, then the differences along x, y and z (each vector +-1/sqrt(8))."""
    b, c, z, y, x_ = x.shape
    blocks = x.reshape(b, c, z // 2, 2, y // 2, 2, x_ // 2, 2)
    signs = [np.ones((2, 2, 2)),
             np.broadcast_to(np.array([1, -1])[None, None, :], (2, 2, 2)),
             np.broadcast_to(np.array([1, -1])[None, :, None], (2, 2, 2)),
             np.broadcast_to(np.array([1, -1])[:, None, None], (2, 2, 2))][:rows]
    out = np.zeros_like(blocks)
    for s in signs:
        v = s / np.sqrt(8.0)
        coeff = np.einsum("bcziyjxk,ijk->bczyx", blocks, v)
        out += np.einsum("bczyx,ijk->bcziyjxk", coeff, v)
    return out.reshape(x.shape)


@pytest.mark.parametrize("rows", [1, 4])
def test_untrained_shortcut_reconstructs_the_haar_projection(rows):
    torch.manual_seed(0)
    ae = CTAutoencoder(channels=(8, 16), latent_channels=rows, norm_num_groups=4, shortcut=True).eval()
    x = torch.randn(2, 1, 8, 12, 16)
    recon = ae(x, sample=False)[0].detach().double().numpy()
    np.testing.assert_allclose(recon, _numpy_block_projection(x.double().numpy(), rows), atol=1e-5)
    # the latent is the block code itself: channel 0 = block mean * sqrt(8)
    mean = x.reshape(2, 1, 4, 2, 6, 2, 8, 2).mean(dim=(3, 5, 7))
    torch.testing.assert_close(ae.encode(x)[:, :1], mean * np.sqrt(8.0), atol=1e-5, rtol=0)


def test_shortcut_with_all_eight_channels_is_lossless_and_more_are_refused():
    ae = CTAutoencoder(channels=(8, 16), latent_channels=8, norm_num_groups=4, shortcut=True).eval()
    x = torch.randn(1, 1, 4, 8, 8)
    torch.testing.assert_close(ae.decode(ae.encode(x)), x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at most"):
        CTAutoencoder(channels=(8, 16), latent_channels=9, norm_num_groups=4, shortcut=True)


def test_shortcut_basis_is_orthonormal_and_generalises_to_factor_four():
    from ctsr_models.nets.autoencoder import block_basis

    for factor, rows in ((2, 8), (4, 10)):
        b = block_basis(factor, rows).astype(np.float64)
        np.testing.assert_allclose(b @ b.T, np.eye(rows), atol=1e-6)
        np.testing.assert_allclose(b[0], np.full(factor ** 3, factor ** -1.5), atol=1e-7)

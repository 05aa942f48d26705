"""The 3D diffusion denoiser: registry, shapes, reference at initialisation, timestep conditioning, size."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ctsr_models.diffusion import build_scheduler, sample
from ctsr_models.nets import NETS, build_net
from ctsr_models.nets.sr_diffusion import SRDiffusionUNet

SMALL = {"channels": (8, 16), "norm_num_groups": 4, "num_res_blocks": 1}


def trained_looking(net: SRDiffusionUNet) -> SRDiffusionUNet:
    """Give MONAI's zero-initialised convolutions (output, second conv of each res block) random weights."""
    torch.manual_seed(1)
    zeroed = [m for m in net.modules() if isinstance(m, nn.Conv3d) and not m.weight.any()]
    assert len(zeroed) >= 2
    for conv in zeroed:
        nn.init.normal_(conv.weight, std=0.05)
    return net


@pytest.mark.parametrize("cond_channels", [1, 2])
@pytest.mark.parametrize("shape", [(8, 8, 8), (4, 12, 6)])
def test_untrained_network_returns_the_reference_channel(cond_channels, shape):
    torch.manual_seed(0)
    net = build_net("sr_diffusion_unet", cond_channels=cond_channels, **SMALL)
    x, cond = torch.randn(2, 1, *shape), torch.randn(2, cond_channels, *shape)
    out = net(x, torch.tensor([0, 9]), cond)
    assert out.shape == (2, 1, *shape)
    assert torch.equal(out, cond[:, -1:])


def test_output_depends_on_timestep_noisy_input_and_conditioning():
    torch.manual_seed(0)
    net = trained_looking(SRDiffusionUNet(cond_channels=2, **SMALL)).eval()
    x, cond = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        base = net(x, torch.tensor([3]), cond)
        other_t = net(x, torch.tensor([12]), cond)
        other_x = net(x + 0.5, torch.tensor([3]), cond)
        cond_b = cond.clone()
        cond_b[:, 0] += 0.5
        other_cond = net(x, torch.tensor([3]), cond_b)
    for other in (other_t, other_x, other_cond):
        assert (other - base).abs().mean() > 1e-3


def test_gradients_reach_the_body():
    net = trained_looking(SRDiffusionUNet(cond_channels=1, **SMALL))
    x, cond = torch.randn(2, 1, 8, 8, 8), torch.randn(2, 1, 8, 8, 8)
    net(x, torch.tensor([1, 5]), cond).square().mean().backward()
    assert net.unet.conv_in.conv.weight.grad.abs().sum() > 0
    assert net.unet.time_embed[0].weight.grad.abs().sum() > 0


def test_default_network_is_small_enough_for_cpu_and_git():
    assert "sr_diffusion_unet" in NETS
    n = sum(p.numel() for p in SRDiffusionUNet().parameters())
    assert 1_000_000 < n < 2_500_000  # measured 1,753,041 (6.7 MB float32); the limit in git is 25 MB
    assert n * 4 <= 25 * 2**20


@pytest.mark.parametrize("kwargs, message", [
    ({"cond_channels": 0}, "cond_channels must be an int >= 1"),
    ({"channels": (8,)}, "at least 2 levels"),
    ({"num_res_blocks": 0}, "num_res_blocks must be >= 1"),
    ({"channels": (6, 12), "norm_num_groups": 4}, "multiple of norm_num_groups"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SRDiffusionUNet(**kwargs)


def test_bad_input_shapes_raise():
    net = SRDiffusionUNet(cond_channels=2, **SMALL)
    x, cond, t = torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, D, H, W\)"):
        net(torch.zeros(1, 2, 8, 8, 8), t, cond)
    with pytest.raises(ValueError, match=r"cond must have shape \(B, 2, D, H, W\)"):
        net(x, t, cond[:, :1])
    with pytest.raises(ValueError, match=r"timesteps must have shape \(1,\)"):
        net(x, torch.tensor([1, 2]), cond)
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.zeros(1, 1, 7, 8, 8), t, torch.zeros(1, 2, 7, 8, 8))


def test_resshift_loop_with_the_untrained_network_returns_the_reference():
    torch.manual_seed(0)
    net = SRDiffusionUNet(cond_channels=2, **SMALL).eval()
    cond = torch.randn(1, 2, 8, 8, 8)
    reference = cond[:, -1:]
    out = sample(net, build_scheduler("resshift"), reference, cond, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, reference)  # x0_pred is the reference at every step; the last step returns it

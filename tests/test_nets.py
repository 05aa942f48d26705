"""SR networks: registry, shapes, identity at initialisation, conditioning, argument checks."""
from __future__ import annotations

import math

import pytest
import torch

from ctsr_models.nets import NETS, SRResNet, SRUNet, build_net, register_net, sr_condition

SMALL = {"sr_unet": {"features": (4, 8, 16), "num_res_units": 1}, "sr_resnet": {"features": 4, "num_blocks": 1}}


def test_registry_lists_the_sr_networks_and_refuses_unknown_names():
    assert {"sr_unet", "sr_resnet"} <= set(NETS)
    with pytest.raises(ValueError, match="registered: .*sr_resnet.*sr_unet"):
        build_net("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_net("sr_unet")(SRUNet)
    with pytest.raises(ValueError, match="bad arguments"):
        build_net("sr_resnet", nonsense=1)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("shape", [(16, 16, 16), (13, 10, 17), (8, 12, 4)])
def test_untrained_network_returns_its_input_exactly(name, shape):
    torch.manual_seed(0)
    net = build_net(name, **SMALL[name])
    x = torch.randn(2, 1, *shape)
    out = net(x, torch.tensor([[3.0, 3.0], [5.0, 4.0]]))
    assert out.shape == x.shape
    assert torch.equal(out, x)  # zero-initialised residual head: the input (linear interpolation) comes back


@pytest.mark.parametrize("name", sorted(SMALL))
def test_one_step_trains_the_body_and_the_output_depends_on_the_ratios(name):
    torch.manual_seed(0)
    net = build_net(name, **SMALL[name])
    x, target = torch.randn(1, 1, 12, 12, 12), torch.randn(1, 1, 12, 12, 12)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # step 1 moves the zero head; step 2 sends gradients into the body
        opt.zero_grad()
        (net(x, torch.tensor([[4.0, 4.0]])) - target).square().mean().backward()
        opt.step()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "head" not in n)
    with torch.no_grad():
        a = net(x, torch.tensor([[2.0, 2.0]]))
        b = net(x, torch.tensor([[6.0, 6.0]]))
    assert not torch.allclose(a, b)


def test_condition_channels_hold_log_ratios():
    cond = sr_condition(torch.tensor([[2.0, 4.0]]), (3, 2, 2))
    assert cond.shape == (1, 2, 3, 2, 2)
    assert torch.allclose(cond[0, 0], torch.full((3, 2, 2), math.log(2.0)))
    assert torch.allclose(cond[0, 1], torch.full((3, 2, 2), math.log(4.0)))


@pytest.mark.parametrize("factory, kwargs, message", [
    (SRUNet, {"features": (8,)}, "at least 2"),
    (SRUNet, {"act": "tanh"}, "act must be one of"),
    (SRUNet, {"norm": "layer"}, "norm must be one of"),
    (SRUNet, {"num_res_units": -1}, "num_res_units"),
    (SRResNet, {"features": 0}, ">= 1"),
])
def test_bad_arguments_raise_with_the_allowed_values(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_bad_input_shapes_raise():
    net = SRResNet(features=2, num_blocks=1)
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        net(torch.zeros(1, 2, 4, 4, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="ratios must have shape"):
        net(torch.zeros(1, 1, 4, 4, 4), torch.ones(1, 3))
    with pytest.raises(ValueError, match="rows for a batch"):
        net(torch.zeros(2, 1, 4, 4, 4), torch.ones(1, 2))

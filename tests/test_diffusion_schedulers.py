"""Diffusion schedulers: the shared contract, ResShift against its equations, MONAI references, golden loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler

from ctsr_models.diffusion import SCHEDULERS, ResShiftScheduler, build_scheduler, sample
from ctsr_models.diffusion.resshift import MAX_STEPS

SHAPE = (2, 1, 6, 5, 4)
CASES = {  # every registered scheduler, plus the other DDIM parameterisations and a stochastic DDIM
    "resshift": ("resshift", {}),
    "ddim": ("ddim", {}),
    "ddim_sample": ("ddim", {"prediction_type": "sample"}),
    "ddim_v": ("ddim", {"prediction_type": "v_prediction", "eta": 1.0}),
    "rflow": ("rflow", {}),
}
STOCHASTIC = {"resshift", "ddim_v"}


def make(case: str):
    name, kwargs = CASES[case]
    return build_scheduler(name, **kwargs)


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(SHAPE, generator=g)
    y = x0 + 0.3 * torch.randn(SHAPE, generator=g)
    noise = torch.randn(SHAPE, generator=g)
    return x0, y, noise


def net_predicting(scheduler, x0_fn):
    """A network whose prediction of x0 is ``x0_fn(x_t, t, cond)``, output in the scheduler's parameterisation."""
    def net_fn(x_in, t, cond):
        t0 = int(t[0])
        x = x_in * (1 + scheduler.kappa**2 * float(scheduler.etas[t0])) ** 0.5 if scheduler.name == "resshift" else x_in
        x0 = x0_fn(x, t0 / scheduler.num_train_timesteps, cond)
        if scheduler.prediction_type == "sample":
            return x0
        if scheduler.prediction_type == "v_prediction" and scheduler.name == "rflow":
            return (x0 - x) / (t0 / scheduler.num_train_timesteps)
        abar = float(scheduler.alphas_cumprod[t0])
        eps = (x - abar**0.5 * x0) / (1 - abar) ** 0.5
        return eps if scheduler.prediction_type == "epsilon" else abar**0.5 * eps - (1 - abar) ** 0.5 * x0
    return net_fn


def perfect_net(scheduler, x0: torch.Tensor):
    """A network that knows x0."""
    return net_predicting(scheduler, lambda x, t, cond: x0)


def test_every_registered_scheduler_is_in_the_contract_and_unknown_names_raise():
    assert set(SCHEDULERS) == {name for name, _ in CASES.values()} == {"resshift", "ddim", "rflow"}
    with pytest.raises(ValueError, match="registered: ddim, resshift, rflow"):
        build_scheduler("ddpm")
    with pytest.raises(ValueError, match="bad arguments for scheduler 'rflow'"):
        build_scheduler("rflow", kappa=1.0)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("steps", [1, 2, 4, MAX_STEPS])
def test_timesteps_count_order_dtype_and_range(case, steps):
    s = make(case)
    s.set_timesteps(steps)
    ts = s.timesteps
    assert ts.dtype == torch.long and ts.shape == (steps,)
    assert bool((ts[1:] < ts[:-1]).all())
    assert 0 <= int(ts[-1]) and int(ts[0]) <= s.num_train_timesteps
    with pytest.raises(ValueError, match="num_inference_steps must be an int >= 1 and <= "):
        s.set_timesteps(s.num_train_timesteps + 1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_timesteps_are_seeded_long_integers_in_range(case):
    s = make(case)
    x0 = torch.zeros(4000, 1, 1, 1, 1)
    t = s.sample_timesteps(x0, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (4000,)
    assert 0 <= int(t.min()) and int(t.max()) < s.num_train_timesteps
    assert torch.equal(t, s.sample_timesteps(x0, torch.Generator().manual_seed(0)))
    assert t.float().mean().item() == pytest.approx((s.num_train_timesteps - 1) / 2, rel=0.05)


def test_rflow_logit_normal_timesteps_have_the_stated_median():
    s = build_scheduler("rflow", sample_method="logit-normal", loc=1.0, scale=0.5)
    t = s.sample_timesteps(torch.zeros(20_000, 1, 1, 1, 1), torch.Generator().manual_seed(0))
    assert t.float().median().item() == pytest.approx(1000 / (1 + math.exp(-1.0)), abs=5)  # T sigmoid(loc)
    assert t.float().std().item() < 150  # concentrated, unlike uniform (289)


@pytest.mark.parametrize("case", sorted(CASES))
def test_add_noise_shapes_and_limits(case):
    s = make(case)
    x0, y, noise = data()
    s.set_timesteps(4)
    t_max = int(s.timesteps[0])
    t = torch.tensor([t_max, 0])
    xt = s.add_noise(x0, noise, t, y)
    assert xt.shape == SHAPE and xt.dtype == x0.dtype
    # the least noisy end is within 5 % of a standard deviation of the clean sample
    assert (xt[1] - x0[1]).square().mean().sqrt() < 0.05
    # the noisiest end is the prior: same draw from the same seed gives (almost) the same tensor
    prior = s.prior_sample(y, torch.Generator().manual_seed(3))
    noise_again = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    at_max = s.add_noise(x0, noise_again, torch.tensor([t_max, t_max]), y)
    assert (at_max - prior).abs().mean() < 0.02 * prior.std()


@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_x0_inverts_the_training_target(case):
    s = make(case)
    x0, y, noise = data(1)
    s.set_timesteps(4)
    for t in (torch.tensor([int(s.timesteps[1]), int(s.timesteps[-1])]), int(s.timesteps[2])):
        tt = t if isinstance(t, torch.Tensor) else torch.full((SHAPE[0],), t)
        xt = s.add_noise(x0, noise, tt, y)
        back = s.predict_x0(s.training_target(x0, noise, tt, y), t, xt)
        assert torch.allclose(back, x0, atol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_shape_and_seed_determinism(case):
    s = make(case)
    x0, y, noise = data(2)
    s.set_timesteps(4)
    t = int(s.timesteps[0])
    xt = s.add_noise(x0, noise, torch.full((SHAPE[0],), t), y)
    a = s.step(x0, t, xt, torch.Generator().manual_seed(7))
    b = s.step(x0, t, xt, torch.Generator().manual_seed(7))
    c = s.step(x0, t, xt, torch.Generator().manual_seed(8))
    assert a.shape == SHAPE and torch.equal(a, b)
    assert (not torch.equal(a, c)) == (case in STOCHASTIC)
    with pytest.raises(ValueError, match="not one of the inference timesteps"):
        s.step(x0, t - 1, xt)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("steps", [1, 3, 4])
def test_a_perfect_predictor_returns_the_clean_sample(case, steps):
    s = make(case)
    x0, y, _ = (v.double() for v in data(3))  # float64: eps at t = 999 is divided by sqrt(abar) = 0.006
    out = sample(perfect_net(s, x0), s, y, y, steps, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64
    assert torch.allclose(out, x0, atol=1e-9)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_constraint_holds_on_the_returned_sample(case):
    s = make(case)
    x0, y, _ = data(4)
    seen = []

    def constrain(x0_pred, t):
        seen.append(t)
        return x0_pred - x0_pred.mean() + 0.25  # a projection onto volumes of mean 0.25

    out = sample(lambda x, t, c: 0.5 * torch.tanh(x) + 0.1 * c, s, y, y, 3, torch.Generator().manual_seed(0), constrain)
    assert seen == s.timesteps.tolist()
    assert out.mean().item() == pytest.approx(0.25, abs=1e-5)


@pytest.mark.parametrize("name, kwargs, message", [
    ("resshift", {"num_train_timesteps": MAX_STEPS + 1}, r"num_train_timesteps must be an int >= 2 and <= 15"),
    ("resshift", {"kappa": 0.0}, "kappa must be > 0"),
    ("resshift", {"eta_1": 0.5, "eta_T": 0.4}, "0 < eta_1 < eta_T < 1"),
    ("resshift", {"power": -1.0}, "power must be > 0"),
    ("ddim", {"prediction_type": "x0"}, "prediction_type must be one of epsilon, sample, v_prediction"),
    ("ddim", {"schedule": "quadratic"}, "schedule must be one of linear_beta, scaled_linear_beta"),
    ("ddim", {"eta": 2.0}, r"eta must be in \[0, 1\]"),
    ("ddim", {"num_train_timesteps": 0}, "num_train_timesteps must be an int >= 1"),
    ("rflow", {"sample_method": "normal"}, "sample_method must be one of uniform, logit-normal"),
    ("rflow", {"scale": 0.0}, "scale must be > 0"),
])
def test_bad_arguments_raise_with_the_allowed_values(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_scheduler(name, **kwargs)


def test_misuse_raises_concisely():
    s = build_scheduler("resshift")
    x0, y, noise = data()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x0, 14, y)
    with pytest.raises(ValueError, match="needs y"):
        s.add_noise(x0, noise, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"timesteps must have shape \(2,\)"):
        s.add_noise(x0, noise, torch.tensor([1, 2, 3]), y)
    with pytest.raises(ValueError, match="must match y"):
        sample(lambda x, t, c: x, s, y, y[:1], 2)


# ----- ResShift against the paper's equations -----

@pytest.mark.parametrize("steps, kappa, eta_1, eta_t, power", [(15, 2.0, None, 0.99, 0.3), (4, 1.0, 0.01, 0.9, 1.0)])
def test_resshift_eta_schedule_matches_the_paper(steps, kappa, eta_1, eta_t, power):
    s = ResShiftScheduler(steps, kappa=kappa, eta_1=eta_1, eta_T=eta_t, power=power)
    e1 = min((0.04 / kappa) ** 2, 0.001) if eta_1 is None else eta_1
    t = np.arange(1, steps + 1)
    b0 = np.exp(np.log(eta_t / e1) / (2 * (steps - 1)))
    expected = (np.sqrt(e1) * b0 ** (((t - 1) / (steps - 1)) ** power * (steps - 1))) ** 2
    etas = s.etas.numpy()
    np.testing.assert_allclose(etas, expected, rtol=1e-12)
    assert etas[0] == pytest.approx(e1, rel=1e-12) and etas[-1] == pytest.approx(eta_t, rel=1e-12)
    assert np.all(np.diff(etas) > 0)


def test_resshift_add_noise_step_and_prior_are_the_paper_formulas():
    s = ResShiftScheduler(kappa=1.5)
    x0, y, noise = data(5)
    etas = s.etas.numpy()
    xt = s.add_noise(x0, noise, torch.tensor([3, 11]), y)
    for b, i in enumerate((3, 11)):
        expected = x0[b] + etas[i] * (y[b] - x0[b]) + 1.5 * math.sqrt(etas[i]) * noise[b]
        assert torch.allclose(xt[b], expected, atol=1e-6)
    s.set_timesteps(MAX_STEPS)
    draw = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    prev = s.step(x0, 7, xt, torch.Generator().manual_seed(9))
    alpha = etas[7] - etas[6]  # paper: alpha_t = eta_t - eta_{t-1}
    mean = etas[6] / etas[7] * xt + alpha / etas[7] * x0
    assert torch.allclose(prev, mean + 1.5 * math.sqrt(etas[6] / etas[7] * alpha) * draw, atol=1e-6)
    prior = s.prior_sample(y, torch.Generator().manual_seed(9))
    assert torch.allclose(prior, y + 1.5 * math.sqrt(etas[-1]) * draw, atol=1e-6)
    scaled = s.scale_model_input(xt, torch.tensor([3, 11]))
    assert torch.allclose(scaled[1], xt[1] / math.sqrt(1 + 1.5**2 * etas[11]))


@pytest.mark.parametrize("steps", [MAX_STEPS, 4])
def test_resshift_posterior_steps_reproduce_the_closed_form_marginals(steps):
    """Start at q(x_T | x0, y), step with the true x0: every x_t must have mean x0 + eta_t e0, var kappa^2 eta_t."""
    s = ResShiftScheduler(kappa=1.0)
    n = 200_000
    x0, y = torch.full((1, 1, n), 0.3, dtype=torch.float64), torch.full((1, 1, n), -0.7, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    s.set_timesteps(steps)
    ts = s.timesteps.tolist()
    x = s.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), torch.tensor([ts[0]]), y)
    for t, prev in zip(ts[:-1], ts[1:]):
        x = s.step(x0, t, x, g)
        eta = float(s.etas[prev])
        assert x.mean().item() == pytest.approx(0.3 + eta * (-1.0), abs=4 * math.sqrt(eta / n))
        assert x.var().item() == pytest.approx(eta, rel=0.02)
    assert torch.equal(s.step(x0, ts[-1], x, g), x0)


# ----- the MONAI wrappers against MONAI's own parameterisations -----

def test_ddim_epsilon_matches_monai_epsilon_step():
    s = build_scheduler("ddim")
    ref = DDIMScheduler(1000, clip_sample=False, prediction_type="epsilon")
    s.set_timesteps(4)
    ref.set_timesteps(4)
    x0, y, eps = data(6)
    for t in s.timesteps.tolist():
        xt = s.add_noise(x0, eps, torch.full((SHAPE[0],), t))
        model_out = 0.7 * eps + 0.1 * xt
        ours = s.step(s.predict_x0(model_out, t, xt), t, xt)
        theirs, _ = ref.step(model_out, t, xt)
        assert torch.allclose(ours, theirs, atol=1e-4), t


def test_rflow_matches_monai_velocity_step():
    s = build_scheduler("rflow")
    ref = RFlowScheduler(1000)
    s.set_timesteps(4)
    ref.set_timesteps(4)
    x0, _, eps = data(7)
    ts = s.timesteps.tolist()
    for t, nxt in zip(ts, ts[1:] + [0]):
        xt = s.add_noise(x0, eps, torch.full((SHAPE[0],), t))
        v = 0.8 * (x0 - eps) + 0.05 * xt
        ours = s.step(s.predict_x0(v, t, xt), t, xt)
        theirs, _ = ref.step(v, t, xt, nxt)
        assert torch.allclose(ours, theirs, atol=1e-5), t


# ----- golden numbers: a full fixed-seed 4-step loop with an analytic "network" -----

GOLDEN = {  # sum, mean square, two voxels of the float64 sample; pinned once, from this code
    "resshift": [0.454328046, 0.240936682, -0.615223266, 0.704565176],
    "ddim": [2.34285778, 0.233540106, -0.616749476, -0.148013384],
    "ddim_sample": [2.34285778, 0.233540106, -0.616749476, -0.148013384],  # same x0 predictions, same chain
    "ddim_v": [2.59889321, 0.219041432, -0.068771746, 0.990709338],
    "rflow": [2.49291054, 0.173946727, -0.614367379, 0.0726889969],
}


def analytic_x0(x: torch.Tensor, t_fraction: float, cond: torch.Tensor) -> torch.Tensor:
    return 0.6 * torch.tanh(x) + 0.4 * cond + 0.05 * t_fraction


def golden_numbers(case: str) -> list[float]:
    s = make(case)
    y = torch.linspace(-1, 1, 2 * 4 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4, 4)
    out = sample(net_predicting(s, analytic_x0), s, y, y, 4, torch.Generator().manual_seed(1234))
    return [out.sum().item(), out.square().mean().item(), out[0, 0, 0, 0, 0].item(), out[1, 0, 3, 3, 3].item()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_four_step_loop(case):
    got = golden_numbers(case)
    assert got == golden_numbers(case)  # the same seed, the same numbers, bit for bit
    np.testing.assert_allclose(got, GOLDEN[case], rtol=1e-6, atol=1e-6)

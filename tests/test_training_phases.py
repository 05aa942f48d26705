"""Two-phase training on the one trainer: parameter groups with learning-rate multipliers, a freeze
schedule (frozen weights bitwise unchanged, then moving), exact resume before, at and after the switch,
one-line config errors, and the same schedule under a 2-process ``torchrun``."""
from __future__ import annotations

import json

import pytest
import torch

from ctsr_models.nets import build_net
from ctsr_models.training import ConfigError, SRConfig, build_config, load_checkpoint, run
from ctsr_models.training.optim import WarmupCosine, name_matches
from ctsr_models.training.trainer import seed_everything
from sr_fixtures import make_data, tiny_config
from test_training_ddp import torchrun

N = 2  # the stem is frozen for optimizer steps 0 .. N-1
STEPS = 2 * N
PHASES = {
    "steps": STEPS, "val_every": 0, "ckpt_every": 1, "keep_checkpoints": STEPS,
    "param_groups": [{"match": "head", "lr_mult": 0.5},
                     {"match": "blocks.*.weight", "lr_mult": 0.25, "weight_decay": 0.0}],
    "freeze": [{"modules": ["stem"], "until_step": N}],
}
STEM = ("stem.weight", "stem.bias")


@pytest.fixture(scope="module")
def phased(tmp_path_factory):
    """The config, and an uninterrupted run of it with a checkpoint after every step."""
    root = tmp_path_factory.mktemp("phases")
    config = tiny_config(root, make_data(root), trainer=PHASES)
    run("sr", config, out=root / "whole")
    return config, root / "whole" / "checkpoints"


def _initial_weights() -> dict[str, torch.Tensor]:
    seed_everything(0)  # what the trainer does before building the model
    return build_net("sr_resnet", features=4, num_blocks=1).state_dict()


def _ckpt(folder, step: int) -> dict:
    return load_checkpoint(folder / f"step_{step:07d}.pt")


def test_each_group_runs_at_base_lr_times_schedule_times_its_multiplier(phased):
    _, folder = phased
    state = _ckpt(folder, 1)
    groups = state["optimizer"]["param_groups"]
    factor = WarmupCosine(1, STEPS, 0.05)(1)  # the lr of the coming step 1
    expected = [("default", 1.0, 1e-4), ("default", 1.0, 0.0), ("head", 0.5, 1e-4), ("head", 0.5, 0.0),
                ("blocks.*.weight", 0.25, 0.0), ("blocks.*.weight", 0.25, 0.0)]
    assert [(g["name"], g["lr_mult"], g["weight_decay"]) for g in groups] == expected
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * factor * mult for _, mult, _ in expected], rel=1e-12)
    assert state["scheduler"]["_last_lr"] == [g["lr"] for g in groups]
    # stem.weight | stem.bias + 2 conv biases | head.weight | head.bias | 2 conv weights | 2 PReLU slopes
    assert [len(g["params"]) for g in groups] == [1, 3, 1, 1, 2, 2]
    assert state["config"]["trainer"]["param_groups"][1] == {"match": "blocks.*.weight", "lr_mult": 0.25,
                                                             "weight_decay": 0.0}
    assert state["config"]["trainer"]["freeze"] == [{"modules": ["stem"], "until_step": N}]


def test_frozen_stem_is_bitwise_unchanged_until_step_n_then_moves(phased):
    _, folder = phased
    init = _initial_weights()
    states = {step: _ckpt(folder, step) for step in range(1, STEPS + 1)}
    for step in range(1, N + 1):
        for key in STEM:
            assert torch.equal(states[step]["model"][key], init[key]), f"{key} moved at step {step}"
            assert torch.equal(states[step]["ema"][f"module.{key}"], init[key]), f"EMA {key} moved at step {step}"
        assert len(states[step]["optimizer"]["state"]) == 8  # no AdamW moments for the 2 stem tensors
    for key in STEM:
        assert not torch.equal(states[N + 1]["model"][key], init[key]), f"{key} still frozen after step {N}"
    stem_state = states[N + 1]["optimizer"]["state"][0]  # stem.weight: the first parameter of group 0
    assert float(stem_state["step"]) == 1.0  # its moments started from zero at the switch
    previous = init
    for step in range(1, STEPS + 1):  # the zero-initialised head moves first; the body gets gradients after
        moving = ("head.weight",) + (("blocks.0.conv.unit0.conv.weight",) if step > 1 else ())
        for key in moving:
            assert not torch.equal(states[step]["model"][key], previous[key]), f"{key} did not move at step {step}"
        previous = states[step]["model"]


def _assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for pid, sa in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[key], b["optimizer"]["state"][pid][key]), f"optimizer {pid}.{key} differs"
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["scheduler"]["_last_lr"] == b["scheduler"]["_last_lr"]
    assert a["step"] == b["step"] == STEPS and a["samples"] == b["samples"]


@pytest.mark.parametrize("stop", [N - 1, N, N + 1])
def test_resume_before_at_or_after_the_switch_equals_the_uninterrupted_run(phased, tmp_path, stop):
    config, whole = phased
    part = run("sr", config, out=tmp_path / "part", stop_at=stop)
    assert part["step"] == stop
    resumed = run("sr", None, resume=tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed["step"] == STEPS and resumed["completed"]
    _assert_same_state(load_checkpoint(whole / "last.pt"), load_checkpoint(tmp_path / "part/checkpoints/last.pt"))


def test_prefixes_and_globs_name_parameters():
    assert name_matches("autoencoder.encoder.conv.weight", "autoencoder")
    assert name_matches("autoencoder.encoder.conv.weight", "autoencoder.encoder.")
    assert not name_matches("autoencoder2.conv.weight", "autoencoder")
    assert name_matches("unet.down.0.norm.weight", "unet.*.norm.weight")
    assert not name_matches("unet.down.0.norm.bias", "unet.*.norm.weight")


@pytest.mark.parametrize("trainer, message", [
    ({"param_groups": [{"match": "head", "lr_mult": 0}]}, "trainer.param_groups[0]: lr_mult must be > 0"),
    ({"param_groups": [{"match": " "}]}, "trainer.param_groups[0]: match must name a module"),
    ({"param_groups": [{"match": "head", "lr_mul": 2}]},
     "unknown config key 'trainer.param_groups[0].lr_mul' (did you mean 'lr_mult'?)"),
    ({"param_groups": [{"lr_mult": 2}]}, "missing config key 'trainer.param_groups[0].match'"),
    ({"freeze": [{"modules": ["stem"], "until_step": 0}]}, "trainer.freeze[0]: until_step must be >= 1"),
    ({"freeze": [{"modules": [], "until_step": 3}]}, "trainer.freeze[0]: modules must list module names"),
    ({"freeze": [{"modules": "stem", "until_step": 3}]}, "trainer.freeze[0].modules: expected a list"),
])
def test_bad_group_or_freeze_configs_fail_with_one_line(trainer, message):
    with pytest.raises(ConfigError) as info:
        build_config(SRConfig, {"trainer": trainer}, None)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_names_that_match_no_parameter_fail_with_the_top_level_modules(phased, tmp_path, capsys):
    from train.__main__ import main

    config, whole = phased
    top = "its top-level modules are stem, blocks, head"
    with pytest.raises(ConfigError, match=rf"trainer.param_groups\[1\].match: 'head' matches no parameter.*{top}"):
        run("sr", config, out=tmp_path / "a", overrides=["trainer.param_groups=[{match: 'h*'}, {match: head}]"])
    with pytest.raises(ConfigError, match=rf"trainer.freeze\[0\].modules\[1\]: 'encoder' matches no .*{top}"):
        run("sr", config, out=tmp_path / "b", overrides=["trainer.freeze=[{modules: [stem, encoder], until_step: 2}]"])
    with pytest.raises(ConfigError, match="the checkpoint's optimizer does not fit trainer.param_groups"):
        run("sr", None, resume=whole / "step_0000002.pt", out=tmp_path / "c", overrides=["trainer.param_groups=[]"])
    assert main(["sr", "--config", str(config), "--out", str(tmp_path / "d"), "trainer.freeze.0.modules=[enc]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: trainer.freeze[0].modules[0]: 'enc' matches no parameter of the model; {top}"


def test_two_ranks_keep_the_frozen_stem_then_train_it_identically(tmp_path):
    trainer = {**PHASES, "steps": N + 1}
    config = tiny_config(tmp_path, make_data(tmp_path), trainer=trainer)
    proc, _ = torchrun("sr", "--config", config, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    digests = summary["param_sha256_per_rank"]
    assert summary["world_size"] == 2 and summary["step"] == N + 1 and digests[0] == digests[1]
    init, folder = _initial_weights(), tmp_path / "run" / "checkpoints"
    at_switch, after = _ckpt(folder, N), _ckpt(folder, N + 1)
    for key in STEM:
        assert torch.equal(at_switch["model"][key], init[key]) and not torch.equal(after["model"][key], init[key])
    assert not torch.equal(at_switch["model"]["head.weight"], init["head.weight"])

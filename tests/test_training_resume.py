"""The trainer in one process: exact stop/resume, the run folder, schedules, refusals and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from ctsr_models.nets import build_net
from ctsr_models.training import ConfigError, load_checkpoint, run
from ctsr_models.training.distributed import shard
from ctsr_models.training.optim import WarmupCosine
from sr_fixtures import make_data, tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return root, tiny_config(root, make_data(root), trainer={"steps": 5, "val_every": 2, "ckpt_every": 2})


def _assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for pid, sa in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[key], b["optimizer"]["state"][pid][key]), f"optimizer {pid}.{key} differs"
    assert a["scheduler"]["_last_lr"] == b["scheduler"]["_last_lr"]
    assert a["step"] == b["step"] and a["samples"] == b["samples"]


def test_stop_after_step_k_and_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    _, config = tiny
    whole = run("sr", config, out=tmp_path / "whole")
    part = run("sr", config, out=tmp_path / "part", stop_at=3)
    assert part["step"] == 3 and part["completed"] is False
    resumed = run("sr", None, resume=tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed["step"] == 5 and resumed["completed"] is True
    assert resumed["run_dir"] == str(tmp_path / "part")
    _assert_same_state(load_checkpoint(tmp_path / "whole/checkpoints/last.pt"),
                       load_checkpoint(tmp_path / "part/checkpoints/last.pt"))
    assert whole["param_sha256_per_rank"] == resumed["param_sha256_per_rank"]
    assert whole["val"] == resumed["val"]


def test_run_folder_holds_config_checkpoints_tensorboard_and_summary(tiny, tmp_path):
    root, config = tiny
    out = tmp_path / "run"
    summary = run("sr", config, out=out, overrides=["trainer.tensorboard=true", "trainer.steps=4"])
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["trainer"]["steps"] == 4 and resolved["data"]["cache_dir"] == str(root / "cache")
    state = load_checkpoint(out / "checkpoints" / "last.pt")  # weights_only=True
    assert state["config"] == resolved and state["step"] == 4 and len(state["rng"]) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "model_ema.pt", "step_0000004.pt"]
    net = build_net("sr_resnet", features=4, num_blocks=1)
    net.load_state_dict(torch.load(out / "checkpoints" / "model_ema.pt", weights_only=True))
    assert torch.equal(net.head.weight, state["ema"]["module.head.weight"])
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["step"] == 4 and on_disk["world_size"] == 1 and on_disk["samples_per_s"] > 0
    assert on_disk["val_sample_ids_per_rank"] == [[0, 1, 2, 3, 4]] and on_disk["val_model"] == "ema"
    assert on_disk["flops_per_sample"] > 0 and on_disk["mfu"] is None  # no MFU on the CPU
    assert set(on_disk["val"]) >= {"psnr", "ssim", "linear_psnr", "psnr_gain"}
    assert abs(on_disk["val"]["psnr"] - summary["val"]["psnr"]) < 1e-9
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0}).Reload()
    assert {"train/loss", "train/lr", "val/psnr", "val/linear_psnr"} <= set(events.Tags()["scalars"])
    assert any(tag.endswith("input_pred_truth") for tag in events.Tags()["images"])


def test_refusals_before_training(tiny, tmp_path):
    _, config = tiny
    run("sr", config, out=tmp_path / "r", overrides=["trainer.steps=2", "trainer.val_every=0"])
    with pytest.raises(ConfigError, match="already holds a run: pass --resume"):
        run("sr", config, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="already done all 2 steps; pass trainer.steps=N"):
        run("sr", None, resume=tmp_path / "r" / "checkpoints" / "last.pt")
    with pytest.raises(ConfigError, match="--stop-at 1 must be after the checkpoint's step 2"):
        run("sr", None, resume=tmp_path / "r" / "checkpoints" / "last.pt", overrides=["trainer.steps=4"], stop_at=1)
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        run("sr", None, resume=tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="unknown task 'seg'"):
        run("seg", config)
    with pytest.raises(ConfigError, match="give --config"):
        run("sr")


def test_resume_with_more_steps_continues_the_run(tiny, tmp_path):
    _, config = tiny
    run("sr", config, out=tmp_path / "r", overrides=["trainer.steps=2", "trainer.val_every=0"])
    more = run("sr", None, resume=tmp_path / "r" / "checkpoints" / "last.pt", overrides=["trainer.steps=3"])
    assert more["step"] == 3 and more["completed"] and more["samples_per_rank"] == 3 * 4


def test_cli_prints_one_line_and_exits_2_on_bad_input(tiny, tmp_path, capsys):
    from train.__main__ import main

    _, config = tiny
    assert main(["sr", "--config", str(config), "--out", str(tmp_path / "x"), "trainer.bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown config key 'trainer.bogus'")
    assert main(["sr", "--config", str(config), f"data.train.0.path={tmp_path / 'missing'}"]) == 2
    assert "data.train[0]: data not found" in capsys.readouterr().err
    assert main(["sr", "--config", str(config), "--print-config", "trainer.lr=0.5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["lr"] == 0.5


def test_warmup_then_cosine_to_the_floor():
    sched = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    factors = [sched(step) for step in range(16)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0) and factors[9] == pytest.approx(0.55)
    assert factors[14] == pytest.approx(0.1) and factors[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


@pytest.mark.parametrize("n, world", [(5, 2), (7, 3), (2, 4), (8, 8)])
def test_validation_shards_cover_every_sample_once_without_padding(n, world):
    shards = [shard(n, rank, world) for rank in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_sr_validation_scores_the_model_beside_linear_and_survives_a_diverged_model(tiny):
    from ctsr_models.training import SRConfig, SRTask, load_config
    from torch.utils.data import default_collate

    _, config = tiny
    task = SRTask(load_config(SRConfig, config))
    task.check()
    task.prepare()
    batch = default_collate([task.val_dataset()[i] for i in range(2)])
    identity = task.build_model().eval()  # untrained: returns the linear interpolation exactly
    with torch.no_grad():
        scores = task.val_step(identity, batch)
    assert len(scores) == 2 and set(scores[0]) == set(SRTask.val_metrics)
    for s in scores:
        assert s["psnr"] == pytest.approx(s["linear_psnr"]) and s["psnr_gain"] == pytest.approx(0.0, abs=1e-9)
        assert 10 < s["psnr"] < 80 and 0 < s["ssim"] <= 1

    class Diverged(torch.nn.Module):
        def forward(self, x, ratios):
            return x * float("nan")

    with torch.no_grad():
        broken = task.val_step(Diverged(), batch)
    assert all(math.isnan(s["psnr"]) and math.isfinite(s["linear_psnr"]) for s in broken)
    panel = task.panels(identity, batch)["input_pred_truth"]
    assert panel.shape == (24, 3 * 16 + 4) and panel.min() >= 0 and panel.max() <= 1

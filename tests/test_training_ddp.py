"""Real ``torchrun`` jobs of 2 CPU processes (gloo): ranks stay identical, validation scores each sample
once, the smoke config finishes and resumes, and bad input stops every rank with one line, no hang."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import shared
from sr_fixtures import REPO, make_data, tiny_config

TORCHRUN = Path(sys.executable).parent / "torchrun"


def torchrun(*args: str | Path, timeout: float = 170) -> tuple[subprocess.CompletedProcess, float]:
    """``torchrun --standalone --nproc_per_node=2 -m train ARGS`` from the repository; returns (process, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "train", *map(str, args)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return proc, time.perf_counter() - t0


def test_two_ranks_stay_identical_and_score_each_validation_sample_once(tmp_path):
    config = tiny_config(tmp_path, make_data(tmp_path), trainer={"steps": 3, "val_every": 0, "ckpt_every": 0})
    proc, _ = torchrun("sr", "--config", config, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    digests = summary["param_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    ids = summary["val_sample_ids_per_rank"]
    assert ids == [[0, 2, 4], [1, 3]]  # 5 samples on 2 ranks: no padding, no repeats
    assert sorted(i for rank in ids for i in rank) == list(range(5))
    assert len(json.loads(json.dumps(summary))["val"]) > 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert not list((tmp_path / "run").glob("rank*"))  # only rank 0 writes


@pytest.mark.slow
def test_smoke_config_under_torchrun_finishes_and_resumes(tmp_path):
    shared("ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz")
    out = tmp_path / "smoke"
    proc, seconds = torchrun("sr", "--config", REPO / "train/configs/sr_smoke.yaml", "--out", out,
                             f"data.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < 120, f"the smoke run took {seconds:.0f} s"
    first = json.loads((out / "summary.json").read_text())
    assert first["completed"] and first["world_size"] == 2 and first["samples_per_s"] > 0
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "model_ema.pt").is_file()
    proc, _ = torchrun("sr", "--resume", out / "checkpoints" / "last.pt", f"trainer.steps={first['steps'] + 2}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed at step 6" in proc.stderr
    second = json.loads((out / "summary.json").read_text())
    assert second["step"] == first["steps"] + 2 and second["samples_per_rank"] > first["samples_per_rank"]
    assert second["param_sha256_per_rank"][0] == second["param_sha256_per_rank"][1]


def test_missing_data_stops_every_rank_with_one_line_and_no_hang(tmp_path):
    config = tiny_config(tmp_path, make_data(tmp_path))
    proc, seconds = torchrun("sr", "--config", config, f"data.train.0.path={tmp_path / 'nowhere'}", timeout=90)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: data.train[0]: data not found: {tmp_path / 'nowhere'}"] * 2
    assert "exitcode  : 2" in proc.stderr and "process group" not in proc.stderr

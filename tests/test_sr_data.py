"""SR data: sources, the decode-once cache, truth resampling, pair simulation and patch datasets."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared
from ctsr_models.data import (
    Degradation, DegradationRanges, SRTrainDataset, SRValDataset, ThinGrid, VolumeCache, VolumeEntry, VolumeSource,
    cache_key, cut_patch, find_volumes, hu_to_net, interpolate_slabs, make_pair, net_to_hu, resample_truth,
    truth_length, z_range_of,
)
from ctsr_models.data import cache as cache_module
from ctsr_models.io import InputError
from sr_fixtures import synthetic_ct, write_ct


def _entry(array: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), axes=("z", "x", "y"), z_fraction=(0.0, 1.0),
           tmp: Path | None = None) -> VolumeEntry:
    path = write_ct(tmp / f"v{array.shape[0]}_{spacing_xyz[2]}.nii.gz", array, spacing_xyz)
    vol = VolumeCache(tmp / "cache").load(find_volumes(VolumeSource(path), "t")[0])
    return VolumeEntry(vol, tuple(axes), z_range_of(vol.shape[0], z_fraction), 1.0)


# ---------------------------------------------------------------- intensity and interpolation
def test_intensity_scale_round_trip_and_clip():
    hu = np.array([-2000.0, -1024.0, 0.0, 40.0, 3071.0, 5000.0], dtype=np.float32)
    np.testing.assert_allclose(hu_to_net(hu), [-1.024, -1.024, 0.0, 0.04, 3.071, 3.071], rtol=1e-6)
    np.testing.assert_allclose(net_to_hu(hu_to_net(hu)), np.clip(hu, -1024, 3071), rtol=1e-6)
    assert torch.allclose(hu_to_net(torch.tensor([-3000.0, 100.0])), torch.tensor([-1.024, 0.1]))


def test_interpolation_of_slabs_is_exact_on_a_ramp_and_constant_beyond_the_ends():
    centres = np.array([1.5, 4.5, 7.5])
    slabs = (2.0 * centres + 1.0)[:, None].astype(np.float32)  # a ramp sampled at the centres
    out = interpolate_slabs(slabs, centres, 10, 1.0)[:, 0]
    pos = np.arange(10.0)
    inside = (pos >= 1.5) & (pos <= 7.5)
    np.testing.assert_allclose(out[inside], 2.0 * pos[inside] + 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[pos < 1.5], slabs[0, 0])
    np.testing.assert_allclose(out[pos > 7.5], slabs[-1, 0])


# ---------------------------------------------------------------- truth on the thin grid
def test_truth_is_kept_within_tolerance_integrated_when_finer_and_interpolated_when_coarser():
    ramp = np.arange(40, dtype=np.float32)[:, None] * 10.0
    kept, s = resample_truth(ramp, 0.977, ThinGrid(1.0, 0.05), 8)
    assert s == 0.977 and np.array_equal(kept[:, 0], ramp[:8, 0])
    finer, s = resample_truth(ramp, 0.5, ThinGrid(1.0), 8)  # pairs of 0.5 mm slices -> 1 mm rect slices
    assert s == 1.0
    np.testing.assert_allclose(finer[:, 0], ramp[0:16:2, 0] + 5.0)
    coarser, s = resample_truth(ramp, 2.0, ThinGrid(1.0), 8)  # linear on a ramp: exact
    np.testing.assert_allclose(coarser[:, 0], np.arange(8) * 5.0)
    native, s = resample_truth(ramp, 2.0, ThinGrid(1.0, upsample=False), 8)
    assert s == 2.0 and np.array_equal(native[:, 0], ramp[:8, 0])
    for spacing in (0.5, 0.977, 2.0, 3.0):
        need = truth_length(spacing, ThinGrid(1.0), 8)
        assert resample_truth(ramp[:need], spacing, ThinGrid(1.0), 8)[0].shape[0] == 8
    with pytest.raises(ValueError, match="need"):
        resample_truth(ramp[:3], 0.5, ThinGrid(1.0), 8)


# ---------------------------------------------------------------- pairs
def test_pair_slabs_mask_and_conditioning_follow_the_physics():
    truth = synthetic_ct((30, 8, 8)).astype(np.float32)
    pair = make_pair(truth, 1.0, Degradation(3.0, 3.0, "rect"))
    np.testing.assert_allclose(pair.centres, 1.0 + 3.0 * np.arange(10))  # mean positions of 3 thin slices
    # at a slab centre the input is that slab: the mean of its three thin slices
    np.testing.assert_allclose(pair.input_hu[4], truth[3:6].mean(axis=0), rtol=1e-5, atol=1e-3)
    assert pair.mask.sum() == 28 and not pair.mask[0] and not pair.mask[-1]
    assert pair.degradation.ratios(pair.spacing) == (3.0, 3.0)
    assert pair.score_slice() == slice(3, 27)  # one slab in from each end of the stack [-0.5, 29.5]


def test_noise_needs_a_generator_and_has_the_asked_sd():
    truth = np.zeros((90, 32, 32), dtype=np.float32)
    with pytest.raises(ValueError, match="generator"):
        make_pair(truth, 1.0, Degradation(3.0, 3.0, noise_hu=10.0))
    pair = make_pair(truth, 1.0, Degradation(3.0, 3.0, noise_hu=10.0), np.random.default_rng(0))
    at_centres = pair.input_hu[1::3]  # slab centres fall on thin slices 1, 4, 7, ...: the noisy slabs
    assert 9.8 < float(np.std(at_centres)) < 10.2
    assert abs(float(np.mean(at_centres))) < 0.2


def test_random_degradations_stay_in_their_ranges_and_bad_ranges_raise():
    ranges = DegradationRanges((2.0, 4.0), (1.0, 1.5), ("gaussian",), (0.0, 20.0))
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = ranges.draw(rng, 0.5)
        assert 1.0 <= d.spacing <= 2.0 and d.spacing <= d.thickness <= 1.5 * d.spacing
        assert 0 <= d.offset < d.spacing and 0 <= d.noise_hu <= 20 and d.profile == "gaussian"
    with pytest.raises(ValueError, match="spacing_ratio"):
        DegradationRanges(spacing_ratio=(3.0, 2.0))
    with pytest.raises(ValueError, match="profiles"):
        DegradationRanges(profiles=("box",))


# ---------------------------------------------------------------- sources and cache
def test_sources_expand_folders_and_globs_and_refuse_missing_or_empty(tmp_path):
    write_ct(tmp_path / "d" / "a.nii.gz", synthetic_ct((8, 8, 8)), (1.0, 1.0, 1.0))
    write_ct(tmp_path / "d" / "sub" / "b.mha", synthetic_ct((8, 8, 8)), (1.0, 1.0, 1.0))
    (tmp_path / "d" / "README.txt").write_text("not an image")
    assert [r.path.name for r in find_volumes(VolumeSource(tmp_path / "d"), "s")] == ["a.nii.gz", "b.mha"]
    assert len(find_volumes(VolumeSource(tmp_path / "d" / "**" / "*.mha"), "s")) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"data.train\[3\]: no CT volumes found"):
        find_volumes(VolumeSource(tmp_path / "empty"), "data.train[3]")
    with pytest.raises(InputError, match="data not found"):
        find_volumes(VolumeSource(tmp_path / "missing"), "s")
    with pytest.raises(InputError, match="no files match"):
        find_volumes(VolumeSource(tmp_path / "*.nrrd"), "s")
    with pytest.raises(ValueError, match="axes"):
        VolumeSource(tmp_path, axes=["w"])
    with pytest.raises(ValueError, match="z_fraction"):
        VolumeSource(tmp_path, z_fraction=(0.5, 0.5))


def test_cache_decodes_once_stores_int16_and_notices_a_changed_file(tmp_path, monkeypatch):
    path = write_ct(tmp_path / "a.nii.gz", synthetic_ct((10, 12, 14)), (0.8, 0.8, 2.0))
    ref = find_volumes(VolumeSource(path), "s")[0]
    calls = []
    real_read = cache_module.read_volume
    monkeypatch.setattr(cache_module, "read_volume", lambda *a, **k: calls.append(1) or real_read(*a, **k))
    cache = VolumeCache(tmp_path / "cache")
    vol = cache.load(ref)
    again = cache.load(ref)
    assert len(calls) == 1 and again.npy == vol.npy
    assert vol.array.dtype == np.int16 and np.array_equal(vol.array, synthetic_ct((10, 12, 14)))
    np.testing.assert_allclose(vol.spacing, (0.8, 0.8, 2.0), rtol=1e-6)
    np.testing.assert_allclose(vol.axis_spacing(), (2.0, 0.8, 0.8), rtol=1e-6)
    assert pickle.loads(pickle.dumps(vol))._array is None  # workers reopen the memory map
    key = cache_key(ref)
    write_ct(path, synthetic_ct((10, 12, 14), seed=5), (0.8, 0.8, 2.0))
    assert cache_key(ref) != key


# ---------------------------------------------------------------- patches and datasets
def test_patches_put_the_degraded_axis_first(tmp_path):
    z, y, x = np.meshgrid(np.arange(20), np.arange(24), np.arange(28), indexing="ij")
    entry = _entry((1000 * z + 30 * y + x).astype(np.int16) - 1000, tmp=tmp_path)
    for axis, varying in (("z", 1000), ("y", 30), ("x", 1)):
        patch, spacing = cut_patch(entry, axis, (8, 6, 6), ThinGrid(1.0), np.random.default_rng(0))
        assert patch.shape == (8, 6, 6) and spacing == 1.0
        np.testing.assert_allclose(np.diff(patch, axis=0), varying)


def test_patches_respect_the_z_range_and_pad_small_volumes_with_air(tmp_path):
    z = np.broadcast_to(np.arange(20)[:, None, None] - 500, (20, 8, 8)).astype(np.int16)
    entry = _entry(z, z_fraction=(0.5, 1.0), tmp=tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(10):
        patch, _ = cut_patch(entry, "x", (8, 6, 8), ThinGrid(1.0), rng)
        assert patch.min() >= -490
    small, _ = cut_patch(entry, "z", (16, 12, 8), ThinGrid(1.0), rng)
    assert small.shape == (16, 12, 8) and np.all(small[10:] == -1024) and np.all(small[:, 8:] == -1024)


def test_training_examples_are_a_function_of_seed_rank_and_index(tmp_path):
    entry = _entry(synthetic_ct((30, 32, 32)), tmp=tmp_path)
    ds = SRTrainDataset([entry], (24, 16, 16), ThinGrid(1.0), DegradationRanges((2.0, 3.0)), seed=3)
    a, b = ds[7], ds[7]
    assert all(torch.equal(a[k], b[k]) for k in a)
    other_rank = SRTrainDataset([entry], (24, 16, 16), ThinGrid(1.0), DegradationRanges((2.0, 3.0)), seed=3, rank=1)
    assert not torch.equal(a["input"], other_rank[7]["input"])
    assert a["input"].shape == a["target"].shape == (1, 24, 16, 16)
    assert a["mask"].shape == (1, 24, 1, 1) and a["ratios"].shape == (2,) and int(a["index"]) == 7
    lo, hi = a["score"].tolist()
    assert 0 < lo < hi < 24 and a["mask"][0, lo:hi].all()
    masked = a["mask"].bool().expand_as(a["input"])
    assert not torch.equal(a["input"][masked], a["target"][masked])


def test_validation_samples_are_fixed_and_cycle_axes_and_ratios(tmp_path):
    entry = _entry(synthetic_ct((30, 32, 32)), axes=("z", "x"), tmp=tmp_path)
    ds = SRValDataset([entry], 4, (24, 16, 16), ThinGrid(1.0), [2.0, 3.0], seed=1)
    pairs = [ds.pair(i) for i in range(4)]
    assert [p.degradation.spacing for p in pairs] == [2.0, 3.0, 2.0, 3.0]
    assert all(p.degradation.profile == "rect" and p.degradation.offset == 0 for p in pairs)
    assert np.array_equal(ds.pair(2).target_hu, pairs[2].target_hu)
    with pytest.raises(IndexError):
        ds.pair(4)


def test_real_thick_ct_gives_in_plane_pairs():
    path = shared("ct/pyradiomics_lung1/lung1_image.nrrd")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        vol = VolumeCache(tmp).load(find_volumes(VolumeSource(path, axes=["x", "y"]), "s")[0])
        entry = VolumeEntry(vol, ("x", "y"), (0, vol.shape[0]), 1.0)
        ds = SRTrainDataset([entry], (32, 32, 32), ThinGrid(1.0), DegradationRanges(), seed=0)
        sample = ds[0]
    assert sample["input"].shape == (1, 32, 32, 32)
    assert float(sample["target"].max()) > 0  # some tissue in the patch
    assert 2.0 <= float(sample["ratios"][1]) <= 6.0


def test_a_dicom_folder_and_a_zip_of_it_are_one_volume_each_decoded_alike(tmp_path):
    import zipfile

    folder = shared("ct/totalseg/example_ct_dicom")
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"study/{path.name}")
    from_folder = find_volumes(VolumeSource(folder), "s")
    from_zip = find_volumes(VolumeSource(tmp_path / "study.zip"), "s")
    assert len(from_folder) == len(from_zip) == 1 and from_folder[0].series_uid == from_zip[0].series_uid
    cache = VolumeCache(tmp_path / "cache")
    a, b = cache.load(from_folder[0]), cache.load(from_zip[0])
    assert a.npy != b.npy and a.shape == (20, 512, 512) and np.array_equal(a.array, b.array)

"""Lower-dose simulation by noise insertion: the variance formula against Poisson counts, the noise of a
direct low-dose scan, 1/sqrt(d) scaling, unchanged mean HU, FBP's ramp-shaped NPS, real CT, and the CLI."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli, shared
from ctsr_models.cli.degrade import _dose_settings, build_parser
from ctsr_models.io import read_volume, write_volume
from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume
from ctsr_models.physics import DoseSettings, simulate_low_dose
from ctsr_models.physics.dose import (MIN_LOW_DOSE_COUNT, REFERENCE_VIEWS, added_variance, inserted_noise,
                                      simulate_scan)

DOSES = (0.5, 0.25, 0.1)
PIXEL_MM = 1.2
N0 = 1.0e5
CHEST_ROI = (slice(172, 204), slice(305, 337))  # 32 x 32 soft tissue (~34 HU) in chest slice 40


def _water_cylinder(n: int = 256, radius_mm: float = 110.0) -> tuple[np.ndarray, np.ndarray]:
    """A water cylinder (0 HU) in air on an ``n x n`` grid of 1.2 mm pixels, and its central 50 mm disc."""
    yy, xx = np.mgrid[:n, :n]
    r_mm = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) * PIXEL_MM
    return np.where(r_mm < radius_mm, 0.0, -1000.0).astype(np.float32), r_mm < 50.0


def _radial_nps(noise: np.ndarray, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Mean 2D NPS of the four central ``size``-pixel patches (patch mean removed), and the radial
    frequency (cycles/pixel) of each bin."""
    c = noise.shape[0] // 2
    patches = [noise[c + dy:c + dy + size, c + dx:c + dx + size] for dy in (-size, 0) for dx in (-size, 0)]
    nps = np.mean([np.abs(np.fft.fft2(p - p.mean())) ** 2 for p in patches], axis=0) / size ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    return nps, f


def _is_ramp_shaped(noise: np.ndarray) -> bool:
    """NPS in 0.15-0.30 cycles/pixel at least 2.2x the NPS in (0, 0.05]: FBP noise; white noise is flat."""
    nps, f = _radial_nps(noise)
    return bool(nps[(f >= 0.15) & (f <= 0.30)].mean() >= 2.2 * nps[(f > 0) & (f <= 0.05)].mean())


# --- the formula --------------------------------------------------------------------------------------------


def test_added_variance_closed_form() -> None:
    s = DoseSettings(0.25, photons=N0, electronic_noise=10.0, views=500)
    n0, var_e = N0 * REFERENCE_VIEWS / 500, 100.0 * REFERENCE_VIEWS / 500
    p = np.array([0.0, 2.0, 5.0])
    expected = 3.0 * np.exp(p) / n0 + 15.0 * var_e * np.exp(2 * p) / n0 ** 2
    np.testing.assert_allclose(added_variance(p, s), expected, rtol=1e-12)
    assert np.all(added_variance(p, DoseSettings(1.0)) == 0)
    cap = math.log(0.25 * n0 / MIN_LOW_DOSE_COUNT)  # photon starvation: variance of 5 low-dose photons
    np.testing.assert_allclose(added_variance(np.array([cap + 3.0]), s), added_variance(np.array([cap]), s))


@pytest.mark.parametrize("p, electronic", [(1.0, 0.0), (4.0, 0.0), (3.0, 8.0)])
def test_added_variance_matches_the_log_of_poisson_counts(p: float, electronic: float) -> None:
    """Var(ln(dN0/I_d)) - Var(ln(N0/I_1)) of simulated counts equals the closed form within 3 %."""
    rng = np.random.default_rng(7)
    n0 = 2.0e4
    s = DoseSettings(0.25, photons=n0, electronic_noise=electronic, views=REFERENCE_VIEWS)

    def log_var(photons: float) -> float:
        counts = rng.poisson(photons * math.exp(-p), 400_000) + electronic * rng.standard_normal(400_000)
        return float(np.log(photons / counts).var())

    measured = log_var(0.25 * n0) - log_var(n0)
    assert measured == pytest.approx(float(added_variance(np.array([p]), s)[0]), rel=0.03)


@pytest.mark.parametrize("kwargs, message", [
    ({"dose": 0.0}, "(0, 1]"), ({"dose": 1.5}, "(0, 1]"), ({"dose": float("nan")}, "(0, 1]"),
    ({"dose": 0.5, "photons": 0.0}, "photons"), ({"dose": 0.5, "electronic_noise": -1.0}, "electronic_noise"),
    ({"dose": 0.5, "views": 4}, "views"), ({"dose": 0.5, "filter_name": "butterworth"}, "allowed"),
])
def test_settings_refuse_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        DoseSettings(**kwargs)


# --- phantom: insertion against a direct low-dose scan --------------------------------------------------------


def test_insertion_gives_the_noise_of_a_direct_low_dose_scan() -> None:
    """The standard-dose image is itself a simulated N0 scan, so its noise is known to be full-dose noise:
    inserted noise SD = sigma_1 sqrt((1-d)/d), total noise SD = sigma_1/sqrt(d) = that of a direct scan at
    d N0 (all within 10 %), mean HU unchanged within 2 HU."""
    phantom, roi = _water_cylinder()
    rng = np.random.default_rng(0)
    noiseless = simulate_scan(phantom, PIXEL_MM, 1e13, rng, views=256)  # same FBP streaks, no noise
    standard = simulate_scan(phantom, PIXEL_MM, N0, rng, views=256)
    sigma_1 = float((standard - noiseless)[roi].std())
    assert float((noiseless - phantom)[roi].std()) < 0.15 * sigma_1 and 15 < sigma_1 < 40  # FBP ripple, not noise
    for k, d in enumerate(DOSES):
        noise = inserted_noise(standard, PIXEL_MM, DoseSettings(d, photons=N0, views=256), np.random.default_rng(k))
        low = standard + noise
        direct = simulate_scan(phantom, PIXEL_MM, d * N0, rng, views=256)
        assert float(noise[roi].std()) == pytest.approx(sigma_1 * math.sqrt((1 - d) / d), rel=0.10)
        assert float((low - noiseless)[roi].std()) == pytest.approx(sigma_1 / math.sqrt(d), rel=0.10)
        assert float((low - noiseless)[roi].std()) == pytest.approx(float((direct - noiseless)[roi].std()), rel=0.10)
        assert abs(float(low[roi].mean() - standard[roi].mean())) < 2.0


def test_inserted_noise_has_the_ramp_nps_and_white_noise_does_not() -> None:
    phantom, _ = _water_cylinder()
    noise = inserted_noise(phantom, PIXEL_MM, DoseSettings(0.1, views=256), np.random.default_rng(3))
    nps, f = _radial_nps(noise)
    rings = [nps[(f > lo) & (f <= lo + 0.05)].mean() for lo in (0.0, 0.05, 0.10, 0.15)]
    assert np.all(np.diff(rings) > 0), rings  # rises with frequency at low frequencies
    assert _is_ramp_shaped(noise)
    white = np.random.default_rng(3).standard_normal(noise.shape).astype(np.float32) * noise.std()
    assert not _is_ramp_shaped(white)


def test_noise_level_does_not_depend_on_the_number_of_views() -> None:
    phantom, roi = _water_cylinder(160, 80.0)
    sd = {views: np.mean([inserted_noise(phantom, PIXEL_MM, DoseSettings(0.25, views=views),
                                         np.random.default_rng(s))[roi].std() for s in range(2)])
          for views in (90, 360)}
    assert sd[90] == pytest.approx(sd[360], rel=0.05)


# --- real CT ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest_slice() -> Volume:
    """Slice 40 of the real chest CT (512 x 512, 0.977 mm pixels), with its geometry."""
    chest = read_volume(shared("ct/chest_4dct_phase00_dicom"))
    return chest.replace(array=chest.array[40:41].copy(), origin=tuple(chest.index_to_physical([0, 0, 40])))


def test_real_slice_mean_kept_and_inserted_noise_scales(chest_slice: Volume) -> None:
    """On real CT the original noise's dose is unknown, so the honest checks are: the inserted noise SD
    scales as sqrt((1-d)/d) (10 %), variances add (original + inserted, 10 %), mean HU kept (2 HU)."""
    before = chest_slice.array.copy()
    original = chest_slice.array[0][CHEST_ROI].astype(np.float64)
    assert abs(original.mean() - 34) < 10 and original.std() < 25  # the ROI is soft tissue
    body = (slice(150, 350), slice(150, 350))
    inserted = {}
    for k, d in enumerate(DOSES):
        low = simulate_low_dose(chest_slice, DoseSettings(d, views=180), seed=k)
        noise = low.array[0].astype(np.float64) - chest_slice.array[0]
        inserted[d] = noise[body].std()
        assert abs(low.array[0][CHEST_ROI].mean() - original.mean()) < 2.0
        assert low.array[0][CHEST_ROI].var() == pytest.approx(original.var() + noise[CHEST_ROI].var(), rel=0.10)
    for d in DOSES[1:]:
        expected = inserted[0.5] * math.sqrt((1 - d) / d) / math.sqrt((1 - 0.5) / 0.5)
        assert inserted[d] == pytest.approx(expected, rel=0.10)
    np.testing.assert_array_equal(chest_slice.array, before)


def test_real_slice_geometry_seed_and_variance_shortcut(chest_slice: Volume) -> None:
    settings = DoseSettings(0.25, views=90)
    a = simulate_low_dose(chest_slice, settings, seed=5)
    assert a.array.dtype == np.float32 and a.shape == chest_slice.shape
    assert a.geometry_dict() == chest_slice.geometry_dict() and "lower dose simulated" in a.findings[-1]
    np.testing.assert_array_equal(a.array, simulate_low_dose(chest_slice, settings, seed=5).array)
    assert not np.allclose(a.array, simulate_low_dose(chest_slice, settings, seed=6).array)
    # line integrals from the 2x2-block-averaged slice set the same noise level as full resolution
    hu, streams = chest_slice.array[0], np.random.SeedSequence(5).spawn(1)
    full = inserted_noise(hu, chest_slice.spacing[0], DoseSettings(0.25, views=90, variance_downsample=1),
                          np.random.default_rng(streams[0]))
    coarse = a.array[0] - hu
    assert coarse.std() == pytest.approx(full.std(), rel=0.02)
    assert np.corrcoef(coarse.ravel(), full.ravel())[0, 1] > 0.99


def test_non_square_pixels_are_refused() -> None:
    vol = Volume(np.zeros((1, 8, 8), np.int16), spacing=(0.7, 0.9, 2.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="square pixels"):
        simulate_low_dose(vol, DoseSettings(0.5))


# --- CLI ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--dose", "0"], "(0, 1]"), (["--dose", "1.5"], "(0, 1]"), (["--dose", "nan"], "(0, 1]"),
    ([], "nothing to simulate"), (["--thickness", "5", "--photons", "1e5"], "--photons only applies with --dose"),
    (["--dose", "0.5", "--spacing", "3"], "--spacing only applies with --thickness"),
    (["--dose", "0.5", "--thickness", "5", "--noise-hu", "10"], "give one of them"),
    (["--thickness", "5", "--filter", "hann"], "--filter only applies with --dose"),
])
def test_cli_refuses_nonsense_options(argv: list[str], message: str) -> None:
    args = build_parser().parse_args(["in.nii.gz", "out.nii.gz", *argv])
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("]", r"\]")):
        _dose_settings(args)


def test_cli_dose_options_reach_the_settings() -> None:
    args = build_parser().parse_args(["in.nii.gz", "out.nii.gz", "--dose", "0.3", "--photons", "2e5",
                                      "--electronic-noise", "6", "--views", "200", "--filter", "hann"])
    assert _dose_settings(args) == DoseSettings(0.3, photons=2e5, electronic_noise=6.0, views=200, filter_name="hann")
    assert _dose_settings(build_parser().parse_args(["a.nii.gz", "b.nii.gz", "--thickness", "5"])) is None


@pytest.fixture(scope="module")
def chest_crop(tmp_path_factory) -> Path:
    """4 slices x 160 x 160 of the real chest CT as int16 NIfTI, with their true geometry."""
    chest = read_volume(shared("ct/chest_4dct_phase00_dicom"))
    k0, j0, i0 = 38, 120, 250
    crop = chest.replace(array=chest.array[k0:k0 + 4, j0:j0 + 160, i0:i0 + 160].copy(),
                         origin=tuple(chest.index_to_physical([i0, j0, k0])))
    path = tmp_path_factory.mktemp("dose") / "standard.nii.gz"
    write_volume(crop, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_dose_keeps_geometry_dtype_and_input(chest_crop: Path, tmp_path: Path) -> None:
    digest, out = _sha(chest_crop), tmp_path / "low.nii.gz"
    proc = run_cli("ctsr-degrade", chest_crop, out, "--dose", "0.25", "--seed", "3", "--views", "120", "--quiet",
                   check=True)
    ref, low = read_volume(chest_crop), read_volume(out)
    assert json.loads(proc.stdout)["geometry"] == ref.geometry_dict() == low.geometry_dict()
    assert nib.load(out).get_data_dtype() == nib.load(chest_crop).get_data_dtype() == np.int16
    assert _sha(chest_crop) == digest
    expected = simulate_low_dose(ref, DoseSettings(0.25, views=120), seed=3).array
    np.testing.assert_allclose(low.array, np.round(expected), atol=1.0)
    assert 10 < float((low.array.astype(np.float64) - ref.array).std()) < 200


def test_cli_bad_dose_is_one_line_exit_2(chest_crop: Path, tmp_path: Path) -> None:
    proc = run_cli("ctsr-degrade", chest_crop, tmp_path / "x.nii.gz", "--dose", "1.5")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "ctsr-degrade: error: --dose must be a fraction in (0, 1], got 1.5"]
    assert not (tmp_path / "x.nii.gz").exists()


def test_cli_dose_then_thickness(chest_crop: Path, tmp_path: Path) -> None:
    out = tmp_path / "low_thick.nii.gz"
    run_cli("ctsr-degrade", chest_crop, out, "--dose", "0.5", "--thickness", "4", "--views", "90", "--quiet",
            check=True)
    back, ref = read_volume(out), read_volume(chest_crop)
    assert back.shape == (2, 160, 160) and back.spacing[2] == pytest.approx(4.0)
    by_hand = simulate_low_dose(ref, DoseSettings(0.5, views=90), seed=0).array.reshape(2, 2, 160, 160).mean(axis=1)
    np.testing.assert_allclose(back.array, np.round(by_hand), atol=1.0)

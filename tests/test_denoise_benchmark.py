"""Smoke test of the denoising benchmark (``--quick``: one held-out chest case, 25 % dose, two slices, small crop)
on the real data: it writes only where it is told (never ``docs/``), every method and shipped ``denoise`` model gets
a row, and the numbers behave as physics says (denoisers lower the noise and raise PSNR; zero-mean noise keeps the
mean HU; the spheres are visible at standard dose)."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared
from ctsr_models.inference.models import read_manifest

sys.path.insert(0, str(REPO / "benchmarks"))
import denoise_benchmark  # noqa: E402

DOCS = [REPO / "docs" / "benchmarks.md", REPO / "docs" / "figures" / "denoise_benchmark.png"]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[str | None]]:
    shared(denoise_benchmark.CASES[0].path)
    out = tmp_path_factory.mktemp("denoise_bench")
    before = [_digest(p) for p in DOCS]
    denoise_benchmark.main(["--quick", "--device", "cpu", "--out-md", str(out / "bench.md"), "--fig",
                            str(out / "fig.png"), "--json", str(out / "rows.json"), "--cache", str(out / "cache")])
    return out, json.loads((out / "rows.json").read_text()), before


def test_quick_run_writes_only_its_own_paths(quick_run: tuple[Path, list[dict], list[str | None]]) -> None:
    out, _, before = quick_run
    assert [_digest(p) for p in DOCS] == before
    text = (out / "bench.md").read_text()
    assert text.count("<!-- denoise_benchmark:start -->") == 1 and "<!-- denoise_benchmark:end -->" in text
    assert "](fig.png)" in text and "--quick" in text and "- denoise_unet_v1: 4 whole 512x512 slices in" in text
    for name, spec in read_manifest(task="denoise")[0].items():  # diffusion models are timed by the full run only
        if spec.kind.value == "diffusion":
            assert f"- {name} (1 sample): not timed on whole slices in this run" in text
    assert (out / "fig.png").stat().st_size > 20_000
    assert list((out / "cache").glob("*.npy"))  # the simulated low dose is kept for a rerun


def test_every_method_and_shipped_model_has_a_row(quick_run: tuple[Path, list[dict], list[str | None]]) -> None:
    _, rows, _ = quick_run
    methods = [r["method"] for r in rows]
    assert methods[:3] == ["standard dose", "low-dose input", methods[2]] and methods[2].startswith("Gaussian (sigma")
    assert "NLM" in methods and "BM3D" not in methods  # --quick leaves BM3D out
    for name in read_manifest(task="denoise")[0]:
        assert any(m.startswith(name) for m in methods), name
    text = (quick_run[0] / "bench.md").read_text()
    assert all(f"| {m} |" in text for m in methods)


def test_quick_numbers_behave(quick_run: tuple[Path, list[dict], list[str | None]]) -> None:
    _, rows, _ = quick_run
    by = {r["method"].split(" (")[0]: r for r in rows}
    std, low = by["standard dose"], by["low-dose input"]
    assert 2 < std["noise_sd"] < 10 and low["noise_sd"] > 5 * std["noise_sd"]  # 25 % dose: several times the noise
    assert abs(low["bias"]["soft tissue"]) < 3  # inserted noise has zero mean
    assert std["cnr"][0] > 2 and low["cnr"][0] < std["cnr"][0] / 3  # 10 mm +20 HU sphere: seen, then drowned
    regression = [r["method"] for r in rows if r.get("kind") == "regression"]  # diffusion quality: the full run
    assert regression
    for name in ["Gaussian", "NLM", *regression]:
        r = by[name]
        assert r["noise_sd"] < 0.6 * low["noise_sd"], name
        assert r["psnr"] > low["psnr"] + 3, name
        assert 0.0 <= r["s_per_slice"] < 120 and 0 <= r["peak_mb"] < r["rss_mb"] < 8192, name


def test_targets_are_judged_for_a_diffusion_model_and_missed_ones_say_so() -> None:
    def row(method: str, kind: str, psnr: float, shift: float, cnr: float) -> dict:
        return {"case": "c", "dose": 0.25, "method": method, "kind": kind, "psnr": psnr, "nps_shift_pct": shift,
                "seconds": 1.0,
                "s_per_slice": 0.5, "peak_mb": 100.0, "rss_mb": 900.0, "cnr": [cnr] * len(denoise_benchmark.SPHERES),
                "bias": {"lung": 0.5, "fat": float("nan"), "soft tissue": -4.0}}

    rows = [row("BM3D", "", 40.0, -30.0, 1.0), row("denoise_unet_v1", "regression", 39.0, 5.0, 2.0),
            row("ldm_x (1 sample)", "diffusion", 40.5, -2.0, 0.4),
            row("ldm_x (mean of 4)", "diffusion mean", 41.5, -8.0, 0.5)]
    timing = {"ldm_x (1 sample)": (10.0, 50.0, 1200.0), "denoise_unet_v1": (2.4, 20.0, 700.0)}
    text = "\n".join(denoise_benchmark.targets(rows, timing, 4))
    assert "not yet shipped" not in text
    assert ("c, ldm_x (mean of 4): PSNR +1.50 dB vs BM3D (+1 dB: met); NPS peak -8.0 % vs standard dose "
            "(within 10 %: met)") in text
    assert "largest tissue bias 4.0 HU (within 3: **missed**)" in text
    assert "CNR >= BM3D's for 0 of 4 spheres (**missed**)" in text
    assert "c, BM3D: NPS peak -30.0 % vs standard dose (within 10 %: **missed**)" in text
    assert ("- ldm_x (1 sample): 4 whole 512x512 slices in 10.0 s, so 512x512x100 in about 4.2 min (5 min: met); "
            "process peak 1200 MB (8 GB: met)") in text and "c, ldm_x (1 sample):" not in text
    assert "- denoise_unet_v1: 4 whole 512x512 slices in 2.4 s" in text and "process peak 900 MB" in text
    assert "not yet shipped" in "\n".join(denoise_benchmark.targets(rows[:2], {}, 4))

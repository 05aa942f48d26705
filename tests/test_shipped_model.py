"""The shipped default model: its weights verify, and it beats cubic interpolation on unseen real CT."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared
from ctsr_models.inference import EnhanceOptions, enhance, load_network, read_manifest
from ctsr_models.io import read_volume
from ctsr_models.metrics import compare_volumes
from ctsr_models.physics import simulate_thick_slices


def test_every_shipped_model_loads_with_its_checksum():
    specs, default = read_manifest()
    assert default in specs, "a default model is shipped"
    for spec in specs.values():
        net = load_network(spec, torch.device("cpu"))
        assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("thickness", [5.0, 6.0])
def test_default_model_beats_cubic_on_a_held_out_real_crop(thickness):
    """The aorta CT crop is never trained on (train/configs/sr.yaml); 1.5 mm truth, rect slabs."""
    truth = read_volume(shared("ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz"))
    j0, i0 = 30, 28
    truth = truth.replace(array=truth.array[:, j0:j0 + 64, i0:i0 + 64].copy(),
                          origin=tuple(truth.index_to_physical([i0, j0, 0])))
    thick = simulate_thick_slices(truth, thickness, thickness, "rect")
    scores = {}
    for model in ("cubic", "default"):
        out = enhance(thick, EnhanceOptions(target_spacing=truth.spacing[2], model=model, input_thickness=thickness))
        scores[model] = compare_volumes(out, truth, border_mm=thickness - truth.spacing[2] / 2)
    assert scores["default"]["psnr"] > scores["cubic"]["psnr"] + 0.2, scores
    assert scores["default"]["mae_hu_body"] < scores["cubic"]["mae_hu_body"], scores
    assert np.isfinite(scores["default"]["ssim"])

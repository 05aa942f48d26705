"""Synthetic CT volumes and tiny SR training configs for the training and data tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def synthetic_ct(shape: tuple[int, int, int] = (40, 40, 40), seed: int = 0) -> np.ndarray:
    """An int16 HU phantom ``(z, y, x)``: air, an elliptic body of soft tissue with a smooth gradient,
    a few lung-like and bone-like spheres."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    body = (y / 0.85) ** 2 + (x / 0.95) ** 2 < 1.0
    hu[body] = 40.0 + 30.0 * z[body]
    for _ in range(6):
        c = rng.uniform(-0.5, 0.5, 3)
        r = rng.uniform(0.12, 0.3)
        inside = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r**2
        hu[inside & body] = rng.choice([-800.0, 700.0])
    return np.round(hu).astype(np.int16)


def write_ct(path: Path, array: np.ndarray, spacing_xyz: tuple[float, float, float]) -> Path:
    """Write ``array`` ``(z, y, x)`` with ``spacing_xyz`` (mm) as NIfTI/MHA/NRRD by the file name."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing_xyz)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def make_data(root: Path) -> dict[str, Path]:
    """A training folder (a 1 mm NIfTI and a 0.5 x 0.5 x 3 mm MHA) and a held-out validation NIfTI."""
    train = root / "train"
    write_ct(train / "a.nii.gz", synthetic_ct((40, 40, 40), 0), (1.0, 1.0, 1.0))
    write_ct(train / "b.mha", synthetic_ct((12, 48, 48), 1), (0.5, 0.5, 3.0))
    val = write_ct(root / "val" / "c.nii.gz", synthetic_ct((36, 32, 32), 2), (1.0, 1.0, 1.0))
    return {"train": train, "val": val}


def tiny_config(root: Path, data: dict[str, Path], **sections: dict[str, Any]) -> Path:
    """A config for a few CPU steps of a tiny network on the synthetic data; ``sections`` update it."""
    cfg: dict[str, Any] = {
        "trainer": {"steps": 4, "batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 1, "ema_decay": 0.9,
                    "device": "cpu", "num_workers": 0, "log_every": 1, "val_every": 2, "ckpt_every": 2,
                    "keep_checkpoints": 1, "tensorboard": False, "image_panels": 1},
        "data": {"train": [{"path": str(data["train"]), "axes": ["z", "x", "y"]}], "cache_dir": str(root / "cache"),
                 "patch_size": [24, 16, 16], "spacing_ratio": [2.0, 3.0], "noise_hu": [0.0, 5.0]},
        "val": {"sources": [{"path": str(data["val"]), "axes": ["z", "x"]}], "n_samples": 5,
                "patch_size": [24, 16, 16], "ratios": [2.0, 3.0]},
        "model": {"name": "sr_resnet", "kwargs": {"features": 4, "num_blocks": 1}},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path

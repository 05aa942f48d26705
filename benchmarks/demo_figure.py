"""The demo's picture: one coronal slice of each volume, side by side, on the original's grid.

``python benchmarks/demo_figure.py OUT.png ORIGINAL THICK LANCZOS MODEL`` resamples the thick
input (nearest neighbour, so its slabs stay visible), the Lanczos and the model result (linear)
onto the original's voxel grid in physical space (SimpleITK), takes the coronal slice through the
middle of the original, and writes the four panels in the order thick input | Lanczos | model |
original, each labelled, in a lung-to-bone window (W 1500, L -300 HU), with square pixels in mm.
Uses Pillow, no plotting library. Prints the PNG's path.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

WINDOW_HU = (1500.0, -300.0)
"""Window width and level of the panels, HU."""
PANEL_WIDTH_PX = 320
LABEL_HEIGHT_PX = 22


@dataclass(frozen=True)
class Panel:
    """One labelled panel: a volume file and how to resample it onto the original's grid."""

    label: str
    path: Path
    interpolator: int


def coronal_slice(image: sitk.Image, reference: sitk.Image, interpolator: int) -> np.ndarray:
    """The coronal slice through the middle of ``reference`` of ``image`` resampled onto its grid.

    Returns:
        ``(z, x)`` HU, float32, z increasing downwards as stored (flipped to head-up by the caller).
    """
    resampled = sitk.Resample(image, reference, sitk.Transform(), interpolator, -1024.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(resampled)  # (z, y, x)
    return array[:, array.shape[1] // 2, :]


def to_pixels(slice_hu: np.ndarray, spacing_xz: tuple[float, float]) -> Image.Image:
    """Window ``slice_hu`` ``(z, x)`` to 8 bits, head up, resized to square millimetres and the panel width."""
    width, level = WINDOW_HU
    grey = np.clip((slice_hu - (level - width / 2)) / width, 0.0, 1.0)
    picture = Image.fromarray((grey[::-1] * 255).astype(np.uint8))
    height_mm, width_mm = slice_hu.shape[0] * spacing_xz[1], slice_hu.shape[1] * spacing_xz[0]
    height_px = max(1, round(PANEL_WIDTH_PX * height_mm / width_mm))
    return picture.resize((PANEL_WIDTH_PX, height_px), Image.Resampling.BILINEAR)


def side_by_side(panels: list[Panel], reference_path: Path) -> Image.Image:
    """The labelled panels in one row."""
    reference = sitk.ReadImage(str(reference_path))
    spacing = reference.GetSpacing()
    pictures = [to_pixels(coronal_slice(sitk.ReadImage(str(p.path)), reference, p.interpolator),
                          (spacing[0], spacing[2])) for p in panels]
    height = max(p.height for p in pictures) + LABEL_HEIGHT_PX
    canvas = Image.new("L", (PANEL_WIDTH_PX * len(pictures), height), 0)
    draw = ImageDraw.Draw(canvas)
    for index, (panel, picture) in enumerate(zip(panels, pictures)):
        canvas.paste(picture, (index * PANEL_WIDTH_PX, LABEL_HEIGHT_PX))
        draw.text((index * PANEL_WIDTH_PX + 6, 5), panel.label, fill=255)
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("original", type=Path, help="the original thin-slice CT (the reference grid)")
    parser.add_argument("thick", type=Path, help="the simulated thick-slice input")
    parser.add_argument("lanczos", type=Path, help="the thick input enhanced with --model lanczos")
    parser.add_argument("model", type=Path, help="the thick input enhanced with the shipped model")
    parser.add_argument("--model-label", default="model", help="the model panel's label")
    args = parser.parse_args(argv)
    panels = [Panel("thick input", args.thick, sitk.sitkNearestNeighbor),
              Panel("Lanczos", args.lanczos, sitk.sitkLinear),
              Panel(args.model_label, args.model, sitk.sitkLinear),
              Panel("original", args.original, sitk.sitkLinear)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(panels, args.original).save(args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

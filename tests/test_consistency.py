"""Data consistency: the slab operator is the simulator's physics, its adjoint, and the projection onto the slabs."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import shared
from ctsr_models.inference.grid import through_plane_grid
from ctsr_models.inference.interpolation import interpolate_to_grid
from ctsr_models.io import read_volume
from ctsr_models.io.volume import Volume
from ctsr_models.metrics.image_metrics import psnr
from ctsr_models.physics import SlabConstraint, SlabOperator, consistency_rmse, simulate_thick_slices

log = logging.getLogger(__name__)

HEAD = "ct/tcia_cptac_gbm_head/head_ct_1.25mm.nii.gz"
CHEST_CROP = "ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz"


def _crop(volume: Volume, size: int) -> Volume:
    """The central ``size`` x ``size`` in-plane crop (all slices), as float32."""
    _, h, w = volume.shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return volume.replace(array=np.ascontiguousarray(volume.array[:, y0:y0 + size, x0:x0 + size], dtype=np.float32))


@pytest.fixture(scope="module")
def head() -> Volume:
    """Head CT 1.25 mm, central 64 x 64 in-plane (160 slices: 40 slabs of 5 mm exactly)."""
    return _crop(read_volume(shared(HEAD)), 64)


@pytest.fixture(scope="module")
def chest() -> Volume:
    """Contrast chest CT crop, 1.5 mm isotropic, central 64 x 64 in-plane."""
    return _crop(read_volume(shared(CHEST_CROP)), 64)


@pytest.mark.parametrize("profile", ["rect", "gaussian"])
def test_operator_on_output_grid_equals_the_simulator(head: Volume, profile: str) -> None:
    """Slabs of 5 mm from 1.25 mm: the DESIGN.md output grid at 1.25 mm is the thin grid, so A(thin) = simulator."""
    thick = simulate_thick_slices(head, 5.0, profile=profile)
    grid = through_plane_grid(thick, 1.25)
    op = SlabOperator.for_grid(grid, 5.0, profile)
    assert (op.n_slabs, op.n_out) == (40, 160) and grid.n_slices == head.shape[0]
    diff = np.abs(op.forward(head.array) - thick.array)
    log.info("operator vs simulator (%s 5 mm): max |diff| %.2e HU", profile, diff.max())
    assert diff.max() < 0.5 and float(np.sqrt(np.mean(diff**2))) < 1e-3


def test_overlapping_operator_matches_simulator_inside_and_renormalises_edges(head: Volume) -> None:
    """T 7.5 mm every 5 mm: slabs whose profile lies inside the output grid equal the simulator's."""
    thick = simulate_thick_slices(head, 7.5, 5.0, "rect")
    grid = through_plane_grid(thick, 1.25)
    op = SlabOperator.for_grid(grid, 7.5, "rect")
    # Output slice 0 sits at z = first_offset + c_0 on the thin grid: the thin slices it covers.
    start = int(round((grid.first_offset_mm + (thick.origin[2] - head.origin[2])) / 1.25))
    thin = head.array[start:start + grid.n_slices]
    assert thin.shape[0] == grid.n_slices
    diff = np.abs(op.forward(thin) - thick.array)
    lo, hi = grid.slab_centres_mm - 3.75, grid.slab_centres_mm + 3.75  # each slab's box, mm from output slice 0
    inside = (lo >= -0.625 - 1e-6) & (hi <= (grid.n_slices - 0.5) * 1.25 + 1e-6)
    assert inside.sum() == thick.shape[0] - 2
    assert diff[inside].max() < 0.5
    edge_rmse = float(np.sqrt(np.mean(diff[~inside] ** 2)))
    log.info("overlapping 7.5/5 mm: interior max %.2e HU, edge slabs (renormalised) RMSE %.1f HU",
             diff[inside].max(), edge_rmse)
    assert edge_rmse > 0.5  # the edge slabs saw tissue outside the grid: the documented approximation


@pytest.mark.parametrize("profile,thickness,spacing", [("rect", 5.0, 5.0), ("gaussian", 5.0, 5.0),
                                                       ("rect", 7.5, 5.0), ("gaussian", 10.0, 4.0)])
def test_adjoint_identity(profile: str, thickness: float, spacing: float) -> None:
    rng = np.random.default_rng(3)
    op = SlabOperator.from_positions(1.5 * np.arange(60), 1.5, spacing * np.arange(1, 16) + 1.0, thickness, profile)
    x = rng.normal(0, 300, (60, 7, 5))
    y = rng.normal(0, 300, (op.n_slabs, 7, 5))
    lhs = float(np.sum(op.forward(x).astype(np.float64) * y))
    rhs = float(np.sum(x * op.adjoint(y).astype(np.float64)))
    assert abs(lhs - rhs) <= 1e-5 * max(abs(lhs), abs(rhs))


@pytest.mark.parametrize("profile,thickness,spacing", [("rect", 5.0, 5.0), ("gaussian", 5.0, 5.0),
                                                       ("rect", 10.0, 5.0)])
def test_projection_of_linear_interpolation_reproduces_slabs(chest: Volume, profile: str, thickness: float,
                                                             spacing: float) -> None:
    """Real chest crop degraded to 5 mm slabs, linear interpolation onto 1.5 mm, projected: residual <= 0.01 HU.

    Rect slabs twice as thick as their spacing make ``A A^T`` ill-conditioned (its symbol vanishes at the
    slab Nyquist frequency); the projection must still land on the slabs.
    """
    thick = simulate_thick_slices(chest, thickness, spacing, profile)
    grid = through_plane_grid(thick, 1.5)
    op = SlabOperator.for_grid(grid, thickness, profile)
    linear = interpolate_to_grid(thick, grid, "linear")
    before = consistency_rmse(linear, thick.array, op)
    projected = op.project(linear, thick.array)
    after = consistency_rmse(projected, thick.array, op)
    log.info("chest %s %g/%g mm: consistency RMSE linear %.2f HU -> projected %.4f HU", profile, thickness, spacing,
             before, after)
    assert before > 1.0 and after <= 0.01
    again = op.project(projected, thick.array)  # already consistent: unchanged
    assert float(np.abs(again - projected).max()) <= 1e-3


@pytest.mark.parametrize("profile", ["rect", "gaussian"])
def test_projection_keeps_a_consistent_truth_and_does_not_worsen_psnr(head: Volume, profile: str) -> None:
    thick = simulate_thick_slices(head, 5.0, profile=profile)
    grid = through_plane_grid(thick, 1.25)
    op = SlabOperator.for_grid(grid, 5.0, profile)
    truth = head.array
    assert float(np.abs(op.project(truth, thick.array) - truth).max()) <= 0.01
    linear = interpolate_to_grid(thick, grid, "linear")
    projected = op.project(linear, thick.array)
    scored = slice(4, grid.n_slices - 4)  # less one slab at each end (DESIGN.md metric convention)
    p_lin, p_proj = psnr(linear[scored], truth[scored]), psnr(projected[scored], truth[scored])
    log.info("head %s 5 mm -> 1.25 mm: PSNR linear %.2f dB, projected %.2f dB", profile, p_lin, p_proj)
    assert p_proj >= p_lin


def test_torch_constraint_matches_numpy_projection(chest: Volume) -> None:
    thick = simulate_thick_slices(chest, 7.5, 5.0, "gaussian")
    grid = through_plane_grid(thick, 1.5)
    op = SlabOperator.for_grid(grid, 7.5, "gaussian")
    linear = interpolate_to_grid(thick, grid, "linear")
    expected = op.project(linear, thick.array)
    constrain = SlabConstraint(op, thick.array, dtype=torch.float64)
    batch = torch.from_numpy(np.stack([linear, linear + 25.0])[:, None]).to(torch.float32)
    out = constrain(batch, 7)  # the sampling loop's call: constrain(x0_pred, t)
    assert out.shape == batch.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out[0, 0].numpy(), expected, rtol=0, atol=1e-2)
    assert consistency_rmse(out[1, 0].numpy(), thick.array, op) <= 0.01  # each sample projected on its own
    assert float((out[1, 0] - out[0, 0]).abs().mean()) < 1.0  # the slabs contradict a 25 HU offset: removed


def test_bad_shapes_and_arguments_raise() -> None:
    op = SlabOperator.from_positions(np.arange(20.0), 1.0, np.array([2.0, 7.0, 12.0]), 5.0, "rect")
    with pytest.raises(ValueError, match="axis 0"):
        op.forward(np.zeros((19, 2, 2)))
    with pytest.raises(ValueError, match="in-plane"):
        op.project(np.zeros((20, 2, 2)), np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match="profile"):
        SlabOperator.from_positions(np.arange(20.0), 1.0, np.array([2.0]), 5.0, "triangle")
    with pytest.raises(ValueError, match="body_mask"):
        consistency_rmse(np.zeros((20, 2, 2)), np.zeros((3, 2, 2)), op, np.ones((3, 2, 3), bool))
    with pytest.raises(ValueError, match="x must be"):
        SlabConstraint(op, np.zeros((3, 2, 2)))(torch.zeros(1, 1, 19, 2, 2))

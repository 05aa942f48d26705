"""Data consistency of through-plane super-resolution: the slab operator and the projection onto its data.

The operator ``A`` maps a thin volume on the output grid (``n_out`` slices ``s`` mm apart along z) to the
slabs a scanner would reconstruct from it (``n_slabs`` slabs with centres ``c_k``, a rect or Gaussian slice
profile of FWHM ``T``). It is the simulator's physics itself: its matrix is
:func:`ctsr_models.physics.thick_slice.slab_weights` evaluated on the output grid, so ``A x`` equals
:func:`~ctsr_models.physics.thick_slice.simulate_thick_slices` whenever the thin grid is the simulator's.
It acts along z only, so it is one ``(n_slabs, n_out)`` matrix applied to every ``(y, x)`` column.

Edge slabs: a slab whose profile reaches past the output grid (overlapping slabs, Gaussian tails) is
cut at the grid's ends and renormalised, exactly as the simulator does at the ends of its thin data.
This assumes the tissue just outside the grid averages like the part inside; for the DESIGN.md grid
(``c_0 - S/2 .. c_last + S/2``) it affects only slabs whose profile is wider than the spacing.

Projection onto the consistent set ``{x : A x = y}`` (closest point in L2, per column)::

    P(x) = x + A^T (A A^T)^+ (y - A x)

``A A^T`` is a small banded ``(n_slabs, n_slabs)`` matrix, factorised once (symmetric eigen
decomposition, eigenvalues below ``rcond * max`` dropped: a pseudo-inverse, so a rank-deficient
operator such as rect slabs of twice their spacing gives the least-squares-consistent closest point).
The operator is linear with rows that sum to one, so the projection commutes with any affine
intensity map ``a * HU + b`` applied to both ``x`` and ``y`` (e.g. a network's [-1, 1] scale) but not
with clipping.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .thick_slice import slab_weights

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BODY_HU = -500.0  # voxels above this HU count as body in the default mask (DESIGN.md metric convention)
_CHUNK_VOXELS = 1 << 22  # voxels of one z-column chunk (float64 work arrays of ~32 MB)


class GridLike(Protocol):
    """What the operator needs from an output grid (``ctsr_models.inference.grid.ZGrid`` satisfies it)."""

    n_slices: int
    spacing: float
    slab_centres_mm: np.ndarray


@dataclass(frozen=True)
class SlabOperator:
    """The slab-degradation operator ``A`` (thin output grid -> input slabs) and its projection.

    Attributes:
        weights: ``(n_slabs, n_out)`` float64 matrix of ``A``; every row sums to 1.
        profile: slice profile, one of :data:`~ctsr_models.physics.thick_slice.PROFILES`.
        fwhm_mm: profile FWHM ``T`` in mm (box width for ``rect``).
        rcond: relative eigenvalue cut-off of the pseudo-inverse of ``A A^T``.
        gain: ``(n_out, n_slabs)`` float64 ``A^T (A A^T)^+``, computed once.
        rank: number of eigenvalues of ``A A^T`` kept.
    """

    weights: np.ndarray
    profile: str
    fwhm_mm: float
    rcond: float = 1e-8
    gain: np.ndarray = field(init=False, repr=False)
    rank: int = field(init=False)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
            raise ValueError(f"weights must be a non-empty (n_slabs, n_out) matrix, got shape {w.shape}")
        if not 0 <= self.rcond < 1:
            raise ValueError(f"rcond must be in [0, 1), got {self.rcond}")
        evals, evecs = np.linalg.eigh(w @ w.T)
        keep = evals > self.rcond * evals.max()
        pinv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "gain", w.T @ pinv)
        object.__setattr__(self, "rank", int(keep.sum()))
        if self.rank < w.shape[0]:
            log.info("slab operator: A A^T has rank %d of %d (rcond %g); the projection is least-squares",
                     self.rank, w.shape[0], self.rcond)

    @classmethod
    def from_positions(cls, out_positions: np.ndarray, out_spacing: float, slab_centres: np.ndarray,
                       fwhm_mm: float, profile: str = "rect", rcond: float = 1e-8) -> SlabOperator:
        """The operator for thin slices at ``out_positions`` and slabs centred at ``slab_centres``.

        Args:
            out_positions: ``(n_out,)`` output slice centres in mm along the slice normal, increasing.
            out_spacing: output slice spacing ``s`` in mm (each slice covers ``s`` mm).
            slab_centres: ``(n_slabs,)`` slab centres in mm on the same axis.
            fwhm_mm: profile FWHM ``T`` in mm.
            profile: one of :data:`~ctsr_models.physics.thick_slice.PROFILES`.
            rcond: relative eigenvalue cut-off of the pseudo-inverse of ``A A^T``.

        Raises:
            ValueError: unknown profile, non-positive lengths, or a slab outside the output grid.
        """
        w = slab_weights(out_positions, out_spacing, slab_centres, fwhm_mm, profile)
        return cls(w, profile, float(fwhm_mm), rcond)

    @classmethod
    def for_grid(cls, grid: GridLike, fwhm_mm: float, profile: str = "rect", rcond: float = 1e-8) -> SlabOperator:
        """The operator for the DESIGN.md output grid (``ZGrid``: slab centres relative to output slice 0)."""
        positions = grid.spacing * np.arange(grid.n_slices, dtype=np.float64)
        return cls.from_positions(positions, grid.spacing, grid.slab_centres_mm, fwhm_mm, profile, rcond)

    @property
    def n_slabs(self) -> int:
        """Number of input slabs (rows of ``A``)."""
        return int(self.weights.shape[0])

    @property
    def n_out(self) -> int:
        """Number of output slices (columns of ``A``)."""
        return int(self.weights.shape[1])

    def forward(self, thin: np.ndarray) -> np.ndarray:
        """``A x``: slabs from a thin volume.

        Args:
            thin: ``(n_out, ...)`` HU, any float or integer dtype; not modified.

        Returns:
            ``(n_slabs, ...)`` float32 HU.
        """
        return _apply_z(self.weights, thin, self.n_out, "thin")

    def adjoint(self, slabs: np.ndarray) -> np.ndarray:
        """``A^T y``: the adjoint (spreads each slab back over the slices it weighs).

        Args:
            slabs: ``(n_slabs, ...)`` array; not modified.

        Returns:
            ``(n_out, ...)`` float32.
        """
        return _apply_z(self.weights.T, slabs, self.n_slabs, "slabs")

    def project(self, thin: np.ndarray, slabs: np.ndarray) -> np.ndarray:
        """The volume closest to ``thin`` (L2 along every column) among those whose slabs are ``slabs``.

        Args:
            thin: ``(n_out, y, x)`` HU on the output grid; not modified.
            slabs: ``(n_slabs, y, x)`` acquired slabs, HU.

        Returns:
            ``(n_out, y, x)`` float32 HU, ``thin + A^T (A A^T)^+ (slabs - A thin)``.
        """
        x = np.asarray(thin)
        y = np.asarray(slabs)
        self._check(x, self.n_out, "thin")
        self._check(y, self.n_slabs, "slabs")
        if x.shape[1:] != y.shape[1:]:
            raise ValueError(f"thin {x.shape} and slabs {y.shape} must share their in-plane shape")
        xc, yc = x.reshape(self.n_out, -1), y.reshape(self.n_slabs, -1)
        out = np.empty(xc.shape, dtype=np.float32)
        for sl in _column_chunks(xc.shape[1], self.n_out + self.n_slabs):
            xs = xc[:, sl].astype(np.float64)
            out[:, sl] = xs + self.gain @ (yc[:, sl] - self.weights @ xs)
        return out.reshape(x.shape)

    def _check(self, array: np.ndarray, n: int, name: str) -> None:
        if array.ndim < 1 or array.shape[0] != n:
            raise ValueError(f"{name} must have {n} entries along axis 0 (z), got shape {array.shape}")


def _column_chunks(n_columns: int, n_rows: int) -> list[slice]:
    """Slices of columns so that ``n_rows`` x chunk float64 work arrays stay near ``_CHUNK_VOXELS``."""
    step = max(1, _CHUNK_VOXELS // max(1, n_rows))
    return [slice(i, min(i + step, n_columns)) for i in range(0, n_columns, step)]


def _apply_z(matrix: np.ndarray, array: np.ndarray, n_in: int, name: str) -> np.ndarray:
    """``matrix @ array`` along axis 0, in float64 chunks of columns, stored as float32."""
    a = np.asarray(array)
    if a.ndim < 1 or a.shape[0] != n_in:
        raise ValueError(f"{name} must have {n_in} entries along axis 0 (z), got shape {a.shape}")
    cols = a.reshape(n_in, -1)
    out = np.empty((matrix.shape[0], cols.shape[1]), dtype=np.float32)
    for sl in _column_chunks(cols.shape[1], sum(matrix.shape)):
        out[:, sl] = matrix @ cols[:, sl].astype(np.float64)
    return out.reshape((matrix.shape[0],) + a.shape[1:])


def consistency_rmse(thin: np.ndarray, slabs: np.ndarray, operator: SlabOperator,
                     body_mask: np.ndarray | None = None) -> float:
    """RMSE (HU) between the acquired slabs and the slabs of ``thin``, inside the body.

    Args:
        thin: ``(n_out, y, x)`` HU on the output grid.
        slabs: ``(n_slabs, y, x)`` acquired slabs, HU.
        operator: the slab operator of the acquisition.
        body_mask: ``(n_slabs, y, x)`` bool mask on the slab grid; default ``slabs > -500 HU``.

    Returns:
        RMSE in HU over the mask (``nan`` when the mask is empty).
    """
    y = np.asarray(slabs, dtype=np.float32)
    mask = y > BODY_HU if body_mask is None else np.asarray(body_mask, dtype=bool)
    if mask.shape != y.shape:
        raise ValueError(f"body_mask {mask.shape} must have the slabs' shape {y.shape}")
    if not mask.any():
        return float("nan")
    diff = operator.forward(thin)[mask].astype(np.float64) - y[mask]
    return float(np.sqrt(np.mean(diff**2)))


class SlabConstraint:
    """Torch projection onto the acquired slabs, for every sampling step (``constrain(x0_pred, t)``).

    Args:
        operator: the slab operator of the acquisition.
        slabs: ``(n_slabs, H, W)`` or ``(B, C, n_slabs, H, W)`` acquired slabs, in the same intensity scale
            as the tensors to constrain (HU, or any affine map of HU).
        device: where to keep the slabs and matrices (default: the slabs' device, or CPU for numpy).
        dtype: compute dtype (float32 default; float64 for exactness checks).
    """

    def __init__(self, operator: SlabOperator, slabs: np.ndarray | torch.Tensor,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        import torch

        dtype = torch.float32 if dtype is None else dtype
        y = slabs if isinstance(slabs, torch.Tensor) else torch.from_numpy(np.asarray(slabs, dtype=np.float32))
        device = y.device if device is None else torch.device(device)
        if y.ndim == 3:
            y = y[None, None]
        if y.ndim != 5 or y.shape[2] != operator.n_slabs:
            raise ValueError(f"slabs must be (n_slabs, H, W) or (B, C, n_slabs, H, W) with n_slabs = "
                             f"{operator.n_slabs}, got {tuple(y.shape)}")
        self.operator = operator
        self.slabs = y.to(device=device, dtype=dtype)
        self.weights = torch.as_tensor(operator.weights, dtype=dtype, device=device)
        self.gain = torch.as_tensor(operator.gain, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` on ``(B, C, n_out, H, W)`` -> ``(B, C, n_slabs, H, W)``."""
        import torch

        return torch.einsum("kd,bcdhw->bckhw", self.weights, x.to(device=self.weights.device, dtype=self.weights.dtype))

    def __call__(self, x: torch.Tensor, t: int | None = None) -> torch.Tensor:
        """Project ``x`` ``(B, C, n_out, H, W)`` onto ``{x : A x = slabs}`` (slabs broadcast over B, C).

        Args:
            x: predicted clean sample(s), same intensity scale as the slabs.
            t: the sampling step (``ctsr_models.diffusion`` passes it); the projection does not depend on it.

        Returns:
            A new tensor of ``x``'s shape, dtype and device.
        """
        import torch

        if x.ndim != 5 or x.shape[2] != self.operator.n_out:
            raise ValueError(f"x must be (B, C, {self.operator.n_out}, H, W), got {tuple(x.shape)}")
        if x.shape[3:] != self.slabs.shape[3:]:
            raise ValueError(f"x in-plane shape {tuple(x.shape[3:])} differs from the slabs' "
                             f"{tuple(self.slabs.shape[3:])}")
        xw = x.to(device=self.weights.device, dtype=self.weights.dtype)
        residual = self.slabs - self.forward(xw)
        return (xw + torch.einsum("dk,bckhw->bcdhw", self.gain, residual)).to(device=x.device, dtype=x.dtype)


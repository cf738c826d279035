"""The one path from a model's outputs to blocks and to the :class:`eqtb.operator.Operator`.

Every family (:mod:`eqtb.models.base`) returns *features*; the assemblers here turn them into
blocks, and :func:`to_operators` turns blocks into Operators. Training, evaluation, prediction and
the demo all go through these functions.

:class:`IrrepsAssembler` -- irreps features -> Hermitian blocks:

1. features in the basis' pair layouts (onsite: ``upper`` pairs, off-site: ``all`` pairs, see
   :mod:`eqtb.blocks`) are de-normalised per element (onsite) or per ordered element pair (off-site)
   with the dataset statistics (:mod:`eqtb.data.stats`): ``f = raw * scale + shift``;
2. the exact block transform turns them into (F, F) blocks in the full-basis layout;
3. Hermiticity by construction: an onsite block is ``(B + B^T) / 2``; the block of canonical bond
   e = (i, j, R) is ``(B_e + B_{rev(e)}^T) / 2`` from the two directed edges i->j and j->i, so
   ``O_ji(-R) = O_ij(R)^T`` holds exactly and the result does not depend on which direction is
   called canonical (permutation invariance).

:class:`SKAssembler` -- two-centre integrals -> blocks. In the frame of a directed edge (bond along
+z, the m = 0 axis, :func:`eqtb.nn.so2.directed_frames`) a two-centre block between shells a and b
is diagonal in m with one value per |m|: the Slater-Koster integrals ``V_sigma, V_pi, V_delta, ...``
(convention ``"sk"``, ``min(l_a, l_b) + 1`` per shell pair, sigma first). In irreps form the same
block is one number per L with ``(-1)^(l_a + l_b + L) = 1`` on the M = 0 component (convention
``"L"``); :attr:`SKAssembler.sk_to_L` maps one to the other exactly. The integrals are placed along
the bond with ``Y_L(r)`` -- the m = 0 column of the frame's Wigner-D -- and assembled as irreps
features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eqtb.basis import Basis
from eqtb.blocks import BlockTransform
from eqtb.operator import Operator
from eqtb.quantities import HAMILTONIAN, SPIN_ORBIT

__all__ = ["IrrepsAssembler", "SKAssembler", "sk_integral_names", "to_operators", "transpose_map"]


def transpose_map(transform: BlockTransform) -> tuple[np.ndarray, np.ndarray]:
    """(index, sign) such that the features of B^T are ``sign * f[index]`` ('all' layout)."""
    dim = transform.dim
    eye = torch.eye(dim, dtype=torch.float64)
    T = transform.to_features(transform.to_blocks(eye).transpose(1, 2)).numpy()  # row k: features of e_k^T
    index = np.abs(T).argmax(axis=0)
    sign = np.sign(T[index, np.arange(dim)])
    assert np.allclose(np.abs(T).sum(axis=0), 1.0), "transposition is not a signed permutation"
    return index, sign


class IrrepsAssembler(nn.Module):
    """Normalisation tables and irreps feature -> Hermitian block assembly for one operator.
    ``stats``: :class:`eqtb.data.stats.OperatorStats` of the training targets (None: unit scale,
    zero shift)."""

    kind = "irreps"

    def __init__(self, basis: Basis, stats=None):
        super().__init__()
        self.basis = basis
        self.onsite_transform = BlockTransform(basis, "upper")
        self.offsite_transform = BlockTransform(basis, "all")
        T = basis.n_types
        on_shift = np.zeros((T, self.onsite_transform.dim))
        on_scale = np.ones((T, self.onsite_transform.dim))
        off_shift = np.zeros((T * T, self.offsite_transform.dim))
        off_scale = np.ones((T * T, self.offsite_transform.dim))
        if stats is not None:
            on_shift, on_scale = stats.onsite.expanded()
            shift, scale = stats.offsite.expanded()
            index, sign = transpose_map(self.offsite_transform)
            for g, (a, b) in enumerate(stats.pair_types):  # stats: unordered pairs, lighter type as rows
                off_shift[a * T + b], off_scale[a * T + b] = shift[g], scale[g]
                off_shift[b * T + a], off_scale[b * T + a] = sign * shift[g][index], scale[g][index]
        f32 = torch.get_default_dtype()
        self.register_buffer("onsite_shift", torch.as_tensor(on_shift, dtype=f32))
        self.register_buffer("onsite_scale", torch.as_tensor(on_scale, dtype=f32))
        self.register_buffer("offsite_shift", torch.as_tensor(off_shift, dtype=f32))
        self.register_buffer("offsite_scale", torch.as_tensor(off_scale, dtype=f32))

    @property
    def onsite_dim(self) -> int:
        return self.onsite_transform.dim

    @property
    def offsite_dim(self) -> int:
        return self.offsite_transform.dim

    def onsite(self, raw: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """(N, onsite_dim) normalised features -> (N, F, F) symmetric blocks."""
        f = raw * self.onsite_scale[types] + self.onsite_shift[types]
        B = self.onsite_transform.to_blocks(f, symmetric=True)
        return 0.5 * (B + B.transpose(1, 2))

    def offsite(self, raw: torch.Tensor, ti: torch.Tensor, tj: torch.Tensor, frames=None) -> torch.Tensor:
        """(2E, offsite_dim) normalised features of the directed edges [forward; reverse] ->
        (E, F, F) blocks of the canonical bonds (``frames`` unused: features are in the lab frame)."""
        k = ti * self.basis.n_types + tj
        f = raw * self.offsite_scale[k] + self.offsite_shift[k]
        B = self.offsite_transform.to_blocks(f)
        E = B.shape[0] // 2
        return 0.5 * (B[:E] + B[E:].transpose(1, 2))


def sk_integral_names(basis: Basis) -> list[str]:
    """Names of the ``"sk"``-convention integrals of the 'all' pair layout, in order, e.g.
    ``"1s-1p:sigma"``, ``"1p-1p:pi"``."""
    names = ["sigma", "pi", "delta", "phi", "gamma", "eta"]
    return [f"{p.name}:{names[m]}" for p in basis.all_pairs for m in range(min(p.a.l, p.b.l) + 1)]


class SKAssembler(IrrepsAssembler):
    """Two-centre integrals of directed edges -> blocks (see the module docstring).

    ``convention``: ``"L"`` (one integral per pair and even L, :attr:`L` / :attr:`start` say which
    feature component each fills) or ``"sk"`` (sigma, pi, delta, ... per pair, named by
    :func:`sk_integral_names`). Normalisation as :class:`IrrepsAssembler` (``stats``)."""

    kind = "sk"

    def __init__(self, basis: Basis, stats=None, convention: str = "L"):
        super().__init__(basis, stats)
        if convention not in ("L", "sk"):
            raise ValueError(f"convention must be 'L' or 'sk', got {convention!r}")
        self.convention = convention
        tr = self.offsite_transform
        L, comp, lmax = [], [], 0
        for p in tr.pairs:
            for ell in p.irreps_l:
                if (-1) ** (p.a.l + p.b.l + ell) == 1:
                    L.append(ell)
                    comp.append(p.start + sum(2 * x + 1 for x in p.irreps_l if x < ell))
                lmax = max(lmax, ell)
        self.lmax = lmax
        self.register_buffer("L", torch.tensor(L), persistent=False)
        self.register_buffer("start", torch.tensor(comp), persistent=False)
        self.register_buffer("sk_to_L", torch.as_tensor(self._sk_to_L(comp), dtype=torch.get_default_dtype()),
                             persistent=False)

    @property
    def n_integrals(self) -> int:
        return len(self.L)

    def _sk_to_L(self, comp: list[int]) -> np.ndarray:
        """(n_integrals, n_integrals) matrix M with ``integrals_L = integrals_sk @ M``: the M = 0
        features of the bond-frame block holding V_|m| on the (m, m) and (-m, -m) entries of each
        shell pair. Exact (float64); checks that nothing else is non-zero."""
        tr = self.offsite_transform
        F = self.basis.full_norb
        axis = [c + int(ell) for c, ell in zip(comp, self.L.tolist())]  # the M = 0 components
        rows = []
        for p in tr.pairs:
            for m in range(min(p.a.l, p.b.l) + 1):
                B = np.zeros((F, F))
                for s in {m, -m}:
                    B[p.row + p.a.l + s, p.col + p.b.l + s] = 1.0
                f = tr.to_features(torch.as_tensor(B[None])).numpy()[0]
                kept = f[axis]
                rest = f.copy()
                rest[axis] = 0.0
                assert np.abs(rest).max() < 1e-12, "a two-centre block has components off the bond axis"
                rows.append(kept)
        M = np.array(rows)
        assert M.shape == (len(comp), len(comp)), "as many SK integrals as even-L components"
        return M

    def lab_features(self, integrals: torch.Tensor, frames) -> torch.Tensor:
        """(n, n_integrals) integrals of directed edges -> (n, offsite_dim) features ('all' layout,
        lab frame, not normalised) of their blocks; ``frames``: the edges' Wigner-D up to
        :attr:`lmax`, whose m = 0 axis is the bond direction (:func:`eqtb.nn.so2.directed_frames`)."""
        if self.convention == "sk":
            integrals = integrals @ self.sk_to_L.to(integrals)
        feats = integrals.new_zeros((integrals.shape[0], self.offsite_dim))
        for ell in range(self.lmax + 1):
            sel = torch.nonzero(self.L == ell).flatten()
            if len(sel) == 0:
                continue
            axis = frames[ell][:, :, ell]  # (n, 2L+1): Y_L(r)/sqrt(2L+1), unit norm
            idx = self.start[sel][:, None] + torch.arange(2 * ell + 1, device=integrals.device)[None, :]
            feats[:, idx.flatten()] = (integrals[:, sel, None] * axis[:, None, :]).reshape(len(feats), idx.numel())
        return feats

    def offsite(self, integrals: torch.Tensor, ti: torch.Tensor, tj: torch.Tensor, frames=None) -> torch.Tensor:
        """integrals: (2E, n_integrals) of the directed edges [fwd; rev]; ``frames``: their Wigner-D
        up to :attr:`lmax` (:func:`eqtb.nn.so2.directed_frames`). Returns the (E, F, F) blocks of
        the canonical bonds."""
        return super().offsite(self.lab_features(integrals, frames), ti, tj)


def to_operators(structure, basis: Basis, i, j, R, blocks: dict) -> dict[str, Operator]:
    """``{quantity: (onsite (N, F, F), offsite (E, F, F))}`` torch or numpy blocks of the canonical
    bonds ``(i, j, R)`` -> ``{quantity: Operator}`` in float64 on the CPU. An entry
    :data:`eqtb.quantities.SPIN_ORBIT` ((N, 2F, 2F) complex) becomes the Hamiltonian's ``soc``
    (complex128)."""
    def arr(x, dtype=np.float64):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=dtype)

    i, j, R = (np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x) for x in (i, j, R))
    soc = arr(blocks[SPIN_ORBIT], np.complex128) if SPIN_ORBIT in blocks else None
    return {q: Operator(structure, basis, arr(b[0]), i, j, R, arr(b[1]), soc if q == HAMILTONIAN else None)
            for q, b in blocks.items() if q != SPIN_ORBIT}

"""Output heads: irreps features -> orbital blocks of an operator (H, D or S).

Every head ends the same way (:class:`BlockAssembler`):

1. features in the basis' pair layouts (onsite: ``upper`` pairs, off-site: ``all`` pairs, see
   :mod:`eqtb.blocks`) are de-normalised per element (onsite) or per ordered element pair (off-site)
   with the dataset statistics (:mod:`eqtb.data.stats`): ``f = raw * scale + shift``;
2. the exact block transform turns them into (F, F) blocks in the full-basis layout;
3. Hermiticity by construction: an onsite block is ``(B + B^T) / 2``; the block of canonical bond
   e = (i, j, R) is ``(B_e + B_{rev(e)}^T) / 2`` from the two directed edges i->j and j->i, so
   ``O_ji(-R) = O_ij(R)^T`` holds exactly and the result does not depend on which direction is
   called canonical (permutation invariance).

The two-centre overlap head (:class:`OverlapHead`) predicts Slater-Koster-like integrals from
(Z_i, Z_j, r_ij) only, one per orbital pair and L with ``(-1)^(l_a + l_b + L) = 1`` (the sigma, pi,
delta, ... integrals in irreps form), and places them along the bond with ``Y_L(r)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eqtb.basis import Basis
from eqtb.blocks import BlockTransform
from eqtb.nn.radial import MLP


def transpose_map(transform: BlockTransform) -> tuple[np.ndarray, np.ndarray]:
    """(index, sign) such that the features of B^T are ``sign * f[index]`` ('all' layout)."""
    dim = transform.dim
    eye = torch.eye(dim, dtype=torch.float64)
    T = transform.to_features(transform.to_blocks(eye).transpose(1, 2)).numpy()  # row k: features of e_k^T
    index = np.abs(T).argmax(axis=0)
    sign = np.sign(T[index, np.arange(dim)])
    assert np.allclose(np.abs(T).sum(axis=0), 1.0), "transposition is not a signed permutation"
    return index, sign


class BlockAssembler(nn.Module):
    """Normalisation tables and feature -> Hermitian block assembly for one operator."""

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

    def offsite(self, raw: torch.Tensor, ti: torch.Tensor, tj: torch.Tensor) -> torch.Tensor:
        """(2E, offsite_dim) normalised features of the directed edges [forward; reverse] ->
        (E, F, F) blocks of the canonical bonds."""
        k = ti * self.basis.n_types + tj
        f = raw * self.offsite_scale[k] + self.offsite_shift[k]
        B = self.offsite_transform.to_blocks(f)
        E = B.shape[0] // 2
        return 0.5 * (B[:E] + B[E:].transpose(1, 2))


class OverlapHead(nn.Module):
    """Two-centre overlap: SK-like integrals from (type_i, type_j, radial basis of r_ij) by an
    MLP, rotated onto the bond; onsite blocks are learnable per-element constants (exact for a
    two-centre integral). Initialised so that an untrained head predicts the dataset means."""

    def __init__(self, basis: Basis, n_radial: int, neurons: list[int], stats=None):
        super().__init__()
        self.assembler = BlockAssembler(basis, stats)
        tr = self.assembler.offsite_transform
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
        T = basis.n_types
        self.mlp = MLP([n_radial + 2 * T, *neurons, len(L)])
        self.onsite_features = nn.Parameter(torch.zeros(T, self.assembler.onsite_dim))

    def onsite(self, types: torch.Tensor) -> torch.Tensor:
        """(N, F, F) onsite blocks of atoms of element types ``types``."""
        return self.assembler.onsite(self.onsite_features[types], types)

    def offsite(self, radial: torch.Tensor, D: list[torch.Tensor], ti: torch.Tensor, tj: torch.Tensor) -> torch.Tensor:
        """radial: (2E, n_radial) basis of the directed edges [fwd; rev]; D: their frames up to
        ``lmax``; ti/tj: (2E,) types of both ends. Returns the (E, F, F) blocks of the canonical bonds."""
        T = self.assembler.basis.n_types
        x = torch.cat([radial, nn.functional.one_hot(ti, T).to(radial.dtype),
                       nn.functional.one_hot(tj, T).to(radial.dtype)], dim=1)
        sk = self.mlp(x)  # (2E, n_integrals)
        feats = radial.new_zeros((radial.shape[0], self.assembler.offsite_dim))
        for ell in range(self.lmax + 1):
            sel = torch.nonzero(self.L == ell).flatten()
            if len(sel) == 0:
                continue
            axis = D[ell][:, :, ell]  # (2E, 2L+1): Y_L(r)/sqrt(2L+1), unit norm
            idx = self.start[sel][:, None] + torch.arange(2 * ell + 1, device=radial.device)[None, :]
            feats[:, idx.flatten()] = (sk[:, sel, None] * axis[:, None, :]).reshape(len(feats), -1)
        return self.assembler.offsite(feats, ti, tj)

"""Exact change of basis between orbital blocks and irreps features.

Blocks live in the full-basis layout of :class:`eqtb.basis.Basis`: tensors ``(E, F, F)`` with
``F = basis.full_norb``. A feature vector holds, for every orbital pair of a pair layout
(``basis.upper_pairs`` for onsite / DeePTB-compatible features, ``basis.all_pairs`` for complete
off-site blocks) and in that order, the concatenation over L = |l_a - l_b| .. l_a + l_b of the 2L+1
components of irrep (L, (-1)^(l_a+l_b)); this is DeePTB's E3 output layout. The map is orthogonal
(:func:`eqtb.so3.coupling_matrix`), so ``to_blocks(to_features(B))`` reproduces every sub-block of the
layout exactly (to float64 round-off), and norms are preserved.

All work is done per pair kind (l_a, l_b): one gather, one matrix product over all edges and all
pairs of that kind, one scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eqtb.basis import Basis, OrbitalPair
from eqtb.so3 import coupling_matrix


@dataclass
class _Group:
    la: int
    lb: int
    start: int  # first feature index of the group (its features are contiguous)
    block_index: torch.Tensor  # (n_pairs, da*db) positions in the flattened F*F block
    transposed_index: torch.Tensor  # same sub-blocks seen from the transposed block
    coupling: torch.Tensor  # (da*db, da*db) orthogonal
    distinct: torch.Tensor  # (n_pairs,) bool: pair of two different shells


class BlockTransform:
    """Blocks (E, F, F) <-> features (E, dim) for the pairs ``layout`` ("upper" or "all").

    ``symmetric=True`` (only with "upper") rebuilds the lower shell pairs of a block as transposes
    of the upper ones, as for onsite blocks of real symmetric operators."""

    def __init__(self, basis: Basis, layout: str = "upper"):
        if layout not in ("upper", "all"):
            raise ValueError(f"layout must be 'upper' or 'all', got {layout!r}")
        self.basis = basis
        self.layout = layout
        pairs: tuple[OrbitalPair, ...] = basis.upper_pairs if layout == "upper" else basis.all_pairs
        self.pairs = pairs
        self.irreps = basis.irreps(pairs)
        self.dim = pairs[-1].start + pairs[-1].size
        F = basis.full_norb
        self.groups: list[_Group] = []
        k = 0
        while k < len(pairs):
            la, lb = pairs[k].a.l, pairs[k].b.l
            n = k
            while n < len(pairs) and (pairs[n].a.l, pairs[n].b.l) == (la, lb):
                n += 1
            da, db = 2 * la + 1, 2 * lb + 1
            rows = np.array([p.row for p in pairs[k:n]])[:, None, None] + np.arange(da)[None, :, None]
            cols = np.array([p.col for p in pairs[k:n]])[:, None, None] + np.arange(db)[None, None, :]
            self.groups.append(_Group(
                la, lb, pairs[k].start,
                torch.as_tensor((rows * F + cols).reshape(n - k, da * db)),
                torch.as_tensor((cols * F + rows).reshape(n - k, da * db)),
                torch.as_tensor(coupling_matrix(la, lb)),
                torch.as_tensor([p.a != p.b for p in pairs[k:n]]),
            ))
            k = n

    def _coupling(self, g: _Group, like: torch.Tensor) -> torch.Tensor:
        return g.coupling.to(dtype=like.dtype, device=like.device)

    def to_features(self, blocks: torch.Tensor) -> torch.Tensor:
        """(E, F, F) blocks -> (E, dim) features (same dtype/device; numpy arrays accepted)."""
        blocks = torch.as_tensor(blocks)
        E, F = blocks.shape[0], self.basis.full_norb
        flat = blocks.reshape(E, F * F)
        out = blocks.new_empty((E, self.dim))
        for g in self.groups:
            sub = flat[:, g.block_index.to(flat.device)]  # (E, n, d)
            res = sub @ self._coupling(g, flat)
            out[:, g.start:g.start + res.shape[1] * res.shape[2]] = res.reshape(E, -1)
        return out

    def to_blocks(self, features: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """(E, dim) features -> (E, F, F) blocks; shell pairs outside the layout are zero unless
        ``symmetric`` (upper layout) fills them with the transposes of the upper pairs."""
        features = torch.as_tensor(features)
        if symmetric and self.layout != "upper":
            raise ValueError("symmetric reconstruction needs the 'upper' layout")
        E, F = features.shape[0], self.basis.full_norb
        flat = features.new_zeros((E, F * F))
        for g in self.groups:
            n, d = g.block_index.shape
            sub = features[:, g.start:g.start + n * d].reshape(E, n, d) @ self._coupling(g, features).T
            flat[:, g.block_index.to(flat.device)] = sub
            if symmetric and g.distinct.any():
                # lower shell pairs are the transposes of the strictly upper ones
                off = g.distinct.to(flat.device)
                flat[:, g.transposed_index.to(flat.device)[off]] = sub[:, off]
        return flat.reshape(E, F, F)

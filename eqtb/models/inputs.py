"""Torch form of one or more bond graphs, as every model consumes them.

A :class:`ModelInputs` is the concatenation of the :class:`eqtb.structure.Graph` of one or more
structures (a batch): atoms numbered consecutively across structures, bonds in each graph's
canonical half (``i < j``, or ``i == j`` with R lexicographically positive), edge vectors in
Angstrom. The reverse direction of bond e is implicit: models work on the *directed* list
``src = [i, j]``, ``dst = [j, i]``, ``vectors = [d, -d]``, so directed edge ``e + n_edges`` is the
reverse of ``e``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from eqtb.basis import Basis
from eqtb.structure import Graph


@dataclass
class ModelInputs:
    """types: (N,) element-type index in the basis; i, j: (E,) canonical bonds; vectors: (E, 3)
    bond vectors (Angstrom); R: (E, 3) cell shifts; atom_offsets / edge_offsets: (B+1,) boundaries of
    the structures of the batch."""

    types: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    vectors: torch.Tensor
    R: torch.Tensor
    atom_offsets: torch.Tensor
    edge_offsets: torch.Tensor
    cache: dict = field(default_factory=dict, repr=False)  # model token -> its precomputed geometry

    @property
    def n_atoms(self) -> int:
        return int(self.types.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.i.shape[0])

    @property
    def src(self) -> torch.Tensor:
        return torch.cat([self.i, self.j])

    @property
    def dst(self) -> torch.Tensor:
        return torch.cat([self.j, self.i])

    @property
    def directed_vectors(self) -> torch.Tensor:
        return torch.cat([self.vectors, -self.vectors])

    @classmethod
    def from_graph(cls, graph: Graph, basis: Basis, dtype: torch.dtype = torch.float32) -> ModelInputs:
        types = torch.as_tensor(basis.types_of(graph.structure.numbers), dtype=torch.long)
        return cls(types, torch.as_tensor(graph.i, dtype=torch.long), torch.as_tensor(graph.j, dtype=torch.long),
                   torch.as_tensor(graph.vectors, dtype=dtype), torch.as_tensor(graph.R, dtype=torch.long),
                   torch.tensor([0, len(types)]), torch.tensor([0, graph.n_edges]))

    def to(self, device=None, dtype: torch.dtype | None = None) -> ModelInputs:
        """Copy on ``device`` with float tensors in ``dtype`` (the cache is dropped)."""
        return ModelInputs(self.types.to(device), self.i.to(device), self.j.to(device),
                           self.vectors.to(device=device, dtype=dtype or self.vectors.dtype), self.R.to(device),
                           self.atom_offsets, self.edge_offsets)


def collate(items: list[ModelInputs]) -> ModelInputs:
    """One batch from several structures (atom indices shifted; each model's geometry cache merged
    when every item holds caches of the same models)."""
    if len(items) == 1:
        return items[0]
    na = np.cumsum([0] + [x.n_atoms for x in items])
    ne = np.cumsum([0] + [x.n_edges for x in items])
    out = ModelInputs(
        torch.cat([x.types for x in items]),
        torch.cat([x.i + int(o) for x, o in zip(items, na)]),
        torch.cat([x.j + int(o) for x, o in zip(items, na)]),
        torch.cat([x.vectors for x in items]),
        torch.cat([x.R for x in items]),
        torch.as_tensor(na), torch.as_tensor(ne))
    tokens = set(items[0].cache)
    if tokens and all(set(x.cache) == tokens for x in items):
        out.cache = {t: _merge_geometry([x.cache[t] for x in items], [x.n_edges for x in items]) for t in tokens}
    return out


def _merge_geometry(caches: list[dict], n_edges) -> dict:
    """One model's geometry caches of several structures merged: the entries every structure has
    that are per-directed-edge tensors (or lists of them, one per l); per-chunk geometry (it
    depends on the chunking of one structure) is left to be recomputed."""
    keys = set(caches[0]).intersection(*caches[1:])
    keep = [k for k in keys if all(isinstance(v, torch.Tensor) or (isinstance(v, list) and all(
        isinstance(t, torch.Tensor) for t in v)) for v in (c[k] for c in caches))]
    return {k: _cat_directed([c[k] for c in caches], n_edges) for k in keep}


def _cat_directed(parts, n_edges):
    """Concatenate per-directed-edge cached tensors (forward halves first, then reverse halves)."""
    if isinstance(parts[0], list):
        return [_cat_directed([p[k] for p in parts], n_edges) for k in range(len(parts[0]))]
    fwd = [p[:n] for p, n in zip(parts, n_edges)]
    rev = [p[n:] for p, n in zip(parts, n_edges)]
    return torch.cat(fwd + rev)

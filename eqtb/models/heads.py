"""Output heads shared by the families.

:class:`OverlapHead` -- the two-centre overlap: Slater-Koster-like integrals (one per orbital pair
and L with ``(-1)^(l_a + l_b + L) = 1``, the sigma, pi, delta, ... integrals in irreps form) from
(Z_i, Z_j, r_ij) only, by an MLP; onsite blocks are learnable per-element constants (exact for a
two-centre integral). Its outputs are assembled by :class:`eqtb.models.assembly.SKAssembler`.

:class:`PairOnsite` -- the part of the onsite features that is a sum of two-body terms over an
atom's neighbours, ``norm * sum_j w(s_ij) Y_L(r_ij)`` per natural-parity channel of the onsite
layout, ``w`` a linear function of the edge scalars. An onsite block of an atom in a crystal is
dominated by such terms (the potential of each neighbour seen by the atom's own orbitals); a
family adds them to its onsite features, so that they need not be rebuilt through the node
layers and gates from the few onsite blocks a dataset holds.
"""

from __future__ import annotations

import torch
from torch import nn

from eqtb.basis import Basis
from eqtb.models.assembly import SKAssembler
from eqtb.nn.radial import MLP
from eqtb.nn.so2 import IrrepsLayout


class OverlapHead(nn.Module):
    """Integrals from (type_i, type_j, radial basis of r_ij) by an MLP of hidden widths
    ``neurons``. Initialised so that an untrained head predicts the dataset means (``stats``)."""

    def __init__(self, basis: Basis, n_radial: int, neurons: list[int], stats=None):
        super().__init__()
        self.assembler = SKAssembler(basis, stats, convention="L")
        T = basis.n_types
        self.mlp = MLP([n_radial + 2 * T, *neurons, self.assembler.n_integrals])
        self.onsite_features = nn.Parameter(torch.zeros(T, self.assembler.onsite_dim))

    @property
    def lmax(self) -> int:
        return self.assembler.lmax

    def integrals(self, radial: torch.Tensor, ti: torch.Tensor, tj: torch.Tensor) -> torch.Tensor:
        """radial: (2E, n_radial) basis of the directed edges [fwd; rev]; ti/tj: (2E,) types of
        both ends. Returns the (2E, n_integrals) normalised integrals."""
        T = self.assembler.basis.n_types
        x = torch.cat([radial, nn.functional.one_hot(ti, T).to(radial.dtype),
                       nn.functional.one_hot(tj, T).to(radial.dtype)], dim=1)
        return self.mlp(x)


class PairOnsite(nn.Module):
    """Onsite features ``norm * sum_j w(s_ij) Y_L(r_ij)`` (module docstring) in the parts of the
    onsite ``layout`` (:class:`eqtb.nn.so2.IrrepsLayout`), from edge scalars of width ``latent_dim``.
    ``w`` starts at zero (a model's initial predictions are unchanged) and is learned; ``norm``
    (a persistent buffer: it travels with checkpoints) is the family's neighbour-sum normalisation,
    e.g. ``1 / sqrt(avg_num_neighbors)``. Channels of unnatural parity get nothing (no function of
    a bond vector alone has their symmetry). Strictly local: atom i's sum reads its own bonds."""

    def __init__(self, layout: IrrepsLayout, latent_dim: int, norm: float = 1.0):
        super().__init__()
        self.layout = layout
        self.register_buffer("natural", layout.natural(), persistent=False)
        self.register_buffer("norm", torch.tensor(float(norm)))
        self.lin = nn.Linear(latent_dim, layout.sizes[0])
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    #: entries a checkpoint written before this head existed lacks (:func:`eqtb.models.base.state_mismatch`)
    optional_state = ("norm", "lin.weight", "lin.bias")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint written before this head existed loads with zero weights: the model it
        describes, exactly (the head then adds nothing)."""
        for name, value in (("norm", self.norm), ("lin.weight", self.lin.weight), ("lin.bias", self.lin.bias)):
            state_dict.setdefault(prefix + name, torch.zeros_like(value) if name != "norm" else value.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def add(self, acc: list | None, s: torch.Tensor, D: list[torch.Tensor], src: torch.Tensor, n_atoms: int,
            envelope: torch.Tensor) -> list:
        """``acc`` (parts of ``n_atoms`` atoms, or None for zeros) plus the terms of the directed
        edges with scalars ``s`` (e, latent_dim), frames ``D`` and source atoms ``src`` (e,): the
        sums can be built chunk by chunk of edges. ``envelope`` (e, 1): the smooth cutoff of each
        edge, multiplying its term, so that a neighbour crossing the cutoff enters continuously
        (edge scalars alone do not vanish at the cutoff)."""
        if acc is None:
            acc = self.layout.zeros(n_atoms, s)
        w = self.lin(s) * self.natural * self.norm.to(s)
        parts = self.layout.along_axis(w * envelope, D)
        for a, p in zip(acc, parts):
            if a is not None:
                a.index_add_(0, src, p)
        return acc

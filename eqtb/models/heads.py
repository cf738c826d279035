"""Output heads shared by the families.

:class:`OverlapHead` -- the two-centre overlap: Slater-Koster-like integrals (one per orbital pair
and L with ``(-1)^(l_a + l_b + L) = 1``, the sigma, pi, delta, ... integrals in irreps form) from
(Z_i, Z_j, r_ij) only, by an MLP; onsite blocks are learnable per-element constants (exact for a
two-centre integral). Its outputs are assembled by :class:`eqtb.models.assembly.SKAssembler`.
"""

from __future__ import annotations

import torch
from torch import nn

from eqtb.basis import Basis
from eqtb.models.assembly import SKAssembler
from eqtb.nn.radial import MLP


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

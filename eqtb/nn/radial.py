"""Radial bases with smooth cutoffs, and a plain MLP.

Distances in Angstrom. The basis of a bond of length r with cutoff r_c is
``b_n(r) = sqrt(2/r_c) sin(n pi r / r_c) / r * f(r / r_c)``, n = 1..n_basis, with the envelope
``f`` either DeePTB's polynomial cutoff of order p (value 1 at 0, smooth to order p at r_c) or
``(cos(pi r / r_c) + 1) / 2``; both vanish with their first derivatives at r_c, so a neighbour
crossing the sphere changes nothing abruptly. Bonds at or beyond r_c give exactly zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def polynomial_cutoff(x: torch.Tensor, p: float = 6.0) -> torch.Tensor:
    """Envelope of x = r / r_c: 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), 0 beyond 1."""
    f = (1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2))
    return f * (x < 1.0)


def cosine_cutoff(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.cos(math.pi * x) + 1.0) * (x < 1.0)


class BesselBasis(nn.Module):
    """Sine (spherical Bessel j0) radial basis times a smooth cutoff, per-bond cutoff radii."""

    def __init__(self, n_basis: int = 10, cutoff: str = "polynomial", p: float = 6.0):
        super().__init__()
        if cutoff not in ("polynomial", "cosine"):
            raise ValueError(f"cutoff_type must be 'polynomial' or 'cosine', got {cutoff!r}")
        self.n_basis, self.cutoff, self.p = n_basis, cutoff, p
        self.register_buffer("n", torch.arange(1, n_basis + 1, dtype=torch.float32) * math.pi, persistent=False)

    def forward(self, r: torch.Tensor, r_cut: torch.Tensor) -> torch.Tensor:
        """(E,) lengths and cutoffs -> (E, n_basis)."""
        x = (r / r_cut).unsqueeze(1)
        env = polynomial_cutoff(x, self.p) if self.cutoff == "polynomial" else cosine_cutoff(x)
        return math.sqrt(2.0) * torch.sin(self.n.to(r.dtype) * x) / x * env / r_cut.sqrt().unsqueeze(1)


class MLP(nn.Sequential):
    """Linear layers with SiLU in between (none after the last)."""

    def __init__(self, sizes: list[int], activation: type[nn.Module] = nn.SiLU):
        layers: list[nn.Module] = []
        for k in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[k], sizes[k + 1]))
            if k < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)

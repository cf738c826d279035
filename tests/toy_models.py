"""Small analytic tight-binding models for tests: an sp3 two-centre (Slater-Koster-like) model
whose blocks rotate exactly with the structure, so eigenvalues are invariant under rotations and
cell choices. Not a physical parametrisation."""

from __future__ import annotations

import numpy as np

from eqtb.basis import Basis
from eqtb.structure import Structure, build_graph
from eqtb.operator import Operator

SI_A = 5.43  # Angstrom, conventional cubic lattice constant


def silicon_primitive(a: float = SI_A) -> Structure:
    """Two-atom diamond Si in ASE's standard FCC primitive cell."""
    cell = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    pos = np.array([[0, 0, 0], [0.25, 0.25, 0.25]]) @ cell
    return Structure([14, 14], pos, cell, [True] * 3)


def sp_blocks(structure: Structure, r_max: float = 4.0, overlap: bool = False) -> dict[str, np.ndarray]:
    """Blocks of an sp3 model with two-centre integrals (eV) decaying as exp(-2 (d - 2.35 A)) up to
    ``r_max`` (first and second neighbours in Si), eqtb orbital order s, p_y, p_z, p_x.
    ``overlap``: small two-centre overlaps with unit onsite blocks instead."""
    if overlap:
        es, ep, vss, vsp, vpps, vppp = 1.0, 1.0, 0.12, 0.10, 0.14, -0.04
    else:
        es, ep, vss, vsp, vpps, vppp = -4.2, 1.7, -2.0, 2.5, 3.0, -0.9
    g = build_graph(structure, r_max)
    blocks = {}
    for a in range(structure.natoms):
        blocks[f"{a}_{a}_0_0_0"] = np.diag([es, ep, ep, ep])
    perm = [1, 2, 0]  # (x, y, z) -> (y, z, x)
    for i, j, R, d in zip(g.i, g.j, g.R, g.vectors):
        u = (d / np.linalg.norm(d))[perm]
        scale = np.exp(-2.0 * (np.linalg.norm(d) - 2.35))
        b = np.zeros((4, 4))
        b[0, 0] = vss
        b[0, 1:] = vsp * u
        b[1:, 0] = -vsp * u
        b[1:, 1:] = (vpps - vppp) * np.outer(u, u) + vppp * np.eye(3)
        blocks[f"{i}_{j}_{R[0]}_{R[1]}_{R[2]}"] = scale * b
    return blocks


def sp_model(structure: Structure, overlap: bool = True) -> tuple[Operator, Operator | None]:
    basis = Basis({"Si": "1s1p"})
    H = Operator.from_blocks(structure, basis, sp_blocks(structure))
    S = Operator.from_blocks(structure, basis, sp_blocks(structure, overlap=True)) if overlap else None
    return H, S

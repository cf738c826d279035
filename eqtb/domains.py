"""Domain decomposition of a structure for prediction across processes.

:func:`decompose` splits the atoms of a structure into ``n_domains`` slabs of (nearly) equal atom
count along one direction and returns, for one of them, a :class:`Domain`: the atoms it *owns*
(whose rows of H and S its process holds) and a *cluster*, the owned atoms plus every periodic
image of any atom within ``halo`` Angstrom of the slab, as a structure of its own. A model whose
blocks depend only on atoms within the halo (:meth:`eqtb.models.base.Locality.domain_halo`) gives
the owned atoms' blocks exactly when applied to the cluster alone.

The split direction is a lattice direction ``a_k`` (for a cell of full rank): the slabs are
bounded by lattice planes spanned by the other two vectors, the coordinate ``t = r . n_k`` along
their unit normal, with period ``d_k = a_k . n_k`` (the interplanar spacing) when the structure is
periodic along ``a_k``. Of the three, the one with the largest spacing (periodic) or extent
(non-periodic) is taken, so the halo is the smallest fraction of a slab. A structure without a
cell (a molecule) is split along the Cartesian axis of its largest extent. Slabs are quantiles of
``t`` (wrapped into ``[0, d_k)``): domain r owns the atoms ``N r / P ... N (r + 1) / P - 1`` in
the order of increasing t.

The cluster is periodic along the structure's other periodic directions, with the same cell, and
not periodic along the split direction: its atoms are images ``(b, s)`` -- atom b of the structure
shifted by the lattice vector ``s @ cell`` (s an integer triple along ``a_k`` only) -- owned
atoms first (in increasing index, each at its image inside the slab), then the halo. A bond ``(p, q, R')`` of the cluster is the bond
``(atoms[p], atoms[q], R' + shifts[q] - shifts[p])`` of the structure (:meth:`Domain.global_bonds`).
Lengths in Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eqtb.structure import Structure

__all__ = ["Domain", "decompose", "split_direction"]


@dataclass
class Domain:
    """One domain of a structure (module docstring). ``owned`` (n_own,): the atoms it owns, in
    increasing index; ``cluster``: its owned atoms and halo as a structure; ``atoms`` / ``shifts``
    ((n_cluster,), (n_cluster, 3) int): the structure's atom and the lattice shift of every cluster
    atom (the first ``n_own`` are the owned atoms, each at its image inside the slab); ``index`` / ``n_domains``: which
    domain of how many; ``axis``: the split lattice direction (None: no split, or a Cartesian axis
    for a structure without a cell); ``halo``: width in Angstrom."""

    structure: Structure
    owned: np.ndarray
    cluster: Structure
    atoms: np.ndarray
    shifts: np.ndarray
    index: int
    n_domains: int
    axis: int | None
    halo: float

    @property
    def n_owned(self) -> int:
        return len(self.owned)

    def global_bonds(self, p, q, R):
        """``(i, j, R)`` of the structure for cluster bonds ``(p, q, R')`` (arrays)."""
        p, q = np.asarray(p, dtype=np.int64), np.asarray(q, dtype=np.int64)
        return self.atoms[p], self.atoms[q], np.asarray(R, dtype=np.int64) + self.shifts[q] - self.shifts[p]

    def describe(self) -> dict:
        return {"domain": self.index, "n_domains": self.n_domains, "owned_atoms": self.n_owned,
                "cluster_atoms": self.cluster.natoms, "axis": self.axis, "halo": self.halo}


def split_direction(structure: Structure) -> tuple[int, np.ndarray, float | None, bool]:
    """``(axis, unit normal n, period d or None, lattice)`` of the direction :func:`decompose`
    splits along: the lattice direction of the largest interplanar spacing (periodic) or extent
    (non-periodic) when the cell has full rank (``lattice`` True), else the Cartesian axis of the
    largest extent of the positions (``lattice`` False, no period)."""
    cell = np.asarray(structure.cell, dtype=np.float64)
    pos = structure.positions
    if abs(np.linalg.det(cell)) > 1e-6:
        best = None
        for k in range(3):
            n = np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])
            n /= np.linalg.norm(n)
            if cell[k] @ n < 0:
                n = -n
            d = float(cell[k] @ n)
            periodic = bool(structure.pbc[k])
            size = d if periodic else float(np.ptp(pos @ n)) if len(pos) else 0.0
            if best is None or size > best[0] + 1e-9:
                best = (size, k, n, d if periodic else None)
        return best[1], best[2], best[3], True
    k = int(np.argmax(np.ptp(pos, axis=0))) if len(pos) else 0
    return k, np.eye(3)[k], None, False


def decompose(structure: Structure, n_domains: int, index: int, halo: float) -> Domain:
    """Domain ``index`` of ``n_domains`` slabs of ``structure`` with a halo of ``halo`` Angstrom
    (module docstring). One domain: the structure itself, no halo."""
    P, r = int(n_domains), int(index)
    if P < 1 or not 0 <= r < P:
        raise ValueError(f"domain {index} of {n_domains}: need n_domains >= 1 and 0 <= index < n_domains")
    N = structure.natoms
    if P > N:
        raise ValueError(f"{n_domains} domains for {N} atoms: at most one domain per atom")
    if P == 1:
        return Domain(structure, np.arange(N), structure, np.arange(N), np.zeros((N, 3), dtype=np.int64),
                      0, 1, None, 0.0)
    w = float(halo)
    axis, normal, period, lattice = split_direction(structure)
    t = structure.positions @ normal
    base = np.zeros(N, dtype=np.int64)
    if period is not None:
        base = -np.floor(t / period).astype(np.int64)  # t + base * period in [0, period)
        t = t + base * period
    order = np.argsort(t, kind="stable")
    owned = np.sort(order[N * r // P:N * (r + 1) // P])
    lo, hi = t[owned].min() - w, t[owned].max() + w
    if period is not None:  # every image of every atom inside [lo, hi]
        n_lo = np.ceil((lo - t) / period).astype(np.int64)
        n_hi = np.floor((hi - t) / period).astype(np.int64)
    else:
        n_lo = np.where((t >= lo) & (t <= hi), 0, 1)
        n_hi = np.zeros(N, dtype=np.int64)
    count = np.maximum(n_hi - n_lo + 1, 0)
    atom = np.repeat(np.arange(N), count)
    start = np.repeat(np.cumsum(count) - count, count)
    image = np.repeat(n_lo, count) + (np.arange(len(atom)) - start)
    is_owned = np.zeros(N, dtype=bool)
    is_owned[owned] = True
    halo_sel = ~(is_owned[atom] & (image == 0))
    atoms = np.concatenate([owned, atom[halo_sel]])
    along = np.concatenate([base[owned], base[atom[halo_sel]] + image[halo_sel]])
    shifts = np.zeros((len(atoms), 3), dtype=np.int64)
    if lattice:
        shifts[:, axis] = along
        positions = structure.positions[atoms] + shifts @ structure.cell
    else:
        positions = structure.positions[atoms]
    pbc = structure.pbc.copy()
    pbc[axis] = False
    cluster = Structure(structure.numbers[atoms], positions, structure.cell.copy(), pbc,
                        source=f"{structure.source or structure.formula}, domain {r} of {P}")
    return Domain(structure, owned, cluster, atoms, shifts, r, P, axis, w)

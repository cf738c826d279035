"""Atomic structures and their bond graphs.

Units: Angstrom. ``cell`` rows are the lattice vectors a1, a2, a3 (ASE convention). A bond
``(i, j, R)`` joins atom i in the home cell to atom j in the cell translated by
``R = (R1, R2, R3)`` (integers, units of the lattice vectors); its vector is
``d_ij(R) = r_j + R @ cell - r_i``. This is the convention of the block files (``i_j_Rx_Ry_Rz``).

A :class:`Graph` stores every bond once, in a canonical half: ``i < j``, or ``i == j`` with ``R``
lexicographically positive. The other direction ``(j, i, -R)`` is implied (Hermitian conjugate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eqtb.basis import element_symbol
from eqtb.bonds import canonicalize, sort_order

#: atoms closer than this (Angstrom) are rejected as "on top of each other"
MIN_DISTANCE = 0.1


#: cube edge (Angstrom) of the bins :meth:`Structure.spatial_order` visits in Z-order (about one
#: nearest-neighbour shell: 8 Si atoms per bin)
SPATIAL_BIN = 5.43


class StructureError(ValueError):
    """A structure that cannot be used (NaN coordinates, overlapping atoms, bad cell...)."""


@dataclass
class Structure:
    """One atomic structure: atomic numbers (N,), Cartesian positions (N, 3) in Angstrom, cell (3, 3)
    with lattice vectors as rows (all zeros when there is none), periodicity (3,) bool."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    source: str = ""

    def __post_init__(self):
        where = f" in {self.source}" if self.source else ""
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        pbc = np.asarray(self.pbc, dtype=bool)
        self.pbc = np.broadcast_to(pbc, (3,)).copy()
        if len(self.numbers) != len(self.positions):
            raise StructureError(f"{len(self.numbers)} atomic numbers but {len(self.positions)} positions{where}")
        if not np.isfinite(self.positions).all() or not np.isfinite(self.cell).all():
            raise StructureError(f"positions or cell contain NaN or infinity{where}")
        for z in self.numbers:
            element_symbol(int(z))
        if self.pbc.any():
            vol = abs(np.linalg.det(self.cell))
            if vol < 1e-6 or np.linalg.norm(self.cell[self.pbc], axis=1).min() < 1e-6:
                raise StructureError(f"periodic along {self.pbc.tolist()} but the cell is degenerate{where}")

    # ------------------------------------------------------------------ conversions
    @property
    def natoms(self) -> int:
        return len(self.numbers)

    @property
    def symbols(self) -> list[str]:
        return [element_symbol(int(z)) for z in self.numbers]

    @property
    def reciprocal_cell(self) -> np.ndarray:
        """Rows b_i with a_i . b_j = 2 pi delta_ij (1/Angstrom)."""
        return 2 * np.pi * np.linalg.inv(self.cell).T

    @property
    def formula(self) -> str:
        return self.to_ase().get_chemical_formula(mode="hill")

    @classmethod
    def from_ase(cls, atoms, source: str = "") -> "Structure":
        cell = np.asarray(atoms.get_cell())
        return cls(atoms.get_atomic_numbers(), atoms.get_positions(), cell, atoms.get_pbc(), source=source)

    def to_ase(self):
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)

    @classmethod
    def read(cls, path: str | Path, index: int = -1) -> "Structure":
        """Read a structure file (POSCAR/.vasp, .cif, .xyz, .traj, ... anything ASE reads)."""
        from ase.io import read

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"structure file {path} does not exist")
        try:
            atoms = read(path, index=index)
        except Exception as exc:  # ASE raises many kinds of errors for unreadable files
            raise StructureError(f"cannot read structure file {path}: {exc}") from exc
        return cls.from_ase(atoms, source=str(path))

    def transformed(self, rotation: np.ndarray, translation=(0.0, 0.0, 0.0)) -> "Structure":
        """The structure under r -> rotation @ r + translation (cell rotated alike). ``rotation`` may
        be any orthogonal matrix (a reflection too)."""
        rot = np.asarray(rotation, dtype=np.float64)
        return Structure(self.numbers.copy(), self.positions @ rot.T + np.asarray(translation),
                         self.cell @ rot.T, self.pbc.copy(), self.source)

    def repeat(self, reps) -> "Structure":
        """Supercell ``reps = (n1, n2, n3)``; atom order as ASE's ``Atoms.repeat``."""
        return Structure.from_ase(self.to_ase().repeat(reps), source=self.source)

    def spatial_order(self, bin_size: float = SPATIAL_BIN) -> np.ndarray:
        """A renumbering of the atoms along a Z-order (Morton) curve: ``order[k]`` is the old index
        of the new k-th atom. Positions (wrapped into the cell along periodic axes) are binned into
        cubes of ``bin_size`` Angstrom, the bins visited in Z-order, atoms within one bin in their
        old order. Atoms near each other in space get nearby indices, so a sparse matrix over them
        multiplies a block of vectors with far fewer cache misses: an ASE supercell's order puts a
        neighbour in the next cell layer ~n1 n2 cells away (884,736-atom Si supercell, product of
        S with 4 vectors, one thread: 1.5-1.8 s in ASE order, 1.15-1.24 s in Z-order of cells)."""
        pos = self.positions
        if self.pbc.any():
            frac = pos @ np.linalg.inv(self.cell)
            frac[:, self.pbc] %= 1.0
            pos = frac @ self.cell
        if len(pos) == 0:
            return np.zeros(0, dtype=np.int64)
        ijk = np.floor((pos - pos.min(axis=0)) / bin_size).astype(np.int64)
        if ijk.max(initial=0) >= 1 << 21:
            raise StructureError(f"structure spans more than 2^21 bins of {bin_size} A: use a larger bin_size")
        code = np.zeros(len(ijk), dtype=np.int64)
        for bit in range(21):
            for axis in range(3):
                code |= ((ijk[:, axis] >> bit) & 1) << (3 * bit + axis)
        return np.argsort(code, kind="stable")

    def reordered(self, order) -> "Structure":
        """The structure with atoms ``order`` (new k-th atom = old ``order[k]``), e.g.
        :meth:`spatial_order`."""
        order = np.asarray(order, dtype=np.int64)
        if order.shape != (self.natoms,) or not np.array_equal(np.sort(order), np.arange(self.natoms)):
            raise StructureError(f"order is not a permutation of the {self.natoms} atoms")
        return Structure(self.numbers[order], self.positions[order], self.cell.copy(), self.pbc.copy(), self.source)

    def check_distances(self, min_distance: float = MIN_DISTANCE) -> None:
        """Raise StructureError if two atoms (or an atom and a periodic image) nearly coincide."""
        g = build_graph(self, min_distance)
        if g.n_edges:
            k = int(np.argmin(g.lengths))
            raise StructureError(
                f"atoms {g.i[k]} and {g.j[k]} (cell shift {g.R[k].tolist()}) are {g.lengths[k]:.3g} A apart"
                f"{' in ' + self.source if self.source else ''}: atoms on top of each other"
            )


@dataclass
class Graph:
    """Bond graph of a structure, canonical half (see module docstring).

    i, j: (E,) atom indices; R: (E, 3) integer cell shift of atom j; vectors: (E, 3) bond vectors
    d_ij(R) in Angstrom; lengths: (E,)."""

    structure: Structure
    i: np.ndarray
    j: np.ndarray
    R: np.ndarray
    vectors: np.ndarray

    @property
    def n_edges(self) -> int:
        return len(self.i)

    @property
    def lengths(self) -> np.ndarray:
        return np.linalg.norm(self.vectors, axis=1)

    def directed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both directions: (i, j, R) of the canonical half followed by (j, i, -R)."""
        return (np.concatenate([self.i, self.j]), np.concatenate([self.j, self.i]),
                np.concatenate([self.R, -self.R]))


def pair_cutoffs(r_max, symbols: list[str]) -> np.ndarray:
    """Symmetric matrix of cutoffs (Angstrom) between element types ``symbols``.

    ``r_max`` as in DeePTB's model options: a number (one radius); a dict element -> radius (pair
    cutoff (rA + rB) / 2); or a dict ``"A-B"`` -> radius (``A-B`` and ``B-A`` averaged when both
    are given; a missing pair is an error)."""
    n = len(symbols)
    if isinstance(r_max, (int, float)):
        return np.full((n, n), float(r_max))
    if not isinstance(r_max, dict) or not r_max:
        raise ValueError(f"r_max must be a number or a non-empty dict, got {r_max!r}")
    if all("-" in k for k in r_max):
        out = np.full((n, n), np.nan)
        for a in range(n):
            for b in range(n):
                vals = [r_max[k] for k in (f"{symbols[a]}-{symbols[b]}", f"{symbols[b]}-{symbols[a]}") if k in r_max]
                if not vals:
                    raise ValueError(f"r_max has no entry for bond {symbols[a]}-{symbols[b]}")
                out[a, b] = float(np.mean(vals))
        return out
    missing = [s for s in symbols if s not in r_max]
    if missing:
        raise ValueError(f"r_max has no radius for elements {missing}")
    r = np.array([float(r_max[s]) for s in symbols])
    return (r[:, None] + r[None, :]) / 2


def build_graph(structure: Structure, r_max, symbols: list[str] | None = None) -> Graph:
    """All bonds shorter than the cutoff, each stored once (canonical half), self excluded.

    ``r_max``: float, or a per-element / per-bond dict (see :func:`pair_cutoffs`). ``symbols``:
    element order for dict cutoffs (default: the structure's distinct elements).
    Neighbour search with vesin (cell lists, linear in N)."""
    from vesin import NeighborList

    s = structure
    uniq = sorted(set(s.numbers.tolist()))
    symbols = symbols or [element_symbol(z) for z in uniq]
    cut = pair_cutoffs(r_max, symbols)
    rmax = float(cut.max())
    box = s.cell if s.pbc.any() else np.zeros((3, 3))
    if s.pbc.any() and not s.pbc.all():
        # vesin needs a full-rank box; fill non-periodic directions with a long orthogonal vector
        box = s.cell.copy()
        for d in np.where(~s.pbc)[0]:
            if np.linalg.norm(box[d]) < 1e-6:
                other = box[s.pbc]
                v = np.cross(other[0], other[1]) if len(other) == 2 else _orthogonal(other[0])
                box[d] = v / np.linalg.norm(v) * (np.ptp(s.positions, axis=0).max() + 2 * rmax + 1.0)
    nl = NeighborList(cutoff=rmax, full_list=False)
    i, j, R, d = nl.compute(s.positions, box, s.pbc.tolist() if s.pbc.any() else False, quantities="ijSD")
    i, j, R, d = i.astype(np.int64), j.astype(np.int64), R.astype(np.int64), d.astype(np.float64)
    # canonical orientation: i < j, or i == j with R lexicographically positive
    i, j, R, flip = canonicalize(i, j, R)
    d[flip] *= -1
    if not np.all(cut == rmax):
        type_of = {sym: k for k, sym in enumerate(symbols)}
        lookup = np.zeros(max(uniq) + 1, dtype=np.int64)
        for z in uniq:
            if element_symbol(z) not in type_of:
                raise ValueError(f"element {element_symbol(z)} of the structure is not among {symbols}")
            lookup[z] = type_of[element_symbol(z)]
        ti, tj = lookup[s.numbers[i]], lookup[s.numbers[j]]
        keep = np.linalg.norm(d, axis=1) < cut[ti, tj]
        i, j, R, d = i[keep], j[keep], R[keep], d[keep]
    order = sort_order(i, j, R, s.natoms)
    return Graph(s, i[order], j[order], R[order], d[order])


def _orthogonal(v: np.ndarray) -> np.ndarray:
    a = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 * np.linalg.norm(v) else np.array([0.0, 1.0, 0.0])
    return np.cross(v, a)

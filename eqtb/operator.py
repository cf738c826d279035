"""The real-space blocks of one operator (H, S or D) of one structure, and its Bloch sums.

An :class:`Operator` holds
  * ``onsite``  (N, F, F): the block ``O_ii(0)`` of every atom;
  * ``i, j, R`` (E,), (E,), (E, 3) and ``offsite`` (E, F, F): the block ``O_ij(R)`` of every bond
    in the canonical half (``i < j``, or ``i == j`` with R lexicographically positive, see
    :mod:`eqtb.structure`); the other direction is ``O_ji(-R) = O_ij(R)^dagger``;
in the *full-basis layout* of :class:`eqtb.basis.Basis` (F = ``basis.full_norb``; rows and columns
an element does not have are zero). ``block[mu, nu] = <phi_{i,mu}(r - r_i)| O |phi_{j,nu}(r - r_j - R.A)>``,
orbitals in eqtb's (= DeePTB's) order. Units: H in eV, S and D dimensionless.

A *spinful* Hamiltonian (spin-orbit coupling, :mod:`eqtb.models.sk`) also holds
  * ``soc`` (N, 2F, 2F) complex: the onsite spin-orbit block of every atom, rows and columns spin-major
    (the F full-basis orbitals with spin up, then with spin down, eqtb's orbital order in each);
the blocks above are then its spin-independent part (the same for both spins; hoppings and the
other onsite terms do not mix spins). Its ``O(k)`` is ``2 norb`` square in DeePTB's order, all
orbitals with spin up then all with spin down: ``[[H(k) + L_uu, L_ud], [L_du, H(k) + L_dd]]``
with ``L`` the onsite spin-orbit blocks (:attr:`Operator.dim`). An operator without ``soc`` (S, D,
a spinless H) gives the same matrix on both spins when asked for a spinful one (``spinful=True``
of :meth:`Operator.dense` / :meth:`Operator.sparse`: ``S(k) (x) 1_2`` in that order).

The Bloch sum uses DeePTB's sign, ``O(k) = sum_R O(R) exp(-i 2 pi k.R)`` with k in fractional
reciprocal coordinates (positions not in the phase). Rows of ``O(k)`` are atoms in structure order,
each with its own ``norb`` orbitals (compact layout, no padding).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Mapping

import numpy as np
import scipy.sparse as sp

from eqtb.basis import Basis
from eqtb.bonds import BlockError, block_key, canonicalize, parse_block_keys, sort_order
from eqtb.structure import Structure, pair_cutoffs


#: above this many orbitals :meth:`Operator.dense` assembles one k-point at a time (see there)
DENSE_BATCH_MAX_NORB = 47


def compact_orbitals(basis: Basis, numbers) -> np.ndarray | None:
    """Rows of the full-basis layout (F per atom) that the compact layout keeps, in order; None
    when every atom has all F orbitals (the layouts coincide)."""
    F = basis.full_norb
    if (basis.norb_of(numbers) == F).all():
        return None
    types = basis.types_of(numbers)
    return np.concatenate([a * F + np.asarray(basis.orbital_index[t]) for a, t in enumerate(types)])


class BlockPattern:
    """The block-sparse pattern of an operator at one k-point: atoms as block rows and columns,
    one F x F block (full-basis layout) for every atom (onsite) and for both directions of every
    canonical bond ``(i, j)``; images of one atom pair (bonds with other R) share their block, so
    their blocks add up. Built from ``n_atoms`` and the bonds' ``i, j`` alone, so the blocks can be
    added part by part as a model produces them (:meth:`add`), without an Operator in memory.

    ``indptr`` (N + 1,), ``indices`` (nblocks,) int32: the BSR block structure (columns sorted);
    ``onsite`` (N,), ``forward`` (E,), ``reverse`` (E,): the block each atom's onsite block, each
    bond's ``O_ij`` and its transpose ``O_ji`` go to."""

    def __init__(self, n_atoms: int, i, j):
        N = int(n_atoms)
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        key = np.concatenate([np.arange(N, dtype=np.int64) * (N + 1), i * N + j, j * N + i])
        uniq, where = np.unique(key, return_inverse=True)
        del key
        self.n_atoms, self.n_bonds = N, len(i)
        self.n_blocks = len(uniq)
        self.unique = self.n_blocks == len(where)  # no two images of one pair: plain assignment
        small = np.int32 if self.n_blocks < 2**31 else np.int64
        self.indices = (uniq % N).astype(np.int32 if N < 2**31 else np.int64)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(uniq // N, minlength=N))]).astype(small)
        del uniq
        where = where.astype(small, copy=False)
        self.onsite, self.forward, self.reverse = where[:N], where[N:N + len(i)], where[N + len(i):]

    def zeros(self, F: int, dtype=np.float64) -> np.ndarray:
        """Block data (nblocks, F, F) to :meth:`add` into."""
        return np.zeros((self.n_blocks, F, F), dtype=dtype)

    def add(self, data: np.ndarray, blocks: np.ndarray, bonds=None) -> None:
        """Add blocks into ``data``: ``bonds`` None: the onsite blocks (N, F, F) of every atom; else
        the blocks ``O_ij(R)`` (e, F, F) of the canonical bonds ``bonds`` (a slice or index array of
        them), and their conjugate transposes at ``(j, i)``."""
        if bonds is None:
            targets = [(self.onsite, blocks)]
        else:
            targets = [(self.forward[bonds], blocks), (self.reverse[bonds], np.conj(np.swapaxes(blocks, 1, 2)))]
        for pos, b in targets:
            if self.unique:
                data[pos] += b
            else:
                np.add.at(data, pos, b)

    def bsr(self, data: np.ndarray) -> sp.bsr_matrix:
        """The block-sparse matrix (N F x N F) of block data from :meth:`zeros` / :meth:`add`."""
        F = data.shape[1]
        N = self.n_atoms
        return sp.bsr_matrix((data, self.indices, self.indptr), shape=(N * F, N * F))


@dataclass
class Operator:
    structure: Structure
    basis: Basis
    onsite: np.ndarray
    i: np.ndarray
    j: np.ndarray
    R: np.ndarray
    offsite: np.ndarray
    soc: np.ndarray | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_blocks(cls, structure: Structure, basis: Basis, blocks: Mapping[str, np.ndarray],
                    source: str = "") -> "Operator":
        """Build from a ``{"i_j_Rx_Ry_Rz": block}`` mapping (blocks in each element's own orbital
        layout, e.g. one frame group of ``hamiltonians.h5``).

        Index base is detected as in DeePTB: 0-based if ``"0_0_0_0_0"`` is present, else 1-based.
        Either triangle or both may be given; where both ``(i,j,R)`` and ``(j,i,-R)`` are present
        the Hermitian average is kept. Every atom needs its onsite block ``i_i_0_0_0``."""
        where = f" in {source}" if source else ""
        keys = list(blocks.keys())
        if not keys:
            raise BlockError(f"no blocks{where}")
        idx = parse_block_keys(keys)
        one_based = "0_0_0_0_0" not in blocks
        if one_based:
            idx[:, :2] -= 1
        n = structure.natoms
        if idx[:, :2].min() < 0 or idx[:, :2].max() >= n:
            hint = (" (no block '0_0_0_0_0', so keys were read as 1-based: is the onsite block of"
                    " atom 0 missing?)" if one_based else "")
            raise BlockError(f"block atom index out of range for {n} atoms{hint}{where}")
        types = basis.types_of(structure.numbers)
        norb = np.array([e.norb for e in basis.elements])[types]
        F = basis.full_norb
        onsite_mask = (idx[:, 0] == idx[:, 1]) & (idx[:, 2:] == 0).all(axis=1)
        have = np.zeros(n, dtype=bool)
        have[idx[onsite_mask, 0]] = True
        if not have.all():
            missing = np.where(~have)[0]
            raise BlockError(f"onsite blocks missing for atoms {missing[:10].tolist()}"
                             f"{' ...' if len(missing) > 10 else ''}{where}")
        values = [np.asarray(blocks[k]) for k in keys]
        dtype = np.result_type(*{v.dtype for v in values}, np.float64)
        for (a, b, *_), v, k in zip(idx, values, keys):
            if v.shape != (norb[a], norb[b]):
                raise BlockError(
                    f"block {k!r} has shape {v.shape} but the basis {basis!r} gives "
                    f"({norb[a]}, {norb[b]}) for {structure.symbols[a]}-{structure.symbols[b]}{where}")
            if not np.isfinite(v).all():
                raise BlockError(f"block {k!r} contains NaN or infinity{where}")
        # place every block in the full layout, grouped by type pair (vectorised)
        full = np.zeros((len(keys), F, F), dtype=dtype)
        tp = types[idx[:, 0]] * basis.n_types + types[idx[:, 1]]
        for pair in np.unique(tp):
            sel = np.where(tp == pair)[0]
            ta, tb = divmod(int(pair), basis.n_types)
            ia, ib = basis.orbital_index[ta], basis.orbital_index[tb]
            full[np.ix_(sel, ia, ib)] = np.stack([values[s] for s in sel])
        onsite = np.zeros((n, F, F), dtype=dtype)
        onsite_sel = np.where(onsite_mask)[0]
        onsite[idx[onsite_sel, 0]] = full[onsite_sel]
        onsite = 0.5 * (onsite + np.conj(np.swapaxes(onsite, 1, 2)))
        # off-site: bring every key to the canonical half, conjugate-transposing flipped ones
        off = np.where(~onsite_mask)[0]
        i, j, R = idx[off, 0], idx[off, 1], idx[off, 2:]
        blk = full[off]
        i, j, R, flip = canonicalize(i, j, R)
        blk[flip] = np.conj(np.swapaxes(blk[flip], 1, 2))
        order = sort_order(i, j, R, n)
        i, j, R, blk = i[order], j[order], R[order], blk[order]
        # merge duplicates (both triangles given) by averaging
        if len(i):
            new = np.ones(len(i), dtype=bool)
            new[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1]) | (R[1:] != R[:-1]).any(axis=1)
            group = np.cumsum(new) - 1
            counts = np.bincount(group)
            merged = np.zeros((counts.size, F, F), dtype=dtype)
            np.add.at(merged, group, blk)
            blk = merged / counts[:, None, None]
            i, j, R = i[new], j[new], R[new]
        return cls(structure, basis, onsite, i, j, R, blk)

    def to_blocks(self, both_triangles: bool = False, threshold: float = 0.0) -> dict[str, np.ndarray]:
        """``{"i_j_Rx_Ry_Rz": block}`` with 0-based keys, blocks in each element's own orbitals.
        Onsite blocks always; off-site blocks of the canonical half, plus their conjugates when
        ``both_triangles``; blocks with max |value| <= ``threshold`` are dropped (never onsite).
        :class:`BlockError` for a spinful operator (the format has no spin-orbit blocks; take
        :meth:`spin_independent` to write its spin-independent part)."""
        self._check_spinless("block files")
        types = self.basis.types_of(self.structure.numbers)
        idx = self.basis.orbital_index
        out: dict[str, np.ndarray] = {}
        for a in range(self.structure.natoms):
            ia = idx[types[a]]
            out[block_key(a, a, (0, 0, 0))] = self.onsite[a][np.ix_(ia, ia)]
        for e in range(len(self.i)):
            a, b, R = self.i[e], self.j[e], self.R[e]
            blk = self.offsite[e][np.ix_(idx[types[a]], idx[types[b]])]
            if threshold and np.abs(blk).max() <= threshold:
                continue
            out[block_key(a, b, R)] = blk
            if both_triangles:
                out[block_key(b, a, -R)] = np.conj(blk.T)
        return out

    def spin_independent(self) -> "Operator":
        """This operator without its spin-orbit blocks (the same operator when it has none)."""
        return replace(self, soc=None) if self.soc is not None else self

    def _check_spinless(self, what: str) -> None:
        if self.soc is not None:
            raise BlockError(f"the operator has spin-orbit blocks, which {what} do not hold; write its "
                             f"spin-independent part with Operator.spin_independent()")

    @cached_property
    def bond_lengths(self) -> np.ndarray:
        """(E,) lengths in Angstrom of the canonical-half bonds, ``|r_j + R.A - r_i|``."""
        s = self.structure
        R = np.asarray(self.R, dtype=np.float64).reshape(-1, 3)
        return np.linalg.norm(s.positions[self.j] + R @ s.cell - s.positions[self.i], axis=1)

    def truncated(self, r_max) -> "Operator":
        """The operator without the bonds at or beyond the cutoff: a bond of elements A, B is kept
        when its length is below the pair cutoff of ``r_max`` (Angstrom; a number, or a per-element /
        per-bond dict as :func:`eqtb.structure.pair_cutoffs` reads it) -- the bonds of
        :func:`eqtb.structure.build_graph` at ``r_max``, the ones a model with that cutoff predicts.
        Onsite blocks (and every other field) are kept. Arrays of kept bonds are copies."""
        cut = pair_cutoffs(r_max, self.basis.symbols)
        types = self.basis.types_of(self.structure.numbers)
        keep = self.bond_lengths < cut[types[self.i], types[self.j]]
        return replace(self, i=self.i[keep], j=self.j[keep], R=self.R[keep], offsite=self.offsite[keep])

    # ------------------------------------------------------------------ layout
    @property
    def natoms(self) -> int:
        return self.structure.natoms

    @cached_property
    def block_pattern(self) -> BlockPattern:
        """The block-sparse pattern of this operator's O(k) (:class:`BlockPattern`)."""
        return BlockPattern(self.natoms, self.i, self.j)

    @cached_property
    def atom_orbital_offsets(self) -> np.ndarray:
        """(N + 1,) offsets of each atom's rows in the compact layout of O(k)."""
        return np.concatenate([[0], np.cumsum(self.basis.norb_of(self.structure.numbers))])

    @property
    def norb(self) -> int:
        return int(self.atom_orbital_offsets[-1])

    @property
    def spinful(self) -> bool:
        """Whether the operator has spin-orbit blocks (``soc``): its O(k) is ``2 norb`` square."""
        return self.soc is not None

    @property
    def dim(self) -> int:
        """Size of O(k): ``norb``, or ``2 norb`` for a spinful operator (the number of bands)."""
        return 2 * self.norb if self.spinful else self.norb

    @cached_property
    def _soc_coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, values) of the onsite spin-orbit blocks in the spinful compact layout."""
        types = self.basis.types_of(self.structure.numbers)
        off, n, F = self.atom_orbital_offsets, self.norb, self.basis.full_norb
        rows, cols, vals = [], [], []
        for t in np.unique(types):
            atoms = np.flatnonzero(types == t)
            idx = np.asarray(self.basis.orbital_index[t])
            src = np.concatenate([idx, F + idx])  # spin-major rows of the full layout
            local = np.concatenate([np.arange(len(idx)), n + np.arange(len(idx))])  # spin-major, compact
            glob = off[atoms][:, None] + local[None, :]  # (atoms, 2 n_t)
            rows.append(np.broadcast_to(glob[:, :, None], (len(atoms), len(src), len(src))).ravel())
            cols.append(np.broadcast_to(glob[:, None, :], (len(atoms), len(src), len(src))).ravel())
            vals.append(self.soc[atoms][:, src][:, :, src].ravel())
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.complex128)

    def _spinful_dense(self, A: np.ndarray) -> np.ndarray:
        """(nk, n, n) spinless matrices -> (nk, 2n, 2n): both spins, plus the spin-orbit blocks."""
        nk, n = A.shape[0], A.shape[1]
        out = np.zeros((nk, 2 * n, 2 * n), dtype=np.complex128)
        out[:, :n, :n] = A
        out[:, n:, n:] = A
        if self.soc is not None:
            r, c, v = self._soc_coo
            out[:, r, c] += v
        return out

    def _spinful_sparse(self, A: sp.csr_matrix) -> sp.csr_matrix:
        """The CSR matrix A (n x n) on both spins, plus the spin-orbit blocks (2n x 2n)."""
        out = sp.block_diag((A, A), format="csr")
        if self.soc is not None:
            r, c, v = self._soc_coo
            out = out + sp.csr_matrix((v, (r, c)), shape=out.shape)
        return out.tocsr()

    @cached_property
    def _coo(self):
        """Compact-layout triplets of the onsite part and of the canonical-half off-site part:
        (rows, cols, values) for onsite, and (rows, cols, values, edge) for off-site."""
        types = self.basis.types_of(self.structure.numbers)
        off = self.atom_orbital_offsets
        idx = self.basis.orbital_index

        def triplets(a_atoms, b_atoms, blocks):
            rows, cols, vals, which = [], [], [], []
            ta, tb = types[a_atoms], types[b_atoms]
            key = ta * self.basis.n_types + tb
            for pair in np.unique(key):
                sel = np.where(key == pair)[0]
                t1, t2 = divmod(int(pair), self.basis.n_types)
                n1, n2 = len(idx[t1]), len(idx[t2])
                sub = blocks[sel][:, idx[t1]][:, :, idx[t2]]
                r = off[a_atoms[sel]][:, None, None] + np.arange(n1)[None, :, None]
                c = off[b_atoms[sel]][:, None, None] + np.arange(n2)[None, None, :]
                rows.append(np.broadcast_to(r, sub.shape).ravel())
                cols.append(np.broadcast_to(c, sub.shape).ravel())
                vals.append(sub.ravel())
                which.append(np.repeat(sel, n1 * n2))
            cat = lambda x, dt: np.concatenate(x) if x else np.zeros(0, dt)  # noqa: E731
            return cat(rows, np.int64), cat(cols, np.int64), cat(vals, blocks.dtype), cat(which, np.int64)

        atoms = np.arange(self.natoms)
        onsite = triplets(atoms, atoms, self.onsite)[:3]
        offsite = triplets(self.i, self.j, self.offsite)
        return onsite, offsite

    # ------------------------------------------------------------------ Bloch sums
    def phases(self, kpts) -> np.ndarray:
        """(nk, E) phase factors exp(-i 2 pi k.R) of the canonical-half bonds."""
        kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
        return np.exp(-2j * np.pi * (kpts @ self.R.T))

    def sparse(self, k=None, spinful: bool = False) -> sp.csr_matrix:
        """The operator at one k-point (fractional; default Gamma) as a scipy CSR matrix
        (norb x norb, complex128 unless k is None/Gamma and the blocks are real); ``dim`` square
        (complex) for a spinful operator, and ``2 norb`` square for any with ``spinful=True``
        (module docstring).

        Assembled block-wise (a BSR matrix of the full-basis blocks on :attr:`block_pattern`,
        converted to CSR; padding rows of elements with fewer orbitals removed): one copy of the
        blocks in memory besides the operator's own, no per-entry index arrays — a 10^5-atom Si 1s1p cell (4e6 bonds) takes
        a few GB and seconds. Entries of a block that happen to be zero are stored too."""
        F = self.basis.full_norb
        off = self.offsite
        if k is not None and np.any(k):
            off = off * self.phases(k)[0][:, None, None]
        pattern = self.block_pattern
        data = pattern.zeros(F, np.result_type(self.onsite.dtype, off.dtype))
        pattern.add(data, self.onsite)
        pattern.add(data, off, slice(None))
        del off
        A = pattern.bsr(data).tocsr()
        del data
        keep = compact_orbitals(self.basis, self.structure.numbers)
        if keep is not None:
            A = A[keep][:, keep]
        if spinful or self.soc is not None:
            return self._spinful_sparse(A.tocsr())
        return A.tocsr()

    def dense(self, kpts, spinful: bool = False) -> np.ndarray:
        """The operator at k-points ``kpts`` (nk, 3) as dense complex128 arrays (nk, norb, norb);
        (nk, dim, dim) for a spinful operator, and (nk, 2 norb, 2 norb) for any with
        ``spinful=True`` (module docstring).

        Below :data:`DENSE_BATCH_MAX_NORB` orbitals bonds are grouped by lattice vector R so the
        Bloch sum of all k-points is one matrix product (an (nR, norb^2) intermediate); from there
        one sparse Bloch sum per k-point (:meth:`sparse`), densified: measured for a 2048-orbital Si
        supercell (18 lattice vectors), one k-point 0.05 s instead of 4.9 s and 1.6 GB."""
        kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
        n = self.norb
        if n > DENSE_BATCH_MAX_NORB:
            return np.stack([self.sparse(k, spinful).toarray().astype(np.complex128, copy=False) for k in kpts])
        (ro, co, vo), (rh, ch, vh, e) = self._coo
        Rs, r_of_edge = np.unique(self.R, axis=0, return_inverse=True) if len(self.R) else (np.zeros((0, 3)), np.zeros(0, int))
        r_of_edge = np.asarray(r_of_edge).reshape(-1)
        M = np.zeros((len(Rs), n * n), dtype=np.result_type(vh.dtype, np.float64))
        np.add.at(M, (r_of_edge[e], rh * n + ch), vh)
        ph = np.exp(-2j * np.pi * (kpts @ Rs.T))  # (nk, nR)
        A = (ph @ M).reshape(len(kpts), n, n)
        D = np.zeros((n, n), dtype=np.result_type(vo.dtype, np.float64))
        np.add.at(D, (ro, co), vo)
        out = D[None] + A + np.conj(np.swapaxes(A, 1, 2))
        if spinful or self.soc is not None:
            return self._spinful_dense(out)
        return out

    # ------------------------------------------------------------------ real space
    def real_space_sparse(self) -> tuple[np.ndarray, list[sp.csr_matrix]]:
        """The real-space matrices ``O(R)`` in the compact layout, for export to other codes.

        Returns ``(Rs, mats)``: ``Rs`` (nR, 3) int64 lattice vectors (in units of the lattice vectors
        a1, a2, a3; R = 0 first, the rest in lexicographic order) and, for each, ``mats[r]`` a
        ``norb x norb`` scipy CSR matrix with ``O(R)[row of (i, mu), col of (j, nu)] =
        <phi_{i,mu}(r - r_i)| O |phi_{j,nu}(r - r_j - R.A)>``; rows and columns are atoms in
        structure order, each with its own ``norb`` orbitals in eqtb's order (the layout of
        :meth:`sparse`, offsets :attr:`atom_orbital_offsets`). Both triangles are present: every
        R with a bond also has -R, ``O(-R) = O(R)^dagger`` (the transpose for real operators).
        Units as the operator (H in eV, S and D dimensionless); dtype float64 for real blocks.

        The Bloch sum ``sum_r mats[r] * exp(-i 2 pi k.Rs[r])`` equals :meth:`dense` / :meth:`sparse`
        at k (fractional). Every entry of every block is stored, zeros inside a block included
        (the sparsity pattern is the block pattern). Vectorised over bonds (only the nR matrices
        are a Python loop); the matrices are non-overlapping views of one buffer.
        :class:`BlockError` for a spinful operator (see :meth:`to_blocks`)."""
        self._check_spinless("real-space matrices")
        (ro, co, vo), (rh, ch, vh, e) = self._coo
        n = self.norb
        R = np.asarray(self.R, dtype=np.int64).reshape(-1, 3)
        # R -> one integer key in base W whose order is R's lexicographic order; key(-R) = W^3-1-key(R)
        o = int(np.abs(R).max(initial=0))
        W = 2 * o + 1
        key = ((R[:, 0] + o) * W + (R[:, 1] + o)) * W + (R[:, 2] + o)
        top = W ** 3 - 1
        if W ** 3 <= 1 << 22:  # |R| <= 80: table lookup (<= 36 MB), no sort over bonds
            present = np.zeros(W ** 3, dtype=bool)
            present[key] = present[top - key] = present[top // 2] = True
            ukeys = np.flatnonzero(present)
            where = np.empty(W ** 3, dtype=np.int64)
            where[ukeys] = np.arange(len(ukeys))
            r_bond, r_back = where[key], where[top - key]
        else:  # huge lattice vectors: sort instead
            ukeys, inv = np.unique(np.concatenate([[top // 2], key, top - key]), return_inverse=True)
            r_bond, r_back = inv[1:1 + len(key)], inv[1 + len(key):]
        digits = np.stack([ukeys // (W * W), ukeys // W % W, ukeys % W], axis=1) - o
        z = int(np.searchsorted(ukeys, top // 2))  # R = 0 to the front, the others stay lexicographic
        order = np.concatenate([[z], np.arange(z), np.arange(z + 1, len(ukeys))])
        rank = np.empty(len(ukeys), dtype=np.int64)
        rank[order] = np.arange(len(ukeys))
        Rs = digits[order]
        r_bond, r_back = rank[r_bond], rank[r_back]
        # one stacked (nR * norb, norb) matrix: onsite -> R = 0, bond (i, j, R) -> R, its
        # conjugate transpose (j, i, -R) -> -R
        rows = np.concatenate([ro, r_bond[e] * n + rh, r_back[e] * n + ch])
        cols = np.concatenate([co, ch, rh])
        vals = np.concatenate([vo, vh, np.conj(vh)])
        V = sp.csr_matrix((vals, (rows, cols)), shape=(len(Rs) * n, n))
        del rows, cols, vals
        V.sum_duplicates()
        ip = V.indptr
        mats = []
        for r in range(len(Rs)):
            a, b = ip[r * n], ip[(r + 1) * n]
            mats.append(sp.csr_matrix((V.data[a:b], V.indices[a:b], ip[r * n:(r + 1) * n + 1] - a),
                                      shape=(n, n)))
        return Rs, mats

"""Gamma-point matrices of a supercell built from the operator of its primitive cell, and their
exact eigenvalues by Bloch folding: large test problems for the sparse solvers with a known answer.

An ``n1 x n2 x n3`` supercell of a crystal has, at Gamma, exactly the eigenvalues of the primitive
cell's ``H(k), S(k)`` on the Gamma-centred ``n1 x n2 x n3`` k-mesh ``k = (m1/n1, m2/n2, m3/n3)``.
:func:`supercell_gamma` assembles the supercell's Gamma matrix directly from the real-space
matrices ``O(R)`` (:meth:`eqtb.operator.Operator.real_space_sparse`):
``O_sc[(c, i), (c', j)] = sum_R O_ij(R) [c' = c + R mod n]`` (each term one Kronecker product of a
cyclic shift of the cell grid with ``O(R)``), and :func:`folded_eigenvalues` solves the primitive
cell on the mesh (dense, ``n1 n2 n3`` small problems instead of one large one). Rows are cell-major
(cells in ``itertools.product`` order, the last index fastest) with the primitive cell's orbitals
inside each cell: the atom order of ``Structure.repeat`` / ``ase.Atoms.repeat``.

The cell grid must be at least as large as the operator's range along each direction only for the
supercell to be a *different* structure from a smaller one; folding is exact for any ``n >= 1``
(several R can land on the same cell pair, their blocks add up, as in a DFT code at Gamma).
Energies in eV (H) or dimensionless (S), as the operator.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp

__all__ = ["folded_eigenvalues", "supercell_gamma"]


def _reps(reps) -> tuple[int, int, int]:
    r = tuple(int(x) for x in reps)
    if len(r) != 3 or min(r) < 1:
        raise ValueError(f"supercell repetitions must be three positive integers, got {reps}")
    return r


def supercell_gamma(operator, reps) -> sp.csr_matrix:
    """The Gamma-point matrix (scipy CSR, ``N norb x N norb``, N = n1 n2 n3) of the
    ``reps = (n1, n2, n3)`` supercell of ``operator``'s structure (module docstring)."""
    n = _reps(reps)
    Rs, mats = operator.real_space_sparse()
    cells = np.array(list(itertools.product(*(range(x) for x in n))), dtype=np.int64)
    flat = lambda c: (c[:, 0] * n[1] + c[:, 1]) * n[2] + c[:, 2]  # noqa: E731
    ncell = len(cells)
    src = flat(cells)
    out = None
    for R, M in zip(np.asarray(Rs, dtype=np.int64), mats):
        dst = flat((cells + R[None]) % np.array(n))
        P = sp.csr_matrix((np.ones(ncell), (src, dst)), shape=(ncell, ncell))
        term = sp.kron(P, M, format="csr")
        out = term if out is None else out + term
    out = out.tocsr()
    out.sum_duplicates()
    return out


def folded_eigenvalues(H, S, reps) -> np.ndarray:
    """All Gamma eigenvalues (eV, ascending) of the ``reps`` supercell: those of the primitive
    ``H(k) c = E S(k) c`` (Operators; ``S=None``: orthogonal) on the Gamma-centred ``reps`` mesh."""
    from eqtb.tb.spectrum import eigh

    n = _reps(reps)
    kpts = np.array(list(itertools.product(*(np.arange(x) / x for x in n))))
    out = []
    for k in kpts:
        Hk = H.dense(k[None])[0]
        Sk = S.dense(k[None])[0] if S is not None else None
        out.append(eigh(Hk, Sk))
    return np.sort(np.concatenate(out))

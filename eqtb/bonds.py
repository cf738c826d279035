"""Bonds ``(i, j, R)``: the one codec of bond identities used everywhere.

A bond is an ordered atom pair with the cell shift of its second atom: ``(i, j, R)`` stands for the
pair of atom ``i`` in the home cell and atom ``j`` in cell ``R`` (integer lattice vector). Its
reverse is ``(j, i, -R)``. eqtb stores each bond once, in the *canonical half*: ``i < j``, or
``i == j`` with ``R`` lexicographically positive (:func:`canonicalize`).

Encodings:

* the block key ``"i_j_Rx_Ry_Rz"`` of the DeePTB/dftio HDF5 files (:func:`block_key`,
  :func:`parse_block_keys`);
* one int64 per bond for sorting and matching (:func:`bond_ids`, :func:`sort_order`,
  :func:`match_bonds`), valid while ``natoms^2 * span^3 < 2^62`` (span = 2 max|R| + 3).
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["BlockError", "block_key", "bond_ids", "canonicalize", "is_lex_negative", "match_bonds",
           "parse_block_keys", "sort_order"]

_KEY = re.compile(r"^(-?\d+)_(-?\d+)_(-?\d+)_(-?\d+)_(-?\d+)$")


class BlockError(ValueError):
    """Bonds or blocks that do not fit a structure or a basis: a malformed ``"i_j_Rx_Ry_Rz"`` key,
    a missing onsite block, a block of the wrong shape, NaN."""


def block_key(i: int, j: int, R) -> str:
    """``"i_j_Rx_Ry_Rz"`` of one bond."""
    return f"{int(i)}_{int(j)}_{int(R[0])}_{int(R[1])}_{int(R[2])}"


def parse_block_keys(keys) -> np.ndarray:
    """``"i_j_Rx_Ry_Rz"`` keys -> int64 array (n, 5). Raises :class:`BlockError` on a malformed key."""
    out = np.empty((len(keys), 5), dtype=np.int64)
    for n, k in enumerate(keys):
        m = _KEY.match(k)
        if m is None:
            raise BlockError(f"malformed block key {k!r}; expected 'i_j_Rx_Ry_Rz'")
        out[n] = [int(x) for x in m.groups()]
    return out


def is_lex_negative(R: np.ndarray) -> np.ndarray:
    """(n,) True where the integer vector R (n, 3) is lexicographically negative."""
    first = np.where(R[:, 0] != 0, R[:, 0], np.where(R[:, 1] != 0, R[:, 1], R[:, 2]))
    return first < 0


def canonicalize(i: np.ndarray, j: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each bond in its canonical orientation: ``(i, j, R, flipped)`` where ``flipped`` marks the
    bonds that were reversed to ``(j, i, -R)`` (their blocks must be conjugate-transposed and their
    bond vectors negated)."""
    flip = (i > j) | ((i == j) & is_lex_negative(R))
    return np.where(flip, j, i), np.where(flip, i, j), np.where(flip[:, None], -R, R), flip


def _span(*Rs: np.ndarray) -> int:
    return 2 * int(max(np.abs(R).max(initial=0) for R in Rs)) + 3


def bond_ids(i: np.ndarray, j: np.ndarray, R: np.ndarray, natoms: int, span: int) -> np.ndarray:
    """One int64 per bond, increasing with (i, j, Rx, Ry, Rz) lexicographically; every
    ``|R component| < span // 2``."""
    h = span // 2
    i, j, R = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64), np.asarray(R, dtype=np.int64)
    return ((i * natoms + j) * span + (R[:, 0] + h)) * span * span + (R[:, 1] + h) * span + (R[:, 2] + h)


def sort_order(i: np.ndarray, j: np.ndarray, R: np.ndarray, natoms: int) -> np.ndarray:
    """Permutation sorting bonds by (i, j, R) lexicographically (stable)."""
    span = _span(R)
    if natoms**2 * span**3 < 2**62:
        return np.argsort(bond_ids(i, j, R, natoms, span), kind="stable")
    return np.lexsort((R[:, 2], R[:, 1], R[:, 0], j, i))


def match_bonds(ref: tuple[np.ndarray, np.ndarray, np.ndarray], query: tuple[np.ndarray, np.ndarray, np.ndarray],
                natoms: int) -> np.ndarray:
    """For each bond of ``query = (i, j, R)``, the index of the same bond in ``ref = (i, j, R)``, or
    -1 where ``ref`` does not hold it. Both lists in the same orientation (e.g. canonical)."""
    span = _span(np.asarray(ref[2]), np.asarray(query[2]))
    ka = bond_ids(*ref, natoms, span)
    kb = bond_ids(*query, natoms, span)
    if len(ka) == 0:
        return np.full(len(kb), -1)
    order = np.argsort(ka)
    pos = np.searchsorted(ka[order], kb).clip(max=len(ka) - 1)
    return np.where(ka[order][pos] == kb, order[pos], -1)

"""Orbital order and sign conventions of DFT codes, converted to eqtb's in one table.

eqtb (= DeePTB) orders the 2l+1 orbitals of a shell by m = -l..l, real harmonics without the
Condon-Shortley phase: p = (y, z, x), d = (xy, yz, z^2, xz, x^2-y^2) (see :mod:`eqtb.basis`).

For each code and l the table gives ``(source_index, sign)``: eqtb component k equals
``sign[k] * source component source_index[k]`` (shared/spec/FORMATS.md section 2.4-2.5).
A block M (rows atom i, columns atom j, both in the code's order) becomes ``U_i M U_j^T`` with
``U`` the block diagonal of the per-shell signed permutations.
"""

from __future__ import annotations

import numpy as np


def _abacus(l: int) -> tuple[list[int], list[int]]:
    # ABACUS orders m = 0, +1, -1, +2, -2, ... and carries a (-1)^m phase
    src = [0 if m == 0 else (2 * m - 1 if m > 0 else -2 * m) for m in range(-l, l + 1)]
    return src, [(-1) ** abs(m) for m in range(-l, l + 1)]


def _signed_identity(l: int) -> tuple[list[int], list[int]]:
    # SIESTA / RESCU: already m = -l..l, with the Condon-Shortley phase on odd m
    return list(range(2 * l + 1)), [(-1) ** abs(m) for m in range(-l, l + 1)]


def _openmx(l: int) -> tuple[list[int], list[int]]:
    table = {0: [0], 1: [1, 2, 0], 2: [2, 4, 0, 3, 1], 3: [6, 4, 2, 0, 1, 3, 5]}
    if l not in table:
        raise ValueError(f"OpenMX order for l={l} is not known")
    return table[l], [1] * (2 * l + 1)


def _pyscf(l: int) -> tuple[list[int], list[int]]:
    # PySCF spherical GTOs: p is (x, y, z); l >= 2 already m = -l..l, no phase
    return ([1, 2, 0] if l == 1 else list(range(2 * l + 1))), [1] * (2 * l + 1)


def _gaussian(l: int) -> tuple[list[int], list[int]]:
    if l == 1:
        return [1, 2, 0], [1, 1, 1]
    src, _ = _abacus(l)  # Gaussian pure functions: D0, D+1, D-1, D+2, D-2 ... no phase
    return src, [1] * (2 * l + 1)


CODES = {"abacus": _abacus, "siesta": _signed_identity, "rescu": _signed_identity,
         "openmx": _openmx, "deeph": _openmx, "pyscf": _pyscf, "gaussian": _gaussian}


def shell_transform(code: str, l: int) -> np.ndarray:
    """(2l+1, 2l+1) signed permutation U_l with eqtb = U_l @ source."""
    if code not in CODES:
        raise ValueError(f"unknown code {code!r}; known: {sorted(CODES)}")
    src, sign = CODES[code](l)
    U = np.zeros((2 * l + 1, 2 * l + 1))
    U[np.arange(2 * l + 1), src] = sign
    return U


def atom_transform(code: str, shell_l) -> np.ndarray:
    """Block-diagonal U for an atom whose shells have angular momenta ``shell_l`` (in order)."""
    from scipy.linalg import block_diag

    return block_diag(*[shell_transform(code, l) for l in shell_l])


def to_eqtb(code: str, block: np.ndarray, shells_i, shells_j) -> np.ndarray:
    """Convert one block from the code's orbital convention to eqtb's."""
    return atom_transform(code, shells_i) @ block @ atom_transform(code, shells_j).T


def from_eqtb(code: str, block: np.ndarray, shells_i, shells_j) -> np.ndarray:
    """Convert one block from eqtb's orbital convention to the code's."""
    return atom_transform(code, shells_i).T @ block @ atom_transform(code, shells_j)

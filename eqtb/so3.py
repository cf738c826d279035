"""SO(3)/O(3) algebra in eqtb's orbital convention, as a thin layer over e3nn.

eqtb's real spherical harmonics of degree l are e3nn's evaluated on the permuted vector
``(y, z, x)``: ordered m = -l..l, polar axis z, no Condon-Shortley phase, so that p = (y, z, x) and
d = (xy, yz, 3z^2-r^2, xz, x^2-y^2) (the order of DeePTB and of the block files).

Consequently the Wigner-D matrix of a lab-frame rotation Q in eqtb's convention is e3nn's for the
conjugated rotation ``P Q P^T`` with ``P`` the permutation (x, y, z) -> (y, z, x). Under a rotation
(or reflection) Q of a structure, an orbital block transforms as
``B_ij -> D_{l_a}(Q) B_ij D_{l_b}(Q)^T`` and a feature of irrep (L, p) as ``v -> p^{[det Q < 0]} D_L(Q) v``.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
from e3nn import o3

#: P @ (x, y, z) = (y, z, x)
PERMUTATION = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


@contextmanager
def float64_default():
    """e3nn builds representation matrices in torch's default dtype: force float64 for exactness."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def to_e3nn_frame(vectors):
    """Cartesian vectors (..., 3) -> the (y, z, x) vectors e3nn must see."""
    return vectors[..., [1, 2, 0]]


def spherical_harmonics(l: int, vectors: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Real spherical harmonics of degree l in eqtb's convention ('component' normalisation:
    each degree has squared norm 2l+1 on the unit sphere)."""
    return o3.spherical_harmonics(l, to_e3nn_frame(vectors), normalize=normalize, normalization="component")


def wigner_D(l: int, rotation, parity: int = 1) -> np.ndarray:
    """(2l+1, 2l+1) representation matrix of the orthogonal 3x3 matrix ``rotation`` (proper or
    improper) in eqtb's convention, for an irrep of degree l and parity ``parity`` (+1 'e', -1 'o').
    For an orbital shell use parity (-1)^l."""
    Q = np.asarray(rotation, dtype=np.float64)
    Qp = PERMUTATION @ Q @ PERMUTATION.T
    with float64_default():
        return o3.Irrep(l, parity).D_from_matrix(torch.as_tensor(Qp)).numpy()


def irreps_D(irreps: str | o3.Irreps, rotation) -> np.ndarray:
    """Block-diagonal representation of ``rotation`` on a feature vector with these irreps."""
    Q = np.asarray(rotation, dtype=np.float64)
    Qp = PERMUTATION @ Q @ PERMUTATION.T
    with float64_default():
        return o3.Irreps(irreps).D_from_matrix(torch.as_tensor(Qp)).numpy()


@lru_cache(maxsize=None)
def coupling_matrix(l1: int, l2: int) -> np.ndarray:
    """Orthogonal change of basis C ((2l1+1)(2l2+1) square, float64) from a flattened
    (2l1+1) x (2l2+1) block (row-major, index m1*(2l2+1)+m2) to the direct sum over
    L = |l1-l2|..l1+l2 of irreps (concatenated, each m = -L..L):
    ``features = C.T @ vec(B)``, ``vec(B) = C @ features``, with
    ``C[(m1, m2), (L, M)] = sqrt(2L+1) W(l1, l2, L)[m1, m2, M]`` and W e3nn's real Wigner 3j symbol."""
    cols = []
    for L in range(abs(l1 - l2), l1 + l2 + 1):
        w = o3.wigner_3j(l1, l2, L, dtype=torch.float64).numpy()
        cols.append(np.sqrt(2 * L + 1) * w.reshape((2 * l1 + 1) * (2 * l2 + 1), 2 * L + 1))
    return np.concatenate(cols, axis=1)

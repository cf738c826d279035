"""SO(3)/O(3) algebra in eqtb's orbital convention, as a thin layer over e3nn.

eqtb's real spherical harmonics of degree l are e3nn's evaluated on the permuted vector
``(y, z, x)``: ordered m = -l..l, polar axis z, no Condon-Shortley phase, so that p = (y, z, x) and
d = (xy, yz, 3z^2-r^2, xz, x^2-y^2) (the order of DeePTB and of the block files).

Consequently the Wigner-D matrix of a lab-frame rotation Q in eqtb's convention is e3nn's for the
conjugated rotation ``P Q P^T`` with ``P`` the permutation (x, y, z) -> (y, z, x). Under a rotation
(or reflection) Q of a structure, an orbital block transforms as
``B_ij -> D_{l_a}(Q) B_ij D_{l_b}(Q)^T`` and a feature of irrep (L, p) as ``v -> p^{[det Q < 0]} D_L(Q) v``.

Spin: :func:`angular_momentum` gives the orbital angular momentum matrices in these harmonics and
:func:`spin_orbit_matrix` the L.S matrix of a spinful shell (spin-major, DeePTB's order), the onsite
spin-orbit term of :mod:`eqtb.models.sk`.
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


#: Pauli matrices (x, y, z); the spin operator is S = sigma / 2 (hbar = 1), basis order (up, down)
PAULI = np.array([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]], dtype=np.complex128)


@lru_cache(maxsize=None)
def angular_momentum(l: int) -> np.ndarray:
    """(3, 2l+1, 2l+1) complex matrices ``(L_x, L_y, L_z)`` of the orbital angular momentum (hbar = 1)
    in eqtb's real spherical harmonics of degree l (module docstring: m = -l..l, p = (y, z, x)):
    ``L[a][m', m] = <Y_m'| L_a |Y_m>`` with ``L = -i r x grad``. Hermitian and purely imaginary
    (real harmonics), ``[L_x, L_y] = i L_z`` and ``L^2 = l(l+1)``; e.g. ``L_z p_x = i p_y``.

    Built from the Wigner-D of eqtb's convention: a rotation by theta about axis a acts on the
    orbital coefficients as ``D(Q_a(theta)) = exp(-i theta L_a)``, so ``L_a = i log(D) / theta``
    (exact for |theta| < pi; theta = 1/2 here), made exactly antisymmetric and with the rounding
    noise of the logarithm (< 1e-12) set to zero. Read-only (cached)."""
    import scipy.linalg as sla

    theta = 0.5
    out = np.zeros((3, 2 * l + 1, 2 * l + 1), dtype=np.complex128)
    for a in range(3):
        K = np.zeros((3, 3))  # generator of rotations about axis a: Q = exp(theta K)
        b, c = (a + 1) % 3, (a + 2) % 3
        K[c, b], K[b, c] = 1.0, -1.0
        D = wigner_D(l, sla.expm(theta * K), parity=1)
        gen = np.real(sla.logm(D)) / theta  # real antisymmetric
        gen = 0.5 * (gen - gen.T)
        gen[np.abs(gen) < 1e-12] = 0.0
        out[a] = 1j * gen
    out.setflags(write=False)
    return out


@lru_cache(maxsize=None)
def spin_orbit_matrix(l: int) -> np.ndarray:
    """(2(2l+1), 2(2l+1)) complex matrix of ``L.S`` (hbar = 1, ``S = sigma / 2``) on the spinful
    shell of degree l, rows and columns ordered spin-major as in DeePTB: the 2l+1 orbitals (eqtb's m
    order) with spin up, then the same orbitals with spin down. Eigenvalues ``l/2`` (j = l + 1/2,
    2l + 2 states) and ``-(l+1)/2`` (j = l - 1/2, 2l states); zero for l = 0. The onsite spin-orbit
    term of a shell with strength lambda (eV) is ``lambda * spin_orbit_matrix(l)``. Read-only."""
    L = angular_momentum(l)
    out = sum(np.kron(PAULI[a] / 2, L[a]) for a in range(3))
    out.setflags(write=False)
    return out

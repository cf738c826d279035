"""Kernel polynomial method (KPM): density of states of ``H c = E S c`` for sparse matrices too
large to diagonalise.

What it computes
----------------
For one k-point, ``H`` (eV) and ``S`` (dimensionless, positive definite; None for an orthogonal
basis) as scipy sparse matrices (real symmetric or complex Hermitian, ``norb x norb``), the DOS

    D(E) = g * sum_n delta(E - eps_n),   eps_n the generalized eigenvalues,

broadened by a kernel, in states/eV for the whole matrix times the spin degeneracy ``g`` (the
normalization of :func:`eqtb.tb.spectrum.dos` with one k-point of weight 1: it integrates to
``g * norb``). Method (Weisse et al., Rev. Mod. Phys. 78, 275 (2006)):

* ``A = S^-1 H`` has the eigenvalues eps_n. It is not symmetric, but it is self-adjoint in the
  S inner product, and ``Tr f(A) = sum_n f(eps_n)`` still holds. ``A`` is rescaled to
  ``At = (A - b) / a`` with spectrum inside [-1, 1], ``b = (emax + emin)/2``, ``a = (emax - emin)/2``
  where (emin, emax) are :attr:`KPMResult.bounds` (Lanczos estimate + safety margin).
* Chebyshev moments by a stochastic (Hutchinson) trace, per orbital, two moments per solve:
  with R = ``n_random`` Rademacher vectors r (real matrices) or random-phase vectors (complex) and
  the start vectors ``z = S^-1/2 r`` (:func:`overlap_inverse_sqrt`; ``z = r`` when S is None),
  ``mu_m = (1 / (R * norb)) sum_r z^dagger S T_m(At) z``, whose expectation is
  ``Tr T_m(At) / norb`` (``E[z z^dagger] = S^-1``) and which equals the plain estimator
  ``r^dagger T_m(S^-1/2 H S^-1/2) r`` of the Loewdin-orthogonalized matrix. Because At is
  self-adjoint in the S inner product, ``T_2m = 2 T_m^2 - T_0`` and ``T_2m+1 = 2 T_m+1 T_m - T_1``
  give ``mu_2m = 2 u_m^dagger S u_m - z^dagger S z`` and ``mu_2m+1 = 2 u_m+1^dagger S u_m - mu_1``
  from ``u_m = T_m(At) z`` (recursion ``u_m+1 = 2 At u_m - u_m-1`` on the whole (norb, R) block):
  M moments take M / 2 applications of At (each one S^-1 solve), plus one product with S per
  step and ~40 for z. ``mu_0 = r^dagger r / norb = 1`` exactly.
* ``S^-1`` is applied by a block preconditioned conjugate gradient (:func:`block_cg`): one sparse
  product of the whole block per iteration, per-column step lengths, stopping when every
  column's relative residual is below ``solve_tol``. Preconditioner: FSAI (the default: a
  factorized sparse approximate inverse on atom blocks, :mod:`eqtb.tb.fsai`), Jacobi (the
  diagonal of S), block-Jacobi on given orbital blocks (e.g. ``operator.atom_orbital_offsets``),
  or an incomplete LU of S (``"ilu"``; see COST). The CG stopping test uses the true recursively
  updated residual, so the solve is as accurate whichever preconditioner is used.
* The products, the reductions (dot products) and the rows of the random block go through a
  :class:`Pencil`, so the same code runs on matrices distributed by rows over processes
  (:mod:`eqtb.tb.dmatrix`, :func:`eqtb.tb.dmatrix.kpm_dos_distributed`).
* Kernel: Jackson (default; positive, nearly Gaussian broadening) or Lorentz (lambda = 4).
  The reconstruction is ``D(E) = g norb / (pi a sqrt(1 - x^2)) [g_0 mu_0 + 2 sum_m g_m mu_m T_m(x)]``
  with ``x = (E - b)/a``; the integrated DOS uses the closed form
  ``int_{-1}^{x} T_m(t) / (pi sqrt(1 - t^2)) dt = -sin(m theta) / (m pi)``, ``x = cos(theta)``.

ACCURACY (what to expect)
-------------------------
* Energy resolution: the Jackson kernel turns each level into a near-Gaussian of standard
  deviation ``sigma(x) = a sqrt((M - x^2 (M - 1)) / (2 (M + 1)) * (1 - cos(2 pi / (M + 1))))``
  (M = ``n_moments``; exact, checked numerically). :attr:`KPMResult.resolution` is its value at
  the band centre x = 0, ``~ pi (emax - emin) / (2 M)`` (within 1.2 % for M >= 128); it narrows
  towards the bounds (:meth:`KPMResult.resolution_at`). Its tails decay more slowly than a
  Gaussian's: 4 resolutions from a band edge the DOS is ~4e-4 of its maximum.
  Si64 Gamma: bounds width 24.8 eV, M = 256 -> 0.151 eV.
* Stochastic error: the error of the integrated DOS N(E) relative to ``g norb`` is
  ``~ 1 / sqrt(n_random * norb)`` (maximum over E: <= 2 / sqrt(n_random * norb) in all runs
  below); :attr:`KPMResult.stochastic_error` estimates it from the spread over the random vectors
  (standard error of N(E) / (g norb), maximum over the energies) and
  :meth:`KPMResult.integrated_error` gives it in states per energy; ``dos_error`` likewise for the
  DOS, whose maximum error is ``~ 10-20 / sqrt(n_random * norb)`` of the DOS maximum. The estimator
  for S^-1 H has the same variance as for the Loewdin-orthogonalized matrix (computed exactly
  for Si64: within 4 %), so the non-orthogonal basis costs accuracy nothing.
* The *absolute* error of N(E) grows like ``sqrt(norb / n_random)`` states: the N(E) = n_electrons
  crossing of an insulator lands in the gap only if that error is well below the number of states
  within the gap edges' smearing, i.e. hardly ever, in small cells and large ones alike (41 states
  for 6912 orbitals). :meth:`KPMResult.fermi_estimate` finds the gap instead (below).
* Measured, Si64 (ABACUS 1s1p, Gamma, 256 orbitals, exact = ``scipy.linalg.eigh(H, S)``),
  M = 256, solve_tol 1e-8, 5 seeds (``N_exact,J`` / ``D_exact,J``: the exact eigenvalues
  broadened by the same Jackson kernel; ``N_exact``: the raw step-function count):

                                               R = 8             R = 64
    max_E |N_kpm - N_exact,J| / (g norb)      0.021 (max 0.029)  0.0082 (max 0.013)
      estimated stochastic_error              0.018              0.0061
    max_E |N_kpm - N_exact| / (g norb)        0.026              0.016
      same, E >= 3 resolutions from any level 0.016              0.0039
    max_E |D_kpm - D_exact,J| / max D          0.21 (21 st./eV)  0.086 (8.8 states/eV)
    N(E) = 256 crossing (:meth:`KPMResult.fermi_level`; gap 6.528 .. 8.279 eV; the noise-free
    KPM limit is 7.315 eV, 0.09 eV from mid-gap): R = 8: 6.20, 8.40, 6.15, 8.73, 6.66 eV; R = 64:
    6.55, 8.29, 6.66, 8.20, 6.79 eV (standard error of N there: 6.7 / 3.0 states); the level of
    :meth:`KPMResult.fermi_estimate`, R = 8: 7.42, 7.39, 7.43, 7.36, 7.37 eV (next item).
  64 block_diag copies of Si64 (16384 orbitals), R = 8: N error 0.0029 (estimate 0.0027), DOS
  error 3.4 % of max; Si64 4x4x4 supercell Gamma (16384 orbitals, exact from Si64 on the 4x4x4
  k-mesh): N error 0.0025 (estimate 0.0033), DOS error 5.1 %.
* FERMI LEVEL OF AN INSULATOR (:meth:`KPMResult.fermi_estimate`; ``benchmarks/kpm_fermi_supercell.py``).
  ABACUS Si64 (256 orbitals) and its 3x3x3 supercell (1728 atoms, 6912 orbitals: ``eqtb run``'s
  sparse route), Gamma, exact gap 6.528 .. 8.279 eV (mid-gap 7.403 eV; the supercell's exact
  eigenvalues by folding: Si64 on the 3x3x3 k-mesh, :mod:`eqtb.tb.supercell`), M = 256, R = 8,
  solve_tol 1e-5, seeds 0-4. The N(E) = n crossing (what ``fermi_estimate`` returned before it looked
  beyond the gap around the crossing) lands in the gap in 1 of 5 runs for Si64 and 0 of
  5 for the supercell: the plateau of N(E) across the gap sits 6912 + 96, -40, +62, -38, -62
  states from the 6912 electrons (standard error 42 states = ``g sqrt(norb / (2 R))``), so the
  crossing is 0.6-0.8 eV inside the valence band (5.73, 5.93 eV) or 0.4-0.6 eV inside the
  conduction band (8.69, 8.71, 8.83 eV). The kernel is not the cause: the exact levels broadened
  by the same kernel count 6912.008 states at mid-gap, and the DOS in the gap is 0.1 % of its
  maximum, far below the 2 % gap threshold. ``fermi_estimate`` (the widest gap whose count is
  within 4 standard errors of n) puts the level in the gap in 5 of 5 runs for both: Si64 within
  0.044 eV of mid-gap, the supercell within 0.068 eV; gap interval Si64 [6.72-6.77, 7.99-8.08],
  supercell [6.52-6.60, 8.15-8.23] eV; shift-invert band edges around it (k = 16) equal the
  exact VBM and CBM to 1e-14 eV.
* Everything else is exact to rounding: with exact traces (all unit vectors) the recursion
  reproduces the moments of the exact eigenvalues to 2e-12. ``solve_tol=1e-5`` changes the
  moments by 1.5e-4 and N(E) by 0.006 states (Si64, vs 10 states of stochastic error) and saves
  35 % of the CG iterations; ``dtype="float32"`` changes the moments by 2e-6 (N by 1e-4 states).

COST AND PERFORMANCE
--------------------
Cost = ``(n_moments / 2) * (2 + n_cg)`` sparse products of H or S with the (norb, n_random) block
(per step one H product, the CG iterations of the S solve and one S product for the two moments;
S=None: ``n_moments / 2`` products), plus ~40 single-vector Lanczos steps for the bounds and ~40 S
products for the start vectors S^-1/2 r. Two moments per solve (above) replaced one moment per
solve: Si64 2x2x2 supercell (2048 orbitals), M = 256, R = 8, float32, solve_tol 1e-5: CG
iterations 5865 -> 3061 (plus 956 for the bounds), CPU 5.9 -> 3.6 s (back to back; a /tmp script
comparing the two versions, not kept). The Si overlap (ABACUS 1s1p: smallest
eigenvalue 0.17, condition number 17, unit diagonal so Jacobi is the identity) needs
n_cg = 35-37 (solve_tol 1e-8) / 23 (1e-5) iterations per solve without preconditioning,
independent of the system size (Si64 and its 2x2x2 ... 6x6x6 supercells); with the default FSAI
on atom blocks 6 (1e-5), each iteration ~20 % dearer (two products with G, ~36 entries per row
against S's 343), entry-wise FSAI (CSR without blocks) 11. Si64 2x2x2 supercell, M = 256, R = 8,
float32, 1e-5, BSR: 1.7-1.9 s CPU against 7.0-7.7 s for one moment per solve without it
(``kpm_dos`` before and after, back to back on a loaded machine). ``preconditioner="ilu"`` (scipy spilu, drop 1e-3)
needs 5, but its factorization time grows ~ n^1.9 (Si supercells: 1.6 s at 6912 orbitals, 6.9 s
at 16384, 27 s at 32000, 76 s at 55296, one thread): worth it up to ~1e5 orbitals, not beyond.

Products: for real matrices the block product uses torch's MKL sparse CSR kernel (int32
indices) when torch is importable (``backend="auto"``), else ``scipy CSR @ ndarray``. Per stored
nonzero for a block of 8, one thread (Si64 4x4x4 supercell S): scipy 4.7 ns, torch float64
1.6 ns, torch float32 1.0 ns (``dtype="float32"``: storage, products and the CG vectors in
float32 with float64 dot products, the Chebyshev recursion in float64; a 884,736-atom predicted
Si supercell, one block-of-4 solve of 6 iterations, one thread: 20.0 s with float64 CG vectors,
16.2 s in float32, the difference the float64 <-> float32 conversions of every product). Complex matrices use scipy (7 ns/nnz, complex128). Whole DOS, M = 256, R = 8, seed 0, default
preconditioner (FSAI: on atom blocks for BSR input, entry-wise for CSR), CPU seconds of one
thread (``OMP_NUM_THREADS=1``, measured on a shared 2-core machine under load 2-3; CG iterations
per solve in brackets):

    system (Gamma)                            orbitals  nnz(H)  nnz(S)   defaults      float32 + tol 1e-5
    Si64 (CSR)                                     256   6.5e4   6.1e4    0.52 s (13)   0.41 s (9)
    64 block_diag copies of Si64 (CSR)           16384   4.1e6   3.9e6    22 s (13)     10 s (9)
    Si64 4x4x4 supercell (4096 atoms, BSR)       16384   9.7e6   5.7e6    30 s (9)      13 s (6)

(one moment per solve and no preconditioner, before: 108 s and 64 s wall for the supercell).
At scale (``benchmarks/inference_scaling.py --kpm-all --streamed``: predicted Si supercells,
float32 BSR, M = 256, R = 4, tol 1e-5, one thread): 2.0-2.6 ms per atom from 13,824 to 110,592
atoms (220 s for 442,368 orbitals); two threads, atoms in Z-order (``Structure.spatial_order``):
1.94 / 1.79 / 1.44 ms per atom at 13,824 / 110,592 / 10^6 atoms (1439 s for 4e6 orbitals); memory: H and S (4.25 bytes per stored float32 entry), G and
its transpose (~36 entries per row), and ~10 blocks of R vectors.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from eqtb.tb.spectrum import FermiSolver, SpectrumError

__all__ = [
    "BlockProduct",
    "FLOAT32_MIN_NNZ",
    "KPMFermiLevel",
    "KPMResult",
    "Pencil",
    "Preconditioner",
    "block_cg",
    "chebyshev_moments",
    "check_kpm_options",
    "kernel_coefficients",
    "kpm_dos",
    "kpm_pencil",
    "overlap_inverse_sqrt",
    "spectral_bounds",
    "storage_dtype",
]

#: Lorentz kernel parameter lambda (Weisse et al. recommend 3-5)
LORENTZ_LAMBDA = 4.0

#: ``kpm_dos(dtype="auto")`` stores H and S in float32 when H has more stored nonzeros than this.
#: float32 storage changes the moments by ~2e-6 and N(E) by ~1e-4 states (Si64, ACCURACY above),
#: far below the stochastic error, and halves the matrices' memory with ~1.6x faster products.
#: Below 2e7 nonzeros (about 3.4e4 orbitals of Si 1s1p; the Si64 4x4x4 supercell has 9.7e6) a
#: float64 run takes at most ~3 minutes and ~0.4 GB of matrices by the cost model of COST AND
#: PERFORMANCE (256 moments, 8 vectors), so full precision is kept there.
FLOAT32_MIN_NNZ = 2e7


# ------------------------------------------------------------------------------ input checking
def storage_dtype(dtype, complex_: bool) -> type:
    """The numpy type H and S are stored in: ``dtype`` None or float64 -> (complex) float64,
    float32 -> (complex) float32; complex when ``complex_`` (either matrix is)."""
    if dtype is None or np.dtype(dtype) in (np.float64, np.complex128):
        return np.complex128 if complex_ else np.float64
    if np.dtype(dtype) in (np.float32, np.complex64):
        return np.complex64 if complex_ else np.float32
    raise SpectrumError(f"dtype must be float64 or float32 (storage precision), got {dtype!r}")


def _slices(data: np.ndarray, step: int = 1 << 22):
    """The entries of ``data`` (any shape, e.g. BSR blocks) in consecutive slices of ``step``:
    element-wise checks of 10^9 stored entries without a temporary of their size."""
    flat = data.reshape(-1)
    return (flat[a:a + step] for a in range(0, len(flat), step))


def as_pencil(H, S=None, dtype=None):
    """Validate and convert H (and S) to CSR (block-sparse BSR with square blocks stays BSR) with
    int32 indices where possible.

    Raises SpectrumError for non-square, mismatched, non-finite or non-Hermitian input."""
    mats = []
    for name, M in (("H", H), ("S", S)):
        if M is None:
            mats.append(None)
            continue
        if not sp.issparse(M):
            arr = np.asarray(M)
            if arr.ndim != 2:
                raise SpectrumError(f"{name} must be a 2-D (sparse) matrix, got shape {arr.shape}")
            M = sp.csr_matrix(arr)
        if M.ndim != 2 or M.shape[0] != M.shape[1]:
            raise SpectrumError(f"{name} must be square, got shape {M.shape}")
        bsr = M.format == "bsr" and M.blocksize[0] == M.blocksize[1]  # kept block-sparse (predict_sparse)
        M = sp.bsr_matrix(M) if bsr else sp.csr_matrix(M)
        if not np.issubdtype(M.dtype, np.number) or M.dtype.kind not in "fciu":
            raise SpectrumError(f"{name} has unsupported dtype {M.dtype}")
        if not all(np.isfinite(part).all() for part in _slices(M.data)):
            raise SpectrumError(f"{name} contains NaN or infinity")
        mats.append(M)
    H, S = mats
    if S is not None and S.shape != H.shape:
        raise SpectrumError(f"H {H.shape} and S {S.shape} differ in shape")
    if H.shape[0] == 0:
        raise SpectrumError("H is empty")
    cplx = H.dtype.kind == "c" or (S is not None and S.dtype.kind == "c")
    base = storage_dtype(dtype, cplx)
    out = []
    for M in (H, S):
        if M is None:
            out.append(None)
            continue
        M = M.astype(base, copy=False)
        if not M.has_canonical_format:  # never modify the caller's arrays in place
            M = M.copy()
            M.sum_duplicates()
        if M.nnz < 2**31 - 1 and M.shape[0] < 2**31 - 1:
            M.indices = M.indices.astype(np.int32, copy=False)
            M.indptr = M.indptr.astype(np.int32, copy=False)
        out.append(M)
    H, S = out
    rng = np.random.default_rng(12345)
    n = H.shape[0]
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    for name, M in (("H", H), ("S", S)):
        if M is None:
            continue
        xs, ys = x.astype(M.dtype), y.astype(M.dtype)  # a float64 vector would upcast (copy) a float32 M
        a, b = np.vdot(xs, M @ ys), np.vdot(M @ xs, ys)
        top = max((float(np.abs(part).max(initial=0.0)) for part in _slices(M.data)), default=0.0)
        scale = max(abs(a), abs(b), top * 1e-3, 1e-300)
        tol = 1e-5 if M.dtype in (np.float32, np.complex64) else 1e-9
        if abs(a - b) > tol * scale * math.sqrt(n):
            raise SpectrumError(f"{name} is not Hermitian (x.{name}y - ({name}x).y = {abs(a - b):.3e})")
    return H, S, cplx


class BlockProduct:
    """``Y = M @ X`` for a (n, m) block X, one pass over the stored matrix.

    Real matrices use torch's CSR or BSR kernel (int32 indices) when available; complex ones scipy.
    ``M``: scipy CSR, or BSR with square blocks (4.25 instead of 8 bytes per float32 entry for
    4 x 4 blocks; measured as fast: 1.07 vs 1.20 ns per entry, Si64 4x4x4 supercell, block of 8).
    ``X`` is cast to the storage precision; the result stays in it (:attr:`work`): the CG solves run
    in the storage precision (float32 vectors halve their memory traffic and need no conversions,
    which cost a fifth of a solve at 10^6 atoms), their dot products accumulate in float64
    (:func:`_cdot`), and the Chebyshev recursion of :func:`kpm_pencil` casts back to float64."""

    def __init__(self, M: sp.csr_matrix, backend: str = "auto"):
        self.M = M
        self.shape = M.shape
        self.nnz = M.nnz
        self.store = M.dtype
        self.work = M.dtype
        self.torch = None
        if backend not in ("auto", "torch", "scipy"):
            raise SpectrumError(f"backend must be 'auto', 'torch' or 'scipy', got {backend!r}")
        if backend != "scipy" and M.dtype.kind == "f" and M.indices.dtype == np.int32 and M.indptr.dtype == np.int32:
            try:
                import torch
            except ImportError:  # pragma: no cover - torch is a dependency of eqtb
                if backend == "torch":
                    raise SpectrumError("backend='torch' requested but torch is not importable") from None
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    make = torch.sparse_bsr_tensor if M.format == "bsr" else torch.sparse_csr_tensor
                    self.torch = make(torch.from_numpy(M.indptr), torch.from_numpy(M.indices),
                                      torch.from_numpy(M.data), size=M.shape, check_invariants=False)
                self._from_numpy = torch.from_numpy

    def __matmul__(self, X: np.ndarray) -> np.ndarray:
        Xs = np.ascontiguousarray(X, dtype=self.store)
        if self.torch is not None and Xs.shape[1] > 1:  # scipy's csr_matvec is as fast for one vector
            Y = (self.torch @ self._from_numpy(Xs)).numpy()
        else:
            Y = self.M @ Xs
        return Y


def _cdot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Column-wise real part of A^dagger B, (m,), accumulated in float64 (complex128) whatever the
    inputs' precision: a float32 sum over 10^6 rows loses three digits."""
    if np.iscomplexobj(A) or np.iscomplexobj(B):
        return np.einsum("ij,ij->j", np.conj(A), B, dtype=np.complex128).real
    return np.einsum("ij,ij->j", A, B, dtype=np.float64)


# ------------------------------------------------------------------------------- preconditioned CG
class Preconditioner:
    """Approximations of S^-1 for the CG solves: FSAI (:mod:`eqtb.tb.fsai`, ``G^dagger G`` with
    ``G S G^dagger ~ I``; the default), Jacobi (1/diag S), block-Jacobi (inverse of the diagonal
    blocks of S), incomplete LU, or none. FSAI works on blocks of F orbitals: S's own blocks when
    it is BSR, else ``blocks`` when they all have the same size, else single orbitals."""

    def __init__(self, S: sp.csr_matrix, kind: str = "auto", blocks=None, backend: str = "auto"):
        if kind == "auto":
            kind = "fsai"
        self.kind = kind
        n = S.shape[0]
        if kind == "none":
            return
        if kind == "fsai":
            from eqtb.tb.fsai import FSAIError, fsai_factor

            F = S.blocksize[0] if S.format == "bsr" else 1
            if S.format != "bsr" and blocks is not None:
                sizes = np.diff(self._offsets(blocks, n))
                F = int(sizes[0]) if (sizes == sizes[0]).all() else 1
            try:
                G = fsai_factor(S, F, dtype=S.dtype)
            except FSAIError as err:
                raise SpectrumError(str(err)) from None
            self.op = BlockProduct(G, backend)
            self.op_h = BlockProduct((G.conj() if G.dtype.kind == "c" else G).T.tobsr(), backend)
            return
        if kind == "jacobi":
            d = S.diagonal().real
            if not (d > 0).all():
                raise SpectrumError(f"S is not positive definite: diagonal element {d.min():.3e} <= 0")
            self.inv = (1.0 / d)[:, None]
            self.unit = bool(np.all(d == 1.0))  # e.g. normalized atomic orbitals: Jacobi is the identity
            return
        if kind == "ilu":
            from scipy.sparse.linalg import spilu

            work = np.complex128 if S.dtype.kind == "c" else np.float64
            try:
                self.lu = spilu(S.astype(work).tocsc(), drop_tol=1e-3, fill_factor=3)
            except (RuntimeError, MemoryError) as err:
                raise SpectrumError(f"incomplete LU of S failed ({err}); use preconditioner='jacobi'") from None
            return
        if kind != "block-jacobi":
            raise SpectrumError(f"preconditioner must be 'auto', 'fsai', 'jacobi', 'block-jacobi', 'ilu' or "
                                f"'none', got {kind!r}")
        if blocks is None:
            raise SpectrumError("preconditioner='block-jacobi' needs blocks (orbital offsets or sizes)")
        offs = self._offsets(blocks, n)
        Sc = S.tocsr()
        invs = []
        for a, e in itertools.pairwise(offs):
            blk = Sc[a:e, a:e].toarray().astype(np.complex128 if S.dtype.kind == "c" else np.float64)
            try:
                L = np.linalg.cholesky(blk)
            except np.linalg.LinAlgError:
                raise SpectrumError(f"S is not positive definite: its diagonal block of orbitals "
                                    f"{a}:{e} is not") from None
            Li = np.linalg.inv(L)
            invs.append(Li.conj().T @ Li)
        self.op = BlockProduct(sp.block_diag(invs, format="csr").astype(S.dtype), backend)

    @staticmethod
    def _offsets(blocks, n: int) -> np.ndarray:
        """Orbital offsets (B + 1,) from offsets or sizes of blocks partitioning n orbitals."""
        b = np.asarray(blocks, dtype=np.int64).reshape(-1)
        offs = b if (b[0] == 0 and b[-1] == n) else np.concatenate([[0], np.cumsum(b)])
        if offs[-1] != n or (np.diff(offs) <= 0).any():
            raise SpectrumError(f"blocks do not partition {n} orbitals (offsets end at {offs[-1]})")
        return offs

    def __call__(self, R: np.ndarray) -> np.ndarray:
        """An approximation of S^-1 R (may return R itself: callers must not modify the result)."""
        if self.kind == "none":
            return R
        if self.kind == "fsai":
            return self.op_h @ (self.op @ R)
        if self.kind == "jacobi":
            return R if self.unit else self.inv * R
        if self.kind == "ilu":
            return self.lu.solve(R)
        return self.op @ R


def _cdots(*pairs) -> list[np.ndarray]:
    """:func:`_cdot` of several ``(A, B)`` pairs."""
    return [_cdot(A, B) for A, B in pairs]


def block_cg(matvec, B: np.ndarray, precond=None, tol: float = 1e-8, maxiter: int = 1000,
             name: str = "S", dot=_cdot, dots=_cdots):
    """Solve ``S X = B`` for a block of right-hand sides by preconditioned conjugate gradients.

    ``matvec(P)`` returns ``S @ P`` for a whole (n, m) block (one pass over S); ``precond(R)``
    approximates ``S^-1 R``. Each column has its own step lengths alpha, beta; converged columns are
    frozen. Stops when every column's relative residual ``|B - S X| / |B|`` (2-norm, recursively
    updated) is below ``tol``. ``dot(A, B)``: the column-wise real part of ``A^dagger B`` (summed
    over processes when the rows are distributed); ``dots(*pairs)``: the same of several pairs at
    once (one reduction over processes for the two products each iteration ends with). Returns
    ``(X, iterations)``.

    Raises SpectrumError when S is found not positive definite (``p^dagger S p <= 0``) or the
    iteration does not converge in ``maxiter`` steps."""
    B = np.asarray(B)
    squeeze = B.ndim == 1
    if squeeze:
        B = B[:, None]
    X = np.zeros_like(B)
    bn = np.sqrt(dot(B, B))
    bn[bn == 0] = 1.0
    R = B.copy()
    active = np.sqrt(dot(R, R)) / bn >= tol
    if not active.any():
        return (X[:, 0] if squeeze else X), 0
    Z = precond(R) if precond is not None else R
    rz = dot(R, Z)
    P = Z.copy()
    rel = None
    for it in range(1, maxiter + 1):
        Q = matvec(P)
        pq = dot(P, Q)
        if (pq[active] <= 0).any() or (rz[active] <= 0).any():
            raise SpectrumError(f"{name} is not positive definite (conjugate gradient found a direction "
                                f"with p^dagger {name} p <= 0); check the overlap matrix")
        alpha = np.where(active, rz / np.where(active, pq, 1.0), 0.0)
        P *= alpha
        X += P
        Q *= alpha
        R -= Q
        Z = precond(R) if precond is not None else R
        if Z is R:
            rz_new = dot(R, Z)
            rel = np.sqrt(np.maximum(rz_new, 0.0)) / bn
        else:
            rz_new, rr = dots((R, Z), (R, R))
            rel = np.sqrt(rr) / bn
        active = rel >= tol
        if not active.any():
            return (X[:, 0] if squeeze else X), it
        # P holds alpha * p: p_new = z + beta * p = z + (beta / alpha) * P
        beta = np.where(active, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        P *= np.where(alpha != 0, beta / np.where(alpha != 0, alpha, 1.0), 0.0)
        P += Z
        rz = rz_new
    raise SpectrumError(f"conjugate gradient for {name}^-1 did not converge in {maxiter} iterations "
                        f"(largest relative residual {float(np.max(rel)):.2e} > {tol:.1e}); "
                        f"{name} is ill-conditioned or not positive definite; raise max_cg_iter or solve_tol")


class Pencil:
    """``y = S^-1 H x`` for blocks of vectors; counts CG iterations.

    ``Hop``, ``Sop``: the products ``M @ X`` of H and S with (rows, m) blocks (:class:`BlockProduct`,
    or a matrix distributed over processes, :class:`eqtb.tb.dmatrix.DistributedMatrix`, whose
    blocks are the rows this process holds); ``prec``: a :class:`Preconditioner` of S (None: S is
    None). The reductions of the algorithms (:meth:`dot`) and the rows a process holds of a global
    block (:meth:`rows`) are methods, so that a distributed pencil overrides them and KPM, the CG
    solves and the Lanczos bounds run unchanged on it. ``n``: the global matrix size."""

    def __init__(self, Hop, Sop=None, prec=None, solve_tol: float = 1e-8, max_cg_iter: int = 1000):
        self.Hop, self.Sop, self.prec = Hop, Sop, prec
        self.n = int(Hop.shape[0])
        self.cplx = np.dtype(Hop.work).kind == "c" or (Sop is not None and np.dtype(Sop.work).kind == "c")
        self.solve_tol = solve_tol
        self.max_cg_iter = max_cg_iter
        self.cg_iterations: list[int] = []

    @classmethod
    def from_matrices(cls, H, S, preconditioner="auto", blocks=None, backend="auto", solve_tol=1e-8,
                      max_cg_iter=1000) -> "Pencil":
        """The pencil of scipy CSR matrices H and S (S None: orthogonal), as :func:`as_pencil` returns them."""
        prec = Preconditioner(S, preconditioner, blocks, backend) if S is not None else None
        return cls(BlockProduct(H, backend), BlockProduct(S, backend) if S is not None else None, prec,
                   solve_tol, max_cg_iter)

    def dot(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """Column-wise real part of ``A^dagger B``, (m,)."""
        return _cdot(A, B)

    def dots(self, *pairs) -> list[np.ndarray]:
        """:meth:`dot` of several ``(A, B)`` pairs (one reduction where the rows are distributed)."""
        return _cdots(*pairs)

    def rows(self, X: np.ndarray) -> np.ndarray:
        """The rows of a global (n, m) block that this pencil's blocks hold (all of them here)."""
        return X

    def solve(self, Y, tol=None):
        if self.Sop is None:
            return Y
        X, it = block_cg(self.Sop.__matmul__, Y, self.prec, tol or self.solve_tol, self.max_cg_iter, dot=self.dot,
                         dots=self.dots)
        self.cg_iterations.append(it)
        return X

    def times_s(self, X):
        """``S @ X`` (X itself when S is None)."""
        return X if self.Sop is None else self.Sop @ X

    def apply(self, X, tol=None):
        """(S^-1 H X, H X)"""
        Y = self.Hop @ X
        return self.solve(Y, tol), Y

    def overlap_pencil(self) -> Pencil:
        """The standard eigenproblem of S alone (``S x = lambda x``), with this pencil's reductions
        and rows (e.g. for :func:`spectral_bounds` of S)."""
        if self.Sop is None:
            raise SpectrumError("the pencil has no overlap matrix")
        p = copy.copy(self)
        p.Hop, p.Sop, p.prec, p.cg_iterations = self.Sop, None, None, []
        return p


# ------------------------------------------------------------------------------- spectral bounds
#: :func:`spectral_bounds` reorthogonalizes its Lanczos vectors up to this many orbitals (memory:
#: 2 x steps vectors, 64 MB at the limit)
REORTHOGONALIZE_MAX_N = 100_000


#: relative residual of the S^-1 solves in :func:`spectral_bounds` (the looser of it and ``solve_tol``):
#: the Ritz values need far less than the moments. Measured on a predicted Si supercell (13,824
#: atoms, 40 steps): the bounds at 1e-3 differ from those at 1e-5 by 1.2e-4 eV (the margin adds
#: 0.26 eV) with 160 instead of 240 CG iterations.
LANCZOS_SOLVE_TOL = 1e-3


def spectral_bounds(H, S=None, steps: int = 40, margin: float = 0.01, seed: int = 0,
                    solve_tol: float = 1e-8, _pencil=None) -> tuple[float, float]:
    """Bounds (emin, emax) in eV enclosing all eigenvalues of ``H c = E S c``.

    A ``steps``-step Lanczos run on ``S^-1 H`` in the S inner product (one random start vector,
    ``S r`` of each new vector by a product with S). Up to :data:`REORTHOGONALIZE_MAX_N` orbitals
    every new vector is S-orthogonalized against all earlier ones: small cells, above all symmetric
    ones with degenerate levels, exhaust their Krylov space within the steps (before both, an 8-atom
    Si cell got Ritz values of thousands of eV). Larger matrices run without it (ghost copies do
    not affect extreme Ritz values). Each extreme Ritz value is pushed outwards by its residual norm
    ``beta_{m+1} |s_m|`` (an eigenvalue lies within that distance) and then by ``margin`` times the
    width."""
    if _pencil is None:
        H, S, _ = as_pencil(H, S)
        _pencil = Pencil.from_matrices(H, S, solve_tol=solve_tol)
    pen = _pencil
    n = pen.n
    rng = np.random.default_rng(seed + 7919)
    v = rng.standard_normal((n, 1))
    if pen.cplx:
        v = v + 1j * rng.standard_normal((n, 1))
    v = pen.rows(v)
    Sv = pen.times_s(v)
    nrm = math.sqrt(pen.dot(v, Sv)[0])
    q, Sq = v / nrm, Sv / nrm
    q_old = np.zeros_like(q)
    basis = [] if n <= REORTHOGONALIZE_MAX_N else None  # (q, S q) of every step
    alphas, betas = [], []
    beta = 0.0
    m = min(steps, n)
    tol = max(solve_tol, LANCZOS_SOLVE_TOL)
    for j in range(m):
        x, y = pen.apply(q, tol=tol)
        alpha = pen.dot(q, y)[0]
        r = x - alpha * q - beta * q_old
        if basis is not None:
            basis.append((q, Sq))
            for _ in range(2):  # twice is enough (Kahan-Parlett)
                c = pen.dots(*[(Sb, r) for _, Sb in basis])
                for (b, _), ck in zip(basis, c):
                    r -= ck[0] * b
        # S r by a product, not by the recursion y - alpha S q - ...: that carries the solves' error,
        # which the division by a small beta amplifies step after step
        Sr = pen.times_s(r)
        alphas.append(alpha)
        beta = math.sqrt(max(pen.dot(r, Sr)[0], 0.0))
        betas.append(beta)
        if beta <= 1e-12 * (max(abs(a) for a in alphas) + max(betas)) or j == m - 1:  # invariant subspace
            break
        q_old = q
        q, Sq = r / beta, Sr / beta
    from scipy.linalg import eigh_tridiagonal

    a = np.array(alphas)
    if len(a) == 1:
        theta, s = a, np.ones((1, 1))
    else:
        theta, s = eigh_tridiagonal(a, np.array(betas[:-1]))
    res = abs(betas[-1]) * np.abs(s[-1])
    lo, hi = theta[0] - res[0], theta[-1] + res[-1]
    width = max(hi - lo, 1e-6 * max(abs(lo), abs(hi), 1.0))
    return float(lo - margin * width), float(hi + margin * width)


def overlap_inverse_sqrt(pen: Pencil, X: np.ndarray, tol: float = 1e-8, steps: int = 40, seed: int = 0,
                         max_degree: int = 4000) -> tuple[np.ndarray, int]:
    """``(S^-1/2 X, products)``: a Chebyshev expansion of ``x^-1/2`` on bounds of the spectrum of S
    (:func:`spectral_bounds` of :meth:`Pencil.overlap_pencil`), truncated where the sum of the
    dropped coefficients is below ``tol`` times the smallest value of ``x^-1/2`` there (so the
    relative error of each column is below ``tol``); ``products``: the products with S it took
    (degree ~ ``sqrt(cond S) ln(2/tol) / 2``: 38 for the Si overlap, condition number 17, tol 1e-8).

    Raises SpectrumError when the Lanczos estimate of S's smallest eigenvalue is not positive."""
    lo, hi = spectral_bounds(None, None, steps, 0.01, seed, _pencil=pen.overlap_pencil())
    if not lo > 0:
        raise SpectrumError(f"S is not positive definite: a Lanczos estimate puts its smallest eigenvalue at "
                            f"{lo:.3e} (largest {hi:.3e}); check the overlap matrix")
    c_mid, half = 0.5 * (hi + lo), 0.5 * (hi - lo)
    degree = 64
    while True:
        c = np.polynomial.chebyshev.chebinterpolate(lambda t: (c_mid + half * t) ** -0.5, degree)
        tail = np.cumsum(np.abs(c[::-1]))[::-1]  # tail[k] = sum_{j >= k} |c_j|
        keep = np.nonzero(tail < tol * hi ** -0.5)[0]
        if len(keep):
            K = max(int(keep[0]), 1)
            break
        if degree >= max_degree:
            raise SpectrumError(f"S is too ill-conditioned for KPM (eigenvalues in [{lo:.3e}, {hi:.3e}]: a "
                                f"degree-{max_degree} expansion of S^-1/2 does not reach {tol:.0e})")
        degree *= 2
    # Clenshaw-free three-term recursion on St = (S - c_mid) / half, summing c_k T_k(St) X
    t_prev, t = X, (pen.Sop @ X - c_mid * X) / half
    Z = c[0] * X + c[1] * t
    for k in range(2, K):
        t_next = (pen.Sop @ t - c_mid * t) * (2.0 / half) - t_prev
        Z += c[k] * t_next
        t_prev, t = t, t_next
    return Z, K - 1


# ------------------------------------------------------------------------------------ kernels
def kernel_coefficients(n_moments: int, kernel: str = "jackson") -> np.ndarray:
    """Damping factors g_m (m = 0..n_moments-1): ``"jackson"``
    ``[(M-m+1) cos(pi m/(M+1)) + sin(pi m/(M+1)) cot(pi/(M+1))] / (M+1)``, ``"lorentz"``
    ``sinh(lambda (1 - m/M)) / sinh(lambda)`` (lambda = 4), or ``"none"`` (Dirichlet, all 1)."""
    M = int(n_moments)
    m = np.arange(M)
    if kernel == "jackson":
        q = math.pi / (M + 1)
        return ((M - m + 1) * np.cos(q * m) + np.sin(q * m) / math.tan(q)) / (M + 1)
    if kernel == "lorentz":
        lam = LORENTZ_LAMBDA
        return np.sinh(lam * (1.0 - m / M)) / math.sinh(lam)
    if kernel in ("none", "dirichlet"):
        return np.ones(M)
    raise SpectrumError(f"unknown kernel {kernel!r}; use 'jackson', 'lorentz' or 'none'")


def chebyshev_moments(eigenvalues, bounds, n_moments: int) -> np.ndarray:
    """Exact per-orbital moments ``mu_m = (1/n) sum_k T_m(x_k)`` of given eigenvalues (eV) rescaled
    by ``bounds`` (all eigenvalues must lie inside). Use with :meth:`KPMResult.from_moments` to
    get the kernel-broadened exact DOS (the reference a KPM run should reproduce)."""
    e = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    lo, hi = bounds
    a, b = 0.5 * (hi - lo), 0.5 * (hi + lo)
    x = (e - b) / a
    if np.abs(x).max() > 1:
        raise SpectrumError(f"eigenvalues [{e.min():.4f}, {e.max():.4f}] eV lie outside the bounds {bounds}")
    th = np.arccos(x)
    return np.cos(np.outer(np.arange(n_moments), th)).mean(axis=1)


# ------------------------------------------------------------------------------------- result
@dataclass
class KPMResult:
    """KPM density of states of one sparse generalized eigenproblem.

    energies (nE,) eV; dos (nE,) states/eV for the whole matrix times ``spin_degeneracy``
    (integrates to ``spin_degeneracy * norb``); dos_error (nE,) its standard error from the spread
    over random vectors; moments (n_moments,) per-orbital Chebyshev moments (mu_0 = 1);
    moments_per_vector (n_random, n_moments); bounds (emin, emax) eV mapped to [-1, 1];
    resolution (eV) the kernel's broadening at the band centre (Jackson: standard deviation
    ``a sqrt(M/(2(M+1)) (1 - cos(2 pi/(M+1)))) ~ pi (emax - emin) / (2 M)``; Lorentz: half width
    ``a lambda / M``); stochastic_error the largest standard error of N(E) over ``energies``
    divided by ``spin_degeneracy * norb``; dtype the storage precision of H and S in the
    products (``"float64"``, ``"float32"``, ``"complex128"`` or ``"complex64"``)."""

    energies: np.ndarray
    dos: np.ndarray
    moments: np.ndarray
    bounds: tuple[float, float]
    n_moments: int
    n_random: int
    norb: int
    kernel: str = "jackson"
    spin_degeneracy: int = 2
    moments_per_vector: np.ndarray | None = None
    dos_error: np.ndarray | None = None
    cg_iterations: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    dtype: str = "float64"

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_moments(cls, moments_per_vector, bounds, norb: int, energies=None, kernel: str = "jackson",
                     spin_degeneracy: int = 2, **extra) -> KPMResult:
        """Build a result (DOS on ``energies``, default 2000 points across the bounds) from
        per-vector moments (R, M) or one moment vector (M,) (e.g. :func:`chebyshev_moments`)."""
        mv = np.atleast_2d(np.asarray(moments_per_vector, dtype=np.float64))
        lo, hi = float(bounds[0]), float(bounds[1])
        if not hi > lo:
            raise SpectrumError(f"bounds must satisfy emin < emax, got {bounds}")
        if energies is None:
            energies = np.linspace(lo, hi, 2000)
        energies = np.asarray(energies, dtype=np.float64).reshape(-1)
        res = cls(energies=energies, dos=np.zeros(0), moments=mv.mean(axis=0), bounds=(lo, hi),
                  n_moments=mv.shape[1], n_random=mv.shape[0], norb=int(norb), kernel=kernel,
                  spin_degeneracy=int(spin_degeneracy), moments_per_vector=mv, **extra)
        per_vec = res._dos_per_vector(energies)
        res.dos = per_vec.mean(axis=0)
        res.dos_error = (per_vec.std(axis=0, ddof=1) / math.sqrt(mv.shape[0]) if mv.shape[0] > 1
                         else np.full_like(res.dos, np.nan))
        return res

    # ---------------------------------------------------------------- helpers
    @property
    def _ab(self):
        lo, hi = self.bounds
        return 0.5 * (hi - lo), 0.5 * (hi + lo)

    @property
    def _g(self):
        return kernel_coefficients(self.n_moments, self.kernel)

    def _theta(self, E):
        a, b = self._ab
        x = (np.asarray(E, dtype=np.float64) - b) / a
        return x, np.arccos(np.clip(x, -1.0, 1.0))

    def _dos_per_vector(self, E) -> np.ndarray:
        x, th = self._theta(E)
        a, _ = self._ab
        m = np.arange(self.n_moments)
        c = self._g * self.moments_per_vector
        c[:, 1:] *= 2.0
        inside = np.abs(x) < 1.0 - 1e-9  # the 1/sqrt(1 - x^2) weight is singular at the bounds
        w = np.zeros_like(x)
        w[inside] = 1.0 / (math.pi * a * np.sqrt(1.0 - x[inside] ** 2))
        T = np.cos(np.outer(m, th.reshape(-1)))  # (M, nE)
        return self.spin_degeneracy * self.norb * (c @ T) * w.reshape(-1)[None]

    def _integrated_per_vector(self, E) -> np.ndarray:
        x, th = self._theta(E)
        x, th = x.reshape(-1), th.reshape(-1)
        m = np.arange(1, self.n_moments)
        c = self._g * self.moments_per_vector
        S = np.sin(np.outer(m, th)) / m[:, None]  # (M-1, nE)
        frac = c[:, :1] * (1.0 - th / math.pi)[None] - (2.0 / math.pi) * (c[:, 1:] @ S)
        frac[:, x <= -1.0] = 0.0  # exactly 0 / all states outside the bounds
        frac[:, x >= 1.0] = c[:, :1]
        return self.spin_degeneracy * self.norb * frac

    # ---------------------------------------------------------------- public
    @property
    def resolution(self) -> float:
        """Kernel broadening at the band centre (eV); see the class docstring."""
        return self.resolution_at(self._ab[1])

    def resolution_at(self, E):
        """Kernel broadening (eV) at energy E: Jackson standard deviation
        ``a sqrt((M - x^2 (M-1)) / (2 (M+1)) (1 - cos(2 pi/(M+1))))`` (x = (E-b)/a), Lorentz half
        width ``a lambda / M`` (independent of E)."""
        a, _ = self._ab
        M = self.n_moments
        x, _ = self._theta(E)
        x = np.clip(x, -1.0, 1.0)
        if self.kernel == "lorentz":
            r = a * LORENTZ_LAMBDA / M * np.ones_like(x)
        else:
            r = a * np.sqrt((M - x**2 * (M - 1)) / (2.0 * (M + 1)) * (1.0 - math.cos(2 * math.pi / (M + 1))))
        return float(r) if np.ndim(r) == 0 else r

    @property
    def stochastic_error(self) -> float:
        """Largest standard error of N(E) over ``energies`` divided by ``spin_degeneracy * norb``
        (NaN with a single random vector: no spread to estimate it from)."""
        return float(np.max(self.integrated_error(self.energies)) / (self.spin_degeneracy * self.norb))

    def integrated(self, E):
        """Number of states below E (spin degeneracy included), from the moments in closed form
        (no quadrature): ``g norb [g_0 mu_0 (1 - theta/pi) - (2/pi) sum_m g_m mu_m sin(m theta)/m]``,
        ``theta = arccos((E - b)/a)``; 0 below the bounds, ``g norb`` above."""
        out = self._integrated_per_vector(E).mean(axis=0)
        return float(out[0]) if np.ndim(E) == 0 else out.reshape(np.shape(E))

    def integrated_error(self, E):
        """Standard error (states) of :meth:`integrated` at E from the spread over random vectors
        (NaN when n_random == 1)."""
        pv = self._integrated_per_vector(E)
        if pv.shape[0] < 2:
            out = np.full(pv.shape[1], np.nan)
        else:
            out = pv.std(axis=0, ddof=1) / math.sqrt(pv.shape[0])
        return float(out[0]) if np.ndim(E) == 0 else out.reshape(np.shape(E))

    def dos_at(self, E):
        """DOS (states/eV) at arbitrary energies E from the moments."""
        out = self._dos_per_vector(np.atleast_1d(E)).mean(axis=0)
        return float(out[0]) if np.ndim(E) == 0 else out.reshape(np.shape(E))

    def _low_runs(self, threshold: float):
        """Energy grid (step resolution / 8 across the bounds) and the index runs (lo, hi) where the
        DOS is below ``threshold`` times its maximum, leaving out runs that touch the bounds (below
        or above the whole spectrum, not gaps)."""
        emin, emax = self.bounds
        step = self.resolution / 8
        grid = np.arange(emin, emax + step, step)
        d = self.dos_at(grid)
        low = np.concatenate([[False], d < threshold * d.max(), [False]])
        edges = np.flatnonzero(np.diff(low.astype(np.int8)))
        runs = [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]
        return grid, [(a, b) for a, b in runs if a > 0 and b < len(grid) - 1]

    def gaps(self, threshold: float = 0.02) -> list[tuple[float, float]]:
        """Every interval (low, high) eV inside the bounds where the kernel-smoothed DOS stays below
        ``threshold`` times its maximum: the gaps of the spectrum, each narrowed by about one to two
        :attr:`resolution` at either edge by the kernel (and deep DOS minima inside bands, if any
        fall below the threshold)."""
        grid, runs = self._low_runs(threshold)
        return [(float(grid[a]), float(grid[b])) for a, b in runs]

    def gap_around(self, E: float, threshold: float = 0.02) -> tuple[float, float] | None:
        """The interval of :meth:`gaps` that contains E (an estimate of a gap containing E, edges
        blurred by :attr:`resolution`), or None when the DOS at E is above the threshold."""
        grid, runs = self._low_runs(threshold)
        k = int(np.clip(np.searchsorted(grid, E), 0, len(grid) - 1))
        for a, b in runs:
            if a <= k <= b:
                return float(grid[a]), float(grid[b])
        return None

    def count_sigma(self, E) -> float:
        """Standard error (states) of :meth:`integrated` at E used to judge electron counts: the
        larger of the estimate from the spread over the random vectors (:meth:`integrated_error`)
        and the Hutchinson bound for a projector, ``g sqrt(2 f (1 - f) norb / R)`` with
        ``f = N(E) / (g norb)`` (Rademacher vectors on an orthogonal basis; random phases give
        half the variance; the S^-1 H estimator has about the same variance, module docstring)."""
        total = self.spin_degeneracy * self.norb
        f = float(np.clip(self.integrated(E) / total, 0.0, 1.0))
        bound = self.spin_degeneracy * math.sqrt(2.0 * f * (1.0 - f) * self.norb / self.n_random)
        est = self.integrated_error(E) if self.n_random > 1 else float("nan")
        return float(max(bound, est if np.isfinite(est) else 0.0))

    def fermi_level(self, n_electrons: float, tol: float = 1e-10) -> float:
        """Energy (eV) where :meth:`integrated` equals ``n_electrons`` (all spins), by bisection
        between the bounds. For an insulator the result lies in the gap only if the stochastic
        error of N(E) (:meth:`integrated_error`, in states) is well below the few states at the
        gap edges: rarely (module docstring); use :meth:`fermi_estimate` for a Fermi level."""
        total = self.spin_degeneracy * self.norb
        if not 0 < n_electrons < total:
            raise SpectrumError(f"{n_electrons:g} electrons do not fit in {self.norb} orbitals x "
                                f"spin degeneracy {self.spin_degeneracy} (0 < N < {total} required)")
        lo, hi = self.bounds
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if self.integrated(mid) < n_electrons:
                lo = mid
            else:
                hi = mid
            if hi - lo < tol or not lo < 0.5 * (lo + hi) < hi:
                break
        return 0.5 * (lo + hi)

    def fermi_estimate(self, n_electrons: float, threshold: float = 0.02,
                       n_sigma: float = 4.0) -> KPMFermiLevel:
        """Fermi level (eV) for ``n_electrons`` (all spins), placed in a gap when the DOS has one
        that holds that many states below it, else the N(E) = n crossing (:meth:`fermi_level`).

        The crossing itself is not a good level for an insulator: the stochastic error of N(E)
        grows like ``sqrt(norb / n_random)`` states (41 states for 6912 orbitals and 8 vectors),
        so the plateau of N(E) across the gap sits that far from n and the crossing lands inside a
        band, where the DOS near a band edge is small and a few tens of states are tenths of an
        eV (Si64 3x3x3 supercell, 6912 orbitals: plateau at 7008 states for 6912 electrons, the
        crossing 0.8 eV below the valence-band maximum). So: of the gaps (:meth:`gaps`, DOS below
        ``threshold`` times its maximum) that contain the crossing or whose count N(middle) lies
        within ``n_sigma`` times :meth:`count_sigma` (at least 1 state) of n, the widest; ``mu``
        is its middle. The widest, not the nearest count: the discrete spectrum of a small cell at
        one k-point has gaps between levels inside the bands too, and one of those a few states
        from n is as likely as the band gap to have the count nearest n within the noise.

        Accuracy (module docstring, FERMI LEVEL OF AN INSULATOR): the gap interval is the true
        gap narrowed by the kernel, by up to ~2 resolutions at an edge (0.2-0.3 eV for Si64, 256
        moments; 0-0.13 eV for its 3x3x3 supercell, whose DOS rises more slowly at the edges, and
        the interval can start up to ~0.01 eV before an edge with few states at it); ``mu`` lies
        within 0.07 eV of the exact mid-gap in all runs, so band edges searched around it
        (:func:`eqtb.tb.lanczos.band_edges`) are bracketed and exact. A count within the noise
        cannot be told from n: a system with a few electrons more or fewer than a filled band
        (doped, a defect level within ``n_sigma`` sigma of the gap count) gets the level of the
        nearby gap, and so does a count inside the bands of a small cell at one k-point when one
        of the gaps between its discrete levels lies within the noise (Si64, 256 orbitals,
        standard error 8 states: 200 electrons get the level gap holding 186 states, 400 none);
        :attr:`KPMFermiLevel.states_below` and ``states_below_error`` say how many states KPM
        counts below ``mu``. Gaps narrower than ~4 resolutions are not resolved.

        ``threshold``: relative DOS below which the spectrum counts as a gap; ``n_sigma``: how
        many standard errors of N(E) a gap's count may be from ``n_electrons``."""
        crossing = self.fermi_level(n_electrons)
        gap = None
        for lo, hi in self.gaps(threshold):
            mid = 0.5 * (lo + hi)
            dev = abs(self.integrated(mid) - n_electrons)
            if ((lo <= crossing <= hi or dev <= max(n_sigma * self.count_sigma(mid), 1.0))
                    and (gap is None or hi - lo > gap[1] - gap[0])):
                gap = (lo, hi)
        mu = crossing if gap is None else 0.5 * (gap[0] + gap[1])
        err = self.integrated_error(mu) if self.n_random > 1 else float("nan")
        return KPMFermiLevel(float(mu), float(n_electrons), float(crossing), gap, float(self.integrated(mu)),
                             float(err) if np.isfinite(err) else None)

    def fermi_solver(self, where: str = "at Gamma") -> FermiSolver:
        """The ``solve`` of :func:`eqtb.tb.spectrum.resolve_fermi_level` from this DOS
        (:meth:`fermi_estimate`); ``where`` names the k-point in the source text
        (``"nel_atom, KPM at Gamma"`` or ``"nel_atom, middle of the KPM gap at Gamma"``)."""
        def solve(n: float) -> tuple[KPMFermiLevel, str]:
            f = self.fermi_estimate(n)
            return f, (f"KPM {where}" if f.gap is None else f"middle of the KPM gap {where}")

        return solve

    def as_dict(self) -> dict:
        """JSON-serialisable summary (arrays as lists)."""
        return {
            "energies": self.energies.tolist(), "dos": self.dos.tolist(),
            "dos_error": (None if self.dos_error is None or not np.isfinite(self.dos_error).all()
                          else self.dos_error.tolist()),
            "moments": self.moments.tolist(), "bounds": [float(b) for b in self.bounds],
            "n_moments": int(self.n_moments), "n_random": int(self.n_random), "norb": int(self.norb),
            "kernel": self.kernel, "spin_degeneracy": int(self.spin_degeneracy),
            "resolution": self.resolution,
            "stochastic_error": self.stochastic_error if self.n_random > 1 else None,
            "cg_iterations": {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                              for k, v in self.cg_iterations.items()},
            "timings": {k: float(v) for k, v in self.timings.items()}, "dtype": self.dtype,
            "units": {"energies": "eV", "dos": "states/eV (whole matrix, spin included)"},
        }


@dataclass
class KPMFermiLevel:
    """Fermi level from a KPM DOS (:meth:`KPMResult.fermi_estimate`). ``mu`` (eV): the level
    (``float(result)``); ``crossing`` (eV): where the integrated DOS equals ``n_electrons``;
    ``gap``: (low, high) eV of the DOS gap holding ``mu`` (edges blurred by the resolution), None
    when no gap with ``n_electrons`` states below it was found (a metal, or no gap resolved);
    ``states_below``: KPM's count N(mu) (states, spin included) and ``states_below_error`` its
    standard error (None with one random vector): for an insulator ``states_below`` differs from
    ``n_electrons`` by the stochastic error only."""

    mu: float
    n_electrons: float
    crossing: float
    gap: tuple[float, float] | None = None
    states_below: float | None = None
    states_below_error: float | None = None

    def __float__(self) -> float:
        return float(self.mu)

    def as_dict(self) -> dict:
        return {"mu": self.mu, "n_electrons": self.n_electrons, "crossing": self.crossing,
                "gap": None if self.gap is None else [float(g) for g in self.gap],
                "states_below": self.states_below, "states_below_error": self.states_below_error}


# ---------------------------------------------------------------------------------- main entry
def _random_block(n: int, R: int, kind: str, cplx: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "auto":
        kind = "phase" if cplx else "rademacher"
    if kind == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(n, R))
    if kind == "phase":
        return np.exp(2j * np.pi * rng.random((n, R)))
    raise SpectrumError(f"random_vectors must be 'auto', 'rademacher' or 'phase', got {kind!r}")


def kpm_dos(H, S=None, energies=None, n_moments: int = 256, n_random: int = 8,
            kernel: str = "jackson", bounds=None, seed: int = 0, solve_tol: float = 1e-8,
            spin_degeneracy: int = 2, progress: bool = False, dtype=None,
            preconditioner: str = "auto", blocks=None, random_vectors: str = "auto",
            backend: str = "auto", max_cg_iter: int = 1000, lanczos_steps: int = 40,
            margin: float = 0.01) -> KPMResult:
    """KPM density of states of ``H c = E S c`` (one k-point; see the module docstring).

    Parameters
    ----------
    H, S : scipy sparse (or dense) square matrices, Hermitian; H in eV, S positive definite or
        None (orthogonal basis). Complex matrices (H(k) at a general k) are supported.
    energies : (nE,) eV where the DOS is evaluated (default 2000 points across the bounds).
    n_moments : Chebyshev moments M (resolution ~ pi (emax - emin) / (2 M)).
    n_random : random vectors R (stochastic error ~ 1 / sqrt(R norb)); all are propagated as one
        (norb, R) block.
    kernel : "jackson" (default) or "lorentz" (lambda = 4).
    bounds : (emin, emax) eV overriding the Lanczos estimate; must contain the whole spectrum.
    seed : seed of the random vectors.
    solve_tol : relative residual at which the block CG for S^-1 stops (every column).
    spin_degeneracy : g, multiplies the DOS.
    progress : tqdm bar over moments.
    dtype : None/"float64", "float32" or "auto": storage precision of H and S for the products
        (float32 halves memory and is ~1.6x faster; the CG vectors follow it, the recursion stays
        in float64). "auto": float32 when H has more than :data:`FLOAT32_MIN_NNZ` stored nonzeros,
        else float64.
    preconditioner : "auto" = "fsai" (factorized sparse approximate inverse, :mod:`eqtb.tb.fsai`:
        ~4x fewer CG iterations for the Si overlap at ~20 % extra per iteration, built in linear
        time), "jacobi", "block-jacobi", "ilu" (scipy spilu of S, drop_tol 1e-3: ~5x fewer
        iterations, but a factorization growing ~ n^1.9; worth it below ~1e5 orbitals), or "none".
    blocks : orbital offsets (e.g. ``operator.atom_orbital_offsets``) or block sizes: the blocks of
        block-Jacobi, and of FSAI when they all have one size (S in BSR brings its own).
    random_vectors : "auto" (Rademacher for real, random phase for complex), "rademacher", "phase".
    backend : "auto" (torch CSR for real matrices when importable, else scipy), "torch", "scipy".
    max_cg_iter : CG iteration limit per solve (SpectrumError beyond).
    lanczos_steps, margin : bounds estimate (see :func:`spectral_bounds`).

    Returns
    -------
    :class:`KPMResult`. Raises SpectrumError for bad input, an S that is not positive definite, or
    ``bounds`` that do not contain the spectrum (the Chebyshev recursion diverges)."""
    check_kpm_options(n_moments, n_random, kernel, solve_tol)
    t0 = time.perf_counter()
    if isinstance(dtype, str) and dtype == "auto":
        nnz = H.nnz if sp.issparse(H) else np.count_nonzero(H)
        dtype = "float32" if nnz > FLOAT32_MIN_NNZ else None
    H, S, _ = as_pencil(H, S, dtype)
    pen = Pencil.from_matrices(H, S, preconditioner, blocks, backend, solve_tol, max_cg_iter)
    return kpm_pencil(pen, energies, n_moments, n_random, kernel, bounds, seed, spin_degeneracy, progress,
                      random_vectors, lanczos_steps, margin, dtype=str(H.dtype), t_start=t0)


def check_kpm_options(n_moments, n_random, kernel, solve_tol) -> None:
    """SpectrumError for options :func:`kpm_dos` cannot use."""
    if int(n_moments) < 2:
        raise SpectrumError(f"n_moments must be >= 2, got {n_moments}")
    if int(n_random) < 1:
        raise SpectrumError(f"n_random must be >= 1, got {n_random}")
    kernel_coefficients(2, kernel)  # validates the name
    if not solve_tol > 0:
        raise SpectrumError(f"solve_tol must be > 0, got {solve_tol}")


def kpm_pencil(pen: Pencil, energies=None, n_moments: int = 256, n_random: int = 8, kernel: str = "jackson",
               bounds=None, seed: int = 0, spin_degeneracy: int = 2, progress: bool = False,
               random_vectors: str = "auto", lanczos_steps: int = 40, margin: float = 0.01,
               dtype: str = "float64", t_start: float | None = None) -> KPMResult:
    """The KPM DOS of a :class:`Pencil` (:func:`kpm_dos` after its input checks; a pencil distributed
    over processes gives every process the same result, its reductions summed over them). The random
    vectors are the rows :meth:`Pencil.rows` holds of the global block of ``seed``, so the moments do
    not depend on how the rows are distributed. ``dtype``: the storage precision, for the result;
    ``t_start``: when the set-up began (``time.perf_counter``), for the timings."""
    M, R = int(n_moments), int(n_random)
    t0 = time.perf_counter() if t_start is None else t_start
    n = pen.n
    t1 = time.perf_counter()
    if bounds is None:
        bounds = spectral_bounds(None, None, lanczos_steps, margin, seed, pen.solve_tol, _pencil=pen)
    else:
        bounds = (float(bounds[0]), float(bounds[1]))
        if not (np.isfinite(bounds).all() and bounds[1] > bounds[0]):
            raise SpectrumError(f"bounds must be finite with emin < emax, got {bounds}")
    n_lanczos_cg = sum(pen.cg_iterations)
    pen.cg_iterations.clear()
    t2 = time.perf_counter()
    lo, hi = bounds
    a, b = 0.5 * (hi - lo), 0.5 * (hi + lo)

    r = pen.rows(_random_block(n, R, random_vectors, pen.cplx, seed))
    z, n_sqrt = (r, 0) if pen.Sop is None else overlap_inverse_sqrt(pen, r, tol=min(pen.solve_tol, 1e-6),
                                                                     steps=lanczos_steps, seed=seed)

    def step(u):
        x, _ = pen.apply(u)
        x = x.astype(u.dtype, copy=False)  # the recursion in float64 whatever the storage precision
        x -= b * u
        x *= 1.0 / a
        return x

    # u_m = T_m(At) z; mu_0 from r (exact), mu_1 = z^T S u_1, then two moments per solve:
    # mu_2m = 2 u_m^T S u_m - z^T S z, mu_2m+1 = 2 u_m+1^T S u_m - mu_1 (module docstring)
    mv = np.full((R, M), np.nan)
    mv[:, 0] = pen.dot(r, r) / n
    Sz = pen.times_s(z)
    u = step(z)
    m0z, m1 = pen.dots((z, Sz), (u, Sz))
    mv[:, 1] = m1 / n
    u_prev = z
    steps = range(1, (M + 1) // 2)  # m = 1 .. ; moment 2m (and 2m + 1 while < M)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="KPM moments", unit="solve", leave=False)
    growth = 0.0
    for m in steps:
        Su = pen.times_s(u)
        if 2 * m + 1 < M:
            un = step(u)
            un *= 2.0
            un -= u_prev
            uu, nu = pen.dots((u, Su), (un, Su))
            mv[:, 2 * m + 1] = (2.0 * nu - m1) / n
            u_prev, u = u, un
        else:
            uu = pen.dot(u, Su)
        mv[:, 2 * m] = (2.0 * uu - m0z) / n
        growth = max(growth, float(np.abs(mv[:, 2 * m:2 * m + 2]).max()))
        if not np.isfinite(mv[:, 2 * m:2 * m + 2]).all() or growth > 1e3:
            break
    moments = mv.mean(axis=0)
    thresh = 1.0 + max(0.05, 8.0 / math.sqrt(R * n))
    if not np.isfinite(mv).all() or np.abs(moments).max() > thresh:
        raise SpectrumError(f"the Chebyshev recursion diverges (|mu_m| up to {np.nanmax(np.abs(moments)):.3g} > 1): "
                            f"the bounds ({lo:.4f}, {hi:.4f}) eV do not contain the whole spectrum; "
                            f"widen them (or let kpm_dos estimate them with bounds=None)")
    t3 = time.perf_counter()
    its = pen.cg_iterations
    cg = {"per_solve_mean": float(np.mean(its)) if its else 0.0, "per_solve_max": int(max(its)) if its else 0,
          "total": int(sum(its)), "solves": len(its), "lanczos_total": int(n_lanczos_cg),
          "inverse_sqrt_products": n_sqrt}
    timings = {"setup": t1 - t0, "bounds": t2 - t1, "moments": t3 - t2}
    res = KPMResult.from_moments(mv, bounds, n, energies, kernel, spin_degeneracy,
                                 cg_iterations=cg, timings=timings, dtype=dtype)
    res.timings["total"] = time.perf_counter() - t0
    return res

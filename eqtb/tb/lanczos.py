"""Eigenvalues of ``H c = E S c`` near an energy by shift-invert Lanczos (sparse, one k-point).

:func:`eigenvalues_near` returns the ``k`` generalized eigenvalues closest to ``sigma`` (eV) using
ARPACK in shift-invert mode, ``scipy.sparse.linalg.eigsh(H, k, M=S, sigma=sigma, which="LM")``:
Lanczos on ``(H - sigma S)^-1 S``, whose largest eigenvalues ``1/(E - sigma)`` belong to the E
nearest sigma. ``(H - sigma S)`` is factorized once by a sparse LU (SuperLU, COLAMD ordering).
:func:`band_edges` uses it with a mid-gap ``sigma`` (e.g. :meth:`eqtb.tb.kpm.KPMResult.fermi_level`)
to get the valence-band maximum and conduction-band minimum of a large structure at one k-point.

Conventions: energies in eV, H and S scipy sparse (or dense) Hermitian matrices, real at Gamma
or complex at a general k, S positive definite (None: orthogonal basis). Eigenvalues ascending.

COST AND LIMITS
---------------
The cost is the sparse LU factorization of ``H - sigma S`` (done once); each Lanczos step is
then a pair of triangular solves plus one S product, and k = 8 needs a few tens of steps. In a
3-D structure the LU factors fill in strongly (every orbital overlaps ~90 neighbouring atoms'
orbitals for Si; no fill-reducing ordering avoids the 3-D separators). Measured on one thread
(``OMP_NUM_THREADS=1``, shared 2-core machine), Si ABACUS 1s1p Gamma matrices, sigma = 7.4 eV
(mid-gap), ``band_edges(..., k=8)``:

    structure                           orbitals  nnz(H)  LU time  nnz(L+U)  LU memory  band_edges
    Si64                                     256   6.5e4    0.0 s    6.6e4    0.8 MB      0.03 s
    64 block_diag copies of Si64           16384   4.1e6    0.3 s    4.2e6    0.05 GB       10 s *
    Si64 2x2x2 supercell (512 atoms)        2048   1.2e6    0.5 s    4.1e6    0.05 GB      1.2 s
    Si64 3x3x3 supercell (1728 atoms)       6912   4.1e6     13 s    3.9e7    0.47 GB       21 s
    Si64 4x4x4 supercell (4096 atoms)      16384   9.7e6    157 s    1.6e8    1.9 GB       155 s
                                                          (peak memory of the process 4.3 GB)

(* block_diag copies do not fill in between copies, so their LU is linear in size and says
nothing about a real 3-D structure; ARPACK is slow there only because every level is 64-fold
degenerate.) Between the 3x3x3 and 4x4x4 supercells the fill grows ~ n^1.65 and the time
~ n^2.9 (SuperLU, COLAMD ordering; MMD on A^T + A was no better). Extrapolated: 3e4 orbitals
(~8000 Si atoms with 4 orbitals, fewer with a larger basis) take ~20 min and ~6 GB of factors:
that is the practical limit of this method for 3-D bulk on one node. 4e5 orbitals are far out of
reach (by the same fit ~3 weeks and ~400 GB of factors) -- use the KPM density of states (:mod:`eqtb.tb.kpm`) there.
Slabs, wires and molecules fill in much less (2-D / 1-D separators) and go further.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from eqtb.tb.kpm import as_pencil
from eqtb.tb.spectrum import SpectrumError

__all__ = ["MAX_NORB_3D", "band_edges", "eigenvalues_near"]

#: the practical size limit of shift-invert Lanczos for 3-D bulk (orbitals): the sparse LU of
#: H - sigma S fills in as ~n^1.65 in memory and ~n^2.9 in time, ~20 min and ~6 GB of factors at
#: 3e4 orbitals (COST AND LIMITS above); beyond it use the KPM DOS (eqtb.tb.kpm)
MAX_NORB_3D = 30000


def eigenvalues_near(H, S=None, sigma: float = 0.0, k: int = 8, tol: float = 0,
                     maxiter: int | None = None) -> np.ndarray:
    """The ``k`` eigenvalues (eV, ascending) of ``H c = E S c`` nearest ``sigma`` (eV).

    Shift-invert ARPACK: ``eigsh(H, k, M=S, sigma=sigma, which="LM", tol=tol)`` with a sparse LU
    of ``H - sigma S``. ``tol = 0`` means machine precision (ARPACK's default). ``S=None``: S = I.

    Raises :class:`eqtb.tb.spectrum.SpectrumError` for bad input (non-square, shape mismatch,
    NaN, non-Hermitian), ``k`` not below the matrix size, ``sigma`` exactly an eigenvalue (the
    LU is singular: move sigma slightly), the factorization running out of memory (the structure
    is too large for a direct LU: see the module docstring), or ARPACK not converging (raise k or
    tol, or move sigma away from a degenerate cluster)."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

    H, S, _ = as_pencil(H, S)
    n = H.shape[0]
    k = int(k)
    if not 1 <= k < n - 1:
        raise SpectrumError(f"k = {k} eigenvalues requested from a {n} x {n} problem: need 1 <= k < {n - 1}; "
                            f"for so few orbitals use eqtb.tb.spectrum.eigh on dense matrices")
    sigma = float(sigma)
    if not np.isfinite(sigma):
        raise SpectrumError(f"sigma must be a finite energy in eV, got {sigma}")
    if not np.isfinite(tol) or tol < 0:
        raise SpectrumError(f"tol must be >= 0, got {tol}")
    Hc = H.tocsc()
    Sc = S.tocsc() if S is not None else None
    try:
        vals = eigsh(Hc, k=k, M=Sc, sigma=sigma, which="LM", tol=tol, maxiter=maxiter,
                     return_eigenvectors=False)
    except MemoryError:
        raise SpectrumError(f"out of memory factorizing H - sigma S ({n} orbitals, {H.nnz} nonzeros): "
                            f"the sparse LU fills in too much for this 3-D structure; use the KPM DOS "
                            f"(eqtb.tb.kpm.kpm_dos) or a smaller structure") from None
    except RuntimeError as err:
        if "singular" in str(err).lower():
            raise SpectrumError(f"H - sigma S is exactly singular at sigma = {sigma!r} eV (sigma is an "
                                f"eigenvalue): move sigma by a small amount, e.g. 1e-6 eV") from None
        raise SpectrumError(f"shift-invert factorization of H - sigma S failed at sigma = {sigma} eV: {err}") from None
    except ArpackNoConvergence as err:
        raise SpectrumError(f"ARPACK did not converge for k = {k} eigenvalues near sigma = {sigma} eV "
                            f"({len(err.eigenvalues)} converged); raise tol or maxiter, change k so it does "
                            f"not split a degenerate cluster, or move sigma") from None
    except ArpackError as err:
        raise SpectrumError(f"ARPACK failed near sigma = {sigma} eV: {err}; check that S is positive "
                            f"definite and H Hermitian") from None
    vals = np.sort(np.real(vals))
    if not np.isfinite(vals).all():
        raise SpectrumError(f"non-finite eigenvalues near sigma = {sigma} eV (H - sigma S nearly singular?)")
    return vals


def band_edges(H, S=None, sigma: float = 0.0, k: int = 8, tol: float = 0, strict: bool = True) -> dict:
    """Valence-band maximum and conduction-band minimum around a mid-gap guess ``sigma`` (eV).

    Computes the ``k`` eigenvalues nearest sigma (:func:`eigenvalues_near`) and returns a dict:
    ``vbm`` (largest eigenvalue below sigma), ``cbm`` (smallest above), ``gap`` = cbm - vbm,
    ``sigma``, ``eigenvalues`` (the k found, ascending), ``n_below``/``n_above`` (how many of them
    lie on each side), ``bracketed`` (both sides found) and ``gap_is_largest_spacing`` (the
    vbm-cbm spacing is the largest spacing between consecutive found eigenvalues; False hints that
    sigma lies inside a band and the "gap" is only a level spacing). All energies in eV.

    If all k eigenvalues lie on one side of sigma (sigma not in a gap, or the gap edge farther from
    sigma than the k-th eigenvalue on the other side) a SpectrumError is raised, or with
    ``strict=False`` the missing edge is None and ``bracketed`` False."""
    vals = eigenvalues_near(H, S, sigma, k, tol)
    below, above = vals[vals < sigma], vals[vals >= sigma]
    out = {"sigma": float(sigma), "eigenvalues": vals, "n_below": len(below),
           "n_above": len(above), "bracketed": bool(len(below) and len(above)),
           "vbm": float(below.max()) if len(below) else None,
           "cbm": float(above.min()) if len(above) else None, "gap": None,
           "gap_is_largest_spacing": False}
    if not out["bracketed"]:
        side = "below" if len(below) else "above"
        msg = (f"all {len(vals)} eigenvalues nearest sigma = {sigma} eV lie {side} it "
               f"([{vals[0]:.4f}, {vals[-1]:.4f}] eV): sigma is not in a gap or k = {k} is too small "
               f"(a degenerate cluster on one side needs a larger k)")
        if strict:
            raise SpectrumError(msg)
        out["message"] = msg
        return out
    out["gap"] = out["cbm"] - out["vbm"]
    out["gap_is_largest_spacing"] = bool(out["gap"] >= np.diff(vals).max())
    return out


def _lu_fill(H, S, sigma: float) -> dict:
    """Diagnostics for the docstring's cost table: nnz of the LU factors of H - sigma S."""
    from scipy.sparse.linalg import splu

    H, S, _ = as_pencil(H, S)
    A = (H - sigma * (S if S is not None else sp.identity(H.shape[0], format="csr"))).tocsc()
    lu = splu(A)
    return {"n": A.shape[0], "nnz": A.nnz, "nnz_lu": lu.L.nnz + lu.U.nnz}

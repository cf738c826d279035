"""Spectra of tight-binding operators: generalized eigenproblem, Fermi level, band gap, DOS, PDOS.

Conventions
-----------
* Energies in eV; everything in float64 / complex128.
* ``eigs`` arrays are (nk, nband), ascending along the last axis; eigenvectors are (nk, norb,
  nband): **bands along the last axis**, always (``vecs[k, :, n]`` is state n at k-point k).
* Eigenvectors of ``H c = E S c`` are S-orthonormal: ``c^dagger S c = I``.
* k-point weights sum to 1 (a Brillouin-zone average). Electron counts and DOS are per cell and
  include the spin degeneracy ``g`` (2 without spin-orbit coupling): the DOS integrates to
  ``g * nband`` states per cell.
* Smearing ``kT`` in eV; the default is k_B * 300 K = 0.025852 eV (as DeePTB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import scipy.linalg as sla
from scipy.special import erfc

#: k_B * 300 K in eV (scipy Boltzmann / eV, 300 K)
KT_300K = 0.025852

#: matrices at or above this size are solved one k-point at a time with LAPACK's ?hegvd
#: (faster than numpy's batched route there); smaller ones in one batched numpy call
_PER_K_MIN_NORB = 48


class SpectrumError(ValueError):
    """An eigenproblem or electron-count request that cannot be solved as posed."""


# ------------------------------------------------------------------------------------ eigensolver
def _as_batch(a, name):
    a = np.asarray(a)
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise SpectrumError(f"{name} must be (nk, n, n) or (n, n), got shape {np.shape(a)}")
    return a.astype(np.complex128, copy=False), single


def _not_pd_error(S: np.ndarray, k: int, kpts) -> SpectrumError:
    smin = float(np.linalg.eigvalsh(S[k])[0])
    where = f"k-point {k}"
    if kpts is not None:
        where += f" (k = {np.round(np.asarray(kpts)[k], 6).tolist()})"
    return SpectrumError(f"overlap S(k) is not positive definite at {where}: smallest eigenvalue "
                         f"{smin:.3e}; the overlap blocks are inconsistent or too incomplete")


def eigh(Hk, Sk=None, vectors: bool = False, kpts=None):
    """Solve ``H(k) c = E S(k) c`` for a batch of k-points.

    Parameters
    ----------
    Hk : (nk, n, n) or (n, n) Hermitian matrices (eV).
    Sk : same shape, Hermitian positive definite, or None for an orthogonal basis (S = I).
    vectors : also return eigenvectors.
    kpts : optional (nk, 3) k-points, only used to name the k-point in error messages.

    Returns
    -------
    eigs : (nk, n) ascending eigenvalues (eV); or ``(eigs, vecs)`` with vecs (nk, n, n), bands
    along the last axis, S-orthonormal. A single (n, n) input gives unbatched outputs.

    Method: Cholesky ``S = L L^dagger``, then the standard problem ``L^-1 H L^-dagger``
    (LAPACK ?hegvd per k-point for n >= 48, a batched numpy version below). Raises
    :class:`SpectrumError` naming the k-point when S(k) is not positive definite.
    """
    H, single = _as_batch(Hk, "H(k)")
    S = None
    if Sk is not None:
        S, _ = _as_batch(Sk, "S(k)")
        if S.shape != H.shape:
            raise SpectrumError(f"H(k) {H.shape} and S(k) {S.shape} differ in shape")
    nk, n, _ = H.shape
    if not (np.isfinite(H).all() and (S is None or np.isfinite(S).all())):
        raise SpectrumError("H(k) or S(k) contains NaN or infinity")
    if n >= _PER_K_MIN_NORB:
        w = np.empty((nk, n))
        v = np.empty((nk, n, n), dtype=np.complex128) if vectors else None
        for k in range(nk):
            try:
                if S is None:
                    res = sla.eigh(H[k], eigvals_only=not vectors, check_finite=False, driver="evd")
                else:
                    res = sla.eigh(H[k], S[k], eigvals_only=not vectors, check_finite=False, driver="gvd")
            except np.linalg.LinAlgError:
                if S is not None:
                    raise _not_pd_error(S, k, kpts) from None
                raise
            if vectors:
                w[k], v[k] = res
            else:
                w[k] = res
    else:
        if S is None:
            if vectors:
                w, v = np.linalg.eigh(H)
            else:
                w, v = np.linalg.eigvalsh(H), None
        else:
            try:
                L = np.linalg.cholesky(S)
            except np.linalg.LinAlgError:
                for k in range(nk):
                    try:
                        np.linalg.cholesky(S[k])
                    except np.linalg.LinAlgError:
                        raise _not_pd_error(S, k, kpts) from None
                raise
            Linv = np.linalg.inv(L)
            LinvH = np.conj(np.swapaxes(Linv, 1, 2))
            Hp = Linv @ H @ LinvH
            Hp = 0.5 * (Hp + np.conj(np.swapaxes(Hp, 1, 2)))
            if vectors:
                w, vp = np.linalg.eigh(Hp)
                v = LinvH @ vp
            else:
                w, v = np.linalg.eigvalsh(Hp), None
    if single:
        return (w[0], v[0]) if vectors else w[0]
    return (w, v) if vectors else w


def default_chunk(norb: int, budget_bytes: float = 256e6) -> int:
    """k-points per chunk so that H(k), S(k), eigenvectors and work space stay within the budget."""
    return max(1, int(budget_bytes // (6 * 16 * norb * norb)))


def iter_eigh(H, S, kpts, chunk: int | None = None, vectors: bool = False,
              progress: bool | None = False, desc: str = "k-points") -> Iterator:
    """Yield ``(slice, eigs[, vecs], Sk)`` chunk by chunk over ``kpts`` (fractional), assembling
    H(k) (and S(k) when S is an Operator) for one chunk at a time to bound memory. ``Sk`` is None
    for an orthogonal basis. ``progress``: show a tqdm bar (None: only on a terminal)."""
    kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
    chunk = chunk or default_chunk(H.norb)
    starts = range(0, len(kpts), chunk)
    if progress is not False:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="chunk", disable=None if progress is None else False,
                      total=math.ceil(len(kpts) / chunk), leave=False)
    for a in starts:
        sl = slice(a, min(a + chunk, len(kpts)))
        Hk = H.dense(kpts[sl])
        Sk = S.dense(kpts[sl]) if S is not None else None
        res = eigh(Hk, Sk, vectors=vectors, kpts=kpts[sl])
        if vectors:
            yield sl, res[0], res[1], Sk
        else:
            yield sl, res, Sk


def band_energies(H, S, kpts, chunk: int | None = None, progress: bool | None = False) -> np.ndarray:
    """Eigenvalues (nk, norb) in eV of the Operators H (and S, or None) at fractional ``kpts``."""
    kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
    out = np.empty((len(kpts), H.norb))
    for sl, w, _ in iter_eigh(H, S, kpts, chunk, vectors=False, progress=progress):
        out[sl] = w
    return out


# ------------------------------------------------------------------------------ electron counting
def n_electrons(structure, nel_atom: Mapping[str, float]) -> float:
    """Valence electrons per cell: sum over atoms of ``nel_atom[element]`` (DeePTB's ``nel_atom``,
    e.g. ``{"Si": 4}``). Raises SpectrumError if an element of the structure is missing."""
    if not isinstance(nel_atom, Mapping) or not nel_atom:
        raise SpectrumError(f"nel_atom must be a dict element -> valence electrons, got {nel_atom!r}")
    symbols = structure.symbols
    missing = sorted(set(symbols) - set(nel_atom))
    if missing:
        raise SpectrumError(f"nel_atom has no entry for {missing}; it gives {sorted(nel_atom)}")
    total = 0.0
    for el in set(symbols):
        v = nel_atom[el]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise SpectrumError(f"nel_atom[{el!r}] must be a non-negative number, got {v!r}")
        total += float(v) * symbols.count(el)
    return total


def occupation(x: np.ndarray, smearing: str = "fermi-dirac") -> np.ndarray:
    """Occupation f((E - mu) / kT) in [0, 1]: ``"fermi-dirac"`` 1/(e^x + 1) (tanh form, no
    overflow) or ``"gaussian"`` erfc(x) / 2."""
    if smearing in ("fermi-dirac", "fd", "fermi"):
        return 0.5 * (1.0 - np.tanh(0.5 * x))
    if smearing in ("gaussian", "gauss"):
        return 0.5 * erfc(x)
    raise SpectrumError(f"unknown smearing {smearing!r}; use 'fermi-dirac' or 'gaussian'")


@dataclass
class FermiLevel:
    """Result of :func:`fermi_level`. ``mu`` (eV) is the chemical potential that puts exactly
    ``n_electrons`` into the states (to ``tol``); ``count`` is the electron count at ``mu``.
    For an insulator (integer number of filled bands below a gap on the k-set) ``vbm``, ``cbm``,
    ``gap`` and ``midgap`` are given too; ``mu`` then lies in the gap, not necessarily at its
    middle. ``float(result)`` is ``mu``."""

    mu: float
    n_electrons: float
    count: float
    spin_degeneracy: int
    smearing: str
    kT: float
    insulating: bool = False
    vbm: float | None = None
    cbm: float | None = None
    gap: float | None = None
    midgap: float | None = None
    converged: bool = True

    def __float__(self) -> float:
        return float(self.mu)

    def as_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in self.__dict__.items()}


def electron_count(eigs, weights, mu: float, spin_degeneracy: int = 2, smearing: str = "fermi-dirac",
                   kT: float = KT_300K) -> float:
    """``g * sum_k w_k sum_n f((E_nk - mu) / kT)`` (electrons per cell); kT = 0 is a step."""
    eigs = np.asarray(eigs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if kT > 0:
        f = occupation((eigs - mu) / kT, smearing)
    else:
        f = (eigs < mu) + 0.5 * (eigs == mu)
    return float(spin_degeneracy * (w @ f.sum(axis=1)))


def fermi_level(eigs, weights, n_electrons: float, spin_degeneracy: int = 2,
                smearing: str = "fermi-dirac", kT: float = KT_300K, tol: float = 1e-10,
                max_iter: int = 1000) -> FermiLevel:
    """Chemical potential by bisection so that ``electron_count(mu) == n_electrons`` to ``tol``
    electrons (or until the bracket cannot shrink in floating point).

    ``eigs`` (nk, nband) eV; ``weights`` (nk,) summing to 1 (e.g. from
    :func:`eqtb.tb.kpath.monkhorst_pack`); ``n_electrons`` per cell (all spins)."""
    eigs = np.asarray(eigs, dtype=np.float64)
    if eigs.ndim == 1:
        eigs = eigs[None]
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if eigs.ndim != 2 or len(w) != len(eigs):
        raise SpectrumError(f"eigenvalues {eigs.shape} and weights {w.shape} do not match")
    if abs(w.sum() - 1.0) > 1e-8 or (w < 0).any():
        raise SpectrumError(f"k-point weights must be non-negative and sum to 1, sum is {w.sum():.12g}")
    if kT < 0:
        raise SpectrumError(f"kT must be >= 0, got {kT}")
    g = int(spin_degeneracy)
    capacity = g * eigs.shape[1]
    if not 0 < n_electrons < capacity:
        raise SpectrumError(f"{n_electrons:g} electrons do not fit in {eigs.shape[1]} bands x "
                            f"spin degeneracy {g} (0 < N < {capacity} required)")
    occupation(np.zeros(1), smearing)  # validates the name
    count = lambda mu: electron_count(eigs, w, mu, g, smearing, kT)  # noqa: E731
    pad = (kT * (math.log(capacity / tol) + 10.0)) if kT > 0 else 1e-6
    lo, hi = float(eigs.min()) - pad, float(eigs.max()) + pad
    mu, c, converged = 0.5 * (lo + hi), None, False
    for _ in range(max_iter):
        mu = 0.5 * (lo + hi)
        c = count(mu)
        if abs(c - n_electrons) < tol:
            converged = True
            break
        if c < n_electrons:
            lo = mu
        else:
            hi = mu
        if not lo < 0.5 * (lo + hi) < hi:
            break
    if not converged and kT > 0:
        import warnings

        warnings.warn(f"Fermi level bisection stopped at mu = {mu:.10f} eV with count {c:.12g} "
                      f"(target {n_electrons:g})")
    if kT == 0:
        converged = abs(c - n_electrons) < max(tol, 1e-9)
    res = FermiLevel(mu, float(n_electrons), float(c), g, smearing, float(kT), converged=converged)
    nocc = n_electrons / g
    if abs(nocc - round(nocc)) < 1e-9 and 0 < round(nocc) < eigs.shape[1]:
        gap = band_gap(eigs, int(round(nocc)))
        if gap["gap"] > 0:
            res.insulating = True
            res.vbm, res.cbm, res.gap = gap["vbm"], gap["cbm"], gap["gap"]
            res.midgap = 0.5 * (gap["vbm"] + gap["cbm"])
    return res


def band_gap(eigs, n_occupied_bands: int, direct_tol: float = 1e-5) -> dict:
    """Band edges of a band structure with ``n_occupied_bands`` filled bands (eV).

    Returns a dict: ``vbm`` (max of band n_occ-1), ``cbm`` (min of band n_occ), ``gap`` = cbm - vbm
    (negative when the bands overlap: a metal), ``direct_gap`` = min_k (E_c(k) - E_v(k)),
    ``direct`` (True when the smallest direct gap equals the gap within ``direct_tol``),
    ``k_vbm``, ``k_cbm``, ``k_direct`` (indices into the k-set), ``valence_bandwidth`` =
    vbm - min(E of band 0)."""
    eigs = np.asarray(eigs, dtype=np.float64)
    if eigs.ndim == 1:
        eigs = eigs[None]
    nb = eigs.shape[1]
    n = int(n_occupied_bands)
    if not 0 < n < nb:
        raise SpectrumError(f"n_occupied_bands = {n_occupied_bands} must be between 1 and {nb - 1}")
    v, c = eigs[:, n - 1], eigs[:, n]
    kv, kc = int(np.argmax(v)), int(np.argmin(c))
    d = c - v
    kd = int(np.argmin(d))
    gap = float(c[kc] - v[kv])
    return {
        "vbm": float(v[kv]), "cbm": float(c[kc]), "gap": gap,
        "direct_gap": float(d[kd]), "direct": bool(d[kd] - gap <= direct_tol),
        "k_vbm": kv, "k_cbm": kc, "k_direct": kd,
        "valence_bandwidth": float(v[kv] - eigs[:, 0].min()),
        "n_occupied_bands": n,
    }


# ---------------------------------------------------------------------------------- DOS and PDOS
def _gaussian_sum(states: np.ndarray, weights: np.ndarray, energies: np.ndarray, sigma: float,
                  out: np.ndarray, block: int = 4096) -> None:
    """out[:, g] += sum_s weights[s, g] * G(energies - states[s]; sigma), in blocks of states."""
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for a in range(0, len(states), block):
        x = (energies[:, None] - states[None, a:a + block]) / sigma
        out += (norm * np.exp(-0.5 * x * x)) @ weights[a:a + block]


def _check_dos_args(eigs, weights, energies, sigma):
    eigs = np.asarray(eigs, dtype=np.float64)
    if eigs.ndim == 1:
        eigs = eigs[None]
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(eigs):
        raise SpectrumError(f"eigenvalues {eigs.shape} and weights {w.shape} do not match")
    if not sigma > 0:
        raise SpectrumError(f"Gaussian broadening sigma must be > 0 eV, got {sigma}")
    return eigs, w, np.asarray(energies, dtype=np.float64).reshape(-1)


def dos(eigs, weights, energies, sigma: float = 0.05, spin_degeneracy: int = 2) -> np.ndarray:
    """Gaussian-broadened density of states (states / eV / cell, spin degeneracy included):
    ``D(E) = g sum_k w_k sum_n exp(-(E - E_nk)^2 / 2 sigma^2) / (sigma sqrt(2 pi))``. With weights
    summing to 1 it integrates to ``g * nband`` over an energy grid covering all states."""
    eigs, w, e = _check_dos_args(eigs, weights, energies, sigma)
    out = np.zeros((len(e), 1))
    states = eigs.reshape(-1)
    sw = (spin_degeneracy * np.repeat(w, eigs.shape[1]))[:, None]
    _gaussian_sum(states, sw, e, sigma, out)
    return out[:, 0]


def pdos(eigs, weights, projections, energies, sigma: float = 0.05, spin_degeneracy: int = 2) -> np.ndarray:
    """Projected DOS (ngroups, nE): like :func:`dos` with each state weighted by its projection
    ``projections[k, n, group]`` (e.g. Mulliken weights summed over the orbitals of a group, see
    :func:`mulliken_weights`); when the projections of each state sum to 1 the PDOS sum to the DOS."""
    eigs, w, e = _check_dos_args(eigs, weights, energies, sigma)
    P = np.asarray(projections, dtype=np.float64)
    if P.shape[:2] != eigs.shape:
        raise SpectrumError(f"projections {P.shape} do not match eigenvalues {eigs.shape}")
    out = np.zeros((len(e), P.shape[2]))
    sw = (spin_degeneracy * w)[:, None, None] * P
    _gaussian_sum(eigs.reshape(-1), sw.reshape(-1, P.shape[2]), e, sigma, out)
    return out.T


def mulliken_weights(vecs: np.ndarray, Sk: np.ndarray | None = None) -> np.ndarray:
    """Mulliken orbital weights (nk, nband, norb): ``Re[conj(c_mu) (S c)_mu]`` for each state
    (vecs (nk, norb, nband), bands last). For S-orthonormal vectors they sum to 1 over orbitals
    (individual weights may be slightly negative with non-orthogonal orbitals)."""
    c = np.asarray(vecs)
    Sc = c if Sk is None else np.asarray(Sk) @ c
    return np.swapaxes(np.real(np.conj(c) * Sc), 1, 2)


def orbital_groups(operator, kind: str = "atom") -> tuple[list[str], np.ndarray]:
    """Group the rows of O(k) for a PDOS: returns (labels, group index of each orbital (norb,)).

    ``kind``: ``"atom"`` (one group per atom, ``"Si0"``...), ``"element"``, ``"shell"`` (element
    and shell summed over atoms, ``"Si 1p"``), ``"orbital"`` (element and orbital summed over
    atoms, ``"Si 1p_y"``) or ``"atom-shell"`` (``"Si0 1p"``)."""
    structure, basis = operator.structure, operator.basis
    symbols = structure.symbols
    labels: list[str] = []
    index: dict[str, int] = {}
    group = np.empty(operator.norb, dtype=np.int64)
    offs = operator.atom_orbital_offsets
    kinds = ("atom", "element", "shell", "orbital", "atom-shell")
    if kind not in kinds:
        raise SpectrumError(f"unknown PDOS projection {kind!r}; use one of {', '.join(kinds)}")
    for a, el in enumerate(symbols):
        orb_labels = basis.orbital_labels(el)
        shell_of = [s.name for s in basis[el].shells for _ in range(s.dim)]
        for o in range(offs[a + 1] - offs[a]):
            name = {"atom": f"{el}{a}", "element": el, "shell": f"{el} {shell_of[o]}",
                    "orbital": f"{el} {orb_labels[o]}", "atom-shell": f"{el}{a} {shell_of[o]}"}[kind]
            if name not in index:
                index[name] = len(labels)
                labels.append(name)
            group[offs[a] + o] = index[name]
    return labels, group


# ---------------------------------------------------------------------------------- convenience
@dataclass
class ElectronicStructure:
    """H (and S) Operators of one structure with the common spectral tasks.

    ``S=None`` means an orthogonal basis. ``spin_degeneracy`` 2 (no SOC)."""

    H: object
    S: object | None = None
    spin_degeneracy: int = 2
    chunk: int | None = None
    _mesh_cache: dict = field(default_factory=dict, repr=False)

    @property
    def structure(self):
        return self.H.structure

    def bands(self, kpath, progress: bool | None = False) -> np.ndarray:
        """Eigenvalues (nk, norb) eV along a KPath (or at an (nk, 3) array of fractional k)."""
        kpts = getattr(kpath, "kpts", kpath)
        return band_energies(self.H, self.S, kpts, self.chunk, progress)

    def mesh_eigenvalues(self, mesh, gamma_centered: bool = True, progress: bool | None = False):
        """(kpts, weights, eigs) on a time-reversal-reduced uniform mesh (cached)."""
        from eqtb.tb.kpath import monkhorst_pack

        key = (tuple(int(m) for m in mesh), bool(gamma_centered))
        if key not in self._mesh_cache:
            kpts, w = monkhorst_pack(mesh, gamma_centered, time_reversal=True)
            self._mesh_cache[key] = (kpts, w, band_energies(self.H, self.S, kpts, self.chunk, progress))
        return self._mesh_cache[key]

    def n_electrons(self, nel_atom: Mapping[str, float]) -> float:
        return n_electrons(self.structure, nel_atom)

    def fermi(self, nel_atom: Mapping[str, float] | float, mesh, smearing: str = "fermi-dirac",
              kT: float = KT_300K, progress: bool | None = False) -> FermiLevel:
        """Fermi level from valence electrons (``nel_atom`` dict, or a number per cell) on a mesh."""
        n = nel_atom if isinstance(nel_atom, (int, float)) else self.n_electrons(nel_atom)
        _, w, e = self.mesh_eigenvalues(mesh, progress=progress)
        return fermi_level(e, w, n, self.spin_degeneracy, smearing, kT)

    def dos(self, mesh, energies, sigma: float = 0.05, progress: bool | None = False) -> np.ndarray:
        """Total DOS (states/eV/cell, spin included) on ``energies`` from a uniform mesh."""
        _, w, e = self.mesh_eigenvalues(mesh, progress=progress)
        return dos(e, w, energies, sigma, self.spin_degeneracy)

    def pdos(self, mesh, energies, sigma: float = 0.05, kind: str = "atom",
             progress: bool | None = False) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(total DOS (nE,), group labels, PDOS (ngroups, nE)) on a Gamma-centred,
        time-reversal-reduced mesh; see :func:`projected_dos`."""
        from eqtb.tb.kpath import monkhorst_pack

        kpts, w = monkhorst_pack(mesh, True, time_reversal=True)
        total, labels, proj, eigs = projected_dos(self.H, self.S, kpts, w, energies, sigma, kind,
                                                  self.spin_degeneracy, self.chunk, progress)
        self._mesh_cache.setdefault((tuple(int(m) for m in mesh), True), (kpts, w, eigs))
        return total, labels, proj


def projected_dos(H, S, kpts, weights, energies, sigma: float = 0.05, kind: str = "atom",
                  spin_degeneracy: int = 2, chunk: int | None = None, progress: bool | None = False):
    """Total DOS and Mulliken PDOS of Operators H, S on k-points with weights (sum 1).

    Returns ``(total (nE,), labels, pdos (ngroups, nE), eigs (nk, norb))``; the groups are
    :func:`orbital_groups` ``kind``. Eigenvectors are computed chunk by chunk and never stored for
    all k-points; ``pdos.sum(0)`` equals ``total`` to rounding."""
    labels, group = orbital_groups(H, kind)
    onehot = np.zeros((H.norb, len(labels)))
    onehot[np.arange(H.norb), group] = 1.0
    kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    e = np.asarray(energies, dtype=np.float64)
    total = np.zeros(len(e))
    proj = np.zeros((len(labels), len(e)))
    all_eigs = np.empty((len(kpts), H.norb))
    for sl, eigs, vecs, Sk in iter_eigh(H, S, kpts, chunk, vectors=True, progress=progress, desc="PDOS"):
        P = mulliken_weights(vecs, Sk) @ onehot
        total += dos(eigs, w[sl], e, sigma, spin_degeneracy)
        proj += pdos(eigs, w[sl], P, e, sigma, spin_degeneracy)
        all_eigs[sl] = eigs
    return total, labels, proj, all_eigs

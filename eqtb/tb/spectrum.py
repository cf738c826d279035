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

Fermi-level rule (:func:`resolve_fermi_level`, used by every ``eqtb`` command that needs an energy
reference), DeePTB's precedence with the command line above the task file: an explicit Fermi level
(``--e-fermi``) wins; then valence electrons given on the command line (``--nel-atom``: the level
is computed from them, with a warning when a task's ``E_fermi`` is thereby not used); then the
task's ``E_fermi`` when not None (as DeePTB's ``dptb run`` band plot: a given ``E_fermi`` wins over
``nel_atom``); then the task's ``nel_atom`` (computed); otherwise there is none (absolute
energies). Whenever a given level is used and ``nel_atom`` is known, the level computed from
``nel_atom`` is still reported beside it (:attr:`FermiChoice.estimate`, as DeePTB logs its
"estimated E_fermi"). Computed levels come from the electron count on a k-mesh
(:meth:`ElectronicStructure.fermi_solver`; a molecule: its orbital energies at Gamma) or from a
KPM DOS at one k-point (:meth:`eqtb.tb.kpm.KPMResult.fermi_solver`).

Progress (``progress`` arguments): True draws a tqdm bar, False shows nothing, None draws a bar
on a terminal and otherwise (output redirected to a file or a pipe) writes one plain line to
stderr every :data:`PROGRESS_LINE_S` seconds while the work lasts (:func:`progress_reporter`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import scipy.linalg as sla
from scipy.special import erfc

#: k_B * 300 K in eV (scipy Boltzmann / eV, 300 K)
KT_300K = 0.025852

#: matrices at or above this size are assembled and solved one k-point at a time (LAPACK's
#: ?hegvd, faster than numpy's batched route there); smaller ones in one batched numpy call
_PER_K_MIN_NORB = 48

#: H(k), S(k) whose imaginary parts are at most this times their largest |entry| are solved as real
#: symmetric matrices: at Gamma, and at k-points with every coordinate a multiple of 1/2 for real
#: H(R), the phases exp(-i 2 pi k.R) are +-1 up to rounding (imaginary parts ~1e-16). Dropping
#: them moves no eigenvalue by more than norb * this * max |H| (Weyl); the real solver is 3-5x
#: faster (2048 orbitals, Si: 2.0 s against 6.4 s on one thread, 0.9 s against 4.1 s on two)
REAL_TOL = 1e-12


class SpectrumError(ValueError):
    """An eigenproblem or electron-count request that cannot be solved as posed."""


# ------------------------------------------------------------------------------------ eigensolver
def _as_batch(a, name):
    """(nk, n, n) float64 (real input) or complex128 array, and whether the input was one (n, n)."""
    a = np.asarray(a)
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise SpectrumError(f"{name} must be (nk, n, n) or (n, n), got shape {np.shape(a)}")
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64, copy=False), single


def _real_if_rounding(a: np.ndarray) -> np.ndarray:
    """``a.real`` when the imaginary part of the matrix is rounding only (see :data:`REAL_TOL`)."""
    if np.iscomplexobj(a) and np.abs(a.imag).max() <= REAL_TOL * np.abs(a).max():
        return a.real
    return a


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
    (LAPACK ?hegvd per k-point for n >= 48, a batched numpy version below). From n = 48 a
    k-point whose H(k) and S(k) are real up to rounding (:data:`REAL_TOL`: Gamma, zone-boundary
    points of real H(R)) is solved with the real symmetric solver. Raises
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
            Hk, Sk = H[k], (None if S is None else S[k])
            Hr, Sr = _real_if_rounding(Hk), (None if Sk is None else _real_if_rounding(Sk))
            if np.isrealobj(Hr) and (Sr is None or np.isrealobj(Sr)):
                Hk, Sk = Hr, Sr
            try:
                if Sk is None:
                    res = sla.eigh(Hk, eigvals_only=not vectors, check_finite=False, driver="evd")
                else:
                    res = sla.eigh(Hk, Sk, eigvals_only=not vectors, check_finite=False, driver="gvd")
            except np.linalg.LinAlgError:
                if S is not None:
                    raise _not_pd_error(S, k, kpts) from None
                raise
            if vectors:
                w[k], v[k] = res
            else:
                w[k] = res
    else:
        H = H.astype(np.complex128, copy=False)
        S = None if S is None else S.astype(np.complex128, copy=False)
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


#: seconds between two progress lines when the output is not a terminal (``progress=None``)
PROGRESS_LINE_S = 20.0


class LineProgress:
    """Progress as plain lines for logs (output redirected): from a background thread, one line on
    ``file`` (default stderr) every ``interval`` seconds (:data:`PROGRESS_LINE_S`) while the work
    lasts, none for work shorter than that, and a last line on :meth:`close` when any was written.
    A line reads ``"<desc>: <n>/<total> <unit>, <elapsed> s"``, ``"<desc>: <elapsed> s of <total>
    s"`` when the unit is seconds, or ``"<desc>: <elapsed> s"`` without a total, followed by the
    text of :meth:`set_postfix_str`. Has tqdm's ``update``, ``set_postfix_str``, ``n``, ``total``
    and ``close`` (and is a context manager), so code written for a tqdm bar takes it unchanged."""

    def __init__(self, total: float | None, desc: str, unit: str = "chunk", interval: float | None = None,
                 file=None):
        import threading
        import time

        self.total, self.desc, self.unit, self.n, self.postfix = total, desc, unit, 0, ""
        self.interval = PROGRESS_LINE_S if interval is None else float(interval)
        self.file, self.lines = file, 0
        self._time = time.perf_counter
        self._t0 = self._time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"progress {desc}")
        self._thread.start()

    def line(self) -> str:
        """The current progress line."""
        elapsed = self._time() - self._t0
        if self.total is None:
            text = f"{self.desc}: {elapsed:.0f} s"
        elif self.unit == "s":
            text = f"{self.desc}: {elapsed:.0f} s of {self.total:g} s"
        else:
            text = f"{self.desc}: {self.n:g}/{self.total:g} {self.unit}, {elapsed:.0f} s"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _print(self, text: str) -> None:
        import sys

        print(text, file=self.file or sys.stderr, flush=True)
        self.lines += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._print(self.line())

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = str(text)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self.lines:
            self._print(f"{self.line()} (done)")

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _on_terminal() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_reporter(total: float | None, desc: str, progress: bool | None, unit: str = "chunk", **tqdm_kwargs):
    """A progress object for ``total`` units of work (module docstring, *Progress*): a tqdm bar
    (``progress`` True, or None on a terminal), a :class:`LineProgress` (None when stderr is not a
    terminal) or None (``progress`` False)."""
    if progress is False:
        return None
    if progress is None and not _on_terminal():
        return LineProgress(total, desc, unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, **tqdm_kwargs)


def progress_lines(desc: str, progress: bool | None):
    """For work that draws its own tqdm bar (or none): a :class:`LineProgress` without a total
    (elapsed seconds every :data:`PROGRESS_LINE_S`) when ``progress`` is None and stderr is not a
    terminal, else a context that does nothing. ``with progress_lines("predict", None): ...``"""
    import contextlib

    if progress is None and not _on_terminal():
        return LineProgress(None, desc)
    return contextlib.nullcontext()


def _progress_bar(total: int, desc: str, progress: bool | None):
    """:func:`progress_reporter` over ``total`` chunks."""
    return progress_reporter(total, desc, progress)


def _solve_chunk(H, S, kpts, vectors: bool):
    """``(eigh result, S(k))`` of the Operators H, S (or None) at the fractional ``kpts``; for a
    spinful H (:attr:`eqtb.operator.Operator.spinful`) S(k) on both spins."""
    Sk = S.dense(kpts, spinful=H.spinful) if S is not None else None
    return eigh(H.dense(kpts), Sk, vectors=vectors, kpts=kpts), Sk


def iter_eigh(H, S, kpts, chunk: int | None = None, vectors: bool = False,
              progress: bool | None = False, desc: str = "k-points") -> Iterator:
    """Yield ``(slice, eigs[, vecs], Sk)`` chunk by chunk over ``kpts`` (fractional), assembling
    H(k) (and S(k) when S is an Operator, :meth:`eqtb.operator.Operator.dense`) for one chunk at a time to bound
    memory. ``Sk`` is None for an orthogonal basis. ``progress``: show a tqdm bar (None: only on
    a terminal)."""
    kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
    chunk = chunk or default_chunk(H.dim)
    bar = _progress_bar(math.ceil(len(kpts) / chunk), desc, progress)
    try:
        for a in range(0, len(kpts), chunk):
            sl = slice(a, min(a + chunk, len(kpts)))
            res, Sk = _solve_chunk(H, S, kpts[sl], vectors)
            yield (sl, res[0], res[1], Sk) if vectors else (sl, res, Sk)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


#: the operators of a worker process of :func:`band_energies` (set by :func:`_worker_init`)
_WORKER: dict = {}


def _worker_init(H, S) -> None:
    _WORKER["H"], _WORKER["S"] = H, S


def _worker_energies(kpts: np.ndarray) -> np.ndarray:
    return _solve_chunk(_WORKER["H"], _WORKER["S"], kpts, vectors=False)[0]


def band_energies(H, S, kpts, chunk: int | None = None, progress: bool | None = False,
                  workers: int = 1) -> np.ndarray:
    """Eigenvalues (nk, H.dim) in eV of the Operators H (and S, or None) at fractional ``kpts``
    (``H.dim``: norb, twice that for a spinful H).

    ``workers`` > 1: the k-points are solved in chunks by that many spawned processes, each with
    its own copy of H and S. They inherit the environment, so set one BLAS thread per process
    around the call (``OMP_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``,
    e.g. with :func:`eqtb.data.generate.thread_env`). Worth it from about a second per k-point
    (thousands of orbitals): the processes take a few seconds to start. Measured on a 2-core
    machine shared with other jobs (load 1-3.5), 15 k-points of a 512-atom Si supercell (2048
    orbitals), several runs: two single-threaded workers 40-72 s; this process with one BLAS
    thread 68-87 s, with two BLAS threads 92-157 s (OpenBLAS threads wait for each other when
    another job holds a core). Spawned processes import the caller's main module: a script
    needs the ``if __name__ == "__main__":`` guard."""
    kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
    out = np.empty((len(kpts), H.dim))
    if int(workers) < 2 or len(kpts) < 2:
        for sl, w, _ in iter_eigh(H, S, kpts, chunk, vectors=False, progress=progress):
            out[sl] = w
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    chunk = chunk or min(default_chunk(H.dim), math.ceil(len(kpts) / (4 * int(workers))))
    slices = [slice(a, min(a + chunk, len(kpts))) for a in range(0, len(kpts), chunk)]
    pool = ProcessPoolExecutor(int(workers), mp_context=mp.get_context("spawn"), initializer=_worker_init,
                               initargs=(H, S))
    bar = _progress_bar(len(slices), "k-points", progress)
    try:
        todo = {pool.submit(_worker_energies, kpts[sl]): sl for sl in slices}
        for fut in as_completed(todo):
            out[todo[fut]] = fut.result()
            if bar is not None:
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
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


def occupied_bands(n_electrons: float, n_bands: int | None = None, spin_degeneracy: int = 2) -> int | None:
    """Number of filled bands when ``n_electrons`` (per cell, all spins) fill a whole number of
    bands, ``n_electrons / spin_degeneracy`` (to 1e-9); None otherwise (a partly filled band,
    e.g. an odd count with spin degeneracy 2). With ``n_bands`` it must also leave a band above
    (0 < result < n_bands), so that a band gap can be looked for; None when not."""
    nocc = n_electrons / spin_degeneracy
    n = int(round(nocc))
    if abs(nocc - n) >= 1e-9 or n <= 0 or (n_bands is not None and n >= n_bands):
        return None
    return n


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
    nocc = occupied_bands(n_electrons, eigs.shape[1], g)
    if nocc is not None:
        gap = band_gap(eigs, nocc)
        if gap["gap"] > 0:
            res.insulating = True
            res.vbm, res.cbm, res.gap = gap["vbm"], gap["cbm"], gap["gap"]
            res.midgap = 0.5 * (gap["vbm"] + gap["cbm"])
    return res


def centre_in_gap(res: FermiLevel, eigs, weights) -> FermiLevel:
    """``res`` (of :func:`fermi_level` on ``eigs``, ``weights``) with ``mu`` moved to the middle of
    the gap when it is an insulator (``count`` recomputed there), unchanged otherwise."""
    if res.insulating and res.midgap is not None:
        res.mu = float(res.midgap)
        res.count = electron_count(eigs, weights, res.mu, res.spin_degeneracy, res.smearing, res.kT)
    return res


def band_gap(eigs, n_occupied_bands: int, direct_tol: float = 1e-5) -> dict:
    """Band edges of a band structure with ``n_occupied_bands`` filled bands (eV).

    Returns a dict: ``vbm`` (max of band n_occ-1), ``cbm`` (min of band n_occ), ``gap`` = cbm - vbm
    (negative when the bands overlap: a metal), ``direct_gap`` = min_k (E_c(k) - E_v(k)),
    ``direct`` (True when the smallest direct gap equals the gap within ``direct_tol``),
    ``gap_type`` (``"metal"`` when gap <= 0, else ``"direct"`` or ``"indirect"``), ``k_vbm``,
    ``k_cbm``, ``k_direct`` (indices into the k-set), ``valence_bandwidth`` =
    vbm - min(E of band 0), ``n_occupied_bands``."""
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
    direct = bool(d[kd] - gap <= direct_tol)
    return {
        "vbm": float(v[kv]), "cbm": float(c[kc]), "gap": gap,
        "direct_gap": float(d[kd]), "direct": direct,
        "gap_type": "metal" if gap <= 0 else ("direct" if direct else "indirect"),
        "k_vbm": kv, "k_cbm": kc, "k_direct": kd,
        "valence_bandwidth": float(v[kv] - eigs[:, 0].min()),
        "n_occupied_bands": n,
    }


def molecular_levels(energies, n_electrons: float | None, spin_degeneracy: int = 2) -> dict:
    """Frontier orbitals of a molecule from its orbital energies (eV, any order) and electron
    count (all spins): ``homo``, ``lumo``, ``gap`` (LUMO - HOMO, eV), ``n_occupied`` (doubly
    occupied orbitals), ``homo_index``/``lumo_index`` (0-based, ascending order). For a count that
    does not fill a whole number of orbitals (an odd count: open shell) or leaves no empty
    orbital, the values that do not exist are None."""
    e = np.sort(np.asarray(energies, dtype=np.float64).reshape(-1))
    out = {"homo": None, "lumo": None, "gap": None, "n_occupied": None, "homo_index": None, "lumo_index": None}
    if n_electrons is None:
        return out
    if not 0 < n_electrons <= spin_degeneracy * len(e):
        raise SpectrumError(f"{n_electrons:g} electrons do not fit in {len(e)} orbitals x spin degeneracy "
                            f"{spin_degeneracy}")
    nocc = n_electrons / spin_degeneracy
    if abs(nocc - round(nocc)) > 1e-9:
        return out
    nocc = int(round(nocc))
    out.update(n_occupied=nocc, homo=float(e[nocc - 1]), homo_index=nocc - 1)
    if nocc < len(e):
        out.update(lumo=float(e[nocc]), lumo_index=nocc, gap=float(e[nocc] - e[nocc - 1]))
    return out


# ------------------------------------------------------------------------------ Fermi-level rule
#: ``solve(n_electrons) -> (result, method)``: the Fermi level for ``n_electrons`` per cell (all
#: spins); ``float(result)`` is it in eV and ``method`` (e.g. ``"4x4x4 mesh"``) completes the
#: source text ``"nel_atom, <method>"``. See :meth:`ElectronicStructure.fermi_solver` and
#: :meth:`eqtb.tb.kpm.KPMResult.fermi_solver`.
FermiSolver = Callable[[float], tuple[object, str]]


@dataclass
class FermiChoice:
    """The energy reference chosen by :func:`resolve_fermi_level`.

    ``value``: the Fermi level in eV (absolute), None when there is none (energies stay absolute).
    ``source``: how it was chosen, the text eqtb's outputs record: ``"--e-fermi"`` (given),
    ``"task E_fermi"`` (given in the task file), ``"nel_atom, <method>"`` (computed), or None.
    ``n_electrons``: valence electrons per cell (all spins) whenever ``nel_atom`` is known, else
    None. ``result``: what the solver returned whenever it ran (:class:`FermiLevel` on a k-mesh,
    :class:`eqtb.tb.kpm.KPMFermiLevel` from a KPM DOS), else None. ``estimate`` /
    ``estimate_source``: the level computed from ``nel_atom`` (eV, ``"nel_atom, <method>"``) when
    a given level (``--e-fermi`` or the task's ``E_fermi``) is used instead, else None.
    ``warnings``: messages for the user (a task ``E_fermi`` not used)."""

    value: float | None
    source: str | None
    n_electrons: float | None = None
    result: object | None = None
    warnings: list[str] = field(default_factory=list)
    estimate: float | None = None
    estimate_source: str | None = None


def resolve_fermi_level(structure, solve: FermiSolver, e_fermi: float | None = None,
                        nel_atom: Mapping[str, float] | None = None,
                        task_e_fermi: float | None = None,
                        task_nel_atom: Mapping[str, float] | None = None) -> FermiChoice:
    """Apply the Fermi-level rule (module docstring) and return a :class:`FermiChoice`.

    In order of precedence: ``e_fermi``, an explicit Fermi level in eV (``--e-fermi``);
    ``nel_atom``, valence electrons per element given on the command line (e.g. ``{"Si": 4}``),
    from which ``solve`` (:data:`FermiSolver`) computes the level; ``task_e_fermi``, a task file's
    ``E_fermi`` in eV (DeePTB: it wins over the task's ``nel_atom``); ``task_nel_atom``, the task
    file's valence electrons. ``nel_atom`` replaces ``task_nel_atom`` as the electron count.
    ``solve`` runs once whenever an electron count is known (for the level or its estimate) and
    never otherwise."""
    nel = nel_atom or task_nel_atom
    n = n_electrons(structure, nel) if nel else None
    computed = None
    if n is not None:
        result, method = solve(n)
        computed = (result, f"nel_atom, {method}")
    if e_fermi is not None or (task_e_fermi is not None and not nel_atom):
        value, source = (e_fermi, "--e-fermi") if e_fermi is not None else (task_e_fermi, "task E_fermi")
        if computed is None:
            return FermiChoice(float(value), source, n)
        return FermiChoice(float(value), source, n, computed[0], [], float(computed[0]), computed[1])
    if computed is not None:
        warnings = [] if task_e_fermi is None else [
            f"task E_fermi = {task_e_fermi} ignored: the Fermi level is computed from nel_atom"]
        return FermiChoice(float(computed[0]), computed[1], n, computed[0], warnings)
    return FermiChoice(None, None)


# ---------------------------------------------------------------------------------- DOS and PDOS
def dos_energies(eigs, sigma: float, npts: int, emin: float | None = None, emax: float | None = None,
                 e_fermi: float | None = None) -> np.ndarray:
    """Energy grid (eV, absolute) of ``npts`` points for a Gaussian-broadened DOS of ``eigs`` (eV).

    ``emin``/``emax`` are relative to ``e_fermi`` (eV; 0 when None, i.e. absolute); each one not
    given defaults to the lowest/highest eigenvalue minus/plus ``5 sigma + 0.5`` eV, so that the
    whole DOS fits (its integral is then all the states). Raises SpectrumError for an empty
    window or fewer than 2 points."""
    if int(npts) < 2:
        raise SpectrumError(f"a DOS energy grid needs at least 2 points, got {npts}")
    eigs = np.asarray(eigs, dtype=np.float64)
    ref = 0.0 if e_fermi is None else float(e_fermi)
    pad = 5 * sigma + 0.5
    lo = float(eigs.min()) - pad if emin is None else ref + emin
    hi = float(eigs.max()) + pad if emax is None else ref + emax
    if lo >= hi:
        raise SpectrumError(f"empty energy window: emin {lo - ref:g} >= emax {hi - ref:g}")
    return np.linspace(lo, hi, int(npts))


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

    ``S=None`` means an orthogonal basis. ``spin_degeneracy``: 2 for a spinless H, 1 for a spinful
    one (spin-orbit coupling: every band is one spin state), set from H when None."""

    H: object
    S: object | None = None
    spin_degeneracy: int | None = None
    chunk: int | None = None
    _mesh_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.spin_degeneracy is None:
            self.spin_degeneracy = 1 if self.H.spinful else 2

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
              kT: float = KT_300K, progress: bool | None = False, gamma_centered: bool = True) -> FermiLevel:
        """Fermi level (eV) from valence electrons (``nel_atom`` dict, or a number per cell) on a
        time-reversal-reduced mesh (Gamma-centred, or Monkhorst-Pack); ``kT`` in eV."""
        n = nel_atom if isinstance(nel_atom, (int, float)) else self.n_electrons(nel_atom)
        _, w, e = self.mesh_eigenvalues(mesh, gamma_centered, progress=progress)
        return fermi_level(e, w, n, self.spin_degeneracy, smearing, kT)

    def fermi_solver(self, mesh, gamma_centered: bool = True, progress: bool | None = False,
                     method: str | None = None, midgap: bool = False) -> FermiSolver:
        """The ``solve`` of :func:`resolve_fermi_level` on a mesh: :meth:`fermi` (Fermi-Dirac,
        kT = :data:`KT_300K`), source text ``"nel_atom, <method>"`` (default
        ``"<n1>x<n2>x<n3> mesh"``). ``midgap``: for an insulator, the middle of the gap (and the
        count there) instead of the bisection's point inside it; :meth:`molecule_fermi_solver`
        uses it."""
        method = method or f"{mesh[0]}x{mesh[1]}x{mesh[2]} mesh"

        def solve(n):
            res = self.fermi(n, mesh, progress=progress, gamma_centered=gamma_centered)
            if midgap:
                _, w, e = self.mesh_eigenvalues(mesh, gamma_centered)
                res = centre_in_gap(res, e, w)
            return res, method

        return solve

    def molecule_fermi_solver(self, progress: bool | None = False) -> FermiSolver:
        """The ``solve`` of :func:`resolve_fermi_level` for a molecule: its orbital energies (k =
        Gamma), the level in the middle of the HOMO-LUMO gap for a closed shell (DeePTB's estimate
        too), source text ``"nel_atom, orbital energies"``."""
        return self.fermi_solver((1, 1, 1), True, progress, method="orbital energies", midgap=True)

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

    Returns ``(total (nE,), labels, pdos (ngroups, nE), eigs (nk, H.dim))``; the groups are
    :func:`orbital_groups` ``kind``. Eigenvectors are computed chunk by chunk and never stored for
    all k-points; ``pdos.sum(0)`` equals ``total`` to rounding."""
    labels, group = orbital_groups(H, kind)
    if H.spinful:  # both spins of an orbital in its group
        group = np.concatenate([group, group])
    onehot = np.zeros((H.dim, len(labels)))
    onehot[np.arange(H.dim), group] = 1.0
    kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    e = np.asarray(energies, dtype=np.float64)
    total = np.zeros(len(e))
    proj = np.zeros((len(labels), len(e)))
    all_eigs = np.empty((len(kpts), H.dim))
    for sl, eigs, vecs, Sk in iter_eigh(H, S, kpts, chunk, vectors=True, progress=progress, desc="PDOS"):
        P = mulliken_weights(vecs, Sk) @ onehot
        total += dos(eigs, w[sl], e, sigma, spin_degeneracy)
        proj += pdos(eigs, w[sl], P, e, sigma, spin_degeneracy)
        all_eigs[sl] = eigs
    return total, labels, proj, all_eigs

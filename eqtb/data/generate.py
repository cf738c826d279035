"""``eqtb generate``: real DFT training data with PySCF (Kohn-Sham, molecules and periodic cells).

From one structure, :func:`generate` makes ``nframes`` perturbed copies, runs restricted
Kohn-Sham DFT on each with PySCF and writes H(R), S(R), D(R) and PySCF's own band energies into a
dataset folder that :class:`eqtb.data.folder.TrajectoryFolder` (and DeePTB) read.

Layout of ``out``::

    out/
      generate_report.json        settings, one record per frame (SCF, self-check), totals
      <formula>.<n>/              one trajectory folder per frame n = 0 .. nframes-1 (e.g. Si2.3)
        info.json basis.dat positions.dat cell.dat atomic_numbers.dat pbc.dat
        hamiltonians.h5 overlaps.h5 density_matrices.h5 kpoints.npy eigenvalues.npy
        generate.json             the frame's settings and record (written last, see below)

One folder per frame (rather than one folder holding all frames) makes every frame an atomic,
independent unit: it is computed and checked in a hidden staging folder ``.<name>.partial-*``
and renamed into place only when complete, so a folder ``<formula>.<n>`` that exists is complete,
and a rerun skips it (resumable; a changed setting is an error rather than a silent mix; a rerun
with a larger ``nframes`` adds frames). ``find_folders(out, formula)`` lists them.

Frames
------
Frame 0 is the unperturbed input structure; frame n >= 1 draws, from a generator seeded with
``(seed, n)`` (so frames do not depend on the order or the number of workers):

* a symmetric strain ``eps`` with every independent component uniform in ``[-strain, strain]``
  (periodic cells only): cell rows ``a_i -> a_i (1 + eps)``, positions alike (fractional
  coordinates kept);
* then a Gaussian displacement of every Cartesian coordinate, standard deviation
  ``displacement`` (Angstrom).

DFT
---
Molecules (no periodic direction): ``pyscf.dft.RKS``. Periodic cells (all three directions):
``pyscf.pbc.dft.KRKS`` on a Gamma-centred ``kmesh`` (``cell.make_kpts``), GTH pseudopotentials.
Restricted, closed shell (integer occupations, or Fermi-Dirac ones with ``smearing``: metals),
neutral; partially periodic cells are not supported. ``pseudo=None``
picks ``"gth-pade"`` for GTH bases (names starting with ``gth``) and all-electron otherwise.
``xc`` is PySCF's functional string; note that in PySCF ``"lda"`` alone is Slater exchange only,
so the default is ``"lda,vwn"`` (Slater + VWN correlation, the usual LDA).

FFT grid: PySCF's default mesh comes from ``estimate_ke_cutoff`` (an estimate for nuclear
attraction integrals at ``cell.precision``), which is very conservative for GTH bases. The default
here is ``ke_cutoff = KE_FRACTION * estimate_ke_cutoff(cell)`` (0.25; the mesh then has about half
the points per axis). 2-atom Si, gth-szv, LDA, 2x2x2 k: PySCF's 108 Ha (35^3 grid) -> 27 Ha
(19^3): total energy changes by 6e-4 meV, band energies by at most 0.06 meV (occupied 0.002 meV),
SCF 7x faster. Diamond C, gth-szv: 423 Ha (47^3) -> 106 Ha (25^3): 0.04 meV in the total energy,
0.11 meV in the bands (occupied 0.02 meV), 6x faster (the estimate scales with the sharpest
exponent, so the fraction carries over between elements). The self-check does not see an
unconverged grid (both sides use the same grid); pass ``ke_cutoff`` (Hartree) to choose it.

Quantities written (units and conventions of :mod:`eqtb.data.pyscf_engine`; FORMATS 1.6):

* H(R) in eV (Hartree -> eV: 27.211386245988), S(R) dimensionless, from
  :func:`~eqtb.data.pyscf_engine.real_space_blocks`: the converged Fock matrix at a
  Gamma-centred odd Fourier mesh ``kmesh_fourier``, transformed over its Born-von Karman cell,
  blocks at the shortest images. Default mesh: the smallest odd ``N_a`` with
  ``N_a |a_a| >= FOURIER_LENGTH`` (25 Angstrom; 7^3 for primitive Si, 5^3 for the 8-atom cubic
  cell). Molecules: R = 0 only.
* D(R) (``with_dm``), dimensionless, both spins (``N_el = sum_R Tr D(R) S(-R)``): periodic, the
  SCF density matrix Fourier transformed over the SCF k-mesh and evaluated at every (i, j, R) of
  H and S (:func:`~eqtb.data.pyscf_engine.periodic_density_blocks`); molecules,
  ``mf.make_rdm1()``. Valence electrons only with pseudopotentials.
* ``kpoints.npy``: fractional k-points of the band path (default: :meth:`KPath.automatic` of the
  unperturbed structure, ``band_density`` points per 1/Angstrom, the same fractional k-points in
  every frame); ``eigenvalues.npy``: PySCF's ``get_bands`` at those points, eV, absolute.
  Molecules: k = Gamma and the eigenvalues of the stored Fock matrix (``eigh(F, S)``), equal to
  PySCF's ``mo_energy`` within the SCF residual (``mo_energy_max_abs_diff_meV`` in the record;
  below 1e-6 eV with the molecules' default ``conv_tol``, :data:`CONV_TOL_MOLECULE`). A molecule's
  folder has ``pbc: false`` in info.json and no ``cell.dat``, as DeePTB's format holds molecules.
* Positions in Angstrom (PySCF's Bohr = 0.52917721092 Angstrom is used for the round trip).

Self-check (``check``): the written folder is read back with :class:`TrajectoryFolder` (the whole
chain: PySCF -> blocks -> files -> Operator) and its eigenvalues at ``N_CHECK`` fixed random
k-points in [-1, 1)^3 off both the SCF and the Fourier mesh (``check_offmesh_meV``) and along the
band path (``check_path_meV``) are compared with PySCF's ``get_bands`` at the same points;
``check_max_abs_meV`` per frame is the larger, over all bands. Points outside the first zone
also test PySCF's periodicity F(k + G) = F(k), which holds only on a converged FFT grid (2-atom
Si: ~1 meV off at W = (1/2, 1/4, 3/4) on a 13^3 grid, the check then reports 2 meV; 0.17 meV on
15^3; below 0.05 meV on the default 19^3 grid). Above ``CHECK_TOL_MEV`` (1 meV) a
:class:`GenerateWarning` is issued and the frame is marked. Molecules: eigenvalues of the read
back H, S against ``eigh`` of PySCF's Fock matrix. Also recorded: the electron count from the
read-back D and S (``n_electrons_blocks``) and the SCF ``n_electrons``.

Parallelism: ``workers > 1`` runs frames in a ``spawn`` process pool, each worker with
``max(1, ncpu // workers)`` OpenMP/BLAS threads (a script calling :func:`generate` with
``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard). With ``workers = 1``
frames run in this process with the caller's thread settings. Progress: a tqdm bar over frames and one status
line per frame.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from eqtb.structure import Structure, StructureError

__all__ = ["GenerateError", "GenerateWarning", "generate", "perturbed_structure", "default_fourier_mesh",
           "check_kpoints", "load_structure"]

#: default ke_cutoff as a fraction of PySCF's ``estimate_ke_cutoff`` (see the module docstring)
KE_FRACTION = 0.25
#: default Fourier mesh: smallest odd N_a with N_a |a_a| >= this length (Angstrom)
FOURIER_LENGTH = 25.0
#: self-check tolerance, meV
CHECK_TOL_MEV = 1.0
#: number of off-mesh self-check k-points
N_CHECK = 6
#: default band-path density, points per 1/Angstrom (with 2 pi): ~57 points for Si
BAND_DENSITY = 10.0
#: default SCF convergence (Hartree) of periodic cells and of molecules. Molecules: H is the Fock
#: matrix of the final density, F[D], whose eigenvalues differ from PySCF's ``mo_energy`` (those of
#: the Fock matrix of the previous density) by the SCF residual: 2e-6 eV for water (STO-3G, LDA)
#: at 1e-9, 3e-8 eV at 1e-11 (one more cycle, milliseconds)
CONV_TOL, CONV_TOL_MOLECULE = 1e-9, 1e-11
#: name of the per-frame record inside each frame folder and of the report at the root
FRAME_RECORD = "generate.json"
REPORT = "generate_report.json"


class GenerateError(ValueError):
    """Bad input to :func:`generate` (structure, PySCF settings, an output folder in the way)."""


class GenerateWarning(UserWarning):
    """A frame whose self-check error exceeds the tolerance, or whose SCF failed."""


def _require_pyscf():
    try:
        import pyscf  # noqa: F401
    except ImportError:
        raise GenerateError("eqtb generate needs PySCF, an optional dependency: pip install 'eqtb[pyscf]' "
                            "(or pip install pyscf)") from None


# ------------------------------------------------------------------------------------ structures
def load_structure(structure) -> Structure:
    """A :class:`Structure` from a Structure, an ``ase.Atoms`` or a structure file path."""
    if isinstance(structure, Structure):
        return structure
    if isinstance(structure, (str, os.PathLike)):
        return Structure.read(structure)
    if hasattr(structure, "get_positions") and hasattr(structure, "get_atomic_numbers"):
        return Structure.from_ase(structure)
    raise GenerateError(f"structure must be a Structure, ase.Atoms or a file path, got {type(structure).__name__}")


def perturbed_structure(base: Structure, index: int, displacement: float = 0.05, strain: float = 0.0,
                        seed: int = 0) -> Structure:
    """Frame ``index`` of the perturbation series (module docstring): index 0 is ``base``; index
    n >= 1 applies a random symmetric strain (components uniform in [-strain, strain], periodic
    cells only) and Gaussian displacements (std ``displacement`` Angstrom per coordinate), drawn
    from ``numpy.random.default_rng([seed, n])``."""
    if index == 0:
        return Structure(base.numbers.copy(), base.positions.copy(), base.cell.copy(), base.pbc.copy(),
                         base.source)
    rng = np.random.default_rng([int(seed), int(index)])
    cell, pos = base.cell.copy(), base.positions.copy()
    u = rng.uniform(-1.0, 1.0, size=(3, 3))
    eps = np.triu(u) + np.triu(u, 1).T  # symmetric, each independent component uniform
    if strain:
        deform = np.eye(3) + strain * eps
        cell, pos = cell @ deform, pos @ deform
    pos = pos + rng.normal(0.0, 1.0, size=pos.shape) * displacement
    s = Structure(base.numbers.copy(), pos, cell, base.pbc.copy(), f"{base.source} frame {index}".strip())
    return s


def default_fourier_mesh(structure: Structure, length: float = FOURIER_LENGTH) -> tuple[int, int, int]:
    """Smallest odd ``N_a >= length / |a_a|`` per periodic direction (1 along non-periodic ones)."""
    out = []
    for a in range(3):
        if not structure.pbc[a]:
            out.append(1)
            continue
        n = max(1, int(np.ceil(length / np.linalg.norm(structure.cell[a]) - 1e-9)))
        out.append(n if n % 2 else n + 1)
    return tuple(out)


def check_kpoints(n: int, meshes, seed: int = 12345, margin: float = 0.04) -> np.ndarray:
    """``n`` fixed random fractional k-points in [-1, 1)^3 (not only the first zone: PySCF's
    F(k + G) equals F(k) only for a converged FFT grid, which the check thereby also probes), each
    at least ``margin`` (in units of the mesh spacing, along some axis) away from every point of
    every mesh in ``meshes`` (so the Fourier interpolation is really tested)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        k = 2 * rng.random(3) - 1
        if all(np.abs(k * m - np.rint(k * m)).max() > margin for m in map(np.asarray, meshes)):
            out.append(k)
    return np.array(out)


# ------------------------------------------------------------------------------------ PySCF
def _pseudo_for(basis: str, pseudo: str | None) -> str | None:
    if pseudo is None:
        return "gth-pade" if isinstance(basis, str) and basis.lower().startswith("gth") else None
    if str(pseudo).lower() in ("none", ""):
        return None
    return pseudo


def _atoms(structure: Structure):
    return [[sym, tuple(float(x) for x in p)] for sym, p in zip(structure.symbols, structure.positions)]


def build_pyscf(structure: Structure, settings: dict):
    """PySCF ``gto.Mole`` (no periodic direction) or ``pbc.gto.Cell`` (fully periodic), built;
    PySCF's errors (unknown basis or pseudopotential, odd electron count) become GenerateError."""
    _require_pyscf()
    basis, pseudo = settings["basis"], settings["pseudo"]
    if int(structure.numbers.sum()) % 2:  # pseudopotential cores hold even electron numbers
        raise GenerateError(f"{structure.formula} has an odd number of electrons: eqtb generate runs "
                            f"restricted closed-shell DFT only")
    try:
        if structure.pbc.all():
            from pyscf.pbc import gto as pgto

            cell = pgto.Cell()
            cell.atom = _atoms(structure)
            cell.a = structure.cell
            cell.unit = "Angstrom"
            cell.basis = basis
            if pseudo:
                cell.pseudo = pseudo
            cell.verbose = 0
            if settings.get("pyscf_mesh"):
                cell.mesh = list(settings["pyscf_mesh"])
            elif settings.get("ke_cutoff"):
                cell.ke_cutoff = float(settings["ke_cutoff"])
            with warnings.catch_warnings():  # PySCF's basis-set-exchange hint for unknown names
                warnings.filterwarnings("ignore", message="Basis may be available")
                cell.build()
            obj = cell
        else:
            from pyscf import gto

            obj = gto.Mole()
            obj.atom = _atoms(structure)
            obj.unit = "Angstrom"
            obj.basis = basis
            if pseudo:
                obj.pseudo = pseudo
            obj.verbose = 0
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Basis may be available")
                obj.build()
    except Exception as exc:  # PySCF raises RuntimeError/KeyError/ValueError... for bad input
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise GenerateError(f"PySCF cannot build {structure.formula} with basis {basis!r} and pseudo "
                            f"{pseudo!r}: {msg}") from None
    if obj.nelectron % 2:
        raise GenerateError(f"{structure.formula} has {obj.nelectron} electrons (odd): eqtb generate runs "
                            f"restricted closed-shell DFT only")
    return obj


def _resolve_ke_cutoff(cell) -> float:
    from pyscf.pbc.gto.cell import estimate_ke_cutoff

    return float(KE_FRACTION * estimate_ke_cutoff(cell))


def _run_scf(obj, settings: dict):
    if hasattr(obj, "lattice_vectors"):
        from pyscf.pbc import dft as pdft

        mf = pdft.KRKS(obj, obj.make_kpts(list(settings["kmesh"])))
    else:
        from pyscf import dft

        mf = dft.RKS(obj)
    if settings.get("smearing") is not None:  # fractional (Fermi-Dirac) occupations
        from pyscf.scf.addons import smearing

        mf = smearing(mf, sigma=float(settings["smearing"]), method="fermi")
    mf.xc = settings["xc"]
    mf.conv_tol = float(settings["conv_tol"])
    mf.max_cycle = int(settings.get("max_cycle", 100))
    mf.verbose = 0
    mf.kernel()
    return mf


# ------------------------------------------------------------------------------------ one frame
def _frame_name(formula: str, index: int) -> str:
    return f"{formula}.{index}"


def _compute_frame(structure: Structure, settings: dict, index: int, out: Path) -> dict:
    """SCF, blocks, staging folder, self-check, rename into place. Returns the frame record."""
    from eqtb.data import pyscf_engine as pe
    from eqtb.data.folder import Frame, TrajectoryFolder, write_folder
    from eqtb.operator import Operator
    from eqtb.tb.spectrum import band_energies

    t0 = time.perf_counter()
    name = _frame_name(settings["formula"], index)
    rec = {"frame": index, "folder": name, "status": "failed"}
    obj = build_pyscf(structure, settings)
    periodic = hasattr(obj, "lattice_vectors")
    if periodic:
        rec["pyscf_mesh"] = [int(x) for x in obj.mesh]
    rec["n_electrons"] = int(obj.nelectron)
    mf = _run_scf(obj, settings)
    rec.update(converged=bool(mf.converged), e_tot_hartree=float(mf.e_tot),
               e_tot_ev=float(mf.e_tot) * pe.HARTREE_EV, scf_cycles=getattr(mf, "cycles", None))
    t_scf = time.perf_counter()
    if not mf.converged:
        rec.update(error=f"SCF not converged in {mf.max_cycle} cycles", wall_s=round(t_scf - t0, 2))
        return rec
    kq = np.asarray(settings["check_kpoints"], dtype=np.float64)
    if periodic:
        st, basis, hb, sb, info = pe.real_space_blocks(mf, settings["kmesh_fourier"])
        H = Operator.from_blocks(st, basis, hb, source="PySCF Fock (Fourier)")
        S = Operator.from_blocks(st, basis, sb, source="PySCF overlap (Fourier)")
        rec["fock_max_imag_ev"] = info.max_imag_h
        D = None
        if settings["with_dm"]:
            db, dm_imag = pe.periodic_density_blocks(mf, hb.keys())
            D = Operator.from_blocks(st, basis, db, source="PySCF density matrix")
            rec["dm_max_imag"] = dm_imag
        kpath = np.asarray(settings["band_kpoints"], dtype=np.float64)
        ref = pe.reference_bands(mf, np.vstack([kpath, kq]))  # one get_bands call: one density pass
        if not np.isfinite(ref).all() or np.abs(ref).max() > 1e5:
            raise GenerateError(f"{name}: PySCF's bands contain removed (ill-conditioned) states")
        eig_path, ref_check = ref[:len(kpath)], ref[len(kpath):]
    else:
        import scipy.linalg

        fock = mf.get_fock(dm=mf.make_rdm1())
        st, basis, H, S = pe.molecular_operators(mf, fock)
        D = None
        if settings["with_dm"]:
            D = Operator.from_blocks(st, basis, pe.molecular_density_blocks(mf), source="PySCF density matrix")
        kpath = np.zeros((1, 3))
        eig_path = scipy.linalg.eigh(fock, mf.get_ovlp(), eigvals_only=True)[None] * pe.HARTREE_EV
        ref_check = eig_path
        kq = kpath
        rec["mo_energy_max_abs_diff_meV"] = float(np.abs(eig_path[0] - mf.mo_energy * pe.HARTREE_EV).max() * 1e3)
    rec["n_blocks"] = len(H.i) + H.natoms
    frame = Frame(structure=st, hamiltonian=H, overlap=S, density_matrix=D, kpoints=kpath, eigenvalues=eig_path)
    stage = out / f".{name}.partial-{os.getpid()}"
    try:
        write_folder(stage, [frame], overwrite=True)
        if settings["check"]:
            fr = TrajectoryFolder(stage).frame(0)
            e = band_energies(fr.hamiltonian, fr.overlap, kq)
            rec["check_offmesh_meV"] = float(np.abs(e - ref_check).max() * 1e3)
            rec["check_max_abs_meV"] = rec["check_offmesh_meV"]
            rec["check_nk"] = len(kq)
            if periodic:  # the band path too: PySCF's bands there are known already
                e = band_energies(fr.hamiltonian, fr.overlap, fr.kpoints)
                rec["check_path_meV"] = float(np.abs(e - fr.eigenvalues).max() * 1e3)
                rec["check_max_abs_meV"] = max(rec["check_offmesh_meV"], rec["check_path_meV"])
                rec["check_nk"] += len(fr.kpoints)
            if fr.density_matrix is not None:
                sblk = fr.overlap.to_blocks(both_triangles=True)
                rec["n_electrons_blocks"] = float(sum(
                    np.sum(d * sblk[k]) for k, d in fr.density_matrix.to_blocks(both_triangles=True).items()
                    if k in sblk))
        rec["status"] = "done"
        rec["wall_s"] = round(time.perf_counter() - t0, 2)
        rec["scf_s"] = round(t_scf - t0, 2)
        (stage / FRAME_RECORD).write_text(json.dumps({"settings": settings["identity"], "record": rec},
                                                     indent=1) + "\n")
        final = out / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return rec


def _frame_job(job: tuple) -> dict:
    """Process-pool entry point: never raises; a failure becomes a record with ``error``."""
    structure, settings, index, out = job
    t0 = time.perf_counter()
    try:
        return _compute_frame(structure, settings, index, Path(out))
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return {"frame": index, "folder": _frame_name(settings["formula"], index), "status": "failed",
                "error": f"{type(exc).__name__}: {msg}", "wall_s": round(time.perf_counter() - t0, 2)}


def _init_worker(nthreads: int) -> None:
    try:
        from pyscf import lib

        lib.num_threads(nthreads)
    except ImportError:  # pragma: no cover - checked in the parent
        pass


@contextmanager
def thread_env(nthreads: int):
    """Temporarily set the thread-count variables (OpenMP, OpenBLAS, MKL) so spawned workers start with them."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in names}
    try:
        for k in names:
            os.environ[k] = str(nthreads)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ncpu() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------ driver
def _status_line(rec: dict) -> str:
    name = rec["folder"]
    if rec["status"] == "skipped":
        tail = f", check {rec['check_max_abs_meV']:.4f} meV" if rec.get("check_max_abs_meV") is not None else ""
        return f"{name}: skipped (already complete{tail})"
    if rec["status"] == "failed":
        return f"{name}: FAILED: {rec.get('error', 'unknown error')}"
    parts = [f"{name}: SCF converged" + (f" in {rec['scf_cycles']} cycles" if rec.get("scf_cycles") else ""),
             f"E = {rec['e_tot_hartree']:.8f} Ha"]
    if rec.get("check_max_abs_meV") is not None:
        err = rec["check_max_abs_meV"]
        flag = "" if err <= CHECK_TOL_MEV else f"  <-- SELF-CHECK FAILED (> {CHECK_TOL_MEV:g} meV)"
        parts.append(f"self-check {err:.4f} meV{flag}")
    if rec.get("n_electrons_blocks") is not None:
        parts.append(f"N_el(D,S) {rec['n_electrons_blocks']:.6f}/{rec['n_electrons']}")
    parts.append(f"{rec['wall_s']:.1f} s")
    return ", ".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


def _remove_stale_staging(out: Path, formula: str) -> None:
    """Remove staging folders ``.<formula>.<n>.partial-<pid>`` (and write_folder's temporary
    siblings of them) left by a run that was killed, i.e. whose process no longer exists."""
    import re

    for p in list(out.glob(f".{formula}.*.partial-*")) + list(out.glob(f"..{formula}.*.partial-*")):
        m = re.search(r"\.partial-(\d+)", p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _jsonable(x):
    return json.loads(json.dumps(x))


def _write_report(out: Path, report: dict) -> None:
    tmp = out / f".{REPORT}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out / REPORT)


def generate(structure, out, nframes: int = 4, displacement: float = 0.05, strain: float = 0.0,
             seed: int = 0, basis: str = "gth-szv", pseudo: str | None = None, xc: str = "lda,vwn",
             kmesh=(2, 2, 2), kmesh_fourier=None, with_dm: bool = True, band_kpoints=None,
             band_density: float = BAND_DENSITY, workers: int = 1, check: bool = True,
             ke_cutoff: float | None = None, conv_tol: float | None = None, max_cycle: int = 100,
             smearing: float | None = None, overwrite: bool = False, progress: bool | None = None,
             verbose: bool = True, pyscf_mesh=None) -> dict:
    """Generate a PySCF DFT dataset of ``nframes`` perturbed copies of ``structure`` in ``out``.

    Parameters (lengths in Angstrom, energies in eV unless stated; see the module docstring)
    ----------
    structure : Structure, ase.Atoms or structure file path; fully periodic or not periodic.
    out : dataset root; frame n goes to ``out/<formula>.<n>``.
    nframes : number of frames; frame 0 is the unperturbed structure.
    displacement : standard deviation of the Gaussian displacement of each coordinate (Angstrom).
    strain : maximum absolute value of each component of the random symmetric strain.
    seed : seed of the perturbations (frame n uses ``default_rng([seed, n])``).
    basis, pseudo, xc : PySCF basis name, pseudopotential (None: gth-pade for GTH bases, none
        otherwise), functional (PySCF string; "lda,vwn" by default).
    kmesh : SCF k-mesh (Gamma-centred) for periodic cells.
    kmesh_fourier : Fourier mesh for H(R), S(R) (default :func:`default_fourier_mesh`; odd).
    with_dm : also write the density matrix D(R).
    band_kpoints : (nk, 3) fractional band k-points (default: automatic path, ``band_density``
        points per 1/Angstrom).
    workers : frames computed in parallel (process pool).
    check : read the written folder back and compare its eigenvalues with PySCF's ``get_bands``
        at off-mesh k-points and along the band path (module docstring).
    ke_cutoff : FFT-grid kinetic-energy cutoff in Hartree (default: KE_FRACTION times PySCF's
        estimate). ``pyscf_mesh`` (testing only) sets the FFT mesh directly.
    conv_tol : SCF energy convergence (Hartree; default :data:`CONV_TOL` 1e-9 for periodic cells,
        :data:`CONV_TOL_MOLECULE` 1e-11 for molecules); ``max_cycle`` SCF iterations.
    smearing : Fermi-Dirac width ``sigma`` of the occupations in Hartree (``k_B T``; 0.01 Ha = 0.27 eV),
        PySCF's ``scf.addons.smearing(mf, sigma, method="fermi")``; None (default): integer
        occupations (aufbau, closed shell). Metals need it: their SCF with integer occupations
        oscillates between k-points and does not converge. Part of the settings a reused frame
        must agree with.
    overwrite : recompute frames that exist (default: skip complete frames with the same settings).
    progress : tqdm bar (None: only on a terminal); ``verbose``: one status line per frame.

    Returns the report dict (also written to ``out/generate_report.json``): ``settings``,
    ``frames`` (one record per frame: status done/skipped/failed, converged, e_tot_hartree,
    check_max_abs_meV, n_electrons(_blocks), wall_s, ...), ``max_check_meV``, ``failed``,
    ``check_failed``, ``wall_s``.
    """
    _require_pyscf()
    t_start = time.perf_counter()
    base = load_structure(structure)
    if base.natoms == 0:
        raise GenerateError("the structure has no atoms")
    if base.pbc.any() and not base.pbc.all():
        raise GenerateError(f"{base.formula}: partially periodic structures (pbc {base.pbc.tolist()}) are not "
                            f"supported; make it fully periodic (with vacuum) or a molecule")
    periodic = bool(base.pbc.all())
    try:
        base.check_distances()
    except StructureError as exc:
        raise GenerateError(str(exc)) from None
    nframes = int(nframes)
    if nframes < 1:
        raise GenerateError(f"nframes must be at least 1, got {nframes}")
    if displacement < 0 or strain < 0:
        raise GenerateError(f"displacement and strain must be >= 0, got {displacement} and {strain}")
    if strain and not periodic:
        raise GenerateError("strain needs a periodic cell; this structure is a molecule")
    workers = int(workers)
    if workers < 1:
        raise GenerateError(f"workers must be at least 1, got {workers}")
    kmesh = tuple(int(k) for k in kmesh)
    if len(kmesh) != 3 or min(kmesh) < 1:
        raise GenerateError(f"kmesh must be three positive integers, got {kmesh}")
    if smearing is not None and not float(smearing) > 0:
        raise GenerateError(f"smearing (Fermi-Dirac width, Hartree) must be positive or None, got {smearing}")

    if conv_tol is None:
        conv_tol = CONV_TOL if periodic else CONV_TOL_MOLECULE
    settings = {"formula": base.formula, "basis": basis, "pseudo": _pseudo_for(basis, pseudo), "xc": xc,
                "conv_tol": float(conv_tol), "with_dm": bool(with_dm), "displacement": float(displacement),
                "strain": float(strain), "seed": int(seed), "periodic": periodic,
                "smearing": None if smearing is None else float(smearing)}
    if pyscf_mesh is not None:
        settings["pyscf_mesh"] = [int(x) for x in pyscf_mesh]
    probe = build_pyscf(base, settings)  # validates basis / pseudo / electron count early
    band_description = "Gamma (molecule)"
    if periodic:
        settings["kmesh"] = list(kmesh)
        kf = default_fourier_mesh(base) if kmesh_fourier is None else tuple(int(k) for k in kmesh_fourier)
        if len(kf) != 3 or min(kf) < 1:
            raise GenerateError(f"kmesh_fourier must be three positive integers, got {kmesh_fourier}")
        if any(k % 2 == 0 for k in kf):
            warnings.warn(f"kmesh_fourier {kf} has an even entry: H(R) then carries PySCF's FFT-grid "
                          f"non-periodicity; odd meshes are recommended", GenerateWarning, stacklevel=2)
        settings["kmesh_fourier"] = list(kf)
        if pyscf_mesh is None:
            settings["ke_cutoff"] = float(ke_cutoff) if ke_cutoff is not None else _resolve_ke_cutoff(probe)
        if band_kpoints is None:
            from eqtb.tb.kpath import KPath

            path = KPath.automatic(base, density=band_density)
            band_kpoints, band_description = path.kpts, path.description
        else:
            band_description = "given"
        band_kpoints = np.atleast_2d(np.asarray(band_kpoints, dtype=np.float64))
        if band_kpoints.shape[1] != 3:
            raise GenerateError(f"band_kpoints must be (nk, 3) fractional, got shape {band_kpoints.shape}")
        settings["band_kpoints"] = band_kpoints.tolist()
        settings["check_kpoints"] = check_kpoints(N_CHECK, [kmesh, kf]).tolist()
    else:
        settings["check_kpoints"] = [[0.0, 0.0, 0.0]]
    settings["check"] = bool(check)
    settings["max_cycle"] = int(max_cycle)
    # what must agree for a frame on disk to be reused
    # (smearing only when set: frames written before the option, with integer occupations, stay reusable)
    identity = {k: v for k, v in settings.items() if k not in ("check", "max_cycle", "check_kpoints")
                and not (k == "smearing" and v is None)}
    identity["structure"] = {"numbers": base.numbers.tolist(), "positions": base.positions.tolist(),
                             "cell": base.cell.tolist(), "pbc": base.pbc.tolist()}
    settings["identity"] = _jsonable(identity)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenerateError(f"{out}: output path exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out, base.formula)

    records: dict[int, dict] = {}
    todo: list[int] = []
    for n in range(nframes):
        final = out / _frame_name(base.formula, n)
        if not final.exists() or overwrite:
            todo.append(n)
            continue
        rec_file = final / FRAME_RECORD
        if not rec_file.is_file():
            raise GenerateError(f"{final}: exists but was not written by eqtb generate (no {FRAME_RECORD}); "
                                f"refusing to overwrite it (choose another output folder)")
        try:
            saved = json.loads(rec_file.read_text())
            saved_settings, saved_rec = saved["settings"], saved["record"]
        except (ValueError, KeyError, TypeError) as exc:
            raise GenerateError(f"{rec_file}: unreadable frame record ({exc}); delete {final} to recompute it") from None
        if saved_settings != settings["identity"]:
            diff = sorted(k for k in set(saved_settings) | set(settings["identity"])
                          if saved_settings.get(k) != settings["identity"].get(k))
            raise GenerateError(f"{final}: generated with different settings ({', '.join(diff)}); use another "
                                f"output folder or overwrite=True (--overwrite)")
        records[n] = dict(saved_rec, status="skipped")

    report = {"settings": {k: v for k, v in settings.items() if k != "identity"} | {
        "band_path": band_description, "n_band_kpoints": len(settings.get("band_kpoints", [[0, 0, 0]])),
        "workers": workers, "nframes": nframes},
        "frames": []}

    def finish_report() -> dict:
        frames = [records[n] for n in sorted(records)]
        checks = [r["check_max_abs_meV"] for r in frames if r.get("check_max_abs_meV") is not None]
        report["frames"] = frames
        report["max_check_meV"] = max(checks) if checks else None
        report["failed"] = [r["folder"] for r in frames if r["status"] == "failed"]
        report["check_failed"] = [r["folder"] for r in frames
                                  if r.get("check_max_abs_meV") is not None and r["check_max_abs_meV"] > CHECK_TOL_MEV]
        report["computed"] = sum(r["status"] == "done" for r in frames)
        report["skipped"] = sum(r["status"] == "skipped" for r in frames)
        report["wall_s"] = round(time.perf_counter() - t_start, 2)
        _write_report(out, report)
        return report

    from tqdm import tqdm

    bar = tqdm(total=nframes, initial=nframes - len(todo), desc=f"generate {base.formula}", unit="frame",
               disable=None if progress is None else not progress)

    def emit(rec: dict) -> None:
        records[rec["frame"]] = rec
        if verbose:
            tqdm.write(_status_line(rec))
        if rec["status"] == "failed":
            warnings.warn(f"{rec['folder']}: {rec.get('error')}", GenerateWarning, stacklevel=3)
        elif rec.get("check_max_abs_meV") is not None and rec["check_max_abs_meV"] > CHECK_TOL_MEV:
            warnings.warn(f"{rec['folder']}: SELF-CHECK ERROR {rec['check_max_abs_meV']:.3f} meV exceeds "
                          f"{CHECK_TOL_MEV:g} meV (increase kmesh_fourier or the FFT grid)", GenerateWarning,
                          stacklevel=3)
        bar.update(1)
        finish_report()

    try:
        for n in sorted(records):
            if verbose:
                tqdm.write(_status_line(records[n]))
        jobs = [(perturbed_structure(base, n, displacement, strain, seed), settings, n, str(out)) for n in todo]
        for job in jobs:
            try:
                job[0].check_distances()
            except StructureError as exc:
                raise GenerateError(f"frame {job[2]}: displacement {displacement} A puts atoms too close: {exc}") from None
        nw = min(workers, len(jobs))
        if nw <= 1:
            for job in jobs:
                emit(_frame_job(job))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            nthreads = max(1, _ncpu() // nw)
            pool = ProcessPoolExecutor(nw, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                       initargs=(nthreads,))
            try:
                with thread_env(nthreads):  # spawned workers start during submit and inherit it
                    futures = [pool.submit(_frame_job, job) for job in jobs]
                for fut in as_completed(futures):
                    emit(fut.result())
            except BrokenProcessPool:
                raise GenerateError(
                    "a worker process died (out of memory, or killed; a script that calls generate(..., "
                    "workers > 1) must protect its top level with `if __name__ == '__main__':` because "
                    "workers are spawned processes); completed frames are kept, rerun to resume") from None
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return finish_report()

"""Orthogonal tight-binding models for Wannier90-style tools and PythTB, with Loewdin
orthogonalisation of non-orthogonal (H, S) on a k-mesh.

Wannier90's ``_hr.dat`` and PythTB hold an orthogonal model: one matrix H(R) per lattice vector,
``H(R)[m, n] = <m, 0| H |n, R>`` (eV), no overlap. :func:`tight_binding` makes one from eqtb operators:

* H without S (an orthogonal basis): H(R) as it is, the lattice vectors of its bonds, exact.
* H with S, ``orthogonalize=True``: Loewdin orthogonalisation in k-space on a Gamma-centred mesh
  ``N1 x N2 x N3`` (:func:`default_mesh` unless given), ``H_L(k) = S(k)^-1/2 H(k) S(k)^-1/2``, which
  has the same eigenvalues as ``H(k) c = E S(k) c`` at every mesh k-point (the Loewdin orbitals
  ``S^-1/2`` are atom-centred, symmetric orthogonal combinations of the atomic orbitals, and keep the
  order and the labels of the atomic orbitals), then Fourier back to real space:
  ``H_L(T) = 1/Nk sum_k H_L(k) exp(+i 2 pi k.T)`` for the Nk cell offsets T of the mesh's supercell.
  Each block of an atom pair (a, b) and offset T is put on the lattice vector(s) ``R = T + (N1 L1,
  N2 L2, N3 L3)`` that bring atom b closest to atom a (``|r_b + R.A - r_a|`` smallest; shared
  equally among images within 1e-5 Angstrom) -- the Wigner-Seitz supercell of the mesh for
  each atom pair, as Wannier90's ``use_ws_distance``, with the weights written into the matrices so
  every degeneracy in the file is 1.

  At the mesh k-points the model's bands are exactly eqtb's (every R of one offset T has the same
  phase there). Between them it is an interpolation: H_L(R) decays exponentially with distance but
  is nonzero beyond the supercell, and what lies beyond is folded back (truncation error). The
  error is measured on every export at the half-shifted mesh (the k-points farthest from the mesh,
  :data:`N_CHECK` of them) and stored as :attr:`TightBinding.max_error_eV` (and in
  ``export.json``); above :data:`WARN_ERROR_EV` it is warned about. Measured on real ABACUS frames
  (max over all bands at the check points; ``tests/test_export_tools.py`` repeats some):

  * Si64, SZP 1s1p, cubic 10.9 Angstrom cell, 256 bands: mesh 2 (supercell 22 Angstrom) 1.7e-3 eV,
    3 (33 Angstrom) 2.3e-5 eV, 4 (44 Angstrom) 2.5e-7 eV;
  * Si2, DZP 2s2p1d with 8 au cutoffs, fcc 3.82 Angstrom cell, 26 bands up to 80 eV: mesh 6
    (23 Angstrom) 0.60 eV, 8 (31 Angstrom) 0.046 eV, 10 (38 Angstrom) 0.013 eV, 12 (46 Angstrom)
    1.8e-3 eV.

  The error depends on how far S^-1/2 reaches: short for a compact basis, long for a diffuse one
  (nearly linearly dependent orbitals, S(k) with small eigenvalues). It is largest in the high
  bands: for Si2 the 4 valence bands are off by 0.015 eV at 8x8x8 and 9e-4 eV at 12x12x12 (random k).
  The default mesh (:func:`default_mesh`, a 30 Angstrom supercell) gives 2.3e-5 eV for Si64 and
  0.046 eV for Si2.

  The cost is one dense diagonalisation of S(k) per mesh point and Nk dense n x n complex matrices
  in memory (Si64, 256 orbitals: 1.5 s on 2x2x2, 6 s on 3x3x3, 8 s on 4x4x4 with one thread):
  meant for up to a few thousand orbitals.

Bloch sums: eqtb ``O(k) = sum_R O(R) exp(-i 2 pi k.R)``; Wannier90 and PythTB use ``exp(+i 2 pi k.R)``
(PythTB also adds the orbital positions, a diagonal unitary change of gauge). Their H(k) at k is
eqtb's at -k; for real H(R) (no spin-orbit coupling) the eigenvalues at k and -k are equal.

The ``"wannier90"`` export folder (:func:`write_wannier90`)::

    <out>/
      wannier90_hr.dat       Wannier90's format: a header line; num_wann; nrpts; the nrpts
                             degeneracies, 15 per line (all 1); then for each R, for n = 1..num_wann,
                             for m = 1..num_wann: "R1 R2 R3 m n Re(H_mn(R)) Im(H_mn(R))" (eV, 1-based
                             orbital indices, all num_wann^2 entries of each R) -- Wannier90 writes
                             (5I5, 2F12.6); here 12 decimals (eV) so the file reproduces eqtb's bands
                             to 1e-10 eV; whitespace-separated readers (PythTB, WannierTools,
                             WannierBerri, TBmodels) read it unchanged
      wannier90_centres.xyz  orbital centres (the atoms' positions, Angstrom), then the atoms
      wannier90.win          num_wann, unit_cell_cart and atoms_cart (Angstrom): what PythTB's
                             ``pythtb.w90(folder, "wannier90")`` reads
      export.json            conventions, orbital order and labels, mesh, measured interpolation error

R in the files is in units of the cell's lattice vectors; a left-handed cell (det < 0, e.g. ABACUS's
fcc a1 = (a, a, 0)/2, a2 = (a, 0, a)/2, a3 = (0, a, a)/2) is written as -a1, -a2, -a3 with -R, since
PythTB refuses left-handed cells (:func:`right_handed`; ``export.json`` says so).

Read back with :func:`read_hr_dat`. The format is dense (num_wann^2 lines per R, ~70 bytes each):
Si64's H alone (256 orbitals, 27 R) is 1.8e6 lines, 124 MB, written in 1.8 s and read in 3.9 s;
above :data:`MAX_HR_LINES` lines the export refuses (use the ``"npz"`` or ``"sisl"`` format).
PythTB's own reader (``pythtb.w90(...).model()``) adds hoppings with ``set_hop``, quadratic in
their number (110 s for Si2's 26 orbitals and 123 R): for anything but small models use
:func:`to_pythtb`.

PythTB (:func:`to_pythtb`): a ``pythtb.tb_model`` of the same model, orbital positions = the atoms'
positions (reduced coordinates), periodic along the structure's periodic directions. PythTB has
no overlap: with S, ``orthogonalize=True`` as above. PythTB's ``set_hop`` checks every earlier hopping
(quadratic time); :func:`to_pythtb` appends to the model's hopping list directly for PythTB 1.x
(the list ``set_hop`` builds, same layout) and falls back to ``set_hop`` otherwise.

PythTB is optional: ``pip install eqtb[export]`` (or ``pip install pythtb``).
"""

from __future__ import annotations

import datetime
import json
import warnings
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from eqtb.basis import Basis
from eqtb.data.atomic import atomic_directory
from eqtb.data.export import ExportError, check_operators, is_complex, padded_cell
from eqtb.data.folder import DatasetWarning
from eqtb.operator import Operator
from eqtb.structure import Structure

__all__ = ["TightBinding", "tight_binding", "loewdin", "default_mesh", "write_wannier90",
           "read_hr_dat", "to_pythtb", "right_handed", "HR_FILE", "N_CHECK", "MAX_HR_LINES"]

SEEDNAME = "wannier90"
HR_FILE = f"{SEEDNAME}_hr.dat"
CENTRES_FILE = f"{SEEDNAME}_centres.xyz"
WIN_FILE = f"{SEEDNAME}.win"
INFO_FILE = "export.json"
W90_FORMAT = "eqtb-wannier90"
W90_FORMAT_VERSION = 1
#: number of off-mesh k-points at which the interpolation error of an orthogonalised model is measured
N_CHECK = 8
#: Wigner-Seitz degeneracy tolerance (Angstrom), Wannier90's ws_distance_tol
WS_TOL = 1e-5
#: images searched per direction around the supercell (Wannier90's ws_search_size)
WS_SEARCH = 2
#: largest _hr.dat written (lines = nR * norb^2)
MAX_HR_LINES = 200_000_000
#: default supercell length (Angstrom) of the orthogonalisation mesh, see default_mesh
DEFAULT_SUPERCELL = 30.0
#: an orthogonalised model whose measured band error exceeds this (eV) is warned about
WARN_ERROR_EV = 0.01
INSTALL_HINT = "pip install eqtb[export]"


# ====================================================================== the model


@dataclass
class TightBinding:
    """An orthogonal tight-binding model: ``mats[r][m, n] = <m, 0| H |n, Rs[r]>`` in eV, orbitals in
    eqtb's compact layout and order (atoms in structure order, m = -l..l real harmonics, p = y, z, x).

    ``Rs`` (nR, 3) int64, R = 0 first then lexicographic, -R present with every R and
    ``mats[-R] = mats[R]^dagger``; ``mats`` (nR, n, n) float64 (complex128 for complex operators).
    ``mesh``: the orthogonalisation mesh (None: H was orthogonal, exact). ``max_error_eV``: the
    largest band error (all bands) measured at ``check_kpoints`` against eqtb's generalised
    eigenproblem (None for an exact model)."""

    structure: Structure
    basis: Basis
    Rs: np.ndarray
    mats: np.ndarray
    mesh: tuple[int, int, int] | None = None
    max_error_eV: float | None = None
    check_kpoints: np.ndarray | None = field(default=None, repr=False)

    @property
    def norb(self) -> int:
        return int(self.mats.shape[1])

    def hk(self, kpts) -> np.ndarray:
        """(nk, n, n) ``H(k) = sum_R H(R) exp(-i 2 pi k.R)`` (eqtb's sign), k fractional."""
        kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
        ph = np.exp(-2j * np.pi * (kpts @ self.Rs.T))
        return np.einsum("kr,rmn->kmn", ph, self.mats, optimize=True)

    def bands(self, kpts) -> np.ndarray:
        """(nk, n) ascending eigenvalues (eV) at fractional ``kpts``."""
        return np.linalg.eigvalsh(self.hk(kpts))


def default_mesh(structure: Structure, supercell: float = DEFAULT_SUPERCELL) -> tuple[int, int, int]:
    """Orthogonalisation mesh whose supercell is at least ``supercell`` Angstrom long along every
    periodic lattice vector (``N_i = ceil(supercell / |a_i|)``); 1 along non-periodic directions."""
    lengths = np.linalg.norm(structure.cell, axis=1)
    n = [int(max(1, np.ceil(supercell / L - 1e-9))) if p else 1 for L, p in zip(lengths, structure.pbc)]
    return tuple(n)


def tight_binding(hamiltonian: Operator, overlap: Operator | None = None, orthogonalize: bool = False,
                  mesh=None, n_check: int = N_CHECK, what: str = "") -> TightBinding:
    """The orthogonal model of H (and S) described in the module docstring.

    Without ``overlap``: H(R) as given (exact). With ``overlap``: ``orthogonalize=True`` is required
    (else :class:`~eqtb.data.export.ExportError` saying so) and Loewdin orthogonalisation on ``mesh``
    (default :func:`default_mesh`) is done by :func:`loewdin`, its interpolation error
    measured at ``n_check`` off-mesh k-points."""
    where = f"{what}: " if what else ""
    ops = {"hamiltonian": hamiltonian, **({"overlap": overlap} if overlap is not None else {})}
    check_operators(hamiltonian.structure, ops, Path(what or "<tight_binding>"))
    if overlap is None:
        if orthogonalize or mesh is not None:
            warnings.warn(f"{where}no overlap given: the basis is taken as orthogonal and H exported as it "
                          f"is (orthogonalize / mesh ignored)", UserWarning, stacklevel=2)
        Rs, mats = hamiltonian.real_space_sparse()
        M = np.stack([m.toarray() for m in mats])
        return TightBinding(hamiltonian.structure, hamiltonian.basis, Rs, M)
    if not orthogonalize:
        raise ExportError(f"{where}these formats hold an orthogonal basis but an overlap S is given; pass "
                          f"orthogonalize=True for Loewdin orthogonalisation on a k-mesh (exact at the mesh "
                          f"k-points, interpolated between; see eqtb.data.export_tb), or export H alone if "
                          f"its basis is orthogonal")
    return loewdin(hamiltonian, overlap, mesh, n_check=n_check)


def _mesh_kpoints(mesh) -> np.ndarray:
    """(Nk, 3) Gamma-centred fractional k-points i/N, C order over (N1, N2, N3) (numpy's FFT order)."""
    axes = [np.arange(n) / n for n in mesh]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def loewdin(hamiltonian: Operator, overlap: Operator, mesh=None, n_check: int = N_CHECK) -> TightBinding:
    """Loewdin-orthogonalised model of (H, S) on a Gamma-centred ``mesh`` (module docstring): exact
    bands at the mesh k-points, Wigner-Seitz supercell per atom pair, interpolation error measured
    at ``n_check`` half-shifted mesh points (``max_error_eV``). Raises
    :class:`~eqtb.data.export.ExportError` for a bad mesh or an S(k) that is not positive definite."""
    from eqtb.tb.spectrum import band_energies

    s = hamiltonian.structure
    mesh = default_mesh(s) if mesh is None else tuple(int(x) for x in np.broadcast_to(np.asarray(mesh), (3,)))
    if any(n < 1 for n in mesh) or any(n > 1 and not p for n, p in zip(mesh, s.pbc)):
        raise ExportError(f"orthogonalisation mesh {list(mesh)}: needs N >= 1 along every direction and N = 1 "
                          f"along non-periodic ones (pbc {s.pbc.tolist()})")
    n = hamiltonian.norb
    kpts = _mesh_kpoints(mesh)
    nk = len(kpts)
    real = not (is_complex(hamiltonian) or is_complex(overlap))
    HL = np.empty((nk, n, n), dtype=np.complex128)
    for c in range(0, nk, 16):
        sl = slice(c, min(c + 16, nk))
        Hk, Sk = hamiltonian.dense(kpts[sl]), overlap.dense(kpts[sl])
        w, U = np.linalg.eigh(Sk)
        bad = np.where(w[:, 0] <= 1e-10)[0]
        if len(bad):
            k = kpts[sl][bad[0]]
            raise ExportError(f"overlap S(k) is not positive definite at k = {np.round(k, 6).tolist()} "
                              f"(smallest eigenvalue {w[bad[0], 0]:.3e}): cannot orthogonalise")
        X = (U / np.sqrt(w)[:, None, :]) @ np.conj(np.swapaxes(U, 1, 2))  # S^-1/2 (Hermitian)
        HL[sl] = X @ Hk @ X
    # offsets T of the supercell: H_L(T) = 1/Nk sum_k H_L(k) exp(+i 2 pi k.T) (numpy's inverse FFT)
    HT = np.fft.ifftn(HL.reshape(*mesh, n, n), axes=(0, 1, 2)).reshape(nk, n, n)
    del HL
    if real:
        HT = HT.real
    mats = _wigner_seitz(s, hamiltonian, mesh, HT)
    Rs = np.array(sorted(mats, key=lambda R: (R != (0, 0, 0), R)), dtype=np.int64).reshape(-1, 3)
    M = np.stack([mats[tuple(R)] for R in Rs.tolist()])
    tb = TightBinding(s, hamiltonian.basis, Rs, M, mesh=mesh)
    if n_check:
        check = _check_kpoints(mesh, s.pbc, n_check)
        ref = band_energies(hamiltonian, overlap, check)
        tb.max_error_eV = float(np.abs(tb.bands(check) - ref).max())
        tb.check_kpoints = check
        if tb.max_error_eV > WARN_ERROR_EV:
            warnings.warn(f"Loewdin-orthogonalised model on a {'x'.join(map(str, mesh))} mesh: bands between "
                          f"the mesh points are off by up to {tb.max_error_eV:.3g} eV (exact on the mesh); a "
                          f"denser mesh makes this smaller (mesh=...)", UserWarning, stacklevel=2)
    return tb


def _check_kpoints(mesh, pbc, n_check: int) -> np.ndarray:
    """Up to ``n_check`` k-points of the mesh shifted by half a step along every periodic direction
    (the points farthest from the mesh), evenly picked from the shifted mesh."""
    shift = np.array([0.5 / m if p else 0.0 for m, p in zip(mesh, pbc)])
    pts = _mesh_kpoints(mesh) + shift
    pick = np.unique(np.linspace(0, len(pts) - 1, min(n_check, len(pts))).round().astype(int))
    return pts[pick]


def _wigner_seitz(s: Structure, op: Operator, mesh, HT: np.ndarray) -> dict[tuple, np.ndarray]:
    """Spread the supercell offsets' blocks H_L(T) over lattice vectors R = T + N.L: per atom pair
    the images of minimal distance, weight 1/(number of them)."""
    N = np.array(mesh)
    norb_atom = np.diff(op.atom_orbital_offsets)
    cell = padded_cell(s)
    frac = s.positions @ np.linalg.inv(cell)
    dfrac = frac[None, :, :] - frac[:, None, :]  # (a, b): r_b - r_a in reduced coordinates
    # with N = 1 along a periodic direction every R along it is an image of T = 0
    ranges = [range(-WS_SEARCH, WS_SEARCH + 1) if p else range(0, 1) for p in s.pbc]
    L = np.array(list(product(*ranges)), dtype=np.int64)  # (nL, 3)
    out: dict[tuple, np.ndarray] = {}
    for t, T in enumerate(_mesh_kpoints(mesh) * N):
        T = np.rint(T).astype(np.int64)
        T = np.where(T > N // 2, T - N, T)  # centred representative
        R = T[None, :] + L * N[None, :]  # (nL, 3)
        d = np.linalg.norm((dfrac[:, :, None, :] + R[None, None, :, :]) @ cell, axis=-1)  # (a, b, nL)
        dmin = d.min(axis=2, keepdims=True)
        near = d <= dmin + WS_TOL
        weight = 1.0 / near.sum(axis=2)  # (a, b)
        for c in np.where(near.any(axis=(0, 1)))[0]:
            W = np.where(near[:, :, c], weight, 0.0)
            Worb = np.repeat(np.repeat(W, norb_atom, axis=0), norb_atom, axis=1)
            key = tuple(int(x) for x in R[c])
            block = Worb * HT[t]
            if key in out:
                out[key] += block
            else:
                out[key] = block
    return out


# ====================================================================== Wannier90 files


def right_handed(structure: Structure, Rs: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(cell, Rs, negated)``: the (padded) cell and the lattice vectors R as written for tools that
    need a right-handed cell (PythTB refuses others): for a left-handed cell (det < 0) the lattice
    vectors -a1, -a2, -a3 and the vectors -R (the same crystal and the same H(R) between the same
    orbitals; reduced coordinates and reduced k-points change sign), else unchanged."""
    cell = padded_cell(structure)
    if np.linalg.det(cell) < 0:
        return -cell, -np.asarray(Rs), True
    return cell, np.asarray(Rs), False



def write_wannier90(structure: Structure, ops: dict[str, Operator], out: Path, fermi_level: float | None,
                    overwrite: bool, orthogonalize: bool = False, mesh=None) -> Path:
    """The ``"wannier90"`` folder of the module docstring (called by
    :func:`eqtb.data.export.export_operators`): needs ``"hamiltonian"``; with ``"overlap"``,
    ``orthogonalize=True`` and ``mesh`` as :func:`tight_binding`."""
    from eqtb import __version__

    if "hamiltonian" not in ops:
        raise ExportError(f"{out}: the wannier90 format holds a Hamiltonian; no 'hamiltonian' given")
    if "density_matrix" in ops:
        warnings.warn(f"{out}: the wannier90 export writes H only; the density matrix is not written",
                      DatasetWarning, stacklevel=3)
    H, S = ops["hamiltonian"], ops.get("overlap")
    n = H.norb
    if S is not None and orthogonalize:  # size check before the expensive part: nR >= Nk
        m = default_mesh(structure) if mesh is None else np.broadcast_to(np.asarray(mesh), (3,))
        _check_size(out, int(np.prod(m)), n)
    tb = tight_binding(H, S, orthogonalize=orthogonalize, mesh=mesh, what=str(out))
    _check_size(out, len(tb.Rs), n)
    basis = H.basis
    symbols = structure.symbols
    cell, Rs_file, negated = right_handed(structure, tb.Rs)
    info = {
        "format": W90_FORMAT,
        "format_version": W90_FORMAT_VERSION,
        "eqtb_version": __version__,
        "files": {"hr": HR_FILE, "centres": CENTRES_FILE, "win": WIN_FILE},
        "num_wann": n,
        "nrpts": len(tb.Rs),
        "units": {"energy": "eV", "length": "Angstrom"},
        "fermi_level_eV": None if fermi_level is None else float(fermi_level),
        "matrix_element": "H_mn(R) = <m, 0| H |n, R> (eV), m, n 1-based in the file; R in units of the "
                          "lattice vectors",
        "bloch_sum": "Wannier90 / PythTB: H(k) = sum_R H(R) exp(+i 2 pi k.R) / deg(R) = eqtb's H at -k "
                     "(the same eigenvalues for real H(R)); all degeneracies are 1",
        "orthogonalized": S is not None,
        "orthogonalization": None if tb.mesh is None else {
            "method": "Loewdin in k-space, H_L(k) = S(k)^-1/2 H(k) S(k)^-1/2, on a Gamma-centred mesh, "
                      "Fourier back onto the Wigner-Seitz supercell of the mesh per atom pair",
            "mesh": list(tb.mesh),
            "exact_at": "the mesh k-points i/N",
            "max_band_error_eV": tb.max_error_eV,
            "error_measured_at": np.round(tb.check_kpoints, 12).tolist(),
        },
        "orbital_order": "atoms in structure order, each with its orbitals in eqtb's order: shells l-major "
                         "then zeta, m = -l..l real spherical harmonics without Condon-Shortley phase, "
                         "p = (y, z, x), d = (xy, yz, z2, xz, x2-y2) (Loewdin orbitals keep the labels)",
        "elements": {sym: basis.orbital_labels(sym) for sym in dict.fromkeys(symbols)},
        "atom_elements": symbols,
        "atom_orbital_offsets": H.atom_orbital_offsets.astype(int).tolist(),
        "cell": cell.tolist(),
        "lattice_vectors_negated": negated,
        "lattice_vectors_note": ("the structure's cell is left-handed: the files use -a1, -a2, -a3 and -R "
                                 "(right-handed, as PythTB requires); a tool's k on this lattice is then "
                                 "eqtb's k on the structure's cell" if negated else
                                 "the structure's cell (right-handed), R as eqtb's"),
        "pbc": [bool(x) for x in structure.pbc],
    }
    centres = np.repeat(structure.positions, np.diff(H.atom_orbital_offsets), axis=0)
    when = datetime.datetime.now().strftime("%d%b%Y at %H:%M:%S")
    fermi = "" if fermi_level is None else f", E_F = {float(fermi_level):.6f} eV (not subtracted)"
    header = (f"written by eqtb {__version__} on {when}: H(R) in eV, <m,0|H|n,R>{fermi}"
              f"{'; Loewdin-orthogonalised on a ' + 'x'.join(map(str, tb.mesh)) + ' mesh' if tb.mesh else ''}")
    with atomic_directory(out, overwrite, ExportError) as tmp:
        _write_hr(tmp / HR_FILE, header, Rs_file, tb.mats)
        with open(tmp / CENTRES_FILE, "w") as f:
            f.write(f"{n + structure.natoms:6d}\n Wannier centres (eqtb: the atoms' positions), Angstrom\n")
            f.writelines(f"X     {x:17.8f}{y:17.8f}{z:17.8f}\n" for x, y, z in centres)
            f.writelines(f"{sym:<6}{x:17.8f}{y:17.8f}{z:17.8f}\n"
                         for sym, (x, y, z) in zip(symbols, structure.positions))
        win = [f"! written by eqtb {__version__}: the cell and atoms of {HR_FILE} (for readers such as "
               f"PythTB's w90)", f"num_wann = {n}", f"num_bands = {n}", "", "begin unit_cell_cart", "ang"]
        win += [f"{a:18.10f}{b:18.10f}{c:18.10f}" for a, b, c in cell] + ["end unit_cell_cart", "",
                                                                          "begin atoms_cart", "ang"]
        win += [f"{sym:<4}{x:18.10f}{y:18.10f}{z:18.10f}" for sym, (x, y, z) in zip(symbols, structure.positions)]
        win += ["end atoms_cart", ""]
        (tmp / WIN_FILE).write_text("\n".join(win))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return out


def _check_size(out: Path, nR: int, n: int) -> None:
    if nR * n * n > MAX_HR_LINES:
        raise ExportError(f"{out}: a Wannier90 _hr.dat of {n} orbitals and {nR} lattice vectors would have "
                          f"{nR * n * n:.2e} lines (limit {MAX_HR_LINES:.0e}); use the npz or sisl format")


def _write_hr(path: Path, header: str, Rs: np.ndarray, mats: np.ndarray, chunk: int = 1 << 16) -> None:
    """Wannier90 _hr.dat: per R, n slow and m fast: ``R1 R2 R3 m n Re Im`` (12 decimals, eV)."""
    nR, n, _ = mats.shape
    mn = np.indices((n, n)).reshape(2, -1)[::-1] + 1  # (m, n) with n slow, m fast
    line = "%5d%5d%5d%5d%5d%22.12f%22.12f\n"
    with open(path, "w") as f:
        f.write(header.replace("\n", " ") + "\n")
        f.write(f"{n:12d}\n{nR:12d}\n")
        f.writelines("%5d" % 1 * len(range(i, min(i + 15, nR))) + "\n" for i in range(0, nR, 15))
        for R, M in zip(Rs.tolist(), mats):
            vals = M.T.ravel()  # entry (m, n) at n * num_wann + m
            for a in range(0, n * n, chunk):
                b = min(a + chunk, n * n)
                cols = np.empty((b - a, 7), dtype=object)
                cols[:, 0], cols[:, 1], cols[:, 2] = R
                cols[:, 3], cols[:, 4] = mn[0, a:b], mn[1, a:b]
                cols[:, 5] = vals[a:b].real
                cols[:, 6] = vals[a:b].imag if np.iscomplexobj(vals) else 0.0
                f.write((line * (b - a)) % tuple(cols.ravel().tolist()))


def read_hr_dat(path: str | Path) -> dict:
    """Read a Wannier90 ``_hr.dat`` (any writer: Wannier90's fixed format or free whitespace).

    Returns ``{"header": str, "num_wann": n, "Rs": (nR, 3) int64, "degeneracy": (nR,) int64,
    "H": (nR, n, n) complex128}`` with ``H[r][m, n] = H_mn(R_r)`` as written (not divided by the
    degeneracy; ``H(k) = sum_r H[r] exp(+i 2 pi k.R_r) / degeneracy[r]`` in Wannier90's sign, or
    with ``exp(-i ...)`` eqtb's H at k). Raises :class:`~eqtb.data.export.ExportError` on a malformed file."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read: {exc}") from None
    lines = text.splitlines()
    try:
        n, nR = int(lines[1]), int(lines[2])
        deg: list[int] = []
        row = 3
        while len(deg) < nR:
            deg += [int(x) for x in lines[row].split()]
            row += 1
        if len(deg) != nR:
            raise ValueError(f"{len(deg)} degeneracies for {nR} lattice vectors")
        body = np.array(" ".join(lines[row:]).split(), dtype=np.float64)
    except (IndexError, ValueError) as exc:
        raise ExportError(f"{path}: not a Wannier90 _hr.dat ({exc})") from None
    if body.size != nR * n * n * 7:
        raise ExportError(f"{path}: {body.size // 7} matrix-element lines, expected nrpts * num_wann^2 = "
                          f"{nR * n * n}")
    body = body.reshape(nR, n * n, 7)
    Rs = np.rint(body[:, 0, :3]).astype(np.int64)
    if not (np.rint(body[:, :, :3]) == Rs[:, None, :]).all():
        raise ExportError(f"{path}: lattice vectors change inside one R block")
    m = np.rint(body[..., 3]).astype(np.int64) - 1
    k = np.rint(body[..., 4]).astype(np.int64) - 1
    if m.min() < 0 or k.min() < 0 or m.max() >= n or k.max() >= n:
        raise ExportError(f"{path}: orbital index outside 1..{n}")
    H = np.zeros((nR, n, n), dtype=np.complex128)
    r = np.repeat(np.arange(nR), n * n)
    H[r, m.ravel(), k.ravel()] = (body[..., 5] + 1j * body[..., 6]).ravel()
    return {"header": lines[0], "num_wann": n, "Rs": Rs, "degeneracy": np.array(deg, dtype=np.int64), "H": H}


# ====================================================================== PythTB


def to_pythtb(hamiltonian: Operator, overlap: Operator | None = None, orthogonalize: bool = False, mesh=None,
              min_hopping: float = 0.0):
    """A ``pythtb.tb_model`` of H (eV), via :func:`tight_binding` (with S: ``orthogonalize=True`` is
    required, Loewdin on ``mesh``; the returned model carries the :class:`TightBinding` as
    ``model.eqtb_tight_binding`` so its ``max_error_eV`` can be read).

    Lattice: the cell (:func:`eqtb.data.export.padded_cell` for a molecule); orbitals at their
    atoms' positions (reduced coordinates), in eqtb's order; periodic along the structure's periodic
    directions (``dim_k`` of them, ``dim_r = 3``). Onsite energies: the real diagonal of H(0);
    hoppings: H(0) above the diagonal and every H(R) entry for one of each pair R, -R (PythTB adds
    the conjugates), entries with ``|H| <= min_hopping`` (eV) left out (exact zeros always).
    PythTB's Bloch sum has the opposite sign and the orbital positions in the phase: its eigenvalues
    at k are eqtb's at -k (equal for real H(R)). PythTB needs a right-handed cell: a left-handed
    one is given as -a1, -a2, -a3 with -R (:func:`right_handed`), and PythTB's k on it is eqtb's k."""
    try:
        import pythtb
    except ImportError as exc:
        raise ExportError(f"the PythTB export needs the pythtb package, which is not installed ({exc}); "
                          f"{INSTALL_HINT} (or: pip install pythtb)") from None
    tb = tight_binding(hamiltonian, overlap, orthogonalize=orthogonalize, mesh=mesh, what="to_pythtb")
    s = tb.structure
    cell, Rs, _ = right_handed(s, tb.Rs)
    per = [int(d) for d in np.where(s.pbc)[0]]
    frac = s.positions @ np.linalg.inv(cell)
    orb = np.repeat(frac, np.diff(hamiltonian.atom_orbital_offsets), axis=0)
    dim_k = len(per)
    model = pythtb.tb_model(dim_k, 3, cell, orb, per=per if dim_k else None)
    model.set_onsite(np.real(np.diag(tb.mats[0])).tolist())
    hops = []  # (amp, i, j, R) of the canonical half
    n = tb.norb
    iu = np.triu_indices(n, 1)
    for R, M in zip(Rs.tolist(), tb.mats):
        if R == [0, 0, 0]:
            i, j = iu
        elif tuple(R) > (0, 0, 0):
            i, j = np.indices((n, n)).reshape(2, -1)
        else:
            continue
        amp = M[i, j]
        keep = np.abs(amp) > min_hopping
        hops += [(a, int(x), int(y), R) for a, x, y in zip(amp[keep].tolist(), i[keep].tolist(), j[keep].tolist())]
    direct = (str(getattr(pythtb, "__version__", "")).startswith("1.")
              and isinstance(getattr(model, "_hoppings", None), list))
    for amp, i, j, R in hops:
        if direct:  # what set_hop(amp, i, j, R) appends for nspin = 1, without its quadratic duplicate scan
            model._hoppings.append([amp, i, j, np.array(R)] if dim_k else [amp, i, j])
        else:
            model.set_hop(amp, i, j, R if dim_k else None)
    model.eqtb_tight_binding = tb
    return model

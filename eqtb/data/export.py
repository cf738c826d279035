"""Export operators (predicted or DFT: H, S, density matrix) of one structure for other codes.

:func:`export_operators` writes ``{quantity: Operator}`` (quantities named as the
:class:`~eqtb.data.folder.Frame` fields ``"hamiltonian"``, ``"overlap"``, ``"density_matrix"``) in one
of :data:`FORMATS`:

``"dataset"``
    A DeePTB / dftio trajectory folder holding one frame (:func:`~eqtb.data.folder.write_folder`):
    ``info.json``, text structure files, ``basis.dat``, ``hamiltonians.h5`` / ``overlaps.h5`` /
    ``density_matrices.h5`` (group ``"0"``, 0-based keys ``"i_j_Rx_Ry_Rz"``, canonical half of the
    bonds, eqtb's = DeePTB's orbital order). Reads back with
    :class:`~eqtb.data.folder.TrajectoryFolder`. The Fermi level has no place in it (warned, not written).
``"deeph"``
    A DeepH-pack preprocessed folder (OpenMX orbital order, both triangles, 1-based names,
    ``info.json`` with the Fermi level) via :func:`~eqtb.data.deeph.write_deeph_folder`; reads back
    with :func:`~eqtb.data.deeph.read_deeph_folder`. Needs a periodic cell.
``"npz"``
    A folder of plain arrays for any code, described by ``export.json`` (see :func:`_write_npz`):
    ``<quantity>.npz``, ``lattice_vectors.npy``, ``structure.extxyz``. Reads back with
    :func:`load_npz_export`.
``"sisl"``
    For sisl / TBtrans (:mod:`eqtb.data.export_sisl`): ``hamiltonian.TSHS`` (H and S, SIESTA's
    binary format written by sisl; TBtrans's ``TBT.HS``), ``geometry.fdf``, ``export.json``; reads
    back with :func:`eqtb.data.export_sisl.read_sisl_export`. SIESTA's orbital signs (odd m negated).
    :func:`eqtb.data.export_sisl.to_sisl` gives the ``sisl.Hamiltonian`` object directly. Needs
    ``pip install eqtb[export]``.
``"wannier90"``
    A Wannier90-style tight-binding model (:mod:`eqtb.data.export_tb`): ``wannier90_hr.dat``,
    ``wannier90_centres.xyz``, ``wannier90.win`` (cell and atoms), ``export.json``; reads back with
    :func:`eqtb.data.export_tb.read_hr_dat` and with PythTB's ``pythtb.w90``. An orthogonal basis
    only: with an overlap S pass ``orthogonalize=True`` (Loewdin orthogonalisation on a k-mesh,
    ``mesh``; the error this makes between mesh points is measured and written to ``export.json``).
    :func:`eqtb.data.export_tb.to_pythtb` builds a ``pythtb.tb_model`` directly.

Conventions (all formats): lengths in Angstrom, H in eV (absolute: the Fermi level is *not*
subtracted), S and the density matrix dimensionless; ``O(R)[(i, mu), (j, nu)] =
<phi_{i,mu}(r - r_i)| O |phi_{j,nu}(r - r_j - R.A)>``; Bloch sum ``O(k) = sum_R O(R) exp(-i 2 pi k.R)``
with k in fractional reciprocal coordinates (DeePTB's sign; atomic positions not in the phase);
real spherical harmonics m = -l..l without Condon-Shortley phase, p = (y, z, x), d = (xy, yz, z2, xz,
x2-y2) except in ``"deeph"`` (OpenMX order, converted by the writer) and ``"sisl"`` (SIESTA's
signs). Tools whose Bloch sum has the other sign (sisl, Wannier90, PythTB: ``exp(+i 2 pi k.R)``) see
eqtb's H(k) at -k; for real H(R) (no spin-orbit coupling) the bands at k and -k are the same.

Scaling. ``"npz"`` is vectorised over bonds (:meth:`~eqtb.operator.Operator.real_space_sparse`,
one Python loop over the nR lattice vectors only) and is the format for big structures. ``"dataset"``
and ``"deeph"`` go through a ``{key: block}`` dict (one numpy array per block) and one HDF5 dataset
per block, i.e. Python loops over blocks. Measured on Si64 (64 atoms, 1s1p, 4749 blocks per operator
in the canonical half; one thread, best of 5 on a shared 2-core machine, up to 2x slower under load):
``"dataset"`` about 0.3 s per 1e4 blocks written, ``"deeph"`` about 0.7 s per 1e4 blocks written (it
writes both triangles, so twice the blocks, and reorders to OpenMX), ``"npz"`` about 0.02 s per 1e4
blocks. So a structure with 4e6 bonds takes ~2 min (dataset) or ~10 min (deeph) per operator and
a few GB of per-block Python objects there. ``"npz"`` measured on a synthetic 1e5-atom, 4e6-bond 1s1p
operator (1.28e8 stored entries, 27 R): 11-22 s per operator (the spread is the load of the shared
machine), peak memory 8.6 GB of which 5.7 GB is the operator itself with its cached compact-layout
triplets (shared with ``sparse``/``dense``); quantities are written one at a time; file 1.5 GB
(float64 values, int32 indices, uncompressed); :func:`load_npz_export` 10-24 s, +1.8 GB.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from eqtb.data.atomic import atomic_directory
from eqtb.data.folder import (
    BLOCK_FILES,
    DatasetError,
    DatasetWarning,
    Frame,
    write_folder,
)
from eqtb.hints import did_you_mean
from eqtb.structure import Structure
from eqtb.operator import Operator
from eqtb.quantities import UNITS

__all__ = ["FORMATS", "QUANTITIES", "ExportError", "export_operators", "load_npz_export",
           "check_operators", "is_complex", "padded_cell"]

#: the export formats :func:`export_operators` writes
FORMATS = ("dataset", "deeph", "npz", "sisl", "wannier90")
#: the quantities that can be exported (the operator fields of :class:`~eqtb.data.folder.Frame`)
QUANTITIES = tuple(BLOCK_FILES)
#: name and version of the npz layout, written to and checked in export.json
NPZ_FORMAT = "eqtb-npz"
NPZ_FORMAT_VERSION = 1
STRUCTURE_FILE = "structure.extxyz"
LATTICE_FILE = "lattice_vectors.npy"
INFO_FILE = "export.json"


class ExportError(ValueError):
    """Operators that cannot be exported (bad format or quantity name, mismatched structure or basis,
    existing output folder) or an npz export folder that cannot be loaded; the message says why."""


def export_operators(structure: Structure, operators: dict[str, Operator], out: str | Path, fmt: str,
                     fermi_level: float | None = None, overwrite: bool = False, *,
                     orthogonalize: bool = False, mesh=None) -> Path:
    """Write ``operators`` of ``structure`` to the folder ``out`` in format ``fmt`` (one of
    :data:`FORMATS`, see the module docstring for layouts, conventions and which formats scale).

    ``operators``: ``{"hamiltonian" | "overlap" | "density_matrix": Operator}``, at least one, all with
    the same basis and belonging to ``structure`` (same atomic numbers; positions and cell equal to
    1e-6 Angstrom). ``fermi_level`` (eV): written to ``info.json`` (``"deeph"``; 0.0 there when None,
    DeepH's "unknown") or ``export.json`` (``"npz"``; null when None); never subtracted from H.
    ``out`` is the folder itself (for ``"dataset"`` the trajectory folder, e.g. ``.../Si64.0``). It is
    written into a temporary sibling folder renamed into place at the end, so a crash never leaves
    a half-written folder; an existing non-empty ``out`` is an :class:`ExportError` unless
    ``overwrite``. Returns ``out`` as a Path.

    ``"wannier90"`` only: ``orthogonalize`` (required when an overlap is given: Loewdin
    orthogonalisation on the k-mesh ``mesh``, default :func:`eqtb.data.export_tb.default_mesh`),
    see :func:`eqtb.data.export_tb.write_wannier90`. ``"sisl"`` and ``"wannier90"`` need a
    ``"hamiltonian"``, take its ``"overlap"`` and ignore a density matrix (warned)."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}{did_you_mean(fmt, FORMATS)}; allowed formats: "
                          f"{', '.join(FORMATS)}")
    if fmt != "wannier90" and (orthogonalize or mesh is not None):
        raise ExportError(f"{out}: orthogonalize / mesh apply to the wannier90 format only, not {fmt!r}")
    ops = check_operators(structure, operators, out)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        what = "folder" if out.is_dir() else "file"
        raise ExportError(f"{out}: output {what} already exists and is not empty (pass overwrite=True to "
                          f"replace it)")
    try:
        if fmt == "dataset":
            if fermi_level is not None:
                warnings.warn(f"{out}: the DeePTB/dftio dataset format has no place for the Fermi level "
                              f"({fermi_level} eV); not written", DatasetWarning, stacklevel=2)
            return write_folder(out, [Frame(structure=structure, **ops)], overwrite=overwrite)
        if fmt == "deeph":
            from eqtb.data.deeph import write_deeph_folder

            return write_deeph_folder(Frame(structure=structure, **ops), out, fermi_level=fermi_level,
                                      overwrite=overwrite)
        if fmt == "sisl":
            from eqtb.data.export_sisl import write_sisl

            return write_sisl(structure, ops, out, fermi_level, overwrite)
        if fmt == "wannier90":
            from eqtb.data.export_tb import write_wannier90

            return write_wannier90(structure, ops, out, fermi_level, overwrite, orthogonalize=orthogonalize,
                                   mesh=mesh)
        return _write_npz(structure, ops, out, fermi_level, overwrite)
    except ExportError:
        raise
    except DatasetError as exc:  # DeepHError is one too
        raise ExportError(str(exc)) from exc


def check_operators(structure: Structure, operators, out: Path) -> dict[str, Operator]:
    """``operators`` as a dict after checking quantity names, types, structure (numbers, positions
    and cell to 1e-6 Angstrom) and one shared basis; :class:`ExportError` naming ``out`` otherwise."""
    if not isinstance(operators, dict) or not operators:
        raise ExportError(f"{out}: nothing to export; give {{quantity: Operator}} with quantities among "
                          f"{', '.join(QUANTITIES)}")
    basis = None
    for q, op in operators.items():
        if q not in QUANTITIES:
            raise ExportError(f"{out}: unknown quantity {q!r}{did_you_mean(q, QUANTITIES)}; allowed: "
                              f"{', '.join(QUANTITIES)}")
        if not isinstance(op, Operator):
            raise ExportError(f"{out}: {q} must be an eqtb Operator, got {type(op).__name__}")
        s = op.structure
        if s.natoms != structure.natoms or not np.array_equal(s.numbers, structure.numbers):
            raise ExportError(f"{out}: the {q} operator belongs to a different structure ({s.natoms} atoms "
                              f"{s.formula}, the structure has {structure.natoms} atoms {structure.formula})")
        if (np.abs(s.positions - structure.positions).max(initial=0.0) > 1e-6
                or np.abs(s.cell - structure.cell).max() > 1e-6):
            raise ExportError(f"{out}: the {q} operator's structure has other positions or cell than the "
                              f"structure given (more than 1e-6 Angstrom apart)")
        if basis is None:
            basis = op.basis
        elif op.basis != basis:
            raise ExportError(f"{out}: the {q} operator has basis {op.basis!r}, another operator {basis!r}")
    return dict(operators)


def is_complex(op: Operator) -> bool:
    """Whether any block of ``op`` has a nonzero imaginary part (a complex dtype alone is not enough)."""
    return any(np.iscomplexobj(a) and np.abs(a.imag).max(initial=0.0) > 0 for a in (op.onsite, op.offsite))


def padded_cell(structure: Structure, vacuum: float = 10.0) -> np.ndarray:
    """A full-rank (3, 3) cell (rows, Angstrom) for codes that always need one (sisl, PythTB): the
    structure's cell when it has full rank (always the case with any periodic direction, see
    :class:`~eqtb.structure.Structure`), else, for a molecule without a cell, the orthorhombic box
    of the atoms' extent plus ``vacuum`` along x, y, z (no lattice vector R != 0 has a block then)."""
    cell = np.array(structure.cell, dtype=np.float64)
    if abs(np.linalg.det(cell)) > 1e-6:
        return cell
    extent = np.ptp(structure.positions, axis=0) if structure.natoms else np.zeros(3)
    return np.diag(extent + vacuum)


# ====================================================================== npz


def _write_npz(structure: Structure, ops: dict[str, Operator], out: Path, fermi_level: float | None,
               overwrite: bool) -> Path:
    """The ``"npz"`` layout::

        <out>/
          export.json           description (below)
          lattice_vectors.npy   (nR, 3) int64, R = 0 first, then lexicographic
          <quantity>.npz        scipy.sparse.save_npz of a CSR matrix norb x (nR * norb):
                                [O(R_0) | O(R_1) | ...], column block r is O(R_r), R_r = lattice_vectors[r]
          structure.extxyz      the structure written by ASE (positions to 1e-8 Angstrom)

    Rows/columns are orbitals in the compact layout: atoms in structure order, each with its own
    orbitals (no padding), atom a's at ``atom_orbital_offsets[a]:atom_orbital_offsets[a+1]``. Both
    triangles are stored, so ``O(-R) = O(R)^dagger`` holds in the file. All quantities share
    ``lattice_vectors.npy`` (the union of their R; a quantity lacking some R has empty blocks there).

    ``export.json`` keys: format, format_version, eqtb_version, quantities, norb, natoms, nR, units
    (per quantity plus length and energy), fermi_level_eV (null if unknown; not subtracted),
    matrix_element, bloch_sum, layout, orbital_order (text), elements (per-element orbital labels
    in block order, from :meth:`eqtb.basis.Basis.orbital_labels`), basis (per-element basis
    strings), atom_elements (N symbols), atom_orbital_offsets (N + 1), structure_file, cell (3x3
    Angstrom, rows a1..a3), pbc. Vectorised over bonds (no per-block Python objects)."""
    from eqtb import __version__

    first = next(iter(ops.values()))
    basis = first.basis
    n = first.norb
    symbols = structure.symbols
    # union of the lattice vectors of all quantities (with -R and 0), R = 0 first then lexicographic
    allR = sorted({R for op in ops.values() for R in _lattice_vectors(op)} | {(0, 0, 0)})
    allR.remove((0, 0, 0))
    allR = np.array([(0, 0, 0)] + allR, dtype=np.int64).reshape(-1, 3)
    where = {tuple(R): r for r, R in enumerate(allR.tolist())}
    info = {
        "format": NPZ_FORMAT,
        "format_version": NPZ_FORMAT_VERSION,
        "eqtb_version": __version__,
        "quantities": list(ops),
        "norb": int(n),
        "natoms": int(structure.natoms),
        "nR": len(allR),
        "units": {**{q: UNITS[q] for q in ops}, "length": "Angstrom", "energy": "eV"},
        "fermi_level_eV": None if fermi_level is None else float(fermi_level),
        "matrix_element": "O(R)[(i,mu),(j,nu)] = <phi_{i,mu}(r - r_i)| O |phi_{j,nu}(r - r_j - R.A)>, "
                          "R in units of the lattice vectors (rows of cell)",
        "bloch_sum": "O(k) = sum_R O(R) exp(-i 2 pi k.R), k in fractional reciprocal coordinates, "
                     "atomic positions not in the phase (DeePTB's sign convention)",
        "layout": "<quantity>.npz: scipy.sparse CSR, norb x (nR*norb), column block r (columns r*norb .. "
                  "(r+1)*norb-1) is O(R) with R = lattice_vectors[r]; both triangles stored, "
                  "O(-R) = O(R)^dagger",
        "orbital_order": "rows/columns: atoms in structure order, atom a's orbitals at "
                         "atom_orbital_offsets[a]:atom_orbital_offsets[a+1], in the order of "
                         "elements[symbol]: shells l-major then zeta, m = -l..l real spherical harmonics "
                         "without Condon-Shortley phase, p = (y, z, x), d = (xy, yz, z2, xz, x2-y2)",
        "elements": {sym: basis.orbital_labels(sym) for sym in dict.fromkeys(symbols)},
        "basis": {sym: basis[sym].string for sym in dict.fromkeys(symbols)},
        "atom_elements": symbols,
        "atom_orbital_offsets": first.atom_orbital_offsets.astype(int).tolist(),
        "structure_file": STRUCTURE_FILE,
        "cell": structure.cell.tolist(),
        "pbc": [bool(x) for x in structure.pbc],
    }
    from ase.io import write as ase_write

    with atomic_directory(out, overwrite, ExportError) as tmp:
        np.save(tmp / LATTICE_FILE, allR.astype(np.int64))
        for q, op in ops.items():  # one quantity in memory at a time
            Rs, lst = op.real_space_sparse()
            empty = sp.csr_matrix((n, n), dtype=lst[0].dtype)
            full = [empty] * len(allR)
            for R, m in zip(Rs.tolist(), lst):
                full[where[tuple(R)]] = m
            del lst
            M = sp.hstack(full, format="csr")
            del full
            sp.save_npz(tmp / f"{q}.npz", M, compressed=False)
            del M
        ase_write(tmp / STRUCTURE_FILE, structure.to_ase(), format="extxyz")
        # one top-level key per line (per-atom lists stay on one line each: readable for 1e5 atoms)
        (tmp / INFO_FILE).write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in info.items())
                                     + "\n}\n")
    return out


def _lattice_vectors(op: Operator) -> set[tuple[int, int, int]]:
    """The distinct R of ``op``'s bonds and their negatives, via a 1-D sort of integer keys."""
    R = np.asarray(op.R, dtype=np.int64).reshape(-1, 3)
    if not len(R):
        return set()
    lo = R.min(axis=0)
    span = R.max(axis=0) - lo + 1
    key = ((R[:, 0] - lo[0]) * span[1] + (R[:, 1] - lo[1])) * span[2] + (R[:, 2] - lo[2])
    u = np.unique(key)
    U = np.stack([u // (span[1] * span[2]) + lo[0], u // span[2] % span[1] + lo[1], u % span[2] + lo[2]], axis=1)
    return {tuple(r) for r in U.tolist()} | {tuple(r) for r in (-U).tolist()}


def load_npz_export(folder: str | Path) -> dict:
    """Read a folder written by ``export_operators(..., fmt="npz")``.

    Returns ``{"lattice_vectors": Rs (nR, 3) int64, <quantity>: [CSR norb x norb per R], ...,
    "info": export.json as a dict, "structure": Structure}`` with the conventions of the module
    docstring: ``O(k) = sum_r mats[r] * exp(-i 2 pi k.Rs[r])``. The per-R matrices are views of one
    buffer per quantity (O(nnz) to split, no per-R column slicing). Problems raise :class:`ExportError`."""
    folder = Path(folder)
    p = folder / INFO_FILE
    if not p.is_file():
        raise ExportError(f"{p}: missing; not an eqtb npz export folder")
    try:
        info = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{p}: cannot read: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != NPZ_FORMAT:
        raise ExportError(f"{p}: not an eqtb npz export description (format != {NPZ_FORMAT!r})")
    if info.get("format_version") != NPZ_FORMAT_VERSION:
        raise ExportError(f"{p}: format_version {info.get('format_version')!r}, this eqtb reads "
                          f"{NPZ_FORMAT_VERSION}")
    try:
        n = int(info["norb"])
        quantities = list(info["quantities"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{p}: missing or bad key {exc}") from None
    try:
        Rs = np.load(folder / LATTICE_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{folder / LATTICE_FILE}: cannot read: {exc}") from None
    if Rs.ndim != 2 or Rs.shape[1] != 3 or not np.issubdtype(Rs.dtype, np.integer):
        raise ExportError(f"{folder / LATTICE_FILE}: expected (nR, 3) integers, got {Rs.shape} {Rs.dtype}")
    nR = len(Rs)
    result: dict = {"lattice_vectors": Rs, "info": info}
    for q in quantities:
        f = folder / f"{q}.npz"
        try:
            M = sp.load_npz(f).tocsr()
        except (OSError, ValueError, KeyError) as exc:
            raise ExportError(f"{f}: cannot read: {exc}") from None
        if M.shape != (n, nR * n):
            raise ExportError(f"{f}: shape {M.shape}, expected (norb, nR * norb) = ({n}, {nR * n})")
        result[q] = _split_columns(M, n, nR)
    s = folder / info.get("structure_file", STRUCTURE_FILE)
    if s.is_file():
        result["structure"] = Structure.read(s)
    return result


def _split_columns(M: sp.csr_matrix, n: int, nR: int) -> list[sp.csr_matrix]:
    """[A_0 | A_1 | ...] (n x nR*n CSR) -> [A_0, A_1, ...], vectorised: restack vertically
    (row r*n + i, column c mod n) in one O(nnz) conversion, then take row ranges as views."""
    coo = M.tocoo()
    r, c = np.divmod(coo.col.astype(np.int64), n)
    V = sp.csr_matrix((coo.data, (r * n + coo.row, c)), shape=(nR * n, n))
    del coo, r, c
    V.sum_duplicates()
    ip = V.indptr
    out = []
    for k in range(nR):
        a, b = ip[k * n], ip[(k + 1) * n]
        out.append(sp.csr_matrix((V.data[a:b], V.indices[a:b], ip[k * n:(k + 1) * n + 1] - a), shape=(n, n)))
    return out

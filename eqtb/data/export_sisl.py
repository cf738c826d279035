"""H and S as a ``sisl.Hamiltonian`` (sisl / SIESTA / TBtrans), and the ``"sisl"`` export folder.

:func:`to_sisl` builds a :class:`sisl.Hamiltonian` (non-orthogonal with S, orthogonal without) on a
:class:`sisl.Geometry` holding the atoms, one :class:`sisl.Atom` per element (tag = the element
symbol) whose orbitals are :class:`sisl.AtomicOrbital` with eqtb's l, m and zeta, and a
:class:`sisl.Lattice` with the cell and ``nsc = 2 max|R_i| + 1`` supercells along each lattice vector
(the lattice vectors R present in H or S; 1 along non-periodic directions).

Conventions (checked by ``tests/test_export_tools.py`` against the installed sisl):

* Units: eV and Angstrom, as sisl's (the ``.TSHS`` file is in Ry and Bohr; sisl converts).
* Orbitals: sisl uses SIESTA's real spherical harmonics, m = -l..l in the same order as eqtb
  (p = y, z, x; d = xy, yz, z2, xz, x2-y2; f ...) but *with* the Condon-Shortley phase:
  ``Y_sisl(l, m) = (-1)^m Y_eqtb(l, m)`` for every l (the table ``"siesta"`` of
  :mod:`eqtb.data.conventions`). Rows and columns of odd-m orbitals change sign on export,
  so the orbital labels of the sisl objects are the true functions (projected DOS, TBtrans orbital
  projections, real-space plots all see the right orbitals).
* Matrix elements: sisl's ``H[io, jo + isc * no]`` is ``<io, 0| H |jo, R>`` with
  ``R = lattice.sc_off[isc]``, eqtb's ``O(R)[mu, nu]`` (no transposition).
* Bloch sum: sisl's ``Hk(k, gauge="lattice")`` is ``sum_R H(R) exp(+i 2 pi k.R)``, eqtb's is
  ``exp(-i 2 pi k.R)``: sisl at k equals eqtb at -k (the same matrix up to the orbital signs for
  ``gauge="lattice"``; ``gauge="atomic"`` adds the positions to the phase, a diagonal unitary). For
  real H(R) and S(R) (no spin-orbit coupling), H(-k) is the complex conjugate of H(k): the
  eigenvalues at k and -k are equal, so sisl's bands at k are eqtb's.

The ``"sisl"`` export folder (:func:`write_sisl`; read back with :func:`read_sisl_export`)::

    <out>/
      hamiltonian.TSHS   H (and S) in SIESTA's binary TSHS format (sisl's writer): the Hamiltonian
                         file TBtrans reads (fdf ``TBT.HS hamiltonian.TSHS``); orthogonal H is
                         written with S = identity, as TBtrans expects
      geometry.fdf       the geometry as SIESTA fdf blocks (LatticeVectors, species, coordinates)
      export.json        conventions, orbitals per element (n, l, m, zeta, radius), nsc, Fermi level

The TSHS format has no orbital quantum numbers and no Fermi level (sisl writes none); TBtrans
counts energies from the Hamiltonian's zero, so shift first if you want E_F = 0:
``H.shift(-E_F)`` on the object of :func:`read_sisl_export` then ``H.write("device.TSHS")``.
H is written absolute (the Fermi level is never subtracted, as every eqtb export).
The TSHS holds real matrices only: complex H(R) (not produced by eqtb's models) is refused there.

Orbital radii: the operator has no basis-function radii, so each element's orbitals get
``R = max(bond length of the bonds in H or S touching an atom of that element) / 2`` (plus 1e-3 Angstrom), which
makes every coupled pair lie within ``R_a + R_b`` as sisl assumes; 1 Angstrom for an element with
no bonds. sisl uses them for its own neighbour searches only; H and S are the operators' as given.

sisl is optional: ``pip install eqtb[export]`` (or ``pip install sisl``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from eqtb.data.atomic import atomic_directory
from eqtb.data.conventions import shell_transform
from eqtb.data.export import ExportError, check_operators, is_complex, padded_cell
from eqtb.data.folder import DatasetWarning
from eqtb.operator import Operator
from eqtb.structure import Structure

__all__ = ["to_sisl", "write_sisl", "read_sisl_export", "sisl_geometry", "SISL_FORMAT"]

SISL_FORMAT = "eqtb-sisl"
SISL_FORMAT_VERSION = 1
TSHS_FILE = "hamiltonian.TSHS"
FDF_FILE = "geometry.fdf"
INFO_FILE = "export.json"
INSTALL_HINT = "pip install eqtb[export] (or: pip install sisl)"


def _import_sisl():
    try:
        import sisl
    except ImportError as exc:
        raise ExportError(f"the sisl export needs the sisl package, which is not installed ({exc}); "
                          f"{INSTALL_HINT}") from None
    return sisl


def _orbital_radii(ops: list[Operator]) -> dict[int, float]:
    """Per atomic number: half the longest bond touching an atom of that element (+1e-3), else 1."""
    s = ops[0].structure
    out = {int(z): 0.0 for z in np.unique(s.numbers)}
    for op in ops:
        if not len(op.i):
            continue
        d = op.bond_lengths
        for atoms in (op.i, op.j):
            z = s.numbers[atoms]
            for zz in np.unique(z):
                out[int(zz)] = max(out[int(zz)], float(d[z == zz].max()))
    return {z: (r / 2 + 1e-3 if r > 0 else 1.0) for z, r in out.items()}


def _shell_quantum_numbers(ebasis) -> list[tuple[int, int, int]]:
    """(n, l, zeta) of each shell of an element's basis in eqtb's shell order: zeta is the shell's
    index among shells of equal l; n comes from list-basis labels such as ``"3s"`` when they carry
    one, else sisl's default l + 1 (eqtb's basis strings such as ``"2s2p1d"`` carry no n)."""
    labels = ebasis.labels
    out = []
    for k, shell in enumerate(ebasis.shells):
        digits = "".join(c for c in (labels[k] if labels is not None else "") if c.isdigit())
        out.append((int(digits) if digits else shell.l + 1, shell.l, shell.zeta))
    return out


def orbital_signs(structure: Structure, basis, code: str = "siesta") -> np.ndarray:
    """(norb,) +-1 per orbital of the compact layout: eqtb's orbital times this sign is the
    ``code``'s orbital (:func:`eqtb.data.conventions.shell_transform`, a diagonal for SIESTA/sisl)."""
    per_element = {}
    for e in basis.elements:
        d = []
        for l in e.shell_l:
            U = shell_transform(code, l)
            if not np.array_equal(np.abs(U), np.eye(2 * l + 1)):
                raise ExportError(f"the {code} orbital convention is not a sign change for l={l}")
            d.append(np.diag(U))
        per_element[e.Z] = np.concatenate(d) if d else np.zeros(0)
    return np.concatenate([per_element[int(z)] for z in structure.numbers])


def sisl_geometry(structure: Structure, basis, radii: dict[int, float] | None = None, nsc=(1, 1, 1)):
    """The :class:`sisl.Geometry` of ``structure`` with eqtb's orbitals (see the module docstring):
    one :class:`sisl.Atom` per element with :class:`sisl.AtomicOrbital` (n, l, m, zeta, radius R in
    Angstrom) in eqtb's orbital order, the cell (non-periodic directions filled by
    :func:`eqtb.data.export.padded_cell`) and ``nsc`` supercells."""
    sisl = _import_sisl()
    radii = radii or {}
    atoms = {}
    for z in dict.fromkeys(int(x) for x in structure.numbers):
        eb = basis[z]
        orbs = [sisl.AtomicOrbital(n=n, l=l, m=m, zeta=zeta, R=float(radii.get(z, 1.0)))
                for n, l, zeta in _shell_quantum_numbers(eb) for m in range(-l, l + 1)]
        atoms[z] = sisl.Atom(z, orbs, tag=eb.symbol)
    cell = padded_cell(structure)
    bc = [sisl.BoundaryCondition.PERIODIC if p else sisl.BoundaryCondition.UNKNOWN for p in structure.pbc]
    lattice = sisl.Lattice(cell, nsc=np.asarray(nsc, dtype=int), boundary_condition=bc)
    return sisl.Geometry(structure.positions.copy(), [atoms[int(z)] for z in structure.numbers], lattice=lattice)


def _supercell_csr(op: Operator, signs: np.ndarray, lattice) -> sp.csr_matrix:
    """O(R) of every R as one sisl CSR matrix (no, no * n_s): column jo + isc * no for R = sc_off[isc],
    rows and columns multiplied by sisl's orbital signs."""
    n = op.norb
    Rs, mats = op.real_space_sparse()
    isc = lattice.sc_index(Rs.astype(np.int32))
    rows, cols, vals = [], [], []
    for m, s_idx in zip(mats, np.atleast_1d(isc)):
        c = m.tocoo()
        rows.append(c.row)
        cols.append(c.col + int(s_idx) * n)
        vals.append(c.data * signs[c.row] * signs[c.col])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, n * lattice.n_s))


def to_sisl(hamiltonian: Operator, overlap: Operator | None = None):
    """``sisl.Hamiltonian`` of H (eV) and S (or orthogonal when ``overlap`` is None) on the geometry of
    :func:`sisl_geometry`, ``nsc`` covering every lattice vector R of H and S; conventions (orbital
    signs, k sign) in the module docstring. Operators without imaginary parts give a float64
    Hamiltonian, others complex128."""
    sisl = _import_sisl()
    ops = [hamiltonian] + ([overlap] if overlap is not None else [])
    structure = hamiltonian.structure
    check_operators(structure, {"hamiltonian": hamiltonian, **({"overlap": overlap} if overlap is not None else {})},
                    Path("<to_sisl>"))
    Rmax = np.zeros(3, dtype=np.int64)
    for op in ops:
        if len(op.R):
            Rmax = np.maximum(Rmax, np.abs(op.R).max(axis=0))
    geom = sisl_geometry(structure, hamiltonian.basis, _orbital_radii(ops), nsc=2 * Rmax + 1)
    signs = orbital_signs(structure, hamiltonian.basis)
    dtype = np.complex128 if any(is_complex(op) for op in ops) else np.float64

    def cast(M):
        return (M.real if dtype == np.float64 and np.iscomplexobj(M.data) else M).astype(dtype)

    Hc = cast(_supercell_csr(hamiltonian, signs, geom.lattice))
    if overlap is None:
        return sisl.Hamiltonian.fromsp(geom, Hc)
    return sisl.Hamiltonian.fromsp(geom, Hc, S=cast(_supercell_csr(overlap, signs, geom.lattice)))


def write_sisl(structure: Structure, ops: dict[str, Operator], out: Path, fermi_level: float | None,
               overwrite: bool) -> Path:
    """The ``"sisl"`` folder of the module docstring (called by
    :func:`eqtb.data.export.export_operators`; needs ``"hamiltonian"``, takes ``"overlap"``)."""
    from eqtb import __version__

    if "hamiltonian" not in ops:
        raise ExportError(f"{out}: the sisl format holds a Hamiltonian (and its overlap); no 'hamiltonian' given")
    if "density_matrix" in ops:
        warnings.warn(f"{out}: the sisl export writes H and S only; the density matrix is not written",
                      DatasetWarning, stacklevel=3)
    if any(is_complex(op) for q, op in ops.items() if q != "density_matrix"):
        raise ExportError(f"{out}: complex H(R) or S(R): the TSHS file holds real matrices only "
                          f"(to_sisl gives the sisl object)")
    H = to_sisl(ops["hamiltonian"], ops.get("overlap"))
    op = ops["hamiltonian"]
    info = {
        "format": SISL_FORMAT,
        "format_version": SISL_FORMAT_VERSION,
        "eqtb_version": __version__,
        "files": {"hamiltonian": TSHS_FILE, "geometry": FDF_FILE},
        "orthogonal": "overlap" not in ops,
        "units": {"energy": "eV in sisl (Ry inside the TSHS file)", "length": "Angstrom (Bohr inside the TSHS file)"},
        "fermi_level_eV": None if fermi_level is None else float(fermi_level),
        "fermi_level_note": "not subtracted from H; the TSHS file stores no Fermi level",
        "nsc": [int(x) for x in H.geometry.nsc],
        "norb": int(op.norb),
        "natoms": int(structure.natoms),
        "pbc": [bool(x) for x in structure.pbc],
        "atom_elements": structure.symbols,
        "orbitals": {str(atom.tag): [[int(o.n), int(o.l), int(o.m), int(o.zeta), float(o.R)] for o in atom.orbitals]
                     for atom in H.geometry.atoms.atom},
        "orbital_convention": "sisl/SIESTA real spherical harmonics (Condon-Shortley phase): "
                              "Y_sisl(l,m) = (-1)^m Y_eqtb(l,m); odd-m rows and columns negated on export",
        "bloch_sum": "sisl Hk(k, gauge='lattice') = sum_R H(R) exp(+i 2 pi k.R) = eqtb's H at -k",
        "read_back": "eqtb.data.export_sisl.read_sisl_export(folder) -> sisl.Hamiltonian with these orbitals",
    }
    with atomic_directory(out, overwrite, ExportError) as tmp:
        H.write(str(tmp / TSHS_FILE))
        H.geometry.write(str(tmp / FDF_FILE))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return out


def read_sisl_export(folder: str | Path):
    """``sisl.Hamiltonian`` of a ``"sisl"`` export folder, with the orbitals (n, l, m, zeta, R) and
    boundary conditions of ``export.json`` put back on the TSHS file's geometry (the TSHS file
    itself has no orbital quantum numbers)."""
    sisl = _import_sisl()
    folder = Path(folder)
    p = folder / INFO_FILE
    try:
        info = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{p}: cannot read: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != SISL_FORMAT:
        raise ExportError(f"{p}: not an eqtb sisl export description (format != {SISL_FORMAT!r})")
    tshs = sisl.io.siesta.tshsSileSiesta(str(folder / info["files"]["hamiltonian"]))
    g = tshs.read_geometry()
    atoms = {}
    for sym, orbs in info["orbitals"].items():
        atoms[sym] = sisl.Atom(sym, [sisl.AtomicOrbital(n=n, l=l, m=m, zeta=z, R=R) for n, l, m, z, R in orbs],
                               tag=sym)
    symbols = info["atom_elements"]
    bc = [sisl.BoundaryCondition.PERIODIC if p else sisl.BoundaryCondition.UNKNOWN for p in info["pbc"]]
    lattice = sisl.Lattice(g.cell, nsc=g.nsc, boundary_condition=bc)
    geom = sisl.Geometry(g.xyz, [atoms[s] for s in symbols], lattice=lattice)
    H = tshs.read_hamiltonian(geometry=geom)
    if info.get("orthogonal"):  # TSHS always holds S (identity for an orthogonal H): drop it
        H = sisl.Hamiltonian.fromsp(H.geometry, H.tocsr(0))
    return H

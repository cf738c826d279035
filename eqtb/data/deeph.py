"""DeepH-pack preprocessed folders (OpenMX convention), read and written (spec FORMATS.md 1.8, 2.5).

One folder holds one structure (no frames)::

    <folder>/
      element.dat          N lines, atomic number Z of every atom
      site_positions.dat   3 x N: column a is the Cartesian position (Angstrom) of atom a
      lat.dat              3 x 3: the COLUMNS are the lattice vectors a1, a2, a3 (Angstrom)
      rlat.dat             3 x 3: the columns are the reciprocal vectors b_i (a_i . b_j = 2 pi delta_ij,
                           1/Angstrom); written, never read
      R_list.dat           one lattice translation (Rx Ry Rz) per line; written, never read
      orbital_types.dat    one line per atom: the angular momentum l of each of its shells, in the
                           order of the atom's orbitals, e.g. ``0 0 1 1 2`` for s2p2d1
      info.json            ``{"isspinful": false, "fermi_level": <eV>}``
      hamiltonians.h5      H blocks, eV
      overlaps.h5          S blocks, dimensionless
      density_matrixs.h5   density-matrix blocks (DeepH's spelling; ``density_matrices.h5`` and
                           ``DM.h5`` are accepted when reading)

Block files have no groups: one 2-D dataset per block at the root, named ``str([Rx, Ry, Rz, i, j])``
as DeepH's Julia preprocessing prints an integer vector, e.g. ``"[0, 0, 0, 1, 1]"`` -- the lattice
translation R first, then the atoms i, j **1-based**. Seen from h5py (row-major) the dataset is
``block[mu, nu] = <phi_{i,mu}(r - r_i)| O |phi_{j,nu}(r - r_j - R.A)>`` with shape
``(norb_i, norb_j)``, rows the orbitals of atom i in OpenMX order. Both triangles are stored (the
OpenMX neighbour list holds every ordered pair), including every onsite block ``[0, 0, 0, a, a]``.
Units are eV and Angstrom already (DeepH-pack's preprocessing converts), so no unit conversion.

Orbital convention: inside a shell OpenMX orders p as (x, y, z) and d as (3z^2-r^2, x^2-y^2, xy, xz,
yz), with no sign changes against eqtb's m = -l..l order (p = y, z, x); the table lives in
:mod:`eqtb.data.conventions` (code ``"openmx"``) and is applied once here, in both directions.
Shells listed out of l order in ``orbital_types.dat`` (e.g. ``0 1 0``) are stably re-sorted to
eqtb's l-major layout when reading; writing always emits l-major order (as OpenMX does).

Not supported: spinful data (``"isspinful": true``, blocks of shape (2 norb_i, 2 norb_j)) -- eqtb's
operators are spinless; reading such a folder raises :class:`DeepHError`. Eigenvalues and k-points
have no place in the format and are not written.

Every problem with the input raises :class:`DeepHError` (a :class:`~eqtb.data.folder.DatasetError`
and a :class:`~eqtb.data.parsers.ParseError`) naming the file.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np

from eqtb.basis import ANGULAR_LETTERS, Basis, BasisError
from eqtb.data.conventions import atom_transform
from eqtb.data.folder import DatasetError, DatasetWarning, Frame
from eqtb.data.parsers import ParseError, Parser, register
from eqtb.data.atomic import atomic_directory
from eqtb.structure import Structure, StructureError
from eqtb.bonds import BlockError, parse_block_keys
from eqtb.operator import Operator

__all__ = ["DeepHError", "DeepHFolder", "read_deeph_folder", "write_deeph_folder", "DeepHParser",
           "DEEPH_BLOCK_FILES", "deeph_key", "parse_deeph_key"]

#: block file names per quantity, the first one is written, all are accepted when reading
DEEPH_BLOCK_FILES = {
    "hamiltonian": ("hamiltonians.h5",),
    "overlap": ("overlaps.h5",),
    "density_matrix": ("density_matrixs.h5", "density_matrices.h5", "DM.h5"),
}
#: what ``info.json`` gets as ``fermi_level`` when the Fermi level is unknown (eV)
UNKNOWN_FERMI_LEVEL = 0.0

_KEY = re.compile(r"^\s*\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]\s*$")


class DeepHError(DatasetError, ParseError):
    """A DeepH folder that cannot be read or written; the message names the file."""


def deeph_key(i: int, j: int, R) -> str:
    """DeepH dataset name of block (i, j, R) with 0-based atoms i, j: ``"[Rx, Ry, Rz, i+1, j+1]"``."""
    return f"[{int(R[0])}, {int(R[1])}, {int(R[2])}, {int(i) + 1}, {int(j) + 1}]"


def parse_deeph_key(key: str) -> tuple[int, int, int, int, int] | None:
    """``"[Rx, Ry, Rz, i, j]"`` -> ``(i - 1, j - 1, Rx, Ry, Rz)`` (0-based atoms); None if malformed."""
    m = _KEY.match(key)
    if m is None:
        return None
    Rx, Ry, Rz, i, j = (int(x) for x in m.groups())
    return i - 1, j - 1, Rx, Ry, Rz


# ====================================================================== orbital conventions


def _openmx_index(shell_l) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """For an atom whose shells (in file order) have angular momenta ``shell_l``: the eqtb shell list
    (stably sorted by l) and ``(index, sign)`` with ``eqtb[k] = sign[k] * file[index[k]]``.

    Built from :func:`eqtb.data.conventions.atom_transform` (the one OpenMX table) composed with the
    shell re-sorting; the result is a signed permutation, applied by indexing (exact in float)."""
    shell_l = tuple(int(l) for l in shell_l)
    U = atom_transform("openmx", shell_l)  # eqtb-ordered components of each file shell, file shell order
    offsets = np.concatenate([[0], np.cumsum([2 * l + 1 for l in shell_l])]).astype(int)
    order = sorted(range(len(shell_l)), key=lambda s: shell_l[s])  # stable
    rows = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in order]) if order else np.zeros(0, int)
    T = U[rows]  # eqtb orbital k <- file orbitals
    index = np.argmax(np.abs(T), axis=1)
    sign = T[np.arange(len(T)), index]
    if not (np.count_nonzero(T, axis=1) == 1).all() or not np.all(np.abs(sign) == 1):
        raise AssertionError("orbital transform is not a signed permutation")  # pragma: no cover
    return tuple(shell_l[s] for s in order), index, sign


def _basis_string(shell_l) -> str:
    counts: dict[int, int] = {}
    for l in shell_l:
        counts[l] = counts.get(l, 0) + 1
    return "".join(f"{n}{ANGULAR_LETTERS[l]}" for l, n in sorted(counts.items()))


# ====================================================================== reading


def _load_txt(path: Path, what: str, dtype=np.float64) -> np.ndarray:
    if not path.is_file():
        raise DeepHError(f"{path}: missing {what} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "empty input file" warning
            arr = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as exc:
        raise DeepHError(f"{path}: cannot read numbers: {exc}") from None
    if arr.size == 0:
        raise DeepHError(f"{path}: empty {what} file")
    if not np.isfinite(arr).all():
        raise DeepHError(f"{path}: contains NaN or infinity")
    return arr


def _read_h5_root(path: Path) -> dict[str, np.ndarray]:
    """Every dataset at the root of an HDF5 file as {name: array} (groups are an error)."""
    import h5py

    try:
        with h5py.File(path, "r") as h:
            gid = h.id
            out: dict[str, np.ndarray] = {}
            for raw in gid:  # low-level iteration, much faster than h.items() for many small datasets
                name = raw.decode()
                try:
                    ds = h5py.h5d.open(gid, raw)
                except Exception:
                    raise DeepHError(f"{path}: entry {name!r} is not a dataset (DeepH block files have "
                                     f"no groups; is this a DeePTB/dftio file with frame groups?)") from None
                arr = np.empty(ds.shape, dtype=ds.dtype)
                if arr.size:
                    ds.read(h5py.h5s.ALL, h5py.h5s.ALL, arr)
                out[name] = arr
            return out
    except DeepHError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError... for bad files
        raise DeepHError(f"{path}: cannot read HDF5 file: {type(exc).__name__}: {exc}") from None


class DeepHFolder:
    """One DeepH-pack preprocessed folder. Structure, basis and info are read on construction
    (small text files); block files when asked for (:meth:`operator`, :meth:`frame`).

    ``basis``: optional; when ``orbital_types.dat`` exists it must agree with it, when it does not
    the basis is taken from the argument (as DeePTB's DeePHDataset, which gets it from the config).
    Attributes: ``structure`` (periodic along all three lattice vectors, positions and cell in
    Angstrom), ``basis`` (one basis string per element, e.g. ``{"Si": "2s2p1d"}``),
    ``fermi_level`` (eV, None when info.json lacks it), ``shell_l`` (per element, file order)."""

    def __init__(self, path: str | Path, basis: Basis | dict | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DeepHError(f"{self.path}: DeepH folder does not exist")
        self._read_info()
        self.structure = self._read_structure()
        self.basis, self.shell_l = self._read_basis(basis)
        try:
            self._index = {sym: _openmx_index(ls) for sym, ls in self.shell_l.items()}
        except ValueError as exc:  # l beyond the OpenMX table (only possible with a basis argument)
            raise DeepHError(f"{self.path}: {exc}") from None

    def __repr__(self) -> str:
        return f"DeepHFolder({str(self.path)!r}, natoms={self.structure.natoms}, basis={self.basis!r})"

    # ------------------------------------------------------------------ small files
    def _read_info(self) -> None:
        p = self.path / "info.json"
        self.fermi_level: float | None = None
        self.info: dict = {}
        if not p.is_file():  # DeePTB's DeePHDataset does not need it either
            return
        try:
            info = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise DeepHError(f"{p}: cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise DeepHError(f"{p}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        if not isinstance(info, dict):
            raise DeepHError(f"{p}: expected a JSON object, got {type(info).__name__}")
        self.info = info
        if info.get("isspinful", False):
            raise DeepHError(f"{p}: isspinful is true; spinful DeepH data (blocks of shape "
                             f"(2 norb_i, 2 norb_j)) is not supported by eqtb")
        if info.get("fermi_level") is not None:
            try:
                self.fermi_level = float(info["fermi_level"])
            except (TypeError, ValueError):
                raise DeepHError(f"{p}: fermi_level must be a number, got {info['fermi_level']!r}") from None

    def _read_structure(self) -> Structure:
        e = self.path / "element.dat"
        z = _load_txt(e, "element (atomic numbers)").reshape(-1)
        if (z != np.round(z)).any() or (z < 1).any() or (z > 118).any():
            raise DeepHError(f"{e}: atomic numbers must be integers 1..118")
        z = z.astype(np.int64)
        N = len(z)
        p = self.path / "site_positions.dat"
        pos = _load_txt(p, "site positions")
        if pos.shape != (3, N):
            hint = " (it looks transposed: DeepH stores one COLUMN per atom)" if pos.shape == (N, 3) else ""
            raise DeepHError(f"{p}: shape {pos.shape}, expected (3, {N}): rows x, y, z and one column per "
                             f"atom of element.dat{hint}")
        c = self.path / "lat.dat"
        lat = _load_txt(c, "lattice")
        if lat.shape != (3, 3):
            raise DeepHError(f"{c}: shape {lat.shape}, expected (3, 3) with the lattice vectors as columns")
        try:
            s = Structure(z, pos.T, lat.T, np.ones(3, dtype=bool), source=str(self.path))
            s.check_distances()
        except (StructureError, BasisError) as exc:
            raise DeepHError(f"{p}: {exc}") from None
        return s

    def _read_basis(self, basis) -> tuple[Basis, dict[str, tuple[int, ...]]]:
        if basis is not None:
            try:
                basis = Basis(basis)
            except BasisError as exc:
                raise DeepHError(f"{self.path}: basis argument: {exc}") from None
        p = self.path / "orbital_types.dat"
        symbols = self.structure.symbols
        if not p.is_file():
            if basis is None:
                raise DeepHError(f"{p}: missing orbital types file (and no basis given)")
            try:
                basis.types_of(self.structure.numbers)
            except BasisError as exc:
                raise DeepHError(f"{self.path}: basis argument: {exc}") from None
            return basis, {sym: basis[sym].shell_l for sym in dict.fromkeys(symbols)}
        try:
            lines = [ln.split() for ln in p.read_text().splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DeepHError(f"{p}: cannot read: {exc}") from None
        while lines and not lines[-1]:
            lines.pop()
        if len(lines) != len(symbols):
            raise DeepHError(f"{p}: {len(lines)} lines but element.dat has {len(symbols)} atoms "
                             f"(one line of shell angular momenta per atom expected)")
        shell_l: dict[str, tuple[int, ...]] = {}
        first: dict[str, int] = {}
        for a, (sym, toks) in enumerate(zip(symbols, lines)):
            try:
                ls = tuple(int(t) for t in toks)
            except ValueError:
                raise DeepHError(f"{p}: line {a + 1}: expected integers (l of each shell), got "
                                 f"{' '.join(toks)!r}") from None
            if not ls or min(ls) < 0 or max(ls) > 3:
                raise DeepHError(f"{p}: line {a + 1}: shell angular momenta must be 0..3 (s, p, d, f; the "
                                 f"OpenMX table stops at f), got {' '.join(toks)!r}")
            if sym in shell_l and shell_l[sym] != ls:
                raise DeepHError(f"{p}: line {a + 1}: atom {a + 1} ({sym}) has orbital types {list(ls)} but "
                                 f"atom {first[sym] + 1} ({sym}, line {first[sym] + 1}) has "
                                 f"{list(shell_l[sym])}; eqtb needs one basis per element")
            shell_l.setdefault(sym, ls)
            first.setdefault(sym, a)
        try:
            found = Basis({sym: _basis_string(ls) for sym, ls in shell_l.items()})
        except BasisError as exc:
            raise DeepHError(f"{p}: {exc}") from None
        if basis is not None:
            try:
                mismatch = [s for s in shell_l if basis[s].shell_l != found[s].shell_l]
            except BasisError as exc:
                raise DeepHError(f"{self.path}: basis argument: {exc}") from None
            if mismatch:
                s = mismatch[0]
                raise DeepHError(f"{p}: {s} has basis {found[s].string!r} but the basis argument says "
                                 f"{basis[s].string!r}")
        return found, shell_l

    # ------------------------------------------------------------------ blocks
    def block_file(self, quantity: str) -> Path | None:
        """The block file of ``quantity`` ("hamiltonian", "overlap", "density_matrix") or None."""
        for name in DEEPH_BLOCK_FILES[quantity]:
            if (self.path / name).is_file():
                return self.path / name
        return None

    def operator(self, quantity: str) -> Operator | None:
        """The blocks of ``quantity`` converted to eqtb's orbital order (None when the file is absent).
        H in eV, S and the density matrix dimensionless."""
        path = self.block_file(quantity)
        if path is None:
            return None
        raw = _read_h5_root(path)
        if not raw:
            raise DeepHError(f"{path}: no blocks")
        s = self.structure
        N = s.natoms
        symbols = s.symbols
        norb = {sym: len(idx) for sym, (_, idx, _) in self._index.items()}
        blocks: dict[str, np.ndarray] = {}
        onsite = np.zeros(N, dtype=bool)
        for key, M in raw.items():
            parsed = parse_deeph_key(key)
            if parsed is None:
                raise DeepHError(f"{path}: malformed block name {key!r}; expected '[Rx, Ry, Rz, i, j]' with "
                                 f"1-based atoms, e.g. '[0, 0, 0, 1, 1]'")
            i, j, Rx, Ry, Rz = parsed
            if not (0 <= i < N and 0 <= j < N):
                raise DeepHError(f"{path}: block {key!r}: atom index out of range 1..{N} (element.dat)")
            si, sj = symbols[i], symbols[j]
            if M.shape != (norb[si], norb[sj]):
                spin = (" (twice the orbital count: spinful data? not supported)"
                        if M.shape == (2 * norb[si], 2 * norb[sj]) else "")
                raise DeepHError(
                    f"{path}: block {key!r} has shape {M.shape} but orbital_types.dat gives "
                    f"({norb[si]}, {norb[sj]}) for atoms {i + 1} ({si}) and {j + 1} ({sj}){spin}")
            if not np.issubdtype(M.dtype, np.number):
                raise DeepHError(f"{path}: block {key!r} has non-numeric dtype {M.dtype}")
            if not np.isfinite(M).all():
                raise DeepHError(f"{path}: block {key!r} contains NaN or infinity")
            _, ii, gi = self._index[si]
            _, ij, gj = self._index[sj]
            B = M[np.ix_(ii, ij)]
            if (gi < 0).any() or (gj < 0).any():  # never for OpenMX (no signs), kept for generality
                B = B * gi[:, None] * gj[None, :]
            k = f"{i}_{j}_{Rx}_{Ry}_{Rz}"
            if k in blocks:
                raise DeepHError(f"{path}: block {key!r} appears twice (differently spelled names)")
            blocks[k] = B
            if i == j and Rx == Ry == Rz == 0:
                onsite[i] = True
        if not onsite.all():
            missing = (np.where(~onsite)[0] + 1).tolist()
            raise DeepHError(f"{path}: onsite blocks '[0, 0, 0, a, a]' missing for atoms {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''} (1-based)")
        try:
            return Operator.from_blocks(s, self.basis, blocks)
        except (BlockError, BasisError) as exc:
            raise DeepHError(f"{path}: {exc}") from None

    def frame(self, hamiltonian: bool = True, overlap: bool = True, density_matrix: bool = True) -> Frame:
        """The folder as a :class:`~eqtb.data.folder.Frame` with the operators that exist and are asked
        for (``fermi_level`` is set too when the Frame class has such a field)."""
        fr = Frame(structure=self.structure, source=str(self.path))
        for q, want in (("hamiltonian", hamiltonian), ("overlap", overlap), ("density_matrix", density_matrix)):
            if want:
                setattr(fr, q, self.operator(q))
        if self.fermi_level is not None and "fermi_level" in {f.name for f in fields(Frame)}:
            fr.fermi_level = self.fermi_level
        return fr


def read_deeph_folder(path: str | Path, basis: Basis | dict | None = None, hamiltonian: bool = True,
                      overlap: bool = True, density_matrix: bool = True) -> Frame:
    """Read one DeepH-pack preprocessed folder as a :class:`~eqtb.data.folder.Frame`: structure
    (Angstrom, periodic), H (eV), S and density matrix in eqtb's orbital order, each when its file
    exists. The basis comes from ``orbital_types.dat`` + ``element.dat`` (``basis`` only needed when
    orbital_types.dat is absent). The Fermi level is :attr:`DeepHFolder.fermi_level`."""
    return DeepHFolder(path, basis).frame(hamiltonian, overlap, density_matrix)


# ====================================================================== writing


def _write_h5(path: Path, op: Operator, index: dict[str, np.ndarray]) -> list[tuple[int, int, int]]:
    """Write one operator in DeepH layout (root datasets, both triangles); returns the R vectors."""
    import h5py

    symbols = op.structure.symbols
    Rs: set[tuple[int, int, int]] = set()
    blocks = op.to_blocks(both_triangles=True)
    keys = parse_block_keys(list(blocks))
    with h5py.File(path, "w") as h:
        gid = h.id
        types, spaces = {}, {}
        for (i, j, Rx, Ry, Rz), B in zip(keys, blocks.values()):
            ii, gi = index[symbols[i]]
            ij, gj = index[symbols[j]]
            if (gi < 0).any() or (gj < 0).any():
                B = B * gi[:, None] * gj[None, :]
            M = np.empty_like(B)
            M[np.ix_(ii, ij)] = B  # inverse of eqtb[k] = file[index[k]]
            tid = types.get(M.dtype) or types.setdefault(M.dtype, h5py.h5t.py_create(M.dtype))
            sid = spaces.get(M.shape) or spaces.setdefault(M.shape, h5py.h5s.create_simple(M.shape))
            h5py.h5d.create(gid, deeph_key(i, j, (Rx, Ry, Rz)).encode(), tid, sid).write(
                h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(M))
            Rs.add((int(Rx), int(Ry), int(Rz)))
    return sorted(Rs)


def write_deeph_folder(frame: Frame, path: str | Path, fermi_level: float | None = None,
                       overwrite: bool = False) -> Path:
    """Write ``frame`` as a DeepH-pack preprocessed folder (the inverse of :func:`read_deeph_folder`).

    Files: element.dat, site_positions.dat (3 x N, Angstrom), lat.dat (lattice vectors as columns),
    rlat.dat (2 pi inv(cell): reciprocal vectors as columns), R_list.dat (every R of the blocks),
    orbital_types.dat (eqtb's l-major shell order), info.json and one block file per operator
    present (hamiltonians.h5 eV, overlaps.h5, density_matrixs.h5), blocks converted to the OpenMX
    orbital order, both triangles, 1-based names ``"[Rx, Ry, Rz, i, j]"``, float as the operator
    holds them (float64 after reading). Numbers are written with 19 significant digits, so a
    round trip is exact in float64.

    ``info.json`` is ``{"isspinful": false, "fermi_level": F}`` with F = ``fermi_level``, else the
    frame's ``fermi_level`` attribute if it has one, else 0.0 (:data:`UNKNOWN_FERMI_LEVEL`: DeepH
    requires the key; 0.0 means "unknown", not a measured value). Eigenvalues and k-points are not
    written (the format has no place for them). The structure must have a cell; DeepH folders are
    always periodic, so a frame periodic along fewer than three directions is written with a
    warning. Written into a temporary sibling folder renamed into place; an existing non-empty
    ``path`` is an error unless ``overwrite``."""
    path = Path(path)
    s = frame.structure
    ops = {q: getattr(frame, q) for q in DEEPH_BLOCK_FILES if getattr(frame, q) is not None}
    if abs(np.linalg.det(s.cell)) < 1e-6:
        raise DeepHError(f"{path}: the structure has no cell; DeepH folders need lat.dat (periodic cell)")
    if not s.pbc.all():
        warnings.warn(f"{path}: structure periodic along {s.pbc.tolist()} only; DeepH folders are periodic "
                      f"along all three lattice vectors (it will read back as fully periodic)",
                      DatasetWarning, stacklevel=2)
    basis = None
    for q, op in ops.items():
        if op.natoms != s.natoms or not np.array_equal(op.structure.numbers, s.numbers):
            raise DeepHError(f"{path}: the {q} operator belongs to a different structure")
        if basis is None:
            basis = op.basis
        elif op.basis != basis:
            raise DeepHError(f"{path}: the {q} operator has basis {op.basis!r}, another one {basis!r}")
    if basis is None:
        raise DeepHError(f"{path}: the frame has no operator (H, S or density matrix) to write")
    symbols = s.symbols
    try:
        shell_l = {sym: basis[sym].shell_l for sym in dict.fromkeys(symbols)}
    except BasisError as exc:
        raise DeepHError(f"{path}: {exc}") from None
    if max(max(ls) for ls in shell_l.values()) > 3:
        raise DeepHError(f"{path}: the OpenMX orbital table stops at f (l = 3); basis {basis!r}")
    index = {}
    for sym, ls in shell_l.items():
        eq_l, idx, sign = _openmx_index(ls)  # eqtb shells are l-major already: identity re-sorting
        assert eq_l == ls
        index[sym] = (idx, sign)
    if fermi_level is None:
        fermi_level = getattr(frame, "fermi_level", None)
    fermi_level = UNKNOWN_FERMI_LEVEL if fermi_level is None else float(fermi_level)

    with atomic_directory(path, overwrite, DeepHError) as tmp:
        np.savetxt(tmp / "element.dat", s.numbers, fmt="%d")
        np.savetxt(tmp / "site_positions.dat", s.positions.T, fmt="%.18e", delimiter="\t")
        np.savetxt(tmp / "lat.dat", s.cell.T, fmt="%.18e", delimiter="\t")
        np.savetxt(tmp / "rlat.dat", 2 * np.pi * np.linalg.inv(s.cell), fmt="%.18e", delimiter="\t")
        (tmp / "orbital_types.dat").write_text(
            "".join("\t".join(str(l) for l in shell_l[sym]) + "\n" for sym in symbols))
        (tmp / "info.json").write_text(json.dumps({"isspinful": False, "fermi_level": fermi_level}, indent=4) + "\n")
        Rs: set[tuple[int, int, int]] = set()
        for q, op in ops.items():
            Rs.update(_write_h5(tmp / DEEPH_BLOCK_FILES[q][0], op, index))
        np.savetxt(tmp / "R_list.dat", np.array(sorted(Rs), dtype=np.int64).reshape(-1, 3), fmt="%d",
                   delimiter="\t")
    return path


# ====================================================================== parser interface


@register
class DeepHParser(Parser):
    """``eqtb parse -m deeph``: one DeepH-pack preprocessed folder = one frame (see module doc)."""

    name = "deeph"

    def __init__(self, path: str | Path, basis: Basis | dict | None = None):
        super().__init__(path)
        self._folder = DeepHFolder(self.path, basis)

    @classmethod
    def detect(cls, path: str | Path) -> bool:
        p = Path(path)
        return all((p / n).is_file() for n in ("element.dat", "site_positions.dat", "lat.dat")) and any(
            (p / n).is_file() for names in DEEPH_BLOCK_FILES.values() for n in names)

    @property
    def basis(self) -> Basis:
        return self._folder.basis

    @property
    def nframes(self) -> int:
        return 1

    @property
    def fermi_level(self) -> float | None:
        """Fermi level in eV from info.json (None when absent)."""
        return self._folder.fermi_level

    def frame(self, k: int = 0, hamiltonian: bool = True, overlap: bool = True, density_matrix: bool = False,
              eigenvalues: bool = False) -> Frame:
        """The folder's single frame (k must be 0 or -1). Asking for an operator whose file is absent
        raises DeepHError naming it; ``eigenvalues`` is accepted and yields nothing (DeepH folders
        hold none)."""
        if k not in (0, -1):
            raise IndexError(f"{self.path}: frame {k} out of range for 1 frame")
        for q, want in (("hamiltonian", hamiltonian), ("overlap", overlap), ("density_matrix", density_matrix)):
            if want and self._folder.block_file(q) is None:
                raise DeepHError(f"{self.path / DEEPH_BLOCK_FILES[q][0]}: missing {q} file")
        return self._folder.frame(hamiltonian, overlap, density_matrix)

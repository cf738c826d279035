"""ABACUS (LCAO) output parser: one calculation folder -> one eqtb :class:`~eqtb.data.folder.Frame`.

A calculation folder holds ``INPUT``, ``STRU`` (and the ``.orb`` files it names, or an
``orbital_dir``) and the output folder ``OUT.<suffix>`` (``suffix`` from INPUT, default ``ABACUS``;
when that folder does not exist the only ``OUT.*`` folder is used). shared/spec/FORMATS.md 4.1-4.7.

What is read, and from where
----------------------------
* **Structure**: ``OUT.*/running_<calculation>.log`` when present (what ABACUS actually used: atom
  order, lattice constant, ``DIRECT``/``CARTESIAN COORDINATES``, lattice vectors); otherwise
  ``STRU``. The log prints the lattice with only ~6 significant digits, so when STRU is also present
  and agrees with the log to that precision, STRU's full-precision numbers are used; when they
  disagree the log wins and a :class:`ParseWarning` says so.
  STRU: ``LATTICE_CONSTANT`` in **Bohr**, ``LATTICE_VECTORS`` rows in units of it,
  ``ATOMIC_POSITIONS`` ``Direct`` (fractional), ``Cartesian`` (units of the lattice constant),
  ``Cartesian_angstrom``, ``Cartesian_bohr`` / ``Cartesian_au``, ``Cartesian_angstrom_center_xy``
  / ``_xz`` / ``_yz`` / ``_xyz`` (Angstrom, origin moved to the centre of the cell in those axes);
  comments after ``//`` or ``#``. Positions are not wrapped into the cell (ABACUS does not wrap
  them for a single-point run). Bohr -> Angstrom with 0.529177210903 (CODATA 2018, as DeePTB).
* **Basis**: the log's ``L=<l>, number of zeta = <n>`` lines per ``READING ATOM TYPE``; otherwise the
  headers of the ``.orb`` files named in STRU ``NUMERICAL_ORBITAL`` (``Number of Sorbital--> 2`` ...),
  looked up in INPUT ``orbital_dir``, the run folder, then by base name in the run folder. Shells are
  l-major then zeta (ABACUS order = eqtb order), so e.g. ``2s2p1d``.
* **Element of a species**: the leading chemical symbol of its label (``Fe1`` -> Fe, ``Si_a`` ->
  Si), else the ``Element`` line of its ``.orb`` file.
* **Matrices**: H(R), S(R), density matrix DM(R) from the legacy text CSR files
  ``data-HR-sparse_SPIN0.csr`` / ``data-SR-sparse_SPIN0.csr`` / ``data-DMR-sparse_SPIN0.csr``
  (header with or without the ``STEP:`` line, ``Matrix Dimension of H(R): n``, ``Matrix number of
  H(R): nR``, then per R ``Rx Ry Rz nnz`` and, when nnz > 0, the values, column indices and n + 1
  row pointers; reading stops at the first empty line), or the ABACUS >= 3.11 text CSR files
  ``hrs1_nao.csr`` / ``srs1_nao.csr`` / ``dmrs1_nao.csr`` (``--- Ionic Step`` header, ``# number of
  localized basis``, a unit-cell section, then the same R blocks with ``# CSR values`` /
  ``# CSR column indices`` / ``# CSR row pointers`` marker lines; layout taken from ABACUS's writer
  ``write_hcontainer_csr`` / ``UcellIO::write_ucell`` / ``Output_HContainer::write``; no real file
  of this kind was available, the test builds one from a legacy file). The CSR files may also be
  read from ``OUT.*/hscsr.tgz`` (not unpacked on disk). Only the first ionic step of a file is read.
  ``M(R)[mu, nu] = <phi_mu(r)| O |phi_nu(r - R.A)>``: R is the cell of the **column** orbital, as in
  eqtb block keys. Both triangles and all R are in the files; the parser keeps all of them
  (:meth:`AbacusParser.blocks`), and :class:`~eqtb.operator.Operator` averages each pair
  ``(i, j, R)`` / ``(j, i, -R)``; the largest difference is recorded in
  :attr:`AbacusParser.hermiticity`.
* **Units**: H is Rydberg in the files and is multiplied by :data:`RY_TO_EV` = 13.605698 (the factor
  hard-coded in dftio and DeePTB's ABACUS parsers; CODATA would be 13.605693123); S and DM are
  dimensionless. Everything returned is eV / Angstrom.
* **Orbital order and sign**: converted once per block with :func:`eqtb.data.conventions.atom_transform`
  (ABACUS m order 0, +1, -1, +2, -2, ... with a (-1)^m phase -> eqtb m = -l..l without phase),
  block ``U_i M U_j^T``, vectorised over all blocks of one element pair.
* **Eigenvalues** (eV, absolute, not shifted): ``OUT.*/BANDS_1.dat`` (one row per k: index,
  k-path coordinate, then the bands; the first two columns are dropped), else ``OUT.*/istate.info``.
  **k-points** (fractional, reciprocal-lattice coordinates): ``OUT.*/kpoints``, the first table after
  ``nkstot now = <nk>``, whose header is either the old `` KPOINTS DIRECT_X ...`` or the v3.3
  ``KPT DirectX ...``.
* **Fermi level** (eV): the last ``EFERMI = <E> eV`` line of the log, as :attr:`AbacusParser.fermi_level`
  (None when there is no log or no such line). :class:`~eqtb.data.folder.Frame` has no field for it;
  :func:`eqtb.data.parse.parse_folders` writes it to ``fermi_level.json``.

Not supported (a :class:`~eqtb.data.parsers.ParseError` says so instead of misreading): ``nspin`` 2
and 4 (spin-polarised / non-collinear or spin-orbit: two spin channels or complex ``(re,im)``
values), multi-step runs (``calculation`` md / relax / cell-relax), ``LATTICE_PARAMETERS``/latname
cells, basis counts above 9 per l, two species of one element with different bases.
"""

from __future__ import annotations

import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from eqtb.basis import Basis, BasisError, element_symbol
from eqtb.data.conventions import atom_transform
from eqtb.data.folder import Frame
from eqtb.data.parsers import ParseError, Parser, register
from eqtb.structure import Structure, StructureError
from eqtb.bonds import BlockError
from eqtb.operator import Operator

__all__ = ["AbacusParser", "ParseWarning", "CSRMatrices", "read_csr", "read_stru", "read_input",
           "hermiticity_residual", "RY_TO_EV", "BOHR_TO_ANGSTROM"]

#: Rydberg -> eV, the value hard-coded in dftio / DeePTB's ABACUS parsers (FORMATS.md Appendix A)
RY_TO_EV = 13.605698
#: Bohr -> Angstrom (CODATA 2018, DeePTB's constant)
BOHR_TO_ANGSTROM = 0.529177210903

#: matrix file names per quantity: (legacy name, ABACUS >= 3.11 name)
MATRIX_FILES = {
    "hamiltonian": ("data-HR-sparse_SPIN0.csr", "hrs1_nao.csr"),
    "overlap": ("data-SR-sparse_SPIN0.csr", "srs1_nao.csr"),
    "density_matrix": ("data-DMR-sparse_SPIN0.csr", "dmrs1_nao.csr"),
}
_WHAT = {"hamiltonian": "H(R) (INPUT out_mat_hs2 1)", "overlap": "S(R) (INPUT out_mat_hs2 1)",
         "density_matrix": "DM(R) (INPUT out_dm1 1)"}
_SINGLE_POINT = {"scf", "nscf", "get_s", "get_S"}
_ORB_LETTERS = "SPDFGH"


class ParseWarning(UserWarning):
    """Something accepted but worth knowing (STRU and log disagree, OUT.* folder guessed, ...)."""


# ====================================================================== small text helpers


def _strip_comment(line: str) -> str:
    """Drop ABACUS comments: anything after ``//`` or ``#``."""
    for mark in ("//", "#"):
        k = line.find(mark)
        if k >= 0:
            line = line[:k]
    return line.strip()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        raise ParseError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise ParseError(f"{path}: cannot read: {exc}") from None


def read_input(path: str | Path) -> dict[str, str]:
    """ABACUS ``INPUT``: ``{key (lower case): value string}`` (first token after the key; comments
    ``#``/``//`` and the ``INPUT_PARAMETERS`` line ignored)."""
    path = Path(path)
    out: dict[str, str] = {}
    for line in _read_text(path).splitlines():
        parts = _strip_comment(line).split()
        if len(parts) >= 2 and parts[0] != "INPUT_PARAMETERS":
            out[parts[0].lower()] = parts[1]
    return out


def _species_element(label: str) -> str | None:
    """Chemical symbol at the start of a species label (``Fe1`` -> Fe, ``Si_a`` -> Si), or None."""
    m = re.match(r"([A-Z][a-z]?)", label.strip())
    if not m:
        return None
    for cand in (m.group(1), m.group(1)[0]):
        try:
            return element_symbol(cand)
        except BasisError:
            continue
    return None


# ====================================================================== STRU


@dataclass
class StruData:
    """Content of a STRU file: species labels, their .orb files, lattice constant (Bohr), lattice
    vectors (rows, units of the lattice constant), per-atom species label, Cartesian positions (Angstrom)."""

    labels: list[str]
    orbital_files: list[str]
    lat0_bohr: float
    vectors: np.ndarray
    atom_labels: list[str]
    positions: np.ndarray

    @property
    def cell(self) -> np.ndarray:
        """Lattice vectors as rows, Angstrom."""
        return self.vectors * self.lat0_bohr * BOHR_TO_ANGSTROM


_STRU_SECTIONS = {"ATOMIC_SPECIES", "NUMERICAL_ORBITAL", "LATTICE_CONSTANT", "LATTICE_VECTORS",
                  "LATTICE_PARAMETERS", "ATOMIC_POSITIONS", "NUMERICAL_DESCRIPTOR", "ABFS_ORBITAL",
                  "PAW_FILES", "MAGNETIC_MOMENTS"}


def read_stru(path: str | Path) -> StruData:
    """Parse an ABACUS STRU file (see module docstring). Raises ParseError naming the file."""
    path = Path(path)
    sections: dict[str, list[str]] = {}
    current = None
    for raw in _read_text(path).splitlines():
        line = _strip_comment(raw)
        if not line:
            continue
        first = line.split()[0]
        if first in _STRU_SECTIONS:
            current = first
            sections[current] = []
            rest = line[len(first):].strip()
            if rest:
                sections[current].append(rest)
        elif current is not None:
            sections[current].append(line)

    def need(name: str) -> list[str]:
        if name not in sections or not sections[name]:
            raise ParseError(f"{path}: no {name} section")
        return sections[name]

    try:
        labels = [ln.split()[0] for ln in need("ATOMIC_SPECIES")]
        orbital_files = [ln.split()[0] for ln in sections.get("NUMERICAL_ORBITAL", [])]
        lat0 = float(need("LATTICE_CONSTANT")[0].split()[0])
    except (ValueError, IndexError) as exc:
        raise ParseError(f"{path}: malformed ATOMIC_SPECIES / LATTICE_CONSTANT: {exc}") from None
    if "LATTICE_VECTORS" not in sections:
        if "LATTICE_PARAMETERS" in sections:
            raise ParseError(f"{path}: LATTICE_PARAMETERS (latname cells) are not supported yet; "
                             f"give LATTICE_VECTORS")
        raise ParseError(f"{path}: no LATTICE_VECTORS section")
    try:
        vec = np.array([[float(x) for x in ln.split()[:3]] for ln in sections["LATTICE_VECTORS"][:3]])
    except ValueError as exc:
        raise ParseError(f"{path}: malformed LATTICE_VECTORS: {exc}") from None
    if vec.shape != (3, 3):
        raise ParseError(f"{path}: LATTICE_VECTORS needs 3 rows of 3 numbers")

    lines = need("ATOMIC_POSITIONS")
    ctype = lines[0].split()[0]
    atom_labels: list[str] = []
    coords: list[list[float]] = []
    k = 1
    try:
        while k < len(lines):
            label = lines[k].split()[0]
            if label not in labels:
                raise ParseError(f"{path}: ATOMIC_POSITIONS: species {label!r} is not in ATOMIC_SPECIES {labels}")
            # label, magnetism, number of atoms, then one line per atom
            count = int(lines[k + 2].split()[0])
            for a in range(count):
                coords.append([float(x) for x in lines[k + 3 + a].split()[:3]])
                atom_labels.append(label)
            k += 3 + count
    except (IndexError, ValueError) as exc:
        raise ParseError(f"{path}: ATOMIC_POSITIONS ended early or is malformed near species "
                         f"block {len(set(atom_labels)) + 1}: {exc}") from None
    if not coords:
        raise ParseError(f"{path}: no atoms in ATOMIC_POSITIONS")
    c = np.array(coords, dtype=np.float64)
    cell_bohr = vec * lat0
    low = ctype.lower()
    if low == "direct":
        pos = c @ cell_bohr * BOHR_TO_ANGSTROM
    elif low == "cartesian":
        pos = c * lat0 * BOHR_TO_ANGSTROM
    elif low in ("cartesian_bohr", "cartesian_au"):
        pos = c * BOHR_TO_ANGSTROM
    elif low == "cartesian_angstrom":
        pos = c
    elif low.startswith("cartesian_angstrom_center_"):
        axes = low[len("cartesian_angstrom_center_"):]
        if not axes or set(axes) - set("xyz"):
            raise ParseError(f"{path}: unknown coordinate type {ctype!r}")
        centre = 0.5 * cell_bohr.sum(axis=0) * BOHR_TO_ANGSTROM
        mask = np.array([a in axes for a in "xyz"])
        pos = c + np.where(mask, centre, 0.0)
    else:
        raise ParseError(f"{path}: unknown or unsupported coordinate type {ctype!r} in ATOMIC_POSITIONS "
                         f"(Direct, Cartesian, Cartesian_angstrom, Cartesian_bohr, Cartesian_au, "
                         f"Cartesian_angstrom_center_xy/xz/yz/xyz are read)")
    return StruData(labels, orbital_files, lat0, vec, atom_labels, pos)


def read_orb_header(path: Path) -> tuple[str | None, dict[int, int]]:
    """(element, {l: number of zeta}) from the header of an ABACUS ``.orb`` file."""
    element, counts = None, {}
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("SUMMARY") or line.strip().startswith("Mesh"):
                break
            m = re.match(r"\s*Number of ([SPDFGH])orbital\s*-->\s*(\d+)", line)
            if m:
                counts[_ORB_LETTERS.index(m.group(1))] = int(m.group(2))
                continue
            m = re.match(r"\s*Element\s+(\S+)", line)
            if m:
                element = m.group(1)
    if not counts:
        raise ParseError(f"{path}: no 'Number of Xorbital--> n' lines in the header of this .orb file")
    return element, counts


def _basis_string(counts: dict[int, int], where: str) -> str:
    parts = []
    for l in sorted(counts):
        n = counts[l]
        if n == 0:
            continue
        if n > 9:
            raise ParseError(f"{where}: {n} radial functions with l={l}; basis strings hold at most 9 per l")
        parts.append(f"{n}{'spdfgh'[l]}")
    if not parts:
        raise ParseError(f"{where}: no orbitals")
    return "".join(parts)


# ====================================================================== running_*.log


@dataclass
class LogData:
    """What the parser takes from ``running_<calculation>.log``."""

    labels: list[str]
    zeta: list[dict[int, int]]
    lat0_angstrom: float | None
    vectors: np.ndarray | None
    coord_type: str | None
    atom_labels: list[str]
    coords: np.ndarray | None
    nspin: int | None
    fermi_level: float | None

    def structure_arrays(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """(cell rows Angstrom, Cartesian positions Angstrom), or None when the log lacks them."""
        if self.lat0_angstrom is None or self.vectors is None or self.coords is None:
            return None
        cell = self.vectors * self.lat0_angstrom
        if self.coord_type == "direct":
            pos = self.coords @ cell
        else:
            pos = self.coords * self.lat0_angstrom
        return cell, pos


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def read_log(path: Path) -> LogData:
    """Parse the lines of a running_*.log that describe the cell, species, basis, spin and Fermi level
    (first occurrence of each, except EFERMI: last)."""
    text = _read_text(path)
    lines = text.splitlines()
    labels: list[str] = []
    zeta: list[dict[int, int]] = []
    lat0 = vectors = coords = coord_type = None
    atom_labels: list[str] = []
    nspin = None
    k = 0
    n = len(lines)
    natoms = None
    while k < n:
        line = lines[k]
        s = line.strip()
        if s.startswith("READING ATOM TYPE") and len(labels) == int(s.split()[-1]) - 1:
            lab = None
            counts: dict[int, int] = {}
            j = k + 1
            while j < n and j < k + 40:
                t = lines[j].strip()
                m = re.match(r"atom label\s*=\s*(\S+)", t)
                if m:
                    lab = m.group(1)
                m = re.match(r"L\s*=\s*(\d+)\s*,\s*number of zeta\s*=\s*(\d+)", t)
                if m:
                    counts[int(m.group(1))] = int(m.group(2))
                elif counts and "number of zeta" not in t:
                    break
                j += 1
            if lab is not None:
                labels.append(lab)
                zeta.append(counts)
            k = j
            continue
        if lat0 is None:
            m = re.search(r"lattice constant \(Angstrom\)\s*=\s*(" + _FLOAT + ")", s)
            if m:
                lat0 = float(m.group(1))
        if natoms is None:
            m = re.search(r"TOTAL ATOM NUMBER\s*=\s*(\d+)", s)
            if m:
                natoms = int(m.group(1))
        if coords is None and natoms and ("DIRECT COORDINATES" in s or "CARTESIAN COORDINATES" in s):
            coord_type = "direct" if "DIRECT" in s else "cartesian"
            rows, labs = [], []
            j = k + 1
            while j < n and len(rows) < natoms:
                parts = lines[j].split()
                if parts and parts[0].startswith("tau"):
                    labs.append(re.sub(r"\d+$", "", parts[0].split("_", 1)[1]))
                    rows.append([float(x) for x in parts[1:4]])
                j += 1
            if len(rows) == natoms:
                coords = np.array(rows)
                atom_labels = labs
            k = j
            continue
        if vectors is None and s.startswith("Lattice vectors:"):
            try:
                vectors = np.array([[float(x) for x in lines[k + a].split()[:3]] for a in (1, 2, 3)])
            except (ValueError, IndexError):
                vectors = None
        if nspin is None:
            m = re.match(r"nspin\s*=\s*(\d+)", s)
            if m:
                nspin = int(m.group(1))
        k += 1
    fermi = None
    found = re.findall(r"EFERMI\s*=\s*(" + _FLOAT + r")\s*eV", text)
    if found:
        fermi = float(found[-1])
    return LogData(labels, zeta, lat0, vectors, coord_type, atom_labels, coords, nspin, fermi)


# ====================================================================== CSR files


@dataclass
class CSRMatrices:
    """All R blocks of one CSR file as triplets: ``R`` (nR, 3) integer cells; for every stored
    non-zero: ``r_index`` (which R), ``rows``, ``cols`` (0-based orbital indices, ``dim`` x ``dim``
    matrix), ``values`` (as in the file: H in Rydberg)."""

    path: str
    dim: int
    R: np.ndarray
    r_index: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray

    def dense(self, R) -> np.ndarray:
        """The full ``dim x dim`` matrix at cell R (zeros when R is absent)."""
        out = np.zeros((self.dim, self.dim))
        hit = np.where((self.R == np.asarray(R)).all(axis=1))[0]
        if len(hit):
            sel = self.r_index == hit[0]
            out[self.rows[sel], self.cols[sel]] = self.values[sel]
        return out


#: marker codes of the ABACUS >= 3.11 layout ("# CSR values" etc.)
_MARKS = {"values": 1, "column indices": 2, "row pointers": 3}
_MARK_LINE = re.compile(r"^[ \t]*#[ \t]*CSR[ \t]+(values|column indices|row pointers)[ \t]*$", re.M)
_COMMENT_LINE = re.compile(r"^[ \t]*#.*$", re.M)


def _csr_text(path: Path, archive: Path | None = None) -> str:
    if archive is None:
        return _read_text(path)
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if Path(member.name).name == path.name and member.isfile():
                    return tar.extractfile(member).read().decode(errors="replace")
    except (tarfile.TarError, OSError) as exc:
        raise ParseError(f"{archive}: cannot read archive: {exc}") from None
    raise ParseError(f"{archive}: no member {path.name}")


def read_csr(path: str | Path, archive: str | Path | None = None) -> CSRMatrices:
    """Read one ABACUS text CSR matrix file (legacy ``data-*-sparse_SPIN0.csr`` or ``*_nao.csr``,
    see module docstring) into triplets. The body is tokenised once and converted to float64 by
    numpy in one call; only the R blocks are visited in Python. ``archive``: read ``path``'s name
    from this tarball.

    Raises ParseError naming the file for: an unknown header, complex values (nspin=4), a file that
    ends before its last R block (with the block and line where it ended), inconsistent row pointers,
    column indices outside the matrix, or data after the last block."""
    path = Path(path)
    where = f"{archive}:{path.name}" if archive else str(path)
    text = _csr_text(path, Path(archive) if archive else None)
    lines = text.split("\n")
    head = [(i, ln.strip()) for i, ln in enumerate(lines[:40]) if ln.strip()]
    if not head:
        raise ParseError(f"{where}: empty CSR file")
    if re.search(r"\(\s*" + _FLOAT + r"\s*,", text[:200000]):
        raise ParseError(f"{where}: complex (re,im) values: nspin=4 (non-collinear / spin-orbit) "
                         f"matrices are not supported yet")
    first = head[0][1]
    if first.startswith("STEP:") or first.startswith("Matrix Dimension"):
        dim, nR, line0 = _legacy_header(head, where)
        body_lines = lines[line0:]
        # stop at the first empty line (as dftio) or at the next step's header
        for k, ln in enumerate(body_lines):
            s = ln.strip()
            if not s or s.startswith("STEP:") or s.startswith("Matrix"):
                body_lines = body_lines[:k]
                break
        body = "\n".join(body_lines)
        toks = body.split()
        marks = np.zeros(len(toks), dtype=np.int8)
    elif first.startswith("---") and "Ionic Step" in first:
        dim, nR, line0 = _nao_header(lines, where)
        body_lines = lines[line0:]
        for k, ln in enumerate(body_lines):
            if "Ionic Step" in ln:  # appended later steps: only the first one is read
                body_lines = body_lines[:k]
                break
        body = "\n".join(body_lines)
        # split at the marker lines; other comment lines are dropped; each marker becomes one
        # placeholder token whose position is remembered
        pieces = _MARK_LINE.split(body)
        toks, pos_marks, codes = [], [], []
        for n, piece in enumerate(pieces):
            if n % 2:
                pos_marks.append(len(toks))
                codes.append(_MARKS[piece])
                toks.append("nan")
            else:
                toks.extend(_COMMENT_LINE.sub("", piece).split())
        marks = np.zeros(len(toks), dtype=np.int8)
        marks[pos_marks] = codes
    else:
        raise ParseError(f"{where}: unknown CSR header {first[:60]!r}; expected 'STEP: n', "
                         f"'Matrix Dimension of X(R): n' or ' --- Ionic Step 1 ---'")
    try:
        nums = np.array(toks, dtype=np.float64)
    except ValueError:
        k = next(k for k, t in enumerate(toks) if not _is_number(t))
        raise ParseError(f"{where}: non-numeric token {toks[k]!r} in the matrix data "
                         f"(line {_line_of(body_lines, line0, k)})") from None
    return _parse_csr_body(nums, marks, body_lines, line0, dim, nR, where)


def _legacy_header(head, where):
    dim = nR = None
    last = 0
    for i, s in head[:3]:
        m = re.match(r"Matrix Dimension of .*?:\s*(\d+)", s)
        if m:
            dim, last = int(m.group(1)), i
        m = re.match(r"Matrix number of .*?:\s*(\d+)", s)
        if m:
            nR, last = int(m.group(1)), i
    if dim is None or nR is None:
        raise ParseError(f"{where}: header lacks 'Matrix Dimension of ...' / 'Matrix number of ...'")
    return dim, nR, last + 1


def _nao_header(lines, where):
    dim = nR = None
    for ln in lines[:12]:
        m = re.match(r"\s*(\d+)\s*#\s*number of (spin directions|localized basis|Bravais lattice vector R)", ln)
        if not m:
            continue
        val, what = int(m.group(1)), m.group(2)
        if what == "spin directions" and val != 1:
            raise ParseError(f"{where}: {val} spin directions (nspin=2): spin-polarised matrices are not supported yet")
        if what == "localized basis":
            dim = val
        elif what.startswith("Bravais"):
            nR = val
    if dim is None or nR is None:
        raise ParseError(f"{where}: header lacks '# number of localized basis' / "
                         f"'# number of Bravais lattice vector R'")
    # the R blocks start after the '#---' comment box that follows the unit-cell section
    box = [i for i, ln in enumerate(lines[:200]) if ln.strip().startswith("#---")]
    if len(box) < 2:
        raise ParseError(f"{where}: no '#---' CSR comment box after the unit-cell section")
    return dim, nR, box[1] + 1


def _parse_csr_body(nums: np.ndarray, marks: np.ndarray, body_lines: list[str], line0: int, dim: int, nR: int,
                    where: str) -> CSRMatrices:
    ntok = len(nums)

    def end_error(b: int, R, need: str, pos: int) -> ParseError:
        at = f" (R = {' '.join(str(int(x)) for x in R)})" if R is not None else ""
        return ParseError(f"{where}: truncated: the file ends inside R block {b + 1} of {nR}{at}: {need}; "
                          f"the data end at line {_line_of(body_lines, line0, max(min(pos, ntok) - 1, 0))}")

    Rs, parts = [], []
    pos = 0
    for b in range(nR):
        if pos + 4 > ntok or marks[pos:pos + 4].any():
            raise end_error(b, None, "expected the block header 'Rx Ry Rz nnz'", pos)
        head = nums[pos:pos + 4]
        if not (head == np.round(head)).all() or head[3] < 0:
            raise ParseError(f"{where}: R block {b + 1} of {nR}: malformed header {head.tolist()} "
                             f"(line {_line_of(body_lines, line0, pos)})")
        R, nnz = head[:3].astype(np.int64), int(head[3])
        pos += 4
        Rs.append(R)
        marked = pos < ntok and marks[pos] == _MARKS["values"]
        if nnz == 0 and not marked:
            continue
        segs = []
        for label, size in (("values", nnz), ("column indices", nnz), ("row pointers", dim + 1)):
            if marked:
                if pos >= ntok or marks[pos] != _MARKS[label]:
                    raise end_error(b, R, f"expected '# CSR {label}'", pos)
                pos += 1
            seg = nums[pos:pos + size]
            bad = marks[pos:pos + size].nonzero()[0]
            got = int(bad[0]) if len(bad) else len(seg)
            if got < size:
                raise end_error(b, R, f"expected {size} {label}, found {got}", pos + got)
            segs.append(seg)
            pos += size
        vals, cols, ptr = segs
        if nnz == 0:
            if ptr.any():
                raise ParseError(f"{where}: R block {b + 1} of {nR} (R = {' '.join(map(str, R))}) has nnz 0 "
                                 f"but non-zero row pointers")
            continue
        ptr = ptr.astype(np.int64)
        if ptr[0] != 0 or ptr[-1] != nnz or (np.diff(ptr) < 0).any():
            raise ParseError(f"{where}: R block {b + 1} of {nR} (R = {' '.join(map(str, R))}): row pointers "
                             f"are not a valid CSR index (first {ptr[0]}, last {ptr[-1]}, nnz {nnz})")
        cols = cols.astype(np.int64)
        if cols.min() < 0 or cols.max() >= dim:
            raise ParseError(f"{where}: R block {b + 1} of {nR} (R = {' '.join(map(str, R))}): column index "
                             f"{int(cols.max() if cols.max() >= dim else cols.min())} outside 0..{dim - 1}")
        parts.append((len(Rs) - 1, np.repeat(np.arange(dim), np.diff(ptr)), cols, vals))
    if pos < ntok:
        raise ParseError(f"{where}: {ntok - pos} unexpected numbers after the last of the {nR} R blocks "
                         f"(from line {_line_of(body_lines, line0, pos)}); the header's block count is wrong")
    R = np.array(Rs, dtype=np.int64).reshape(-1, 3)
    if parts:
        r_index = np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        cols = np.concatenate([p[2] for p in parts])
        vals = np.concatenate([p[3] for p in parts])
    else:
        r_index = rows = cols = np.zeros(0, dtype=np.int64)
        vals = np.zeros(0)
    if not np.isfinite(vals).all():
        raise ParseError(f"{where}: NaN or infinity among the matrix values")
    return CSRMatrices(where, dim, R, r_index, rows, cols, vals)


def _is_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _line_of(body_lines: list[str], line0: int, token: int) -> int:
    """1-based file line holding token number ``token`` of the body (error messages only; a
    ``# CSR ...`` marker line counts as one token, other comment lines as none)."""
    def count(ln: str) -> int:
        s = ln.strip()
        if s.startswith("#"):
            return 1 if _MARK_LINE.match(ln) else 0
        return len(s.split())

    counts = np.cumsum([count(ln) for ln in body_lines]) if body_lines else np.zeros(1, int)
    k = int(np.searchsorted(counts, token, side="right"))
    return line0 + min(k, max(len(body_lines) - 1, 0)) + 1


# ====================================================================== blocks


def hermiticity_residual(blocks: dict[str, np.ndarray]) -> float:
    """Largest ``|B_ij(R) - B_ji(-R)^dagger|`` over all block pairs of a both-triangle block dict
    (a block whose partner is absent counts with its own largest |value|)."""
    worst = 0.0
    for key, blk in blocks.items():
        i, j, x, y, z = key.split("_")
        other = blocks.get(f"{j}_{i}_{-int(x)}_{-int(y)}_{-int(z)}")
        diff = np.abs(blk).max() if other is None else np.abs(blk - np.conj(other.T)).max()
        worst = max(worst, float(diff))
    return worst


def csr_to_blocks(csr: CSRMatrices, structure: Structure, basis: Basis, code: str = "abacus",
                  scale: float = 1.0) -> dict[str, np.ndarray]:
    """Cut the triplets of a CSR file into atom-pair blocks ``{"i_j_Rx_Ry_Rz": (norb_i, norb_j)}``
    (0-based, R = cell of atom j), convert each from ``code``'s orbital convention to eqtb's with
    :func:`eqtb.data.conventions.atom_transform` (``U_i M U_j^T``, one batched product per element
    pair) and multiply by ``scale``. Every block holding at least one stored entry is kept."""
    N = structure.natoms
    types = basis.types_of(structure.numbers)
    norb_t = np.array([e.norb for e in basis.elements])
    norb = norb_t[types]
    offs = np.concatenate([[0], np.cumsum(norb)])
    if csr.dim != offs[-1]:
        raise ParseError(f"{csr.path}: matrix dimension {csr.dim} but the basis {basis!r} gives "
                         f"{int(offs[-1])} orbitals for the {N} atoms")
    atom_of = np.repeat(np.arange(N), norb)
    ai, aj = atom_of[csr.rows], atom_of[csr.cols]
    li, lj = csr.rows - offs[ai], csr.cols - offs[aj]
    key = (csr.r_index * N + ai) * N + aj
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    nmax = int(norb_t.max())
    raw = np.zeros((len(uniq), nmax, nmax))
    raw[inv, li, lj] = csr.values
    b_r, rest = np.divmod(uniq, N * N)
    b_i, b_j = np.divmod(rest, N)
    U = [atom_transform(code, e.shell_l) for e in basis.elements]
    tp = types[b_i] * basis.n_types + types[b_j]
    out_blocks: list[np.ndarray | None] = [None] * len(uniq)
    for pair in np.unique(tp):
        sel = np.where(tp == pair)[0]
        ta, tb = divmod(int(pair), basis.n_types)
        na, nb = norb_t[ta], norb_t[tb]
        conv = U[ta] @ raw[sel, :na, :nb] @ U[tb].T
        if scale != 1.0:
            conv *= scale
        for s, blk in zip(sel, conv):
            out_blocks[s] = blk
    Rb = csr.R[b_r]
    return {f"{i}_{j}_{R[0]}_{R[1]}_{R[2]}": blk
            for i, j, R, blk in zip(b_i.tolist(), b_j.tolist(), Rb.tolist(), out_blocks)}


# ====================================================================== eigenvalues


def read_kpoints(path: Path) -> np.ndarray:
    """(nk, 3) fractional k-points of ``OUT.*/kpoints`` (first table after ``nkstot now = nk``)."""
    lines = _read_text(path).splitlines()
    for k, ln in enumerate(lines):
        m = re.search(r"nkstot now\s*=\s*(\d+)", ln)
        if m:
            nk = int(m.group(1))
            break
    else:
        raise ParseError(f"{path}: no 'nkstot now = <nk>' line")
    j = k + 1
    while j < len(lines) and not lines[j].strip():
        j += 1
    header = lines[j].split() if j < len(lines) else []
    if not header or header[0] not in ("KPOINTS", "KPT"):
        raise ParseError(f"{path}: expected a ' KPOINTS DIRECT_X ...' or 'KPT DirectX ...' header after "
                         f"'nkstot now', got {' '.join(header)[:60]!r}")
    rows = lines[j + 1:j + 1 + nk]
    try:
        data = np.array([[float(x) for x in r.split()[1:4]] for r in rows])
    except ValueError as exc:
        raise ParseError(f"{path}: malformed k-point row: {exc}") from None
    if data.shape != (nk, 3):
        raise ParseError(f"{path}: 'nkstot now = {nk}' but only {len(rows)} k-point rows follow")
    return data


def read_bands(path: Path) -> np.ndarray:
    """(nk, nb) eigenvalues in eV of ``BANDS_1.dat`` (first two columns dropped)."""
    try:
        data = np.loadtxt(path, ndmin=2)
    except (ValueError, OSError) as exc:
        raise ParseError(f"{path}: cannot read numbers: {exc}") from None
    if data.shape[1] < 3:
        raise ParseError(f"{path}: expected 'k_index k_coordinate E_1 ... E_nb' rows, got {data.shape[1]} columns")
    return data[:, 2:]


def read_istate(path: Path) -> np.ndarray:
    """(nk, nb) eigenvalues in eV of ``istate.info`` (``BAND Energy(ev) Occupation Kpoint = k`` blocks)."""
    text = _read_text(path)
    blocks = re.split(r"^\s*BAND\b.*$", text, flags=re.M)[1:]
    if not blocks:
        raise ParseError(f"{path}: no 'BAND  Energy(ev) ...' blocks")
    out = []
    for b in blocks:
        try:
            rows = np.array([[float(x) for x in ln.split()[:2]] for ln in b.strip().splitlines() if ln.strip()])
        except ValueError as exc:
            raise ParseError(f"{path}: malformed band row: {exc}") from None
        out.append(rows[:, 1])
    if len({len(o) for o in out}) != 1:
        raise ParseError(f"{path}: k-points have different band counts")
    return np.array(out)


# ====================================================================== the parser


@register
class AbacusParser(Parser):
    """One ABACUS LCAO single-point calculation folder (see the module docstring for what is read
    and the unit/orbital conventions). One frame. Attributes after construction:

    ``out_dir`` (the OUT.* folder), ``input`` (INPUT keys), ``structure`` (eqtb Structure, Angstrom),
    ``basis`` (eqtb Basis), ``structure_source`` / ``basis_source`` (file names), ``fermi_level``
    (eV or None), ``hermiticity`` ({quantity: largest |B_ij(R) - B_ji(-R)^T|} of the blocks read so
    far, eV for H)."""

    name: ClassVar[str] = "abacus"
    #: parse_folders hands this parser directories only
    input_kind: ClassVar[str] = "folder"

    def __init__(self, path: str | Path):
        super().__init__(path)
        if not self.path.is_dir():
            raise ParseError(f"{self.path}: not a folder (an ABACUS calculation folder is expected)")
        self.input: dict[str, str] = {}
        inp = self.path / "INPUT"
        if inp.is_file():
            self.input = read_input(inp)
        self.out_dir = self._find_out_dir()
        if not self.input and (self.out_dir / "INPUT").is_file():
            self.input = read_input(self.out_dir / "INPUT")
        calc = self.input.get("calculation", "scf")
        if calc not in _SINGLE_POINT:
            raise ParseError(f"{inp if inp.is_file() else self.out_dir / 'INPUT'}: calculation {calc!r}: only "
                             f"single-point runs (scf, nscf, get_S) are supported yet, not md/relax trajectories")
        self.log_path = self._find_log(calc)
        self._log = read_log(self.log_path) if self.log_path is not None else None
        self._check_spin()
        self._stru = None
        stru = self.path / self.input.get("stru_file", "STRU")
        if stru.is_file():
            self._stru = read_stru(stru)
        elif self._log is None:
            raise ParseError(f"{stru}: missing, and no running_*.log in {self.out_dir} to take the structure from")
        self.stru_path = stru
        self.structure, self.structure_source, species_elements = self._build_structure()
        self._basis, self.basis_source = self._build_basis(species_elements)
        self.fermi_level: float | None = self._log.fermi_level if self._log else None
        self.hermiticity: dict[str, float] = {}
        self._blocks: dict[str, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ discovery
    @classmethod
    def detect(cls, path: str | Path) -> bool:
        path = Path(path)
        return path.is_dir() and ((path / "STRU").is_file() or (path / "INPUT").is_file()) and any(
            p.is_dir() for p in path.glob("OUT.*"))

    def _find_out_dir(self) -> Path:
        suffix = self.input.get("suffix", "ABACUS")
        named = self.path / f"OUT.{suffix}"
        if named.is_dir():
            return named
        outs = sorted(p for p in self.path.glob("OUT.*") if p.is_dir())
        if len(outs) == 1:
            return outs[0]
        if not outs:
            raise ParseError(f"{named}: missing (no OUT.* output folder in {self.path})")
        raise ParseError(f"{named}: missing, and {len(outs)} other OUT.* folders exist "
                         f"({', '.join(p.name for p in outs)}); cannot tell which belongs to this run")

    def _find_log(self, calc: str) -> Path | None:
        for name in (f"running_{calc}.log", f"running_{calc.lower()}.log"):
            if (self.out_dir / name).is_file():
                return self.out_dir / name
        logs = sorted(self.out_dir.glob("running_*.log"))
        return logs[0] if logs else None

    def _check_spin(self) -> None:
        nspin = int(self.input.get("nspin", "1")) if self.input.get("nspin", "1").isdigit() else 1
        src = "INPUT"
        if self._log is not None and self._log.nspin is not None:
            nspin, src = self._log.nspin, self.log_path.name
        soc = any(self.input.get(k, "0").lower() in ("1", "true", "t") for k in ("lspinorb", "noncolin"))
        if nspin == 4 or soc:
            raise ParseError(f"{self.path}: nspin=4 (non-collinear / spin-orbit, from {src}) is not supported "
                             f"yet: its matrices are complex 2x2 spinor blocks")
        if nspin == 2:
            raise ParseError(f"{self.path}: nspin=2 (spin-polarised, from {src}) is not supported yet: "
                             f"it has separate spin-up and spin-down H(R) and bands")
        if nspin != 1:
            raise ParseError(f"{self.path}: nspin={nspin} (from {src}) is not understood")

    # ------------------------------------------------------------------ structure and basis
    def _build_structure(self) -> tuple[Structure, str, dict[str, str]]:
        log, stru = self._log, self._stru
        src_lab = stru.labels if stru is not None else log.labels
        orb_elem: dict[str, str] = {}
        elements: dict[str, str] = {}
        for t, lab in enumerate(src_lab):
            el = _species_element(lab)
            if el is None and stru is not None and t < len(stru.orbital_files):
                path = self._orb_path(stru.orbital_files[t])
                if path is not None:
                    e, _ = read_orb_header(path)
                    el = _species_element(e or "")
                    orb_elem[lab] = e
            if el is None:
                raise ParseError(f"{self.stru_path if stru else self.log_path}: cannot tell the element of "
                                 f"species {lab!r} (label is not a chemical symbol, no .orb 'Element' line)")
            elements[lab] = el
        arrays = log.structure_arrays(self.log_path) if log is not None else None
        if arrays is not None:
            cell, pos = arrays
            labs = log.atom_labels
            source, src_path = self.log_path.name, self.log_path
            if stru is not None:
                if labs == stru.atom_labels and np.allclose(stru.cell, cell, rtol=1e-5, atol=1e-5) and \
                        np.allclose(stru.positions, pos, rtol=0, atol=1e-4):
                    cell, pos, src_path = stru.cell, stru.positions, self.stru_path
                    source = f"{self.stru_path.name} (checked against {self.log_path.name})"
                else:
                    warnings.warn(f"{self.stru_path}: differs from {self.log_path} (species order, cell or "
                                  f"positions); using the log, which is what ABACUS ran", ParseWarning, stacklevel=3)
        elif stru is not None:
            cell, pos, labs = stru.cell, stru.positions, stru.atom_labels
            source, src_path = self.stru_path.name, self.stru_path
        else:
            raise ParseError(f"{self.log_path}: no lattice vectors / coordinates found, and no STRU")
        missing = [l for l in labs if l not in elements]
        if missing:
            raise ParseError(f"{src_path}: atom species {missing[0]!r} not among the species {list(elements)}")
        symbols = [elements[l] for l in labs]
        try:
            from ase.data import atomic_numbers

            s = Structure([atomic_numbers[x] for x in symbols], pos, cell, True, source=str(self.path))
            s.check_distances()
        except (StructureError, BasisError) as exc:
            raise ParseError(f"{src_path}: {exc}") from None
        return s, source, elements

    def _orb_path(self, name: str) -> Path | None:
        cands = []
        odir = self.input.get("orbital_dir")
        if odir:
            cands.append(self.path / odir / name)
        cands += [self.path / name, self.path / Path(name).name]
        for c in cands:
            if c.is_file():
                return c
        return None

    def _build_basis(self, elements: dict[str, str]) -> tuple[Basis, str]:
        per_label: dict[str, dict[int, int]] = {}
        log = self._log
        if log is not None and log.labels and all(log.zeta):
            per_label = dict(zip(log.labels, log.zeta))
            source = self.log_path.name
        else:
            stru = self._stru
            if stru is None or not stru.orbital_files:
                raise ParseError(f"{self.stru_path}: no NUMERICAL_ORBITAL section and no running_*.log "
                                 f"with 'L=..., number of zeta = ...' lines: the basis is unknown")
            if len(stru.orbital_files) < len(stru.labels):
                raise ParseError(f"{self.stru_path}: NUMERICAL_ORBITAL names {len(stru.orbital_files)} files "
                                 f"for {len(stru.labels)} species")
            files = []
            for lab, name in zip(stru.labels, stru.orbital_files):
                p = self._orb_path(name)
                if p is None:
                    odir = self.input.get("orbital_dir")
                    tried = ([str(self.path / odir / name)] if odir else []) + [str(self.path / name)]
                    raise ParseError(f"{self.path / name}: orbital file named in {self.stru_path.name} "
                                     f"NUMERICAL_ORBITAL not found (tried {', '.join(tried)})")
                per_label[lab] = read_orb_header(p)[1]
                files.append(p.name)
            source = ", ".join(files)
        spec: dict[str, str] = {}
        used = {lab for lab in (self._stru.atom_labels if self._stru else log.atom_labels)}
        for lab, counts in per_label.items():
            if lab not in elements or lab not in used:
                continue
            s = _basis_string(counts, f"{source} (species {lab})")
            el = elements[lab]
            if el in spec and spec[el] != s:
                raise ParseError(f"{source}: two species of element {el} with different bases "
                                 f"({spec[el]} and {s}) are not supported")
            spec[el] = s
        missing = sorted({el for lab, el in elements.items() if lab in used} - set(spec))
        if missing:
            raise ParseError(f"{source}: no basis for elements {missing}")
        return Basis(spec), source

    @property
    def basis(self) -> Basis:
        return self._basis

    @property
    def nframes(self) -> int:
        return 1

    # ------------------------------------------------------------------ matrices
    def matrix_file(self, quantity: str) -> tuple[Path, Path | None]:
        """(file, archive or None) holding ``quantity`` (legacy name, then ``*_nao.csr``, then inside
        ``hscsr.tgz``); ParseError naming the expected file when none exists."""
        if quantity not in MATRIX_FILES:
            raise ValueError(f"unknown quantity {quantity!r}; known: {sorted(MATRIX_FILES)}")
        for name in MATRIX_FILES[quantity]:
            if (self.out_dir / name).is_file():
                return self.out_dir / name, None
        tgz = self.out_dir / "hscsr.tgz"
        if tgz.is_file():
            try:
                with tarfile.open(tgz) as tar:
                    names = {Path(m.name).name for m in tar.getmembers()}
            except (tarfile.TarError, OSError) as exc:
                raise ParseError(f"{tgz}: cannot read archive: {exc}") from None
            for name in MATRIX_FILES[quantity]:
                if name in names:
                    return self.out_dir / name, tgz
        legacy, new = MATRIX_FILES[quantity]
        raise ParseError(f"{self.out_dir / legacy}: missing (nor {new}); the run did not write "
                         f"{_WHAT[quantity]}")

    def blocks(self, quantity: str) -> dict[str, np.ndarray]:
        """All blocks of ``quantity`` as stored by ABACUS (both triangles, every R with a stored
        entry), converted to eqtb orbital order/sign, H in eV: ``{"i_j_Rx_Ry_Rz": array}``."""
        if quantity not in self._blocks:
            path, archive = self.matrix_file(quantity)
            csr = read_csr(path, archive)
            where = f"{archive}:{path.name}" if archive else str(path)
            n_basis = int(self.basis.norb_of(self.structure.numbers).sum())
            if csr.dim != n_basis:
                raise ParseError(f"{where}: has dimension {csr.dim}, but the basis in {self.basis_source} "
                                 f"({', '.join(f'{k}: {v}' for k, v in self.basis.spec.items())}) gives {n_basis} "
                                 f"orbitals for the {self.structure.natoms} atoms of {self.structure_source}")
            scale = RY_TO_EV if quantity == "hamiltonian" else 1.0
            blk = csr_to_blocks(csr, self.structure, self.basis, "abacus", scale)
            self.hermiticity[quantity] = hermiticity_residual(blk)
            scale_max = max((float(np.abs(b).max()) for b in blk.values()), default=0.0)
            if self.hermiticity[quantity] > 1e-6 * max(scale_max, 1e-300):
                warnings.warn(f"{where}: blocks are not Hermitian: max |B_ij(R) - B_ji(-R)^T| = "
                              f"{self.hermiticity[quantity]:.3g} (largest |B| {scale_max:.3g}); the "
                              f"Operator keeps the average of each pair", ParseWarning, stacklevel=2)
            self._blocks[quantity] = blk
        return self._blocks[quantity]

    def operator(self, quantity: str) -> Operator:
        """``quantity`` as an eqtb Operator (each ``(i,j,R)``/``(j,i,-R)`` pair averaged)."""
        blocks = self.blocks(quantity)
        path, archive = self.matrix_file(quantity)
        try:
            return Operator.from_blocks(self.structure, self.basis, blocks, source=str(path))
        except BlockError as exc:
            raise ParseError(f"{archive or path}: {exc}") from None

    # ------------------------------------------------------------------ bands
    def kpoints(self) -> np.ndarray:
        """(nk, 3) fractional k-points of ``OUT.*/kpoints``."""
        p = self.out_dir / "kpoints"
        if not p.is_file():
            raise ParseError(f"{p}: missing (k-points of the eigenvalues)")
        return read_kpoints(p)

    def eigenvalues(self) -> np.ndarray:
        """(nk, nb) eigenvalues in eV from ``BANDS_1.dat``, else ``istate.info``; nk checked
        against ``kpoints``."""
        bands, istate = self.out_dir / "BANDS_1.dat", self.out_dir / "istate.info"
        if bands.is_file():
            ev, src = read_bands(bands), bands
        elif istate.is_file():
            ev, src = read_istate(istate), istate
        else:
            raise ParseError(f"{bands}: missing (nor {istate.name}); the run did not write eigenvalues "
                             f"(INPUT out_band 1)")
        nk = len(self.kpoints())
        if ev.shape[0] != nk:
            raise ParseError(f"{src}: {ev.shape[0]} k-points but {self.out_dir / 'kpoints'} lists {nk}")
        return ev

    # ------------------------------------------------------------------ frames
    def frame(self, k: int = 0, hamiltonian: bool = True, overlap: bool = True, density_matrix: bool = False,
              eigenvalues: bool = False) -> Frame:
        """The single frame: structure, the asked-for operators (H eV, S, DM), and with
        ``eigenvalues`` the (nk, nb) eigenvalues (eV) and their (nk, 3) fractional k-points."""
        if k not in (0, -1):
            raise IndexError(f"{self.path}: frame {k} out of range for 1 frame")
        fr = Frame(structure=self.structure, source=str(self.path))
        for q, want in (("hamiltonian", hamiltonian), ("overlap", overlap), ("density_matrix", density_matrix)):
            if want:
                setattr(fr, q, self.operator(q))
        if eigenvalues:
            fr.eigenvalues = self.eigenvalues()
            fr.kpoints = self.kpoints()
        return fr

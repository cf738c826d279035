"""DFTB Slater-Koster files (``.skf``): the integral tables of DFTB+ parameter sets, read into
eqtb's units (Angstrom, eV) at the boundary.

**Format** (the "v1.0" format of dftb.org's ``slakoformat.pdf``, read as DFTB+ reads it,
``dftbp/type/oldskdata.F90``). Numbers are Fortran list-directed input: separated by blanks or
commas, ``n*x`` stands for n copies of x, a record that needs more numbers than its line holds
continues on the next lines, and whatever follows the numbers a record needs is ignored. Atomic
units: Bohr and Hartree.

* Simple format (s, p, d). Line 1: ``gridDist nGridPoints`` (a third number, the number of shells
  some files carry, is ignored). Homonuclear files (``A-A.skf``) then hold line 2 ``Ed Ep Es SPE Ud
  Up Us fd fp fs`` (onsite energies, a spin-polarisation energy DFTB+ ignores, Hubbard U and
  occupations of the free atom, d first) and line 3 ``mass c2..c9 rcut d1..d10`` (mass in amu and
  a polynomial repulsive); heteronuclear files only the polynomial line (its mass is a dummy). Then
  ``nGridPoints - 1`` rows of 20 numbers, ``Hdd0 Hdd1 Hdd2 Hpd0 Hpd1 Hpp0 Hpp1 Hsd0 Hsp0 Hss0``
  and the same ten for S; row k (1-based) is the distance ``k * gridDist``. (DFTB+ reads
  ``nGridPoints - 1`` rows, and so does DeePTB; the first rows of most files are placeholders.)
* Extended format (s, p, d, f): the first line starts with ``@``; then as above with four shells
  (``Ef Ed Ep Es SPE Uf Ud Up Us ff fd fp fs``) and rows of 40 numbers, the 20 integrals of
  :data:`INTEGRALS` for H, then for S.
* What follows the table (the spline repulsive, ``<Documentation>``) is not read: eqtb does not
  compute total energies.

:class:`SKTable` holds every table in the extended order :data:`INTEGRALS` (``"ff0"`` ...
``"ss0"``), a simple-format file leaving the f columns zero.

**Convention.** In ``A-B.skf`` an integral ``X l1 l2 m`` (l1 <= l2) couples shell l1 of the
*first* atom A to shell l2 of the second atom B, in the frame where B lies at +z from A, between
real orbitals of the same m: ``Hsp0 = <s_A|H|p_z,B>``, ``Hpp1 = <p_x,A|H|p_x,B>``, ... A pair with
the larger l on A comes from ``B-A.skf``: ``<l1_A|H|l2_B>_m = (-1)^(l1 + l2) X_{l2 l1 m}`` of
``B-A.skf`` (DFTB+, ``dftbp/dftb/sk.F90`` and the parser's ``getFullTable``).

Conversion factors are DeePTB's (its ``dptb/nn/dftb/sk_param.py``), so that a ``dftbsk`` model
gives DeePTB's numbers: :data:`BOHR_ANGSTROM`, :data:`HARTREE_EV`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BOHR_ANGSTROM", "HARTREE_EV", "INTEGRALS", "SHELL_LETTERS", "SKFError", "SKTable", "read_skdata",
           "read_skf", "skdata_cutoffs", "write_skf"]

#: Bohr -> Angstrom, DeePTB's dftbsk factor
BOHR_ANGSTROM = 0.529177249
#: Hartree -> eV, DeePTB's dftbsk factor (2 x 13.605662285137)
HARTREE_EV = 27.211324570274
SHELL_LETTERS = "spdf"
#: the integrals of a table, in the order of the extended format: (l1, l2, m) with l1 <= l2, m <= l1
INTEGRALS = ("ff0", "ff1", "ff2", "ff3", "df0", "df1", "df2", "dd0", "dd1", "dd2", "pf0", "pf1", "pd0", "pd1",
             "pp0", "pp1", "sf0", "sd0", "sp0", "ss0")
#: where the ten columns of a simple-format row go among :data:`INTEGRALS`
_SIMPLE_COLUMNS = [INTEGRALS.index(n) for n in ("dd0", "dd1", "dd2", "pd0", "pd1", "pp0", "pp1", "sd0", "sp0", "ss0")]


class SKFError(ValueError):
    """A Slater-Koster file that is missing, truncated or not in the format; the message names the file."""


@dataclass(frozen=True)
class SKTable:
    """The integral tables of one ``A-B.skf`` file, in Angstrom and eV.

    ``spacing``: grid spacing (Angstrom); ``n_points``: the file's ``nGridPoints`` -- the tables hold
    ``n_points - 1`` rows, row k at distance ``(k + 1) * spacing`` (:attr:`distances`);
    ``hamiltonian``, ``overlap``: (n_points - 1, 20) integrals in the order :data:`INTEGRALS`
    (H in eV, S dimensionless); ``max_l``: 2 (simple format) or 3 (extended). Homonuclear files
    also give, per l = 0 .. max_l (s first), the free atom's ``onsite`` energies (eV),
    ``hubbard_u`` (eV) and ``occupations`` (electrons), and its ``mass`` (amu); None for
    heteronuclear files. ``source``: the file (for messages)."""

    source: str
    spacing: float
    n_points: int
    hamiltonian: np.ndarray
    overlap: np.ndarray
    max_l: int
    onsite: np.ndarray | None = None
    hubbard_u: np.ndarray | None = None
    occupations: np.ndarray | None = None
    mass: float | None = None

    @property
    def distances(self) -> np.ndarray:
        """(n_points - 1,) distances (Angstrom) of the rows."""
        return self.spacing * np.arange(1, self.n_points)

    @property
    def cutoff(self) -> float:
        """The last tabulated distance (Angstrom): the integrals are zero beyond it."""
        return self.spacing * (self.n_points - 1)

    def integral(self, l1: int, l2: int, m: int, overlap: bool = False) -> np.ndarray:
        """(n_points - 1,) column of integral ``(l1, l2, m)`` (l1 <= l2, m <= l1) of H (eV) or S."""
        if not 0 <= m <= l1 <= l2 <= self.max_l:
            raise ValueError(f"{self.source}: no integral (l1={l1}, l2={l2}, m={m}) in a table up to l={self.max_l} "
                             "(need m <= l1 <= l2)")
        column = INTEGRALS.index(f"{SHELL_LETTERS[l1]}{SHELL_LETTERS[l2]}{m}")
        return (self.overlap if overlap else self.hamiltonian)[:, column]


# ===================================================================== reading
class _Records:
    """Fortran list-directed records of a text file, one :meth:`read` per record."""

    def __init__(self, path: Path, lines: list[str]):
        self.path, self.lines, self.line = path, lines, 0

    def read(self, n: int, what: str) -> list[float]:
        """The first ``n`` numbers of the record starting at the next line (continued on the
        following lines when that line holds fewer); the rest of its last line is skipped."""
        values: list[float] = []
        first = self.line + 1
        while len(values) < n:
            if self.line >= len(self.lines):
                raise SKFError(f"{self.path}: file ends early: {what} (from line {first}) needs {n} numbers, "
                               f"found {len(values)}")
            text = self.lines[self.line]
            self.line += 1
            for token in re.split(r"[\s,]+", text.strip()):
                if not token:
                    continue
                count, star, value = token.rpartition("*") if "*" in token else ("1", "", token)
                try:
                    number = float(value.replace("d", "e").replace("D", "e"))
                    repeat = int(count) if star else 1
                except ValueError:
                    raise SKFError(f"{self.path}, line {self.line}: {token!r} is not a number ({what})") from None
                values.extend([number] * repeat)
                if len(values) >= n:
                    break
        return values[:n]


def _homonuclear_from_name(path: Path) -> bool:
    parts = path.stem.split("-")
    if len(parts) != 2 or not all(parts):
        raise SKFError(f"{path}: cannot tell from the name whether the file is homonuclear (expected "
                       "'A-B.skf'); pass homonuclear=")
    return parts[0] == parts[1]


def read_skf(path: str | Path, homonuclear: bool | None = None) -> SKTable:
    """The tables of a Slater-Koster file (module docstring), in Angstrom and eV. ``homonuclear``:
    whether the file has the onsite-energy line (None: from the name, ``A-A.skf``). Raises
    :class:`SKFError` naming the file when it is missing, truncated or malformed."""
    path = Path(path)
    if homonuclear is None:
        homonuclear = _homonuclear_from_name(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise SKFError(f"{path}: cannot read the Slater-Koster file ({err.strerror or err})") from None
    extended = bool(lines) and lines[0].startswith("@")
    records = _Records(path, lines[1:] if extended else lines)
    max_l = 3 if extended else 2
    n_shells = max_l + 1
    spacing, n_points = records.read(2, "the grid line (gridDist nGridPoints)")
    if spacing <= 0 or n_points != int(n_points) or n_points < 3:
        raise SKFError(f"{path}: bad grid line: gridDist {spacing} (must be > 0), nGridPoints {n_points} "
                       "(an integer >= 3)")
    n_points = int(n_points)
    atom = {}
    if homonuclear:
        line = records.read(3 * n_shells + 1, "the onsite line (E, SPE, U, occupations)")
        atom = {"onsite": np.array(line[n_shells - 1::-1]) * HARTREE_EV,
                "hubbard_u": np.array(line[2 * n_shells:n_shells:-1]) * HARTREE_EV,
                "occupations": np.array(line[3 * n_shells:2 * n_shells:-1])}
    mass = records.read(20, "the mass / polynomial repulsive line")[0]
    if homonuclear:
        atom["mass"] = mass
    width = 20 if extended else 10
    rows = np.array([records.read(2 * width, f"row {k} of the integral table") for k in range(1, n_points)])
    columns = slice(None) if extended else _SIMPLE_COLUMNS
    h, s = np.zeros((n_points - 1, 20)), np.zeros((n_points - 1, 20))
    h[:, columns] = rows[:, :width] * HARTREE_EV
    s[:, columns] = rows[:, width:]
    return SKTable(str(path), spacing * BOHR_ANGSTROM, n_points, h, s, max_l, **atom)


# ===================================================================== writing
def _format_row(values) -> str:
    return " ".join(f"{float(v):.12e}" for v in values)


def write_skf(path: str | Path, table: SKTable) -> Path:
    """Write ``table`` as a Slater-Koster file that :func:`read_skf` (and DFTB+) reads back: the
    simple format when it has no f integrals (``max_l`` 2), else the extended one; a zero
    polynomial repulsive, no spline."""
    path = Path(path)
    extended = table.max_l == 3
    columns = slice(None) if extended else _SIMPLE_COLUMNS
    lines = ["@ written by eqtb"] if extended else []
    lines.append(f"{table.spacing / BOHR_ANGSTROM:.12g} {table.n_points}")
    if table.onsite is not None:
        energies = list(np.asarray(table.onsite)[::-1] / HARTREE_EV)
        hubbard = list(np.asarray(table.hubbard_u)[::-1] / HARTREE_EV)
        lines.append(_format_row(energies + [0.0] + hubbard + list(np.asarray(table.occupations)[::-1])))
    lines.append(_format_row([table.mass or 0.0] + [0.0] * 19))
    for h, s in zip(np.asarray(table.hamiltonian) / HARTREE_EV, np.asarray(table.overlap)):
        lines.append(_format_row(list(h[columns]) + list(s[columns])))
    path.write_text("\n".join(lines) + "\n")
    return path


# ===================================================================== parameter sets
def _pth_tables(path: Path, pairs) -> dict[tuple[str, str], SKTable]:
    """Tables of DeePTB's ``skdata`` ``.pth`` (the dict of its ``SKParam.read_skfiles``: per bond
    type ``"A-B"`` the ``Distance`` (Angstrom), ``Hopping`` (eV) and ``Overlap`` (10, n) in the
    simple order, per element ``OnsiteE``, ``HubdU`` (eV) and ``Occu`` (s, p, d))."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable file is reported the same way
        raise SKFError(f"{path}: cannot read DeePTB's skdata file ({err})") from None
    keys = ("Distance", "Hopping", "Overlap", "OnsiteE")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in keys):
        raise SKFError(f"{path}: not DeePTB's skdata dict (per bond type {', '.join(keys)})")
    out = {}
    for a, b in pairs:
        bond = f"{a}-{b}"
        if any(bond not in data[k] for k in keys[:3]) or (a == b and a not in data["OnsiteE"]):
            raise SKFError(f"{path}: no tables for the bond type {bond}")
        r = np.asarray(data["Distance"][bond], dtype=float)
        h, s = np.zeros((len(r), 20)), np.zeros((len(r), 20))
        h[:, _SIMPLE_COLUMNS] = np.asarray(data["Hopping"][bond], dtype=float).T
        s[:, _SIMPLE_COLUMNS] = np.asarray(data["Overlap"][bond], dtype=float).T
        atom = {}
        if a == b:
            atom = {k: np.asarray(data[src][a], dtype=float) if a in data.get(src, {}) else None
                    for k, src in (("onsite", "OnsiteE"), ("hubbard_u", "HubdU"), ("occupations", "Occu"))}
        out[a, b] = SKTable(f"{path}[{bond}]", float(r[-1]) / len(r), len(r) + 1, h, s, 2, **atom)
    return out


def read_skdata(skdata: str | Path, symbols: list[str]) -> dict[tuple[str, str], SKTable]:
    """The tables of every ordered pair of ``symbols``: from a folder of ``A-B.skf`` files (DFTB+'s
    naming; both ``A-B`` and ``B-A`` are needed) or from DeePTB's ``.pth`` dict. :class:`SKFError`
    names the missing or malformed file."""
    skdata = Path(skdata)
    pairs = [(a, b) for a in symbols for b in symbols]
    if skdata.suffix == ".pth":
        if not skdata.is_file():
            raise SKFError(f"{skdata}: DeePTB skdata file not found")
        return _pth_tables(skdata, pairs)
    if not skdata.is_dir():
        raise SKFError(f"{skdata}: Slater-Koster folder not found (skdata is a folder of A-B.skf files or a .pth)")
    missing = [f"{a}-{b}.skf" for a, b in pairs if not (skdata / f"{a}-{b}.skf").is_file()]
    if missing:
        raise SKFError(f"{skdata}: missing Slater-Koster file(s) {', '.join(missing)}")
    return {(a, b): read_skf(skdata / f"{a}-{b}.skf", homonuclear=a == b) for a, b in pairs}


def skdata_cutoffs(skdata: str | Path) -> dict[str, float]:
    """``{"A-B": last tabulated distance}`` (Angstrom) of every table of ``skdata`` (a folder of
    ``A-B.skf`` files, from their grid lines only, or DeePTB's ``.pth``)."""
    skdata = Path(skdata)
    if skdata.suffix == ".pth":
        import torch

        try:
            distances = torch.load(skdata, map_location="cpu", weights_only=True)["Distance"]
        except Exception as err:  # noqa: BLE001
            raise SKFError(f"{skdata}: cannot read DeePTB's skdata file ({err})") from None
        return {bond: float(np.max(np.asarray(r))) for bond, r in distances.items()}
    if not skdata.is_dir():
        raise SKFError(f"{skdata}: Slater-Koster folder not found (skdata is a folder of A-B.skf files or a .pth)")
    out = {}
    for path in sorted(skdata.glob("*-*.skf")):
        lines = path.read_text().splitlines()[:2]
        grid = _Records(path, lines[1:] if lines and lines[0].startswith("@") else lines)
        spacing, n_points = grid.read(2, "the grid line (gridDist nGridPoints)")
        out[path.stem] = spacing * BOHR_ANGSTROM * (int(n_points) - 1)
    if not out:
        raise SKFError(f"{skdata}: no Slater-Koster files (A-B.skf) in the folder")
    return out

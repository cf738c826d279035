"""k-point paths for band structures and k-point meshes for Brillouin-zone integrals.

Conventions
-----------
* k-points are **fractional (reduced) coordinates** of the reciprocal lattice vectors ``b_i`` of
  the given cell (``a_i . b_j = 2 pi delta_ij``), no 2 pi factor; this is what
  :meth:`eqtb.operator.Operator.dense` takes.
* The x axis of a band plot, :attr:`KPath.x`, is the cumulative Cartesian path length in 1/Angstrom
  **including the 2 pi** (``|dk_frac @ structure.reciprocal_cell|``), as ASE plots it. DeePTB's
  ``xlist`` in ``bandstructure.npy`` is the same length without the 2 pi (``x / (2 pi)``).
* A path is a sequence of continuous *pieces*; between two pieces the path jumps (e.g. ``"X|U"``):
  the jump has zero length on the x axis and :attr:`KPath.breaks` records where each new piece
  starts, so that plots do not draw lines across it.

Builders
--------
:meth:`KPath.from_abacus` (DeePTB ``kline_type: "abacus"``), :meth:`KPath.from_ase_string`
(``"GXWKGLUWLK,UX"``, ASE's special points), :meth:`KPath.from_vasp` (DeePTB ``"vasp"`` line
mode), :meth:`KPath.from_array` / :meth:`KPath.from_npy` (explicit list), :meth:`KPath.automatic`
(seekpath, mapped back to the given cell; ASE fallback) and :func:`from_task` which reads a DeePTB
band task dict. :func:`monkhorst_pack` builds uniform meshes with weights, optionally reduced by
time reversal (k and -k give the same eigenvalues when H(R) is real).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


class KPathError(ValueError):
    """A k-path or k-mesh specification that cannot be used."""


#: DeePTB / seekpath / ASE spellings of the Gamma point
GAMMA_NAMES = {"G", "GAMMA", "Gamma", "\\Gamma", "Γ", "gamma"}

#: default number of points per straight leg when neither npoints nor density is given
POINTS_PER_LEG = 20


def _cell_array(cell) -> np.ndarray:
    """Accept a (3, 3) array (rows = lattice vectors, Angstrom), an ASE cell or a Structure.

    A Structure (or ase.Atoms) whose cell is degenerate only along non-periodic directions (a
    molecule or a slab stored without a vacuum vector, as DeePTB's format does: no cell.dat) gets
    those vectors completed by orthonormal ones, perpendicular to the periodic vectors
    (:func:`complete_cell`): k along a non-periodic direction is 0, so nothing depends on them."""
    pbc = None
    if hasattr(cell, "cell") and hasattr(cell, "numbers"):  # Structure or ase.Atoms
        pbc = getattr(cell, "pbc", None)
        cell = cell.cell
    arr = np.asarray(cell, dtype=np.float64)
    if arr.shape != (3, 3):
        raise KPathError(f"a cell must be a 3x3 matrix of lattice vectors, got shape {arr.shape}")
    if abs(np.linalg.det(arr)) < 1e-8 and pbc is not None:
        arr = complete_cell(arr, pbc)
    if abs(np.linalg.det(arr)) < 1e-8:
        raise KPathError("the cell is degenerate (zero volume): a k-path needs three lattice vectors; "
                         "give a finite cell (non-periodic directions may have any length)")
    return arr


def complete_cell(cell, pbc) -> np.ndarray:
    """The cell with its non-periodic lattice vectors replaced by orthonormal vectors
    perpendicular to the periodic ones (and to each other) when the cell is degenerate (zero
    volume); returned unchanged otherwise, or when the periodic vectors themselves are
    degenerate. A molecule (no periodic direction) gets the identity."""
    arr = np.array(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if abs(np.linalg.det(arr)) >= 1e-8 or pbc.all():
        return arr
    periodic = arr[pbc]
    if len(periodic) and np.linalg.matrix_rank(periodic, tol=1e-6) < len(periodic):
        return arr
    if not len(periodic):
        return np.eye(3)
    _, _, vt = np.linalg.svd(periodic)  # rows of vt beyond the rank span the orthogonal complement
    out = arr.copy()
    out[~pbc] = vt[len(periodic):]
    if np.linalg.det(out) < 0:  # keep a right-handed cell
        out[np.flatnonzero(~pbc)[0]] *= -1
    return out


def is_periodic(structure) -> bool:
    """Whether the structure has at least one periodic direction (False: a molecule, whose
    electronic structure is its orbital energies, k = Gamma only)."""
    return bool(np.asarray(getattr(structure, "pbc", True), dtype=bool).any())


def reciprocal(cell) -> np.ndarray:
    """Reciprocal vectors as rows, with the 2 pi (1/Angstrom)."""
    return 2 * np.pi * np.linalg.inv(_cell_array(cell)).T


@dataclass
class KPath:
    """A band-structure path.

    Attributes
    ----------
    kpts : (nk, 3) float64, fractional reciprocal coordinates of the cell it was built for.
    x : (nk,) float64, cumulative Cartesian path length in 1/Angstrom (with 2 pi); zero increments
        across jumps.
    ticks : (nt,) float64, x positions of the labelled (high-symmetry) points.
    tick_labels : list of str, raw labels (``"G"``, ``"X|U"`` for a jump from X to U, ``""`` if
        unlabelled); :func:`pretty_label` turns them into plot labels.
    breaks : tuple of int, indices where a new continuous piece starts (never 0).
    corners : (nc,) int, indices into kpts of every high-symmetry point, in path order (before
        labels at equal x are merged into ticks).
    corner_labels : labels of the corners (same length).
    description : how the path was made (for logs and summaries).
    """

    kpts: np.ndarray
    x: np.ndarray
    ticks: np.ndarray
    tick_labels: list[str]
    breaks: tuple[int, ...] = ()
    corners: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    corner_labels: list[str] = field(default_factory=list)
    description: str = ""

    def __len__(self) -> int:
        return len(self.kpts)

    @property
    def nk(self) -> int:
        return len(self.kpts)

    @property
    def segments(self) -> list[slice]:
        """Slices of the continuous pieces (plot each one as its own line)."""
        edges = [0, *self.breaks, len(self.kpts)]
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    # ------------------------------------------------------------------ generic constructor
    @classmethod
    def build(cls, kpts, cell, breaks: Sequence[int] = (), corners: Sequence[int] = (),
              corner_labels: Sequence[str] = (), description: str = "") -> "KPath":
        """Assemble a path from explicit k-points: computes x (zero increments at ``breaks``) and
        the ticks (corners at the same x merged: equal labels kept once, others joined by ``|``)."""
        kpts = np.asarray(kpts, dtype=np.float64)
        if kpts.ndim != 2 or kpts.shape[1] != 3 or len(kpts) == 0:
            raise KPathError(f"k-points must be a non-empty (nk, 3) array, got shape {kpts.shape}")
        if not np.isfinite(kpts).all():
            raise KPathError("k-points contain NaN or infinity")
        rec = reciprocal(cell)
        step = np.linalg.norm(np.diff(kpts, axis=0) @ rec, axis=1)
        breaks = tuple(sorted({int(b) for b in breaks if 0 < int(b) < len(kpts)}))
        for b in breaks:
            step[b - 1] = 0.0
        x = np.concatenate([[0.0], np.cumsum(step)])
        corners = np.asarray(list(corners), dtype=np.int64)
        labels = list(corner_labels) if len(corner_labels) else [""] * len(corners)
        if len(labels) != len(corners):
            raise KPathError(f"{len(corners)} corners but {len(labels)} labels")
        ticks: list[float] = []
        tick_labels: list[str] = []
        for c, lab in zip(corners, labels):
            xc = float(x[c])
            if ticks and abs(xc - ticks[-1]) <= 1e-10 * max(1.0, abs(xc)):
                prev = tick_labels[-1]
                if lab and lab != prev.split("|")[-1]:
                    tick_labels[-1] = f"{prev}|{lab}" if prev else lab
                continue
            ticks.append(xc)
            tick_labels.append(lab)
        return cls(kpts, x, np.asarray(ticks), tick_labels, breaks, corners, labels, description)

    # ------------------------------------------------------------------ DeePTB "abacus"
    @classmethod
    def from_abacus(cls, rows, labels: Sequence[str] | None, cell) -> "KPath":
        """DeePTB's ``kline_type: "abacus"`` path.

        ``rows``: list of ``[k1, k2, k3, n]`` (fractional corner, integer count). Row i contributes
        n points ``k_i + (k_{i+1} - k_i) * j / n`` for j = 0..n-1 (the next corner excluded); the
        last row must have n = 1 and contributes its corner. A row with n = 1 inside the list
        contributes only its corner, and the path then **jumps** to the next corner (zero length on
        the x axis). ``labels``: one per row, or None / ``[]`` / ``[""]`` for no labels.
        Total points: ``sum(n)``.
        """
        try:
            arr = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise KPathError(f"abacus kpath must be a list of [k1, k2, k3, n] rows: {exc}") from None
        if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) < 1:
            raise KPathError(f"abacus kpath must be a list of [k1, k2, k3, n] rows, got shape {arr.shape}")
        counts = arr[:, 3]
        if not np.all(counts == np.round(counts)) or (counts < 1).any():
            bad = int(np.where((counts != np.round(counts)) | (counts < 1))[0][0])
            raise KPathError(f"abacus kpath row {bad}: the point count must be a positive integer, got {counts[bad]}")
        counts = counts.astype(np.int64)
        if counts[-1] != 1:
            raise KPathError(f"abacus kpath: the last row must have count 1 (it is the end point), got {counts[-1]}")
        corners_k = arr[:, :3]
        if labels is None or list(labels) in ([], [""]):
            labels = [""] * len(arr)
        labels = [str(lab) for lab in labels]
        if len(labels) != len(arr):
            raise KPathError(f"abacus kpath has {len(arr)} rows but klabels has {len(labels)} labels "
                             f"(one label per row expected)")
        pts, corners, breaks = [], [], []
        for r in range(len(arr)):
            corners.append(len(pts))
            if r == len(arr) - 1:
                pts.append(corners_k[r])
                break
            n = counts[r]
            frac = np.arange(n)[:, None] / n
            pts.extend(corners_k[r] + (corners_k[r + 1] - corners_k[r]) * frac)
            if n == 1:
                breaks.append(len(pts))
        return cls.build(np.array(pts), cell, breaks, corners, labels,
                         description=f"abacus kline, {len(arr)} corners")

    # ------------------------------------------------------------------ labelled pieces
    @classmethod
    def from_pieces(cls, pieces: Sequence[Sequence[tuple[str, np.ndarray]]], cell,
                    npoints: int | None = None, density: float | None = None,
                    description: str = "") -> "KPath":
        """Continuous pieces of labelled corners ``[[("G", k), ("X", k), ...], [...]]`` sampled with
        points distributed over the legs in proportion to their Cartesian length.

        ``density``: points per 1/Angstrom (with 2 pi); else ``npoints`` in total; else
        ``POINTS_PER_LEG`` per leg on average. Every leg gets at least one point (its start), every
        piece ends with its last corner."""
        rec = reciprocal(cell)
        pieces = [[(str(lab), np.asarray(k, dtype=np.float64)) for lab, k in piece] for piece in pieces]
        pieces = [p for p in pieces if p]
        if not pieces:
            raise KPathError("empty k-path")
        legs = [(p, q) for piece in pieces for p, q in zip(piece[:-1], piece[1:])]
        lengths = np.array([np.linalg.norm((q[1] - p[1]) @ rec) for p, q in legs])
        n_legs, n_pieces = len(legs), len(pieces)
        if density is not None:
            if not density > 0:
                raise KPathError(f"k-path density must be positive, got {density}")
            npoints = n_pieces + max(n_legs, int(math.ceil(density * lengths.sum())))
        elif npoints is None or npoints <= 0:
            npoints = n_pieces + POINTS_PER_LEG * n_legs
        free = int(npoints) - n_pieces
        if free < n_legs:
            raise KPathError(f"{npoints} k-points are too few for a path with {n_legs} legs and "
                             f"{n_pieces} pieces (need at least {n_legs + n_pieces})")
        per_leg = np.ones(n_legs, dtype=np.int64)
        if n_legs:
            extra = free - n_legs
            total = lengths.sum()
            share = lengths / total * extra if total > 0 else np.full(n_legs, extra / n_legs)
            base = np.floor(share).astype(np.int64)
            rest = extra - base.sum()
            order = np.argsort(-(share - base), kind="stable")
            base[order[:rest]] += 1
            per_leg += base
        pts, corners, labels, breaks = [], [], [], []
        leg = 0
        for piece in pieces:
            if pts:
                breaks.append(len(pts))
            for (lab, k), nxt in zip(piece, piece[1:] + [None]):
                corners.append(len(pts))
                labels.append(lab)
                if nxt is None:
                    pts.append(k)
                    continue
                n = per_leg[leg]
                leg += 1
                pts.extend(k + (nxt[1] - k) * (np.arange(n)[:, None] / n))
        return cls.build(np.array(pts), cell, breaks, corners, labels, description)

    # ------------------------------------------------------------------ ASE string
    @classmethod
    def from_ase_string(cls, path: str, cell, npoints: int | None = None, density: float | None = None,
                        special_points: dict | None = None, pbc=True) -> "KPath":
        """A path written as ASE writes it, ``"GXWKGLUWLK,UX"`` (commas separate pieces; labels
        are a capital letter plus optional digits/lower case, e.g. ``X1``, ``Gamma`` not allowed:
        use ``G``). Special points: ``special_points`` if given (label -> fractional k of this
        cell), else ASE's for the Bravais lattice of the cell (``Cell.bandpath``, which expresses
        them in the given cell's coordinates). Sampling as :meth:`from_pieces`."""
        from ase.dft.kpoints import parse_path_string

        if not isinstance(path, str) or not path.strip():
            raise KPathError(f"k-path string must be a non-empty string like 'GXL', got {path!r}")
        cell_arr = _cell_array(cell)
        try:
            pieces = parse_path_string(path.replace(" ", ""))
        except Exception as exc:  # ASE raises bare errors for odd strings
            raise KPathError(f"cannot parse k-path string {path!r}: {exc}") from None
        points = dict(special_points or {})
        lattice = "user"
        if not special_points:
            points, lattice = ase_special_points(cell_arr, pbc)
        out = []
        for piece in pieces:
            row = []
            for lab in piece:
                key = "G" if lab in GAMMA_NAMES else lab
                if key not in points and key == "G":
                    points["G"] = np.zeros(3)
                if key not in points:
                    raise KPathError(f"k-path {path!r}: no special point {lab!r} for this "
                                     f"{lattice} lattice; known points: {', '.join(sorted(points))}")
                row.append((key, np.asarray(points[key], dtype=np.float64).reshape(3)))
            out.append(row)
        return cls.from_pieces(out, cell_arr, npoints, density, description=f"{path} ({lattice} special points)")

    # ------------------------------------------------------------------ DeePTB "vasp"
    @classmethod
    def from_vasp(cls, segments, high_sym_kpoints: dict | None, number_in_line: int, cell,
                  pbc=True) -> "KPath":
        """DeePTB's ``kline_type: "vasp"`` (VASP line mode): ``segments`` is a list of ``"G-X"``
        strings or ``["G", "X"]`` pairs; every segment gets ``number_in_line`` points including
        both ends (so joined segments repeat their shared corner, a zero-length step). A segment
        not starting where the previous one ended is a jump. ``high_sym_kpoints``: label ->
        fractional k (ASE's special points of the cell when empty)."""
        cell_arr = _cell_array(cell)
        try:
            n = int(number_in_line)
        except (TypeError, ValueError):
            raise KPathError(f"vasp kline: number_in_line must be an integer >= 2, got {number_in_line!r}") from None
        if n < 2:
            raise KPathError(f"vasp kline: number_in_line must be an integer >= 2, got {number_in_line!r}")
        points = {("G" if k in GAMMA_NAMES else k): v for k, v in (high_sym_kpoints or {}).items()}
        if not points:
            points, _ = ase_special_points(cell_arr, pbc)
        if isinstance(segments, str) or not segments:
            raise KPathError(f"vasp kline: kpath must be a list of segments like ['G-X', 'X-W'], got {segments!r}")
        pts, corners, labels, breaks = [], [], [], []
        prev_end = None
        for seg in segments:
            ends = seg.split("-") if isinstance(seg, str) else list(seg)
            if len(ends) != 2:
                raise KPathError(f"vasp kline: segment {seg!r} must name two points, e.g. 'G-X'")
            ks = []
            for lab in ends:
                key = "G" if lab in GAMMA_NAMES else lab
                if key not in points:
                    raise KPathError(f"vasp kline: no coordinates for point {lab!r}; high_sym_kpoints "
                                     f"has {', '.join(sorted(points))}")
                ks.append(np.asarray(points[key], dtype=np.float64).reshape(3))
            if prev_end is not None and not np.allclose(prev_end, ks[0]):
                breaks.append(len(pts))
            corners += [len(pts), len(pts) + n - 1]
            labels += [("G" if e in GAMMA_NAMES else e) for e in ends]
            pts.extend(ks[0] + (ks[1] - ks[0]) * (np.arange(n)[:, None] / (n - 1)))
            prev_end = ks[1]
        return cls.build(np.array(pts), cell_arr, breaks, corners, labels,
                         description=f"vasp kline, {len(segments)} segments")

    # ------------------------------------------------------------------ explicit
    @classmethod
    def from_array(cls, kpts, cell, labels: dict | None = None, description: str = "explicit k-points") -> "KPath":
        """An explicit list of k-points (nk, 3), taken as one continuous piece. ``labels``
        (label -> fractional k) puts a tick on every point equal to a labelled one."""
        kpts = np.asarray(kpts, dtype=np.float64)
        if kpts.ndim == 3 and kpts.shape[0] == 1:
            kpts = kpts[0]
        if kpts.ndim != 2 or kpts.shape[-1] != 3:
            raise KPathError(f"explicit k-points must have shape (nk, 3), got {kpts.shape}")
        corners, names = [], []
        for idx, k in enumerate(kpts):
            for lab, v in (labels or {}).items():
                if np.allclose(k, np.asarray(v, dtype=np.float64), atol=1e-8):
                    corners.append(idx)
                    names.append("G" if lab in GAMMA_NAMES else str(lab))
                    break
        if not corners:
            corners, names = [0, len(kpts) - 1], ["", ""]
        return cls.build(kpts, cell, (), corners, names, description)

    @classmethod
    def from_npy(cls, path, cell) -> "KPath":
        """k-points from a ``.npy`` file holding a (nk, 3) (or (1, nk, 3)) array of fractional k."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"k-point file {path} does not exist")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise KPathError(f"{path}: cannot read a k-point array: {exc}") from None
        try:
            return cls.from_array(arr, cell, description=f"k-points from {path.name}")
        except KPathError as exc:
            raise KPathError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ automatic
    @classmethod
    def automatic(cls, structure, density: float | None = None, npoints: int | None = None,
                  symprec: float = 1e-3) -> "KPath":
        """A standard path for the structure's space group (HPKOT recipe, seekpath), expressed in
        fractional coordinates of **the given cell**.

        seekpath standardises (and may rotate) the cell: its primitive cell P (rows) satisfies
        ``A @ rotation.T = N @ P`` for the given cell A with an integer matrix N (A is a supercell
        of the primitive lattice), so a point with coordinates kappa in P's reciprocal basis has
        coordinates ``kappa @ N.T`` in A's. When N is not integer within tolerance, or the
        structure is not periodic in 3-D, or seekpath fails, ASE's ``cell.bandpath()`` (which
        only looks at the lattice) is used instead. Sampling as :meth:`from_pieces`."""
        cell = _cell_array(structure)
        pbc = np.asarray(getattr(structure, "pbc", [True] * 3), dtype=bool)
        note = ""
        if pbc.all():
            try:
                pieces, desc = _seekpath_pieces(structure, cell, symprec)
                return cls.from_pieces(pieces, cell, npoints, density, description=desc)
            except _SeekpathUnusable as exc:
                note = f" (seekpath not used: {exc})"
        points, lattice = ase_special_points(cell, pbc)
        path = ase_default_path(cell, pbc)
        from ase.dft.kpoints import parse_path_string

        pieces = [[(("G" if lab in GAMMA_NAMES else lab), points["G" if lab in GAMMA_NAMES else lab])
                   for lab in piece] for piece in parse_path_string(path)]
        return cls.from_pieces(pieces, cell, npoints, density, description=f"ASE {lattice} path {path}{note}")


class _SeekpathUnusable(Exception):
    pass


def _seekpath_pieces(structure, cell, symprec):
    try:
        import seekpath
    except ImportError as exc:  # pragma: no cover - seekpath is a dependency
        raise _SeekpathUnusable(f"cannot import seekpath: {exc}") from None
    frac = np.asarray(structure.positions) @ np.linalg.inv(cell)
    numbers = np.asarray(structure.numbers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = seekpath.get_path((cell, frac, numbers), with_time_reversal=True, symprec=symprec)
    except Exception as exc:  # spglib/seekpath raise various errors
        raise _SeekpathUnusable(str(exc)) from None
    P = np.asarray(res["primitive_lattice"], dtype=np.float64)
    rot = np.asarray(res["rotation_matrix"], dtype=np.float64)
    N = cell @ rot.T @ np.linalg.inv(P)
    Nint = np.round(N)
    if np.abs(N - Nint).max() > 0.02 or abs(np.linalg.det(Nint)) < 0.5:
        raise _SeekpathUnusable("the standardised primitive cell is not a sublattice of the given cell "
                                f"(max deviation {np.abs(N - Nint).max():.3g})")
    coords = {("G" if lab in GAMMA_NAMES else lab): np.asarray(v, dtype=np.float64) @ Nint.T
              for lab, v in res["point_coords"].items()}
    pieces: list[list] = []
    for a, b in res["path"]:
        a = "G" if a in GAMMA_NAMES else a
        b = "G" if b in GAMMA_NAMES else b
        if pieces and pieces[-1][-1][0] == a:
            pieces[-1].append((b, coords[b]))
        else:
            pieces.append([(a, coords[a]), (b, coords[b])])
    desc = (f"seekpath {res['bravais_lattice_extended']} path "
            + ",".join("-".join(lab for lab, _ in p) for p in pieces))
    return pieces, desc


def ase_special_points(cell, pbc=True) -> tuple[dict[str, np.ndarray], str]:
    """ASE's special points of the cell's Bravais lattice, in fractional coordinates of the given
    cell, and the lattice name. Only the lattice is looked at (not the atoms)."""
    from ase.cell import Cell

    c = Cell(_cell_array(cell))
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    try:
        bp = c.bandpath(npoints=0, pbc=pbc)
        lat = c.get_bravais_lattice(pbc=pbc).name
    except Exception as exc:  # ASE cannot classify some cells
        warnings.warn(f"ASE cannot classify the lattice ({exc}); only Gamma is known")
        return {"G": np.zeros(3)}, "unclassified"
    return {k: np.asarray(v, dtype=np.float64) for k, v in bp.special_points.items()}, lat


def ase_default_path(cell, pbc=True) -> str:
    from ase.cell import Cell

    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    try:
        return Cell(_cell_array(cell)).bandpath(npoints=0, pbc=pbc).path
    except Exception:
        return "G"


# ---------------------------------------------------------------------------------------- tasks
def from_task(task_options: dict, structure, base_dir: str | Path | None = None) -> KPath:
    """Build the path of a DeePTB band task (``task_options`` of ``dptb run``).

    ``kline_type``: ``"abacus"`` (``kpath`` rows + ``klabels``), ``"ase"`` (``kpath`` string,
    ``nkpoints`` total, optional ``high_sym_kpoints``), ``"vasp"`` (``kpath`` segments,
    ``high_sym_kpoints``, ``number_in_line``), ``"array"`` (``kpath`` explicit (nk, 3) list or a
    ``.npy`` file name relative to ``base_dir``, optional ``high_sym_kpoints``), absent/None ->
    :meth:`KPath.automatic`."""
    kind = task_options.get("kline_type")
    kpath = task_options.get("kpath")
    cell = _cell_array(structure)
    pbc = getattr(structure, "pbc", True)
    if kind is None:
        if kpath is not None:
            raise KPathError("task has 'kpath' but no 'kline_type' (one of abacus, ase, vasp, array)")
        return KPath.automatic(structure)
    kind = str(kind).lower()
    if kind == "abacus":
        if kpath is None:
            raise KPathError("kline_type 'abacus' needs 'kpath' rows [k1, k2, k3, n]")
        return KPath.from_abacus(kpath, task_options.get("klabels"), cell)
    if kind == "ase":
        if not isinstance(kpath, str):
            raise KPathError(f"kline_type 'ase' needs 'kpath' as a string like 'GXWKGL', got {kpath!r}")
        n = task_options.get("nkpoints") or task_options.get("nkpoint") or None
        return KPath.from_ase_string(kpath, cell, npoints=n,
                                     special_points=task_options.get("high_sym_kpoints") or None, pbc=pbc)
    if kind == "vasp":
        return KPath.from_vasp(kpath, task_options.get("high_sym_kpoints"),
                               task_options.get("number_in_line"), cell, pbc=pbc)
    if kind == "array":
        if isinstance(kpath, str):
            p = Path(kpath)
            if base_dir is not None and not p.is_absolute():
                p = Path(base_dir) / p
            return KPath.from_npy(p, cell)
        if kpath is None:
            raise KPathError("kline_type 'array' needs 'kpath' (a (nk, 3) list or a .npy file)")
        return KPath.from_array(kpath, cell, task_options.get("high_sym_kpoints") or None)
    raise KPathError(f"unknown kline_type {kind!r}; expected one of abacus, ase, vasp, array")


# ---------------------------------------------------------------------------------------- meshes
def monkhorst_pack(mesh, gamma_centered: bool = True, time_reversal: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A uniform k-mesh ``mesh = (n1, n2, n3)``.

    Gamma-centred: ``k_i = m / n_i`` (m = 0..n_i-1); Monkhorst-Pack: ``k_i = (2m - n_i + 1) / (2 n_i)``
    (Gamma excluded for even n_i). Coordinates are wrapped into [-1/2, 1/2). Returns fractional
    k-points (nk, 3) and weights (nk,) summing to 1. With ``time_reversal`` each pair {k, -k}
    (modulo a reciprocal lattice vector) is kept once with the summed weight — valid when H(R) and
    S(R) are real (no spin-orbit coupling, no magnetic field), because then E_n(k) = E_n(-k)."""
    try:
        n = np.asarray(mesh, dtype=np.int64).reshape(-1)
        ok = n.shape == (3,) and (n >= 1).all() and np.all(np.asarray(mesh, dtype=float).reshape(-1) == n)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise KPathError(f"a k-mesh must be three positive integers, got {mesh!r}")
    grids = [np.arange(m) for m in n]
    m = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, 3)
    # integer numerators over the common denominators 2 n_i
    if gamma_centered:
        num = 2 * m
    else:
        num = 2 * m - n + 1
    den = 2 * n
    num = (num + den // 2) % den - den // 2  # wrap into [-n, n)
    kpts = num / den
    weights = np.full(len(kpts), 1.0 / len(kpts))
    if time_reversal:
        key = num % den
        neg = (-num) % den
        canon = np.where(_lex_less(neg, key)[:, None], neg, key)
        _, first, inverse = np.unique(canon, axis=0, return_index=True, return_inverse=True)
        counts = np.bincount(inverse.reshape(-1))
        order = np.argsort(first)
        kpts = kpts[first[order]]
        weights = counts[order] / len(num)
    return kpts, weights


def _lex_less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise lexicographic a < b for integer arrays (n, 3)."""
    out = np.zeros(len(a), dtype=bool)
    decided = np.zeros(len(a), dtype=bool)
    for c in range(a.shape[1]):
        lt = (a[:, c] < b[:, c]) & ~decided
        gt = (a[:, c] > b[:, c]) & ~decided
        out |= lt
        decided |= lt | gt
    return out


def mesh_for_spacing(structure, spacing: float = 0.15) -> tuple[int, int, int]:
    """Smallest mesh with k-spacing at most ``spacing`` (1/Angstrom, with 2 pi) along each periodic
    reciprocal vector; 1 along non-periodic directions."""
    rec = reciprocal(structure)
    pbc = np.broadcast_to(np.asarray(getattr(structure, "pbc", True), dtype=bool), (3,))
    n = np.maximum(1, np.ceil(np.linalg.norm(rec, axis=1) / spacing - 1e-9)).astype(int)
    n[~pbc] = 1
    return tuple(int(v) for v in n)


def pretty_label(label: str) -> str:
    """Plot label: ``G``/``GAMMA`` -> Γ, ``X_1``/``X1`` -> X with a subscript, ``X|U`` kept as two."""
    parts = []
    for p in str(label).split("|"):
        if p in GAMMA_NAMES:
            parts.append("Γ")
            continue
        base, _, sub = p.partition("_")
        if not sub:
            head = base.rstrip("0123456789")
            base, sub = head, base[len(head):]
        base = "Γ" if base in GAMMA_NAMES else base
        parts.append(f"{base}$_{{{sub}}}$" if sub else base)
    return "|".join(parts)

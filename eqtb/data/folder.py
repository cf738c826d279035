"""Read and write DeePTB / dftio dataset folders (shared/spec/FORMATS.md sections 1.1-1.6).

Layout::

    <root>/
      info.json                  optional fallback info for every trajectory folder lacking one
      <prefix><sep><suffix>/     one trajectory folder (e.g. ``Si64.0``), frames of one system
        info.json                optional; overrides the root one entirely
        positions.dat cell.dat atomic_numbers.dat [pbc.dat basis.dat]   (text structure) or *.traj
        kpoints.npy eigenvalues.npy
        hamiltonians.h5 overlaps.h5 density_matrices.h5 | DM.h5

Units and conventions (identical to DeePTB v2.2 / dftio):

* Lengths in Angstrom. ``cell.dat`` rows are the lattice vectors a1, a2, a3 (one 3x3 block for all
  frames, or frame-major 3-row blocks). ``positions.dat`` is frame-major ``(F*N, 3)``, Cartesian
  (``pos_type: "cart"``) or fractional (``"frac"``, Cartesian = ``frac @ cell``).
  ``atomic_numbers.dat`` holds ``N`` (shared) or ``F*N`` integers. ``pbc.dat`` is never read: the
  periodicity comes from ``info.json``.
* ``kpoints.npy``: ``(nk, 3)`` or ``(F, nk, 3)``, fractional coordinates of the reciprocal lattice
  vectors (no 2 pi). ``eigenvalues.npy``: ``(F, nk, nb)`` or ``(nk, nb)`` when F = 1, in eV,
  absolute (no shift).
* Block files: one group per frame (``"0".."F-1"``, or 1-based ``"1".."F"`` when no ``"0"``), one
  dataset per block ``"i_j_Rx_Ry_Rz"`` (0-based atoms, or 1-based when ``"0_0_0_0_0"`` is absent),
  ``block[mu, nu] = <phi_{i,mu}(r - r_i)| O |phi_{j,nu}(r - r_j - R.A)>`` with rows the orbitals of
  atom i in DeePTB order. H in eV, S and the density matrix dimensionless.
* ``basis.dat``: dftio's ``str(dict)`` form ``{'Si': '1s1p'}``, or DeePTB's per-atom form (one
  basis string per atom line).

Every problem with the input raises :class:`DatasetError` naming the file and the problem.
"""

from __future__ import annotations

import ast
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from eqtb.basis import Basis, BasisError, element_symbol
from eqtb.data.atomic import atomic_directory
from eqtb.hints import did_you_mean
from eqtb.structure import Structure, StructureError
from eqtb.bonds import BlockError
from eqtb.operator import Operator

__all__ = [
    "DatasetError", "DatasetWarning", "BandInfo", "Info", "read_info", "Frame", "TrajectoryFolder",
    "find_folders", "data_folders", "read_fermi_level", "read_dataset", "write_folder",
]

#: names of the block files, per quantity, in order of preference
BLOCK_FILES = {
    "hamiltonian": ("hamiltonians.h5",),
    "overlap": ("overlaps.h5",),
    "density_matrix": ("density_matrices.h5", "DM.h5"),
}
#: a trajectory folder must hold at least one file with one of these endings
DATA_SUFFIXES = (".dat", ".traj", ".h5", ".mdb")


class DatasetError(ValueError):
    """A dataset folder or file that cannot be read or written; the message names the file."""


class DatasetWarning(UserWarning):
    """Something accepted but worth knowing (legacy info.json keys, pbc disagreement, ...)."""


# ====================================================================== info.json


class BandInfo(BaseModel):
    """``bandinfo`` of info.json: what an eigenvalue loss fits for the frames of one folder.

    DeePTB v2 keys: band window ``[band_min, band_max)`` (0-based indices into the reference bands
    after ``diff_valence`` has dropped the lowest ones; ``band_max`` None = as many as the model and
    the data both have) and energy window ``emin``/``emax`` in eV, relative to the lowest reference
    eigenvalue inside the band window (used only when both are set, as DeePTB v2 does).

    DeePTB v1 keys, read by eqtb's ``eigvals`` loss: ``gap_penalty`` (add ``0.1 * MSE(1/(gap +
    loss_gap_eta))`` of the gap between bands ``fermi_band`` and ``fermi_band + 1``, indices inside the
    band window; ``loss_gap_eta`` in eV), ``weight`` (one number, or one non-negative weight per
    k-point: the weights of the k-points in the band mean-square errors) and ``loss_weight`` (the
    weight of each frame of this folder among the frames of a batch)."""

    model_config = ConfigDict(extra="forbid")

    band_min: StrictInt = Field(0, ge=0)
    band_max: StrictInt | None = None
    emin: float | None = None
    emax: float | None = None
    gap_penalty: StrictBool = False
    fermi_band: StrictInt = Field(0, ge=0)
    loss_gap_eta: float = Field(0.01, gt=0)
    weight: float | list[float] = 1.0
    loss_weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _window(self):
        if self.band_max is not None and self.band_max <= self.band_min:
            raise ValueError(f"band_max ({self.band_max}) must be larger than band_min ({self.band_min})")
        if self.emin is not None and self.emax is not None and self.emax <= self.emin:
            raise ValueError(f"emax ({self.emax}) must be larger than emin ({self.emin})")
        weights = self.weight if isinstance(self.weight, list) else [self.weight]
        if not weights or min(weights) < 0 or max(weights) <= 0:
            raise ValueError(f"weight must be non-negative with at least one positive value, got {self.weight!r}")
        if self.gap_penalty and self.band_max is not None and self.fermi_band + 1 >= self.band_max - self.band_min:
            raise ValueError(f"fermi_band ({self.fermi_band}) + 1 must be inside the band window "
                             f"[{self.band_min}, {self.band_max})")
        return self

    @property
    def energy_window(self) -> tuple[float, float] | None:
        """(emin, emax) in eV when both are set, else None."""
        return None if self.emin is None or self.emax is None else (self.emin, self.emax)

    def to_json_dict(self) -> dict:
        """DeePTB's four keys always (its reader needs them), the others when not at their default."""
        out = {k: getattr(self, k) for k in ("band_min", "band_max", "emin", "emax")}
        out.update(self.model_dump(exclude_defaults=True, exclude=set(out)))
        return out


class Info(BaseModel):
    """Per-trajectory metadata (``info.json``, DeePTB v2.2 schema).

    ``nframes``: frames F in the folder (replaced by the trajectory length for ``pos_type "ase"``);
    ``natoms``: atoms per frame, -1 = infer from ``positions.dat``; ``pos_type``: ``"cart"``
    (Cartesian Angstrom), ``"frac"`` (fractional) or ``"ase"`` (read the single ``*.traj``);
    ``pbc``: one bool or three; ``bandinfo``: fitting windows for eigenvalue losses."""

    model_config = ConfigDict(extra="forbid")

    nframes: StrictInt = Field(ge=1)
    natoms: StrictInt = Field(-1, ge=-1)
    pos_type: Literal["cart", "frac", "ase"]
    pbc: StrictBool | tuple[StrictBool, StrictBool, StrictBool]
    bandinfo: BandInfo | None = None

    @model_validator(mode="after")
    def _natoms(self):
        if self.natoms == 0:
            raise ValueError("natoms must be positive (or -1 to infer it)")
        return self

    @property
    def pbc3(self) -> tuple[bool, bool, bool]:
        """Periodicity along a1, a2, a3 (a single bool broadcast to three)."""
        return (self.pbc,) * 3 if isinstance(self.pbc, bool) else tuple(self.pbc)

    def to_json_dict(self) -> dict:
        """The dict written to info.json (bandinfo only when set; pbc as given)."""
        out = {"nframes": self.nframes, "natoms": self.natoms, "pos_type": self.pos_type,
               "pbc": self.pbc if isinstance(self.pbc, bool) else list(self.pbc)}
        if self.bandinfo is not None:
            out["bandinfo"] = self.bandinfo.to_json_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "info.json") -> "Info":
        """Validate an info dict strictly (unknown keys are errors, with a suggestion), accepting the
        legacy v2.0 ``AtomicData_options`` and legacy ``bandinfo`` keys with a warning."""
        if not isinstance(data, dict):
            raise DatasetError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
        data = dict(data)
        legacy = data.pop("AtomicData_options", None)
        if legacy is not None:
            if not isinstance(legacy, dict):
                raise DatasetError(f"{source}: 'AtomicData_options' must be an object, got {legacy!r}")
            _check_keys(legacy, {"r_max", "er_max", "oer_max", "pbc"}, f"{source}: AtomicData_options")
            warnings.warn(f"{source}: legacy DeePTB v2.0 key 'AtomicData_options' accepted; its cutoffs "
                          f"are ignored (cutoffs come from the model options)", DatasetWarning, stacklevel=3)
            if "pbc" not in data:
                data["pbc"] = legacy.get("pbc", True)
        cutoffs = [k for k in ("r_max", "er_max", "oer_max") if k in data]
        if cutoffs:
            warnings.warn(f"{source}: cutoff keys {cutoffs} ignored (cutoffs come from the model options)",
                          DatasetWarning, stacklevel=3)
            for k in cutoffs:
                data.pop(k)
        _check_keys(data, set(cls.model_fields), source)
        band = data.get("bandinfo")
        if isinstance(band, dict):
            band = dict(band)
            old = [k for k in ("nkpoints", "nbands", "eout_weight") if k in band]
            if old:
                warnings.warn(f"{source}: legacy bandinfo keys {old} ignored", DatasetWarning, stacklevel=3)
                for k in old:
                    band.pop(k)
            _check_keys(band, set(BandInfo.model_fields), f"{source}: bandinfo")
            data["bandinfo"] = band
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'info'}: {e['msg']} (got {e.get('input')!r})"
                for e in exc.errors())
            raise DatasetError(f"{source}: invalid info: {problems}") from None


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        k = unknown[0]
        hint = did_you_mean(k, allowed) or f"; allowed keys: {sorted(allowed)}"
        raise DatasetError(f"{where}: unknown key {k!r}{hint}")


def read_info(path: str | Path) -> Info:
    """Read and validate one ``info.json`` (see :meth:`Info.from_dict`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetError(f"{path}: info file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read info file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    return Info.from_dict(data, source=str(path))


# ====================================================================== frames


@dataclass
class Frame:
    """One frame of a trajectory folder. ``kpoints`` (nk, 3) fractional reciprocal coordinates;
    ``eigenvalues`` (nk, nb) in eV; operators H (eV), S, density matrix (dimensionless)."""

    structure: Structure
    hamiltonian: Operator | None = None
    overlap: Operator | None = None
    density_matrix: Operator | None = None
    kpoints: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None
    source: str = ""


def _load_txt(path: Path, ndmin: int) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=np.float64, ndmin=ndmin)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read numbers: {exc}") from None


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read .npy file: {exc}") from None
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DatasetError(f"{path}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise DatasetError(f"{path}: contains NaN or infinity (first at index {bad})")
    return arr


@contextmanager
def _h5_errors(path: Path, what: str = ""):
    """Turn h5py's OSError/KeyError/RuntimeError (truncated or corrupt files) into DatasetError."""
    try:
        yield
    except DatasetError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError, TypeError...
        raise DatasetError(f"{path}: cannot read HDF5 {what}: {type(exc).__name__}: {exc}") from None


def _read_h5_group(path: Path, frame: int, nframes: int) -> tuple[str, dict[str, np.ndarray]]:
    """The blocks of frame ``frame`` (0-based) of a block file: (group name, {key: array})."""
    import h5py

    with _h5_errors(path, "file"):
        with h5py.File(path, "r") as h:
            groups = list(h.keys())
            name = str(frame) if "0" in h else str(frame + 1)
            if name not in h:
                raise DatasetError(
                    f"{path}: no group {name!r} for frame {frame} (the file has {len(groups)} groups "
                    f"{groups[:5]}{' ...' if len(groups) > 5 else ''}; expected '0'..'{nframes - 1}' "
                    f"or '1'..'{nframes}')")
            g = h[name]
            if not isinstance(g, h5py.Group):
                raise DatasetError(f"{path}: {name!r} is a dataset, expected a group of blocks")
            gid = g.id
            blocks: dict[str, np.ndarray] = {}
            for raw in gid:  # low-level iteration: about twice as fast as g.items() for many blocks
                key = raw.decode()
                try:
                    ds = h5py.h5d.open(gid, raw)
                except Exception:  # not a dataset (a subgroup): let the high-level API complain
                    raise DatasetError(f"{path}: group {name!r}: entry {key!r} is not a dataset") from None
                arr = np.empty(ds.shape, dtype=ds.dtype)
                if arr.size:
                    ds.read(h5py.h5s.ALL, h5py.h5s.ALL, arr)
                blocks[key] = arr
    return name, blocks


def basis_from_text(text: str, numbers: Callable[[], np.ndarray], where: str) -> Basis:
    """A basis written as text: a dict (JSON, or dftio's Python literal ``{'Si': '1s1p'}``), or
    DeePTB's one basis string per atom line, mapped to elements with ``numbers()`` (atomic numbers,
    only called for the per-atom form). Errors are DatasetError naming ``where``."""
    text = text.strip()
    if not text:
        raise DatasetError(f"{where}: empty basis")
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError:
            try:
                spec = ast.literal_eval(text)
            except (ValueError, SyntaxError) as exc:
                raise DatasetError(f"{where}: cannot parse basis dict {text[:80]!r}: {exc}") from None
        if not isinstance(spec, dict):
            raise DatasetError(f"{where}: expected a dict such as {{'Si': '1s1p'}}, got {text[:80]!r}")
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        numbers = numbers()
        if len(lines) != len(numbers):
            raise DatasetError(f"{where}: per-atom basis has {len(lines)} lines but the structure has "
                               f"{len(numbers)} atoms")
        spec = {}
        for a, (z, b) in enumerate(zip(numbers, lines)):
            sym = element_symbol(int(z))
            if spec.setdefault(sym, b) != b:
                raise DatasetError(f"{where}: line {a + 1}: atom {a} ({sym}) has basis {b!r} but an "
                                   f"earlier {sym} atom has {spec[sym]!r}")
    try:
        return Basis(spec)
    except BasisError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _parse_basis_dat(path: Path, numbers: Callable[[], np.ndarray]) -> Basis:
    """basis.dat (see :func:`basis_from_text`; ``numbers`` gives the first frame's atomic numbers)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read basis file: {exc}") from None
    return basis_from_text(text, numbers, str(path))


class TrajectoryFolder:
    """One trajectory folder (``<prefix>.<n>``): F frames of the same system with optional labels.

    ``info``: the folder's own ``info.json`` if present, else the ``info`` argument, else
    ``<parent>/info.json``, else DatasetError. ``basis``: the argument, else ``basis.dat``, else
    None (then asking for blocks raises DatasetError). Files are read lazily and cached (structure,
    k-points, eigenvalues); block files are read per frame. ``info_source``: where the info came
    from (a file path, or "the info argument"), for messages."""

    def __init__(self, path: str | Path, basis: Basis | dict | None = None, info: Info | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: trajectory folder does not exist")
        own = self.path / "info.json"
        if own.is_file():
            self.info, self.info_source = read_info(own), str(own)
        elif info is not None:
            self.info, self.info_source = info.model_copy(deep=True), "the info argument"
        elif (self.path.parent / "info.json").is_file():
            self.info_source = str(self.path.parent / "info.json")
            self.info = read_info(self.info_source)
        else:
            raise DatasetError(f"{own}: missing info.json (and no {self.path.parent / 'info.json'} to fall "
                               f"back on)")
        self._structures: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._kpoints: np.ndarray | None | bool = False  # False = not loaded yet
        self._eigenvalues: np.ndarray | None | bool = False
        if basis is not None:
            try:
                self.basis: Basis | None = Basis(basis)
            except BasisError as exc:
                raise DatasetError(f"{self.path}: basis argument: {exc}") from None
        elif (self.path / "basis.dat").is_file():
            self.basis = _parse_basis_dat(self.path / "basis.dat", lambda: self._load_structures()[0][0])
        else:
            self.basis = None

    def __repr__(self) -> str:
        return f"TrajectoryFolder({str(self.path)!r}, pos_type={self.info.pos_type!r}, basis={self.basis!r})"

    # ------------------------------------------------------------------ structure
    @property
    def nframes(self) -> int:
        """Frames in the folder: the trajectory length for ``pos_type "ase"``, else ``info.nframes``."""
        if self.info.pos_type == "ase":
            return len(self._load_structures()[0])
        return self.info.nframes

    def __len__(self) -> int:
        return self.nframes

    @property
    def natoms(self) -> int:
        return self._load_structures()[0].shape[1]

    def _load_structures(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numbers (F, N) int, positions (F, N, 3) Cartesian Angstrom, cells (F, 3, 3))."""
        if self._structures is None:
            if self.info.pos_type == "ase":
                self._structures = self._load_traj()
            else:
                self._structures = self._load_text()
        return self._structures

    def _load_text(self):
        F, pbc = self.info.nframes, any(self.info.pbc3)
        need = ["positions.dat", "atomic_numbers.dat"] + (["cell.dat"] if pbc or self.info.pos_type == "frac" else [])
        missing = [n for n in need if not (self.path / n).is_file()]
        if missing:
            raise DatasetError(f"{self.path / missing[0]}: missing structure file (pos_type "
                               f"{self.info.pos_type!r} needs {need})")
        p = self.path / "positions.dat"
        pos = _load_txt(p, 2)
        if pos.shape[1] != 3:
            raise DatasetError(f"{p}: expected 3 columns, got {pos.shape[1]}")
        rows = pos.shape[0]
        if self.info.natoms == -1:
            if rows % F:
                raise DatasetError(f"{p}: {rows} rows cannot be split into nframes = {F} frames")
            N = rows // F
        else:
            N = self.info.natoms
            if rows != F * N:
                raise DatasetError(f"{p}: {rows} rows but nframes * natoms = {F} * {N} = {F * N} "
                                   f"(info.json of {self.path})")
        if not np.isfinite(pos).all():
            bad = int(np.argwhere(~np.isfinite(pos))[0, 0])
            raise DatasetError(f"{p}: NaN or infinity in row {bad + 1}")
        a = self.path / "atomic_numbers.dat"
        z = _load_txt(a, 1).reshape(-1)
        if len(z) not in (N, F * N):
            raise DatasetError(f"{a}: {len(z)} atomic numbers, expected natoms = {N} or nframes * natoms = {F * N}")
        if not np.isfinite(z).all() or (z != np.round(z)).any() or (z < 1).any() or (z > 118).any():
            raise DatasetError(f"{a}: atomic numbers must be integers 1..118")
        z = np.broadcast_to(z.astype(np.int64).reshape(-1, N), (F, N)).copy()
        c = self.path / "cell.dat"
        if c.is_file():
            cell = _load_txt(c, 2)
            if cell.shape[1] != 3 or cell.shape[0] not in (3, 3 * F):
                raise DatasetError(f"{c}: shape {cell.shape}, expected (3, 3) or (3 * nframes, 3) = ({3 * F}, 3)")
            if not np.isfinite(cell).all():
                raise DatasetError(f"{c}: NaN or infinity in the cell")
            cells = np.broadcast_to(cell.reshape(-1, 3, 3), (F, 3, 3)).copy()
        else:
            cells = np.zeros((F, 3, 3))
        pos = pos.reshape(F, N, 3)
        if self.info.pos_type == "frac":
            pos = np.einsum("fni,fij->fnj", pos, cells)
        return z, pos, cells

    def _load_traj(self):
        trajs = sorted(self.path.glob("*.traj"))
        if len(trajs) != 1:
            what = "missing structure file: no *.traj" if not trajs else f"{len(trajs)} *.traj files, expected one"
            raise DatasetError(f"{self.path}: {what} (pos_type 'ase')")
        t = trajs[0]
        from ase.io.trajectory import Trajectory

        try:
            with Trajectory(str(t), "r") as traj:
                atoms = [traj[k] for k in range(len(traj))]
        except Exception as exc:  # ASE/ulm raise many kinds of errors for bad files
            raise DatasetError(f"{t}: cannot read ASE trajectory: {type(exc).__name__}: {exc}") from None
        if not atoms:
            raise DatasetError(f"{t}: empty trajectory")
        N = len(atoms[0])
        if any(len(at) != N for at in atoms):
            raise DatasetError(f"{t}: frames have different atom counts {sorted({len(at) for at in atoms})}")
        if self.info.natoms not in (-1, N):
            warnings.warn(f"{t}: info.json says natoms = {self.info.natoms}, the trajectory has {N}; "
                          f"using the trajectory", DatasetWarning, stacklevel=3)
        if self.info.nframes != len(atoms):
            warnings.warn(f"{t}: info.json says nframes = {self.info.nframes}, the trajectory has "
                          f"{len(atoms)}; using the trajectory", DatasetWarning, stacklevel=3)
        z = np.stack([at.get_atomic_numbers() for at in atoms]).astype(np.int64)
        pos = np.stack([at.get_positions() for at in atoms]).astype(np.float64)
        cells = np.stack([np.asarray(at.get_cell()) for at in atoms]).astype(np.float64)
        has = np.abs(cells).max(axis=(1, 2)) >= 1e-6
        if has.any() and not has.all():
            raise DatasetError(f"{t}: some frames have a cell and some do not")
        tpbc = np.array([at.get_pbc() for at in atoms])
        if (tpbc != np.array(self.info.pbc3)).any():
            warnings.warn(f"{t}: trajectory pbc {tpbc[0].tolist()} differs from info.json pbc "
                          f"{list(self.info.pbc3)}; using info.json", DatasetWarning, stacklevel=3)
        if not np.isfinite(pos).all():
            raise DatasetError(f"{t}: NaN or infinity in the positions")
        return z, pos, cells

    def structure(self, k: int) -> Structure:
        """Structure of frame k, checked (finite, sane cell, no two atoms closer than 0.1 A)."""
        k = self._index(k)
        z, pos, cells = self._load_structures()
        src = f"{self.path} frame {k}"
        try:
            s = Structure(z[k], pos[k], cells[k], np.array(self.info.pbc3), source=src)
            s.check_distances()
        except (StructureError, BasisError) as exc:
            raise DatasetError(f"{self._structure_file()}: frame {k}: {exc}") from None
        return s

    def _structure_file(self) -> Path:
        if self.info.pos_type == "ase":
            trajs = sorted(self.path.glob("*.traj"))
            return trajs[0] if trajs else self.path
        return self.path / "positions.dat"

    def _index(self, k: int) -> int:
        n = self.nframes
        if not -n <= k < n:
            raise IndexError(f"{self.path}: frame {k} out of range for {n} frames")
        return k % n

    # ------------------------------------------------------------------ labels
    def block_file(self, quantity: str) -> Path | None:
        """The block file of ``quantity`` ("hamiltonian", "overlap", "density_matrix") or None."""
        for name in BLOCK_FILES[quantity]:
            if (self.path / name).is_file():
                return self.path / name
        return None

    def kpoints(self) -> np.ndarray | None:
        """``kpoints.npy`` as (nk, 3) or (F, nk, 3) fractional, or None when absent."""
        if self._kpoints is False:
            p = self.path / "kpoints.npy"
            if not p.is_file():
                self._kpoints = None
            else:
                kp = _load_npy(p)
                F = self.nframes
                if not (kp.ndim == 2 and kp.shape[1] == 3) and not (kp.ndim == 3 and kp.shape[0] == F and kp.shape[2] == 3):
                    raise DatasetError(f"{p}: shape {kp.shape}, expected (nk, 3) or (nframes, nk, 3) with nframes = {F}")
                self._kpoints = kp
        return self._kpoints

    def eigenvalues(self) -> np.ndarray | None:
        """``eigenvalues.npy`` as (F, nk, nb) in eV, or None when absent."""
        if self._eigenvalues is False:
            p = self.path / "eigenvalues.npy"
            if not p.is_file():
                self._eigenvalues = None
            else:
                ev = _load_npy(p)
                F = self.nframes
                if ev.ndim == 2 and F == 1:
                    ev = ev[None]
                if ev.ndim != 3:
                    raise DatasetError(f"{p}: shape {ev.shape}, expected (nframes, nk, nb) or (nk, nb) for one frame")
                if ev.shape[0] != F:
                    raise DatasetError(f"{p}: eigenvalues.shape[0] = {ev.shape[0]} but nframes = {F}")
                kp = self.kpoints()
                if kp is None:
                    raise DatasetError(f"{self.path / 'kpoints.npy'}: missing, but {p.name} needs it")
                if ev.shape[1] != kp.shape[-2]:
                    raise DatasetError(f"{p}: {ev.shape[1]} k-points but kpoints.npy has {kp.shape[-2]}")
                self._eigenvalues = ev
        return self._eigenvalues

    def operator(self, quantity: str, k: int, structure: Structure | None = None) -> Operator | None:
        """The blocks of frame k of ``quantity`` as an Operator (None when the file is absent)."""
        path = self.block_file(quantity)
        if path is None:
            return None
        k = self._index(k)
        if self.basis is None:
            raise DatasetError(f"{path}: reading blocks needs a basis, but none was given and "
                               f"{self.path / 'basis.dat'} does not exist")
        structure = structure if structure is not None else self.structure(k)
        group, blocks = _read_h5_group(path, k, self.nframes)
        try:
            return Operator.from_blocks(structure, self.basis, blocks)
        except BlockError as exc:
            raise DatasetError(f"{path}: group {group!r}: {exc}") from None
        except BasisError as exc:
            raise DatasetError(f"{path}: {exc}") from None

    def frame(self, k: int, hamiltonian: bool = True, overlap: bool = True, density_matrix: bool = True,
              eigenvalues: bool = True) -> Frame:
        """Frame k with the labels that exist and are asked for (k-points whenever present)."""
        k = self._index(k)
        s = self.structure(k)
        fr = Frame(structure=s, source=f"{self.path} frame {k}")
        for q, want in (("hamiltonian", hamiltonian), ("overlap", overlap), ("density_matrix", density_matrix)):
            if want:
                setattr(fr, q, self.operator(q, k, s))
        kp = self.kpoints()
        if kp is not None:
            fr.kpoints = kp[k] if kp.ndim == 3 else kp
        if eigenvalues:
            ev = self.eigenvalues()
            if ev is not None:
                fr.eigenvalues = ev[k]
        return fr

    def frames(self, **kw) -> Iterator[Frame]:
        """All frames in order; keyword arguments as :meth:`frame`."""
        for k in range(self.nframes):
            yield self.frame(k, **kw)


# ====================================================================== datasets


def find_folders(root: str | Path, prefix: str, separator: str = ".") -> list[Path]:
    """Trajectory folders ``<root>/<prefix><separator>*`` in lexicographic order of their names
    (``Si64.10`` before ``Si64.2``, as DeePTB). Each must hold a .dat/.traj/.h5/.mdb file.
    No matching folder is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root folder does not exist")
    start = f"{prefix}{separator}"
    found = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(start)), key=lambda p: p.name)
    if not found:
        raise DatasetError(f"{root}: no folder matching {start + '*'!r}")
    for p in found:
        if not any(f.is_file() and f.name.endswith(DATA_SUFFIXES) for f in p.iterdir()):
            raise DatasetError(f"{p}: no data file (*.dat, *.traj, *.h5 or *.mdb) in this folder")
    return found


def data_folders(root: str | Path) -> list[Path]:
    """The sub-folders of ``root`` that hold data files (.dat/.traj/.h5/.mdb), sorted by name."""
    root = Path(root)
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and any(f.is_file() and f.name.endswith(DATA_SUFFIXES) for f in p.iterdir()))


def read_fermi_level(path: str | Path) -> float | None:
    """The Fermi level (eV) in ``fermi_level.json`` of a trajectory folder (written by ``eqtb
    parse``), or None when the file is absent or holds null."""
    f = Path(path) / "fermi_level.json"
    if not f.is_file():
        return None
    try:
        value = json.loads(f.read_text())["fermi_level"]
        if value is None:
            return None
        value = float(value)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{f}: expected {{\"fermi_level\": <eV>}} ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(value):
        raise DatasetError(f"{f}: fermi_level is not finite")
    return value


def read_dataset(root: str | Path, prefix: str, separator: str = ".",
                 basis: Basis | dict | None = None) -> list[TrajectoryFolder]:
    """All trajectory folders of a dataset; ``<root>/info.json`` (if present) is the fallback info."""
    folders = find_folders(root, prefix, separator)
    public = Path(root) / "info.json"
    # parsed once, and only when some folder has no info.json of its own
    need = public.is_file() and any(not (p / "info.json").is_file() for p in folders)
    info = read_info(public) if need else None
    if basis is not None and not isinstance(basis, Basis):
        try:
            basis = Basis(basis)
        except BasisError as exc:
            raise DatasetError(f"{root}: basis argument: {exc}") from None
    return [TrajectoryFolder(p, basis=basis, info=info) for p in folders]


# ====================================================================== writing


def _same(arrays: list[np.ndarray]) -> bool:
    return all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays[1:])


def write_folder(path: str | Path, frames: list[Frame], pos_type: str = "cart", structure_format: str = "text",
                 with_info: bool = True, with_basis: bool = True, both_triangles: bool = False,
                 bandinfo: BandInfo | dict | None = None, overwrite: bool = False) -> Path:
    """Write ``frames`` as one trajectory folder in the DeePTB/dftio format (spec Appendix B).

    ``structure_format "text"``: positions.dat (``pos_type`` "cart" = Cartesian Angstrom, or
    "frac"), cell.dat (one 3x3 block if all frames share the cell; none for a molecule without a
    cell: no periodic direction and a zero cell, as DeePTB holds molecules), atomic_numbers.dat (N
    integers if shared), pbc.dat; ``"ase"``: ``xdat.traj`` and info ``pos_type "ase"``. Blocks go to
    hamiltonians.h5 / overlaps.h5 / density_matrices.h5, groups ``"0".."F-1"``, 0-based keys, every
    onsite block, off-site blocks of the canonical half (plus the transposed other triangle when
    ``both_triangles``), in the operator's dtype (float64 after reading). ``kpoints.npy`` is (nk, 3)
    when shared, else (F, nk, 3); ``eigenvalues.npy`` is (F, nk, nb) eV. ``info.json`` gets nframes,
    natoms, pos_type, pbc and (with eigenvalues) ``bandinfo`` (default band_min 0, rest null);
    ``basis.dat`` the dftio dict form. Written into a temporary sibling folder renamed into place at
    the end, so a crash never leaves a half folder. An existing non-empty ``path`` is an error unless
    ``overwrite``. All frames must share the atom count, pbc and basis."""
    path = Path(path)
    frames = list(frames)
    if not frames:
        raise DatasetError(f"{path}: no frames to write")
    if pos_type == "ase":
        structure_format = "ase"
    if structure_format not in ("text", "ase"):
        raise DatasetError(f"{path}: structure_format must be 'text' or 'ase', got {structure_format!r}")
    if structure_format == "text" and pos_type not in ("cart", "frac"):
        raise DatasetError(f"{path}: pos_type must be 'cart' or 'frac' for text structure files, got {pos_type!r}")
    F = len(frames)
    structs = [f.structure for f in frames]
    N = structs[0].natoms
    if any(s.natoms != N for s in structs):
        raise DatasetError(f"{path}: frames have different atom counts {sorted({s.natoms for s in structs})}")
    pbc = structs[0].pbc
    if any((s.pbc != pbc).any() for s in structs):
        raise DatasetError(f"{path}: frames have different pbc; info.json holds one")

    ops: dict[str, list[Operator]] = {}
    basis: Basis | None = None
    for q in BLOCK_FILES:
        have = [getattr(f, q) is not None for f in frames]
        if any(have) and not all(have):
            raise DatasetError(f"{path}: {q} given for some frames only ({sum(have)} of {F})")
        if all(have):
            ops[q] = [getattr(f, q) for f in frames]
            for k, op in enumerate(ops[q]):
                if basis is None:
                    basis = op.basis
                elif op.basis != basis:
                    raise DatasetError(f"{path}: frame {k} {q} has basis {op.basis!r}, expected {basis!r}")
                if op.natoms != N:
                    raise DatasetError(f"{path}: frame {k} {q} has {op.natoms} atoms, the structure {N}")
    for name in ("kpoints", "eigenvalues"):
        have = [getattr(f, name) is not None for f in frames]
        if any(have) and not all(have):
            raise DatasetError(f"{path}: {name} given for some frames only ({sum(have)} of {F})")
    kps = [np.asarray(f.kpoints, dtype=np.float64) for f in frames] if frames[0].kpoints is not None else None
    evs = [np.asarray(f.eigenvalues, dtype=np.float64) for f in frames] if frames[0].eigenvalues is not None else None
    if kps is not None and any(k.ndim != 2 or k.shape[1] != 3 or k.shape != kps[0].shape for k in kps):
        raise DatasetError(f"{path}: kpoints must be (nk, 3) and equal in shape for all frames")
    if evs is not None:
        if kps is None:
            raise DatasetError(f"{path}: eigenvalues need kpoints")
        if any(e.ndim != 2 or e.shape != evs[0].shape or e.shape[0] != kps[0].shape[0] for e in evs):
            raise DatasetError(f"{path}: eigenvalues must be (nk, nb) with nk = {kps[0].shape[0]}, equal for all frames")
        for k, e in enumerate(evs):
            if not np.isfinite(e).all():
                raise DatasetError(f"{path}: frame {k} eigenvalues contain NaN or infinity")

    info = {"nframes": F, "natoms": N, "pos_type": "ase" if structure_format == "ase" else pos_type,
            "pbc": bool(pbc[0]) if (pbc == pbc[0]).all() else [bool(x) for x in pbc]}
    if evs is not None:
        if bandinfo is None:
            bandinfo = BandInfo()
        elif isinstance(bandinfo, dict):
            bandinfo = BandInfo.model_validate(bandinfo)
        info["bandinfo"] = bandinfo.model_dump()

    with atomic_directory(path, overwrite, DatasetError) as tmp:
        if with_info:
            (tmp / "info.json").write_text(json.dumps(info, indent=4) + "\n")
        if structure_format == "text":
            _write_text_structures(tmp, structs, pos_type)
        else:
            from ase.io.trajectory import Trajectory

            with Trajectory(str(tmp / "xdat.traj"), "w") as traj:
                for s in structs:
                    traj.write(s.to_ase())
        if with_basis and basis is not None:
            (tmp / "basis.dat").write_text(str(basis.spec))
        for q, lst in ops.items():
            _write_h5(tmp / BLOCK_FILES[q][0], lst, both_triangles)
        if kps is not None:
            np.save(tmp / "kpoints.npy", kps[0] if _same(kps) else np.stack(kps))
        if evs is not None:
            np.save(tmp / "eigenvalues.npy", np.stack(evs))
    return path


def _write_text_structures(folder: Path, structs: list[Structure], pos_type: str) -> None:
    cells = [s.cell for s in structs]
    pos = np.concatenate([s.positions for s in structs])
    if pos_type == "frac":
        fr = []
        for k, s in enumerate(structs):
            if abs(np.linalg.det(s.cell)) < 1e-6:
                raise DatasetError(f"{folder}: frame {k} has no cell; cannot write fractional positions")
            fr.append(np.linalg.solve(s.cell.T, s.positions.T).T)
        pos = np.concatenate(fr)
    np.savetxt(folder / "positions.dat", pos, fmt="%.18e")
    if any(s.pbc.any() for s in structs) or any(np.abs(c).max() > 0 for c in cells):
        np.savetxt(folder / "cell.dat", cells[0] if _same(cells) else np.concatenate(cells), fmt="%.18e")
    # else a molecule without a cell: no cell.dat, as DeePTB's format holds molecules
    numbers = [s.numbers for s in structs]
    np.savetxt(folder / "atomic_numbers.dat", numbers[0] if _same(numbers) else np.concatenate(numbers), fmt="%d")
    np.savetxt(folder / "pbc.dat", structs[0].pbc.astype(np.float64))


def _write_h5(path: Path, ops: list[Operator], both_triangles: bool) -> None:
    import h5py

    with h5py.File(path, "w") as h:
        for k, op in enumerate(ops):
            gid = h.create_group(str(k)).id
            types, spaces = {}, {}
            # low-level API: plain contiguous datasets, as g.create_dataset makes, about twice as fast
            for key, blk in op.to_blocks(both_triangles=both_triangles).items():
                blk = np.ascontiguousarray(blk)
                tid = types.get(blk.dtype) or types.setdefault(blk.dtype, h5py.h5t.py_create(blk.dtype))
                sid = spaces.get(blk.shape) or spaces.setdefault(blk.shape, h5py.h5s.create_simple(blk.shape))
                h5py.h5d.create(gid, key.encode(), tid, sid).write(h5py.h5s.ALL, h5py.h5s.ALL, blk)

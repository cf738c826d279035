"""LMDB datasets: one database entry per frame, streamed from disk (spec FORMATS.md 1.7).

Layout written by :func:`write_lmdb` (dftio's layout, readable by DeePTB's ``LMDBDataset``):

* An LMDB environment directory (``data.mdb`` + ``lock.mdb``), unnamed database only.
* Key of entry k: ``k.to_bytes(4, "big")`` -- a 4-byte big-endian counter 0, 1, 2, ... in write
  order; the number of entries is the number of frames.
* Value: ``pickle.dumps(dict)`` with

  - ``"atomic_numbers"`` int32 (N,); ``"pos"`` (N, 3) Cartesian Angstrom; ``"cell"`` (3, 3), rows are
    the lattice vectors, Angstrom (all zeros without a cell); ``"pbc"`` bool (3,);
  - ``"hamiltonian"`` (eV), ``"overlap"``, ``"density_matrix"`` (dimensionless), each optional: dict
    ``"i_j_Rx_Ry_Rz" -> ndarray (norb_i, norb_j)``, 0-based atoms, R the cell of atom j, eqtb
    (= DeePTB) orbital order -- the block convention of section 1.6. Every onsite block plus the
    canonical half of the off-site blocks (``both_triangles=True`` adds the other triangle, as dftio
    stores it; DeePTB's reader accepts either);
  - ``"kpoint"`` (nk, 3) fractional reciprocal coordinates and ``"eigenvalue"`` (nk, nb) eV, optional;
  - ``"basis"``: JSON text of the basis dict, e.g. ``'{"Si": "1s1p"}'`` -- needed to read blocks back;
    kept inside every value (a separate metadata entry would break the entries == frames rule that
    DeePTB's reader relies on);
  - ``"idx"``, ``"nf"``: dftio's bookkeeping -- :func:`folder_to_lmdb` stores the index of the
    trajectory folder and of the frame inside it, :func:`write_lmdb` the entry index and 0;
    ``"source"``: a readable origin string.

  **Deviation from dftio:** ``pos`` and ``cell`` are stored float64 (dftio: float32) and blocks in
  the operator's dtype (float64 after reading; ``block_dtype=np.float32`` halves the size), so a
  round trip is exact. Readers (DeePTB's, dftio's, ours) cast anyway.

:class:`LMDBDataset` reads this layout and the two foreign ones:

* dftio (``data.<pid>.lmdb``): float32 ``pos``/``cell``, no basis (pass ``basis=``), (nk, nb)
  ``eigenvalue`` and (nk, 3) ``kpoint`` arrays;
* DeePTB's own ABACUS parser: ``"basis"`` as UTF-8 bytes of one basis string per atom line
  (``b"2s2p1d\\n2s2p1d\\n..."``), possibly 1-based block keys (detected as for block files), and
  ``"kpoint"``/``"eigenvalue"`` as raw float32 bytes whose shape is lost: these are skipped with a
  :class:`~eqtb.data.folder.DatasetWarning` (the frame gets no k-points/eigenvalues).

Environments are opened lazily, read-only, ``lock=False`` (no reader lock table: safe on read-only
file systems and from many processes), one handle per database per process shared by every dataset
(py-lmdb refuses a second one), reopened in a forked child (DataLoader workers) after closing the
inherited copy; a dataset holds no handle itself, so it pickles for ``spawn`` workers. Do not write
to a database while datasets read it (``append``/``overwrite``): their entry counts are fixed at
construction.

Memory does not grow with the dataset: each ``__getitem__`` unpickles one entry (measured: private
memory flat within ~40 MiB while streaming 320 MB of 6.6 MB frames, see tests/test_lmdb.py). The
pages LMDB maps are clean, file-backed and shared: the kernel counts the ones touched in RSS
(``RssFile``) but drops them under memory pressure; they do not count against ``RLIMIT_DATA``.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from eqtb.basis import Basis, BasisError
from eqtb.data.atomic import atomic_directory
from eqtb.data.folder import DatasetError, DatasetWarning, Frame, TrajectoryFolder, basis_from_text, find_folders
from eqtb.structure import Structure, StructureError
from eqtb.bonds import BlockError
from eqtb.operator import Operator
from eqtb.quantities import QUANTITIES

__all__ = ["write_lmdb", "LMDBDataset", "folder_to_lmdb", "close_readers", "DEFAULT_MAP_SIZE", "entry_key"]

#: virtual address space reserved for a database being written (1 TiB, as dftio). Only address
#: space: the file grows with the data. Raise it for databases larger than that.
DEFAULT_MAP_SIZE = 1 << 40
#: commit the write transaction after this many bytes of values (and at the end)
COMMIT_BYTES = 256 << 20


def _lmdb():
    try:
        import lmdb
    except ImportError:  # pragma: no cover - lmdb is a dependency
        raise ImportError("LMDB datasets need the 'lmdb' package: pip install lmdb") from None
    return lmdb


def entry_key(k: int) -> bytes:
    """Key of entry k: 4-byte big-endian unsigned integer (dftio / DeePTB)."""
    return int(k).to_bytes(4, "big")


# ====================================================================== reader environments
#
# LMDB (and py-lmdb, which enforces it) allows one open environment per database file per process,
# and a handle inherited through fork() must not be used by the child. Read-only environments are
# therefore shared by every LMDBDataset of a process through this registry, keyed by the resolved
# directory and checked against the data file's (device, inode) so that a database replaced on disk
# is reopened. A forked child closes its inherited copies (only its own mappings; with lock=False
# nothing is shared with the parent) and opens its own.

_READERS: dict[str, tuple[tuple | None, object]] = {}
_READERS_PID: int | None = None


def _file_id(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _close_quietly(env) -> None:
    try:
        env.close()
    except Exception:  # pragma: no cover - closing an already-closed handle
        pass


def _reader_env(path: Path, readahead: bool = False):
    """The shared read-only environment of the LMDB directory ``path`` in this process."""
    global _READERS_PID
    pid = os.getpid()
    if _READERS_PID != pid:
        for _, env in _READERS.values():  # inherited from the parent: unusable here
            _close_quietly(env)
        _READERS.clear()
        _READERS_PID = pid
    real = os.path.realpath(path)
    fid = _file_id(Path(real) / "data.mdb")
    hit = _READERS.get(real)
    if hit is not None:
        if hit[0] == fid and fid is not None:
            return hit[1]
        _close_quietly(hit[1])
        del _READERS[real]
    lmdb = _lmdb()
    if not path.exists():
        raise DatasetError(f"{path}: LMDB database does not exist")
    if not path.is_dir() or fid is None:
        raise DatasetError(f"{path}: not an LMDB database directory (no data.mdb inside)")
    try:
        env = lmdb.open(real, subdir=True, readonly=True, lock=False, readahead=readahead, meminit=False)
    except lmdb.Error as exc:
        raise DatasetError(f"{path}: cannot open LMDB database: {exc}") from None
    _READERS[real] = (fid, env)
    return env


def close_readers(paths: Iterable[str | Path] | None = None) -> None:
    """Close this process's shared read-only environments (of ``paths``, default all); datasets
    reopen them on their next access."""
    if _READERS_PID != os.getpid():
        return
    reals = list(_READERS) if paths is None else [os.path.realpath(p) for p in paths]
    for real in reals:
        hit = _READERS.pop(real, None)
        if hit is not None:
            _close_quietly(hit[1])


# ====================================================================== writing


def _entry(frame: Frame, both_triangles: bool, block_dtype, extra: dict) -> tuple[dict, Basis | None]:
    s = frame.structure
    value: dict = {
        "atomic_numbers": s.numbers.astype(np.int32),
        "pos": np.ascontiguousarray(s.positions, dtype=np.float64),
        "cell": np.ascontiguousarray(s.cell, dtype=np.float64),
        "pbc": s.pbc.astype(bool),
    }
    basis = None
    for q in QUANTITIES:
        op = getattr(frame, q)
        if op is None:
            continue
        if op.natoms != s.natoms or not np.array_equal(op.structure.numbers, s.numbers):
            raise DatasetError(f"{frame.source or 'frame'}: the {q} operator belongs to a different structure")
        if basis is None:
            basis = op.basis
        elif op.basis != basis:
            raise DatasetError(f"{frame.source or 'frame'}: the {q} operator has basis {op.basis!r}, "
                               f"another operator {basis!r}")
        blocks = op.to_blocks(both_triangles=both_triangles)
        if block_dtype is not None:
            blocks = {k: v.astype(block_dtype) for k, v in blocks.items()}
        value[q] = blocks
    if basis is not None:
        value["basis"] = json.dumps(basis.spec)
    if frame.kpoints is not None:
        value["kpoint"] = np.asarray(frame.kpoints, dtype=np.float64).reshape(-1, 3)
    if frame.eigenvalues is not None:
        ev = np.asarray(frame.eigenvalues, dtype=np.float64)
        if ev.ndim != 2 or frame.kpoints is None or ev.shape[0] != value["kpoint"].shape[0]:
            raise DatasetError(f"{frame.source or 'frame'}: eigenvalues must be (nk, nb) with the frame's "
                               f"k-points, got shape {ev.shape}")
        value["eigenvalue"] = ev
    if frame.source:
        value["source"] = frame.source
    value.update(extra)
    return value, basis


def _write_entries(items: Iterable[tuple[Frame, dict]], path: Path, map_size: int, both_triangles: bool,
                   block_dtype, overwrite: bool, append: bool) -> int:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{path}: exists and is not a directory")
    existing = path.is_dir() and any(path.iterdir())
    if existing and not (path / "data.mdb").is_file():
        raise DatasetError(f"{path}: a non-empty directory that is not an LMDB database")
    if existing and append:
        close_readers([path])  # py-lmdb refuses a second handle on the same files in one process
        return _put_all(items, path, map_size, both_triangles, block_dtype)
    if existing and not overwrite:
        raise DatasetError(f"{path}: already exists (pass overwrite=True to replace it, or append=True)")
    # a new database is built in a temporary sibling and renamed into place: a failure leaves nothing
    with atomic_directory(path, overwrite=True) as tmp:
        n = _put_all(items, tmp, map_size, both_triangles, block_dtype)
        close_readers([path])
    return n


def _put_all(items: Iterable[tuple[Frame, dict]], path: Path, map_size: int, both_triangles: bool,
             block_dtype) -> int:
    """Append every item to the database at ``path`` (created if needed); returns the count."""
    lmdb = _lmdb()
    try:
        env = lmdb.open(str(path), map_size=map_size, subdir=True, readonly=False, lock=True,
                        meminit=False, map_async=False)
    except lmdb.Error as exc:
        raise DatasetError(f"{path}: cannot open LMDB database for writing: {exc}") from None
    try:
        start = n = env.stat()["entries"]
        txn = env.begin(write=True)
        pending = 0
        try:
            for frame, extra in items:
                value, _ = _entry(frame, both_triangles, block_dtype, {"idx": n, "nf": 0, **extra})
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                try:
                    txn.put(entry_key(n), data, overwrite=False)
                except lmdb.MapFullError:
                    raise DatasetError(f"{path}: database full at entry {n} (map_size = {map_size} bytes; "
                                       f"pass a larger map_size)") from None
                n += 1
                pending += len(data)
                if pending >= COMMIT_BYTES:
                    txn.commit()
                    txn = env.begin(write=True)
                    pending = 0
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        env.sync(True)
    finally:
        env.close()
    return n - start


def write_lmdb(frames: Iterable[Frame], path: str | Path, map_size: int = DEFAULT_MAP_SIZE,
               both_triangles: bool = False, block_dtype=None, overwrite: bool = False,
               append: bool = False) -> int:
    """Write ``frames`` (any iterable, consumed one frame at a time) to the LMDB database directory
    ``path``, one entry per frame in the layout of the module docstring. Returns the number of
    entries written.

    ``map_size``: maximum database size in bytes (address space only). ``both_triangles``: store
    (j, i, -R) blocks too (as dftio). ``block_dtype``: cast blocks (e.g. ``np.float32``); default
    keeps the operator's dtype. An existing database is an error unless ``overwrite`` (replace it)
    or ``append`` (continue the key counter after its last entry). A new database is built in a
    temporary sibling directory renamed into place at the end, so a failure (bad frame, full disk)
    leaves no half database; when appending, entries are committed every :data:`COMMIT_BYTES`
    bytes and a failure keeps the frames committed before it."""
    return _write_entries(((f, {}) for f in frames), Path(path), map_size, both_triangles, block_dtype,
                          overwrite, append)


def folder_to_lmdb(root: str | Path, prefix: str, out: str | Path, separator: str = ".",
                   basis: Basis | dict | None = None, map_size: int = DEFAULT_MAP_SIZE,
                   both_triangles: bool = False, block_dtype=None, overwrite: bool = False,
                   progress: bool = False) -> int:
    """Convert the folder dataset ``<root>/<prefix><separator>*`` (DeePTB/dftio layout, see
    :mod:`eqtb.data.folder`) to one LMDB database at ``out``, streaming frame by frame: memory is
    bounded by one frame plus one trajectory folder's small arrays (positions, eigenvalues), not by
    the dataset. Folders in DeePTB's order (lexicographic), frames in file order; ``idx`` = folder
    index, ``nf`` = frame index in it. Returns the number of frames written."""
    folders = find_folders(root, prefix, separator)
    if basis is not None and not isinstance(basis, Basis):
        try:
            basis = Basis(basis)
        except BasisError as exc:
            raise DatasetError(f"{root}: basis argument: {exc}") from None

    def items() -> Iterator[tuple[Frame, dict]]:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(folders), unit="folder", desc=f"{prefix} -> lmdb")
        try:
            for fi, path in enumerate(folders):
                # one TrajectoryFolder at a time (it caches its structures and eigenvalues)
                folder = TrajectoryFolder(path, basis=basis)
                for k in range(folder.nframes):
                    yield folder.frame(k), {"idx": fi, "nf": k}
                del folder
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    return _write_entries(items(), Path(out), map_size, both_triangles, block_dtype, overwrite, False)


# ====================================================================== reading


def _parse_basis_value(raw, numbers: np.ndarray, where: str) -> Basis:
    """The ``"basis"`` of an entry: a dict, or text (our JSON, dftio's ``str(dict)``, DeePTB's bytes of
    one basis string per atom line), see :func:`eqtb.data.folder.basis_from_text`."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    if isinstance(raw, dict):
        try:
            return Basis(raw)
        except BasisError as exc:
            raise DatasetError(f"{where}: {exc}") from None
    if isinstance(raw, str):
        return basis_from_text(raw, lambda: numbers, where)
    raise DatasetError(f"{where}: unrecognised basis value of type {type(raw).__name__}")


class LMDBDataset:
    """Frames stored in one or several LMDB databases (concatenated in the given order).

    ``path_or_paths``: an LMDB environment directory, or a sequence of them (e.g. dftio's
    ``data.<pid>.lmdb`` folders; see :meth:`from_root`). ``basis``: used for the blocks of every
    entry (overrides a basis stored in the entries; required for dftio output, which stores none).
    ``hamiltonian``/``overlap``/``density_matrix``/``eigenvalues``: which labels to build (skipping
    one saves its unpickled blocks from becoming an Operator). ``check``: check interatomic
    distances as the folder reader does. ``readahead``: OS read-ahead on the memory map (off by
    default: datasets larger than RAM are read in random order during training).

    ``len(ds)`` is the total number of entries; ``ds[k]`` (negative k allowed) is a
    :class:`~eqtb.data.folder.Frame`: structure (Angstrom), H (eV), S, D as Operators in eqtb
    order, k-points (nk, 3) fractional and eigenvalues (nk, nb) eV when stored. Safe in DataLoader
    workers (the environments are reopened in each process)."""

    def __init__(self, path_or_paths: str | Path | Sequence[str | Path], basis: Basis | dict | None = None,
                 hamiltonian: bool = True, overlap: bool = True, density_matrix: bool = True,
                 eigenvalues: bool = True, check: bool = True, readahead: bool = False):
        if isinstance(path_or_paths, (str, os.PathLike)):
            paths = [Path(path_or_paths)]
        else:
            paths = [Path(p) for p in path_or_paths]
        if not paths:
            raise DatasetError("LMDBDataset: no database paths given")
        self.paths = paths
        if basis is not None and not isinstance(basis, Basis):
            try:
                basis = Basis(basis)
            except BasisError as exc:
                raise DatasetError(f"{paths[0]}: basis argument: {exc}") from None
        self.basis = basis
        self.want = {"hamiltonian": hamiltonian, "overlap": overlap, "density_matrix": density_matrix}
        self.eigenvalues = eigenvalues
        self.check = check
        self.readahead = readahead
        self.counts = np.array([_reader_env(p, readahead).stat()["entries"] for p in paths], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self._bases: dict = {}
        self._warned: set[str] = set()

    @classmethod
    def from_root(cls, root: str | Path, prefix: str = "data", separator: str = ".", **kw) -> "LMDBDataset":
        """All LMDB directories ``<root>/<prefix><separator>*`` in lexicographic order (DeePTB's
        ``LMDBDataset`` rule; dftio writes ``data.<pid>.lmdb``, so the default prefix is ``data``)."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset root folder does not exist")
        start = f"{prefix}{separator}"
        found = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(start)
                        and (p / "data.mdb").is_file()), key=lambda p: p.name)
        if not found:
            raise DatasetError(f"{root}: no LMDB directory matching {start + '*'!r} (with a data.mdb)")
        return cls(found, **kw)

    # ------------------------------------------------------------------ environments
    def close(self) -> None:
        """Close this process's environments of the dataset's databases (reopened on next access)."""
        close_readers(self.paths)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, k: int) -> tuple[int, int]:
        n = len(self)
        if not isinstance(k, (int, np.integer)):
            raise TypeError(f"LMDBDataset indices must be integers, got {type(k).__name__}")
        if not -n <= k < n:
            raise IndexError(f"entry {k} out of range for {n} entries")
        k = int(k) % n
        db = int(np.searchsorted(self.offsets, k, side="right")) - 1
        return db, k - int(self.offsets[db])

    def raw(self, k: int) -> dict:
        """The unpickled value of entry k (a dict, as stored)."""
        db, local = self._locate(k)
        env = _reader_env(self.paths[db], self.readahead)
        where = f"{self.paths[db]} entry {local}"
        with env.begin(buffers=True) as txn:
            buf = txn.get(entry_key(local))
            if buf is None:
                raise DatasetError(f"{where}: key {entry_key(local)!r} not found (keys must be 4-byte "
                                   f"big-endian counters 0..{int(self.counts[db]) - 1})")
            try:
                value = pickle.loads(buf)
            except Exception as exc:
                raise DatasetError(f"{where}: cannot unpickle value: {type(exc).__name__}: {exc}") from None
        if not isinstance(value, dict):
            raise DatasetError(f"{where}: value is a {type(value).__name__}, expected a dict")
        return value

    def __getitem__(self, k: int) -> Frame:
        db, local = self._locate(k)
        where = f"{self.paths[db]} entry {local}"
        value = self.raw(k)
        missing = [key for key in ("atomic_numbers", "pos") if key not in value]
        if missing:
            raise DatasetError(f"{where}: missing {missing} in the stored dict (keys: {sorted(value)})")
        try:
            numbers = np.asarray(value["atomic_numbers"]).astype(np.int64).reshape(-1)
            pos = np.asarray(value["pos"], dtype=np.float64).reshape(-1, 3)
            cell = np.asarray(value["cell"], dtype=np.float64).reshape(3, 3) if value.get("cell") is not None \
                else np.zeros((3, 3))
            pbc = np.broadcast_to(np.asarray(value.get("pbc", np.abs(cell).max() > 0), dtype=bool).reshape(-1),
                                  (3,))
            s = Structure(numbers, pos, cell, pbc, source=where)
            if self.check:
                s.check_distances()
        except (StructureError, BasisError, ValueError) as exc:
            raise DatasetError(f"{where}: structure: {exc}") from None
        fr = Frame(structure=s, source=where)
        quantities = [q for q in QUANTITIES if self.want[q] and value.get(q) is not None]
        if quantities:
            basis = self._basis(value, numbers, where)
            for q in quantities:
                blocks = value[q]
                if not isinstance(blocks, dict):
                    raise DatasetError(f"{where}: {q!r} is a {type(blocks).__name__}, expected a dict of blocks")
                try:
                    setattr(fr, q, Operator.from_blocks(s, basis, blocks))
                except (BlockError, BasisError) as exc:
                    raise DatasetError(f"{where}: {q}: {exc}") from None
        if value.get("kpoint") is not None:
            kp = value["kpoint"]
            if isinstance(kp, (bytes, bytearray, memoryview)):
                self._warn_raw(db, "kpoint")
            else:
                fr.kpoints = np.asarray(kp, dtype=np.float64).reshape(-1, 3)
        if self.eigenvalues and value.get("eigenvalue") is not None:
            ev = value["eigenvalue"]
            if isinstance(ev, (bytes, bytearray, memoryview)):
                self._warn_raw(db, "eigenvalue")
            elif fr.kpoints is not None:
                ev = np.asarray(ev, dtype=np.float64)
                ev = ev.reshape(len(fr.kpoints), -1) if ev.ndim != 2 else ev
                if ev.shape[0] != len(fr.kpoints):
                    raise DatasetError(f"{where}: eigenvalue shape {ev.shape} does not match "
                                       f"{len(fr.kpoints)} k-points")
                fr.eigenvalues = ev
        return fr

    def _basis(self, value: dict, numbers: np.ndarray, where: str) -> Basis:
        if self.basis is not None:
            return self.basis
        raw = value.get("basis")
        if raw is None:
            raise DatasetError(f"{where}: blocks need a basis, but the entry stores none (dftio output): "
                               f"pass LMDBDataset(..., basis={{'Si': '1s1p', ...}})")
        key = bytes(raw) if isinstance(raw, (bytearray, memoryview)) else raw
        try:
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in self._bases:
            return self._bases[key]
        basis = _parse_basis_value(raw, numbers, where)
        if key is not None and len(self._bases) < 1024:
            self._bases[key] = basis  # one Basis object per distinct basis: its layout caches are reused
        return basis

    def _warn_raw(self, db: int, name: str) -> None:
        tag = f"{db}:{name}"
        if tag not in self._warned:
            self._warned.add(tag)
            warnings.warn(f"{self.paths[db]}: {name!r} stored as raw bytes (DeePTB's ABACUS parser): the "
                          f"array shape is lost, so k-points/eigenvalues are skipped", DatasetWarning,
                          stacklevel=3)

    def __iter__(self) -> Iterator[Frame]:
        for k in range(len(self)):
            yield self[k]

    def __repr__(self) -> str:
        paths = str(self.paths[0]) if len(self.paths) == 1 else f"{len(self.paths)} databases"
        return f"LMDBDataset({paths!r}, entries={len(self)}, basis={self.basis!r})"

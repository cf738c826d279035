"""Parse many DFT output folders into an eqtb / DeePTB dataset (``eqtb parse``).

:func:`parse_folders` takes every entry of ``root`` whose name contains ``prefix`` (sorted by name,
so the output numbering is reproducible — dftio uses unsorted ``glob`` order), parses each with the
parser registered for ``code`` (:mod:`eqtb.data.parsers`), in its own process when ``workers > 1``,
and writes it with :func:`eqtb.data.folder.write_folder` to ``out/<formula>.<idx>`` where ``idx``
is the entry's position in the sorted input list (a failed input leaves its index unused) and
``formula`` is the Hill formula of the structure (e.g. ``Si2``, ``AsGa``).

Each output folder holds the structure (``positions.dat`` Cartesian Angstrom, ``cell.dat``,
``atomic_numbers.dat``, ``pbc.dat``), ``info.json`` (``nframes``, ``natoms``, ``pos_type "cart"``,
``pbc``, and ``bandinfo`` when eigenvalues are written), ``basis.dat`` (always, dftio's dict form),
the requested ``hamiltonians.h5`` (eV) / ``overlaps.h5`` / ``density_matrices.h5`` (canonical-half
blocks, eqtb = DeePTB orbital order), ``kpoints.npy`` + ``eigenvalues.npy`` (eV, absolute), and
``fermi_level.json`` (``{"fermi_level": E, "unit": "eV", "source": file}``) when the parser knows
the Fermi level. A folder that fails is listed in the summary with a one-line reason and does not
stop the others.
"""

from __future__ import annotations

import json
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ParseSummary", "find_inputs", "parse_folders", "parse_one"]

FORMATS = ("folder",)


@dataclass
class ParseSummary:
    """Outcome of :func:`parse_folders`: ``ok`` = [(input, output folder)], ``failed`` =
    [(input, one-line reason)], both in input order."""

    ok: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_inputs(self) -> int:
        return len(self.ok) + len(self.failed)

    def __str__(self) -> str:
        out = [f"parsed {len(self.ok)} of {self.n_inputs} folders"
               + (f"; {len(self.failed)} failed:" if self.failed else "")]
        out += [f"  FAILED {src}: {why}" for src, why in self.failed]
        return "\n".join(out)


def find_inputs(root: str | Path, prefix: str, kind: str = "folder", exclude: Path | None = None) -> list[Path]:
    """Entries of ``root`` whose name contains ``prefix``, sorted by name (directories only for
    ``kind == "folder"``); ``exclude`` (e.g. the output folder) is skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: root folder does not exist")
    excl = exclude.resolve() if exclude is not None else None
    found = []
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if prefix not in p.name or (excl is not None and p.resolve() == excl):
            continue
        if kind == "folder" and not p.is_dir():
            continue
        found.append(p)
    return found


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg


def parse_one(src: str | Path, dest: str | Path, code: str = "abacus", hamiltonian: bool = True,
              overlap: bool = True, density_matrix: bool = False, eigenvalues: bool = False,
              overwrite: bool = False) -> tuple[str, dict]:
    """Parse one input and write it to ``dest`` (``{formula}`` in ``dest``'s name is replaced by the
    structure's formula). Returns (written folder, extra info). Raises on failure."""
    from eqtb.data.folder import write_folder
    from eqtb.data.parsers import ParseError, get_parser

    parser = get_parser(code)(src)
    frames = list(parser.frames(hamiltonian=hamiltonian, overlap=overlap, density_matrix=density_matrix,
                                eigenvalues=eigenvalues))
    dest = Path(str(dest).replace("{formula}", frames[0].structure.formula))
    if dest.exists() and not overwrite and not (dest.is_dir() and not any(dest.iterdir())):
        raise ParseError(f"{dest}: output folder already exists (overwrite=True / eqtb parse --overwrite "
                         f"replaces it)")
    path = write_folder(dest, frames, overwrite=overwrite)
    if not (path / "basis.dat").is_file():
        (path / "basis.dat").write_text(str(parser.basis.spec))
    extra = {}
    fermi = getattr(parser, "fermi_level", None)
    if fermi is not None:
        src_file = getattr(parser, "log_path", None)
        (path / "fermi_level.json").write_text(json.dumps(
            {"fermi_level": fermi, "unit": "eV", "source": str(src_file) if src_file else str(src)}, indent=2) + "\n")
        extra["fermi_level"] = fermi
    herm = getattr(parser, "hermiticity", None)
    if herm:
        extra["hermiticity"] = dict(herm)
    return str(path), extra


def _task(args):
    idx, src, dest, kw = args
    try:
        out, extra = parse_one(src, dest, **kw)
        return idx, src, out, None, extra
    except Exception as exc:  # noqa: BLE001 - one bad input must not stop the others
        from eqtb.data.folder import DatasetError
        from eqtb.data.parsers import ParseError

        if isinstance(exc, (ParseError, DatasetError, OSError)) or (
                isinstance(exc, ValueError) and type(exc).__module__.startswith("eqtb")):
            why = _one_line(exc)
        else:  # a bug: keep the place it happened
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            why = f"unexpected {type(exc).__name__}: {_one_line(exc)} ({Path(tb.filename).name}:{tb.lineno})"
        return idx, src, None, why, {}


def parse_folders(root: str | Path, prefix: str, out: str | Path, code: str = "abacus", hamiltonian: bool = True,
                  overlap: bool = True, density_matrix: bool = False, eigenvalues: bool = False, workers: int = 1,
                  fmt: str = "folder", overwrite: bool = False, progress: bool | None = None,
                  quiet: bool = False) -> ParseSummary:
    """Parse every entry of ``root`` whose name contains ``prefix`` (sorted) with the ``code``
    parser and write ``out/<formula>.<idx>`` dataset folders (module docstring).

    ``hamiltonian`` / ``overlap`` / ``density_matrix`` / ``eigenvalues`` select what is written
    (asking for something an input lacks fails that input). ``workers`` > 1 parses in that many
    processes. ``fmt``: only ``"folder"``. ``overwrite``: replace existing output folders (else an
    existing one is a failure). ``progress``: tqdm bar on stderr (None: only on a terminal).
    Returns the :class:`ParseSummary`, also printed (to stdout) unless ``quiet``."""
    from eqtb.data.parsers import ParseError, get_parser

    if fmt not in FORMATS:
        raise ParseError(f"output format {fmt!r} is not supported by parse; known: {list(FORMATS)} "
                         f"(convert a folder dataset to LMDB afterwards)")
    if int(workers) < 1:
        raise ParseError(f"workers must be at least 1, got {workers}")
    cls = get_parser(code)
    out = Path(out)
    inputs = find_inputs(root, prefix, getattr(cls, "input_kind", "folder"), exclude=out)
    if not inputs:
        raise ParseError(f"{root}: no {'folder' if getattr(cls, 'input_kind', 'folder') == 'folder' else 'entry'} "
                         f"whose name contains {prefix!r}")
    kw = dict(code=code, hamiltonian=hamiltonian, overlap=overlap, density_matrix=density_matrix,
              eigenvalues=eigenvalues, overwrite=overwrite)
    tasks = [(k, str(src), str(out / f"{{formula}}.{k}"), kw) for k, src in enumerate(inputs)]
    results = []
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=f"parse {code}", unit="folder", file=sys.stderr,
               disable=None if progress is None else not progress)
    try:
        if workers == 1 or len(tasks) == 1:
            for t in tasks:
                results.append(_task(t))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(int(workers), len(tasks))) as pool:
                futures = [pool.submit(_task, t) for t in tasks]
                for f in as_completed(futures):
                    results.append(f.result())
                    bar.update()
    finally:
        bar.close()
    summary = ParseSummary()
    for idx, src, dest, why, _ in sorted(results, key=lambda r: r[0]):
        if why is None:
            summary.ok.append((src, dest))
        else:
            summary.failed.append((src, why))
    if not quiet:
        print(summary)
    return summary

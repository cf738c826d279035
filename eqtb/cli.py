"""The ``eqtb`` command line.

Each subcommand is two small functions: ``_add_<name>(subparsers)`` declares its arguments and
sets ``run=<function>``; the run function takes the parsed arguments and returns an exit code.
Register a new subcommand by decorating its ``_add_`` function with :func:`subcommand`. Heavy
modules (numpy, torch, matplotlib, the data readers) are imported inside the run functions so that
``eqtb --help`` stays fast.

Errors in the user's input (missing files, malformed JSON, unknown keys, inconsistent data) end
the command with a one-line message on stderr naming the file, and exit code 2, without a
traceback: any ``OSError``, ``json.JSONDecodeError`` or ``ValueError`` subclass defined in eqtb
(``DatasetError``, ``KPathError``, ``SpectrumError``, ``TaskError``, ...) is reported this way.
Other exceptions are bugs and keep their traceback.

Warnings print as one line each, ``eqtb <command>: warning: <message>`` on stderr under the name of
the command that was typed (``eqtb run`` running a band task says ``eqtb run``), each message once
per command (:func:`warn`).

Band task files are DeePTB's ``dptb run`` JSON (shared/spec/FORMATS.md section 5.7), read
unchanged: options under ``"task_options"`` or flat; top-level run keys that do not apply here
(``device``, ``dtype``, ``pbc``, ``use_gui``, ``AtomicData_options``, and ``structure`` for
``band``/``dos``, which take the dataset's) are ignored; unknown keys are errors with a suggestion.
File names in a task (``structure``, ``ref_band``, ``override_overlap``, a ``kline_type: "array"``
``.npy``) are resolved as DeePTB resolves them, relative to the working folder, and, when no such
file exists there, relative to the task file's folder (:func:`resolve_task_path`); ``-stu`` and
other command-line paths are relative to the working folder only.

Progress (``-q``: nothing on success): on a terminal, tqdm bars during long stages; when the
output goes to a file or a pipe, a plain line every ~20 s instead
(:func:`eqtb.tb.spectrum.progress_reporter`).

Fermi level (``band``, ``dos`` and the band/dos/pdos/fermi tasks of ``run``): one rule,
:func:`eqtb.tb.spectrum.resolve_fermi_level`, DeePTB's precedence with the command line above the
task file: ``--e-fermi``; else ``--nel-atom`` (the level computed from the electron count, on the
command's time-reversal-reduced k-mesh, Fermi-Dirac, kT = 25.852 meV; from the KPM DOS at Gamma on
the sparse route of ``run``; a warning says that a task ``E_fermi`` is then not used); else the
task's ``E_fermi`` when not null (as ``dptb run``: a given ``E_fermi`` wins over ``nel_atom``);
else the task's ``nel_atom`` (computed); else none (absolute energies). When a given level is used
and ``nel_atom`` is known, the level computed from ``nel_atom`` is printed beside it and written
to the summary (``fermi_level_nel_atom``), as DeePTB logs its estimate. Note that DeePTB's example
tasks often carry ``"E_fermi": 0.0``, which is not the Fermi level of absolute (e.g. ABACUS)
energies: pass ``--nel-atom`` (or ``--e-fermi``) to choose another reference.

Molecules (no periodic direction: ``pbc`` false, e.g. a dataset frame without ``cell.dat``, or an
``.xyz`` file): ``band`` gives the orbital energies at Gamma (no k-path; a task's k-path is not
used, with a warning), HOMO, LUMO and their gap, and a level diagram; ``dos`` broadens the
orbital energies; ``run`` predicts and exports them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eqtb.hints import did_you_mean

EXIT_USAGE = 2


class CLIError(ValueError):
    """Bad command-line or task-file input: reported as one line, exit code 2."""


class TaskError(CLIError):
    """A task JSON file that cannot be used (malformed, unknown keys, wrong types)."""


# ---------------------------------------------------------------------------------- registry
_SUBCOMMANDS: list[Callable] = []


def subcommand(add: Callable) -> Callable:
    """Register ``add(subparsers)``, which must create the subparser and ``set_defaults(run=...)``."""
    _SUBCOMMANDS.append(add)
    return add


def build_parser() -> argparse.ArgumentParser:
    from eqtb import (
        __version__ as version,  # light: the package __init__ must stay light
    )

    parser = argparse.ArgumentParser(
        prog="eqtb",
        description="Equivariant tight-binding Hamiltonians: datasets, models, bands and DOS.")
    parser.add_argument("--version", action="version", version=f"eqtb {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, json.JSONDecodeError, CLIError)):
        return True
    if isinstance(exc, ValueError):
        return any(c.__module__.split(".")[0] == "eqtb" for c in type(exc).__mro__)
    return False


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in msg:
        msg = f"{exc.filename}: {msg}"
    return " ".join(msg.split())


#: warnings already printed by the running command (:func:`warn`); cleared when a command starts
_SHOWN: set[str] = set()


def warn(command: str, message: str) -> None:
    """Print ``eqtb <command>: warning: <message>`` on stderr as one line, once per message and
    command run."""
    text = " ".join(str(message).split())
    if text in _SHOWN:
        return
    _SHOWN.add(text)
    print(f"eqtb {command}: warning: {text}", file=sys.stderr)


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Python warnings raised while a command runs print through :func:`warn` (one line, under
    the command's name, each message once); Python's default shows the source line too."""
    def show(message, category, filename, lineno, file=None, line=None):
        warn(command, str(message))

    _SHOWN.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eqtb`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with _one_line_warnings(args.command):
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"eqtb {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors become one line; everything else is a bug
        if _is_user_error(exc):
            print(f"eqtb {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        raise


# ---------------------------------------------------------------------------------- task files
#: top-level keys of a ``dptb run`` JSON that eqtb reads but does not need here
RUN_TOP_LEVEL_KEYS = {"task_options", "structure", "pbc", "use_gui", "device", "dtype",
                      "AtomicData_options"}
BAND_TASK_KEYS = {"task", "kline_type", "kpath", "klabels", "high_sym_kpoints", "number_in_line",
                  "nkpoints", "nkpoint", "E_fermi", "emin", "emax", "ref_band", "nel_atom",
                  "override_overlap", "eig_solver", "ill_threshold", "ill_pad_value"}
DOS_TASK_KEYS = {"task", "mesh_grid", "sigma", "npoints", "width", "E_fermi", "gamma_center",
                 "nel_atom", "atom_index", "orbital_index"}
FERMI_TASK_KEYS = {"task", "nel_atom", "mesh_grid", "gamma_center", "smearing", "kT"}
EXPORT_TASK_KEYS = {"task", "format", "overwrite", "orthogonalize", "mesh"}
TASK_KEYS = {"band": BAND_TASK_KEYS, "dos": DOS_TASK_KEYS, "pdos": DOS_TASK_KEYS, "fermi": FERMI_TASK_KEYS,
             "export": EXPORT_TASK_KEYS}
#: DOS energy points by default, and at most when more are needed for 4 points per sigma
DOS_POINTS, DOS_MAX_POINTS = 2001, 200001
#: above this many orbitals (per cell) eqtb run uses sparse methods at Gamma: KPM for DOS and Fermi
#: level, shift-invert Lanczos for the band edges
DENSE_MAX_NORB = 6000


def _unknown_key_error(key: str, allowed, where: str) -> TaskError:
    hint = did_you_mean(key, allowed) or f"; known keys: {', '.join(sorted(allowed))}"
    return TaskError(f"{where}: unknown key {key!r}{hint}")


def read_task(path: str | Path, accept: tuple[str, ...] = ("band",)) -> tuple[dict, Path]:
    """Read a DeePTB run/task JSON; return (task options, file path). Nested ``task_options`` or
    flat files are accepted; ``task`` (if present) must be one of ``accept``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: task file does not exist")
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    if "task_options" in data:
        opts = data["task_options"]
        if not isinstance(opts, dict):
            raise TaskError(f"{path}: 'task_options' must be an object, got {type(opts).__name__}")
        for key in data:
            if key not in RUN_TOP_LEVEL_KEYS:
                raise _unknown_key_error(key, RUN_TOP_LEVEL_KEYS, f"{path}")
        opts = dict(opts)
    else:
        opts = {k: v for k, v in data.items() if k not in RUN_TOP_LEVEL_KEYS - {"task_options"}}
    task = opts.get("task", accept[0])
    if task not in accept:
        raise TaskError(f"{path}: task {task!r} cannot be run by this command (expected "
                        f"{' or '.join(repr(a) for a in accept)})")
    allowed = TASK_KEYS[task]
    for key in opts:
        if key not in allowed:
            raise _unknown_key_error(key, allowed, f"{path}: task_options")
    _check_types(opts, path)
    opts["task"] = task
    return opts, path


def _check_types(opts: dict, path: Path) -> None:
    def number_or_null(key):
        v = opts.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise TaskError(f"{path}: {key!r} must be a number or null, got {v!r}")

    for key in ("E_fermi", "emin", "emax", "sigma", "ill_threshold", "ill_pad_value"):
        number_or_null(key)
    nel = opts.get("nel_atom")
    if nel is not None:
        if not isinstance(nel, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in nel.values()):
            raise TaskError(f"{path}: 'nel_atom' must map element -> number of valence electrons, got {nel!r}")
    for key in ("mesh_grid",):
        v = opts.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != 3
                              or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)):
            raise TaskError(f"{path}: {key!r} must be three positive integers, got {v!r}")
    w = opts.get("width")
    if w is not None and (not isinstance(w, list) or len(w) != 2
                          or not all(isinstance(x, (int, float)) for x in w) or w[0] >= w[1]):
        raise TaskError(f"{path}: 'width' must be [emin, emax] with emin < emax, got {w!r}")


def resolve_task_path(value, task_path: Path | None, key: str) -> Path:
    """The file a task names (``structure``, ``ref_band``, ...), found as DeePTB finds it: an
    absolute path as is; a relative one in the working folder first (``dptb run`` opens it from
    there), then beside the task file (so a task also works from another folder). Raises
    FileNotFoundError naming every place looked at."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise TaskError(f"{task_path}: {key!r} must be a file name, got {value!r}")
    p = Path(value).expanduser()
    if p.is_absolute():
        if p.exists():
            return p
        raise FileNotFoundError(f"{task_path}: {key} file {p} does not exist")
    places = [Path.cwd()]
    if task_path is not None and task_path.parent.resolve() != Path.cwd().resolve():
        places.append(task_path.parent)
    for base in places:
        if (base / p).exists():
            return p if base is places[0] else base / p
    where = " or ".join(f"{b.resolve()}" for b in places)
    raise FileNotFoundError(f"{task_path}: {key} file {str(value)!r} does not exist (looked in {where})")


# ---------------------------------------------------------------------------------- shared helpers
def _json_arg(text: str | None, option: str):
    """Parse a JSON (or Python-literal) dict given on the command line."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        import ast

        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise CLIError(f"{option}: not a JSON object: {text!r} (example: '{{\"Si\": 4}}')") from None
    if not isinstance(value, dict) or not value:
        raise CLIError(f"{option}: expected a non-empty JSON object, got {text!r}")
    return value


def _has_data(folder: Path) -> bool:
    from eqtb.data.folder import DATA_SUFFIXES

    return any(f.is_file() and f.name.endswith(DATA_SUFFIXES) for f in folder.iterdir())


def open_folder(path: str | Path, basis: dict | None = None):
    """A TrajectoryFolder from a trajectory folder, or from a dataset root holding exactly one."""
    from eqtb.data.folder import TrajectoryFolder

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such dataset folder")
    if not p.is_dir():
        raise CLIError(f"{p}: expected a dataset folder (e.g. Si64.0 with hamiltonians.h5), got a file")
    if not _has_data(p):
        subs = sorted(d for d in p.iterdir() if d.is_dir() and _has_data(d))
        if not subs:
            raise CLIError(f"{p}: no trajectory folder here (none holds .dat/.traj/.h5 files)")
        if len(subs) > 1:
            names = ", ".join(d.name for d in subs[:5]) + (" ..." if len(subs) > 5 else "")
            raise CLIError(f"{p}: dataset root holds {len(subs)} trajectory folders ({names}); give one of them")
        p = subs[0]
    return TrajectoryFolder(p, basis=basis)


@dataclass
class Operators:
    """What band/dos/fermi/export tasks work on: H (and S) of one structure, from a dataset frame or
    predicted by a model. ``label``: short name for titles; ``origin``: facts for the summaries."""

    frame: object  # eqtb.data.folder.Frame
    label: str
    origin: dict

    @property
    def structure(self):
        return self.frame.structure


def load_operators(args, need_overlap: bool = True) -> Operators:
    """H and S of frame ``args.frame`` of the dataset folder ``args.path``, or the operators
    predicted by ``eqtb run`` (``args.prediction``)."""
    prediction = getattr(args, "prediction", None)
    if prediction is not None:
        from eqtb.data.folder import Frame

        frame = Frame(prediction.structure, hamiltonian=prediction.hamiltonian, overlap=prediction.overlap)
        return Operators(frame, *_prediction_origin(args, prediction.structure))
    folder = open_folder(args.path, _json_arg(args.basis, "--basis"))
    n = folder.nframes
    if not -n <= args.frame < n:
        raise CLIError(f"{folder.path}: --frame {args.frame} out of range ({n} frame{'s' * (n != 1)})")
    frame = folder.frame(args.frame, hamiltonian=True, overlap=need_overlap, density_matrix=False,
                         eigenvalues=False)
    if frame.hamiltonian is None:
        raise CLIError(f"{folder.path}: no hamiltonians.h5 in this folder")
    return Operators(frame, f"{folder.path.name}, frame {args.frame}", {"source": str(folder.path), "frame": args.frame})


def _prediction_origin(args, structure) -> tuple[str, dict]:
    """(label, origin) of :class:`Operators` predicted by ``eqtb run``."""
    name = Path(structure.source).name or structure.formula
    return f"{name}, predicted", {"structure": structure.source or None, "model": args.init_model}


def _override_overlap(path: Path, frame):
    """Replace the frame's S by the blocks of group 0 (or the only group) of an overlaps.h5."""
    import h5py

    from eqtb.operator import Operator

    if not path.is_file():
        raise FileNotFoundError(f"{path}: override_overlap file does not exist")
    with h5py.File(path, "r") as f:
        groups = list(f.keys())
        name = "0" if "0" in groups else (groups[0] if len(groups) == 1 else None)
        if name is None:
            raise CLIError(f"{path}: override_overlap needs a group '0' (found {groups[:5]})")
        blocks = {k: v[()] for k, v in f[name].items()}
    H = frame.hamiltonian
    try:
        return Operator.from_blocks(H.structure, H.basis, blocks, source=str(path))
    except ValueError as exc:
        raise CLIError(f"{path}: {exc}") from None


def _nel_atoms(args, opts: dict) -> tuple[dict | None, dict | None]:
    """(``--nel-atom``, the task's ``nel_atom``): the two places of the Fermi-level rule."""
    return _json_arg(args.nel_atom, "--nel-atom") if args.nel_atom else None, opts.get("nel_atom")


def _mesh(args, opts: dict, structure, spacing: float, messages: list[str] | None = None) -> tuple[int, int, int]:
    """The k-mesh: ``--mesh``, else the task's ``mesh_grid``, else one for ``spacing`` (1/Angstrom);
    (1, 1, 1) for a molecule (a mesh asked for is then not used, with a message)."""
    from eqtb.tb.kpath import is_periodic, mesh_for_spacing

    if getattr(args, "mesh", None):
        if any(m < 1 for m in args.mesh):
            raise CLIError(f"--mesh: three positive integers expected, got {args.mesh}")
        mesh = tuple(args.mesh)
    elif opts.get("mesh_grid"):
        mesh = tuple(opts["mesh_grid"])
    else:
        return mesh_for_spacing(structure, spacing)
    if not is_periodic(structure) and mesh != (1, 1, 1):
        if messages is not None:
            messages.append(f"k-mesh {'x'.join(map(str, mesh))} not used: the structure is a molecule (no periodic "
                            "direction), its orbital energies are computed at Gamma")
        return (1, 1, 1)
    return mesh


def _progress(args) -> bool | None:
    """Progress of long stages: nothing with -q, else a bar on a terminal and a line every
    ~20 s otherwise (eqtb.tb.spectrum.progress_reporter)."""
    return False if getattr(args, "quiet", False) else None


def _fermi_text(choice, fermi) -> str:
    """``"E eV (source[, mid-gap M eV])"`` and the nel_atom level when a given one wins."""
    extra = ""
    if (choice.estimate is None and fermi is not None and getattr(fermi, "midgap", None) is not None
            and abs(fermi.midgap - choice.value) > 5e-5):
        extra = f", mid-gap {fermi.midgap:.4f} eV"
    text = f"{choice.value:.4f} eV ({choice.source}{extra})"
    if choice.estimate is not None:
        mid = getattr(fermi, "midgap", None)
        mid = f", mid-gap {mid:.4f} eV" if mid is not None and abs(mid - choice.estimate) > 5e-5 else ""
        text += f"; from nel_atom: {choice.estimate:.4f} eV ({choice.estimate_source.removeprefix('nel_atom, ')}{mid})"
    return text


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="dataset trajectory folder (e.g. data/Si64.0) or a dataset root holding one")
    p.add_argument("task", nargs="?", default=None, metavar="TASK_JSON",
                   help="DeePTB run JSON (task_options nested or flat), read unchanged")
    p.add_argument("--frame", type=int, default=0, help="frame index in the folder (default 0)")
    p.add_argument("--basis", default=None, metavar="JSON",
                   help="basis override, e.g. '{\"Si\": \"1s1p\"}' (default: the folder's basis.dat)")
    p.add_argument("--nel-atom", default=None, metavar="JSON",
                   help="valence electrons per element, e.g. '{\"Si\": 4}' (overrides the task's nel_atom)")
    p.add_argument("--e-fermi", type=float, default=None, metavar="EV",
                   help="explicit Fermi level / energy reference in eV (wins over everything)")
    p.add_argument("--emin", type=float, default=None, help="lower plot bound, eV relative to E_F")
    p.add_argument("--emax", type=float, default=None, help="upper plot bound, eV relative to E_F")
    p.add_argument("--mesh", type=int, nargs=3, default=None, metavar="N",
                   help="k-mesh for the Fermi level / DOS (default: task mesh_grid, else automatic)")
    p.add_argument("--title", default=None, help="figure title (default: formula and source)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _round(x, nd=6):
    return None if x is None else round(float(x), nd)


# ---------------------------------------------------------------------------------- band
@subcommand
def _add_band(sub) -> None:
    p = sub.add_parser(
        "band", help="band structure from a dataset's H(R), S(R) blocks",
        description="Band structure of one frame of a dataset folder along a k-path. The path comes "
                    "from --kpoints, else --kpath, else the task JSON (DeePTB kline_type abacus/ase/"
                    "vasp/array), else an automatic seekpath path. Writes OUT/band.png, "
                    "OUT/bands.npy (nk x nbands, eV, absolute), OUT/kpoints.npy, "
                    "OUT/band_summary.json and DeePTB's OUT/bandstructure.npy.")
    _common_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kpoints", default=None, metavar="FILE.npy", help="explicit (nk, 3) fractional k-points")
    g.add_argument("--kpath", default=None, metavar="PATH",
                   help="ASE path string, e.g. 'GXWKGLUWLK,UX' (special points of the cell's lattice)")
    p.add_argument("--nkpoints", type=int, default=None,
                   help="total points for --kpath / automatic paths (default 20 per leg)")
    p.add_argument("-o", "--output", default=".", metavar="OUT", help="output folder (default: current)")
    p.set_defaults(run=run_band)


def _reference_bands(opts: dict, task_path: Path, eigs, molecule: bool):
    """The task's ``ref_band`` (DeePTB: eigenvalues on the same k-points, minima aligned to the
    computed bands'), or None."""
    import numpy as np

    if not opts.get("ref_band"):
        return None
    rp = resolve_task_path(opts["ref_band"], task_path, "ref_band")
    reference = np.load(rp)
    if reference.ndim == 3 and reference.shape[0] == 1:
        reference = reference[0]
    if molecule and reference.ndim == 1:
        reference = reference[None]
    if reference.ndim != 2 or len(reference) != len(eigs):
        what = "the molecule's one set of orbital energies" if molecule else f"the {len(eigs)} k-points of the path"
        raise TaskError(f"{rp}: reference bands of shape {reference.shape} do not match {what}")
    return reference - reference.min() + eigs.min()  # DeePTB: align the minima


def run_band(args) -> int:
    import numpy as np

    from eqtb.plotting import plot_bands, plot_levels
    from eqtb.tb.kpath import KPath, from_task, is_periodic
    from eqtb.tb.spectrum import (
        ElectronicStructure,
        band_gap,
        molecular_levels,
        occupied_bands,
        resolve_fermi_level,
    )

    messages: list[str] = []
    opts, task_path = read_task(args.task, ("band",)) if args.task else ({}, None)
    nel_cli, nel_task = _nel_atoms(args, opts)
    _json_arg(args.basis, "--basis")  # fail early on a malformed option
    ops = load_operators(args)
    frame, structure = ops.frame, ops.structure
    S = frame.overlap
    if opts.get("override_overlap"):
        S = _override_overlap(resolve_task_path(opts["override_overlap"], task_path, "override_overlap"), frame)
    if opts.get("ill_threshold") is not None:
        messages.append("ill_threshold ignored: eqtb uses a plain Cholesky of S(k) and stops if S(k) is not positive definite")
    es = ElectronicStructure(frame.hamiltonian, S)
    molecule = not is_periodic(structure)
    progress = _progress(args)

    if molecule:
        if args.kpoints or args.kpath:
            raise CLIError(f"{structure.formula} is a molecule (no periodic direction): it has no k-path, its "
                           f"orbital energies are computed at Gamma; drop {'--kpoints' if args.kpoints else '--kpath'}")
        if opts.get("kline_type") or opts.get("kpath") is not None:
            messages.append(f"the task's k-path is not used: {structure.formula} is a molecule (no periodic "
                            "direction), its orbital energies are computed at Gamma")
        kpath = KPath.from_array([[0.0, 0.0, 0.0]], structure, {"G": [0.0, 0.0, 0.0]},
                                 description="Gamma only (molecule: orbital energies)")
    elif args.kpoints:
        kpath = KPath.from_npy(args.kpoints, structure)
    elif args.kpath:
        kpath = KPath.from_ase_string(args.kpath, structure, npoints=args.nkpoints, pbc=structure.pbc)
    elif opts.get("kline_type") or opts.get("kpath") is not None:
        task_kpath = dict(opts)
        if str(opts.get("kline_type", "")).lower() == "array" and isinstance(opts.get("kpath"), str):
            task_kpath["kpath"] = str(resolve_task_path(opts["kpath"], task_path, "kpath"))
        try:
            kpath = from_task(task_kpath, structure)
        except ValueError as exc:
            raise TaskError(f"{task_path}: {exc}") from None
    else:
        kpath = KPath.automatic(structure, npoints=args.nkpoints)
    eigs = es.bands(kpath, progress=progress)

    mesh = _mesh(args, opts, structure, spacing=0.15, messages=messages)
    solver = es.molecule_fermi_solver(progress) if molecule else es.fermi_solver(mesh, progress=progress)
    choice = resolve_fermi_level(structure, solver, args.e_fermi, nel_cli, opts.get("E_fermi"), nel_task)
    messages += choice.warnings
    fermi, e_f, e_f_source, n_el = choice.result, choice.value, choice.source, choice.n_electrons
    emin = args.emin if args.emin is not None else opts.get("emin")
    emax = args.emax if args.emax is not None else opts.get("emax")
    reference = _reference_bands(opts, task_path, eigs, molecule)

    levels = molecular_levels(eigs[0], n_el, es.spin_degeneracy) if molecule else None
    n_occ = occupied_bands(n_el, eigs.shape[1], es.spin_degeneracy) if n_el is not None and not molecule else None
    gap = band_gap(eigs, n_occ) if n_occ is not None else None

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    formula = structure.formula
    title = args.title or f"{formula} ({ops.label})"
    if molecule:
        plot_levels(eigs[0], e_f, emin, emax, out / "band.png", title, n_occupied=levels["n_occupied"],
                    reference=reference, reference_label="ref_band")
    else:
        plot_bands(kpath, eigs, e_f, emin, emax, out / "band.png", title, reference=reference,
                   reference_label="ref_band")
    np.save(out / "bands.npy", eigs)
    np.save(out / "kpoints.npy", kpath.kpts)
    np.save(out / "bandstructure.npy", {
        "klist": kpath.kpts, "xlist": kpath.x / (2 * np.pi), "high_sym_kpoints": kpath.ticks / (2 * np.pi),
        "labels": kpath.tick_labels, "eigenvalues": eigs, "E_fermi": e_f}, allow_pickle=True)
    summary = {
        **ops.origin, "formula": formula, "natoms": structure.natoms, "molecule": molecule,
        "norb": int(frame.hamiltonian.norb), "basis": frame.hamiltonian.basis.spec,
        "orthogonal": S is None, "energy_unit": "eV",
        "n_kpoints": len(kpath), "kpath": kpath.description, "tick_labels": kpath.tick_labels,
        "fermi_level": _round(e_f), "fermi_level_source": e_f_source,
        "fermi_level_nel_atom": _round(float(fermi)) if fermi is not None else None,
        "fermi_level_nel_atom_source": (choice.estimate_source or e_f_source) if fermi is not None else None,
        "n_electrons": n_el, "mesh": list(mesh) if fermi is not None else None,
        "mesh_midgap": _round(fermi.midgap) if fermi is not None else None,
        "mesh_gap": _round(fermi.gap) if fermi is not None else None,
        "E_fermi_task": opts.get("E_fermi"),
        "gap": None, "gap_type": None, "direct": None, "vbm": None, "cbm": None, "direct_gap": None,
        "k_vbm": None, "k_cbm": None, "valence_bandwidth": None,
        "band_min": _round(eigs.min()), "band_max": _round(eigs.max()),
        "files": ["band.png", "bands.npy", "kpoints.npy", "band_summary.json", "bandstructure.npy"],
        "warnings": messages,
    }
    if molecule:
        summary.update({"homo": _round(levels["homo"]), "lumo": _round(levels["lumo"]),
                        "homo_lumo_gap": _round(levels["gap"]), "n_occupied_orbitals": levels["n_occupied"],
                        "orbital_energies": [round(float(e), 6) for e in eigs[0]]})
        if levels["gap"] is not None:
            summary.update({"gap": _round(levels["gap"]), "gap_type": "HOMO-LUMO", "vbm": _round(levels["homo"]),
                            "cbm": _round(levels["lumo"]), "direct_gap": _round(levels["gap"]),
                            "k_vbm": [0.0, 0.0, 0.0], "k_cbm": [0.0, 0.0, 0.0],
                            "valence_bandwidth": _round(levels["homo"] - eigs.min()),
                            "n_occupied_bands": levels["n_occupied"]})
    if gap is not None:
        metal = gap["gap_type"] == "metal"
        summary.update({
            "gap": _round(max(gap["gap"], 0.0)), "gap_type": gap["gap_type"],
            "direct": None if metal else gap["direct"], "vbm": _round(gap["vbm"]), "cbm": _round(gap["cbm"]),
            "direct_gap": _round(gap["direct_gap"]), "k_vbm": kpath.kpts[gap["k_vbm"]].round(6).tolist(),
            "k_cbm": kpath.kpts[gap["k_cbm"]].round(6).tolist(),
            "valence_bandwidth": _round(gap["valence_bandwidth"]), "n_occupied_bands": gap["n_occupied_bands"]})
    _write_json(out / "band_summary.json", summary)

    for m in messages:
        warn(args.command, m)
    if not args.quiet:
        kind = "orthogonal" if S is None else "non-orthogonal"
        print(f"{formula}: {structure.natoms} atoms, {frame.hamiltonian.norb} orbitals "
              f"{frame.hamiltonian.basis.spec}, {kind} basis" + (", a molecule (no periodic direction)" if molecule else ""))
        if molecule:
            print("orbital energies at Gamma (no k-path)")
        else:
            print(f"k-path      {len(kpath)} points, {kpath.description}")
        if e_f is not None:
            print(f"Fermi level {_fermi_text(choice, fermi)}")
        if molecule:
            if n_el is None:
                example = ", ".join(f'"{el}": N' for el in sorted(set(structure.symbols)))
                levels = dict(levels, hint=f"HOMO and LUMO need the electron count: --nel-atom '{{{example}}}' "
                                           "(valence electrons per element; all electrons for an all-electron basis)")
            _print_levels(eigs[0], levels)
        elif gap is not None:
            if summary["gap_type"] == "metal":
                print(f"no gap: bands {gap['n_occupied_bands'] - 1} and {gap['n_occupied_bands']} overlap by "
                      f"{-gap['gap']:.4f} eV")
            else:
                print(f"band gap    {gap['gap']:.4f} eV, {summary['gap_type']} (VBM {gap['vbm']:.4f} eV at k "
                      f"{summary['k_vbm']}, CBM {gap['cbm']:.4f} eV at k {summary['k_cbm']})")
            print(f"valence bandwidth {gap['valence_bandwidth']:.4f} eV")
        print(f"wrote {', '.join(summary['files'])} to {out}")
    return 0


def _print_levels(energies, levels: dict, around: int = 4) -> None:
    """HOMO, LUMO, gap and the orbital energies (all of them up to 24, else those around the gap)."""
    e = list(energies)
    if levels["n_occupied"] is None and levels.get("hint"):
        print(levels["hint"])
    if levels["homo"] is not None:
        lumo = (f", LUMO {levels['lumo']:.4f} eV, HOMO-LUMO gap {levels['gap']:.4f} eV"
                if levels["lumo"] is not None else " (no empty orbital)")
        print(f"HOMO {levels['homo']:.4f} eV (orbital {levels['homo_index'] + 1} of {len(e)}){lumo}")
    lo, hi = 0, len(e)
    if len(e) > 24:
        centre = levels["homo_index"] if levels["homo_index"] is not None else len(e) // 2
        lo, hi = max(0, centre - around + 1), min(len(e), centre + around + 1)
    shown = " ".join(f"{x:.4f}" for x in e[lo:hi])
    print(f"orbital energies (eV): {'... ' if lo else ''}{shown}{' ...' if hi < len(e) else ''}")


# ---------------------------------------------------------------------------------- dos
@subcommand
def _add_dos(sub) -> None:
    p = sub.add_parser(
        "dos", help="density of states (and Mulliken PDOS) on a k-mesh",
        description="Gaussian-broadened DOS of one frame on a time-reversal-reduced k-mesh, optionally "
                    "projected (Mulliken) on atoms, elements, shells or orbitals. TASK_JSON may be a "
                    "DeePTB dos/pdos task (mesh_grid, sigma, npoints, width, E_fermi, gamma_center) or "
                    "a band task (only nel_atom / E_fermi used). Writes OUT/dos.png, OUT/dos.npy "
                    "(columns: energy (eV, absolute), total, then PDOS) and OUT/dos.json (column "
                    "names, units, Fermi level).")
    _common_args(p)
    p.add_argument("--sigma", type=float, default=None, help="Gaussian broadening in eV (default 0.05)")
    p.add_argument("--npts", type=int, default=None,
                   help="number of energy points (default 2001, more when needed for 4 points per sigma)")
    p.add_argument("--pdos", choices=["atom", "element", "shell", "orbital", "atom-shell"], default=None,
                   help="also project the DOS (Mulliken) on these groups")
    p.add_argument("--monkhorst-pack", action="store_true",
                   help="use a Monkhorst-Pack mesh instead of a Gamma-centred one")
    p.add_argument("-o", "--output", default=".", metavar="OUT", help="output folder (default: current)")
    p.set_defaults(run=run_dos)


def run_dos(args) -> int:
    import numpy as np

    from eqtb.plotting import plot_dos
    from eqtb.tb.kpath import is_periodic
    from eqtb.tb.spectrum import (
        ElectronicStructure,
        dos,
        dos_energies,
        molecular_levels,
        projected_dos,
        resolve_fermi_level,
    )

    messages: list[str] = []
    opts, task_path = read_task(args.task, ("dos", "pdos", "band")) if args.task else ({}, None)
    if opts.get("task") == "band":
        opts = {k: opts[k] for k in ("nel_atom", "E_fermi") if k in opts}
    nel_cli, nel_task = _nel_atoms(args, opts)
    _json_arg(args.basis, "--basis")
    if args.sigma is not None and not args.sigma > 0:
        raise CLIError(f"--sigma must be positive, got {args.sigma}")
    ops = load_operators(args)
    frame, structure = ops.frame, ops.structure
    H, S = frame.hamiltonian, frame.overlap
    molecule = not is_periodic(structure)
    progress = _progress(args)
    mesh = _mesh(args, opts, structure, spacing=0.1, messages=messages)
    gamma = not args.monkhorst_pack and opts.get("gamma_center", True) is not False
    if molecule and not gamma:
        messages.append("Monkhorst-Pack mesh not used: the structure is a molecule, its orbital energies are "
                        "computed at Gamma")
        gamma = True
    sigma = args.sigma if args.sigma is not None else (opts.get("sigma") or 0.05)
    if not sigma > 0:
        raise CLIError(f"--sigma must be positive, got {sigma}")
    npts = args.npts or opts.get("npoints")
    if npts is not None and npts < 2:
        raise CLIError(f"--npts must be at least 2, got {npts}")

    # eigenvalues first (cheap) to fix the energy grid and the Fermi level
    es = ElectronicStructure(H, S)
    kpts, weights, eigs = es.mesh_eigenvalues(mesh, gamma, progress=progress)
    solver = es.molecule_fermi_solver(progress) if molecule else es.fermi_solver(mesh, gamma, progress=progress)
    choice = resolve_fermi_level(structure, solver, args.e_fermi, nel_cli, opts.get("E_fermi"), nel_task)
    messages += choice.warnings
    fermi, e_f, e_f_source = choice.result, choice.value, choice.source
    emin = args.emin if args.emin is not None else (opts["width"][0] if opts.get("width") else None)
    emax = args.emax if args.emax is not None else (opts["width"][1] if opts.get("width") else None)
    window = dos_energies(eigs, sigma, 2, emin, emax, e_f)
    if npts is None:  # 2001 points, more when needed for 4 points per sigma (e.g. core levels in the window)
        npts = int(min(max(DOS_POINTS, math.ceil((window[1] - window[0]) / (sigma / 4)) + 1), DOS_MAX_POINTS))
    energies = dos_energies(eigs, sigma, npts, emin, emax, e_f)
    lo, hi = energies[0], energies[-1]
    if (hi - lo) / (npts - 1) > sigma / 2:
        messages.append(f"energy step {(hi - lo) / (npts - 1):.3g} eV is more than sigma / 2 ({sigma} eV): the DOS "
                        f"is under-sampled; raise --npts or narrow --emin/--emax")

    labels: list[str] = []
    if args.pdos:
        # same mesh as above, so the cached eigenvalues are consistent; vectors computed in chunks
        total, labels, proj, _ = projected_dos(H, S, kpts, weights, energies, sigma, args.pdos, es.spin_degeneracy,
                                               progress=progress)
        columns = np.column_stack([energies, total, proj.T])
    else:
        total = dos(eigs, weights, energies, sigma, es.spin_degeneracy)
        columns = np.column_stack([energies, total])

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    formula = structure.formula
    per = "molecule" if molecule else "cell"
    where = "orbital energies" if molecule else f"{mesh[0]}x{mesh[1]}x{mesh[2]} mesh"
    title = args.title or f"{formula} ({ops.label}), {where}"
    pd = {lab: columns[:, 2 + n] for n, lab in enumerate(labels)} if labels else None
    if pd and len(pd) > 20:
        messages.append(f"{len(pd)} PDOS groups: only the total is drawn, all are in dos.npy")
        pd = None
    plot_dos(energies, total, pd, e_f, out / "dos.png", title, per=per)
    np.save(out / "dos.npy", columns)
    integral = float(np.trapezoid(total, energies)) if hasattr(np, "trapezoid") else float(np.trapz(total, energies))
    levels = molecular_levels(eigs[0], choice.n_electrons, es.spin_degeneracy) if molecule else None
    header = {
        **ops.origin, "formula": formula, "molecule": molecule,
        "columns": ["energy"] + ["total"] + labels,
        "units": {"energy": "eV (absolute)",
                  "dos": f"states / eV / {per}, spin degeneracy {es.spin_degeneracy} included"},
        "fermi_level": _round(e_f), "fermi_level_source": e_f_source,
        "fermi_level_nel_atom": _round(float(fermi)) if fermi is not None else None,
        "fermi_level_nel_atom_source": (choice.estimate_source or e_f_source) if fermi is not None else None,
        "mesh": list(mesh), "gamma_centered": gamma, "n_kpoints_irreducible": len(kpts),
        "sigma": sigma, "spin_degeneracy": es.spin_degeneracy, "pdos": args.pdos,
        "n_states": 2 * int(frame.hamiltonian.norb), "integral": round(integral, 6),
        "midgap": _round(fermi.midgap) if fermi is not None else None,
        "gap": _round(fermi.gap) if fermi is not None else None,
        "files": ["dos.png", "dos.npy", "dos.json"], "warnings": messages,
    }
    if molecule:
        header.update({"homo": _round(levels["homo"]), "lumo": _round(levels["lumo"]),
                       "homo_lumo_gap": _round(levels["gap"])})
    _write_json(out / "dos.json", header)
    for m in messages:
        warn(args.command, m)
    if not args.quiet:
        if molecule:
            print(f"{formula}: a molecule, {H.norb} orbital energies broadened by sigma {sigma} eV")
        else:
            print(f"{formula}: {mesh[0]}x{mesh[1]}x{mesh[2]} mesh ({len(kpts)} irreducible k-points), sigma {sigma} eV")
        if e_f is not None:
            gap = f", gap {fermi.gap:.4f} eV" if fermi is not None and fermi.gap is not None and choice.estimate is None else ""
            print(f"Fermi level {_fermi_text(choice, fermi)}{gap}")
        print(f"DOS integral {integral:.3f} states (of {2 * frame.hamiltonian.norb}) over "
              f"[{lo:.2f}, {hi:.2f}] eV")
        print(f"wrote {', '.join(header['files'])} to {out}")
    return 0


# ---------------------------------------------------------------------------------- run
@subcommand
def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help="band / dos / pdos / fermi / export with a trained model on any structure",
        description="Predict H (and S) of STRUCTURE with a trained model, then run the task of TASK_JSON "
                    "(DeePTB's run JSON, read unchanged): band, dos, pdos, fermi (Fermi level, gap) or "
                    "export (format: dataset, deeph, npz, sisl or wannier90 -- the last with \"orthogonalize\": "
                    "true and an optional \"mesh\" when the model has an overlap; a list for several). Outputs as for "
                    "'eqtb band' / 'eqtb dos'. Structures with more than "
                    f"{DENSE_MAX_NORB} orbitals use sparse methods at Gamma (such cells are supercells): the "
                    "KPM DOS and Fermi level, and the band edges (VBM, CBM, gap) by shift-invert Lanczos "
                    "around the Fermi level; band and fermi tasks then write band_summary.json / "
                    "fermi.json with those edges and the DOS plot instead of a band plot.")
    p.add_argument("task", metavar="TASK_JSON", help="DeePTB run JSON: task_options.task is band, dos, pdos, "
                   "fermi or export")
    p.add_argument("-i", "--init-model", required=True, metavar="MODEL", help="eqtb checkpoint (.pth)")
    p.add_argument("-stu", "--structure", default=None, metavar="FILE",
                   help="structure file (POSCAR, cif, extxyz, ...; default: the task JSON's 'structure')")
    p.add_argument("-o", "--output", default=".", metavar="OUT", help="output folder (default: current)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the task JSON's 'device', else cpu)")
    p.add_argument("--chunk", type=int, default=None, metavar="EDGES",
                   help="directed edges per inference chunk (default 8192; memory ~ chunk)")
    p.add_argument("--supercell", type=int, nargs=3, default=None, metavar="N",
                   help="repeat the structure n1 n2 n3 times before predicting")
    p.add_argument("--nel-atom", default=None, metavar="JSON", help="valence electrons per element, e.g. '{\"Si\": 4}'")
    p.add_argument("--e-fermi", type=float, default=None, metavar="EV", help="explicit Fermi level in eV")
    p.add_argument("--emin", type=float, default=None, help="lower plot bound, eV relative to E_F")
    p.add_argument("--emax", type=float, default=None, help="upper plot bound, eV relative to E_F")
    p.add_argument("--mesh", type=int, nargs=3, default=None, metavar="N", help="k-mesh for Fermi level / DOS")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kpoints", default=None, metavar="FILE.npy", help="explicit (nk, 3) fractional k-points")
    g.add_argument("--kpath", default=None, metavar="PATH", help="ASE path string, e.g. 'GXWKGL'")
    p.add_argument("--nkpoints", type=int, default=None, help="total points for --kpath / automatic paths")
    p.add_argument("--sigma", type=float, default=None, help="DOS Gaussian broadening in eV (default 0.05)")
    p.add_argument("--npts", type=int, default=None, help="DOS energy points (default 2001, more when needed for 4 points per sigma)")
    p.add_argument("--pdos", choices=["atom", "element", "shell", "orbital", "atom-shell"], default=None,
                   help="PDOS projection (pdos task default: shell)")
    p.add_argument("--monkhorst-pack", action="store_true", help="Monkhorst-Pack instead of Gamma-centred mesh")
    p.add_argument("--method", choices=["auto", "dense", "sparse"], default="auto",
                   help=f"dense diagonalization or sparse methods (auto: sparse above {DENSE_MAX_NORB} orbitals)")
    p.add_argument("--nbands", type=int, default=16, help="eigenvalues near E_F found by shift-invert Lanczos (sparse method)")
    p.add_argument("--moments", type=int, default=256, help="KPM moments (sparse DOS; resolution ~ 1.6 width / moments)")
    p.add_argument("--random-vectors", type=int, default=8, help="KPM random vectors (stochastic trace)")
    p.add_argument("--title", default=None, help="figure title")
    t = p.add_argument_group("trajectories", "a STRUCTURE with several frames (an ASE .traj, a multi-frame "
                             ".xyz/.extxyz) or a folder of structure files runs frame by frame: per-frame Fermi "
                             "level, band edges, gap and DOS, their averages and distributions, trajectory.png; "
                             "per-frame results in OUT/frames/ as they complete, a rerun skips frames done with "
                             "the same settings (eqtb.trajectory)")
    t.add_argument("--trajectory", action="store_true",
                   help="run every frame of STRUCTURE (any ASE format, e.g. XDATCAR); automatic for .traj and "
                        "multi-frame .xyz/.extxyz files and for folders")
    t.add_argument("--frames", default=None, metavar="SLICE", help="frames to run: an index or START:STOP[:STEP]")
    t.add_argument("--timestep", type=float, default=None, metavar="FS",
                   help="time between frames of the file (fs) for the plot and tables (default: ASE's "
                        "atoms.info['time'] if present, else frame numbers)")
    t.add_argument("--workers", type=int, default=1, help="frames in parallel processes (default 1)")
    t.add_argument("--threads", type=int, default=None,
                   help="threads per worker (default: CPU count / workers)")
    t.add_argument("--recompute", action="store_true", help="do not reuse frames of an earlier run in OUT")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=run_run, path=None, frame=0, basis=None)


def _task_top_level(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {k: data[k] for k in ("structure", "device") if k in data} if "task_options" in data else {}


def run_run(args) -> int:
    import torch

    from eqtb.predict import Predictor, as_structure

    opts, task_path = read_task(args.task, ("band", "dos", "pdos", "fermi", "export"))
    top = _task_top_level(task_path)
    if args.structure:
        stu = Path(args.structure)
        if not (stu.is_file() or stu.is_dir()):
            raise FileNotFoundError(f"{stu}: structure file (or trajectory folder) does not exist")
    elif top.get("structure"):
        stu = resolve_task_path(top["structure"], task_path, "structure")
    else:
        raise CLIError(f"{task_path}: no structure: give -stu FILE (or 'structure' in the task JSON)")
    device = args.device or top.get("device") or "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        warn(args.command, f"device {device!r} requested but CUDA is not available; using the CPU")
        device = "cpu"
    from eqtb import distributed

    if args.trajectory or _is_trajectory(stu):
        if distributed.launched():
            raise CLIError(f"{stu}: trajectories run in one process (--workers for frames in parallel), not under "
                           "torchrun")
        return _run_trajectory(args, opts, stu, device)
    structure = as_structure(stu)
    if args.supercell:
        if any(n < 1 for n in args.supercell):
            raise CLIError(f"--supercell: three positive integers expected, got {args.supercell}")
        structure = structure.repeat(args.supercell)
    model = Predictor.load(args.init_model, device)
    if args.chunk is not None and args.chunk < 2:
        raise CLIError(f"--chunk must be at least 2, got {args.chunk}")
    if distributed.launched():
        return _run_distributed(args, opts, structure, model)
    from eqtb.tb.spectrum import progress_lines

    progress = _progress(args)  # predict's own bar on a terminal, a line every ~20 s in a log
    task = opts["task"]
    norb = int(model.basis.norb_of(structure.numbers).sum())
    if task in ("band", "dos", "pdos", "fermi") and _sparse_method(args, norb):
        return _run_streamed(args, opts, task, structure, model, norb, progress)
    with progress_lines(f"predicting {structure.natoms} atoms", progress):
        prediction = model.predict(structure, **_predict_options(args, progress))
    args.prediction = _predicted(args, model, prediction, prediction.operators, task, "operators")
    if task == "band":
        return run_band(args)
    if task in ("dos", "pdos"):
        if task == "pdos" and args.pdos is None:
            args.pdos = "shell"
        return run_dos(args)
    if task == "fermi":
        return _run_fermi(args, opts)
    return _run_export(args, opts, task_path)


def _predict_options(args, progress) -> dict:
    """Keyword arguments of Predictor.predict / predict_sparse from ``eqtb run``'s options."""
    bar = progress if getattr(sys.stderr, "isatty", lambda: False)() else False
    return {**({"chunk": args.chunk} if args.chunk else {}), "progress": bar}


def _predicted(args, model, pred, quantities, task: str, stage: str, how: str = ""):
    """``pred`` after checking that it holds H where the task needs it, and saying what was predicted
    (``stage``: its timing key after graph and model)."""
    if "hamiltonian" not in quantities and task != "export":
        raise CLIError(f"{args.init_model}: the model predicts {', '.join(quantities)}, not H: only the "
                       "export task applies")
    if not args.quiet:
        t = pred.timings
        print(f"predicted {', '.join(quantities)} of {pred.structure.formula} ({pred.structure.natoms} atoms, "
              f"{t['n_bonds']} bonds){how} in {t['graph'] + t['model'] + t[stage]:.2f} s with "
              f"{model.model.__class__.__name__}")
    return pred


def _run_streamed(args, opts: dict, task: str, structure, model, norb: int, progress) -> int:
    """The sparse route of ``eqtb run`` in one process: H and S at Gamma predicted straight into
    sparse matrices (eqtb.predict.Predictor.predict_sparse: blocks streamed part by part, no
    Operators; float32 above MAX_NORB_3D orbitals, where only KPM runs), then :func:`_run_sparse`."""
    import numpy as np

    from eqtb.predict import SpinfulModelError
    from eqtb.tb.lanczos import MAX_NORB_3D
    from eqtb.tb.spectrum import progress_lines

    dtype = np.float64 if norb <= MAX_NORB_3D else np.float32
    # the DOS, Fermi level and band edges do not depend on the atom order; Z-order makes the
    # sparse products ~25 % faster than a supercell's layer order (Structure.spatial_order)
    structure = structure.reordered(structure.spatial_order())
    with progress_lines(f"predicting {structure.natoms} atoms", progress):
        try:
            pred = model.predict_sparse(structure, **_predict_options(args, progress), dtype=dtype)
        except SpinfulModelError as exc:
            raise CLIError(f"{exc}; the sparse methods (KPM DOS, shift-invert band edges) need a spinless model: "
                           f"use --method dense") from None
    args.sparse_prediction = _predicted(args, model, pred, pred.matrices, task, "matrices",
                                        f" at Gamma as {np.dtype(dtype).name} sparse matrices")
    return _run_sparse(args, opts, task)


def _run_distributed(args, opts: dict, structure, model) -> int:
    """``eqtb run`` under torchrun (WORLD_SIZE > 1): every process predicts the rows of its domain
    of the structure (eqtb.predict.Predictor.predict_domain), the KPM DOS and Fermi level run on
    the distributed H and S (eqtb.tb.dmatrix), rank 0 prints and writes the outputs."""
    from eqtb import distributed

    task = opts["task"]
    if task not in ("band", "dos", "pdos", "fermi") or args.method == "dense":
        raise CLIError(f"under torchrun ({distributed.world_size()} processes) eqtb run does the band, dos, pdos and "
                       f"fermi tasks by the sparse method (KPM at Gamma), not {task!r}"
                       f"{' with --method dense' if args.method == 'dense' else ''}: run it in one process")
    distributed.setup("cpu")
    try:
        args.quiet = args.quiet or not distributed.is_main()
        structure = structure.reordered(structure.spatial_order())  # as _run_streamed: the same random vectors
        args.domain_prediction = pred = model.predict_domain(structure, **({"chunk": args.chunk} if args.chunk else {}))
        if "hamiltonian" not in pred.operators:
            raise CLIError(f"{args.init_model}: the model predicts {', '.join(pred.operators)}, not H")
        if not args.quiet:
            t, d = pred.timings, pred.domain
            print(f"predicted {', '.join(pred.operators)} of {structure.formula} ({structure.natoms} atoms) on "
                  f"{d.n_domains} processes: rank 0 {d.n_owned} atoms + halo {d.cluster.natoms - d.n_owned} "
                  f"({d.halo:g} A) in {t['graph'] + t['model'] + t['operators']:.2f} s")
        return _run_sparse(args, opts, task)
    finally:
        distributed.teardown()


def _sparse_method(args, norb: int) -> bool:
    return args.method == "sparse" or (args.method == "auto" and norb > DENSE_MAX_NORB)


def _run_fermi(args, opts: dict) -> int:
    ops = load_operators(args)
    from eqtb.tb.kpath import is_periodic
    from eqtb.tb.spectrum import ElectronicStructure, centre_in_gap

    nel_cli, nel_task = _nel_atoms(args, opts)
    nel = nel_cli or nel_task
    if not nel:
        raise CLIError("the fermi task needs valence electrons: 'nel_atom' in the task or --nel-atom")
    messages: list[str] = []
    mesh = _mesh(args, opts, ops.structure, spacing=0.1, messages=messages)
    es = ElectronicStructure(ops.frame.hamiltonian, ops.frame.overlap)
    res = es.fermi(nel, mesh, smearing=opts.get("smearing", "fermi-dirac"),
                   **({"kT": float(opts["kT"])} if opts.get("kT") is not None else {}), progress=_progress(args))
    molecule = not is_periodic(ops.structure)
    if molecule:  # the middle of the HOMO-LUMO gap, as band and dos
        _, w, e = es.mesh_eigenvalues(mesh)
        res = centre_in_gap(res, e, w)
    for m in messages:
        warn(args.command, m)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**ops.origin, "formula": ops.structure.formula, "natoms": ops.structure.natoms, "molecule": molecule,
               "method": "dense", "mesh": list(mesh), **res.as_dict(), "energy_unit": "eV"}
    _write_json(out / "fermi.json", summary)
    if not args.quiet:
        edges = ("HOMO-LUMO gap", "HOMO", "LUMO") if molecule else ("gap", "VBM", "CBM")
        gap = (f", {edges[0]} {res.gap:.4f} eV ({edges[1]} {res.vbm:.4f}, {edges[2]} {res.cbm:.4f})"
               if res.gap is not None else "")
        where = "orbital energies" if molecule else f"{mesh[0]}x{mesh[1]}x{mesh[2]} mesh"
        print(f"Fermi level {res.mu:.4f} eV ({res.n_electrons:g} electrons, {where}{gap})")
        print(f"wrote fermi.json to {out}")
    return 0


def _run_export(args, opts: dict, task_path: Path) -> int:
    from eqtb.data.export import FORMATS, export_operators

    fmts = opts.get("format", "dataset")
    fmts = [fmts] if isinstance(fmts, str) else fmts
    if not isinstance(fmts, list) or not fmts or not all(isinstance(f, str) for f in fmts):
        raise TaskError(f"{task_path}: 'format' must be one of {', '.join(FORMATS)} or a list of them, got {fmts!r}")
    pred = args.prediction
    out = Path(args.output)
    written = []
    for fmt in fmts:
        target = out / fmt if len(fmts) > 1 else out
        extra = ({"orthogonalize": bool(opts.get("orthogonalize", False)), "mesh": opts.get("mesh")}
                 if fmt == "wannier90" else {})
        written.append(export_operators(pred.structure, pred.operators, target, fmt,
                                        overwrite=bool(opts.get("overwrite", False)), **extra))
    if not args.quiet:
        for fmt, path in zip(fmts, written):
            print(f"wrote {', '.join(pred.operators)} as {fmt} to {path}")
    return 0


def _run_sparse(args, opts: dict, task: str) -> int:
    """band / dos / pdos / fermi of a structure too large for dense diagonalization, at Gamma:
    KPM DOS and Fermi level (eqtb.tb.kpm), shift-invert Lanczos eigenvalues near E_F
    (eqtb.tb.lanczos)."""
    import time

    import numpy as np

    from eqtb.plotting import plot_dos
    from eqtb.tb.kpm import kpm_dos
    from eqtb.tb.lanczos import MAX_NORB_3D, band_edges
    from eqtb.tb.spectrum import resolve_fermi_level

    from eqtb import distributed

    domains = getattr(args, "domain_prediction", None)  # under torchrun: this process's rows
    streamed = getattr(args, "sparse_prediction", None)  # eqtb run of a model: H, S at Gamma
    if streamed is not None:
        structure, Hs, Ss = streamed.structure, streamed.sparse("hamiltonian"), streamed.matrices.get("overlap")
        norb = Hs.shape[0]
        label, origin = _prediction_origin(args, structure)
    elif domains is None:
        ops = load_operators(args)
        structure, H, S = ops.structure, ops.frame.hamiltonian, ops.frame.overlap
        if H.spinful:
            raise CLIError(f"the sparse methods (KPM DOS, shift-invert band edges) do not take a spinful Hamiltonian "
                           f"(spin-orbit coupling) yet: {H.dim} states; use --method dense")
        norb, label, origin = H.norb, ops.label, ops.origin
    else:
        structure, norb = domains.structure, domains.norb
        label, origin = _prediction_origin(args, structure)
        origin["processes"] = distributed.world_size()
    messages = []
    if task == "pdos":
        messages.append("pdos of a large structure: only the total DOS is computed (KPM)")
    nel_cli, nel_task = _nel_atoms(args, opts)
    t0 = time.perf_counter()
    kpm_options = {"n_moments": args.moments, "n_random": args.random_vectors, "solve_tol": 1e-5, "dtype": "auto",
                   "progress": None}
    if domains is None:
        if streamed is None:  # atom blocks for the FSAI preconditioner (BSR matrices bring their own)
            Hs, Ss = H.sparse(), (S.sparse() if S is not None else None)
            kpm_options["blocks"] = H.atom_orbital_offsets
        res = kpm_dos(Hs, Ss, **kpm_options)
    else:
        from eqtb.tb.dmatrix import kpm_dos_distributed

        Hs = domains.sparse("hamiltonian")
        Ss = domains.sparse("overlap") if "overlap" in domains.operators else None
        res = kpm_dos_distributed(Hs, Ss, **kpm_options)
    sigma_opt = args.sigma if args.sigma is not None else opts.get("sigma")
    t_kpm = time.perf_counter() - t0
    choice = resolve_fermi_level(structure, res.fermi_solver("at Gamma"), args.e_fermi, nel_cli, opts.get("E_fermi"),
                                 nel_task)
    messages += choice.warnings
    e_f, e_f_source, n_el = choice.value, choice.source, choice.n_electrons
    gap = choice.result.gap if choice.result is not None else None
    edges = None
    # the band edges are searched around the level from the electron count when there is one (a
    # given E_fermi, e.g. DeePTB's 0.0, need not lie in the gap), else around the given level
    centre = float(choice.result) if choice.result is not None else e_f
    if centre is not None and task in ("band", "fermi"):
        if norb <= MAX_NORB_3D:
            if domains is not None:  # shift-invert factorizes the whole matrix: on rank 0
                Hs, Ss = Hs.gather(), (Ss.gather() if Ss is not None else None)
            if domains is None or distributed.is_main():
                edges = band_edges(Hs, Ss, centre, k=args.nbands, strict=False)
                edges = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in edges.items()}
        else:
            messages.append(f"band edges by shift-invert Lanczos skipped: {norb} orbitals > {MAX_NORB_3D}, its "
                            "practical limit for 3-D structures (eqtb.tb.lanczos.MAX_NORB_3D); the KPM gap "
                            "estimate is reported instead")
    if domains is not None and not distributed.is_main():
        return 0  # rank 0 writes the outputs
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    energies, dos_values = res.energies, res.dos
    if sigma_opt:
        messages.append(f"sigma {sigma_opt} ignored: the KPM resolution is {res.resolution:.3f} eV")
    kpm = {k: v for k, v in res.as_dict().items() if k not in ("energies", "dos", "moments")}
    summary = {**origin, "formula": structure.formula, "natoms": structure.natoms, "norb": int(norb),
               "method": "sparse (Gamma point)", "kpm": kpm, "kpm_seconds": round(t_kpm, 2),
               "fermi_level": _round(e_f), "fermi_level_source": e_f_source, "n_electrons": n_el,
               "fermi_level_nel_atom": _round(float(choice.result)) if choice.result is not None else None,
               "fermi_level_nel_atom_source": (choice.estimate_source or e_f_source) if choice.result is not None else None,
               "kpm_gap_interval": gap,
               "kpm_fermi": choice.result.as_dict() if hasattr(choice.result, "as_dict") else None,
               "band_edges": edges, "energy_unit": "eV", "warnings": messages}
    np.save(out / "dos.npy", np.column_stack([energies, dos_values]))
    plot_dos(energies, dos_values, None, e_f, out / "dos.png",
             args.title or f"{structure.formula} ({label}), KPM at Gamma")
    name = {"band": "band_summary.json", "fermi": "fermi.json"}.get(task, "dos.json")
    _write_json(out / name, summary)
    for m in messages:
        warn(args.command, m)
    if not args.quiet:
        print(f"{structure.formula}: {norb} orbitals, KPM DOS ({res.n_moments} moments, {res.n_random} random "
              f"vectors, resolution {res.resolution:.3f} eV) in {t_kpm:.1f} s")
        if e_f is not None:
            print(f"Fermi level {_fermi_text(choice, None)}")
        if gap is not None:
            kf = choice.result
            count = (f"; KPM counts {kf.states_below:.0f} +- {kf.states_below_error:.0f} states below it"
                     if kf.states_below_error is not None else "")
            print(f"KPM gap estimate [{gap[0]:.3f}, {gap[1]:.3f}] eV (edges blurred by {res.resolution:.3f} eV{count})")
        if edges and edges.get("bracketed", True):
            print(f"band edges at Gamma: VBM {edges['vbm']:.4f} eV, CBM {edges['cbm']:.4f} eV, gap {edges['gap']:.4f} eV")
        print(f"wrote dos.png, dos.npy, {name} to {out}")
    return 0


def _is_trajectory(stu: Path) -> bool:
    """A folder of frames, or a .traj / .xyz / .extxyz file holding more than one frame."""
    if stu.is_dir():
        return True
    if stu.suffix.lower() not in (".traj", ".xyz", ".extxyz"):
        return False
    from eqtb.trajectory import count_frames

    return count_frames(stu) > 1


def _run_trajectory(args, opts: dict, stu: Path, device: str) -> int:
    """band / dos / pdos / fermi over the frames of a trajectory (eqtb.trajectory.run_trajectory)."""
    import os

    from eqtb.tb.trajectory import DEFAULT_WINDOW
    from eqtb.trajectory import read_frames, run_trajectory

    task = opts["task"]
    if task == "export":
        raise CLIError("the export task takes one structure, not a trajectory: give -stu one frame")
    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    if args.supercell and any(n < 1 for n in args.supercell):
        raise CLIError(f"--supercell: three positive integers expected, got {args.supercell}")
    if args.chunk is not None and args.chunk < 2:
        raise CLIError(f"--chunk must be at least 2, got {args.chunk}")
    messages = []
    if task == "pdos":
        messages.append("pdos of a trajectory: the total DOS of every frame is computed")
    frames = read_frames(stu, args.frames, args.timestep)
    nel_cli, nel_task = _nel_atoms(args, opts)
    if args.mesh:
        if any(m < 1 for m in args.mesh):
            raise CLIError(f"--mesh: three positive integers expected, got {args.mesh}")
        mesh = tuple(args.mesh)
    else:
        mesh = tuple(opts["mesh_grid"]) if opts.get("mesh_grid") else None
    sigma = args.sigma if args.sigma is not None else (opts.get("sigma") or 0.05)
    if not sigma > 0:
        raise CLIError(f"--sigma must be positive, got {sigma}")
    width = opts.get("width") or [None, None]
    emin = args.emin if args.emin is not None else (width[0] if width[0] is not None else DEFAULT_WINDOW[0])
    emax = args.emax if args.emax is not None else (width[1] if width[1] is not None else DEFAULT_WINDOW[1])
    npts = args.npts or opts.get("npoints") or DEFAULT_WINDOW[2]
    if not emax > emin or npts < 2:
        raise CLIError(f"DOS window: need emin < emax and at least 2 points, got {emin}, {emax}, {npts}")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    res = run_trajectory(args.init_model, frames, args.output, workers=args.workers, threads=threads, device=device,
                         chunk=args.chunk, supercell=args.supercell, resume=not args.recompute,
                         nel_atom=nel_cli, e_fermi=args.e_fermi, task_e_fermi=opts.get("E_fermi"),
                         task_nel_atom=nel_task, mesh=mesh, window=(emin, emax, npts), sigma=sigma,
                         method=args.method, dense_max_norb=DENSE_MAX_NORB, n_moments=args.moments,
                         n_random=args.random_vectors, nbands=args.nbands, title=args.title,
                         progress=_progress(args))
    for m in messages:
        warn(args.command, m)
    failed = res.summary["failed"]
    if failed:
        first = next(f for f in res.frames if f.get("error"))
        if len(failed) == len(res.frames):
            raise CLIError(f"every frame failed; frame {first['index']}: {first['error']}")
        warn(args.command, f"{len(failed)} of {len(res.frames)} frames failed (a rerun retries them): frame "
                           f"{first['index']}: {first['error']}")
    if not args.quiet:
        s = res.summary
        new = len(res.computed)
        rate = f", {res.seconds / new:.2f} s/frame with {args.workers} worker(s)" if new else ""
        print(f"{len(res.frames)} frames of {stu}: {new} computed, {len(res.skipped)} reused from {args.output}{rate}")

        def line(key, name):
            st = s[key]
            if st.get("n"):
                print(f"  {name:<12} {st['mean']:.4f} +- {st['std']:.4f} eV (min {st['min']:.4f}, median "
                      f"{st['median']:.4f}, max {st['max']:.4f}; {st['n']} frames)")

        for key, name in (("fermi_level", "Fermi level"), ("vbm", "VBM"), ("cbm", "CBM"), ("gap", "gap")):
            line(key, name)
        if s.get("insulating_fraction") is not None:
            print(f"  insulating in {100 * s['insulating_fraction']:.0f} % of the frames")
        print(f"wrote {', '.join(res.files)} to {res.out}")
    return 0


# ---------------------------------------------------------------------------------- demo
@subcommand
def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="the first run: PySCF data -> SLEM training -> bands vs DFT -> a large supercell",
        description="A complete example on built-in data: generates a small Si dataset with PySCF (reused "
                    "from OUT/data when present), trains SLEM for a few minutes on the CPU, plots the "
                    "model's bands over PySCF's on a frame not used in training (errors in the legend), "
                    "then predicts the band structure of a much larger supercell. About 6-7 minutes on "
                    "2 cores; writes OUT/demo_summary.json and the plots.")
    p.add_argument("-o", "--output", default="out/demo", metavar="OUT", help="output folder (default out/demo)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, default=None, help="training time in minutes (default 4)")
    g.add_argument("--epochs", type=int, default=None,
                   help="train a fixed number of epochs instead (the quick demo trains a fixed number)")
    p.add_argument("--workers", type=int, default=2, help="parallel PySCF calculations (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="a reduced run (about a minute) to check the set-up; it trains a fixed number of epochs")
    p.set_defaults(run=run_demo_command)


def run_demo_command(args) -> int:
    from eqtb.demo import run_demo

    if args.minutes is not None and not args.minutes > 0:
        raise CLIError(f"--minutes must be positive, got {args.minutes}")
    if args.epochs is not None and args.epochs < 1:
        raise CLIError(f"--epochs must be at least 1, got {args.epochs}")
    if args.quick and args.minutes is not None:
        raise CLIError("--quick trains a fixed number of epochs; give --epochs N to change it, not --minutes")
    run_demo(args.output, minutes=4.0 if args.minutes is None else args.minutes, quick=args.quick,
             workers=args.workers, progress=None, epochs=args.epochs)
    return 0


# ---------------------------------------------------------------------------------- parse
@subcommand
def _add_parse(sub) -> None:
    p = sub.add_parser(
        "parse", help="DFT output folders -> dataset folders (dftio-compatible flags)",
        description="Parse every entry of ROOT whose name contains PREFIX (sorted by name) and write "
                    "OUT/<formula>.<index> dataset folders: structure, info.json, basis.dat, and the "
                    "selected hamiltonians.h5 (eV) / overlaps.h5 / density_matrices.h5 / kpoints.npy + "
                    "eigenvalues.npy, plus fermi_level.json when known. As dftio, nothing but the "
                    "structure is written unless -ham/-ovp/-dm/-eig select it. A folder that fails is "
                    "listed in the summary and does not stop the others. Exit code 0 when all parsed, "
                    "1 when some failed, 2 on bad arguments.")
    p.add_argument("-r", "--root", required=True, help="folder holding the calculation folders")
    p.add_argument("-p", "--prefix", default="frame", help="parse entries whose name contains this (default: frame)")
    p.add_argument("-o", "--outroot", "--output", dest="outroot", required=True, metavar="OUT", help="output folder")
    p.add_argument("-m", "--mode", default="abacus", help="DFT code (default: abacus)")
    p.add_argument("-f", "--format", default="folder", choices=["folder", "dat"],
                   help="output format: dataset folders ('dat' is dftio's name for the same)")
    p.add_argument("-ham", "--hamiltonian", action="store_true", help="write H(R) blocks")
    p.add_argument("-ovp", "--overlap", action="store_true", help="write S(R) blocks")
    p.add_argument("-dm", "--density-matrix", "--density_matrix", dest="density_matrix", action="store_true",
                   help="write density-matrix blocks")
    p.add_argument("-eig", "--eigenvalues", "--eigenvalue", dest="eigenvalues", action="store_true",
                   help="write k-points and eigenvalues")
    p.add_argument("-n", "--num-workers", "--num_workers", dest="workers", type=int, default=1,
                   help="worker processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    p.set_defaults(run=run_parse)


def run_parse(args) -> int:
    from eqtb.data.parse import parse_folders
    from eqtb.data.parsers import PARSERS, load_all

    load_all()
    if args.mode not in PARSERS:
        raise CLIError(f"unknown -m/--mode {args.mode!r}; known: {', '.join(sorted(PARSERS))}")
    if args.workers < 1:
        raise CLIError(f"-n/--num-workers must be at least 1, got {args.workers}")
    if not Path(args.root).is_dir():
        raise CLIError(f"{args.root}: root folder does not exist")
    summary = parse_folders(args.root, args.prefix, args.outroot, code=args.mode, hamiltonian=args.hamiltonian,
                            overlap=args.overlap, density_matrix=args.density_matrix,
                            eigenvalues=args.eigenvalues, workers=args.workers, fmt="folder",
                            overwrite=args.overwrite, progress=None, quiet=True)
    if not args.quiet or summary.failed:
        print(summary, file=sys.stderr if summary.failed and args.quiet else sys.stdout)
    return 1 if summary.failed else 0


# ---------------------------------------------------------------------------------- convert
@subcommand
def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert datasets: folders -> LMDB, folder <-> DeepH",
        description="--to lmdb: the folder dataset ROOT/<prefix>.* -> one LMDB database OUT (streamed "
                    "frame by frame). --to deeph: every frame of the dataset folder SRC -> DeepH-pack "
                    "folders OUT/<frame>. --to folder: the DeepH folder SRC -> the dataset folder OUT.")
    p.add_argument("src", help="dataset root (lmdb), trajectory folder (deeph) or DeepH folder (folder)")
    p.add_argument("-o", "--output", required=True, help="output path")
    p.add_argument("--to", required=True, choices=["lmdb", "deeph", "folder"], help="target format")
    p.add_argument("-p", "--prefix", default=None, help="folder prefix, e.g. Si64 (--to lmdb)")
    p.add_argument("--basis", default=None, help="basis JSON when the data has no basis.dat")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:
    basis = _json_arg(args.basis, "--basis")
    out = Path(args.output)
    if args.to == "lmdb":
        from eqtb.data.lmdb import folder_to_lmdb

        if not args.prefix:
            raise CLIError("--to lmdb needs -p/--prefix (folders ROOT/<prefix>.*)")
        n = folder_to_lmdb(args.src, args.prefix, out, basis=basis, overwrite=args.overwrite, progress=True)
        print(f"wrote {n} frames to {out}")
    elif args.to == "deeph":
        from eqtb.data.deeph import write_deeph_folder

        folder = open_folder(args.src, basis)
        for k in range(folder.nframes):
            write_deeph_folder(folder.frame(k), out / str(k), overwrite=args.overwrite)
        print(f"wrote {folder.nframes} DeepH folders to {out}")
    else:
        from eqtb.data.deeph import read_deeph_folder
        from eqtb.data.folder import write_folder

        write_folder(out, [read_deeph_folder(args.src, basis=basis)], overwrite=args.overwrite)
        print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------- generate
@subcommand
def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="DFT training data with PySCF (perturbed frames of one structure)",
        description="Make NFRAMES copies of STRUCTURE (frame 0 unperturbed, then random Gaussian "
                    "displacements and optional random symmetric strain), run Kohn-Sham DFT with PySCF "
                    "(molecule: RKS; periodic cell: KRKS with GTH pseudopotentials on a k-mesh) and write "
                    "OUT/<formula>.<n> dataset folders with H(R) (eV), S(R), D(R), band-path k-points and "
                    "PySCF's eigenvalues (eV), plus OUT/generate_report.json. Each frame checks itself: "
                    "eigenvalues rebuilt from the written blocks vs PySCF's own bands off the k-meshes "
                    "and along the path. Complete frames are skipped on a rerun (resumable). Needs "
                    "PySCF (pip install 'eqtb[pyscf]'). Exit code 0 when every frame is written and "
                    "passes its self-check (< 1 meV), 1 otherwise, 2 on bad input.")
    p.add_argument("structure", metavar="STRUCTURE", help="structure file (POSCAR, .cif, .xyz, ... anything ASE reads)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="dataset root folder")
    p.add_argument("-n", "--nframes", type=int, default=4, help="number of frames (default 4)")
    p.add_argument("--displacement", type=float, default=0.05,
                   help="std of the random displacement per coordinate, Angstrom (default 0.05)")
    p.add_argument("--strain", type=float, default=0.0,
                   help="max |component| of the random symmetric strain (default 0; periodic only)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the perturbations (default 0)")
    p.add_argument("--basis", default="gth-szv", help="PySCF basis name (default gth-szv)")
    p.add_argument("--pseudo", default=None,
                   help="PySCF pseudopotential (default: gth-pade for GTH bases, none otherwise; 'none' for all-electron)")
    p.add_argument("--xc", default="lda,vwn",
                   help="PySCF functional (default lda,vwn; note PySCF's 'lda' alone is exchange only)")
    p.add_argument("--kmesh", type=int, nargs=3, default=[2, 2, 2], metavar="N", help="SCF k-mesh (default 2 2 2)")
    p.add_argument("--kmesh-fourier", type=int, nargs=3, default=None, metavar="N",
                   help="Fourier mesh for H(R) (default: smallest odd N with N |a| >= 25 Angstrom)")
    p.add_argument("--ke-cutoff", type=float, default=None, metavar="HARTREE",
                   help="FFT-grid cutoff in Hartree (default: 0.25 x PySCF's estimate)")
    p.add_argument("--smearing", type=float, default=None, metavar="HARTREE",
                   help="Fermi-Dirac width of the occupations in Hartree, e.g. 0.01 for a metal, whose SCF "
                        "with integer occupations does not converge (default: integer occupations)")
    p.add_argument("--workers", type=int, default=1, help="frames computed in parallel (default 1)")
    p.add_argument("--no-dm", action="store_true", help="do not write the density matrix")
    p.add_argument("--no-check", action="store_true", help="skip the self-check")
    p.add_argument("--overwrite", action="store_true", help="recompute frames that already exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-frame lines")
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from eqtb.data.generate import CHECK_TOL_MEV, generate

    if not Path(args.structure).is_file():
        raise FileNotFoundError(f"{args.structure}: structure file does not exist")
    from eqtb.tb.spectrum import progress_lines

    with progress_lines("generate", _progress(args)):  # in a log: a line every ~20 s besides the frames'
        report = generate(args.structure, args.output, nframes=args.nframes, displacement=args.displacement,
                          strain=args.strain, seed=args.seed, basis=args.basis, pseudo=args.pseudo, xc=args.xc,
                          kmesh=tuple(args.kmesh), kmesh_fourier=args.kmesh_fourier, ke_cutoff=args.ke_cutoff,
                          smearing=args.smearing, with_dm=not args.no_dm, workers=args.workers, check=not args.no_check,
                          overwrite=args.overwrite, progress=False if args.quiet else None, verbose=not args.quiet)
    bad = report["failed"] + report["check_failed"]
    if not args.quiet:
        worst = report["max_check_meV"]
        check = f", max self-check error {worst:.4f} meV" if worst is not None else ""
        print(f"{report['computed']} frames computed, {report['skipped']} skipped{check}, "
              f"{report['wall_s']:.1f} s; report {Path(args.output) / 'generate_report.json'}")
    if report["failed"]:
        print(f"eqtb generate: {len(report['failed'])} frame(s) failed: {', '.join(report['failed'])}",
              file=sys.stderr)
    if report["check_failed"]:
        print(f"eqtb generate: self-check above {CHECK_TOL_MEV:g} meV for {', '.join(report['check_failed'])}",
              file=sys.stderr)
    return 1 if bad else 0


@subcommand
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a DeePTB-style JSON config",
                       description="Train SLEM on a dataset described by a DeePTB JSON config (read unchanged). "
                                   "Writes OUT/train_config.json, OUT/checkpoint/, OUT/log/.")
    p.add_argument("config", help="training config (DeePTB JSON schema)")
    p.add_argument("-o", "--output", default=".", help="output folder (default: current folder)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-r", "--restart", default=None, metavar="CKPT|RUN",
                   help="resume exactly (optimizer, scheduler, RNG, epoch, batches done) from a checkpoint, "
                        "or from the newest checkpoint of a run folder (the -o of an earlier run)")
    g.add_argument("-i", "--init-model", default=None, metavar="CKPT", help="start from a model's weights (fine-tuning)")
    p.add_argument("--num-epoch", type=int, default=None, help="override train_options.num_epoch")
    p.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly (with a checkpoint) after this wall time")
    p.add_argument("--max-cpu-time", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after this CPU time of the training process (all threads; one thread's "
                        "time with OMP_NUM_THREADS=1): a budget a busy machine does not shorten")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or console lines (the log is kept)")
    p.set_defaults(run=run_train)


def _is_esk_input(path) -> bool:
    """True for a DeePTB ``dptb esk`` input: a JSON object holding only ``common_options``."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and set(obj) == {"common_options"}


def run_train(args) -> int:
    from eqtb.config import load_config
    from eqtb.distributed import is_main, launched
    from eqtb.train.skf2nnsk import fit_skf, is_skf2nnsk_input
    from eqtb.train.trainer import Trainer

    if not is_main():  # a torchrun launch: rank 0 alone prints (errors excepted) and writes
        args.quiet = True
        warnings.simplefilter("ignore")

    if _is_esk_input(args.config):
        raise CLIError(f"{args.config}: an input of DeePTB's `dptb esk` (a starting model from built-in Slater-Koster "
                       f"parameters for the basis of common_options): run `eqtb esk {args.config} -o OUT`, then "
                       f"train from OUT/esk.pth with -i")
    if is_skf2nnsk_input(args.config):  # DeePTB's `dptb skf2nnsk` input: fit nnsk to .skf tables
        if launched():
            raise CLIError(f"{args.config}: a DeePTB skf2nnsk input trains in one process: run it without torchrun")
        if args.restart:
            raise CLIError(f"{args.config}: a DeePTB skf2nnsk input does not resume (-r); start it with -i")
        if args.max_cpu_time is not None:
            raise CLIError(f"{args.config}: --max-cpu-time applies to model training; a DeePTB skf2nnsk fit takes "
                           f"--max-time (wall time) or --num-epoch")
        summary = fit_skf(args.config, args.output, nstep=args.num_epoch, init_model=args.init_model,
                          max_time=args.max_time, progress=not args.quiet)
        if not args.quiet:
            print(f"fitted {summary['epochs']} steps ({summary['stop']}) in {summary['seconds']:.1f} s; "
                  f"nnsk checkpoints in {Path(args.output) / 'checkpoint'}")
        return 130 if summary["stop"] == "interrupted" else 0
    overrides = {}
    if args.num_epoch is not None:
        overrides["train_options.num_epoch"] = args.num_epoch
    if args.max_time is not None:
        overrides["train_options.max_time"] = args.max_time
    if args.max_cpu_time is not None:
        overrides["train_options.max_cpu_time"] = args.max_cpu_time
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, args.output, restart=args.restart, init_model=args.init_model, progress=not args.quiet)
    summary = trainer.run()
    if not args.quiet:
        print(f"trained {summary['epochs']} epochs ({summary['stop']}) in {summary['seconds']:.1f} s "
              f"({summary['cpu_seconds']:.1f} s CPU); "
              f"checkpoints in {Path(args.output) / 'checkpoint'}")
    return 130 if summary["stop"] == "interrupted" else 0


@subcommand
def _add_esk(sub) -> None:
    p = sub.add_parser("esk", help="a starting nnsk model for a basis from eqtb's built-in Slater-Koster table",
                       description="DeePTB's `dptb esk`: read common_options.basis of CONF and write OUT/esk.pth "
                                   "(an nnsk checkpoint for eqtb train -i, eqtb run -i, eqtb.load) and OUT/esk.json "
                                   "(where each shell and bond type came from). The table's parameters are "
                                   "eqtb's own fits to PySCF band structures (eqtb/train/esk_fit.py).")
    p.add_argument("config", help="JSON input with common_options.basis (DeePTB's esk input)")
    p.add_argument("-o", "--output", default=".", help="output folder (default: current folder)")
    p.add_argument("--method", default="poly4pow",
                   help="hopping form of the model: powerlaw or poly1pow..poly4pow (the same bands in each; default "
                        "poly4pow, as DeePTB's base models, which DeePTB's inputs after `dptb esk` expect)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=run_esk)


def run_esk(args) -> int:
    from eqtb.train.esk import write_esk

    summary = write_esk(args.config, args.output, method=args.method)
    if not args.quiet:
        for name, source in {**summary["shells"], **summary["bonds"]}.items():
            print(f"  {name:<10s} {source}")
        for system, mae in summary["fit_band_mae_meV"].items():
            print(f"  fit {system}: band MAE {mae['train']:.0f} meV (training frames), {mae['test']:.0f} meV (test frame)")
        print(f"starting nnsk model written to {summary['checkpoint']}")
    return 0


@subcommand
def _add_test(sub) -> None:
    p = sub.add_parser(
        "test", help="errors of a trained model on a dataset (blocks, optionally bands)",
        description="Predict every frame of INPUT with the model MODEL and report its errors against the "
                    "dataset: MAE/RMSE of the H (or D) blocks and, when the model predicts it, of S (all, "
                    "onsite, off-site, per element pair and per orbital kind; meV for H, 1e-3 for S and D). "
                    "INPUT is a test config (DeePTB 'dptb test' JSON: data_options.test), a training config "
                    "(its validation set, else its training set), a trajectory folder (e.g. data/Si64.0), "
                    "or a dataset root with --prefix. The model's checkpoint defines the basis and the "
                    "cutoff; bonds of the dataset beyond the cutoff are not counted. --bands also compares "
                    "the eigenvalues of the predicted H and S at the dataset's k-points with its "
                    "eigenvalues.npy (lowest min(nb, norb) bands; no shift and mean shift removed), and "
                    "within E_F +- --window eV when a Fermi level is known (fermi_level.json of the folder, "
                    "else --nel-atom), with the cutoff floor beside them: the same errors for the dataset's exact "
                    "blocks on the model's bonds, the least any model at its r_max reaches (eqtb cutoff: "
                    "other r_max). --attribute adds what each kind of block costs: the errors of the bands "
                    "with the exact onsite (off-site) blocks put in the predicted ones. Prints the table and "
                    "writes OUT/test_results.json.")
    p.add_argument("input", metavar="INPUT", help="test/train config JSON, trajectory folder or dataset root")
    p.add_argument("-i", "--init-model", "--model", dest="model", required=True, metavar="MODEL",
                   help="model checkpoint written by eqtb train (e.g. checkpoint/slem.latest.pth)")
    p.add_argument("-o", "--output", default=".", metavar="OUT", help="output folder (default: current folder)")
    p.add_argument("-p", "--prefix", default=None,
                   help="with a dataset root: test the folders <prefix>.* (e.g. Si64)")
    p.add_argument("--bands", action="store_true", help="also compare band energies (needs eigenvalues.npy)")
    p.add_argument("--attribute", action="store_true",
                   help="with --bands: also the band errors with the exact onsite, then off-site, blocks put in")
    p.add_argument("--window", type=float, default=1.0, metavar="EV",
                   help="band errors also within E_F +- EV (default 1.0)")
    p.add_argument("--nel-atom", default=None, metavar="JSON",
                   help="valence electrons per element, e.g. '{\"Si\": 4}', for the reference Fermi level "
                        "when a folder has no fermi_level.json")
    p.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=run_test)


def run_test(args) -> int:
    import torch

    from eqtb.predict import load_model
    from eqtb.train.evaluate import evaluate, load_test_set

    if args.window <= 0:
        raise CLIError(f"--window must be positive, got {args.window}")
    nel = _json_arg(args.nel_atom, "--nel-atom")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: CUDA is not available")
    model = load_model(args.model, args.device)
    progress = False if args.quiet else None  # a bar only on a terminal
    data = load_test_set(args.input, model, args.prefix, bands=args.bands, progress=progress,
                         model_source=f"the model {args.model}")
    if not data.samples:
        raise CLIError(f"{args.input}: no frames to test")
    bands = args.bands or any(s.eigenvalues is not None for s in data.samples)  # or a config's get_eigenvalues
    if args.attribute and not bands:
        raise CLIError(f"--attribute compares bands: give --bands (and eigenvalues.npy in {args.input})")
    res = evaluate(model, data.samples, progress=progress, bands=bands, window=args.window,
                   fermi_levels=data.fermi_levels, nel_atom=nel, attribute=args.attribute)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": str(args.model), "input": str(args.input), "dataset": data.describe(),
              "basis": model.basis.spec, "r_max": model.r_max, "quantity": model.quantity,
              "frames": res["frames"], "blocks": res["blocks"]}
    if "bands" in res:
        report["bands"] = res["bands"]
    _write_json(out / "test_results.json", report)
    if not args.quiet:
        print(res["table"])
        print(f"\n{res['frames']} frame(s) from {args.input}; wrote {out / 'test_results.json'}")
    return 0


# ---------------------------------------------------------------------------------- cutoff
@subcommand
def _add_cutoff(sub) -> None:
    p = sub.add_parser(
        "cutoff", help="cutoff floor of a dataset: band error of the exact blocks truncated at r_max; recommends r_max",
        description="Before training: the band error that a cutoff alone costs. For a few frames of INPUT the "
                    "exact H and S blocks are truncated at each candidate r_max (bonds at or beyond it dropped, "
                    "as a model with that cutoff sees them) and their bands at the frame's k-points "
                    "(kpoints.npy, else a k-mesh) are compared with those of all the blocks, within E_F +- "
                    "--window eV (E_F: --e-fermi, else from --nel-atom, else fermi_level.json; none: all bands). "
                    "Prints per r_max the band MAE and max error, bonds and neighbours per atom (a model's cost "
                    "per epoch grows about as the bonds), whether the truncated S stays positive definite, and "
                    "recommends the cheapest r_max whose floor (and every larger one's) meets --target-meV. "
                    "INPUT: a trajectory folder, a dataset root (all its folders, or --prefix), or a DeePTB "
                    "training config (data_options.train; its model's r_max joins the candidates). Writes "
                    "OUT/cutoff_floor.json and OUT/cutoff_floor.png.")
    p.add_argument("input", metavar="INPUT", help="trajectory folder, dataset root or training config JSON")
    # defaults (None here, so that --help imports no eqtb.config): eqtb.config.CUTOFF_*
    p.add_argument("--rmax", type=float, nargs="+", default=None, metavar="A",
                   help="candidate cutoffs in Angstrom (default 5 6 7 8 10 12)")
    p.add_argument("--target-meV", dest="target", type=float, default=None, metavar="MEV",
                   help="target band MAE in meV (default 20)")
    p.add_argument("--window", type=float, default=None, metavar="EV", help="errors within E_F +- EV (default 5)")
    p.add_argument("--frames", type=int, default=None, metavar="N",
                   help="frames measured, spread evenly over the dataset (default 3)")
    p.add_argument("-p", "--prefix", default=None, help="with a dataset root: only the folders <prefix>.*")
    p.add_argument("--nel-atom", default=None, metavar="JSON",
                   help="valence electrons per element, e.g. '{\"Si\": 4}', for the Fermi level")
    p.add_argument("--e-fermi", type=float, default=None, metavar="EV", help="explicit Fermi level in eV")
    p.add_argument("-o", "--output", default=".", metavar="OUT", help="output folder (default: current folder)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=run_cutoff)


def _cutoff_input(path: Path, prefix: str | None):
    """(trajectory folders, basis or None (each folder's basis.dat), the config model's r_max or
    None) of an ``eqtb cutoff`` INPUT."""
    from eqtb.data.folder import DATA_SUFFIXES, DatasetError, data_folders, find_folders

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such training config or dataset folder")
    if path.is_dir():
        if prefix is not None:
            return find_folders(path, prefix), None, None
        if any(f.is_file() and f.name.endswith(DATA_SUFFIXES) for f in path.iterdir()):
            return [path], None, None
        folders = data_folders(path)
        if not folders:
            raise DatasetError(f"{path}: no trajectory folder here (none holds .dat/.traj/.h5 files)")
        return folders, None, None
    if prefix is not None:
        raise CLIError(f"{path}: --prefix applies to a dataset root, not to a configuration file")
    from eqtb.config import ConfigError, basis_from_config, config_to_dict, load_config, resolve_root
    from eqtb.data.folder import TrajectoryFolder
    from eqtb.train.evaluate import basis_mismatch

    cfg = load_config(path, kind="train")
    ds = cfg.data_options.train
    if ds.type != "DefaultDataset":
        raise CLIError(f"{path}: data_options.train.type {ds.type!r}: eqtb cutoff reads dataset folders "
                       f"(DefaultDataset); give the folders instead")
    root = resolve_root(ds.root, cfg.path, "data_options.train.root")
    folders = find_folders(root, ds.prefix, ds.separator) if ds.prefix else data_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no trajectory folder here (data_options.train.root)")
    basis = basis_from_config(cfg)
    for f in folders:
        own = TrajectoryFolder(f).basis
        why = basis_mismatch(own, basis) if own is not None else None
        if why:
            raise CLIError(f"{f / 'basis.dat'}: the dataset's basis does not fit common_options.basis of {path}: {why}")
    r_model = None
    if cfg.model_options is not None:
        from eqtb.models.base import ModelError, family_class  # importing eqtb.models registers the families

        plain = config_to_dict(cfg)
        try:
            r_model = family_class(plain["model_options"]).cutoff_of(plain["model_options"])
        except ModelError as exc:
            raise ConfigError(str(path), "model_options", str(exc)) from None
    return folders, basis, r_model


def run_cutoff(args) -> int:
    from eqtb.config import CUTOFF_FRAMES, CUTOFF_RMAX, CUTOFF_TARGET_MEV, CUTOFF_WINDOW
    from eqtb.plotting import plot_cutoff_floor
    from eqtb.tb.cutoff import dataset_floor, floor_table

    args.rmax = list(CUTOFF_RMAX) if args.rmax is None else args.rmax
    args.target = CUTOFF_TARGET_MEV if args.target is None else args.target
    args.window = CUTOFF_WINDOW if args.window is None else args.window
    args.frames = CUTOFF_FRAMES if args.frames is None else args.frames
    if args.window <= 0:
        raise CLIError(f"--window must be positive, got {args.window}")
    if args.target <= 0:
        raise CLIError(f"--target-meV must be positive, got {args.target}")
    if any(not r > 0 for r in args.rmax):
        raise CLIError(f"--rmax: cutoffs must be positive, got {args.rmax}")
    nel = _json_arg(args.nel_atom, "--nel-atom")
    folders, basis, r_model = _cutoff_input(Path(args.input), args.prefix)
    candidates = sorted(set(args.rmax))
    if r_model is not None and r_model not in candidates:
        candidates.append(r_model)
    res = dataset_floor(folders, candidates, args.frames, basis, e_fermi=args.e_fermi, nel_atom=nel,
                        window=args.window, target_meV=args.target, progress=False if args.quiet else None)
    for f in res["frames"]:
        for w in f["warnings"]:
            warn("cutoff", w)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summary = res["summary"]
    report = {"input": str(args.input), "folders": [str(f) for f in folders], "r_max_candidates": candidates,
              "config_r_max": r_model, **summary, "per_frame": res["frames"]}
    _write_json(out / "cutoff_floor.json", report)
    plot_cutoff_floor(summary, out / "cutoff_floor.png", title=f"cutoff floor of {Path(args.input).name}")
    if not args.quiet:
        print(floor_table(summary))
        if r_model is not None:
            row = next(r for r in summary["rows"] if r["r_max"] == r_model)
            m = row[summary["measure"]]
            print(f"the config's r_max {row['label']} A: floor {m['mae']:.2f} meV" if m and m["mae"] is not None
                  else f"the config's r_max {row['label']} A: no floor ({'; '.join(row['errors']) or 'no bands'})")
        for f in res["frames"]:
            b = f.get("blocks_vs_eigenvalues")
            if b:
                w = b["window"] if b["window"] else b["all"]
                print(f"{f['name']}: the untruncated blocks differ from eigenvalues.npy by {w['mae']:.2f} meV "
                      f"(MAE; max {w['max_abs']:.2f}), a floor no cutoff removes")
        print(f"wrote {out / 'cutoff_floor.json'} and {out / 'cutoff_floor.png'}")
    return 0


if __name__ == "__main__":  # pragma: no cover - ``python -m eqtb.cli``
    from eqtb.cli import (
        main as _main,  # the importable module, so its error classes are the real ones
    )

    sys.exit(_main())

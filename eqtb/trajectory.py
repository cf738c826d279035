"""A trained model over the frames of a trajectory (molecular dynamics): per-frame Fermi level,
band edges, gap and DOS, their averages and distributions, in worker processes, resumable.

>>> from eqtb.trajectory import read_frames, run_trajectory
>>> frames = read_frames("md.traj")                      # or a folder of structure files, "0:100:2"
>>> res = run_trajectory("slem.latest.pth", frames, "out/md", nel_atom={"Si": 4}, workers=2)
>>> res.summary["gap"]["mean"], res.summary["gap"]["std"]

The physics of one frame is :func:`eqtb.tb.trajectory.frame_spectrum` (dense k-mesh for small
cells, KPM + shift-invert Lanczos at Gamma for large ones); this module predicts H and S of each
frame with the model and runs it, then :func:`eqtb.tb.trajectory.aggregate`.

Files in ``out`` (all JSON in eV):

* ``frames/frame_NNNNNN.json``: one per frame, written atomically as soon as the frame is done
  (index, time, the frame's results, the settings' and the structure's fingerprints). A rerun with
  the same settings skips every frame whose file matches both fingerprints; frames whose settings
  or atoms changed, or that failed, are computed again. ``resume=False`` recomputes all.
* ``trajectory.json``: the settings, the statistics (:func:`eqtb.tb.trajectory.aggregate`) and a
  per-frame table of the scalars (no DOS), written when all frames are done.
* ``trajectory_dos.npy``: (npts, 3 + nframes) columns: E - E_F (eV), mean DOS, std over frames,
  then every frame's DOS (states / eV / cell).
* ``trajectory.png`` (``plot=True``): gap and band edges against frame (or time) and the mean DOS
  with its spread (:func:`eqtb.plotting.plot_trajectory`).

Workers: ``workers`` processes (spawned, each loads the model once and uses ``threads`` torch
threads; OMP/MKL threads are set to the same number); frames are handed out one at a time, so a
slow frame does not hold the others. ``workers=1`` runs in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from eqtb.structure import Structure
from eqtb.tb.trajectory import DEFAULT_WINDOW, SCALARS, aggregate, frame_spectrum

__all__ = ["TrajectoryError", "TrajectoryResult", "read_frames", "run_trajectory"]

#: per-frame file name
FRAME_FILE = "frame_{:06d}.json"

#: how often (s) the progress line is printed when the output is not a terminal
_PROGRESS_S = 20.0


class TrajectoryError(ValueError):
    """A trajectory that cannot be read or run as asked."""


@dataclass
class Frame:
    """One frame: its index in the source, its time (fs, or None) and structure."""

    index: int
    structure: Structure
    time: float | None = None


@dataclass
class TrajectoryResult:
    """Output of :func:`run_trajectory`: ``frames`` (per-frame dicts in frame order, with ``index``
    and ``time``), ``summary`` (:func:`eqtb.tb.trajectory.aggregate`), ``out`` (the folder),
    ``computed`` / ``skipped`` (frame indices done in this run / reused from an earlier one), and
    ``seconds`` (wall time of this run)."""

    frames: list[dict]
    summary: dict
    out: Path
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ reading
def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _parse_slice(frames: str | slice | Sequence[int] | None, n: int) -> list[int]:
    if frames is None:
        return list(range(n))
    if isinstance(frames, slice):
        return list(range(n))[frames]
    if isinstance(frames, str):
        text = frames.strip()
        try:
            if ":" in text:
                parts = [int(p) if p.strip() else None for p in text.split(":")]
                if len(parts) > 3:
                    raise ValueError
                return list(range(n))[slice(*parts)]
            return [list(range(n))[int(text)]]
        except (ValueError, IndexError):
            raise TrajectoryError(f"frames {frames!r}: expected an index or a slice START:STOP[:STEP] "
                                  f"of {n} frames") from None
    idx = [int(i) for i in frames]
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise TrajectoryError(f"frame indices {bad[:5]} out of range for {n} frames")
    return [i % n for i in idx]


def count_frames(path: str | Path) -> int:
    """Number of frames in a structure file (ASE formats; a folder: its structure files)."""
    path = Path(path)
    if path.is_dir():
        return len(_folder_files(path))
    if path.suffix == ".traj":
        from ase.io.trajectory import Trajectory

        with Trajectory(str(path)) as t:
            return len(t)
    from ase.io import iread

    try:
        return sum(1 for _ in iread(str(path), index=":"))
    except Exception:  # noqa: BLE001 - ASE raises many kinds; a file it cannot iterate is one frame
        return 1


def _folder_files(path: Path) -> list[Path]:
    files = [p for p in sorted(path.iterdir(), key=_natural_key)
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in (".json", ".npy", ".npz",
                                                                                       ".png", ".txt", ".md", ".h5")]
    return files


def read_frames(path: str | Path, frames: str | slice | Sequence[int] | None = None,
                timestep: float | None = None) -> list[Frame]:
    """The frames of a trajectory: an ASE-readable file with several frames (``.traj``, extxyz,
    XDATCAR, ...) or a folder of structure files (one frame each, in natural order of their names;
    JSON, NumPy, image and text files are ignored). ``frames``: an index, a slice string
    ``"START:STOP[:STEP]"``, a slice or a list of indices (default all). Times: ``timestep`` (fs per
    frame of the source) times the index; else ASE's ``atoms.info["time"]`` when present (fs); else
    None."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: trajectory does not exist")
    if path.is_dir():
        files = _folder_files(path)
        if not files:
            raise TrajectoryError(f"{path}: no structure files in the folder")
        idx = _parse_slice(frames, len(files))
        atoms = []
        for i in idx:
            try:
                atoms.append(read(str(files[i]), index=-1))
            except Exception as exc:  # noqa: BLE001
                raise TrajectoryError(f"cannot read frame {i} ({files[i]}): {exc}") from exc
        sources = [str(files[i]) for i in idx]
    else:
        try:
            all_atoms = read(str(path), index=":")
        except Exception as exc:  # noqa: BLE001
            raise TrajectoryError(f"cannot read trajectory {path}: {exc}") from exc
        idx = _parse_slice(frames, len(all_atoms))
        atoms = [all_atoms[i] for i in idx]
        sources = [f"{path}@{i}" for i in idx]
    if not atoms:
        raise TrajectoryError(f"{path}: no frames selected ({frames!r})")
    out = []
    for i, a, src in zip(idx, atoms, sources):
        t = float(timestep) * i if timestep is not None else a.info.get("time")
        out.append(Frame(int(i), Structure.from_ase(a, source=src), None if t is None else float(t)))
    return out


# ------------------------------------------------------------------------------------ fingerprints
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def structure_fingerprint(s: Structure) -> str:
    h = hashlib.sha256()
    for a in (s.numbers.astype(np.int64), np.round(np.asarray(s.positions, dtype=np.float64), 8),
              np.round(np.asarray(s.cell, dtype=np.float64), 8), np.asarray(s.pbc, dtype=bool)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _model_fingerprint(path: Path) -> dict:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path.resolve()), "size": st.st_size, "sha256": h.hexdigest()[:16]}


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, allow_nan=True))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ workers
_STATE: dict = {}


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def _init_worker(model_path: str, device: str, threads: int, settings: dict, out: str) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - optional
        pass
    _set_threads(threads)
    from eqtb.predict import Predictor

    _STATE.update(model=Predictor.load(model_path, device), settings=settings, out=Path(out))


def _compute(frame: Frame, model, settings: dict, out: Path) -> dict:
    """Predict one frame, run frame_spectrum, write its file; errors become an ``error`` entry."""
    t0 = time.perf_counter()
    rec = {"index": frame.index, "time": frame.time, "source": frame.structure.source,
           "settings": settings["fingerprint"], "structure": structure_fingerprint(frame.structure)}
    try:
        st = frame.structure
        if settings.get("supercell"):
            st = st.repeat(settings["supercell"])
        pred = model.predict(st, **({"chunk": settings["chunk"]} if settings.get("chunk") else {}))
        if pred.hamiltonian is None:
            raise TrajectoryError("the model does not predict a Hamiltonian")
        t1 = time.perf_counter()
        rec.update(frame_spectrum(pred.hamiltonian, pred.overlap, **settings["spectrum"]))
        rec["seconds"] = {"predict": t1 - t0, "spectrum": rec.pop("seconds"), "total": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the others; rerun retries it
        rec.update(error=f"{type(exc).__name__}: {exc}", seconds={"total": time.perf_counter() - t0})
    _write_json_atomic(out / "frames" / FRAME_FILE.format(frame.index), rec)
    return rec


def _worker_frame(frame: Frame) -> dict:
    return _compute(frame, _STATE["model"], _STATE["settings"], _STATE["out"])


# ------------------------------------------------------------------------------------ main entry
def run_trajectory(model, frames: Sequence[Frame], out: str | Path, *, workers: int = 1, threads: int = 1,
                   device: str = "cpu", chunk: int | None = None, supercell=None, resume: bool = True,
                   nel_atom: Mapping[str, float] | None = None, e_fermi: float | None = None,
                   task_e_fermi: float | None = None, task_nel_atom: Mapping[str, float] | None = None,
                   mesh=None, kspacing: float = 0.1, window: Sequence[float] = DEFAULT_WINDOW,
                   sigma: float = 0.05, method: str = "auto", dense_max_norb: int = 6000,
                   n_moments: int = 256, n_random: int = 8, nbands: int = 16, bins: int = 20,
                   plot: bool = True, title: str | None = None, progress: bool | None = False) -> TrajectoryResult:
    """Run ``model`` (a checkpoint path, or a :class:`eqtb.predict.Predictor` loaded from one: its
    file is what the settings fingerprint and worker processes read) over ``frames``
    (:func:`read_frames`) and write the files of the module docstring to ``out``.

    ``workers`` processes with ``threads`` torch threads each; ``supercell`` (n1, n2, n3) repeats
    every frame first; the Fermi-level, mesh, DOS-window and sparse-route arguments are those of
    :func:`eqtb.tb.trajectory.frame_spectrum` (``window`` = (emin, emax, npts) relative to each
    frame's Fermi level); ``bins`` histogram bins. ``resume``: reuse frame files of an earlier run
    with the same settings and atoms. ``progress``: True a bar, None a bar on a terminal and a line
    every ~20 s otherwise, False nothing. Returns a :class:`TrajectoryResult`."""
    from eqtb.predict import Predictor
    from eqtb.tb.spectrum import progress_reporter

    t_start = time.perf_counter()
    if int(workers) < 1:
        raise TrajectoryError(f"workers must be >= 1, got {workers}")
    if not frames:
        raise TrajectoryError("no frames to run")
    idx = [f.index for f in frames]
    if len(set(idx)) != len(idx):
        raise TrajectoryError("frame indices must be unique")
    predictor = model if isinstance(model, Predictor) else None
    model_path = Path(getattr(model, "source", "") if predictor is not None else model)
    if not model_path.is_file():
        if predictor is None or workers > 1:
            raise TrajectoryError(f"{model_path}: model checkpoint does not exist (worker processes load the "
                                  "model from its file)")
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    window = (float(window[0]), float(window[1]), int(window[2]))
    spectrum = {"nel_atom": dict(nel_atom) if nel_atom else None, "e_fermi": e_fermi,
                "task_e_fermi": task_e_fermi, "task_nel_atom": dict(task_nel_atom) if task_nel_atom else None,
                "mesh": list(mesh) if mesh is not None else None, "kspacing": float(kspacing),
                "window": list(window), "sigma": float(sigma), "method": method,
                "dense_max_norb": int(dense_max_norb), "n_moments": int(n_moments), "n_random": int(n_random),
                "nbands": int(nbands)}
    model_fp = _model_fingerprint(model_path) if model_path.is_file() else {"object": repr(predictor)}
    settings = {"spectrum": spectrum, "supercell": list(supercell) if supercell else None, "chunk": chunk,
                "model": model_fp}
    settings["fingerprint"] = _digest({k: v for k, v in settings.items() if k != "chunk"})

    # frames already done with these settings and atoms
    done: dict[int, dict] = {}
    if resume:
        for f in frames:
            p = out / "frames" / FRAME_FILE.format(f.index)
            if not p.is_file():
                continue
            try:
                rec = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if (rec.get("settings") == settings["fingerprint"] and not rec.get("error")
                    and rec.get("structure") == structure_fingerprint(f.structure)):
                rec["time"] = f.time
                done[f.index] = rec
    todo = [f for f in frames if f.index not in done]
    results: dict[int, dict] = dict(done)
    bar = progress_reporter(len(todo), "frames", progress, unit="frame") if todo else None
    try:
        if todo and int(workers) == 1:
            import torch

            before = torch.get_num_threads()
            _set_threads(threads)
            try:
                pred = predictor if predictor is not None else Predictor.load(model_path, device)
                for f in todo:
                    results[f.index] = _compute(f, pred, settings, out)
                    if bar is not None:
                        bar.update(1)
            finally:
                torch.set_num_threads(before)
        elif todo:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(int(workers), len(todo)), mp_context=ctx,
                                     initializer=_init_worker,
                                     initargs=(str(model_path), device, threads, settings, str(out))) as pool:
                futs = {pool.submit(_worker_frame, f): f.index for f in todo}
                try:
                    for fut in as_completed(futs):
                        results[futs[fut]] = fut.result()
                        if bar is not None:
                            bar.update(1)
                except BaseException:
                    for fut in futs:
                        fut.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()
    ordered = [results[i] for i in idx]
    summary = aggregate(ordered, window, bins)
    table = [{"index": r["index"], "time": r.get("time"),
              **{k: r.get(k) for k in (*SCALARS, "insulating", "gap_type", "method", "error")},
              "seconds": (r.get("seconds") or {}).get("total")} for r in ordered]
    seconds = time.perf_counter() - t_start
    n_new = len(todo)
    per_frame = [r["seconds"]["total"] for r in ordered if r["index"] in {f.index for f in todo}
                 and isinstance(r.get("seconds"), dict)]
    doc = {"settings": {k: v for k, v in settings.items()}, "n_frames": len(ordered),
           "frames_computed": n_new, "frames_reused": len(done), "workers": int(workers),
           "wall_seconds": seconds, "seconds_per_frame_wall": seconds / n_new if n_new else None,
           "seconds_per_frame_cpu": float(np.mean(per_frame)) if per_frame else None,
           "energy_unit": "eV", "statistics": summary, "frames": table}
    _write_json_atomic(out / "trajectory.json", doc)
    files = ["trajectory.json", "frames/"]
    ok = [r for r in ordered if r.get("dos") is not None]
    if ok:
        E = np.asarray(summary["energies"])
        cols = [E, np.asarray(summary["dos_mean"]), np.asarray(summary["dos_std"])] + [np.asarray(r["dos"]) for r in ok]
        np.save(out / "trajectory_dos.npy", np.column_stack(cols))
        files.append("trajectory_dos.npy")
    if plot and ok:
        from eqtb.plotting import plot_trajectory

        plot_trajectory(ordered, summary, out / "trajectory.png", title=title)
        files.append("trajectory.png")
    return TrajectoryResult(ordered, summary, out, [f.index for f in todo], sorted(done), seconds, files)

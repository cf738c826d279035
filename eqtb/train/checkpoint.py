"""Training checkpoints: atomic writes, rotation, best-model tracking, random state, checked loading.

File names follow DeePTB (FORMATS.md section 7.1) in ``<output>/checkpoint/``:
``<name>.iter<N>.pth`` (rotated, at most ``max_ckpt`` kept), ``<name>.latest.pth`` and
``<name>.best.pth``. Unlike DeePTB, ``latest`` and ``best`` are real files, not symlinks, so a
checkpoint folder can be copied or archived without dangling links.

Every file is written by :func:`save_atomic`: a reader sees the previous complete file or the new
complete file, never a partial one, even when the writer is killed mid-way.

An eqtb checkpoint is a dict with at least :data:`REQUIRED_KEYS` (``config``, ``model_state_dict``,
``eqtb_version``); :func:`load_checkpoint` checks them. The trainer also stores DeePTB's
``task``, ``optimizer_state_dict``, ``lr_scheduler_state_dict``, ``epoch``, ``iteration`` and
``stats``, plus :func:`rng_state` and :meth:`CheckpointManager.state_dict` for exact restarts.
:func:`load_checkpoint` also reads DeePTB's nnsk models (checkpoints and JSON models) as eqtb
checkpoint dicts (:mod:`eqtb.models.deeptb`).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqtb.models.base import ModelError, family_name
from eqtb.models.deeptb import from_deeptb, is_deeptb_json


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not an eqtb checkpoint."""


#: keys every eqtb checkpoint dict has
REQUIRED_KEYS = ("config", "model_state_dict", "eqtb_version")


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so a rename survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns ``path`` as a Path.

    The data go to a temporary file in the same directory (created if needed), which is flushed,
    fsync'ed and then renamed over ``path`` with :func:`os.replace`. Guarantees: ``path`` holds
    either its previous content (or does not exist) or the complete new file; if serialisation or
    writing fails the exception propagates, ``path`` is untouched and the temporary file is
    removed. An existing symlink at ``path`` is replaced by a regular file. The new file gets the
    usual permissions (``0o666`` minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


class CheckpointManager:
    """Writes ``<name>.latest.pth``, ``<name>.best.pth`` and rotated ``<name>.iter<N>.pth`` files
    in ``directory`` (created if needed), each atomically (:func:`save_atomic`) as a real file.

    ``best_metric`` is the lowest metric saved so far (``None`` before the first); keep it across
    restarts by storing :meth:`state_dict` in the checkpoint and calling :meth:`load_state_dict`.
    ``write=False`` (the processes other than rank 0 of a ``torchrun`` launch) keeps the same
    ``best_metric`` and returns the same paths but writes and deletes no file.
    """

    def __init__(self, directory: str | os.PathLike, name: str, max_ckpt: int = 4, write: bool = True):
        if not isinstance(name, str) or not name or "/" in name or os.sep in name or name in {".", ".."}:
            raise ValueError(f"checkpoint name must be a plain file-name stem, got {name!r}")
        if isinstance(max_ckpt, bool) or not isinstance(max_ckpt, int) or max_ckpt < 1:
            raise ValueError(f"max_ckpt must be an integer >= 1, got {max_ckpt!r}")
        self.directory = Path(directory)
        self.name = name
        self.max_ckpt = max_ckpt
        self.best_metric: float | None = None
        self.write = write
        self._iter_re = re.compile(rf"^{re.escape(name)}\.iter(\d+)\.pth$")

    @property
    def latest_path(self) -> Path:
        return self.directory / f"{self.name}.latest.pth"

    @property
    def best_path(self) -> Path:
        return self.directory / f"{self.name}.best.pth"

    def iter_path(self, iteration: int) -> Path:
        return self.directory / f"{self.name}.iter{int(iteration)}.pth"

    def iter_files(self) -> list[tuple[int, Path]]:
        """``(N, path)`` of the ``<name>.iter<N>.pth`` files present, sorted by N."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = self._iter_re.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save_latest(self, state: dict) -> Path:
        """Write ``state`` to ``<name>.latest.pth`` (replacing it); returns the path."""
        return save_atomic(state, self.latest_path) if self.write else self.latest_path

    def is_improvement(self, metric: float) -> bool:
        """True when ``metric`` is finite and lower than :attr:`best_metric` (or none is set)."""
        metric = float(metric)
        return math.isfinite(metric) and (self.best_metric is None or metric < self.best_metric)

    def save_best(self, state: dict, metric: float) -> bool:
        """Write ``state`` to ``<name>.best.pth`` only if ``metric`` improves on :attr:`best_metric`
        (lower is better; NaN/inf never improve). Returns True if written, in which case
        :attr:`best_metric` becomes ``metric`` (only after the file is complete)."""
        if not self.is_improvement(metric):
            return False
        if self.write:
            save_atomic(state, self.best_path)
        self.best_metric = float(metric)
        return True

    def save_iter(self, state: dict, iteration: int) -> Path:
        """Write ``state`` to ``<name>.iter<iteration>.pth`` and rotate: of the iter files with
        N <= ``iteration`` present in the directory (including ones left by an earlier run), only
        the ``max_ckpt`` highest-numbered are kept, the others deleted. Files with N above
        ``iteration`` (left by an abandoned run that went further before a restart from an earlier
        checkpoint) are not touched; this run replaces them when it reaches their N. Returns the
        written path."""
        if isinstance(iteration, bool) or int(iteration) != iteration or iteration < 0:
            raise ValueError(f"iteration must be a non-negative integer, got {iteration!r}")
        iteration = int(iteration)
        if not self.write:
            return self.iter_path(iteration)
        path = save_atomic(state, self.iter_path(iteration))
        older = [p for n, p in self.iter_files() if n <= iteration]
        for p in older[: max(0, len(older) - self.max_ckpt)]:
            p.unlink(missing_ok=True)
        return path

    def state_dict(self) -> dict[str, Any]:
        """``{"best_metric": float | None}``; picklable."""
        return {"best_metric": self.best_metric}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :attr:`best_metric` from :meth:`state_dict`."""
        best = state.get("best_metric")
        self.best_metric = None if best is None else float(best)

    def __repr__(self) -> str:
        return (f"CheckpointManager({str(self.directory)!r}, {self.name!r}, max_ckpt={self.max_ckpt}, "
                f"best_metric={self.best_metric})")


def rng_state() -> dict[str, Any]:
    """Snapshot of the global generators: Python ``random``, NumPy's legacy global
    ``np.random``, torch CPU and (when CUDA is available) every CUDA device. Restoring it with
    :func:`set_rng_state` makes the following draws identical to those without interruption.
    Explicit generator objects (``torch.Generator``, ``np.random.Generator``) are not included."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators from :func:`rng_state`. Keys that are absent are left alone. CUDA states
    are restored when CUDA is available with at least as many devices; otherwise (e.g. a GPU run
    resumed on CPU) they are skipped with a warning."""
    if "python" in state:
        py = state["python"]
        # a pickle round trip keeps tuples, but a JSON-like copy may turn them into lists
        random.setstate((py[0], tuple(py[1]), py[2]) if isinstance(py, (list, tuple)) else py)
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])
        else:
            warnings.warn(f"checkpoint has CUDA random states for {len(cuda)} device(s) but "
                          f"{torch.cuda.device_count()} are available here; CUDA draws will differ "
                          "from the uninterrupted run", RuntimeWarning, stacklevel=2)


def resume_path(path: str | os.PathLike) -> Path:
    """The checkpoint to resume a run from: ``path`` itself when it is a file; for a run folder (the
    ``-o`` of ``eqtb train``, or its ``checkpoint/`` folder) its ``<family>.latest.pth``, which the
    trainer rewrites with every periodic checkpoint and at the end, so it is the newest state.
    Raises :class:`CheckpointError` naming the folder when there is none, or several families."""
    path = Path(path)
    if not path.is_dir():
        return path
    folder = path / "checkpoint" if (path / "checkpoint").is_dir() else path
    found = sorted(folder.glob("*.latest.pth"))
    if len(found) != 1:
        what = "no *.latest.pth" if not found else f"several ({', '.join(f.name for f in found)})"
        raise CheckpointError(f"{folder}: {what} to resume from; give the checkpoint file")
    return found[0]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load an eqtb checkpoint dict with ``torch.load(path, map_location, weights_only=False)``, or
    convert a DeePTB nnsk or mix model into one.

    Only load files you trust: unpickling can run arbitrary code.

    DeePTB's nnsk and mix checkpoints (``.pth`` with ``config`` and ``model_state_dict``) and nnsk
    JSON models (version 2) are converted by :func:`eqtb.models.deeptb.from_deeptb` into ``config``
    (eqtb ``common_options`` and ``model_options``), ``model_state_dict`` of the equivalent
    :class:`eqtb.models.sk.SlaterKoster` or :class:`eqtb.models.mix.Mix`, ``model_family``
    (``"nnsk"`` or ``"mix"``) and ``converted_from``
    ``"deeptb"``; such a dict has no optimizer state, so it initialises or predicts but does not
    resume a run.

    Raises :class:`CheckpointError` naming ``path`` when the file does not exist (or is a
    directory), cannot be read (truncated or corrupt: whatever ``torch.load`` raised is chained),
    is not a dict, lacks any of :data:`REQUIRED_KEYS` (with a hint for DeePTB v1 checkpoints), or
    is a DeePTB model eqtb cannot convert (dftbsk, E3 models; the reason is given).
    Guarantees the returned dict has all :data:`REQUIRED_KEYS`.
    """
    path = Path(path)
    if not path.exists():
        if str(path) in ("poly2", "poly4"):
            raise CheckpointError(f"{path}: checkpoint file not found ({path} names one of DeePTB's built-in "
                                  f"empirical Slater-Koster parameter sets, which eqtb does not ship)")
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint file (is it a directory?)")
    obj = _read_json(path)
    if obj is None:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... here
            raise CheckpointError(f"{path}: cannot read the checkpoint, the file is truncated or "
                                  f"corrupt ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an eqtb checkpoint (it holds a {type(obj).__name__}, "
                              "expected a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if not missing:
        return obj
    hint = ""
    if "model_config" in obj:
        hint = " (this looks like a DeePTB v1 checkpoint, which eqtb cannot load)"
    elif ("config" in obj and "model_state_dict" in obj) or is_deeptb_json(obj):
        try:
            return _from_deeptb(obj)
        except ModelError as err:
            hint = f" (this looks like a DeePTB model that eqtb cannot convert: {err})"
        except (KeyError, TypeError, ValueError) as err:
            hint = f" (this looks like a DeePTB model that eqtb cannot read: {type(err).__name__}: {err})"
    raise CheckpointError(f"{path}: not an eqtb checkpoint, missing key(s) "
                          f"{', '.join(repr(k) for k in missing)}{hint}")


def _read_json(path: Path) -> Any:
    """The content of a JSON file (a DeePTB JSON model), or None for any other file."""
    with open(path, "rb") as fh:
        if fh.read(1).strip() not in (b"{", b""):
            return None
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _from_deeptb(obj: dict) -> dict[str, Any]:
    """An eqtb checkpoint dict of the DeePTB model ``obj`` (:func:`eqtb.models.deeptb.from_deeptb`)."""
    from eqtb import __version__

    config, state = from_deeptb(obj)
    return {"config": config, "model_state_dict": state, "eqtb_version": __version__,
            "model_family": family_name(config["model_options"]),
            "quantity": "hamiltonian", "converted_from": "deeptb"}

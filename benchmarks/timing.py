"""Timing helpers shared by the training benchmarks (a module, not a script).

One training process (``eqtb train`` or DeePTB's ``dptb train``) is run by :func:`train_process`:
it follows the epochs as they finish -- new lines of eqtb's ``log/history.jsonl``, or DeePTB's
``iteration:`` log lines -- and stamps each with the wall clock and the process's CPU time (user +
system, from ``/proc/<pid>/stat``), so seconds per epoch are available both ways: on a shared,
loaded machine the CPU figures are the ones that compare. A CPU-time budget of an eqtb run is
eqtb's own ``--max-cpu-time`` (:func:`eqtb_train`). The peak RSS and total CPU time come from ``wait4``.

Also here: the Si64 tutorial work folder laid out like DeePTB's tutorial, the tutorial config with
one model swapped in (:func:`si64_config`), and the in-process alternating training steps used
for the least noisy model-to-model ratios (:func:`alternating_steps`).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SI64 = HERE.parent.parent / "shared" / "data" / "si64_abacus"
ELCT_EXAMPLE = HERE.parent / "examples" / "elct_si64.json"
DPTB_VENV = Path.home() / ".cache" / "eqtb-reference" / "dptb-venv"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class ProcessRun:
    """What :func:`train_process` measured: ``epoch_wall`` / ``epoch_cpu`` (seconds of each epoch
    after the first, from consecutive stamps), ``epochs`` (stamps seen), ``cpu_s`` / ``wall_s`` of
    the whole process, ``peak_rss_GB``, ``tail``
    (its last output lines)."""

    def __init__(self, stamps: list[tuple[float, float]], cpu_s: float, wall_s: float, peak_rss_GB: float,
                 tail: list[str]):
        self.epochs = len(stamps)
        self.epoch_wall = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
        self.epoch_cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
        self.cpu_s, self.wall_s, self.peak_rss_GB, self.tail = cpu_s, wall_s, peak_rss_GB, tail

    def summary(self) -> dict:
        """Median and fastest seconds per epoch (first epoch excluded: graph cache, warm-up), CPU
        and wall, with the process totals."""
        out = {"epochs": self.epochs}
        for kind, secs in (("cpu", self.epoch_cpu), ("wall", self.epoch_wall)):
            out[f"s_per_epoch_{kind}_median"] = round(statistics.median(secs), 4) if secs else None
            out[f"s_per_epoch_{kind}_min"] = round(min(secs), 4) if secs else None
        out.update({"process_cpu_s": round(self.cpu_s, 2), "process_wall_s": round(self.wall_s, 2),
                    "peak_rss_GB": self.peak_rss_GB})
        return out


def train_process(cmd: list[str], cwd: Path, history: Path | None = None, marker: str | None = None,
                  poll: float = 0.05) -> ProcessRun:
    """Run ``cmd`` in ``cwd`` with ``OMP_NUM_THREADS`` (default 1) and stamp its epochs: a new line
    of the file ``history`` (eqtb) or an output line containing ``marker`` (DeePTB's
    ``"iteration:"``). Raises RuntimeError with the output's tail when the process fails."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    marked = [0]

    def read() -> None:
        for line in p.stdout:
            tail.append(line)
            del tail[:-40]
            if marker is not None and marker in line:
                marked[0] += 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stamps: list[tuple[float, float]] = []
    last_cpu = 0.0
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        cpu = cpu_seconds(p.pid)
        last_cpu = cpu if cpu is not None else last_cpu
        if history is not None:
            try:
                done = history.read_bytes().count(b"\n")
            except OSError:
                done = 0
        else:
            done = marked[0]
        now = time.perf_counter()
        stamps += [(now, last_cpu)] * (done - len(stamps))
        time.sleep(poll)
    p.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{''.join(tail)}")
    return ProcessRun(stamps, usage.ru_utime + usage.ru_stime, time.perf_counter() - t0,
                      round(usage.ru_maxrss / 1024**2, 3), tail)


def eqtb_train(config: Path, out: Path, cwd: Path, extra: list[str] = (), cpu_budget: float | None = None) -> ProcessRun:
    """``eqtb train config -o out -q extra`` in its own process (see :func:`train_process`);
    ``cpu_budget``: seconds of its CPU time (``--max-cpu-time``: it stops after the epoch that
    reaches them and writes its checkpoints)."""
    shutil.rmtree(out, ignore_errors=True)
    budget = ["--max-cpu-time", str(cpu_budget)] if cpu_budget is not None else []
    cmd = [sys.executable, "-m", "eqtb.cli", "train", str(config), "-o", str(out), "-q", *budget, *extra]
    return train_process(cmd, cwd, history=out / "log" / "history.jsonl")


def dptb_train(config: Path, out: Path, cwd: Path, venv: Path = DPTB_VENV) -> ProcessRun:
    """``dptb train config -o out`` of DeePTB's virtual environment ``venv``, epochs stamped at its
    ``iteration:`` log lines (one per epoch on the one-frame Si64 data), as ``time_train_si64.sh``
    of ``../shared/tools/reference-dptb`` times them."""
    shutil.rmtree(out, ignore_errors=True)
    return train_process([str(venv / "bin" / "dptb"), "train", str(config), "-o", str(out)], cwd,
                         marker="iteration:")


def si64_workdir(work: Path) -> Path:
    """``work/data/Si64.0`` and ``work/data/info.json`` as DeePTB's tutorial has them (the configs'
    root ``./data`` resolves there); returns ``work``."""
    (work / "data").mkdir(parents=True, exist_ok=True)
    if not (work / "data" / "Si64.0").exists():
        shutil.copytree(SI64 / "Si64.0", work / "data" / "Si64.0")
    shutil.copy(SI64 / "info.json", work / "data" / "info.json")
    return work


def si64_config(work: Path, model: str, epochs: int | None = None, name: str | None = None) -> Path:
    """The Si64 tutorial config (``input_short_cpu.json``) for ``model``: ``slem`` unchanged, ``lem``
    with ``embedding.method`` edited (the only edit), ``elct`` / ``elct_strict`` from
    ``examples/elct_si64.json`` (``strictly_local`` set). ``epochs``: ``num_epoch``; checkpoints
    only at the end (``save_freq`` 10^6). Written to ``work/<name or model>.json``."""
    if model in ("slem", "lem"):
        cfg = json.loads((SI64 / "input_short_cpu.json").read_text())
        cfg["model_options"]["embedding"]["method"] = model
    elif model in ("elct", "elct_strict"):
        cfg = json.loads(ELCT_EXAMPLE.read_text())
        cfg["model_options"]["embedding"]["strictly_local"] = model == "elct_strict"
    else:
        raise ValueError(f"no Si64 config for {model!r}")
    if epochs is not None:
        cfg["train_options"]["num_epoch"] = epochs
        cfg["train_options"]["save_freq"] = 10**6
    path = work / f"{name or model}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def alternating_steps(work: Path, models: list[str], steps: int) -> dict:
    """Training steps (forward, loss, backward, Adam) of the Si64 ``models`` alternated in this
    process, one thread: min and median seconds per step of each, and each one's ratio to the first."""
    import warnings

    import torch

    from eqtb.config import load_config
    from eqtb.train.data import make_batch
    from eqtb.train.trainer import Trainer

    torch.set_num_threads(1)
    trainers = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tutorial config's ignored keys were reported by the runs
        for m in models:
            trainers[m] = Trainer(load_config(si64_config(work, m, name=f"steps_{m}")), work / f"steps_{m}",
                                  progress=False)

    def step(t: Trainer) -> float:
        start = time.perf_counter()
        batch = make_batch(t.train_set[:1])
        t.model.train()
        loss, _ = t.loss_fn.evaluate(t.model(batch.inputs), batch)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {m: [] for m in trainers}
    for t in trainers.values():
        step(t)  # warm-up, geometry cache
    for _ in range(steps):
        for m, t in trainers.items():
            times[m].append(step(t))
    out = {f"{m}_s_per_step": {"min": round(min(v), 4), "median": round(statistics.median(v), 4)}
           for m, v in times.items()}
    first = models[0]
    for m in models[1:]:
        for stat in ("min", "median"):
            out[f"{m}_over_{first}_{stat}"] = round(out[f"{m}_s_per_step"][stat] / out[f"{first}_s_per_step"][stat], 3)
    return out

"""Seconds per training epoch of LEM on the Si64 tutorial data, against SLEM and DeePTB's LEM, back to back.

    OMP_NUM_THREADS=1 python benchmarks/train_lem_si64.py [--epochs 30] [--rounds 2] [--dptb VENV | --no-dptb]

The config is DeePTB's Si64 tutorial input (``../shared/data/si64_abacus/input_short_cpu.json``)
with ``model_options.embedding.method`` set to ``"lem"`` -- the only edit. Each round trains it
for ``--epochs`` epochs with ``dptb train`` when DeePTB 2.2.1's virtual environment is there
(``--dptb``, default ``~/.cache/eqtb-reference/dptb-venv``, built by
``../shared/tools/reference-dptb/setup.sh``; per-epoch times from the arrival of its log lines, as
``time_train_si64.sh`` measures them), then with ``eqtb train`` (LEM), then the unedited config
(``slem``) with ``eqtb train``. Every run is a separate process in a scratch folder laid out like
DeePTB's tutorial, one thread. Prints JSON: per run kind the median seconds per epoch (first
epoch excluded: graph cache, warm-up) and the fastest epoch, the peak RSS of the process, the
final training loss and, for eqtb, the parameter count and the latest model's H and S block MAE
on the training frame; then the ratios. The machines are shared and noisy: ``--rounds`` repeats
the runs in turn and reports, per run kind, the round with the smallest median (the least
disturbed) along with every round's median; quote ratios measured back to back. Last, the least
noisy LEM / SLEM figure: one process holding both models, training steps alternated between them
(``--steps`` each; forward, loss, backward, Adam step), their min and median seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "si64_abacus"
DPTB = Path.home() / ".cache" / "eqtb-reference" / "dptb-venv"


def run(cmd: list[str], cwd: Path, on_line=None) -> float:
    """Run ``cmd`` (one thread), calling ``on_line(line)`` for each line of its output; return its
    peak RSS in GB."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in p.stdout:
        tail = (tail + [line])[-20:]
        if on_line is not None:
            on_line(line)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
    return round(usage.ru_maxrss / 1024**2, 3)


def config(work: Path, method: str, epochs: int) -> Path:
    cfg = json.loads((DATA / "input_short_cpu.json").read_text())
    cfg["model_options"]["embedding"]["method"] = method
    cfg["train_options"]["num_epoch"] = epochs
    path = work / f"{method}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def eqtb_run(work: Path, method: str, epochs: int) -> dict:
    sys.path.insert(0, str(HERE))
    from train_si64 import errors  # the tutorial's figures, as benchmarks/train_si64.py reports them

    out = work / f"eqtb_{method}"
    shutil.rmtree(out, ignore_errors=True)
    rss = run([sys.executable, "-m", "eqtb.cli", "train", str(config(work, method, epochs)), "-o", str(out), "-q"],
              work)
    hist = [json.loads(line) for line in open(out / "log" / "history.jsonl")]
    secs = [h["seconds"] for h in hist[1:]] or [hist[0]["seconds"]]
    res = {"s_per_epoch_median": round(statistics.median(secs), 4), "s_per_epoch_min": round(min(secs), 4),
           "epochs": len(hist), "peak_rss_GB": rss, "final_loss": hist[-1]["train_loss"]}
    res.update(errors(out / "checkpoint" / f"{method}.latest.pth", work / "data" / "Si64.0"))
    return res


def dptb_run(work: Path, venv: Path, epochs: int) -> dict:
    path = config(work, "lem", epochs)
    cfg = json.loads(path.read_text())
    cfg["train_options"]["save_freq"] = 10**6
    path = work / "dptb_lem.json"
    path.write_text(json.dumps(cfg, indent=1))
    stamps, losses = [], []

    def on_line(line: str) -> None:
        if "iteration:" in line:
            stamps.append(time.time())
            part = line.split("train_loss:")
            if len(part) > 1:
                losses.append(float(part[1].split()[0]))

    shutil.rmtree(work / "dptb_out", ignore_errors=True)
    rss = run([str(venv / "bin" / "dptb"), "train", str(path), "-o", str(work / "dptb_out")], work, on_line)
    secs = [b - a for a, b in zip(stamps, stamps[1:])]
    secs = secs[1:] or secs
    return {"s_per_epoch_median": round(statistics.median(secs), 4), "s_per_epoch_min": round(min(secs), 4),
            "epochs": len(stamps), "peak_rss_GB": rss, "final_loss": losses[-1] if losses else None}


def alternating_steps(work: Path, steps: int) -> dict:
    """Training steps of LEM and SLEM alternated in this process (one thread): seconds per step."""
    import warnings

    import torch

    from eqtb.config import load_config
    from eqtb.train.data import make_batch
    from eqtb.train.trainer import Trainer

    torch.set_num_threads(1)
    trainers = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the config's ignored keys were reported by the runs above
        for method in ("lem", "slem"):
            trainers[method] = Trainer(load_config(config(work, method, 1)), work / f"steps_{method}", progress=False)

    def step(t: Trainer) -> float:
        start = time.perf_counter()
        batch = make_batch(t.train_set[:1])
        t.model.train()
        loss, _ = t.loss_fn.evaluate(t.model(batch.inputs), batch)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
        return time.perf_counter() - start

    times = {m: [] for m in trainers}
    for m, t in trainers.items():
        step(t)  # warm-up, geometry cache
    for _ in range(steps):
        for m, t in trainers.items():
            times[m].append(step(t))
    out = {f"{m}_s_per_step": {"min": round(min(v), 4), "median": round(statistics.median(v), 4)}
           for m, v in times.items()}
    for stat in ("min", "median"):
        out[f"lem_over_slem_{stat}"] = round(out["lem_s_per_step"][stat] / out["slem_s_per_step"][stat], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2, help="repeat the runs in turn this many times")
    ap.add_argument("--steps", type=int, default=20, help="alternated in-process steps per model (0: none)")
    ap.add_argument("--dptb", type=Path, default=DPTB, help="DeePTB 2.2.1 virtual environment")
    ap.add_argument("--no-dptb", action="store_true", help="eqtb only")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eqtb_lem_si64_"))
    try:
        (work / "data").mkdir()
        shutil.copytree(DATA / "Si64.0", work / "data" / "Si64.0")
        shutil.copy(DATA / "info.json", work / "data" / "info.json")
        result = {"threads": int(os.environ.get("OMP_NUM_THREADS", "1")), "config": str(DATA / "input_short_cpu.json"),
                  "edit": {"model_options.embedding.method": "lem"}}
        use_dptb = not args.no_dptb and (args.dptb / "bin" / "dptb").is_file()
        runs = {"eqtb_lem": lambda: eqtb_run(work, "lem", args.epochs),
                "eqtb_slem": lambda: eqtb_run(work, "slem", args.epochs)}
        if use_dptb:
            runs = {"deeptb_lem": lambda: dptb_run(work, args.dptb, args.epochs), **runs}
        rounds: dict[str, list[dict]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, fn in runs.items():
                rounds[k].append(fn())
        for k, rs in rounds.items():
            result[k] = dict(min(rs, key=lambda r: r["s_per_epoch_median"]),
                             round_medians=[r["s_per_epoch_median"] for r in rs])
        for a, b in [("eqtb_lem", "eqtb_slem")] + ([("deeptb_lem", "eqtb_lem")] if use_dptb else []):
            for stat in ("median", "min"):
                ratio = result[a][f"s_per_epoch_{stat}"] / result[b][f"s_per_epoch_{stat}"]
                result[f"{a}_over_{b}_{stat}"] = round(ratio, 3)
        if args.steps:
            result["eqtb_alternating_steps"] = alternating_steps(work, args.steps)
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

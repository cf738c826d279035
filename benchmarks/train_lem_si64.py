"""Seconds per training epoch of LEM on the Si64 tutorial data, against SLEM and DeePTB's LEM, back to back.

    OMP_NUM_THREADS=1 python benchmarks/train_lem_si64.py [--epochs 30] [--rounds 2] [--dptb VENV | --no-dptb]

The config is DeePTB's Si64 tutorial input (``../shared/data/si64_abacus/input_short_cpu.json``)
with ``model_options.embedding.method`` set to ``"lem"`` -- the only edit. Each round trains it
for ``--epochs`` epochs with ``dptb train`` when DeePTB 2.2.1's virtual environment is there
(``--dptb``, default ``~/.cache/eqtb-reference/dptb-venv``, built by
``../shared/tools/reference-dptb/setup.sh``; per-epoch times from the arrival of its log lines, as
``time_train_si64.sh`` measures them), then with ``eqtb train`` (LEM), then the unedited config
(``slem``) with ``eqtb train``. Every run is a separate process in a scratch folder laid out like
DeePTB's tutorial, one thread, timed by ``benchmarks/timing.py`` (CPU and wall time of each epoch).
Prints JSON: per run kind the median seconds per epoch (first
epoch excluded: graph cache, warm-up) and the fastest epoch, the peak RSS of the process, the
final training loss and, for eqtb, the parameter count and the latest model's H and S block MAE
on the training frame; then the ratios. The machines are shared and noisy: ``--rounds`` repeats
the runs in turn and reports, per run kind, the round with the smallest CPU median (the least
disturbed) along with every round's median; quote ratios measured back to back. Last, the least
noisy LEM / SLEM figure: one process holding both models, training steps alternated between them
(``--steps`` each; forward, loss, backward, Adam step), their min and median seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from timing import DPTB_VENV, SI64, alternating_steps, dptb_train, eqtb_train, si64_config, si64_workdir  # noqa: E402
from train_si64 import errors  # noqa: E402  (the tutorial's figures, as benchmarks/train_si64.py reports them)


def eqtb_run(work: Path, method: str, epochs: int) -> dict:
    out = work / f"eqtb_{method}"
    res = eqtb_train(si64_config(work, method, epochs), out, work).summary()
    hist = [json.loads(line) for line in open(out / "log" / "history.jsonl")]
    res["final_loss"] = hist[-1]["train_loss"]
    res.update(errors(out / "checkpoint" / f"{method}.latest.pth", work / "data" / "Si64.0"))
    return res


def dptb_run(work: Path, venv: Path, epochs: int) -> dict:
    run = dptb_train(si64_config(work, "lem", epochs, "dptb_lem"), work / "dptb_out", work, venv)
    losses = [float(line.split("train_loss:")[1].split()[0]) for line in run.tail if "train_loss:" in line]
    return run.summary() | {"final_loss": losses[-1] if losses else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2, help="repeat the runs in turn this many times")
    ap.add_argument("--steps", type=int, default=20, help="alternated in-process steps per model (0: none)")
    ap.add_argument("--dptb", type=Path, default=DPTB_VENV, help="DeePTB 2.2.1 virtual environment")
    ap.add_argument("--no-dptb", action="store_true", help="eqtb only")
    args = ap.parse_args()
    work = si64_workdir(Path(tempfile.mkdtemp(prefix="eqtb_lem_si64_")))
    try:
        result = {"threads": int(os.environ.get("OMP_NUM_THREADS", "1")), "config": str(SI64 / "input_short_cpu.json"),
                  "edit": {"model_options.embedding.method": "lem"}, "load_average_before": os.getloadavg()}
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
            result[k] = dict(min(rs, key=lambda r: r["s_per_epoch_cpu_median"]),
                             round_cpu_medians=[r["s_per_epoch_cpu_median"] for r in rs])
        for a, b in [("eqtb_lem", "eqtb_slem")] + ([("deeptb_lem", "eqtb_lem")] if use_dptb else []):
            for stat in ("cpu_median", "cpu_min", "wall_median"):
                ratio = result[a][f"s_per_epoch_{stat}"] / result[b][f"s_per_epoch_{stat}"]
                result[f"{a}_over_{b}_{stat}"] = round(ratio, 3)
        if args.steps:
            result["eqtb_alternating_steps"] = alternating_steps(work, ["slem", "lem"], args.steps)
        result["load_average_after"] = os.getloadavg()
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

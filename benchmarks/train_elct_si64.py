"""Seconds per training epoch, peak RSS and accuracy of ELCT against SLEM on the Si64 tutorial data.

    OMP_NUM_THREADS=1 python benchmarks/train_elct_si64.py [--epochs 20] [--rounds 2] [--budget 300] [--steps 20]

SLEM runs DeePTB's Si64 tutorial config unchanged (``../shared/data/si64_abacus/input_short_cpu.json``:
hidden irreps ``32x0e+32x1o+16x2e``, 3 layers, r_max 7.4 A, H and S); ELCT runs
``examples/elct_si64.json``, the same config with the embedding replaced by an ``elct`` one of the same
hidden irreps, r_max and number of layers (4 heads of 16; train, data and prediction options
identical); ``elct_strict`` is that with ``strictly_local: true``. Every run is ``eqtb train`` in
its own process, one thread, in a scratch folder laid out like DeePTB's tutorial (``data/Si64.0``,
``data/info.json``).

Prints JSON: per model, over ``--rounds`` rounds of ``--epochs`` epochs each run in turn, the round
with the smallest median CPU seconds per epoch (first epoch excluded: graph cache, warm-up; CPU and
wall time of each epoch as ``benchmarks/timing.py`` stamps them) with every round's median, the
fastest epoch, the peak RSS of the process, the parameter count and the final loss; the ratios to SLEM. Then, with ``--budget`` > 0, each model trained for that many seconds of
wall time (``--max-time``) and the MAE of the latest model's H and S blocks on the training frame
(onsite / off-site, meV and 1e-3), as ``benchmarks/train_si64.py`` reports them -- the accuracy at
equal cost. Last, with ``--steps``, the least noisy ratio: one process holding all models, training
steps (forward, loss, backward, Adam) alternated between them, min and median seconds per step.
The machines are shared: quote ratios measured back to back.
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
from timing import ELCT_EXAMPLE, SI64, alternating_steps, eqtb_train, si64_config, si64_workdir  # noqa: E402
from train_si64 import errors  # noqa: E402  (the tutorial's figures, as benchmarks/train_si64.py reports them)

MODELS = ("slem", "elct", "elct_strict")


def train(work: Path, model: str, extra: list[str]) -> dict:
    """One ``eqtb train`` process (extra arguments ``extra``): per-epoch CPU and wall seconds,
    peak RSS, losses, and the latest model's H/S errors on the training frame."""
    out = work / f"run_{model}"
    res = eqtb_train(si64_config(work, model), out, work, extra).summary()
    hist = [json.loads(line) for line in open(out / "log" / "history.jsonl")]
    family = "slem" if model == "slem" else "elct"
    res.update({"train_seconds": round(sum(h["seconds"] for h in hist), 1), "first_loss": hist[0]["train_loss"],
                "final_loss": hist[-1]["train_loss"], "min_loss": min(h["train_loss"] for h in hist)})
    res.update(errors(out / "checkpoint" / f"{family}.latest.pth", work / "data" / "Si64.0"))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="repeat the timed runs in turn this many times")
    ap.add_argument("--budget", type=float, default=300.0, help="equal wall-time training per model, s (0: none)")
    ap.add_argument("--steps", type=int, default=20, help="alternated in-process steps per model (0: none)")
    args = ap.parse_args()
    work = si64_workdir(Path(tempfile.mkdtemp(prefix="eqtb_elct_si64_")))
    try:
        result = {"threads": int(os.environ.get("OMP_NUM_THREADS", "1")), "load_average_before": os.getloadavg(),
                  "configs": {"slem": str(SI64 / "input_short_cpu.json"), "elct": str(ELCT_EXAMPLE),
                              "elct_strict": f"{ELCT_EXAMPLE} + strictly_local true"}}
        rounds: dict[str, list[dict]] = {m: [] for m in MODELS}
        for _ in range(args.rounds):
            for m in MODELS:
                rounds[m].append(train(work, m, ["--num-epoch", str(args.epochs)]))
        for m, rs in rounds.items():
            best = min(rs, key=lambda r: r["s_per_epoch_cpu_median"])
            keep = ("s_per_epoch_cpu_median", "s_per_epoch_cpu_min", "s_per_epoch_wall_median", "epochs", "peak_rss_GB",
                    "n_params", "first_loss", "final_loss")
            result[m] = {k: best[k] for k in keep} | {"round_cpu_medians": [r["s_per_epoch_cpu_median"] for r in rs]}
        for m in MODELS[1:]:
            for stat in ("cpu_median", "cpu_min", "wall_median"):
                result[f"{m}_over_slem_{stat}"] = round(result[m][f"s_per_epoch_{stat}"]
                                                        / result["slem"][f"s_per_epoch_{stat}"], 3)
        if args.budget > 0:
            result["equal_wall_time"] = {"budget_s": args.budget}
            for m in MODELS:
                r = train(work, m, ["--num-epoch", "1000000", "--max-time", str(args.budget)])
                result["equal_wall_time"][m] = r
        if args.steps:
            result["alternating_steps"] = alternating_steps(work, list(MODELS), args.steps)
        result["load_average_after"] = os.getloadavg()
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

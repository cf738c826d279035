"""Seconds per epoch of nnsk and mix training on DeePTB's silicon tutorial, eqtb and DeePTB back to back.

    OMP_NUM_THREADS=1 python benchmarks/train_sk_silicon.py [--models nnsk mix] [--epochs 4] [--dptb-venv VENV]

Both train the tutorial's step on the 10 eight-atom MD frames of ``kpathmd100`` (354 k-points, eigvals
loss), in a scratch folder laid out like the tutorial, started as the tutorial starts them:

* ``nnsk``: ``silicon/tutorial_v2.2/input_2.json`` (nnsk poly4pow + uniform onsite + overlap, the
  overlap frozen), ``-i ref_ckpt/nnsk_tr1.pth``;
* ``mix``: ``input_3.json`` (the nnsk frozen, with an se2 environment correction), ``-i
  ref_ckpt/nnsk.md100.pth``.

The configs are DeePTB's but for ``device`` ("cpu"), ``num_epoch`` and the reference set:
``data_options.reference`` (a loss on one batch of ``kpath_spk`` added to every iteration) is removed
so that both do the same work. DeePTB runs ``VENV/bin/dptb train`` (default
``~/.cache/eqtb-reference/dptb-venv``, ``../shared/tools/reference-dptb/setup.sh``), eqtb
``python -m eqtb.cli train``, each with one thread unless OMP_NUM_THREADS says otherwise; for each
model eqtb runs first, DeePTB right after.

Prints JSON: per model the median seconds per epoch of each (epoch 1 excluded: eqtb builds its caches
then, DeePTB its data), their ratio, and each one's last epoch loss (not comparable: DeePTB's loss is
its own definition) and eqtb's band MAE (meV).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
SILICON = HERE.parent.parent / "shared" / "data" / "deeptb_examples" / "silicon"


#: model -> (tutorial input, the checkpoint the tutorial starts it from)
STEPS = {"nnsk": ("input_2.json", "nnsk_tr1.pth"), "mix": ("input_3.json", "nnsk.md100.pth")}


def layout(work: Path, config: str, epochs: int) -> Path:
    """``work/data/kpathmd100.0`` and ``work/tut/<config>`` (the config's root ``../data/``)."""
    shutil.copytree(SILICON / "data" / "kpathmd100.0", work / "data" / "kpathmd100.0")
    cfg = json.loads((SILICON / "tutorial_v2.2" / config).read_text())
    cfg["common_options"]["device"] = "cpu"
    cfg["train_options"]["num_epoch"] = epochs
    del cfg["data_options"]["reference"], cfg["train_options"]["loss_options"]["reference"]
    del cfg["train_options"]["ref_batch_size"]
    (work / "tut").mkdir()
    (work / "tut" / config).write_text(json.dumps(cfg, indent=1))
    return work / "tut"


def eqtb_run(tut: Path, config: str, env: dict, init: Path) -> dict:
    cmd = [sys.executable, "-m", "eqtb.cli", "train", config, "-o", "eqtb", "-q", "-i", str(init)]
    subprocess.run(cmd, cwd=tut, env=env, check=True)
    hist = [json.loads(line) for line in (tut / "eqtb" / "log" / "history.jsonl").read_text().splitlines()]
    secs = [h["seconds"] for h in hist[1:]] or [hist[0]["seconds"]]
    return {"s_per_epoch": statistics.median(secs), "last_loss": hist[-1]["train_loss"],
            "last_band_mae_meV": hist[-1]["train_band_mae_meV"]}


def deeptb_run(tut: Path, config: str, env: dict, init: Path, venv: Path) -> dict:
    cmd = [str(venv / "bin" / "dptb"), "train", config, "-o", "dptb", "-i", str(init)]
    subprocess.run(cmd, cwd=tut, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stamps, losses = [], []
    for line in (tut / "dptb" / "log" / "log.txt").read_text().splitlines():
        m = re.match(r"\[([0-9-]+ [0-9:,]+)\].*Epoch \d+ summary:\s*train_loss: ([0-9.eE+-]+)", line)
        if m:
            stamps.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
            losses.append(float(m.group(2)))
    secs = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"s_per_epoch": statistics.median(secs), "last_loss": losses[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=sorted(STEPS), default=["nnsk", "mix"])
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (at least 3)")
    ap.add_argument("--dptb-venv", type=Path, default=Path.home() / ".cache" / "eqtb-reference" / "dptb-venv")
    args = ap.parse_args()
    if args.epochs < 3:
        ap.error("--epochs must be at least 3 (epoch 1 is excluded from the median)")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    report = {"epochs": args.epochs, "frames": 10, "threads": int(env["OMP_NUM_THREADS"])}
    for model in args.models:
        config, start = STEPS[model]
        init = SILICON / "tutorial_v2.2" / "ref_ckpt" / start
        work = Path(tempfile.mkdtemp(prefix=f"eqtb_{model}_"))
        try:
            tut = layout(work, config, args.epochs)
            ours = eqtb_run(tut, config, env, init)
            theirs = deeptb_run(tut, config, env, init, args.dptb_venv)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report[model] = {"config": config, "init": start, "eqtb": ours, "deeptb": theirs,
                         "speedup": round(theirs["s_per_epoch"] / ours["s_per_epoch"], 2)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Seconds per epoch of ``eqtb train`` on one process and on N processes (``torchrun``, gloo, CPU).

    OMP_NUM_THREADS=1 python benchmarks/train_ddp.py [--nproc 2] [--epochs 3] [--batch-size 2]

Trains DeePTB's ``silicon/tutorial_v2.2/input_2.json`` (nnsk poly4pow + uniform onsite, overlap
frozen, sp + d* basis; the 10 eight-atom MD frames of ``kpathmd100``, 354 k-points, eigvals loss,
plus a reference batch of ``kpath_spk`` at every step) from scratch, in a scratch folder laid out
like the tutorial, with ``device`` "cpu", ``num_epoch`` = ``--epochs`` and ``batch_size`` =
``--batch-size`` (the global batch: the tutorial's 1 leaves all processes but one idle). The same
config runs once as ``python -m eqtb.cli train`` and once as ``torchrun --nproc_per_node N -m
eqtb.cli train``, each process with one thread (OMP_NUM_THREADS, default 1).

Prints JSON: the median seconds per epoch of each (epoch 1 excluded: the caches are built then),
the speed-up, the last epoch's loss of each (equal up to float32 rounding: the same global batches)
and the machine's core count and load average (a shared machine gives noisy figures).
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
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
SILICON = HERE.parent.parent / "shared" / "data" / "deeptb_examples" / "silicon"


def layout(work: Path, epochs: int, batch_size: int) -> Path:
    """``work/data/{kpathmd100,kpath_spk}.0`` and ``work/tut/input_2.json`` (root ``../data/``)."""
    for name in ("kpathmd100.0", "kpath_spk.0"):
        shutil.copytree(SILICON / "data" / name, work / "data" / name)
    cfg = json.loads((SILICON / "tutorial_v2.2" / "input_2.json").read_text())
    cfg["common_options"]["device"] = "cpu"
    cfg["train_options"].update(num_epoch=epochs, batch_size=batch_size, save_freq=10**6)
    (work / "tut").mkdir()
    (work / "tut" / "input_2.json").write_text(json.dumps(cfg, indent=1))
    return work / "tut"


def train(tut: Path, env: dict, nproc: int) -> dict:
    out = f"run{nproc}"
    cli = ["-m", "eqtb.cli", "train", "input_2.json", "-o", out, "-q"]
    cmd = [sys.executable, *cli] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *cli]
    subprocess.run(cmd, cwd=tut, env=env, check=True)
    hist = [json.loads(line) for line in (tut / out / "log" / "history.jsonl").read_text().splitlines()]
    secs = [h["seconds"] for h in hist[1:]] or [hist[0]["seconds"]]
    return {"s_per_epoch": statistics.median(secs), "last_loss": hist[-1]["train_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        tut = layout(Path(tmp), args.epochs, args.batch_size)
        one = train(tut, env, 1)
        many = train(tut, env, args.nproc)
    print(json.dumps({
        "benchmark": "train_ddp", "date": datetime.now().isoformat(timespec="seconds"),
        "config": "deeptb silicon tutorial_v2.2/input_2.json (kpathmd100, eigvals, reference kpath_spk)",
        "epochs": args.epochs, "global_batch_size": args.batch_size, "nproc": args.nproc,
        "omp_num_threads": env["OMP_NUM_THREADS"], "s_per_epoch_1_process": round(one["s_per_epoch"], 3),
        f"s_per_epoch_{args.nproc}_processes": round(many["s_per_epoch"], 3),
        "speedup": round(one["s_per_epoch"] / many["s_per_epoch"], 3),
        "last_loss_1_process": one["last_loss"], f"last_loss_{args.nproc}_processes": many["last_loss"],
        "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}, indent=1))


if __name__ == "__main__":
    main()

"""Train SLEM on the Si64 tutorial data with DeePTB's config unchanged and print JSON figures.

    OMP_NUM_THREADS=1 python benchmarks/train_si64.py [--budget SECONDS | --epochs N]

Runs ``eqtb train ../shared/data/si64_abacus/input_short_cpu.json`` in a scratch folder laid out
like DeePTB's tutorial (``data/Si64.0``, ``data/info.json``; the config's root ``./data`` resolves
there), overriding only ``--max-time`` (default 570 s, one fifth of DeePTB's 47-minute tutorial run)
or ``--num-epoch``. Reports the median seconds per epoch (epoch 1 excluded: it builds the graph
cache), the peak RSS of the training process, the parameter count, and the MAE of the latest
model's H and S blocks on the training frame (onsite and off-site; meV for H, 1e-3 for S), which
is what DeePTB's tutorial reports. Compare the epoch time with DeePTB's measured back to back:
``../shared/tools/reference-dptb/time_train_si64.sh VENV 30``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "si64_abacus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=570.0, help="wall-clock training budget, seconds")
    ap.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of a budget")
    ap.add_argument("--keep", default=None, help="keep the run folder here")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="eqtb_si64_"))
    (work / "data").mkdir(parents=True, exist_ok=True)
    if not (work / "data" / "Si64.0").exists():
        shutil.copytree(DATA / "Si64.0", work / "data" / "Si64.0")
    shutil.copy(DATA / "info.json", work / "data" / "info.json")
    cmd = [sys.executable, "-m", "eqtb.cli", "train", str(DATA / "input_short_cpu.json"), "-o", "out", "-q"]
    cmd += ["--num-epoch", str(args.epochs)] if args.epochs else ["--num-epoch", "100000", "--max-time", str(args.budget)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    shutil.rmtree(work / "out", ignore_errors=True)
    subprocess.run(cmd, cwd=work, env=env, check=True)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    hist = [json.loads(line) for line in open(work / "out" / "log" / "history.jsonl")]
    secs = [h["seconds"] for h in hist[1:]] or [hist[0]["seconds"]]
    result = {"epochs": hist[-1]["epoch"], "s_per_epoch_median": statistics.median(secs),
              "train_seconds": sum(h["seconds"] for h in hist), "peak_rss_GB": round(peak_gb, 3),
              "threads": int(env["OMP_NUM_THREADS"])}
    result.update(errors(work / "out" / "checkpoint" / "slem.latest.pth", work / "data" / "Si64.0"))
    print(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def errors(ckpt: Path, folder: Path) -> dict:
    import torch

    from eqtb.data.folder import TrajectoryFolder
    from eqtb.metrics import BlockErrors
    from eqtb.predict import load_model
    from eqtb.train.data import make_sample

    model = load_model(ckpt)
    tf = TrajectoryFolder(folder, basis=model.basis)
    st = tf.structure(0)
    quantities = ["hamiltonian"] + (["overlap"] if model.has_overlap else [])
    s = make_sample(folder.name, st, {q: tf.operator(q, 0, structure=st) for q in quantities}, model.basis, model.r_max)
    with torch.no_grad():
        pred = model(s.inputs)
    acc = BlockErrors(model.basis)
    t = s.inputs.types.numpy()
    for q in quantities:
        acc.add(q, pred[q][0].double().numpy(), s.targets[q][0].double().numpy(), t)
        acc.add(q, pred[q][1].double().numpy(), s.targets[q][1].double().numpy(), t[s.inputs.i.numpy()],
                t[s.inputs.j.numpy()])
    res = acc.result()
    out = {"n_params": sum(p.numel() for p in model.parameters())}
    for q, tag in (("hamiltonian", "H"), ("overlap", "S")):
        if q in res:
            for part in ("all", "onsite", "offsite"):
                out[f"{tag}_mae_{part}"] = res[q][part]["mae"]
            out[f"{tag}_unit"] = res[q]["unit"]
    return out


if __name__ == "__main__":
    main()

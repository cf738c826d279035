"""DeePTB's forward pass on Si supercells, one thread, for back-to-back ratios with
benchmarks/inference_scaling.py; prints JSON. Runs in DeePTB's own environment:

    bash ../shared/tools/reference-dptb/setup.sh            # once: ~/.cache/eqtb-reference/dptb-venv
    OMP_NUM_THREADS=1 ~/.cache/eqtb-reference/dptb-venv/bin/python benchmarks/deeptb_inference.py 1 2 4

Same structures and model as inference_scaling.py: Si64.vasp repeated n x n x n, the Si64 tutorial
config's model (input_short_cpu.json) with random weights; timed: AtomicData (neighbour list) plus
the model's forward (H and S blocks), each size in a fresh process for its own peak RSS.
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EQTB_SHARED_DATA", ROOT.parent / "shared" / "data")) / "si64_abacus"


def one(n: int) -> dict:
    import torch
    from ase.io import read
    from dptb.nn.build import build_model
    from dptb.postprocess.common import load_data_for_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = json.loads((DATA / "input_short_cpu.json").read_text())
    common = dict(cfg["common_options"], device="cpu", dtype="float32", seed=0)
    model = build_model(None, model_options=cfg["model_options"], common_options=common)
    model.eval()
    cell = read(DATA / "Si64.vasp")
    with torch.no_grad():  # warm-up, as in inference_scaling.py
        model(load_data_for_model(cell, model, device="cpu"))
    atoms = cell.repeat((n, n, n))
    t0 = time.perf_counter()
    with torch.no_grad():
        data = load_data_for_model(atoms, model, device="cpu")
        t1 = time.perf_counter()
        model(data)
    t2 = time.perf_counter()
    return {"atoms": len(atoms), "predict_s": round(t2 - t0, 3), "data_s": round(t1 - t0, 3),
            "model_s": round(t2 - t1, 3),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)}


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]))))
    else:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        rows = []
        for n in map(int, sys.argv[1:]):
            r = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, env=env)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0
                        else {"atoms": 64 * n ** 3, "failed": (r.stderr.strip().splitlines() or ["killed"])[-1]})
            print(json.dumps(rows[-1]), file=sys.stderr)
        print(json.dumps({"package": "DeePTB 2.2.1", "threads": 1, "rows": rows}, indent=1))

"""Inference time and peak memory of SLEM on Si supercells, one thread; prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/inference_scaling.py [--sizes 1 2 4 8 12] [--model CKPT] [--kpm]

Each size runs in a fresh subprocess (so peak RSS is that size's own): the Si64 ABACUS structure
(../shared/data/si64_abacus/Si64.vasp) repeated n x n x n (64 n^3 atoms: 64, 512, 4096, 32768,
110592), the model of the Si64 tutorial config (input_short_cpu.json: 32x0e+32x1o+16x2e, 3 layers,
r_max 7.4 A, overlap head; random weights unless --model gives a checkpoint — the cost does not
depend on the weights). Timed: neighbour graph, model (chunked, eqtb.predict.DEFAULT_CHUNK), blocks
-> Operators, then the scipy sparse H and S at Gamma. ``--kpm`` adds the KPM DOS (eqtb.tb.kpm) of
the largest size (256 moments, 4 random vectors, float32 matrices, CG tolerance 1e-5). A
warm-up prediction of the 64-atom cell precedes the timing. DeePTB 2.2.1 reference (one thread, forward only): 64 / 512 / 4096 / 13824 atoms
in 0.71 / 7.1 / 95 / 406 s, 0.61 / 1.56 / 6.3 / 19.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EQTB_SHARED_DATA", ROOT.parent / "shared" / "data")) / "si64_abacus"
DEEPTB = {64: (0.71, 0.61), 512: (7.1, 1.56), 4096: (95.0, 6.3), 13824: (406.0, 19.5)}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB (Linux)


def one_size(n: int, model_path: str | None, kpm: bool, chunk: int | None) -> dict:
    import torch

    torch.set_num_threads(1)
    from eqtb.config import config_to_dict, load_config
    from eqtb.models import build_model
    from eqtb.predict import DEFAULT_CHUNK, Predictor
    from eqtb.structure import Structure

    if model_path:
        predictor = Predictor.load(model_path)
    else:
        torch.manual_seed(0)
        cfg = config_to_dict(load_config(DATA / "input_short_cpu.json"))
        predictor = Predictor(build_model(cfg))
    cell = Structure.read(DATA / "Si64.vasp")
    predictor.predict(cell)  # warm-up (one-time set-up costs are not part of the scaling)
    structure = cell.repeat((n, n, n))
    rss0 = _rss_gb()
    t0 = time.perf_counter()
    pred = predictor.predict(structure, chunk=chunk or DEFAULT_CHUNK)
    t1 = time.perf_counter()
    H, S = pred.sparse("hamiltonian"), pred.sparse("overlap")
    t2 = time.perf_counter()
    out = {"atoms": structure.natoms, "bonds": pred.timings["n_bonds"], "orbitals": int(pred.hamiltonian.norb),
           "predict_s": round(t1 - t0, 3), "graph_s": round(pred.timings["graph"], 3),
           "model_s": round(pred.timings["model"], 3), "operators_s": round(pred.timings["operators"], 3),
           "us_per_atom": round(1e6 * (t1 - t0) / structure.natoms, 1),
           "sparse_HS_s": round(t2 - t1, 3), "nnz_H": int(H.nnz), "rss_before_gb": round(rss0, 3)}
    out["peak_rss_predict_gb"] = round(_rss_gb(), 3)
    if kpm:
        from eqtb.tb.kpm import kpm_dos

        del pred
        t3 = time.perf_counter()
        res = kpm_dos(H, S, n_moments=256, n_random=4, solve_tol=1e-5, dtype="float32")
        out["kpm"] = {"seconds": round(time.perf_counter() - t3, 1), "n_moments": res.n_moments,
                      "n_random": res.n_random, "resolution_eV": round(float(res.resolution), 4),
                      "stochastic_error": round(float(res.stochastic_error), 5),
                      "cg_iterations": res.cg_iterations, "solve_tol": 1e-5, "dtype": "float32",
                      "fermi_level_eV": round(float(res.fermi_level(4 * structure.natoms)), 4)}
    out["peak_rss_gb"] = round(_rss_gb(), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 12], help="supercell repeats n (64 n^3 atoms)")
    ap.add_argument("--model", default=None, help="eqtb checkpoint (default: random weights)")
    ap.add_argument("--kpm", action="store_true", help="KPM DOS of the largest size")
    ap.add_argument("--chunk", type=int, default=None, help="directed edges per chunk")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.model, args.kpm, args.chunk)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n)] + (["--model", args.model] if args.model else [])
        cmd += ["--kpm"] if args.kpm and n == max(args.sizes) else []
        cmd += ["--chunk", str(args.chunk)] if args.chunk else []
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            rows.append({"atoms": 64 * n ** 3, "failed": (r.stderr.strip().splitlines() or ["killed"])[-1],
                         "returncode": r.returncode})
            print(json.dumps(rows[-1]), file=sys.stderr)
            break
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    per_atom = {r["atoms"]: r["us_per_atom"] for r in rows if "us_per_atom" in r}
    big = [a for a in per_atom if a >= 512]
    summary = {"threads": 1, "rows": rows, "deeptb_reference_s_gb": {str(k): v for k, v in DEEPTB.items()}}
    if len(big) >= 2:
        vals = [per_atom[a] for a in big]
        summary["us_per_atom_spread_512_up"] = round(max(vals) / min(vals) - 1, 3)
    for r in rows:
        if r.get("atoms") in DEEPTB:
            summary[f"speedup_vs_deeptb_{r['atoms']}"] = round(DEEPTB[r["atoms"]][0] / r["predict_s"], 2)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

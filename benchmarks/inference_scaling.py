"""Inference time and peak memory of SLEM on Si supercells, one thread; prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/inference_scaling.py [--sizes 1 2 4 8 12] [--model CKPT]
        [--kpm | --kpm-all] [--streamed] [--sheet]

Each size runs in a fresh subprocess (so peak RSS is that size's own): the Si64 ABACUS structure
(../shared/data/si64_abacus/Si64.vasp) repeated n x n x n (64 n^3 atoms: 64, 512, 4096, 32768,
110592, ..., 10^6 at n = 25), or n x n x 1 with ``--sheet`` (a 2-D supercell, 64 n^2 atoms: 10^6 at
n = 125), its atoms renumbered along a Z-order curve (``Structure.spatial_order``, as ``eqtb run``'s
sparse route does), the model of the Si64 tutorial config (input_short_cpu.json: 32x0e+32x1o+16x2e, 3 layers,
r_max 7.4 A, overlap head; random weights unless --model gives a checkpoint — the cost does not
depend on the weights). Timed: neighbour graph, model (chunked, eqtb.predict.DEFAULT_CHUNK), then
the sparse H and S at Gamma: by default blocks -> Operators -> scipy CSR (``Predictor.predict``);
``--streamed``: blocks streamed into float32 block-sparse matrices as the model produces them
(``Predictor.predict_sparse``: no Operators, chunk geometry not kept beyond 2e7 directed edges;
``--no-geometry-cache``: not kept at any size, as for 10^6 atoms).
``--kpm`` adds the KPM DOS (eqtb.tb.kpm) of the largest size, ``--kpm-all`` of every size (256
moments, 4 random vectors, float32 matrices, CG tolerance 1e-5; Fermi level of 4 electrons per
atom by ``fermi_estimate``: mid-gap of the KPM gap). A warm-up prediction of the 64-atom cell
precedes the timing. DeePTB 2.2.1 reference (one thread, forward only): 64 / 512 / 4096 / 13824 atoms
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


def one_size(n: int, model_path: str | None, kpm: bool, chunk: int | None, streamed: bool, sheet: bool,
             threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
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
    structure = cell.repeat((n, n, 1) if sheet else (n, n, n))
    structure = structure.reordered(structure.spatial_order())  # as eqtb run's sparse route does
    rss0 = _rss_gb()
    t0 = time.perf_counter()
    if streamed:
        pred = predictor.predict_sparse(structure, chunk=chunk or DEFAULT_CHUNK)
        t1 = time.perf_counter()
        H, S = pred.sparse("hamiltonian"), pred.sparse("overlap")
        norb, stage = H.shape[0], {"matrices_s": round(pred.timings["matrices"], 3)}
    else:
        pred = predictor.predict(structure, chunk=chunk or DEFAULT_CHUNK)
        t1 = time.perf_counter()
        H, S = pred.sparse("hamiltonian"), pred.sparse("overlap")
        norb, stage = int(pred.hamiltonian.norb), {"operators_s": round(pred.timings["operators"], 3)}
    t2 = time.perf_counter()
    out = {"atoms": structure.natoms, "bonds": pred.timings["n_bonds"], "orbitals": norb, "streamed": streamed,
           "predict_s": round(t2 - t0, 3), "graph_s": round(pred.timings["graph"], 3),
           "model_s": round(pred.timings["model"], 3), **stage,
           "us_per_atom": round(1e6 * (t2 - t0) / structure.natoms, 1),
           "sparse_HS_s": round(t2 - t1, 3), "stored_H": int(H.nnz), "format": H.format,
           "rss_before_gb": round(rss0, 3)}
    out["peak_rss_predict_gb"] = round(_rss_gb(), 3)
    if kpm:
        from eqtb.tb.kpm import kpm_dos

        del pred
        t3 = time.perf_counter()
        res = kpm_dos(H, S, n_moments=256, n_random=4, solve_tol=1e-5, dtype="float32")
        t_kpm = time.perf_counter() - t3
        f = res.fermi_estimate(4 * structure.natoms)
        out["kpm"] = {"seconds": round(t_kpm, 1), "us_per_atom": round(1e6 * t_kpm / structure.natoms, 1),
                      "n_moments": res.n_moments, "n_random": res.n_random,
                      "resolution_eV": round(float(res.resolution), 4),
                      "stochastic_error": round(float(res.stochastic_error), 5),
                      "cg_iterations": res.cg_iterations, "solve_tol": 1e-5, "dtype": "float32",
                      "fermi_level_eV": round(float(f.mu), 4),
                      "gap_interval_eV": None if f.gap is None else [round(float(g), 4) for g in f.gap],
                      "states_below": round(float(f.states_below), 1)}
        out["total_us_per_atom"] = round(1e6 * (t2 - t0 + t_kpm) / structure.natoms, 1)
        del H, S
    out["peak_rss_gb"] = round(_rss_gb(), 3)
    out["peak_rss_kb_per_atom"] = round(1e6 * out["peak_rss_gb"] / structure.natoms, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 12], help="supercell repeats n (64 n^3 atoms)")
    ap.add_argument("--model", default=None, help="eqtb checkpoint (default: random weights)")
    ap.add_argument("--kpm", action="store_true", help="KPM DOS of the largest size")
    ap.add_argument("--kpm-all", action="store_true", help="KPM DOS of every size")
    ap.add_argument("--streamed", action="store_true", help="stream the blocks into float32 BSR matrices")
    ap.add_argument("--sheet", action="store_true", help="n x n x 1 supercells (64 n^2 atoms)")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (default 1)")
    ap.add_argument("--no-geometry-cache", action="store_true",
                    help="recompute the chunk geometry in every pass at any size (what happens above "
                         "eqtb.models.base.GEOMETRY_CACHE_MAX_EDGES directed edges, e.g. 10^6 atoms)")
    ap.add_argument("--chunk", type=int, default=None, help="directed edges per chunk")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        if args.no_geometry_cache:
            import eqtb.models.base

            eqtb.models.base.GEOMETRY_CACHE_MAX_EDGES = 0
        print(json.dumps(one_size(args.one, args.model, args.kpm, args.chunk, args.streamed, args.sheet, args.threads)))
        return
    t = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n)] + (["--model", args.model] if args.model else [])
        cmd += ["--kpm"] if args.kpm_all or (args.kpm and n == max(args.sizes)) else []
        cmd += ["--threads", t] + ["--streamed"] * args.streamed + ["--sheet"] * args.sheet + ["--no-geometry-cache"] * args.no_geometry_cache
        cmd += ["--chunk", str(args.chunk)] if args.chunk else []
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            rows.append({"atoms": 64 * n ** (2 if args.sheet else 3), "failed": (r.stderr.strip().splitlines() or ["killed"])[-1],
                         "returncode": r.returncode})
            print(json.dumps(rows[-1]), file=sys.stderr)
            break
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    per_atom = {r["atoms"]: r["us_per_atom"] for r in rows if "us_per_atom" in r}
    big = [a for a in per_atom if a >= 512]
    summary = {"threads": args.threads, "rows": rows, "deeptb_reference_s_gb": {str(k): v for k, v in DEEPTB.items()}}
    if len(big) >= 2:
        vals = [per_atom[a] for a in big]
        summary["us_per_atom_spread_512_up"] = round(max(vals) / min(vals) - 1, 3)
    total = {r["atoms"]: r["total_us_per_atom"] for r in rows if "total_us_per_atom" in r and r["atoms"] >= 10**4}
    if len(total) >= 2:  # the flatness: prediction + KPM per atom from 10^4 atoms up
        summary["total_us_per_atom_max_over_min_1e4_up"] = round(max(total.values()) / min(total.values()), 3)
        mean = sum(total.values()) / len(total)  # "flat within +-20 %": each size against the mean
        summary["total_us_per_atom_max_deviation_from_mean_1e4_up"] = round(
            max(abs(v / mean - 1) for v in total.values()), 3)
    for r in rows:
        if r.get("atoms") in DEEPTB:
            summary[f"speedup_vs_deeptb_{r['atoms']}"] = round(DEEPTB[r["atoms"]][0] / r["predict_s"], 2)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

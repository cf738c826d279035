"""Prediction and KPM DOS of a Si supercell on 1 and 2 processes (torchrun, gloo, one thread each);
prints JSON with the speed-ups.

    OMP_NUM_THREADS=1 python benchmarks/distributed_predict.py [--reps 8 2 2] [--model CKPT]
        [--moments 64] [--random-vectors 4] [--procs 1 2]

The Si64 ABACUS cell (../shared/data/si64_abacus/Si64.vasp) repeated ``reps`` times (default
8 x 2 x 2: 2048 atoms), predicted by DeePTB's Si tutorial mix model
(deeptb_examples/silicon/tutorial_v2.2/ref_ckpt/mix.md100.pth: nnsk integrals with an se2
environment correction, 3s3p d*, 9 orbitals per atom, H and S, strictly local, r_max 6.24 A) unless
--model gives another checkpoint. Every process count is one launch (1: plain python, the same code
path with one domain; more: ``torch.distributed.run``) timing, between barriers:
``Predictor.predict_domain`` (graph, model, operators of the domain's cluster), the distributed H
and S at Gamma (``DomainPrediction.sparse``, with the exchange plan), and ``kpm_dos_distributed``
(float64, CG tolerance 1e-5). The halo of a strictly local model is two r_max
(``Locality.domain_halo``: 12.5 A here), so each of 2 processes predicts its half plus two 12.5 A
shells; the speed-up of prediction is bounded by slab / (slab + 2 halo). The JSON also gives the
cluster sizes, each process's CPU seconds (``time.process_time``: the work it did, which on a
machine with fewer free cores than processes says more than the wall time) and the largest
deviation of the 2-process DOS from the 1-process one.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EQTB_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA = SHARED / "si64_abacus"
MODEL = SHARED / "deeptb_examples" / "silicon" / "tutorial_v2.2" / "ref_ckpt" / "mix.md100.pth"


def worker(reps, model_path: str, moments: int, n_random: int, out: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from eqtb import distributed
    from eqtb.predict import Predictor
    from eqtb.structure import Structure
    from eqtb.tb.dmatrix import kpm_dos_distributed

    distributed.setup("cpu")

    def barrier():
        if distributed.launched():
            torch.distributed.barrier()

    predictor = Predictor.load(model_path)
    cell = Structure.read(DATA / "Si64.vasp")
    predictor.predict(cell)  # warm-up
    structure = cell.repeat(reps)
    barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    dom = predictor.predict_domain(structure)
    c1 = time.process_time()
    barrier()
    t1 = time.perf_counter()
    H, S = dom.sparse("hamiltonian"), dom.sparse("overlap")
    barrier()
    t2, c2 = time.perf_counter(), time.process_time()
    res = kpm_dos_distributed(H, S, n_moments=moments, n_random=n_random, solve_tol=1e-5)
    t3, c3 = time.perf_counter(), time.process_time()
    mine = {"rank": distributed.rank(), **dom.domain.describe(), "cluster_bonds": dom.timings["n_bonds"],
            "model_s": round(dom.timings["model"], 2), "halo_columns": len(H.halo),
            "predict_cpu_s": round(c1 - c0, 2), "kpm_cpu_s": round(c3 - c2, 2)}
    ranks = [mine]
    if distributed.launched():
        ranks = [None] * distributed.world_size()
        torch.distributed.all_gather_object(ranks, mine)
    if distributed.is_main():
        out_d = {"processes": distributed.world_size(), "atoms": structure.natoms, "orbitals": dom.norb,
                 "predict_s": round(t1 - t0, 2), "sparse_HS_s": round(t2 - t1, 2), "kpm_s": round(t3 - t2, 2),
                 "total_s": round(t3 - t0, 2), "kpm_cg_iterations": res.cg_iterations, "ranks": ranks}
        Path(out).write_text(json.dumps(out_d))
        np.save(Path(out).with_suffix(".npy"), res.dos)
    distributed.teardown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, nargs=3, default=[8, 2, 2], help="supercell of the Si64 cell")
    ap.add_argument("--model", default=str(MODEL), help="checkpoint (default: DeePTB's Si mix model)")
    ap.add_argument("--moments", type=int, default=64)
    ap.add_argument("--random-vectors", type=int, default=4)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(tuple(args.reps), args.model, args.moments, args.random_vectors, args.worker)
        return
    import numpy as np

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows, dos = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.procs:
            out = str(Path(tmp) / f"p{p}.json")
            opts = ["--reps", *map(str, args.reps), "--moments", str(args.moments), "--random-vectors",
                    str(args.random_vectors), "--worker", out, "--model", args.model]
            launch = ([sys.executable] if p == 1 else
                      [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(p),
                       "--master_addr", "127.0.0.1", "--master_port", str(_free_port())])
            r = subprocess.run(launch + [__file__] + opts, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                rows.append({"processes": p, "failed": (r.stderr.strip().splitlines() or ["killed"])[-1]})
                print(json.dumps(rows[-1]), file=sys.stderr)
                continue
            rows.append(json.loads(Path(out).read_text()))
            dos[p] = np.load(Path(out).with_suffix(".npy"))
            print(json.dumps(rows[-1]), file=sys.stderr)
    summary = {"model": args.model, "threads_per_process": 1, "cpus": os.cpu_count(), "rows": rows}
    base = next((r for r in rows if r.get("processes") == 1 and "total_s" in r), None)
    for r in rows:
        if base is not None and r is not base and "total_s" in r:
            p = r["processes"]
            summary[f"speedup_{p}"] = {k: round(base[k] / r[k], 2) for k in ("predict_s", "kpm_s", "total_s")}
            summary[f"max_dos_deviation_{p}_vs_1"] = float(np.abs(dos[p] - dos[1]).max() / dos[1].max())
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

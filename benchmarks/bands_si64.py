"""Benchmark: H(k) + S(k) assembly and the generalized eigensolve for Si64 (ABACUS SZP, 256
orbitals) at 100 k-points. Prints one JSON object (seconds are medians over repeats).

    OMP_NUM_THREADS=1 python benchmarks/bands_si64.py [--repeats 3] [--nk 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from eqtb.data.folder import TrajectoryFolder
from eqtb.tb.spectrum import default_chunk, eigh

DATA = Path(os.environ.get("EQTB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nk", type=int, default=100)
    args = ap.parse_args()

    t0 = time.perf_counter()
    frame = TrajectoryFolder(DATA / "si64_abacus" / "Si64.0").frame(0, density_matrix=False, eigenvalues=False)
    t_load = time.perf_counter() - t0
    H, S = frame.hamiltonian, frame.overlap
    kpts = np.random.default_rng(0).random((args.nk, 3))  # general k: complex H(k)
    chunk = default_chunk(H.norb)
    H.dense(kpts[:1]), S.dense(kpts[:1])  # build the cached index tables once

    assemble, solve_vals, solve_vecs = [], [], []
    for _ in range(args.repeats):
        ta = tv = tw = 0.0
        for a in range(0, len(kpts), chunk):
            k = kpts[a:a + chunk]
            t = time.perf_counter()
            Hk, Sk = H.dense(k), S.dense(k)
            ta += time.perf_counter() - t
            t = time.perf_counter()
            eigh(Hk, Sk)
            tv += time.perf_counter() - t
            t = time.perf_counter()
            eigh(Hk, Sk, vectors=True)
            tw += time.perf_counter() - t
        assemble.append(ta)
        solve_vals.append(tv)
        solve_vecs.append(tw)

    med = statistics.median
    out = {
        "system": "Si64 ABACUS SZP (1s1p)", "natoms": H.natoms, "norb": H.norb,
        "n_offsite_blocks_H": int(len(H.i)), "nk": len(kpts), "chunk": chunk, "repeats": args.repeats,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_frame_s": round(t_load, 3),
        "assemble_HS_s": round(med(assemble), 3),
        "eigvalsh_generalized_s": round(med(solve_vals), 3),
        "eigh_generalized_with_vectors_s": round(med(solve_vecs), 3),
        "bands_total_s": round(med(assemble) + med(solve_vals), 3),
        "per_kpoint_ms": round(1e3 * (med(assemble) + med(solve_vals)) / len(kpts), 2),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

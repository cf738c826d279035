"""Graph construction time and peak memory for Si supercells (JSON on stdout).

Usage: OMP_NUM_THREADS=1 python benchmarks/graph_construction.py [--r-max 7.4] [--sizes 5 11 12 23]
Each size n builds the n x n x n supercell of the 8-atom conventional diamond cell in a fresh
subprocess (so the peak RSS belongs to that size alone); time is the median of --repeat builds.
DeePTB 2.2.1 for orientation (one thread, this kind of machine): 13,824 atoms (n = 12), r_max 7.4 A,
1.19 M edges in 4.4 s.
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from ase.build import bulk
from eqtb.structure import Structure, build_graph
n, r_max, repeat = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
s = Structure.from_ase(bulk("Si", "diamond", a=5.43, cubic=True).repeat((n, n, n)))
times = []
for _ in range(repeat):
    t = time.perf_counter(); g = build_graph(s, r_max); times.append(time.perf_counter() - t)
print(json.dumps({"atoms": s.natoms, "r_max": r_max, "edges_half": g.n_edges, "edges_directed": 2 * g.n_edges,
                  "seconds_median": float(np.median(times)), "seconds_all": times,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r-max", type=float, default=7.4)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 11, 12, 23])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    results = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(args.r_max), str(args.repeat)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout))
    print(json.dumps({"benchmark": "graph_construction", "results": results}, indent=1))


if __name__ == "__main__":
    main()

"""Fermi level, gap interval and band edges of an insulator from the KPM DOS, against the exact
answer: the ABACUS Si64 frame (256 orbitals) and its 3x3x3 supercell (1728 atoms, 6912 orbitals,
the size at which ``eqtb run`` takes the sparse route) at Gamma, exact eigenvalues by folding (Si64
on the 3x3x3 k-mesh). Settings of ``eqtb run``'s sparse route: 256 moments, 8 random vectors,
solve_tol 1e-5. Prints JSON: per seed the old level (the N(E) = n crossing), the new one
(``fermi_estimate``), the gap interval, KPM's count at the gap, and for the first seed the band
edges by shift-invert Lanczos around the new level.

    OMP_NUM_THREADS=1 python benchmarks/kpm_fermi_supercell.py [--seeds 5] [--reps 3 3 3]
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from eqtb.data.folder import TrajectoryFolder
from eqtb.tb.kpm import kpm_dos
from eqtb.tb.lanczos import band_edges
from eqtb.tb.supercell import folded_eigenvalues, supercell_gamma

DATA = Path(os.environ.get("EQTB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def run(fr, reps, seeds, edges_seed=0):
    H, S = supercell_gamma(fr.hamiltonian, reps), supercell_gamma(fr.overlap, reps)
    w = folded_eigenvalues(fr.hamiltonian, fr.overlap, reps)
    norb = H.shape[0]
    nel = 4 * fr.structure.natoms * int(np.prod(reps))
    vbm, cbm = float(w[nel // 2 - 1]), float(w[nel // 2])
    out = {"reps": list(reps), "norb": norb, "n_electrons": nel, "exact": {"vbm": vbm, "cbm": cbm, "midgap": 0.5 * (vbm + cbm)},
           "runs": []}
    for seed in seeds:
        t = time.perf_counter()
        res = kpm_dos(H, S, n_moments=256, n_random=8, solve_tol=1e-5, dtype="auto", seed=seed)
        t_kpm = time.perf_counter() - t
        f = res.fermi_estimate(nel)
        row = {"seed": seed, "kpm_s": round(t_kpm, 1), "resolution": res.resolution,
               "crossing (old level)": f.crossing, "crossing_in_gap": vbm < f.crossing < cbm,
               "mu": f.mu, "mu_in_gap": vbm < f.mu < cbm, "mu - midgap": f.mu - 0.5 * (vbm + cbm),
               "gap_interval": f.gap, "states_below": f.states_below, "states_below_error": f.states_below_error,
               "count_sigma": res.count_sigma(f.mu)}
        if f.gap is not None:
            row["interval_inset"] = [f.gap[0] - vbm, cbm - f.gap[1]]
        if seed == edges_seed:
            t = time.perf_counter()
            e = band_edges(H, S, f.mu, k=16, strict=False)
            row["band_edges"] = {"vbm": e["vbm"], "cbm": e["cbm"], "gap": e["gap"], "bracketed": e["bracketed"],
                                 "vbm_error": None if e["vbm"] is None else e["vbm"] - vbm,
                                 "cbm_error": None if e["cbm"] is None else e["cbm"] - cbm,
                                 "seconds": round(time.perf_counter() - t, 1)}
        out["runs"].append(row)
        print(json.dumps(row), flush=True)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--reps", type=int, nargs=3, default=[3, 3, 3])
    a = p.parse_args()
    fr = TrajectoryFolder(DATA / "si64_abacus" / "Si64.0").frame(0)
    result = {"si64": run(fr, (1, 1, 1), range(a.seeds)), "supercell": run(fr, tuple(a.reps), range(a.seeds))}
    for k in ("si64", "supercell"):
        runs = result[k]["runs"]
        result[k]["summary"] = {
            "old_level_in_gap": sum(r["crossing_in_gap"] for r in runs), "new_level_in_gap": sum(r["mu_in_gap"] for r in runs),
            "of": len(runs), "max |mu - midgap|": max(abs(r["mu - midgap"]) for r in runs),
            "max |states_below - n|": max(abs(r["states_below"] - result[k]["n_electrons"]) for r in runs)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""The MD-trajectory workflow of ``eqtb run`` (eqtb.trajectory.run_trajectory): seconds per frame
with 1 and 2 worker processes (wall time, and per frame once the workers run: the compute time
of a frame / workers), and the cost of a resumed rerun. Prints JSON.

Frames: the 20 MD frames of Si8 in silicon_bands/kpathmd25.0 and kpathmd100.0, each copied with
random displacements (0.03 A rms, seeded) up to ``--frames`` (default 120); or ``--cell si64``:
the ABACUS Si64 cell with random displacements (64 atoms, 256 orbitals). Model: ``--model PATH``,
else a tiny SLEM (H and S of Si 1s1p, as tests/conftest.py's ``tiny_model``) trained here for 3
epochs on the real Si64 frame. Per frame: prediction, eigenvalues on a k-mesh (``--mesh``,
default 4 4 4 for Si8, 2 2 2 for Si64), Fermi level, gap, band edges and DOS (1201 points).

    OMP_NUM_THREADS=1 python benchmarks/trajectory_md.py [--frames 120] [--cell si8|si64] [--model PATH]
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("EQTB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def tiny_model(tmp: Path) -> Path:
    from eqtb.config import load_config
    from eqtb.train.trainer import Trainer

    src = DATA / "si64_abacus"
    (tmp / "data" / "Si64.0").mkdir(parents=True)
    for f in (src / "Si64.0").iterdir():
        shutil.copyfile(f, tmp / "data" / "Si64.0" / f.name)
    shutil.copyfile(src / "info.json", tmp / "data" / "info.json")
    cfg = json.loads((src / "input_short_cpu.json").read_text())
    cfg["model_options"]["embedding"].update(irreps_hidden="8x0e+8x1o+4x2e", n_layers=1, r_max={"Si": 5.0})
    cfg["model_options"]["prediction"]["neurons"] = [16, 16]
    cfg["train_options"]["num_epoch"] = 3
    for key in ("train", "validation", "reference"):
        if isinstance(cfg.get("data_options", {}).get(key), dict) and "root" in cfg["data_options"][key]:
            cfg["data_options"][key]["root"] = str(tmp / "data")
    (tmp / "input.json").write_text(json.dumps(cfg))
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        Trainer(load_config(tmp / "input.json"), tmp / "train", progress=False).run()
    finally:
        os.chdir(cwd)
    return tmp / "train" / "checkpoint" / "slem.latest.pth"


def make_frames(n: int, cell: str, path: Path) -> Path:
    from ase.io import read, write

    rng = np.random.default_rng(0)
    if cell == "si8":
        base = [a for d in ("kpathmd25.0", "kpathmd100.0") for a in read(DATA / "silicon_bands" / d / "xdat.traj", ":")]
    else:
        base = [read(DATA / "si64_abacus" / "Si64.vasp")]
    frames = []
    for i in range(n):
        a = base[i % len(base)].copy()
        a.positions += rng.normal(scale=0.03 / np.sqrt(3), size=a.positions.shape)
        frames.append(a)
    write(path, frames)
    return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--cell", choices=["si8", "si64"], default="si8")
    p.add_argument("--mesh", type=int, nargs=3, default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    from eqtb.trajectory import read_frames, run_trajectory

    tmp = Path(tempfile.mkdtemp(prefix="eqtb_traj_bench_"))
    try:
        t = time.perf_counter()
        model = Path(a.model) if a.model else tiny_model(tmp / "model")
        t_model = time.perf_counter() - t
        traj = make_frames(a.frames, a.cell, tmp / "md.traj")
        frames = read_frames(traj, timestep=1.0)
        mesh = tuple(a.mesh) if a.mesh else ((4, 4, 4) if a.cell == "si8" else (2, 2, 2))
        kw = {"nel_atom": {"Si": 4}, "mesh": mesh, "threads": 1}
        out = {"frames": len(frames), "cell": a.cell, "natoms": frames[0].structure.natoms, "mesh": list(mesh),
               "model": str(model) if a.model else f"tiny SLEM trained here in {t_model:.1f} s",
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
               "load_average_before": [round(x, 2) for x in os.getloadavg()], "runs": {}}
        ref = None
        for w in a.workers:
            t = time.perf_counter()
            res = run_trajectory(model, frames, tmp / f"w{w}", workers=w, resume=False, **kw)
            wall = time.perf_counter() - t
            per = [f["seconds"]["total"] for f in res.frames]
            out["runs"][f"{w} worker(s)"] = {
                "wall_s": round(wall, 2), "s_per_frame": round(wall / len(frames), 4),
                "frame_compute_s_mean": round(float(np.mean(per)), 4),
                "predict_s_mean": round(float(np.mean([f["seconds"]["predict"] for f in res.frames])), 4),
                "spectrum_s_mean": round(float(np.mean([f["seconds"]["spectrum"] for f in res.frames])), 4),
                # frames in flight side by side: compute time per frame / workers; the rest of the
                # wall time is start-up (spawning workers, importing torch, loading the model) and I/O
                "steady_s_per_frame": round(float(np.mean(per)) / w, 4),
                "startup_and_io_s": round(wall - float(np.sum(per)) / w, 2),
                "load_average": [round(x, 2) for x in os.getloadavg()]}
            gaps = [f["gap"] for f in res.frames]
            if ref is None:
                ref = gaps
            else:
                out["runs"][f"{w} worker(s)"]["max |gap - gap(1 worker)|"] = float(np.max(np.abs(np.subtract(gaps, ref))))
            print(json.dumps({w: out["runs"][f"{w} worker(s)"]}), flush=True)
        t = time.perf_counter()
        again = run_trajectory(model, frames, tmp / f"w{a.workers[-1]}", workers=a.workers[-1], **kw)
        out["rerun_all_reused"] = {"wall_s": round(time.perf_counter() - t, 2), "computed": len(again.computed),
                                   "reused": len(again.skipped)}
        s = again.summary
        out["statistics"] = {k: {q: s[k].get(q) for q in ("mean", "std", "min", "max")} for k in ("gap", "vbm", "cbm", "fermi_level")}
        if len(a.workers) > 1:
            r1, r2 = out["runs"][f"{a.workers[0]} worker(s)"], out["runs"][f"{a.workers[-1]} worker(s)"]
            out["speedup"] = round(r1["wall_s"] / r2["wall_s"], 2)
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Band accuracy of DeePTB's silicon tutorial chain (v2.2) trained by eqtb, on MD frames it never saw.

    OMP_NUM_THREADS=1 python benchmarks/silicon_chain_md.py [--epochs 500 40 40] [--heldout 2]

The chain is the tutorial's, with its configs unchanged but for ``device`` ("cpu"), the epochs and
the MD data (the reference set ``kpath_spk`` is kept in steps 2 and 3 as the tutorial has it):

1. ``input_1.json``: nnsk (poly4pow, uniform onsite) fitted to the bands of the 2-atom cell (``kpath_spk``),
   started (``--start``) as the tutorial starts it, from the built-in parameters (``eqtb esk
   sk_in.json``; DeePTB: ``dptb esk``), or from scratch; ``--start deeptb`` skips the step and
   starts step 2 from DeePTB's own step-1 checkpoint ``ref_ckpt/nnsk_tr1.pth``;
2. ``input_2.json``: the same nnsk, ``-i`` step 1, trained on the MD frames;
3. ``input_3.json``: the "mix" model (step 2's nnsk frozen + se2 environment correction), ``-i`` step 2.

MD frames: the last ``--heldout`` frames of each of ``kpathmd25`` and ``kpathmd100`` (25 K and 100 K,
8-atom cells, 354 k-points, 28 fitted bands) are held out; steps 2 and 3 train on the others of both
(the tutorial itself trains on the 10 of ``kpathmd100``). ``eqtb test --bands`` then compares each
step's model on the held-out frames: the 28 bands of the data's ``bandinfo`` after the mean shift.
DeePTB's own tutorial checkpoint ``ref_ckpt/mix.md100.pth`` (trained on all 10 ``kpathmd100``
frames, so of the held-out frames only the ``kpathmd25`` ones are unseen by it) is tested alike.

Prints JSON: per step the band MAE / max |err| (meV) on the held-out frames of each temperature and
overall, and the training seconds of each step.

Measured (defaults, one thread; held-out band MAE over both temperatures, meV):

| start | step 1 | step 2 | 3 (mix) |
|---|---|---|---|
| ``esk`` (Si with its PySCF overlap, ``d*`` too: gth-dzvp's d, hopping extended Hueckel) | 283 | 43.4 | 43.3 |
| ``esk``, ``d*`` Harrison's and without overlap (before) | 341 | 80.1 | 80.0 |
| ``esk``, the orthogonal table and ``d*`` uncoupled (before that) | | | 211 |
| ``deeptb`` (DeePTB's ``nnsk_tr1.pth``) | | | 46.8 |
| DeePTB's own ``mix.md100.pth`` | | | 57.2 |

(first row: ``PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/silicon_chain_md.py --start esk``, training
45 + 513 + 357 s on a loaded machine, 720 s CPU for the whole run; max |err| 519 meV at the mix.)

Step 1 never sees the MD frames. The tutorial freezes the start's overlap in every step, so the
start decides it: an orthogonal start trains with S = 1 + N(0, 0.01) noise. Step 1 on its own
(band MAE on ``kpath_spk``): 278 meV from the orthogonal table, 79 with silicon's fitted overlap,
73 with ``d*`` started from Harrison's integrals as well, 68 with ``d*``'s overlap and the extended
Hueckel start; DeePTB's ``nnsk_tr1.pth`` 57. What was left was the overlap of ``d*`` (PySCF's
minimal basis, from which the table is fitted, has no d): ten epochs of step 2 from DeePTB's
``nnsk_tr1.pth`` 64.5 meV held-out, with its ``d*`` overlap integrals zeroed 114.9. ``eqtb esk`` now
gives ``d*`` the overlap of gth-dzvp's d function with the minimal basis' 3s, 3p
(``eqtb.train.esk_fit.fit_polarisation``). Ten epochs of step 2 after the 500 of step 1
(``--epochs 500 10 10``): 107 meV without that overlap; 209 with it but ``d*``'s hopping Harrison's
alone (Harrison's integrals are orthogonal-TB ones: with S, the s-d* coupling left after Loewdin
orthogonalisation, H - mean level x S, is about +0.25 eV instead of -1.3); 64.4 with the hopping
started as Harrison's plus the mean level times the overlap (extended Hueckel, as the fitted
shells' fits start), the same as from ``nnsk_tr1.pth``; 287 with that start but PySCF's own signs of
the s-d* and p-d* overlaps (its GTH s and p functions are negative far out; step 1 then ended at
217 meV on ``kpath_spk``): the d* overlap helps only with signs and hopping that agree with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.io import read, write

HERE = Path(__file__).resolve().parent
SILICON = HERE.parent.parent / "shared" / "data" / "deeptb_examples" / "silicon"
MD = {"25": "kpathmd25.0", "100": "kpathmd100.0"}


def split_frames(src: Path, dst: Path, frames: list[int]) -> None:
    """``dst``: a band-dataset folder holding ``frames`` of ``src`` (xdat.traj, eigenvalues.npy,
    kpoints.npy, info.json)."""
    dst.mkdir(parents=True)
    np.save(dst / "eigenvalues.npy", np.load(src / "eigenvalues.npy")[frames])
    shutil.copyfile(src / "kpoints.npy", dst / "kpoints.npy")
    traj = read(src / "xdat.traj", index=":")
    write(dst / "xdat.traj", [traj[i] for i in frames])
    info = json.loads((src / "info.json").read_text())
    info["nframes"] = len(frames)
    (dst / "info.json").write_text(json.dumps(info))


def layout(work: Path, epochs: list[int], heldout: int) -> Path:
    """``work/data`` (kpath_spk.0 and the training frames as ``md.25``, ``md.100``), ``work/heldout``
    (``md25.0``, ``md100.0``) and ``work/tut/input_{1,2,3}.json``."""
    shutil.copytree(SILICON / "data" / "kpath_spk.0", work / "data" / "kpath_spk.0")
    for t, name in MD.items():
        n = len(np.load(SILICON / "data" / name / "eigenvalues.npy", mmap_mode="r"))
        split_frames(SILICON / "data" / name, work / "data" / f"md.{t}", list(range(n - heldout)))
        split_frames(SILICON / "data" / name, work / "heldout" / f"md{t}.0", list(range(n - heldout, n)))
    (work / "tut").mkdir()
    for step, n in enumerate(epochs, start=1):
        cfg = json.loads((SILICON / "tutorial_v2.2" / f"input_{step}.json").read_text())
        cfg["common_options"]["device"] = "cpu"
        cfg["train_options"]["num_epoch"] = n
        if step > 1:
            cfg["data_options"]["train"]["prefix"] = "md"
        (work / "tut" / f"input_{step}.json").write_text(json.dumps(cfg, indent=1))
    return work / "tut"


def eqtb(args: list[str], cwd: Path, env: dict) -> None:
    subprocess.run([sys.executable, "-m", "eqtb.cli", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def test_bands(model: Path, work: Path, env: dict) -> dict:
    """Band errors (meV, mean shift removed) of ``model`` on each held-out folder and on all of them."""
    out, total, count, worst = {}, 0.0, 0, 0.0
    for t in MD:
        res_dir = work / "tests" / f"{model.stem}.{t}"
        eqtb(["test", "-i", str(model), str(work / "heldout" / f"md{t}.0"), "--bands", "-q", "-o", str(res_dir)],
             work, env)
        r = json.loads((res_dir / "test_results.json").read_text())["bands"]["align"]["mean"]
        out[f"md{t}"] = {"mae_meV": round(r["mae"], 2), "max_meV": round(r["max_abs"], 1), "count": r["count"]}
        total += r["mae"] * r["count"]
        count += r["count"]
        worst = max(worst, r["max_abs"])
    out["all"] = {"mae_meV": round(total / count, 2), "max_meV": round(worst, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, nargs=3, default=[500, 40, 40], metavar=("E1", "E2", "E3"),
                    help="epochs of steps 1, 2, 3 (the tutorial: 500 20 20)")
    ap.add_argument("--heldout", type=int, default=2, help="frames held out of each MD set (default 2 of 10)")
    ap.add_argument("--start", choices=("esk", "scratch", "deeptb"), default="esk",
                    help="how step 1 starts (default: the built-in parameters, as the tutorial)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="eqtb_chain_"))
    if args.keep and work.exists():
        ap.error(f"{work} exists")
    try:
        tut = layout(work, args.epochs, args.heldout)
        report = {"epochs": args.epochs, "heldout_per_set": args.heldout, "threads": int(env["OMP_NUM_THREADS"]),
                  "steps": {}}
        init = None
        steps = [(1, "nnsk"), (2, "nnsk"), (3, "mix")]
        if args.start == "esk":
            eqtb(["esk", str(SILICON / "tutorial_v2.2" / "sk_in.json"), "-o", "esk"], tut, env)
            init = next((tut / "esk").glob("*.pth"))
        elif args.start == "deeptb":
            init, steps = SILICON / "tutorial_v2.2" / "ref_ckpt" / "nnsk_tr1.pth", steps[1:]
        report["start"] = args.start
        for step, family in steps:
            t0 = time.perf_counter()
            eqtb(["train", f"input_{step}.json", "-o", f"step{step}", "-q"] + (["-i", str(init)] if init else []),
                 tut, env)
            seconds = time.perf_counter() - t0
            init = tut / f"step{step}" / "checkpoint" / f"{family}.best.pth"
            report["steps"][f"{step}_{family}"] = {"train_s": round(seconds, 1), **test_bands(init, work, env)}
        report["deeptb_mix_md100"] = test_bands(SILICON / "tutorial_v2.2" / "ref_ckpt" / "mix.md100.pth", work, env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

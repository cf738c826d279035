"""SLEM, LEM and ELCT side by side: errors on unseen frames, seconds per epoch and peak memory.

    OMP_NUM_THREADS=1 python benchmarks/e3_side_by_side.py [--systems si_md,hbn,...] [--models slem,lem,elct]
        [--budget 60] [--data-root DIR] [--si-data DIR] [--markdown table.md] [--keep DIR]
    OMP_NUM_THREADS=1 python benchmarks/e3_side_by_side.py --speed [--epochs 20] [--dptb VENV]
    python benchmarks/e3_side_by_side.py --from-json run1.json run2.json [--markdown table.md]

Systems (:data:`SYSTEMS`; data made by ``eqtb generate`` with PySCF, LDA, GTH pseudopotentials,
each frame a randomly displaced copy of one structure, the last frames never trained on):

* ``si_md``  -- 8-atom cubic Si cell, gth-szv, 12 frames (displacements 0.07 A), frames 8-11
  unseen; read from ``--si-data`` (made by ``eqtb generate si8.vasp -n 12 --displacement 0.07
  --seed 1``), never written to;
* ``hbn``    -- hBN sheet (B, N), 2-atom cell with 15 A of vacuum, a 3-D cell with k-mesh 4 4 1,
  gth-szv, FFT cutoff 50 Ha, 8 frames, 6-7 unseen;
* ``mos2``   -- MoS2 monolayer, the d-orbital system: gth-szv has no Mo, gth-szv-molopt-sr has
  (Mo 2s1p1d with 4s4p semicore, S 1s1p), 15 A of vacuum, k-mesh 3 3 1, FFT cutoff 60 Ha, 4 frames
  (a frame took 8-14 min on the loaded machine), frame 3 unseen;
* ``water``  -- one H2O molecule (no periodic direction), gth-szv, 20 frames, 16-19 unseen;
* ``si_md_dm`` -- the density matrix D(R) of ``si_md`` as the target (``get_DM``), with S.

Generated data is cached under ``--data-root/<system>`` (complete frames are reused on a rerun).

Every model trains with the hyperparameters of DeePTB's Si64 tutorial (hidden irreps
``32x0e+32x1o+16x2e``, plus l = 3, 4 channels where the basis has d shells; 3 layers; Adam 5e-3,
``rop`` 0.8/50; ``hamil_abs``; batch 1; ELCT with 4 heads of 16, as ``examples/elct_si64.json``),
r_max per system (:data:`SYSTEMS`), on the training frames, for ``--budget`` CPU seconds of its
own process (``eqtb train --max-cpu-time``: it stops after the epoch that reaches them; start-up
not counted), so each row costs the same on a loaded machine. The
latest model is then tested on the unseen frames with ``eqtb test``'s engine
(:func:`eqtb.train.evaluate.evaluate`): block MAE of the target (H in meV, D in 1e-3) and of S
(1e-3), onsite / off-site, and the band MAE (meV, no shift) over all compared bands and within
E_F +- 5 eV (E_F from the valence electron count), with the cutoff floor (the bands of the exact
DFT blocks cut at the same r_max). Seconds per epoch: CPU and wall, median over the epochs after
the first. Peak memory: the peak RSS of the training process.

Prints JSON (``results[system][model]``) and, with ``--markdown``, writes the table as markdown.

``--speed``: the issue's speed line instead -- seconds per epoch of eqtb's ``slem``, ``lem``,
``elct`` and of DeePTB 2.2.1's SLEM (``dptb train``, ``--dptb`` virtual environment) on the Si64
tutorial config (``benchmarks/timing.py``: :func:`si64_config`), ``--epochs`` each, back to back,
one thread, CPU and wall, with the 1-minute load average before and after and each model's
speed-up over DeePTB's SLEM (ratios of the CPU and of the wall medians).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from si_md_experiment import mean_neighbours  # noqa: E402
from timing import DPTB_VENV, dptb_train, eqtb_train, si64_config, si64_workdir  # noqa: E402

DATA_ROOT = HERE.parent.parent / "data" / "side_by_side"
SI_DATA = HERE.parent.parent / "data" / "si8_szv"
MODELS = ("slem", "lem", "elct")
WINDOW_EV = 5.0
IRREPS_SP = "32x0e+32x1o+16x2e"
IRREPS_D = "32x0e+32x1o+16x2e+8x3o+8x4e"

#: per system: how to make the data (``structure``: an ase builder; ``generate``: ``eqtb generate``
#: options), frames for training / testing, the target, r_max (Angstrom) and valence electrons (GTH)
SYSTEMS = {
    "si_md": {"prefix": "Si8", "nframes": 12, "n_train": 8, "quantity": "hamiltonian", "r_max": 7.4,
              "nel_atom": {"Si": 4}, "irreps": IRREPS_SP, "structure": "si8",
              "generate": ["--displacement", "0.07", "--seed", "1"]},
    "hbn": {"prefix": "BN", "nframes": 8, "n_train": 6, "quantity": "hamiltonian", "r_max": 7.0,
            "nel_atom": {"B": 3, "N": 5}, "irreps": IRREPS_SP, "structure": "hbn",
            "generate": ["--kmesh", "4", "4", "1", "--ke-cutoff", "50", "--displacement", "0.05", "--seed", "1"]},
    "mos2": {"prefix": "MoS2", "nframes": 4, "n_train": 3, "quantity": "hamiltonian", "r_max": 7.0,
             "nel_atom": {"Mo": 14, "S": 6}, "irreps": IRREPS_D, "structure": "mos2",
             "generate": ["--basis", "gth-szv-molopt-sr", "--kmesh", "3", "3", "1", "--ke-cutoff", "60",
                          "--displacement", "0.05", "--seed", "1"]},
    "water": {"prefix": "H2O", "nframes": 20, "n_train": 16, "quantity": "hamiltonian", "r_max": 4.0,
              "nel_atom": {"O": 6, "H": 1}, "irreps": IRREPS_SP, "structure": "water",
              "generate": ["--displacement", "0.05", "--seed", "1"]},
    "si_md_dm": {"data": "si_md", "prefix": "Si8", "nframes": 12, "n_train": 8, "quantity": "density_matrix",
                 "r_max": 7.4, "nel_atom": {"Si": 4}, "irreps": IRREPS_SP},
}


# ------------------------------------------------------------------------------------ data
def structure(kind: str):
    """The unperturbed structure of a system (ase.Atoms)."""
    from ase.build import bulk, graphene, molecule, mx2

    if kind == "si8":
        return bulk("Si", "diamond", a=5.43, cubic=True)
    if kind == "hbn":  # 2 atoms, 15 A of vacuum along c
        atoms = graphene(formula="BN", a=2.504, vacuum=7.5)
    elif kind == "mos2":  # 2H monolayer, 15 A of vacuum beyond the S-S thickness
        atoms = mx2(formula="MoS2", kind="2H", a=3.16, thickness=3.17, vacuum=7.5)
    elif kind == "water":
        atoms = molecule("H2O")
        atoms.center()
        return atoms
    else:
        raise ValueError(kind)
    atoms.pbc = True  # a 2-D sheet as a 3-D cell with vacuum (k-mesh N N 1)
    return atoms


def data_folder(name: str, data_root: Path, si_data: Path) -> Path:
    """The dataset root of a system, generated (resumably) with ``eqtb generate`` when frames are missing."""
    sysdef = SYSTEMS[name]
    src = SYSTEMS[sysdef.get("data", name)]
    root = si_data if sysdef.get("data", name) == "si_md" else data_root / sysdef.get("data", name)
    have = [root / f"{src['prefix']}.{n}" / "generate.json" for n in range(src["nframes"])]
    if all(p.is_file() for p in have):
        return root
    if root == si_data:  # another run's data: read only
        raise RuntimeError(f"{si_data}: the Si MD set is incomplete (frames 0-{src['nframes'] - 1} wanted); make it "
                           f"with eqtb generate si8.vasp -o {si_data} -n {src['nframes']} {' '.join(src['generate'])} "
                           f"(si8.vasp: the conventional 8-atom cell, a = 5.43 A)")
    from ase.io import write

    root.mkdir(parents=True, exist_ok=True)
    path = root / ("structure.xyz" if src["structure"] == "water" else "structure.vasp")
    write(path, structure(src["structure"]), **({} if path.suffix == ".xyz" else {"format": "vasp", "direct": True}))
    cmd = [sys.executable, "-m", "eqtb.cli", "generate", str(path), "-o", str(root), "-n", str(src["nframes"]),
           "-q", *src["generate"]]
    print(f"generating {name}: {' '.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    return root


def split(name: str, root: Path, work: Path) -> tuple[Path, list[Path]]:
    """A training root of symbolic links to the training frames (the data stays read-only) and the
    unseen frames' folders."""
    s = SYSTEMS[name]
    frames = [root / f"{s['prefix']}.{n}" for n in range(s["nframes"])]
    train = work / "train"
    shutil.rmtree(train, ignore_errors=True)
    train.mkdir(parents=True)
    for f in frames[:s["n_train"]]:
        (train / f.name).symlink_to(f)
    return train, frames[s["n_train"]:]


# ------------------------------------------------------------------------------------ models
def train_config(name: str, model: str, train_root: Path, work: Path) -> Path:
    """The training config of ``model`` on system ``name`` (see the module docstring)."""
    from eqtb.data.folder import TrajectoryFolder

    s = SYSTEMS[name]
    first = sorted(train_root.iterdir())[0]
    emb = {"method": model, "r_max": s["r_max"], "irreps_hidden": s["irreps"], "n_layers": 3}
    if model == "elct":
        emb.update(n_heads=4, head_dim=16, latent_dim=64)
    else:
        emb.update(avg_num_neighbors=round(mean_neighbours([first], s["r_max"]), 1), tp_radial_emb=True)
    dm = s["quantity"] == "density_matrix"
    cfg = {
        "common_options": {"basis": TrajectoryFolder(first).basis.spec, "device": "cpu", "overlap": True},
        "model_options": {"embedding": emb, "prediction": {"method": "e3tb", "neurons": [64, 64]}},
        "train_options": {"num_epoch": 10**7, "batch_size": 1, "optimizer": {"lr": 0.005, "type": "Adam"},
                          "lr_scheduler": {"type": "rop", "factor": 0.8, "patience": 50, "min_lr": 1e-6},
                          "loss_options": {"train": {"method": "hamil_abs"}},
                          "save_freq": 10**7, "validation_freq": 10**7, "display_freq": 1},
        "data_options": {"train": {"root": str(train_root), "prefix": s["prefix"], "get_Hamiltonian": not dm,
                                   "get_DM": dm, "get_overlap": True}},
    }
    path = work / f"{model}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def test_unseen(ckpt: Path, folders: list[Path], nel_atom: dict) -> dict:
    """Errors of the checkpoint on the unseen frames with ``eqtb test``'s engine."""
    from eqtb.predict import load_model
    from eqtb.train.evaluate import evaluate, load_test_samples

    model = load_model(ckpt)
    bands = model.quantity == "hamiltonian"
    samples, fermis = load_test_samples(folders, model.basis, model.r_max, [model.quantity],
                                        optional=["overlap"], eigenvalues=bands)
    res = evaluate(model, samples, bands=bands, window=WINDOW_EV, fermi_levels=fermis, nel_atom=nel_atom)
    out = {"frames": res["frames"], "n_params": sum(p.numel() for p in model.parameters())}
    for q, r in res["blocks"].items():
        out[q] = {"unit": r["unit"], **{part: round(r[part]["mae"], 4) for part in ("all", "onsite", "offsite")}}
    if bands:
        b, floor = res["bands"]["align"]["none"], res["bands"]["floor"]["align"]["none"]
        out["bands"] = {"unit": "meV", "nbands": res["bands"]["nbands"], "failed": len(res["bands"]["failed"]),
                        "mae": _r(b, "mae"), "mae_window": _r(b.get("window") if b else None, "mae"),
                        "max_abs": _r(b, "max_abs"), "window_eV": res["bands"]["window"],
                        "floor_mae": _r(floor, "mae"), "floor_mae_window": _r(floor.get("window") if floor else None,
                                                                               "mae")}
    return out


def _r(d: dict | None, key: str):
    return None if not d or d.get(key) is None else round(d[key], 3)


def run_one(name: str, model: str, data_root: Path, si_data: Path, work: Path, budget: float) -> dict:
    s = SYSTEMS[name]
    root = data_folder(name, data_root, si_data)
    wd = work / name
    train_root, unseen = split(name, root, wd)
    run = eqtb_train(train_config(name, model, train_root, wd), wd / f"run_{model}", wd, cpu_budget=budget)
    res = {"train_frames": s["n_train"], "unseen_frames": [f.name for f in unseen], "budget_cpu_s": budget,
           **run.summary()}
    res.update(test_unseen(wd / f"run_{model}" / "checkpoint" / f"{model}.latest.pth", unseen, s["nel_atom"]))
    return res


# ------------------------------------------------------------------------------------ output
def markdown(results: dict) -> str:
    """The table: one row per system and model."""
    head = ("| system | model | target MAE (on / off) | S MAE 1e-3 | band MAE meV (all / ±5 eV) | cutoff floor (all / ±5 eV) "
            "| epochs | CPU s/epoch | peak RSS GB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, per_model in results.items():
        for model, r in per_model.items():
            if "error" in r:
                lines.append(f"| {name} | {model} | failed: {r['error'][:60]} | | | | | | |")
                continue
            q = SYSTEMS[name]["quantity"]
            t = r[q]
            tgt = f"{'H' if q == 'hamiltonian' else 'D'} {t['all']:.3g} {t['unit']} ({t['onsite']:.3g} / {t['offsite']:.3g})"
            smae = f"{r['overlap']['all']:.3g}" if "overlap" in r else "-"
            b = r.get("bands")
            band = f"{_f(b['mae'])} / {_f(b['mae_window'])}" if b else "-"
            floor = f"{_f(b['floor_mae'])} / {_f(b['floor_mae_window'])}" if b else "-"
            lines.append(f"| {name} | {model} | {tgt} | {smae} | {band} | {floor} | {r['epochs']} | "
                         f"{r['s_per_epoch_cpu_median']} | {r['peak_rss_GB']} |")
    return "\n".join(lines) + "\n"


def _f(x) -> str:
    """A band error (meV) for the table: 1 decimal, "-" when there is none (no band in the window)."""
    return "-" if x is None else f"{x:.1f}"


def speed(epochs: int, venv: Path) -> dict:
    """s/epoch of eqtb's slem, lem, elct and DeePTB's SLEM on the Si64 tutorial config, back to back."""
    work = si64_workdir(Path(tempfile.mkdtemp(prefix="eqtb_e3_speed_")))
    try:
        out = {"config": str(si64_config(work, "slem")), "epochs": epochs,
               "threads": int(os.environ.get("OMP_NUM_THREADS", "1")), "load_average_before": os.getloadavg()}
        if (venv / "bin" / "dptb").is_file():
            out["deeptb_slem"] = dptb_train(si64_config(work, "slem", epochs, "dptb_slem"), work / "dptb_out",
                                            work).summary()
        for m in MODELS:
            out[f"eqtb_{m}"] = eqtb_train(si64_config(work, m, epochs), work / f"eqtb_{m}", work).summary()
        out["load_average_after"] = os.getloadavg()
        if "deeptb_slem" in out:
            for m in MODELS:
                for kind in ("cpu", "wall"):
                    ref = out["deeptb_slem"][f"s_per_epoch_{kind}_median"]
                    out[f"eqtb_{m}_speedup_over_deeptb_slem_{kind}"] = round(
                        ref / out[f"eqtb_{m}"][f"s_per_epoch_{kind}_median"], 2)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of slem,lem,elct")
    ap.add_argument("--budget", type=float, default=60.0, help="CPU seconds of each training process (default 60)")
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT, help="generated datasets (cache), one folder per system")
    ap.add_argument("--si-data", type=Path, default=SI_DATA, help="the Si MD dataset (12 frames of Si8, gth-szv)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    ap.add_argument("--speed", action="store_true", help="the Si64 speed line against DeePTB's SLEM instead")
    ap.add_argument("--epochs", type=int, default=20, help="--speed: epochs per run (default 20)")
    ap.add_argument("--dptb", type=Path, default=DPTB_VENV, help="--speed: DeePTB 2.2.1 virtual environment")
    ap.add_argument("--from-json", type=Path, nargs="+", default=None, metavar="JSON",
                    help="merge the results of earlier runs (their printed JSON) into one table; trains nothing")
    args = ap.parse_args()
    if args.from_json:
        results: dict[str, dict] = {}
        for path in args.from_json:
            for s, per_model in json.loads(path.read_text())["results"].items():
                results.setdefault(s, {}).update(per_model)
        text = markdown({s: results[s] for s in SYSTEMS if s in results})
        if args.markdown:
            args.markdown.write_text(text)
        print(text, end="")
        return
    if args.speed:
        print(json.dumps(speed(args.epochs, args.dptb), indent=1))
        return
    systems = [s for s in args.systems.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    for s in systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r} (known: {', '.join(SYSTEMS)})")
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r} (known: {', '.join(MODELS)})")
    work = args.keep or Path(tempfile.mkdtemp(prefix="eqtb_e3_table_"))
    results: dict[str, dict] = {}
    try:
        for s in systems:
            results[s] = {}
            for m in models:
                try:
                    results[s][m] = run_one(s, m, args.data_root, args.si_data, work, args.budget)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    results[s][m] = {"error": str(exc)[-2000:]}
                print(json.dumps({s: {m: results[s][m]}}), file=sys.stderr)
        out = {"budget_cpu_s": args.budget, "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
               "window_eV": WINDOW_EV, "load_average": os.getloadavg(), "results": results}
        print(json.dumps(out, indent=1))
        if args.markdown:
            args.markdown.write_text(markdown(results))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

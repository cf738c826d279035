"""The PySCF Si MD experiment (issue 12): SLEM, LEM and ELCT on unseen frames, equal CPU time.

    OMP_NUM_THREADS=1 python benchmarks/si_md_experiment.py DATA [--models slem lem elct] [--rmax 9]
        [--budget 690] [--bands-phase SECONDS] [--test-frames 8 9 10 11]
        [--set train_options.lr_scheduler.type=exp ...] [--bands-set KEY=VALUE ...]
        [--bands-info '{"band_min": 6, "band_max": 27}'] [--keep DIR]

``DATA``: a dataset root of single-frame trajectory folders ``<prefix>.<n>`` written by
``eqtb generate`` (e.g. ``eqtb generate si8.vasp -o DATA -n 12 --displacement 0.07 --seed 1``: the
8-atom cubic Si cell, gth-szv, LDA; frame 0 the undisplaced crystal). The folders numbered
``--test-frames`` are held out, the others train. For each model, DeePTB's Si64 tutorial
hyperparameters (``../shared/data/si64_abacus/input_short_cpu.json``: hidden irreps
``32x0e+32x1o+16x2e``, 3 layers, Adam at 5e-3, ``rop`` factor 0.8 patience 50, batch 1,
``hamil_abs``, H and S of Si 1s1p -- which is gth-szv's basis) with ``r_max`` set to ``--rmax``
(default 9 A, what ``eqtb cutoff`` recommends on this data for 20 meV; 10 A for 10 meV) and ``avg_num_neighbors``
to the training frames' mean neighbour count at that cutoff; ``lem`` the same with its embedding
method, ``elct`` ``examples/elct_si64.json`` with the same cutoff. ``--set KEY=VALUE`` (JSON value,
dotted path, :func:`eqtb.config.load_config` overrides) changes every model's config, e.g. a
learning-rate schedule a user would set.

Each model trains in its own ``eqtb train`` process for ``--budget`` seconds of that process's CPU
time (``--max-cpu-time``: one thread with ``OMP_NUM_THREADS=1``, independent of how busy a shared
machine is; DeePTB needs ~690 s of one thread for the tutorial's 300 epochs); wall time is
reported beside it. ``--bands-phase S``: the last S seconds of that budget fine-tune the block
phase's latest checkpoint on the training frames' band energies (``eig_ham``,
:func:`bands_phase_config`; ``eqtb train -i``; ``--bands-set`` overrides its config, ``--bands-info``
sets the frames' band window), the recipe of README's "eig_ham with an E3 model". With ``--keep
DIR`` a block phase already in DIR (same config and budget) is reused, so that band-phase variants
start from one block checkpoint.
The latest checkpoint is then tested on the held-out frames with eqtb's own
evaluation (:func:`eqtb.train.evaluate.evaluate`, what ``eqtb test --bands`` runs): H MAE
(onsite, off-site, all; meV), S MAE (1e-3), and the band MAE and max error within E_F +- 5 eV
(``--window``; E_F from the valence count, 4 per Si), no alignment and mean-aligned, with the
cutoff floor at the model's r_max on the same frames (the exact blocks truncated at r_max: what no
model at this cutoff removes) and the attribution (``eqtb test --attribute``: the window MAE with
the exact onsite, then off-site, H blocks put in).

Prints JSON: the data, the split, per model the training figures (epochs, CPU and wall seconds,
median CPU s/epoch, peak RSS, parameters, losses), the test figures, and the block errors on the
training frames.

Reuse: :func:`split_dataset`, :func:`experiment_config`, :func:`train` and :func:`test` work on any
dataset of single-frame folders; :func:`run_model` chains them for one model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUTORIAL = HERE.parent.parent / "shared" / "data" / "si64_abacus" / "input_short_cpu.json"
ELCT_EXAMPLE = HERE.parent / "examples" / "elct_si64.json"
MODELS = ("slem", "lem", "elct")


def split_dataset(data: Path, work: Path, test_frames: list[int], prefix: str | None = None) -> dict:
    """Links (symbolic) to the single-frame folders ``<prefix>.<n>`` of ``data`` in
    ``work/train`` and ``work/test`` (those numbered ``test_frames``); ``data`` is only read.
    Returns ``{"prefix", "train": [folders], "test": [folders], "train_root", "test_root"}``."""
    data = Path(data).resolve()
    folders = sorted((p for p in data.iterdir() if p.is_dir() and "." in p.name),
                     key=lambda p: (p.name.rsplit(".", 1)[0], int(p.name.rsplit(".", 1)[1])))
    prefixes = {p.name.rsplit(".", 1)[0] for p in folders}
    prefix = prefix or (prefixes.pop() if len(prefixes) == 1 else None)
    if prefix is None:
        raise SystemExit(f"{data}: folders of several prefixes ({sorted(prefixes)}); give --prefix")
    out = {"prefix": prefix, "train": [], "test": []}
    for p in folders:
        if p.name.rsplit(".", 1)[0] != prefix:
            continue
        part = "test" if int(p.name.rsplit(".", 1)[1]) in test_frames else "train"
        link = work / part / p.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(p, target_is_directory=True)
        out[part].append(str(link))
    missing = sorted(set(test_frames) - {int(Path(f).name.rsplit(".", 1)[1]) for f in out["test"]})
    if missing or not out["train"]:
        raise SystemExit(f"{data}: no {prefix}.{missing[0] if missing else '*'} folder to "
                         f"{'test on' if missing else 'train on'}")
    out["train_root"], out["test_root"] = str(work / "train"), str(work / "test")
    return out


def mean_neighbours(folders: list[str], r_max: float) -> float:
    """Mean number of neighbours per atom within ``r_max`` (Angstrom) over the frames of ``folders``
    (the directed edges of eqtb's graph per atom): SLEM/LEM's ``avg_num_neighbors``."""
    from eqtb.data.folder import TrajectoryFolder
    from eqtb.structure import build_graph

    counts = []
    for f in folders:
        tf = TrajectoryFolder(f)
        for k in range(tf.nframes):
            st = tf.structure(k)
            counts.append(2.0 * len(build_graph(st, r_max).i) / st.natoms)
    return float(statistics.mean(counts))


def experiment_config(model: str, split: dict, r_max: float, avg_num_neighbors: float) -> dict:
    """The training config of ``model`` (``slem``, ``lem``, ``elct``) on ``split``'s training
    folders: DeePTB's Si64 tutorial config (ELCT: ``examples/elct_si64.json``) with the data,
    ``r_max`` (Angstrom) and, for SLEM/LEM, ``avg_num_neighbors`` replaced."""
    if model not in MODELS:
        raise SystemExit(f"unknown model {model!r} (one of {', '.join(MODELS)})")
    cfg = json.loads((ELCT_EXAMPLE if model == "elct" else TUTORIAL).read_text())
    emb = cfg["model_options"]["embedding"]
    emb["r_max"] = {"Si": float(r_max)}
    if model != "elct":
        emb["method"] = model
        emb["avg_num_neighbors"] = round(avg_num_neighbors, 1)
    cfg["data_options"] = {"train": {"root": split["train_root"], "prefix": split["prefix"],
                                     "get_Hamiltonian": True, "get_overlap": True}}
    cfg["train_options"]["num_epoch"] = 10**6  # the CPU-time budget ends the run
    return cfg


def train(cfg: dict, out: Path, cpu_budget: float, overrides: dict | None = None, init: str | None = None) -> dict:
    """``eqtb train`` of ``cfg`` (written to ``out/input.json``; ``overrides``: dotted key -> value
    applied on top; ``init``: a checkpoint to start from, ``-i``) in its own process, stopped after
    ``cpu_budget`` seconds of its CPU time. Returns the run's figures and the latest checkpoint's path."""
    from eqtb.config import config_to_dict, load_config

    out.mkdir(parents=True, exist_ok=True)
    path = out / "input.json"
    path.write_text(json.dumps(cfg, indent=1))
    if overrides:
        path.write_text(json.dumps(config_to_dict(load_config(path, overrides)), indent=1))
    run = out / "run"
    cmd = [sys.executable, "-m", "eqtb.cli", "train", str(path), "-o", str(run), "-q",
           "--max-cpu-time", str(cpu_budget)] + (["-i", str(init)] if init else [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    hist = [json.loads(line) for line in open(run / "log" / "history.jsonl")]
    cpu = [h["cpu_seconds"] for h in hist[1:]] or [hist[0]["cpu_seconds"]]
    family = json.loads((run / "train_config.json").read_text())["model_options"]["embedding"]["method"]
    return {"epochs": hist[-1]["epoch"], "train_cpu_s": round(sum(h["cpu_seconds"] for h in hist), 1),
            "train_wall_s": round(sum(h["seconds"] for h in hist), 1),
            "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "process_wall_s": round(wall, 1),
            "cpu_s_per_epoch_median": round(statistics.median(cpu), 4),
            "peak_rss_GB": round(usage.ru_maxrss / 1024**2, 3), "first_loss": hist[0]["train_loss"],
            "final_loss": hist[-1]["train_loss"], "final_lr": hist[-1]["lr"],
            "train_onsite_mae_meV": round(hist[-1]["train_onsite_mae"] * 1e3, 3),
            "train_hopping_mae_meV": round(hist[-1]["train_hopping_mae"] * 1e3, 3),
            "checkpoint": str(run / "checkpoint" / f"{family}.latest.pth")}


def test(checkpoint: str | Path, folders: list[str], window: float = 5.0, nel_atom: dict | None = None,
         bands: bool = True) -> dict:
    """Errors of the model ``checkpoint`` on the trajectory ``folders`` with eqtb's evaluation
    (``eqtb test --bands``): H (meV) and S (1e-3) block MAE, and with ``bands`` the band MAE / max
    (meV) within E_F +- ``window`` eV (E_F from ``nel_atom``, default 4 electrons per Si) unaligned
    and mean-aligned, with the cutoff floor at the model's r_max beside them."""
    from eqtb.predict import load_model
    from eqtb.train.evaluate import evaluate, load_test_samples

    model = load_model(checkpoint)
    samples, fermis = load_test_samples(folders, model.basis, model.r_max, [model.quantity], ["overlap"],
                                        eigenvalues=bands, dtype=next(model.parameters()).dtype)
    res = evaluate(model, samples, bands=bands, window=window, fermi_levels=fermis, nel_atom=nel_atom or {"Si": 4},
                   attribute=bands)
    blocks = res["blocks"]
    out = {"frames": res["frames"], "n_params": sum(p.numel() for p in model.parameters())}
    for q, tag in (("hamiltonian", "H"), ("overlap", "S")):
        for part in ("all", "onsite", "offsite"):
            out[f"{tag}_mae_{part}"] = round(blocks[q][part]["mae"], 4)
        out[f"{tag}_unit"] = blocks[q]["unit"]
    if not bands:
        return out
    b = res["bands"]
    out["bands"] = {"window_eV": b["window"], "nbands": b["nbands"], "failed": b["failed"]}
    for a in ("none", "mean"):
        for name, src in (("model", b["align"][a]), ("floor", b["floor"]["align"][a])):
            src = src or {}  # None: no frame compared (a predicted S not positive definite: see "failed")
            w = src.get("window") or {}
            out["bands"][f"{name}_{a}"] = {"mae_window": _r(w.get("mae")), "max_window": _r(w.get("max_abs")),
                                           "mae_all": _r(src.get("mae")), "max_all": _r(src.get("max_abs"))}
    out["bands"]["attribution_none"] = {kind: _r(((r["none"] or {}).get("window") or {}).get("mae"))
                                        for kind, r in b["attribution"].items()}
    return out


def _r(x):
    return None if x is None else round(float(x), 3)


#: the band phase (``--bands-phase``): eig_ham with this weight of the block term, started at this
#: learning rate, decayed by this factor per epoch (far below the block phase's rate: band energies
#: magnify block errors, README "eig_ham with an E3 model")
BANDS_COEFF_HAM, BANDS_LR, BANDS_GAMMA = 0.8, 5e-5, 0.995


def bands_phase_config(cfg: dict) -> dict:
    """``cfg`` (a block-phase config, overrides applied) turned into the band phase's: the
    ``eig_ham`` loss (:data:`BANDS_COEFF_HAM`) on the frames' band energies (eigenvalues.npy at
    kpoints.npy, every band), Adam from :data:`BANDS_LR` decayed exponentially by :data:`BANDS_GAMMA`."""
    cfg = json.loads(json.dumps(cfg))
    to = cfg["train_options"]
    to["loss_options"]["train"] = {"method": "eig_ham", "coeff_ham": BANDS_COEFF_HAM}
    to["optimizer"]["lr"] = BANDS_LR
    to["lr_scheduler"] = {"type": "exp", "gamma": BANDS_GAMMA}
    cfg["data_options"]["train"]["get_eigenvalues"] = True
    return cfg


def with_bandinfo(folders: list[str], root: Path, bandinfo: dict) -> str:
    """Copies of the trajectory ``folders`` under ``root`` (symbolic links to every file but
    info.json) whose info.json carries ``bandinfo`` (:class:`eqtb.data.folder.BandInfo` keys: the
    band and energy window an eigenvalue loss fits). Returns ``root``."""
    from pydantic import ValidationError

    from eqtb.data.folder import BandInfo

    try:
        band = BandInfo.model_validate(bandinfo).model_dump()
    except ValidationError as err:
        raise SystemExit(f"--bands-info {json.dumps(bandinfo)}: not a bandinfo ({err.errors()[0]['msg']})") from None
    for f in map(Path, folders):
        dst = root / f.name
        dst.mkdir(parents=True, exist_ok=True)
        for item in f.iterdir():
            if item.name != "info.json" and not (dst / item.name).exists():
                (dst / item.name).symlink_to(item.resolve())
        info = json.loads((f / "info.json").read_text())
        (dst / "info.json").write_text(json.dumps({**info, "bandinfo": band}, indent=1))
    return str(root)


def block_phase(cfg: dict, out: Path, cpu_budget: float, overrides: dict | None) -> dict:
    """:func:`train` of the block phase, or the figures of the one already in ``out`` when its
    ``blocks.json`` records the same config and budget (a kept work folder, ``--keep``: band-phase
    variants then start from one block checkpoint)."""
    from eqtb.config import config_to_dict, load_config

    out.mkdir(parents=True, exist_ok=True)
    (out / "requested.json").write_text(json.dumps(cfg))
    full = config_to_dict(load_config(out / "requested.json", overrides or {}))
    record = out / "blocks.json"
    if record.exists():
        done = json.loads(record.read_text())
        if done["config"] == full and done["cpu_budget"] == cpu_budget and Path(done["train"]["checkpoint"]).exists():
            print(f"{out}: block phase reused ({done['train']['epochs']} epochs)", file=sys.stderr, flush=True)
            return done["train"]
    tr = train(full, out, cpu_budget)
    record.write_text(json.dumps({"config": full, "cpu_budget": cpu_budget, "train": tr}, indent=1))
    return tr


def run_model(model: str, split: dict, work: Path, r_max: float, cpu_budget: float,
              overrides: dict | None = None, window: float = 5.0, bands_phase: float = 0.0,
              bands_overrides: dict | None = None, bandinfo: dict | None = None) -> dict:
    """Train ``model`` on ``split`` (:func:`split_dataset`) for ``cpu_budget`` CPU seconds -- the last
    ``bands_phase`` of them fine-tuning on band energies (:func:`bands_phase_config`, from the block
    phase's latest checkpoint, ``bands_overrides`` applied to its config, the training frames'
    ``bandinfo`` replaced by ``bandinfo`` when given: :func:`with_bandinfo`) -- and test it on the
    held-out folders: ``{"train": ..., ["bands_phase": ...,] "test": ..., "train_frames": ...}`` (the
    last: the block errors on the training frames, to set the unseen frames' beside). The block
    phase of a kept work folder is reused (:func:`block_phase`)."""
    cfg = experiment_config(model, split, r_max, mean_neighbours(split["train"], r_max))
    tr = block_phase(cfg, work / model, cpu_budget - bands_phase, overrides)
    out = {"train": tr}
    if bands_phase > 0:
        bands_cfg = bands_phase_config(json.loads((work / model / "input.json").read_text()))
        tag = "bands"
        if bandinfo:
            tag = "bands_" + "_".join(f"{k}{v}" for k, v in sorted(bandinfo.items()))
            bands_cfg["data_options"]["train"]["root"] = with_bandinfo(split["train"], work / f"train_{tag}", bandinfo)
        if bands_overrides:
            tag += "_" + "_".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in sorted(bands_overrides.items()))
        out["bands_phase"] = tr = train(bands_cfg, work / model / tag, bands_phase, bands_overrides,
                                        init=tr["checkpoint"])
    return {**out, "test": test(tr["checkpoint"], split["test"], window),
            "train_frames": test(tr["checkpoint"], split["train"], bands=False)}


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="dataset root of single-frame folders <prefix>.<n> (eqtb generate)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--rmax", type=float, default=9.0, help="model cutoff, Angstrom (default 9)")
    ap.add_argument("--budget", type=float, default=690.0, help="CPU seconds of training per model (default 690)")
    ap.add_argument("--test-frames", type=int, nargs="+", default=[8, 9, 10, 11])
    ap.add_argument("--prefix", default=None, help="folder prefix (default: the only one in DATA)")
    ap.add_argument("--window", type=float, default=5.0, help="band errors within E_F +- this, eV")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every model")
    ap.add_argument("--bands-phase", type=float, default=0.0, metavar="SECONDS",
                    help="CPU seconds of the budget spent last on eig_ham fine-tuning (default 0: blocks only)")
    ap.add_argument("--bands-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for the band phase, e.g. train_options.optimizer.lr=1e-4")
    ap.add_argument("--bands-info", type=json.loads, default=None, metavar="JSON",
                    help="bandinfo of the training frames in the band phase, e.g. '{\"band_min\": 6, \"band_max\": 27}'")
    ap.add_argument("--keep", type=Path, default=None,
                    help="work folder to keep (runs, checkpoints); a block phase already there with the same "
                         "config and budget is reused")
    args = ap.parse_args()
    if not 0 <= args.bands_phase < args.budget:
        raise SystemExit(f"--bands-phase {args.bands_phase}: must lie in [0, --budget)")
    work = args.keep or Path(tempfile.mkdtemp(prefix="eqtb_si_md_"))
    split = split_dataset(args.data, work, args.test_frames, args.prefix)
    overrides, bands_overrides = _parse_set(args.set), _parse_set(args.bands_set)
    result = {"data": str(args.data.resolve()), "prefix": split["prefix"],
              "train": [Path(f).name for f in split["train"]], "test": [Path(f).name for f in split["test"]],
              "r_max": args.rmax, "cpu_budget_s": args.budget, "bands_phase_s": args.bands_phase, "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
              "overrides": overrides, "bands_overrides": bands_overrides, "bands_info": args.bands_info,
              "work": str(work)}
    for m in args.models:
        result[m] = run_model(m, split, work, args.rmax, args.budget, overrides, args.window, args.bands_phase,
                              bands_overrides, args.bands_info)
        print(json.dumps({m: result[m]}), file=sys.stderr, flush=True)  # progress: one line per model
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

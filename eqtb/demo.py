"""``eqtb demo``: a complete, self-contained first run on built-in data.

:func:`run_demo` goes through the whole workflow of eqtb on crystalline silicon in four stages,
each announced on stdout:

1. **Data**: real DFT data made with eqtb's PySCF engine (:func:`eqtb.data.generate.generate`):
   8 frames of the 8-atom cubic diamond cell of Si (a = 5.43 Angstrom), frame 0 ideal, the others
   with a random strain (components up to 0.01) and Gaussian displacements (0.05 Angstrom per
   coordinate); frames 0-6 train the model, frame 7 is the *test frame*, never seen in training.
   Written to ``OUT/data/pyscf`` (resumable: a rerun reuses finished frames and says so) and split
   into ``OUT/data/train`` and ``OUT/data/test`` (hard links).
2. **Training**: SLEM learns H and S for ``minutes`` minutes on the CPU (the quick demo: a fixed
   number of epochs, :data:`QUICK_EPOCHS`, so that a busy machine gets the same model, later). The DeePTB-style
   configuration is written to ``OUT/input.json`` first and read back from there, so
   ``eqtb train OUT/input.json -o OUT/train`` repeats the run (the data roots ``./data/...`` are
   found beside the file). The test frame is the validation set (monitoring only: the demo tests
   the *latest* checkpoint, ``OUT/train/checkpoint/slem.latest.pth``, not ``slem.best.pth``, which
   is picked by the loss on that test frame, so nothing is tuned on it; use the latest one too).
3. **Test**: the trained model predicts H and S of the test frame; its bands along the
   high-symmetry path of the cubic cell are compared with the bands of the frame's DFT H(R)/S(R)
   (equal to PySCF's own band energies: the generator checks it, ``self_check_meV``): MAE and
   maximum error of the 16 occupied and the 8 lowest empty bands, energies as predicted (the model
   works in the DFT's own potential zero; the DFT VBM is the common zero of the plot), plus block
   errors of H and S -> ``OUT/band_test.png``.
4. **Scale**: the model predicts a 4x4x4 supercell (512 atoms, 2048 orbitals, random
   displacements of 0.05 Angstrom) in chunks, and its band structure is computed by dense
   diagonalisation (:func:`eqtb.tb.spectrum.band_energies`, ``workers`` processes) at 16
   k-points of the path, about 40 s with two workers -> ``OUT/band_supercell.png``.

Everything is summarised in ``OUT/demo_summary.json`` (returned as a dict) and a short printout.

Units: lengths in Angstrom, energies in eV, band and H errors in meV, S errors in units of 1e-3
(as :mod:`eqtb.metrics`), times in seconds, the PySCF plane-wave cutoff in Hartree.

Why these settings (measured on the 2-core machine this was written on, shared with other jobs):

* Basis ``gth-szv-molopt-sr`` (CP2K's short-range single-zeta MOLOPT basis, Si 1s1p, GTH-PADE
  pseudopotential) instead of ``gth-szv``: its most diffuse exponent is 0.087 instead of 0.058
  bohr^-2, so H(R) and S(R) decay much faster. Keeping only the bonds within r_max changes the
  bands of a Si8 frame by (occupied / lowest empty, max) 15 / 40 meV at 8.0 Angstrom, 7 / 14 meV at
  8.5 and 0.8 / 3 meV at 9.0 with it, against 170 / 690, 30 / 130 and 18 / 42 meV (at 8, 9 and 10
  Angstrom) with ``gth-szv``. The model's cutoff is :data:`R_MAX` = 8.5 Angstrom (about 130
  neighbours per atom); ``cutoff_floor_meV`` in the summary is this truncation error on the test
  frame, the part of the band error no model with that cutoff can remove.
* FFT cutoff 20 Hartree (eqtb's default, 0.25 of PySCF's estimate, is 27 Ha here): the
  generator's self-check (DFT H(R)/S(R) bands against PySCF's own at off-mesh k-points) stays at
  0.02-0.03 meV, while 15 Ha reaches 1 meV. A Si8 frame (SCF on a 2x2x2 k-mesh, H(R) from a
  5x5x5 Fourier mesh, bands) takes 30-37 s with two frames running at a time (SCF ~17 s): the 8
  frames take 75-180 s depending on the load. LDA (Slater + VWN); no density matrices.
* The model: hidden irreps 16x0e+16x1o+8x2e, one layer (55k parameters), Adam at lr 0.005 with
  an exponential decay of 0.995 per epoch, (MAE + RMSE) / 2 loss; one torch thread
  (:func:`_torch_threads`). With two layers or lr 0.01 it learned more slowly in a few minutes;
  the environment dependence of the onsite blocks (the s and p levels of an atom shift by about
  8 eV per Angstrom of its mean bond length, +-0.2 eV across a frame) is what takes longest.
  Four minutes (~1200 epochs of 7 frames): occupied bands of the test frame 12 meV MAE (60 meV
  max), the 8 lowest empty bands 46 meV (160 meV max), H blocks 1.4 meV MAE.

``quick=True`` (tests): 5 + 1 frames of the 2-atom primitive cell on a 3x3x3 k-mesh,
:data:`QUICK_EPOCHS` epochs of training and a 2x2x2 supercell (64 atoms); about a minute in all.

Progress: each stage prints its line; within the long stages a terminal gets tqdm bars, and
output redirected to a file gets a plain line every ~20 s (training: the elapsed time, the epoch
and the latest MAEs), so that a log never stays silent for minutes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["DemoError", "demo_config", "demo_settings", "diamond_silicon", "evaluate_frame", "run_demo"]

#: diamond Si lattice constant, Angstrom
A_SI = 5.43
#: model cutoff, Angstrom (see the module docstring for the truncation errors)
R_MAX = 8.5
#: name of the marker file that identifies a demo output folder
MARKER = ".eqtb_demo"
#: training epochs of the quick demo (a fixed count, not a time budget: the same model on a busy
#: machine, only later)
QUICK_EPOCHS = 150
#: the demo's PySCF settings and sizes; lengths in Angstrom, ke_cutoff in Hartree; ``epochs``: a
#: fixed number of training epochs, or None for the time budget (``minutes``)
SETTINGS = {
    "default": {"cell": "cubic", "n_train": 7, "displacement": 0.05, "strain": 0.01, "kmesh": (2, 2, 2),
                "ke_cutoff": 20.0, "basis": "gth-szv-molopt-sr", "xc": "lda,vwn", "seed": 2024,
                "supercell": (4, 4, 4), "band_nk": 16, "epochs": None, "test_npoints": 80,
                "lr_decay": 0.995},
    "quick": {"cell": "primitive", "n_train": 5, "displacement": 0.05, "strain": 0.01, "kmesh": (3, 3, 3),
              "ke_cutoff": 20.0, "basis": "gth-szv-molopt-sr", "xc": "lda,vwn", "seed": 2024,
              "supercell": (2, 2, 2), "band_nk": 40, "epochs": QUICK_EPOCHS, "test_npoints": 60,
              "lr_decay": 0.985},
}
#: valence electrons of Si with the GTH pseudopotential
VALENCE = {"Si": 4}


class DemoError(ValueError):
    """A demo that cannot run (PySCF missing, output folder unusable); the message says what to do."""


# ------------------------------------------------------------------------------------ helpers
def demo_settings(quick: bool = False) -> dict:
    """A copy of the settings of the default or the quick demo (see :data:`SETTINGS`)."""
    return dict(SETTINGS["quick" if quick else "default"])


def diamond_silicon(cubic: bool = True, a: float = A_SI):
    """Ideal diamond Si (:class:`eqtb.structure.Structure`): the 8-atom cubic cell (``cubic``) or
    the 2-atom primitive fcc cell (ASE's setting), lattice constant ``a`` in Angstrom."""
    from eqtb.structure import Structure

    if cubic:
        cell = a * np.eye(3)
        fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        frac = np.vstack([fcc, fcc + 0.25])
    else:
        cell = 0.5 * a * np.array([[0.0, 1, 1], [1, 0, 1], [1, 1, 0]])
        frac = np.array([[0.0, 0, 0], [0.25, 0.25, 0.25]])
    return Structure(np.full(len(frac), 14), frac @ cell, cell, np.ones(3, dtype=bool),
                     source=f"diamond Si, {'cubic' if cubic else 'primitive'} cell, a = {a} A")


def _path_for(ideal_cell, cell, npoints: int):
    """The high-symmetry path of the ideal lattice (ASE's special points: simple cubic
    G-X-M-G-R-X|M-R, fcc G-X-W-K-G-L-U-W-L-K|U-X) at the same fractional k-points of ``cell``
    (a strained copy), so that every frame and the supercell share one path."""
    from eqtb.tb.kpath import KPath, ase_default_path

    ideal = KPath.from_ase_string(ase_default_path(ideal_cell), ideal_cell, npoints=npoints)
    return KPath.build(ideal.kpts, cell, ideal.breaks, ideal.corners, ideal.corner_labels,
                       description=ideal.description)


def _have_pyscf() -> bool:
    try:
        import pyscf  # noqa: F401
    except ImportError:
        return False
    return True


PYSCF_MISSING = ("the demo computes its training data with PySCF, which is not installed: "
                 "pip install pyscf (or, in a source checkout of eqtb, pip install -e \".[pyscf]\")")


def _prepare_out(out: Path) -> None:
    """Create ``out`` (or accept an empty folder or an earlier demo's) and check it is writable."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out}: exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DemoError(f"{out}: folder is not empty and holds no earlier demo run; choose a new or empty "
                        f"output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
        (out / MARKER).write_text("output folder of `eqtb demo` (eqtb.demo.run_demo)\n")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DemoError(f"{out}: cannot write the output folder ({reason}); choose a writable folder "
                        f"(eqtb demo -o FOLDER)") from None


def _announce(step: int, text: str) -> None:
    print(f"[{step}/4] {text}", flush=True)


def _bars(progress: bool | None) -> bool:
    """tqdm bars of the stages that draw their own (PySCF frames, prediction): only on a
    terminal unless ``progress`` says otherwise (tqdm writes to stderr)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)()) if progress is None else bool(progress)


@contextmanager
def _torch_threads(n: int):
    """Run torch on ``n`` threads inside the block. The demo trains and predicts on one thread:
    on a 2-core machine shared with other work, two OpenMP threads made an epoch 15x slower
    (3.1 s against 0.2 s, the threads wait for each other), while on the quiet machine they gained
    8 % (0.147 against 0.160 s per epoch of the 7 Si8 frames)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _link_frame(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of the frame folder ``src`` (hard links where possible)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)


def _rel(path: Path, out: Path) -> str:
    try:
        return str(path.relative_to(out))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------ stage 1
def _stage_data(out: Path, s: dict, workers: int, progress) -> dict:
    from eqtb.data.generate import FRAME_RECORD, generate

    ideal = diamond_silicon(cubic=s["cell"] == "cubic")
    formula = ideal.formula
    nframes = s["n_train"] + 1
    root = out / "data" / "pyscf"
    names = [f"{formula}.{n}" for n in range(nframes)]
    present = [n for n in names if (root / n / FRAME_RECORD).is_file()]
    what = (f"{s['n_train']} training frames + 1 test frame of {formula} ({s['cell']} cell, "
            f"displacements {s['displacement']} A, strain {s['strain']:g})")
    if len(present) == nframes and not _have_pyscf():
        _announce(1, f"data: using {nframes} frames cached from an earlier run in {root} "
                     f"(PySCF is not installed; not re-checked)")
        report = json.loads((root / "generate_report.json").read_text()) if (root / "generate_report.json").is_file() else {}
        computed = 0
    else:
        if not _have_pyscf():
            raise DemoError(PYSCF_MISSING)
        if len(present) == nframes:
            _announce(1, f"data: using {nframes} frames cached from an earlier run ({what}) in {root}")
        else:
            cached = f"; {len(present)} cached from an earlier run" if present else ""
            _announce(1, f"generating {what} with PySCF: {s['basis']}, LDA, {'x'.join(map(str, s['kmesh']))} "
                         f"k-points, {workers} worker{'s' * (workers != 1)}{cached}")
        from eqtb.tb.spectrum import progress_lines

        with progress_lines("      generating", None if progress is None else False):
            report = generate(ideal, root, nframes=nframes, displacement=s["displacement"], strain=s["strain"],
                              seed=s["seed"], basis=s["basis"], xc=s["xc"], kmesh=s["kmesh"],
                              ke_cutoff=s["ke_cutoff"], with_dm=False, band_density=4.0, workers=workers,
                              progress=_bars(progress), verbose=True)
        if report.get("failed"):
            raise DemoError(f"{root}: PySCF failed on {', '.join(report['failed'])} (see "
                            f"{root / 'generate_report.json'}); rerun the demo to retry them")
        computed = int(report.get("computed", 0))
    # the split: frames 0 .. n_train-1 train, the last frame tests
    for sub in ("train", "test"):
        shutil.rmtree(out / "data" / sub, ignore_errors=True)
    for n, name in enumerate(names):
        _link_frame(root / name, out / "data" / ("test" if n == s["n_train"] else "train") / name)
    records = {r.get("folder"): r for r in report.get("frames", [])}
    checks = [records[n].get("check_max_abs_meV") for n in names if n in records]
    checks = [c for c in checks if c is not None]
    return {"root": str(root), "formula": formula, "natoms": ideal.natoms, "frames_train": names[:-1],
            "frame_test": names[-1], "computed": computed, "cached": nframes - computed,
            "pyscf": {"basis": s["basis"], "pseudo": "gth-pade", "xc": s["xc"], "kmesh": list(s["kmesh"]),
                      "ke_cutoff_hartree": s["ke_cutoff"], "displacement_A": s["displacement"],
                      "strain": s["strain"], "seed": s["seed"]},
            "self_check_max_meV": max(checks) if checks else None,
            "test_frame_self_check_meV": records.get(names[-1], {}).get("check_max_abs_meV"),
            "generate_wall_s": report.get("wall_s")}


# ------------------------------------------------------------------------------------ stage 2
def avg_neighbors(structure, r_max: float = R_MAX) -> float:
    """Mean number of neighbours within ``r_max`` (Angstrom) per atom."""
    from eqtb.structure import build_graph

    g = build_graph(structure, r_max)
    return 2.0 * g.n_edges / structure.natoms


def demo_config(formula: str, seconds: float | None, r_max: float = R_MAX, avg_num_neighbors: float = 130.0,
                seed: int = 2024, lr_decay: float = 0.995, epochs: int | None = None) -> dict:
    """The DeePTB-style training configuration of the demo (``OUT/input.json``): SLEM with
    hidden irreps 16x0e+16x1o+8x2e, 1 layer, cutoff ``r_max`` (Angstrom), H and S of Si 1s1p,
    Adam with a learning rate decaying by ``lr_decay`` per epoch, data roots ``./data/train`` and
    ``./data/test`` relative to the file. Length of the training: ``epochs`` epochs when given
    (``num_epoch``, no time limit), else ``seconds`` of training (``train_options.max_time``, with
    ``num_epoch`` 5000 as a bound)."""
    if epochs is None and seconds is None:
        raise DemoError("demo_config needs seconds or epochs")
    length = ({"num_epoch": int(epochs)} if epochs is not None
              else {"num_epoch": 5000, "max_time": float(round(seconds, 1))})
    data = {"type": "DefaultDataset", "prefix": formula, "get_Hamiltonian": True, "get_overlap": True}
    return {
        "common_options": {"basis": {"Si": "1s1p"}, "device": "cpu", "dtype": "float32", "overlap": True,
                           "seed": int(seed)},
        "model_options": {
            "embedding": {"method": "slem", "r_max": {"Si": float(r_max)}, "irreps_hidden": "16x0e+16x1o+8x2e",
                          "n_layers": 1, "avg_num_neighbors": float(round(avg_num_neighbors, 1))},
            "prediction": {"method": "e3tb", "neurons": [32, 32]}},
        "train_options": {
            **length, "batch_size": 1, "optimizer": {"type": "Adam", "lr": 0.005},
            "lr_scheduler": {"type": "exp", "gamma": float(lr_decay)},
            "loss_options": {"train": {"method": "hamil_abs"}},
            "save_freq": 1000, "validation_freq": 5, "display_freq": 1, "max_ckpt": 1},
        "data_options": {"train": {"root": "./data/train", **data}, "validation": {"root": "./data/test", **data}},
    }


class _TrainBar(logging.Handler):
    """Turns the trainer's per-epoch log lines into progress with the latest MAEs: a bar over
    ``seconds`` (time budget) or ``epochs`` on a terminal, a line every ~20 s in a log
    (:func:`eqtb.tb.spectrum.progress_reporter`), nothing when ``progress`` is False."""

    def __init__(self, seconds: float | None, epochs: int | None, progress):
        super().__init__(logging.INFO)
        from eqtb.tb.spectrum import progress_reporter

        self.t0 = time.perf_counter()
        self.by_time = epochs is None
        fmt = "{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}" if self.by_time else "{l_bar}{bar}| {n}/{total} epochs{postfix}"
        self.bar = progress_reporter(round(seconds) if self.by_time else int(epochs), "      training", progress,
                                     unit="s" if self.by_time else "epochs", dynamic_ncols=True, bar_format=fmt)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.bar is None or not msg.startswith("epoch"):
            return
        parts = {}
        for key, pat in (("epoch", r"epoch\s+(\d+)"), ("onsite", r"onsite MAE ([\d.]+)"),
                         ("hopping", r"hopping MAE ([\d.]+)"), ("S", r"overlap MAE ([\d.]+)")):
            m = re.search(pat, msg)
            if m:
                parts[key] = m.group(1)
        post = f"epoch {parts.get('epoch', '?')}"
        if "onsite" in parts and "hopping" in parts:
            post += f", H MAE onsite {float(parts['onsite']):.1f} / hopping {float(parts['hopping']):.2f} meV"
        self.bar.set_postfix_str(post, refresh=False)
        if self.by_time:
            self.bar.update(max(0.0, min(self.bar.total, time.perf_counter() - self.t0) - self.bar.n))
        elif "epoch" in parts:
            self.bar.update(max(0, int(parts["epoch"]) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            if self.by_time and self.bar.n > 0.9 * self.bar.total:
                self.bar.n = self.bar.total
            self.bar.close()
        super().close()


def _stage_train(out: Path, data: dict, s: dict, minutes: float, progress, epochs: int | None = None) -> dict:
    from eqtb.config import load_config
    from eqtb.data.folder import TrajectoryFolder
    from eqtb.train.trainer import Trainer

    epochs = s["epochs"] if epochs is None else int(epochs)
    seconds = None if epochs is not None else max(minutes * 60.0, 1.0)
    first = TrajectoryFolder(out / "data" / "train" / data["frames_train"][0])
    if first.basis.spec != {"Si": "1s1p"}:
        raise DemoError(f"{first.path}: the cached data have the basis {first.basis.spec}, not Si 1s1p; "
                        f"delete {out / 'data'} and rerun")
    nn = avg_neighbors(diamond_silicon(cubic=True))
    cfg_dict = demo_config(data["formula"], seconds, R_MAX, nn, s["seed"], s["lr_decay"], epochs)
    cfg_path = out / "input.json"
    cfg_path.write_text(json.dumps(cfg_dict, indent=2) + "\n")
    run = out / "train"
    if run.exists():
        if not (run / "train_config.json").is_file() and any(run.iterdir()):
            raise DemoError(f"{run}: exists and is not an eqtb training run; move it away")
        shutil.rmtree(run)
    # the config's relative roots resolve against the working directory first (as DeePTB does):
    # if that would find other data, point the roots at this folder's data explicitly
    overrides = {}
    for which in ("train", "validation"):
        rel = cfg_dict["data_options"][which]["root"]
        if (Path.cwd() / rel).resolve() != (out / rel).resolve() and (Path.cwd() / rel).exists():
            overrides[f"data_options.{which}.root"] = str((out / rel).resolve())
    if epochs is not None:
        span = f"{epochs} epoch{'s' * (epochs != 1)}"
    else:
        span = f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.0f} s"
    _announce(2, f"training SLEM on {len(data['frames_train'])} frames for {span} on the CPU "
                 f"(config {cfg_path}, run {run})")
    cfg = load_config(cfg_path, overrides=overrides or None)
    trainer = Trainer(cfg, run, progress=False)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    log = logging.getLogger("eqtb.train")
    handler = _TrainBar(seconds, epochs, progress)
    log.addHandler(handler)
    try:
        result = trainer.run()
    finally:
        log.removeHandler(handler)
        handler.close()
    hist = [json.loads(line) for line in (run / "log" / "history.jsonl").read_text().splitlines() if line.strip()]
    last = hist[-1] if hist else {}
    vals = [h for h in hist if "val_loss" in h]
    figures = {"epochs": result["epochs"], "iterations": result["iterations"], "stop": result["stop"],
               "seconds": round(result["seconds"], 1), "parameters": n_params,
               "config": str(cfg_path), "run": str(run), "checkpoint": result["latest"],
               "checkpoint_note": ("the demo uses <run>/checkpoint/slem.latest.pth, the model at the end of "
                                   "training; slem.best.pth is the epoch with the lowest validation loss, "
                                   "here the loss on the test frame every 5 epochs, so it is not used"),
               "budget": {"epochs": epochs} if epochs is not None else {"seconds": seconds},
               "final_train_mae": {"hamiltonian_onsite_meV": 1e3 * last.get("train_onsite_mae", float("nan")),
                                   "hamiltonian_hopping_meV": 1e3 * last.get("train_hopping_mae", float("nan")),
                                   "overlap_1e-3": 1e3 * last.get("train_overlap_mae", float("nan"))},
               "final_validation_loss": vals[-1]["val_loss"] if vals else None}
    m = figures["final_train_mae"]
    print(f"      trained {result['epochs']} epochs ({result['iterations']} steps, {n_params} parameters) in "
          f"{result['seconds']:.0f} s; training MAE of H onsite {m['hamiltonian_onsite_meV']:.1f} meV, "
          f"hopping {m['hamiltonian_hopping_meV']:.2f} meV, S {m['overlap_1e-3']:.3f} x1e-3", flush=True)
    return figures


# ------------------------------------------------------------------------------------ stage 3
def _truncated(op, keep):
    from eqtb.operator import Operator

    return Operator(op.structure, op.basis, op.onsite, op.i[keep], op.j[keep], op.R[keep], op.offsite[keep])


def evaluate_frame(predictor, folder, ideal_cell, npoints: int = 80, n_empty: int | None = None) -> dict:
    """Errors of a model on one dataset frame folder (its first frame).

    ``predictor``: an :class:`eqtb.predict.Predictor`; ``ideal_cell`` (3, 3) Angstrom: the lattice
    whose high-symmetry path is used (at the same fractional k-points of the frame's cell);
    ``n_empty``: number of lowest empty bands compared (default: one per atom).

    Returns a dict with ``kpath``, ``model`` and ``reference`` band energies (nk, nband) in eV,
    absolute (reference: the bands of the frame's DFT H(R)/S(R)), ``n_occupied``, ``n_empty``,
    ``vbm`` / ``vbm_model`` (valence-band maxima on the path, eV), ``errors``: ``occupied`` and
    ``empty`` with ``mae_meV``/``max_meV`` of the band energies as predicted (no shift: the model
    predicts H in the DFT's own potential zero, so the DFT VBM is a common zero for both),
    ``gap_eV`` of both, ``vbm_offset_meV`` (model VBM minus DFT VBM) and ``vbm_aligned`` (the
    errors once each side is shifted to its own VBM); ``blocks`` (MAE of H in meV and S in 1e-3
    over the bonds within the model's cutoff) and ``cutoff_floor_meV`` (the band errors of the
    DFT H and S themselves truncated to those bonds)."""
    from eqtb.data.folder import TrajectoryFolder
    from eqtb.metrics import BlockErrors, band_errors
    from eqtb.bonds import match_bonds
    from eqtb.tb.spectrum import band_energies, band_gap, n_electrons, occupied_bands

    frame = TrajectoryFolder(folder).frame(0, density_matrix=False)
    st = frame.structure
    kpath = _path_for(np.asarray(ideal_cell), st.cell, npoints)
    pred = predictor.predict(st)
    H, S = pred.hamiltonian, pred.overlap
    ref = band_energies(frame.hamiltonian, frame.overlap, kpath.kpts)
    eig = band_energies(H, S, kpath.kpts)
    nocc = occupied_bands(n_electrons(st, VALENCE), ref.shape[1])
    nemp = min(st.natoms if n_empty is None else int(n_empty), ref.shape[1] - nocc)
    # absolute energies against a common zero (the DFT VBM): the model predicts H in the DFT's own
    # potential gauge, so no shift is applied; the VBM-aligned errors are reported as well
    edges_ref, edges_model = band_gap(ref, nocc), band_gap(eig, nocc)
    vbm_ref, vbm_model = edges_ref["vbm"], edges_model["vbm"]
    occ = band_errors(eig[:, :nocc], ref[:, :nocc])
    emp = band_errors(eig[:, nocc:nocc + nemp], ref[:, nocc:nocc + nemp])
    rel_ref, rel_eig = ref - vbm_ref, eig - vbm_model
    occ_rel = band_errors(rel_eig[:, :nocc], rel_ref[:, :nocc])
    emp_rel = band_errors(rel_eig[:, nocc:nocc + nemp], rel_ref[:, nocc:nocc + nemp])

    # block errors over the predicted bonds (those within the cutoff); DFT blocks absent -> 0
    be = BlockErrors(predictor.basis)
    types = predictor.basis.types_of(st.numbers)
    keep = None
    for q, target in (("hamiltonian", frame.hamiltonian), ("overlap", frame.overlap)):
        po = pred.operators[q]
        idx = match_bonds((target.i, target.j, target.R), (po.i, po.j, po.R), po.natoms)
        tgt = np.where((idx >= 0)[:, None, None], target.offsite[np.maximum(idx, 0)], 0.0)
        be.add(q, po.onsite, target.onsite, types)
        be.add(q, po.offsite, tgt, types[po.i], types[po.j])
        if q == "hamiltonian":
            keep = np.zeros(len(target.i), dtype=bool)
            keep[idx[idx >= 0]] = True
    res = be.result()
    floor = band_energies(_truncated(frame.hamiltonian, keep), _truncated(frame.overlap, keep), kpath.kpts)
    f_occ = band_errors(floor[:, :nocc], ref[:, :nocc])
    f_emp = band_errors(floor[:, nocc:nocc + nemp], ref[:, nocc:nocc + nemp])
    return {
        "kpath": kpath, "model": eig, "reference": ref, "n_occupied": nocc, "n_empty": nemp,
        "vbm": vbm_ref, "vbm_model": vbm_model, "natoms": st.natoms,
        "errors": {"occupied": {"n_bands": nocc, "mae_meV": occ["mae"], "max_meV": occ["max_abs"]},
                   "empty": {"n_bands": nemp, "mae_meV": emp["mae"], "max_meV": emp["max_abs"]},
                   "gap_eV": {"reference": edges_ref["gap"], "model": edges_model["gap"]},
                   "vbm_offset_meV": 1e3 * (vbm_model - vbm_ref),
                   "vbm_aligned": {"occupied": {"mae_meV": occ_rel["mae"], "max_meV": occ_rel["max_abs"]},
                                   "empty": {"mae_meV": emp_rel["mae"], "max_meV": emp_rel["max_abs"]}}},
        "blocks": {"hamiltonian_mae_meV": {k: res["hamiltonian"][k]["mae"] for k in ("onsite", "offsite", "all")},
                   "overlap_mae_1e-3": {k: res["overlap"][k]["mae"] for k in ("onsite", "offsite", "all")},
                   "bonds_in_cutoff": len(H.i), "dft_bonds": len(frame.hamiltonian.i)},
        "cutoff_floor_meV": {"occupied_max": f_occ["max_abs"], "empty_max": f_emp["max_abs"],
                             "occupied_mae": f_occ["mae"], "empty_mae": f_emp["mae"]},
    }


def _stage_test(out: Path, data: dict, train: dict, s: dict) -> dict:
    import eqtb
    from eqtb.plotting import plot_bands

    test = out / "data" / "test" / data["frame_test"]
    _announce(3, f"testing on {data['frame_test']}, a frame the model has not seen: bands and blocks "
                 f"against PySCF")
    model = eqtb.load(train["checkpoint"])
    ideal = diamond_silicon(cubic=s["cell"] == "cubic")
    ev = evaluate_frame(model, test, ideal.cell, s["test_npoints"])
    err = ev["errors"]
    nocc, nemp = ev["n_occupied"], ev["n_empty"]
    shown = nocc + nemp
    model_rel = ev["model"][:, :shown] - ev["vbm"]  # common zero: the DFT VBM
    ref_rel = ev["reference"][:, :shown] - ev["vbm"]
    top, bottom = float(max(model_rel.max(), ref_rel.max())), float(min(model_rel.min(), ref_rel.min()))
    label = (f"eqtb (SLEM, {train['seconds'] / 60:.1f} min of training)\n"
             f"occupied: MAE {err['occupied']['mae_meV']:.0f} meV, max {err['occupied']['max_meV']:.0f} meV\n"
             f"{nemp} lowest empty: MAE {err['empty']['mae_meV']:.0f} meV, max {err['empty']['max_meV']:.0f} meV")
    fig = plot_bands(ev["kpath"], model_rel, e_fermi=0.0, emin=bottom - 0.5, emax=top + 0.3 * (top - bottom),
                     path=out / "band_test.png",
                     title=f"{data['frame_test']}, a test frame not used in training (E$_F$ = DFT VBM)",
                     reference=ref_rel, label=label, reference_label=f"PySCF DFT (LDA, {s['basis']})")
    b = ev["blocks"]
    print(f"      bands: occupied MAE {err['occupied']['mae_meV']:.1f} meV (max {err['occupied']['max_meV']:.1f}), "
          f"{nemp} lowest empty MAE {err['empty']['mae_meV']:.1f} meV (max {err['empty']['max_meV']:.1f}); gap "
          f"{err['gap_eV']['model']:.3f} eV (DFT {err['gap_eV']['reference']:.3f} eV)", flush=True)
    print(f"      blocks: H MAE onsite {b['hamiltonian_mae_meV']['onsite']:.1f} meV, off-site "
          f"{b['hamiltonian_mae_meV']['offsite']:.2f} meV; S MAE {b['overlap_mae_1e-3']['all']:.3f} x1e-3", flush=True)
    return {"frame": data["frame_test"], "natoms": ev["natoms"], "kpath": ev["kpath"].description,
            "nk": len(ev["kpath"]), "energy_zero": "DFT valence-band maximum on the path (errors need no zero)",
            "vbm_eV": {"reference": ev["vbm"], "model": ev["vbm_model"]},
            "reference": "bands of the frame's DFT H(R), S(R) (= PySCF's bands, see self_check_meV)",
            "self_check_meV": data.get("test_frame_self_check_meV"), **err, "blocks": b,
            "cutoff_floor_meV": ev["cutoff_floor_meV"], "r_max_A": R_MAX, "checkpoint": train["checkpoint"],
            "figure": str(fig)}


# ------------------------------------------------------------------------------------ stage 4
def _stage_scale(out: Path, data: dict, train: dict, s: dict, workers: int, progress) -> dict:
    import eqtb
    from eqtb.data.generate import perturbed_structure, thread_env
    from eqtb.plotting import plot_bands
    from eqtb.tb.spectrum import band_energies, band_gap, n_electrons, occupied_bands

    reps = tuple(int(r) for r in s["supercell"])
    ideal = diamond_silicon(cubic=True).repeat(reps)
    sc = perturbed_structure(ideal, 1, displacement=s["displacement"], strain=0.0, seed=s["seed"] + 1)
    sc.source = f"{'x'.join(map(str, reps))} supercell of cubic Si, displacements {s['displacement']} A"
    _announce(4, f"scaling up: predicting a {'x'.join(map(str, reps))} supercell of the cubic cell "
                 f"({sc.natoms} atoms, random displacements {s['displacement']} A) and its bands")
    from eqtb.tb.spectrum import progress_lines

    model = eqtb.load(train["checkpoint"])
    t0 = time.perf_counter()
    with progress_lines(f"      predicting {sc.natoms} atoms", progress):
        pred = model.predict(sc, progress=_bars(progress))
    t_pred = time.perf_counter() - t0
    H, S = pred.hamiltonian, pred.overlap
    nocc = occupied_bands(n_electrons(sc, VALENCE), H.norb)
    print(f"      predicted H and S ({H.norb} orbitals, {pred.timings['n_bonds']} bonds) in {t_pred:.1f} s",
          flush=True)
    kpath = _path_for(ideal.cell, sc.cell, s["band_nk"])
    t1 = time.perf_counter()
    with thread_env(1):  # one BLAS thread per worker process (see band_energies)
        eigs = band_energies(H, S, kpath.kpts, progress=progress, workers=workers)  # a line every ~20 s in a log
    t_bands = time.perf_counter() - t1
    edges = band_gap(eigs, nocc)
    shown = min(H.norb, nocc + sc.natoms)
    fig = plot_bands(kpath, eigs[:, :shown], e_fermi=edges["vbm"], emin=-4.0, emax=4.0,
                     path=out / "band_supercell.png",
                     title=f"Si{sc.natoms} ({'x'.join(map(str, reps))} supercell, displaced atoms): H, S predicted "
                           f"in {t_pred:.1f} s, gap {edges['gap']:.2f} eV",
                     label="eqtb (SLEM)")
    print(f"      bands at {len(kpath)} k-points in {t_bands:.1f} s ({H.norb} x {H.norb} generalized eigenproblems, "
          f"{workers} process{'es' * (workers != 1)}); gap on the path {edges['gap']:.3f} eV", flush=True)
    return {"natoms": sc.natoms, "supercell": list(reps), "norb": int(H.norb), "n_bands": int(eigs.shape[1]),
            "n_occupied": nocc, "n_bonds": int(pred.timings["n_bonds"]), "predict_s": round(t_pred, 2),
            "predict_timings_s": {k: round(float(v), 3) for k, v in pred.timings.items()
                                  if k in ("graph", "model", "operators")},
            "nk": len(kpath), "kpath": kpath.description, "bands_s": round(t_bands, 2),
            "vbm_eV": edges["vbm"], "cbm_eV": edges["cbm"], "gap_eV": edges["gap"],
            "energy_zero": "predicted valence-band maximum on the path", "figure": str(fig)}


# ------------------------------------------------------------------------------------ driver
def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_demo(out: str | Path, minutes: float = 4.0, quick: bool = False, workers: int = 2,
             progress: bool | None = None, epochs: int | None = None) -> dict:
    """Run the demo (module docstring) into the folder ``out`` and return its summary.

    ``out``: output folder (created; it must be new, empty, or an earlier demo's, whose PySCF
    frames are then reused). ``minutes``: training time in minutes (the default demo's budget).
    ``quick``: the reduced version (2-atom cell, :data:`QUICK_EPOCHS` epochs of training whatever
    the load, 64-atom supercell; about a minute on 2 cores). ``epochs``: train this many epochs
    instead of a time budget (default: :data:`QUICK_EPOCHS` for ``quick``, ``minutes`` otherwise).
    ``workers``: PySCF frames computed in parallel, and processes solving the supercell's k-points.
    ``progress``: True draws tqdm bars, False shows none, None bars on a terminal and otherwise
    (output redirected) a line every ~20 s during the long stages
    (:func:`eqtb.tb.spectrum.progress_reporter`); the stage lines are printed in every case.

    The summary (also ``out/demo_summary.json``) holds ``timings_s`` per stage (data, train, test,
    scale, total; seconds), ``data``, ``training``, ``test`` (band errors in meV, block errors: H in
    meV, S in 1e-3), ``supercell`` and ``files``. Raises :class:`DemoError` for a missing PySCF
    or an unusable output folder.

    PySCF frames and the supercell bands run in spawned processes: a script calling this needs
    the usual ``if __name__ == "__main__":`` guard (``python -c`` and the ``eqtb`` command do not)."""
    t_start = time.perf_counter()
    try:
        minutes = float(minutes)
    except (TypeError, ValueError):
        raise DemoError(f"minutes must be a number, got {minutes!r}") from None
    if not minutes > 0:
        raise DemoError(f"minutes must be positive, got {minutes}")
    if int(workers) < 1:
        raise DemoError(f"workers must be at least 1, got {workers}")
    if epochs is not None and (isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1):
        raise DemoError(f"epochs must be a positive integer, got {epochs!r}")
    s = demo_settings(quick)
    out = Path(out).expanduser().absolute()
    _prepare_out(out)
    print(f"eqtb demo{' (quick)' if quick else ''}: learning the DFT Hamiltonian of silicon with an equivariant "
          f"network, from data to a {int(np.prod(s['supercell'])) * 8}-atom band structure; output in {out}",
          flush=True)
    timings = {}
    t = time.perf_counter()
    from eqtb.data.generate import GenerateError

    try:
        data = _stage_data(out, s, int(workers), progress)
    except GenerateError as exc:
        if "different settings" not in str(exc):
            raise
        raise DemoError(f"{exc}; or delete {out / 'data'} to compute the demo data afresh") from None
    timings["data"] = round(time.perf_counter() - t, 2)
    with _torch_threads(1):
        t = time.perf_counter()
        train = _stage_train(out, data, s, minutes, progress, epochs)
        timings["train"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        test = _stage_test(out, data, train, s)
        timings["test"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        scale = _stage_scale(out, data, train, s, int(workers), progress)
        timings["scale"] = round(time.perf_counter() - t, 2)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    import eqtb

    files = {"config": str(out / "input.json"), "checkpoint": train["checkpoint"],
             "band_test": test["figure"], "band_supercell": scale["figure"],
             "summary": str(out / "demo_summary.json"), "data": str(out / "data"),
             "training_log": str(out / "train" / "log" / "log.txt")}
    summary = {"eqtb_version": eqtb.__version__, "mode": "quick" if quick else "default", "out": str(out),
               "minutes": minutes if train["budget"].get("seconds") else None,
               "epochs": train["budget"].get("epochs"), "workers": int(workers), "timings_s": timings, "data": data,
               "training": train, "test": test, "supercell": scale, "files": files}
    _write_json(out / "demo_summary.json", summary)
    _print_summary(summary)
    return summary


def _print_summary(sm: dict) -> None:
    tm, te, sc, d = sm["timings_s"], sm["test"], sm["supercell"], sm["data"]
    out = Path(sm["out"])
    cached = f", {d['cached']} frames cached" if d["cached"] else ""
    lines = [
        (f"done in {tm['total'] / 60:.1f} min (data {tm['data']:.0f} s{cached}, training {tm['train']:.0f} s, "
        f"test {tm['test']:.0f} s, supercell {tm['scale']:.0f} s)"),
        (f"  test frame {te['frame']} (unseen): occupied bands MAE {te['occupied']['mae_meV']:.0f} meV "
        f"(max {te['occupied']['max_meV']:.0f}), {te['empty']['n_bands']} lowest empty MAE "
        f"{te['empty']['mae_meV']:.0f} meV (max {te['empty']['max_meV']:.0f}); H blocks MAE "
        f"{te['blocks']['hamiltonian_mae_meV']['all']:.1f} meV, S {te['blocks']['overlap_mae_1e-3']['all']:.2g} x1e-3"),
        (f"  supercell: {sc['natoms']} atoms predicted in {sc['predict_s']:.1f} s, bands at {sc['nk']} k-points "
        f"in {sc['bands_s']:.0f} s"),
        "files:",
    ]
    rows = [(sm["files"]["config"], "training configuration; `eqtb train input.json -o train` repeats the run"),
            (sm["files"]["checkpoint"], "the trained model (latest, not best): eqtb.load(path).predict(structure)"),
            (sm["files"]["band_test"], "model vs PySCF bands of the test frame"),
            (sm["files"]["band_supercell"], f"bands of the {sc['natoms']}-atom supercell"),
            (sm["files"]["summary"], "all figures and timings"),
            (sm["files"]["data"], "PySCF data: pyscf/ (generated), train/ and test/ (the split)")]
    for path, what in rows:
        lines.append(f"  {_rel(Path(path), out):<34} {what}")
    print("\n".join(lines), flush=True)

"""Every training input of DeePTB's Slater-Koster examples (``shared/data/deeptb_examples``: the
silicon tutorials v2.1 and v2.2, hBN, hBN_dftb, skf2nnsk, base_model, mos2) through ``eqtb train``
as a DeePTB user runs it: from the example's folder, the input unchanged but for ``"cuda"`` ->
``"cpu"``, started with ``-i`` from the checkpoint of the tutorial's previous step (DeePTB's shipped
one) where the tutorial chains its steps, for 2 epochs. The loss must be finite, and fall when the
input is a fit from scratch. DeePTB's ``dptb esk`` inputs (:data:`ESK_INPUTS`) run with ``eqtb
esk`` (eqtb's built-in Slater-Koster table). Then every band task of these folders runs (``eqtb
run``) with an eqtb checkpoint of that test (the DeePTB checkpoints: ``tests/test_deeptb_tasks.py``),
the MoS2 one with the model of ``eqtb esk``.

Small data: the MD trajectories of the silicon tutorials (``kpathmd25``, ``kpathmd100``, 10 frames
of 8 atoms and 354 k-points) are cut to their first 2 frames in the copy the test trains on.
``silicon/tutorial_v2.1/inputs_bak`` holds earlier versions of ``inputs/`` (other ``num_epoch``,
``save_freq``, push thresholds; no data ``r_max``): they run too.
"""

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from eqtb.cli import main
from eqtb.train.trainer import Trainer

V21 = "tutorial_v2.1/ref_ckpts/"
#: training input (relative to the examples) -> (working folder, DeePTB checkpoint the tutorial
#: starts it from (-i, relative to the working folder) or None for a fit from scratch)
TRAINED = {
    "silicon/tutorial_v2.1/inputs/2-1_input.json": ("silicon", None),
    "silicon/tutorial_v2.1/inputs/2-2-1_input.json": ("silicon", V21 + "nnsk/checkpoint/nnsk.iter500.pth"),
    "silicon/tutorial_v2.1/inputs/2-2-2_1_input.json": ("silicon", V21 + "nnsk_2/checkpoint/nnsk.ep500.pth"),
    "silicon/tutorial_v2.1/inputs/2-2-2_2_input.json":
        ("silicon", V21 + "nnsk_3/checkpoint/nnsk.iter_rs5.000_w0.300.pth"),
    "silicon/tutorial_v2.1/inputs/2-3_1_input.json": ("silicon", V21 + "nnsk_4/checkpoint/nnsk.iter_rs5.000_w0.100.pth"),
    "silicon/tutorial_v2.1/inputs/2-3_2_input.json": ("silicon", V21 + "nnsk_md25/checkpoint/nnsk.ep20.pth"),
    "silicon/tutorial_v2.1/inputs/2-4_input.json": ("silicon", V21 + "nnsk_md100/checkpoint/nnsk.ep20.pth"),
    "silicon/tutorial_v2.2/input_1.json": ("silicon/tutorial_v2.2", None),
    "silicon/tutorial_v2.2/input_2.json": ("silicon/tutorial_v2.2", "ref_ckpt/nnsk_tr1.pth"),
    "silicon/tutorial_v2.2/input_3.json": ("silicon/tutorial_v2.2", "ref_ckpt/nnsk.md100.pth"),
    "hBN/input_short.json": ("hBN", None),
    "hBN/input/input_first.json": ("hBN", None),
    "hBN/input/input_condband.json": ("hBN", "ref_ckpts/first/checkpoint/nnsk.ep500.pth"),
    "hBN/input/input_strain.json": ("hBN", "ref_ckpts/condband/checkpoint/nnsk.ep500.pth"),
    "hBN/input/input_push_rs.json": ("hBN", "ref_ckpts/strain/checkpoint/nnsk.ep500.pth"),
    "hBN/input/input_push_w.json": ("hBN", "ref_ckpts/push_rs/checkpoint/nnsk.iter_rs3.400_w0.300.pth"),
    "hBN/input/input_final.json": ("hBN", "ref_ckpts/push_w/checkpoint/nnsk.iter_rs3.400_w0.210.pth"),
    "hBN_dftb/input_nnsk_eigvals.json": ("hBN_dftb", None),
    "hBN_dftb/input_nnsk_skints.json": ("hBN_dftb", None),
    "hBN_dftb/input_dftb_env.json": ("hBN_dftb", None),  # dftbsk tables + se2 correction, from scratch
    "skf2nnsk/input.json": ("skf2nnsk", None),  # DeePTB's `dptb skf2nnsk` input
    # DeePTB's unit-test copy of it names its tables from the root of DeePTB's repository
    "skf2nnsk/input_test.json": (".", None),
}
TRAINED.update({k.replace("/inputs/", "/inputs_bak/"): v for k, v in TRAINED.items() if "/inputs/" in k})

#: DeePTB's `dptb esk` inputs (only common_options.basis) -> a structure of their elements: they
#: run with ``eqtb esk`` (eqtb's built-in table), and ``eqtb train`` names that route
ESK_INPUTS = {
    "base_model/confs/gaas.json": "base_model/structures/gaas.vasp",
    "base_model/confs/hbn_sp.json": "base_model/structures/hBN.vasp",
    "base_model/confs/hbn_spd.json": "base_model/structures/hBN.vasp",
    "base_model/confs/silicon.json": "base_model/structures/silicon.vasp",
    "mos2/conf.json": "mos2/mos2.vasp",
    "silicon/tutorial_v2.2/sk_in.json": "base_model/structures/silicon.vasp",
}
#: band task (relative to the examples) -> (working folder, the training input whose eqtb
#: checkpoint it runs with, -stu relative to the working folder or None)
BAND_TASKS = {
    "hBN/run/band.json": ("hBN", "hBN/input/input_first.json", None),
    "hBN_dftb/band.json": ("hBN_dftb", "hBN_dftb/input_nnsk_skints.json", None),
    "hBN_dftb/run/band.json": ("hBN_dftb", "hBN_dftb/input_dftb_env.json", None),
    "silicon/tutorial_v2.1/run/band.json": ("silicon", "silicon/tutorial_v2.1/inputs/2-2-1_input.json",
                                            "data/silicon.vasp"),
    "silicon/tutorial_v2.1/run/band_2.json": ("silicon", "silicon/tutorial_v2.1/inputs/2-4_input.json",
                                              "data/kpathmd100.0/struct.vasp"),
    "silicon/tutorial_v2.2/band.json": ("silicon/tutorial_v2.2", "silicon/tutorial_v2.2/input_1.json",
                                        "../data/silicon.vasp"),
    "silicon/tutorial_v2.2/band_2.json": ("silicon/tutorial_v2.2", "silicon/tutorial_v2.2/input_3.json",
                                          "../data/kpathmd100.0/struct.vasp"),
}
#: band tasks DeePTB runs with a `dptb esk` model -> (working folder, esk input, -stu)
ESK_BAND_TASKS = {"mos2/band.json": ("mos2", "conf.json", "mos2.vasp")}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(data_dir) -> Path:
    return data_dir / "deeptb_examples"


def _cut_trajectory(folder: Path, frames: int = 2) -> None:
    """Keep the first ``frames`` frames of a band dataset folder (xdat.traj, eigenvalues.npy, info.json)."""
    eig = np.load(folder / "eigenvalues.npy")
    if len(eig) <= frames:
        return
    np.save(folder / "eigenvalues.npy", eig[:frames])
    write(folder / "xdat.traj", read(folder / "xdat.traj", index=f":{frames}"))
    info = json.loads((folder / "info.json").read_text())
    info["nframes"] = frames
    (folder / "info.json").write_text(json.dumps(info))


def _layout(examples: Path, tmp: Path, name: str) -> tuple[Path, Path]:
    """The example folder of ``name`` copied into ``tmp`` (the MD data cut), the input with "cuda"
    -> "cpu"; returns (working folder, input relative to it)."""
    cwd, _ = TRAINED.get(name, ("", None))
    top = name.split("/")[0]
    root = tmp / "examples" if cwd == "." else tmp  # input_test.json: from DeePTB's repository root
    shutil.copytree(examples / top, root / top, ignore=shutil.ignore_patterns("processed_dataset_*", "ref_ckpt*",
                                                                              "nnsk*", "*.model", "*.png"))
    for folder in (root / top).glob("data/kpathmd*.0"):
        _cut_trajectory(folder)
    path = root / name
    path.write_text(path.read_text().replace('"cuda"', '"cpu"'))
    wd = tmp if cwd == "." else tmp / cwd
    return wd, path.relative_to(wd)


_RUNS: dict[str, tuple[Path, list[float]]] = {}


def train(name: str, examples: Path, tmp_factory, monkeypatch) -> tuple[Path, list[float]]:
    """``eqtb train <input> -o run --num-epoch 2 [-i <DeePTB checkpoint>]`` from the example's
    folder, once per module: (the run folder, the mean loss of each epoch)."""
    if name in _RUNS:
        return _RUNS[name]
    wd, rel = _layout(examples, tmp_factory.mktemp(name.replace("/", "_")), name)
    cwd, start = TRAINED[name]
    monkeypatch.chdir(wd)
    losses: list[tuple[int, float]] = []
    step = Trainer._step

    def record(self, samples):
        loss, info = step(self, samples)
        losses.append((self.epoch, loss))
        return loss, info

    monkeypatch.setattr(Trainer, "_step", record)
    args = ["train", str(rel), "-o", "run", "-q", "--num-epoch", "2"]
    if start is not None:
        args += ["-i", str(examples / cwd / start)]
    assert main(args) == 0
    monkeypatch.undo()
    if not losses:  # skf2nnsk: its own loop, a history line per step
        history = [json.loads(line) for line in (wd / "run/log/history.jsonl").read_text().splitlines()]
        losses = [(h["epoch"] - 1, h["train_loss"]) for h in history]
    epochs = [float(np.mean([v for e, v in losses if e == k])) for k in (0, 1)]
    _RUNS[name] = (wd / "run", epochs)
    return _RUNS[name]


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trains_unchanged(name, examples, tmp_path_factory, monkeypatch):
    """2 epochs of the input as DeePTB runs it: finite losses, falling for a fit from scratch; an
    eqtb checkpoint comes out."""
    run, epochs = train(name, examples, tmp_path_factory, monkeypatch)
    assert all(math.isfinite(v) for v in epochs), epochs
    if TRAINED[name][1] is None:
        assert epochs[1] < epochs[0], epochs
    assert any((run / "checkpoint").glob("*.latest.pth"))


@pytest.mark.parametrize("name", sorted(ESK_INPUTS))
def test_esk_input_gives_a_starting_model(name, examples, tmp_path, monkeypatch, capsys):
    """``eqtb esk`` on DeePTB's esk input, from its folder: an nnsk checkpoint of exactly the input's
    basis that ``eqtb.load`` reads and that gives finite bands on a structure of its elements;
    ``eqtb train`` on the same input says to run ``eqtb esk``."""
    import eqtb

    monkeypatch.chdir((examples / name).parent)
    assert main(["esk", Path(name).name, "-o", str(tmp_path / "esk"), "-q"]) == 0, capsys.readouterr().err
    model = eqtb.load(tmp_path / "esk" / "esk.pth")
    basis = json.loads((examples / name).read_text())["common_options"]["basis"]
    assert model.basis.spec == basis
    pred = model.predict(examples / ESK_INPUTS[name])
    _, bands = pred.bands(None, npoints=30)
    assert np.isfinite(bands).all() and bands.shape[1] == pred.hamiltonian.norb
    assert main(["train", Path(name).name, "-o", str(tmp_path / "run"), "-q"]) == 2
    assert "eqtb esk" in capsys.readouterr().err


def test_every_input_is_listed(examples):
    """Every JSON of these folders holding common_options is a training input listed above."""
    folders = ("silicon/tutorial_v2.1", "silicon/tutorial_v2.2", "hBN", "hBN_dftb", "skf2nnsk", "base_model", "mos2")
    found = {str(p.relative_to(examples)) for f in folders for p in (examples / f).rglob("*.json")
             if "common_options" in json.loads(p.read_text())}
    found -= {"silicon/tutorial_v2.2/sk_in.json"}  # a `dptb esk` input too, of the tutorial's first step
    assert found | {"silicon/tutorial_v2.2/sk_in.json"} == set(TRAINED) | set(ESK_INPUTS)


@pytest.mark.parametrize("task", sorted(BAND_TASKS))
def test_band_task_with_eqtb_checkpoint(task, examples, tmp_path_factory, monkeypatch, tmp_path, capsys):
    """``eqtb run`` of DeePTB's band task, from the example's folder, with the eqtb checkpoint of
    a training input of the same folder: bands at every k-point of the task's reference."""
    cwd, name, stu = BAND_TASKS[task]
    run, _ = train(name, examples, tmp_path_factory, monkeypatch)
    wd = run.parent
    # the band task from the same example folder as the run (its data, its slakos)
    top = TRAINED[name][0]
    shutil.copyfile(examples / task, wd / Path(task).relative_to(top))
    monkeypatch.chdir(wd)
    ckpt = next((run / "checkpoint").glob("*.latest.pth"))
    rel = Path(task).relative_to(cwd)
    args = ["run", str(rel), "-i", str(ckpt), "-o", str(tmp_path), "-q"] + (["-stu", stu] if stu else [])
    assert main(args) == 0, capsys.readouterr().err
    bands = np.load(tmp_path / "bands.npy")
    opts = json.loads((wd / rel).read_text())["task_options"]
    ref = np.load(wd / opts["ref_band"]) if (wd / opts["ref_band"]).exists() else None
    if ref is not None:
        assert len(bands) == ref.reshape(-1, ref.shape[-1]).shape[0]
    assert np.isfinite(bands).all()


def test_band_tasks_listed(examples):
    tasks = {str(p.relative_to(examples)) for f in ("silicon", "hBN", "hBN_dftb", "mos2", "base_model", "skf2nnsk")
             for p in (examples / f).rglob("*.json")
             if json.loads(p.read_text()).get("task_options", {}).get("task") == "band"}
    assert tasks == set(BAND_TASKS) | set(ESK_BAND_TASKS)


@pytest.mark.parametrize("task", sorted(ESK_BAND_TASKS))
def test_band_task_with_esk_model(task, examples, tmp_path, monkeypatch, capsys):
    """DeePTB's MoS2 band task as its example runs it (``dptb esk conf.json``, then ``dptb run
    band.json -i <model> -stu mos2.vasp``), with ``eqtb esk``: finite bands at every k-point of the
    task's path, one per orbital of the input's basis (Mo 4d5s5p, S 3s3p d*)."""
    cwd, conf, stu = ESK_BAND_TASKS[task]
    monkeypatch.chdir(examples / cwd)
    assert main(["esk", conf, "-o", str(tmp_path / "esk"), "-q"]) == 0
    rel = str(Path(task).relative_to(cwd))
    assert main(["run", rel, "-i", str(tmp_path / "esk" / "esk.pth"), "-stu", stu, "-o", str(tmp_path / "band"),
                 "-q"]) == 0, capsys.readouterr().err
    bands = np.load(tmp_path / "band" / "bands.npy")
    kpath = json.loads((examples / task).read_text())["task_options"]["kpath"]
    counts = Counter(read(examples / cwd / stu).get_chemical_symbols())
    assert bands.shape == (sum(k[3] for k in kpath[:-1]) + 1, 9 * counts["Mo"] + 9 * counts["S"])
    assert np.isfinite(bands).all()


def test_skf2nnsk_starts_from_deeptbs_fit_and_feeds_a_tutorial(examples, tmp_path, monkeypatch):
    """-i DeePTB's own skf2nnsk fit (best_df2sk.pth): eqtb's first step starts at DeePTB's fit
    (H integrals within 0.1 eV of the tables, against > 1 eV from scratch); the eqtb nnsk model it
    writes starts tutorial v2.2's first input (basis ["3s", "3p", "d*"] from the fit's s, p, d: the
    route of DeePTB's `dptb esk`), whose first band loss is then far below a start from scratch (28)."""
    fit = str(examples / "skf2nnsk/HBCNOSi.nnsk.model/best_df2sk.pth")
    wd, rel = _layout(examples, tmp_path, "skf2nnsk/input.json")
    monkeypatch.chdir(wd)
    assert main(["train", str(rel), "-o", "fit", "-q", "--num-epoch", "0", "-i", fit]) == 0
    assert main(["train", str(rel), "-o", "one", "-q", "--num-epoch", "1", "-i", fit]) == 0
    first = json.loads((wd / "one/log/history.jsonl").read_text().splitlines()[0])
    assert first["train_hopping_mae"] < 0.1
    start = wd / "fit/checkpoint/nnsk.latest.pth"
    wd, rel = _layout(examples, tmp_path / "si", "silicon/tutorial_v2.2/input_1.json")
    monkeypatch.chdir(wd)
    cfg = json.loads(rel.read_text())
    cfg["train_options"]["display_freq"] = 1
    rel.write_text(json.dumps(cfg))
    assert main(["train", str(rel), "-o", "esk", "-q", "--num-epoch", "1", "-i", str(start)]) == 0
    assert json.loads((wd / "esk/log/history.jsonl").read_text())["train_loss"] < 5.0

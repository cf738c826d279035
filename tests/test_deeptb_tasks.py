"""Every DeePTB band task in shared/data/deeptb_examples, as a DeePTB user runs it: file names in
the task (``structure``, ``ref_band``) are relative to the working folder (``dptb run`` opens them
from there), which for these examples is the example folder, not always the task's own folder
(``hBN/run/band.json`` names ``./data/struct.vasp``, that is ``hBN/data/struct.vasp``). eqtb resolves
them the same way (then beside the task file), and ``eqtb run`` runs them with DeePTB's own trained
checkpoints from there."""

import json
from pathlib import Path

import numpy as np
import pytest

from eqtb.cli import main, read_task, resolve_task_path

FILE_KEYS = ("ref_band", "override_overlap")


def _examples(data_dir) -> Path:
    return data_dir / "deeptb_examples"


def _band_tasks(root: Path) -> list[Path]:
    tasks = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        opts = data.get("task_options", data) if isinstance(data, dict) else None
        if isinstance(opts, dict) and opts.get("task") == "band":
            tasks.append(path)
    return tasks


def _file_names(path: Path) -> dict[str, str]:
    """The relative file names a task holds: key -> name."""
    data = json.loads(path.read_text())
    opts = data.get("task_options", data)
    names = {k: opts[k] for k in FILE_KEYS if isinstance(opts.get(k), str)}
    if isinstance(data.get("structure"), str):
        names["structure"] = data["structure"]
    return {k: v for k, v in names.items() if not Path(v).is_absolute()}


def _deeptb_working_folder(task: Path, root: Path, names: dict[str, str]) -> Path | None:
    """The folder a DeePTB user runs the task from: the nearest of the task's folder and its
    parents (inside the examples) where every file the task names exists."""
    for folder in [task.parent, *task.parent.parents]:
        if all((folder / n).exists() for n in names.values()):
            return folder
        if folder == root:
            return None
    return None


def test_every_band_task_resolves_as_deeptb(data_dir, monkeypatch):
    root = _examples(data_dir)
    tasks = _band_tasks(root)
    assert len(tasks) >= 8, [str(t.relative_to(root)) for t in tasks]
    beside_only = 0
    for task in tasks:
        opts, _ = read_task(task, ("band",))  # DeePTB's file, read unchanged
        names = _file_names(task)
        if not names:
            continue
        cwd = _deeptb_working_folder(task, root, names)
        assert cwd is not None, f"{task.relative_to(root)}: {names} exist nowhere above it"
        monkeypatch.chdir(cwd)
        rel = task.relative_to(cwd)
        for key, name in names.items():
            found = resolve_task_path(name, rel, key)
            assert found.is_file() and found.resolve() == (cwd / name).resolve(), (task, key)
        beside_only += cwd != task.parent
    assert beside_only >= 3  # hBN/run, hBN_dftb/run, silicon/tutorial_v2.1/run: not beside the task
    assert {str(t.relative_to(root)) for t in tasks} >= set(RUNS) | set(NOT_RUN)
    assert not {str(t.relative_to(root)) for t in tasks if "silicon" in str(t) or "hBN" in str(t)} - set(RUNS)


#: task (relative to the examples) -> (working folder, DeePTB checkpoint, -stu or None), relative
#: to the working folder, as DeePTB's tutorials run them
RUNS = {
    "hBN/run/band.json": ("hBN", "ref_ckpts/first/checkpoint/nnsk.ep500.pth", None),
    "hBN_dftb/band.json": ("hBN_dftb", "nnsk/checkpoint/nnsk.ep500.pth", None),
    "hBN_dftb/run/band.json": ("hBN_dftb", "nnsk/checkpoint/nnsk.ep500.pth", None),
    "silicon/tutorial_v2.1/run/band.json": ("silicon", "tutorial_v2.1/ref_ckpts/nnsk/checkpoint/nnsk.iter500.pth",
                                            "data/silicon.vasp"),
    "silicon/tutorial_v2.1/run/band_2.json": ("silicon", "tutorial_v2.1/ref_ckpts/nnsk/checkpoint/nnsk.iter500.pth",
                                              "data/silicon.vasp"),
    "silicon/tutorial_v2.2/band.json": ("silicon/tutorial_v2.2", "ref_ckpt/nnsk_tr1.pth", "../data/silicon.vasp"),
    "silicon/tutorial_v2.2/band_2.json": ("silicon/tutorial_v2.2", "ref_ckpt/mix.md100.pth",
                                          "../data/kpathmd100.0/struct.vasp"),
}
#: band tasks of the examples not in RUNS, and why (tests/test_deeptb_examples.py runs the others
#: with eqtb's own checkpoints too)
NOT_RUN = {"mos2/band.json": "DeePTB runs it with a model of `dptb esk` (its built-in base models), which "
                             "ships no checkpoint; tests/test_deeptb_examples.py runs it with eqtb esk's model"}


@pytest.mark.parametrize("task", sorted(RUNS))
def test_eqtb_run_deeptb_band_task(data_dir, task, tmp_path, monkeypatch, capsys):
    """``eqtb run`` on DeePTB's band task from the example folder: it finds the structure and
    ref_band, uses the task's E_fermi (as DeePTB) with the nel_atom level beside it, and prints
    its warnings under ``eqtb run``."""
    root = _examples(data_dir)
    cwd, ckpt, stu = RUNS[task]
    monkeypatch.chdir(root / cwd)
    rel = (root / task).relative_to(root / cwd)
    args = ["run", str(rel), "-i", ckpt, "-o", str(tmp_path)] + (["-stu", stu] if stu else [])
    rc = main(args)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert all(line.startswith("eqtb run: warning: ") for line in cap.err.splitlines()), cap.err
    opts, _ = read_task(rel, ("band",))
    s = json.loads((tmp_path / "band_summary.json").read_text())
    assert s["fermi_level"] == pytest.approx(opts["E_fermi"]) and s["fermi_level_source"] == "task E_fermi"
    assert s["fermi_level_nel_atom"] is not None and s["n_electrons"] is not None
    assert f"from nel_atom: {s['fermi_level_nel_atom']:.4f} eV" in cap.out
    bands = np.load(tmp_path / "bands.npy")
    assert len(bands) == len(np.load(Path(opts["ref_band"])).reshape(-1, np.load(Path(opts["ref_band"])).shape[-1]))
    assert (tmp_path / "band.png").is_file()

"""``eqtb run TASK.json -i MODEL -stu STRUCTURE``: band (DeePTB's band.json unchanged), dos, pdos,
fermi and export with a tiny SLEM trained in the test on the real Si64 frame; results checked
against the same quantities computed directly from the model's prediction."""

import json
import re
import shutil

import numpy as np
import pytest

from eqtb.cli import main


@pytest.fixture(scope="module")
def setup(data_dir, tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    src = data_dir / "si64_abacus"
    shutil.copyfile(src / "Si64.vasp", tmp / "Si64.vasp")
    return {"tmp": tmp, "model": tiny_model, "poscar": tmp / "Si64.vasp", "band": src / "band.json"}


def _run(args, capsys):
    rc = main(["run", *map(str, args)])
    return rc, capsys.readouterr()


def _task(path, **opts):
    path.write_text(json.dumps({"task_options": opts}))
    return path


def test_band_task_unchanged(setup, capsys, tmp_path):
    """DeePTB's band.json (with "device": "cuda" at the top) runs as is; the bands are the
    eigenvalues of the predicted H(k), S(k)."""
    import eqtb
    from eqtb.tb.spectrum import band_energies

    rc, cap = _run([setup["band"], "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path], capsys)
    assert rc == 0, cap.err
    # warnings: one line each, under the command that was typed, never repeated
    lines = cap.err.splitlines()
    assert all(line.startswith("eqtb run: warning: ") for line in lines) and len(set(lines)) == len(lines)
    import torch

    assert sum("CUDA is not available" in line for line in lines) == (0 if torch.cuda.is_available() else 1)
    for f in ("band.png", "bands.npy", "kpoints.npy", "band_summary.json"):
        assert (tmp_path / f).is_file()
    bands, kpts = np.load(tmp_path / "bands.npy"), np.load(tmp_path / "kpoints.npy")
    assert bands.shape == (len(kpts), 256)
    pred = eqtb.load(setup["model"]).predict(setup["poscar"])
    ref = band_energies(pred.hamiltonian, pred.overlap, kpts[::25])
    np.testing.assert_allclose(bands[::25], ref, atol=1e-6)
    summary = json.loads((tmp_path / "band_summary.json").read_text())
    assert summary["natoms"] == 64 and summary["model"] == str(setup["model"])
    assert summary["n_electrons"] == 256 and summary["fermi_level"] == 0.0  # the task's E_fermi, as DeePTB
    assert summary["fermi_level_nel_atom"] is not None
    assert re.search(r"Fermi level 0\.0000 eV \(task E_fermi\); from nel_atom: -?\d+\.\d{4} eV", cap.out)


def test_quiet_run_prints_nothing(setup, capsys, tmp_path):
    """-q: no prediction bar, no lines; the results are written."""
    task = _task(tmp_path / "dos.json", task="dos", mesh_grid=[1, 1, 1], sigma=0.1, nel_atom={"Si": 4})
    rc, cap = _run([task, "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path / "o", "-q"], capsys)
    assert rc == 0 and (cap.out, cap.err) == ("", "")
    assert (tmp_path / "o" / "dos.json").is_file()


def test_structure_relative_to_the_working_folder(setup, capsys, tmp_path, monkeypatch):
    """The task's 'structure' is found as DeePTB finds it, in the working folder, and else beside
    the task file; a missing one names both places."""
    (tmp_path / "work" / "data").mkdir(parents=True)
    (tmp_path / "tasks").mkdir()
    shutil.copyfile(setup["poscar"], tmp_path / "work" / "data" / "Si64.vasp")
    task = tmp_path / "tasks" / "fermi.json"
    task.write_text(json.dumps({"structure": "./data/Si64.vasp",
                                "task_options": {"task": "fermi", "nel_atom": {"Si": 4}, "mesh_grid": [1, 1, 1]}}))
    monkeypatch.chdir(tmp_path / "work")
    rc, cap = _run([task, "-i", setup["model"], "-o", tmp_path / "f", "-q"], capsys)
    assert rc == 0, cap.err
    monkeypatch.chdir(tmp_path)
    rc, cap = _run([task, "-i", setup["model"], "-o", tmp_path / "g", "-q"], capsys)
    assert rc == 2 and "structure file './data/Si64.vasp' does not exist" in cap.err
    assert str(tmp_path) in cap.err and str(tmp_path / "tasks") in cap.err
    (tmp_path / "tasks" / "data").mkdir()
    shutil.copyfile(setup["poscar"], tmp_path / "tasks" / "data" / "Si64.vasp")  # beside the task: found too
    rc, cap = _run([task, "-i", setup["model"], "-o", tmp_path / "h", "-q"], capsys)
    assert rc == 0, cap.err


def test_dos_pdos_fermi(setup, capsys, tmp_path):
    dos_task = _task(tmp_path / "dos.json", task="dos", mesh_grid=[2, 2, 2], sigma=0.1, nel_atom={"Si": 4})
    rc, cap = _run([dos_task, "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path / "dos"], capsys)
    assert rc == 0, cap.err
    cols = np.load(tmp_path / "dos" / "dos.npy")
    e, total = cols[:, 0], cols[:, 1]
    assert abs(np.trapezoid(total, e) - 512) < 1.0  # 256 orbitals x 2 spins, all states in the window
    pdos_task = _task(tmp_path / "pdos.json", task="pdos", mesh_grid=[1, 1, 1], sigma=0.1)
    rc, cap = _run([pdos_task, "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path / "pdos"], capsys)
    assert rc == 0, cap.err
    info = json.loads((tmp_path / "pdos" / "dos.json").read_text())
    assert info["columns"][2:] == ["Si 1s", "Si 1p"]
    cols = np.load(tmp_path / "pdos" / "dos.npy")
    np.testing.assert_allclose(cols[:, 2:].sum(1), cols[:, 1], atol=1e-8)
    fermi_task = _task(tmp_path / "fermi.json", task="fermi", nel_atom={"Si": 4}, mesh_grid=[2, 2, 2])
    rc, cap = _run([fermi_task, "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path / "fermi"], capsys)
    assert rc == 0, cap.err
    fermi = json.loads((tmp_path / "fermi" / "fermi.json").read_text())
    assert fermi["n_electrons"] == 256 and abs(fermi["count"] - 256) < 1e-6
    dos_info = json.loads((tmp_path / "dos" / "dos.json").read_text())
    assert abs(fermi["mu"] - dos_info["fermi_level"]) < 1e-6  # same mesh, same rule


def test_export_task(setup, capsys, tmp_path):
    from eqtb.data.folder import TrajectoryFolder

    task = _task(tmp_path / "export.json", task="export", format=["dataset", "npz"])
    rc, cap = _run([task, "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path / "ex"], capsys)
    assert rc == 0, cap.err
    frame = TrajectoryFolder(tmp_path / "ex" / "dataset").frame(0)
    import eqtb

    pred = eqtb.load(setup["model"]).predict(setup["poscar"])
    k = [[0.1, 0.2, 0.3]]
    np.testing.assert_allclose(frame.hamiltonian.dense(k), pred.hk(k), atol=1e-6)
    assert (tmp_path / "ex" / "npz" / "hamiltonian.npz").is_file()


def test_export_task_wannier90_orthogonalized(setup, capsys, tmp_path):
    """The task's orthogonalize / mesh keys reach the Wannier90 export (the model has an overlap)."""
    from eqtb.data.export_tb import read_hr_dat

    task = _task(tmp_path / "w90.json", task="export", format="wannier90", orthogonalize=True, mesh=[2, 2, 2])
    rc, cap = _run([task, "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path / "w90"], capsys)
    assert rc == 0, cap.err
    info = json.loads((tmp_path / "w90" / "export.json").read_text())
    assert info["orthogonalized"] and info["orthogonalization"]["mesh"] == [2, 2, 2]
    assert read_hr_dat(tmp_path / "w90" / "wannier90_hr.dat") is not None


@pytest.mark.parametrize("case, match", [
    ("no structure", "no structure"),
    ("bad task", "cannot be run|unknown"),
    ("missing model", "not found"),
    ("unknown key", "did you mean|unknown key"),
])
def test_errors(setup, capsys, tmp_path, case, match):
    args = [setup["band"], "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path]
    if case == "no structure":
        args = args[:3] + args[5:]
    elif case == "bad task":
        args[0] = _task(tmp_path / "t.json", task="train")
    elif case == "missing model":
        args[2] = tmp_path / "nope.pth"
    else:
        args[0] = _task(tmp_path / "t.json", task="dos", mesh_grd=[1, 1, 1])
    rc, cap = _run(args, capsys)
    assert rc == 2
    lines = cap.err.strip().splitlines()
    assert "Traceback" not in cap.err and lines[-1].startswith("eqtb run: error: ")
    assert all("warning" in line for line in lines[:-1])
    assert re.search(match, lines[-1]), cap.err


def test_sparse_method(setup, capsys, tmp_path):
    """--method sparse (what structures above 6000 orbitals get): KPM DOS and Fermi level, band
    edges by shift-invert Lanczos; checked against dense diagonalization of the same H, S."""
    import scipy.linalg as sla

    import eqtb

    rc, cap = _run([setup["band"], "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path,
                    "--method", "sparse", "--nbands", "12"], capsys)
    assert rc == 0, cap.err
    summary = json.loads((tmp_path / "band_summary.json").read_text())
    pred = eqtb.load(setup["model"]).predict(setup["poscar"])
    exact = sla.eigh(pred.hk([[0, 0, 0]])[0], pred.sk([[0, 0, 0]])[0], eigvals_only=True)
    edges = summary["band_edges"]
    sigma = edges["sigma"]
    nearest = np.sort(exact[np.argsort(np.abs(exact - sigma))[:12]])
    np.testing.assert_allclose(edges["eigenvalues"], nearest, atol=1e-7)
    if edges["bracketed"]:
        assert edges["vbm"] == pytest.approx(exact[exact < sigma].max(), abs=1e-7)
        assert edges["cbm"] == pytest.approx(exact[exact >= sigma].min(), abs=1e-7)
    cols = np.load(tmp_path / "dos.npy")
    assert abs(np.trapezoid(cols[:, 1], cols[:, 0]) - 512) < 5  # KPM DOS integrates to 2 x 256 states
    kpm = summary["kpm"]
    assert kpm["n_moments"] == 256 and kpm["resolution"] < 0.5
    assert kpm["dtype"] == "float64"  # dtype="auto": 256 orbitals are far below the float32 threshold
    # the Fermi-level rule of the dense routes: band.json's "E_fermi": 0.0 is the reference (DeePTB),
    # the KPM level from nel_atom is reported beside it and centres the search for the band edges
    assert summary["fermi_level"] == 0.0 and summary["fermi_level_source"] == "task E_fermi"
    assert summary["fermi_level_nel_atom_source"].startswith("nel_atom, ") and summary["n_electrons"] == 256
    assert sigma == pytest.approx(summary["fermi_level_nel_atom"], abs=1e-6)
    assert "task E_fermi" not in cap.err
    # --nel-atom on the command line: the computed level is the reference, with the warning
    rc, cap = _run([setup["band"], "-i", setup["model"], "-stu", setup["poscar"], "-o", tmp_path / "n",
                    "--method", "sparse", "--nbands", "12", "--nel-atom", '{"Si": 4}'], capsys)
    assert rc == 0, cap.err
    again = json.loads((tmp_path / "n" / "band_summary.json").read_text())
    warning = "task E_fermi = 0.0 ignored: the Fermi level is computed from nel_atom"
    assert f"eqtb run: warning: {warning}" in cap.err and warning in again["warnings"]
    assert again["fermi_level"] == pytest.approx(summary["fermi_level_nel_atom"], abs=1e-6)

"""Molecules (no periodic direction) everywhere a periodic frame works: ``eqtb generate`` (PySCF
RKS) -> dataset folder as DeePTB holds a molecule (pbc false, no cell.dat) -> ``eqtb band``
(orbital energies at Gamma, HOMO/LUMO) equal to PySCF's ``mo_energy``, ``eqtb dos`` (broadened
levels), and ``eqtb run`` band/dos/fermi/export with a model trained in the test."""

import json

import numpy as np
import pytest

pytest.importorskip("pyscf")

from ase import Atoms  # noqa: E402
from ase.io import write  # noqa: E402

from eqtb.cli import main  # noqa: E402
from eqtb.data.folder import TrajectoryFolder  # noqa: E402
from eqtb.data.pyscf_engine import HARTREE_EV  # noqa: E402

WATER_NEL = {"O": 8, "H": 1}  # STO-3G is all-electron: 10 electrons
POSITIONS = [[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]]


def _water():
    return Atoms("OH2", positions=POSITIONS)


def _cli(args, capsys):
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr()


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    """``eqtb generate h2o.xyz`` (2 frames, STO-3G, LDA) through the command line."""
    tmp = tmp_path_factory.mktemp("water")
    write(tmp / "h2o.xyz", _water())
    rc = main(["generate", str(tmp / "h2o.xyz"), "-o", str(tmp / "data"), "-n", "2", "--basis", "sto-3g", "-q"])
    assert rc == 0
    return tmp


@pytest.fixture(scope="module")
def pyscf_water():
    """PySCF's own RKS of the same molecule: mo_energy in eV."""
    from pyscf import dft, gto

    mol = gto.M(atom=[["O", POSITIONS[0]], ["H", POSITIONS[1]], ["H", POSITIONS[2]]], basis="sto-3g",
                unit="Angstrom", verbose=0)
    mf = dft.RKS(mol)
    mf.xc, mf.conv_tol = "lda,vwn", 1e-11
    mf.kernel()
    assert mf.converged
    return mf.mo_energy * HARTREE_EV


def test_generate_writes_a_deeptb_molecule(water):
    folder = water / "data" / "H2O.0"
    assert not (folder / "cell.dat").exists()  # DeePTB's format: pbc false and no cell
    assert json.loads((folder / "info.json").read_text())["pbc"] is False
    st = TrajectoryFolder(folder).frame(0).structure
    assert not st.pbc.any() and np.abs(st.cell).max() == 0
    np.testing.assert_allclose(st.positions, POSITIONS, atol=1e-12)


def test_band_orbital_energies_equal_pyscf(water, pyscf_water, tmp_path, capsys):
    """eqtb band on the generated frame: one k-point (Gamma), the eigenvalues of the dataset's H
    and S equal PySCF's mo_energy to 1e-6 eV; HOMO/LUMO/gap from the electron count."""
    out = tmp_path / "band"
    rc, cap = _cli(["band", water / "data" / "H2O.0", "--nel-atom", json.dumps(WATER_NEL), "-o", out], capsys)
    assert rc == 0, cap.err
    assert cap.err == ""
    bands = np.load(out / "bands.npy")
    assert bands.shape == (1, 7) and np.load(out / "kpoints.npy").tolist() == [[0.0, 0.0, 0.0]]
    np.testing.assert_allclose(bands[0], pyscf_water, rtol=0, atol=1e-6)
    s = json.loads((out / "band_summary.json").read_text())
    assert s["molecule"] is True and s["n_kpoints"] == 1 and s["n_electrons"] == 10
    assert s["n_occupied_orbitals"] == 5
    assert s["homo"] == pytest.approx(pyscf_water[4], abs=1e-5) and s["lumo"] == pytest.approx(pyscf_water[5], abs=1e-5)
    assert s["homo_lumo_gap"] == pytest.approx(pyscf_water[5] - pyscf_water[4], abs=1e-5)
    assert s["gap"] == s["homo_lumo_gap"] and s["gap_type"] == "HOMO-LUMO"
    # the level from the electron count: the middle of the HOMO-LUMO gap (DeePTB's estimate too)
    assert s["fermi_level"] == pytest.approx(0.5 * (pyscf_water[4] + pyscf_water[5]), abs=1e-5)
    assert s["fermi_level_source"] == "nel_atom, orbital energies"
    assert s["orbital_energies"] == pytest.approx(pyscf_water.tolist(), abs=1e-5)
    assert (out / "band.png").read_bytes()[:4] == b"\x89PNG"
    d = np.load(out / "bandstructure.npy", allow_pickle=True).item()
    assert d["eigenvalues"].shape == (1, 7)
    assert "HOMO" in cap.out and "HOMO-LUMO gap" in cap.out and "orbital energies" in cap.out
    # without an electron count: the levels, and how to get HOMO/LUMO
    rc, cap = _cli(["band", water / "data" / "H2O.0", "-o", tmp_path / "plain"], capsys)
    assert rc == 0 and "--nel-atom" in cap.out
    assert json.loads((tmp_path / "plain" / "band_summary.json").read_text())["homo"] is None


def test_band_task_kpath_and_options(water, tmp_path, capsys):
    """A DeePTB band task (k-path, nel_atom, E_fermi) on a molecule: Gamma only, the k-path not
    used (one warning, under the command's name); --kpath is an error; a ref_band is drawn."""
    folder = water / "data" / "H2O.0"
    np.save(tmp_path / "ref.npy", np.load(folder / "eigenvalues.npy"))
    task = tmp_path / "band.json"
    task.write_text(json.dumps({"task_options": {
        "task": "band", "kline_type": "abacus", "kpath": [[0, 0, 0, 5], [0.5, 0, 0, 1]], "klabels": ["G", "X"],
        "nel_atom": WATER_NEL, "E_fermi": -5.0, "ref_band": "ref.npy", "emin": -30, "emax": 15}}))
    rc, cap = _cli(["band", folder, task, "-o", tmp_path / "b"], capsys)
    assert rc == 0, cap.err
    lines = cap.err.strip().splitlines()
    assert lines == ["eqtb band: warning: the task's k-path is not used: H2O is a molecule (no periodic "
                     "direction), its orbital energies are computed at Gamma"]
    s = json.loads((tmp_path / "b" / "band_summary.json").read_text())
    assert s["fermi_level"] == -5.0 and s["fermi_level_source"] == "task E_fermi"  # DeePTB: the given level
    assert s["fermi_level_nel_atom"] == pytest.approx(0.5 * (s["homo"] + s["lumo"]), abs=1e-5)
    rc, cap = _cli(["band", folder, "--kpath", "GX", "-o", tmp_path / "c"], capsys)
    assert rc == 2 and "molecule" in cap.err and "--kpath" in cap.err


def test_dos_broadened_levels(water, tmp_path, capsys):
    out = tmp_path / "dos"
    rc, cap = _cli(["dos", water / "data" / "H2O.0", "--nel-atom", json.dumps(WATER_NEL), "--sigma", "0.1",
                    "--pdos", "element", "--mesh", "2", "2", "2", "-o", out], capsys)
    assert rc == 0, cap.err
    assert "k-mesh 2x2x2 not used" in cap.err and cap.err.startswith("eqtb dos: warning:")
    head = json.loads((out / "dos.json").read_text())
    cols = np.load(out / "dos.npy")
    assert head["molecule"] is True and head["mesh"] == [1, 1, 1] and head["n_kpoints_irreducible"] == 1
    assert head["columns"] == ["energy", "total", "O", "H"]
    assert head["units"]["dos"].startswith("states / eV / molecule")
    # the window holds the O 1s level (-500 eV): enough points for 4 per sigma, all 14 states
    assert len(cols) > 2001 and np.diff(cols[:, 0]).max() <= 0.1 / 4 + 1e-12
    assert head["integral"] == pytest.approx(14.0, abs=1e-3)
    np.testing.assert_allclose(cols[:, 2] + cols[:, 3], cols[:, 1], atol=1e-9 * cols[:, 1].max())
    levels = np.load(water / "data" / "H2O.0" / "eigenvalues.npy")[0, 0]
    peak = cols[np.argmax(cols[:, 1]), 0]
    assert np.min(np.abs(levels - peak)) < 0.05
    assert head["homo_lumo_gap"] == pytest.approx(levels[5] - levels[4], abs=1e-5)


@pytest.fixture(scope="module")
def water_model(water):
    """A tiny SLEM trained for 2 epochs on the water frames."""
    from eqtb.config import load_config
    from eqtb.train.trainer import Trainer

    cfg = {"common_options": {"basis": {"O": "2s1p", "H": "1s"}, "device": "cpu", "overlap": True, "seed": 1},
           "model_options": {"embedding": {"method": "slem", "r_max": {"O": 3.0, "H": 3.0},
                                           "irreps_hidden": "4x0e+4x1o+2x2e", "n_layers": 1, "avg_num_neighbors": 2},
                             "prediction": {"method": "e3tb", "neurons": [8]}},
           "train_options": {"num_epoch": 2, "batch_size": 1, "optimizer": {"lr": 0.01, "type": "Adam"},
                             "loss_options": {"train": {"method": "hamil_abs"}}, "save_freq": 10,
                             "validation_freq": 1, "display_freq": 1},
           "data_options": {"train": {"root": str(water / "data"), "prefix": "H2O", "get_Hamiltonian": True,
                                      "get_overlap": True}}}
    (water / "train.json").write_text(json.dumps(cfg))
    Trainer(load_config(water / "train.json"), water / "run", progress=False).run()
    return water / "run" / "checkpoint" / "slem.latest.pth"


def test_run_tasks_on_a_molecule(water, water_model, tmp_path, capsys, monkeypatch):
    """eqtb run with an .xyz molecule named in the task (relative to the working folder): band,
    dos, fermi and export give the orbital energies of the predicted H, S; -q prints nothing."""
    import scipy.linalg as sla

    import eqtb

    monkeypatch.chdir(water)
    pred = eqtb.load(water_model).predict("h2o.xyz")
    exact = sla.eigh(pred.hk([[0, 0, 0]])[0].real, pred.sk([[0, 0, 0]])[0].real, eigvals_only=True)
    band = tmp_path / "band.json"
    band.write_text(json.dumps({"structure": "h2o.xyz", "task_options": {"task": "band", "nel_atom": WATER_NEL}}))
    rc, cap = _cli(["run", band, "-i", water_model, "-o", tmp_path / "b", "-q"], capsys)
    assert rc == 0 and cap.out == "" and cap.err == ""
    s = json.loads((tmp_path / "b" / "band_summary.json").read_text())
    np.testing.assert_allclose(np.load(tmp_path / "b" / "bands.npy")[0], exact, atol=1e-6)
    assert s["molecule"] is True and s["homo"] == pytest.approx(exact[4], abs=1e-5)
    dos = tmp_path / "dos.json"
    dos.write_text(json.dumps({"task_options": {"task": "dos", "sigma": 0.1, "nel_atom": WATER_NEL}}))
    rc, cap = _cli(["run", dos, "-i", water_model, "-stu", "h2o.xyz", "-o", tmp_path / "d", "-q"], capsys)
    assert rc == 0, cap.err
    assert json.loads((tmp_path / "d" / "dos.json").read_text())["integral"] == pytest.approx(14.0, abs=1e-3)
    fermi = tmp_path / "fermi.json"
    fermi.write_text(json.dumps({"task_options": {"task": "fermi", "nel_atom": WATER_NEL}}))
    rc, cap = _cli(["run", fermi, "-i", water_model, "-stu", "h2o.xyz", "-o", tmp_path / "f"], capsys)
    assert rc == 0, cap.err
    f = json.loads((tmp_path / "f" / "fermi.json").read_text())
    assert f["molecule"] is True and f["mu"] == pytest.approx(0.5 * (exact[4] + exact[5]), abs=1e-6)
    assert "HOMO-LUMO gap" in cap.out
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"task_options": {"task": "export", "format": ["dataset", "npz"]}}))
    rc, cap = _cli(["run", export, "-i", water_model, "-stu", "h2o.xyz", "-o", tmp_path / "e", "-q"], capsys)
    assert rc == 0, cap.err
    assert not (tmp_path / "e" / "dataset" / "cell.dat").exists()
    back = TrajectoryFolder(tmp_path / "e" / "dataset").frame(0)
    assert not back.structure.pbc.any()
    rc, cap = _cli(["band", tmp_path / "e" / "dataset", "-o", tmp_path / "bb", "-q"], capsys)
    assert rc == 0, cap.err
    np.testing.assert_allclose(np.load(tmp_path / "bb" / "bands.npy")[0], exact, atol=1e-6)


def test_cells_of_non_periodic_structures():
    """k-space helpers accept a cell that is zero along non-periodic directions: a molecule gets
    the identity (mesh 1x1x1), a slab (ase.Atoms) without its vacuum vector gets the unit normal."""
    from eqtb.structure import Structure
    from eqtb.tb.kpath import KPath, complete_cell, is_periodic, mesh_for_spacing

    mol = Structure(np.array([8, 1, 1]), np.array(POSITIONS), np.zeros((3, 3)), np.zeros(3, dtype=bool))
    assert not is_periodic(mol) and mesh_for_spacing(mol) == (1, 1, 1)
    np.testing.assert_array_equal(complete_cell(np.zeros((3, 3)), False), np.eye(3))
    a = 2.5
    cell = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 0]])
    slab = Atoms("BN", positions=[[0, 0, 0], [a / 2, a / (2 * np.sqrt(3)), 0]], cell=cell, pbc=[True, True, False])
    full = complete_cell(cell, slab.pbc)
    np.testing.assert_allclose(full[:2], cell[:2])
    np.testing.assert_allclose(full[2], [0, 0, 1], atol=1e-12)
    assert is_periodic(slab) and mesh_for_spacing(slab, 0.2)[2] == 1
    path = KPath.from_ase_string("GMKG", slab, npoints=30, pbc=slab.pbc)
    assert np.abs(path.kpts[:, 2]).max() == 0 and path.x[-1] > 0
    np.testing.assert_array_equal(complete_cell(np.diag([1.0, 2.0, 3.0]), [True, False, False]), np.diag([1.0, 2.0, 3.0]))


def test_molecular_levels():
    from eqtb.tb.spectrum import SpectrumError, molecular_levels

    lv = molecular_levels([3.0, -1.0, 0.5, -2.0], 4)
    assert lv == {"homo": -1.0, "lumo": 0.5, "gap": 1.5, "n_occupied": 2, "homo_index": 1, "lumo_index": 2}
    assert molecular_levels([0.0, 1.0], 3)["homo"] is None  # open shell: no closed-shell HOMO
    full = molecular_levels([0.0, 1.0], 4)
    assert full["homo"] == 1.0 and full["lumo"] is None and full["gap"] is None
    assert molecular_levels([0.0], None)["homo"] is None
    with pytest.raises(SpectrumError, match="do not fit"):
        molecular_levels([0.0], 4)

"""eqtb generate: PySCF DFT data for a molecule and a periodic cell, written, read back, checked.

Kept small for CI: H2O in STO-3G (2 frames, under a second each); 2-atom Si, GTH-SZV, LDA, 2x2x2
SCF k-mesh on a coarse 15^3 FFT grid (test-only ``pyscf_mesh``; production uses a converged grid),
7^3 Fourier mesh, 2 frames.
"""

import json

import numpy as np
import pytest

pytest.importorskip("pyscf")

from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402

from eqtb.data import generate as gen  # noqa: E402
from eqtb.data.folder import TrajectoryFolder, read_dataset  # noqa: E402
from eqtb.data.pyscf_engine import HARTREE_EV  # noqa: E402
from eqtb.structure import Structure  # noqa: E402
from eqtb.tb.spectrum import band_energies  # noqa: E402

COARSE = (15, 15, 15)


def _water():
    return Atoms("OH2", positions=[[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])


def _hermitian_error(op, kpts):
    m = op.dense(kpts)
    return float(np.abs(m - np.conj(np.swapaxes(m, 1, 2))).max())


def _electrons(D, S):
    sb = S.to_blocks(both_triangles=True)
    return sum(float(np.sum(d * sb[k])) for k, d in D.to_blocks(both_triangles=True).items() if k in sb)


# ------------------------------------------------------------------------------------ molecule
@pytest.fixture(scope="module")
def water(tmp_path_factory):
    out = tmp_path_factory.mktemp("h2o")
    report = gen.generate(_water(), out, nframes=2, basis="sto-3g", displacement=0.05, seed=3,
                          progress=False, verbose=False)
    return out, report


def test_molecule_dataset(water):
    out, report = water
    assert [r["status"] for r in report["frames"]] == ["done", "done"]
    assert all(r["converged"] for r in report["frames"])
    folders = read_dataset(out, "H2O")
    assert [f.path.name for f in folders] == ["H2O.0", "H2O.1"]
    saved = json.loads((out / gen.REPORT).read_text())
    assert saved["frames"][1]["folder"] == "H2O.1" and saved["failed"] == []
    p0 = folders[0].structure(0).positions
    p1 = folders[1].structure(0).positions
    np.testing.assert_allclose(p0, _water().positions, atol=1e-12)  # frame 0: unperturbed
    assert np.abs(p1 - p0).max() > 1e-3  # frame 1 displaced


def test_molecule_labels(water):
    from pyscf import dft, gto

    out, _ = water
    for folder in read_dataset(out, "H2O"):
        fr = folder.frame(0)
        H, S, D = fr.hamiltonian, fr.overlap, fr.density_matrix
        g = np.zeros((1, 3))
        for op in (H, S, D):
            assert _hermitian_error(op, g) < 1e-12
        # Tr(D S) = number of electrons (all-electron STO-3G: 10)
        assert abs(_electrons(D, S) - 10) < 1e-8
        assert abs(np.trace(D.dense(g)[0] @ S.dense(g)[0]).real - 10) < 1e-8
        # eigenvalues of the stored H, S = an independent PySCF run's mo_energy, to SCF tolerance
        st = fr.structure
        mol = gto.M(atom=[[s, p] for s, p in zip(st.symbols, st.positions)], basis="sto-3g", verbose=0)
        mf = dft.RKS(mol)
        mf.xc = "lda,vwn"
        mf.conv_tol = 1e-10
        mf.kernel()
        e = band_energies(H, S, g)[0]
        assert np.abs(e - mf.mo_energy * HARTREE_EV).max() < 1e-4  # eV
        np.testing.assert_allclose(fr.eigenvalues[0], e, atol=1e-8)


# ------------------------------------------------------------------------------------ periodic
@pytest.fixture(scope="module")
def silicon(tmp_path_factory):
    out = tmp_path_factory.mktemp("si")
    report = gen.generate(bulk("Si", "diamond", 5.431), out, nframes=2, displacement=0.05, strain=0.01, seed=1,
                          kmesh=(2, 2, 2), pyscf_mesh=COARSE, progress=False, verbose=False)
    return out, report


def test_periodic_self_check(silicon):
    _, report = silicon
    assert [r["status"] for r in report["frames"]] == ["done", "done"]
    for r in report["frames"]:
        assert r["converged"] and r["check_nk"] >= 4
        assert r["check_max_abs_meV"] < 1.0
    assert report["settings"]["kmesh_fourier"] == [7, 7, 7]
    assert report["check_failed"] == [] and report["max_check_meV"] < 1.0


def test_periodic_frames_differ(silicon):
    out, _ = silicon
    s0, s1 = (TrajectoryFolder(out / f"Si2.{n}").structure(0) for n in (0, 1))
    np.testing.assert_allclose(s0.cell, bulk("Si", "diamond", 5.431).cell, atol=1e-12)
    assert np.abs(s1.cell - s0.cell).max() > 1e-3  # strained
    assert np.abs(s1.positions - s0.positions).max() > 1e-3  # displaced


def test_periodic_labels(silicon):
    out, report = silicon
    kq = gen.check_kpoints(3, [(2, 2, 2), (7, 7, 7)], seed=5)
    for n in (0, 1):
        folder = TrajectoryFolder(out / f"Si2.{n}")
        fr = folder.frame(0)
        H, S, D = fr.hamiltonian, fr.overlap, fr.density_matrix
        assert folder.basis.spec == {"Si": "1s1p"}
        for op in (H, S, D):
            assert _hermitian_error(op, kq) < 1e-10
        # electrons per cell from D(R) and S(R): sum_R Tr D(R) S(-R) = 8 (GTH: 4 valence e per Si)
        assert abs(_electrons(D, S) - 8) < 1e-5
        assert report["frames"][n]["n_electrons_blocks"] == pytest.approx(8, abs=1e-5)
        # band-path eigenvalues: PySCF's, and the stored blocks reproduce them (on or off mesh)
        assert fr.kpoints.shape[0] == fr.eigenvalues.shape[0] >= 10
        assert fr.eigenvalues.shape[1] == 8
        err = np.abs(band_energies(H, S, fr.kpoints) - fr.eigenvalues).max()
        assert err < 1e-3


def test_resume_skips_complete_frames(silicon, monkeypatch):
    out, first = silicon

    def no_scf(*a, **k):
        raise AssertionError("SCF called for a complete frame")

    monkeypatch.setattr(gen, "_run_scf", no_scf)
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = out / f".Si2.1.partial-{dead}"  # left by a killed run
    stale.mkdir()
    again = gen.generate(bulk("Si", "diamond", 5.431), out, nframes=2, displacement=0.05, strain=0.01, seed=1,
                         kmesh=(2, 2, 2), pyscf_mesh=COARSE, progress=False, verbose=False)
    assert [r["status"] for r in again["frames"]] == ["skipped", "skipped"]
    assert again["computed"] == 0
    assert not stale.exists()
    assert again["frames"][1]["check_max_abs_meV"] == first["frames"][1]["check_max_abs_meV"]
    # different settings on the same folder: an error, not a silent mix
    with pytest.raises(gen.GenerateError, match="different settings"):
        gen.generate(bulk("Si", "diamond", 5.431), out, nframes=2, displacement=0.1, strain=0.01, seed=1,
                     kmesh=(2, 2, 2), pyscf_mesh=COARSE, progress=False, verbose=False)


def test_perturbation_is_deterministic():
    base = Structure.from_ase(bulk("Si", "diamond", 5.431))
    a = gen.perturbed_structure(base, 3, 0.05, 0.02, seed=7)
    b = gen.perturbed_structure(base, 3, 0.05, 0.02, seed=7)
    c = gen.perturbed_structure(base, 4, 0.05, 0.02, seed=7)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert np.abs(a.positions - c.positions).max() > 1e-4
    eps = np.linalg.solve(base.cell, a.cell) - np.eye(3)
    np.testing.assert_allclose(eps, eps.T, atol=1e-12)
    assert 0 < np.abs(eps).max() <= 0.02
    assert gen.default_fourier_mesh(base) == (7, 7, 7)
    assert gen.default_fourier_mesh(base.repeat((2, 2, 2))) == (5, 5, 5)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.filterwarnings("ignore:Basis may be available")
def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        gen.generate(tmp_path / "missing.vasp", tmp_path / "o1", progress=False, verbose=False)
    with pytest.raises(gen.GenerateError, match="nonsense"):
        gen.generate(_water(), tmp_path / "o2", basis="nonsense-basis", progress=False, verbose=False)
    with pytest.raises(gen.GenerateError, match="odd"):
        gen.generate(Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]]), tmp_path / "o3", basis="sto-3g",
                     progress=False, verbose=False)
    with pytest.raises(gen.GenerateError, match="strain"):
        gen.generate(_water(), tmp_path / "o4", basis="sto-3g", strain=0.01, progress=False, verbose=False)
    slab = bulk("Si", "diamond", 5.431)
    slab.pbc = [True, True, False]
    with pytest.raises(gen.GenerateError, match="partially periodic"):
        gen.generate(slab, tmp_path / "o5", progress=False, verbose=False)
    foreign = tmp_path / "o6" / "H2O.0"
    foreign.mkdir(parents=True)
    (foreign / "positions.dat").write_text("0 0 0\n")
    with pytest.raises(gen.GenerateError, match="not written by eqtb generate"):
        gen.generate(_water(), tmp_path / "o6", basis="sto-3g", nframes=1, progress=False, verbose=False)


# ------------------------------------------------------------------------------------ CLI
def test_cli_generate_molecule(tmp_path, capsys):
    from ase.io import write

    from eqtb.cli import main

    write(tmp_path / "h2o.xyz", _water())
    out = tmp_path / "data"
    args = [str(tmp_path / "h2o.xyz"), "-o", str(out), "-n", "2", "--basis", "sto-3g", "--seed", "2", "-q"]
    assert main(["generate", *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["H2O.0", "H2O.1", gen.REPORT]
    assert main(["generate", *args[:-1]]) == 0  # rerun: both frames skipped
    assert capsys.readouterr().out.count("skipped (already complete") == 2
    rep = json.loads((out / gen.REPORT).read_text())
    assert rep["skipped"] == 2 and rep["computed"] == 0


def test_cli_generate_bad_input(tmp_path, capsys, monkeypatch):
    import sys

    from ase.io import write

    from eqtb.cli import main

    assert main(["generate", str(tmp_path / "nope.vasp"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.vasp" in err and "does not exist" in err
    write(tmp_path / "h2o.xyz", _water())
    assert main(["generate", str(tmp_path / "h2o.xyz"), "-o", str(tmp_path / "o"), "--basis", "no-such-basis"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-basis" in err
    monkeypatch.setitem(sys.modules, "pyscf", None)  # import pyscf now raises ImportError
    assert main(["generate", str(tmp_path / "h2o.xyz"), "-o", str(tmp_path / "o")]) == 2
    assert "pip install 'eqtb[pyscf]'" in capsys.readouterr().err


def _occupations(fr):
    """Natural occupations of a molecular frame: the eigenvalues of D S (both spins), ascending."""
    g = np.zeros((1, 3))
    D, S = fr.density_matrix.dense(g)[0], fr.overlap.dense(g)[0]
    return np.sort(np.linalg.eigvals(D @ S).real)


def test_cli_generate_smearing(tmp_path, capsys):
    """--smearing: Fermi-Dirac occupations in the written D (PySCF's own, electron count kept), the width
    recorded, a rerun with integer occupations refused. Stretched H2 (1.8 Angstrom): gap 0.14 Ha."""
    from ase.io import write
    from pyscf import dft, gto
    from pyscf.scf.addons import smearing

    from eqtb.cli import main

    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1.8]])
    write(tmp_path / "h2.xyz", h2)
    common = [str(tmp_path / "h2.xyz"), "-n", "1", "--basis", "sto-3g", "-q"]
    assert main(["generate", *common, "-o", str(tmp_path / "int")]) == 0
    assert main(["generate", *common, "-o", str(tmp_path / "fd"), "--smearing", "0.05"]) == 0
    rep = json.loads((tmp_path / "fd" / gen.REPORT).read_text())
    assert rep["settings"]["smearing"] == 0.05
    assert json.loads((tmp_path / "int" / gen.REPORT).read_text())["settings"]["smearing"] is None
    assert rep["frames"][0]["n_electrons"] == 2 and rep["frames"][0]["n_electrons_blocks"] == pytest.approx(2, abs=1e-8)
    fd, integer = (TrajectoryFolder(tmp_path / name / "H2.0").frame(0) for name in ("fd", "int"))
    np.testing.assert_allclose(_occupations(integer), [0, 2], atol=1e-8)
    mf = smearing(dft.RKS(gto.M(atom=[["H", (0, 0, 0)], ["H", (0, 0, 1.8)]], basis="sto-3g", verbose=0)),
                  sigma=0.05, method="fermi")
    mf.xc = "lda,vwn"
    mf.kernel()
    assert 0.1 < mf.mo_occ.min()  # the width does act here
    np.testing.assert_allclose(_occupations(fd), np.sort(mf.mo_occ), atol=1e-6)
    # the band energies differ too (the density does)
    assert np.abs(fd.eigenvalues - integer.eigenvalues).max() > 1e-3
    capsys.readouterr()
    assert main(["generate", *common, "-o", str(tmp_path / "fd")]) == 2  # integer occupations: not these frames
    assert "different settings (smearing)" in capsys.readouterr().err
    assert main(["generate", *common, "-o", str(tmp_path / "fd"), "--smearing", "0.05"]) == 0  # same: reused
    assert json.loads((tmp_path / "fd" / gen.REPORT).read_text())["skipped"] == 1

"""Electronic structure along a trajectory: the 10 MD frames of Si8 in
silicon_bands/kpathmd25.0/xdat.traj with the tiny SLEM trained on Si64 (eqtb.trajectory,
eqtb.tb.trajectory, ``eqtb run`` over a trajectory); per-frame results checked against the same
quantities computed directly from the model's prediction, statistics against numpy, resuming,
worker processes, failed frames; the sparse route of a frame against dense eigenvalues."""

import json
import shutil

import numpy as np
import pytest

from eqtb.cli import main
from eqtb.tb.trajectory import aggregate, frame_spectrum
from eqtb.trajectory import FRAME_FILE, TrajectoryError, count_frames, read_frames, run_trajectory

MESH = (2, 2, 2)
WINDOW = (-14.0, 8.0, 441)
NEL = {"Si": 4}


@pytest.fixture(scope="module")
def traj(data_dir):
    return data_dir / "silicon_bands" / "kpathmd25.0" / "xdat.traj"


@pytest.fixture(scope="module")
def serial(traj, tiny_model, tmp_path_factory, one_thread):
    """All 10 frames, one process."""
    out = tmp_path_factory.mktemp("traj_serial")
    frames = read_frames(traj, timestep=0.5)
    res = run_trajectory(tiny_model, frames, out, nel_atom=NEL, mesh=MESH, window=WINDOW)
    return {"frames": frames, "res": res, "out": out}


def test_read_frames(traj, tmp_path):
    from ase.io import read, write

    frames = read_frames(traj)
    assert len(frames) == count_frames(traj) == 10 and all(f.structure.natoms == 8 for f in frames)
    assert [f.index for f in frames] == list(range(10)) and frames[0].time is None
    sel = read_frames(traj, "1:9:3", timestep=2.0)
    assert [f.index for f in sel] == [1, 4, 7] and [f.time for f in sel] == [2.0, 8.0, 14.0]
    assert np.allclose(sel[1].structure.positions, read(traj, index=4).positions)
    assert [f.index for f in read_frames(traj, [9, -10])] == [9, 0]
    # a folder of structure files, in natural order of the names (frame_10 after frame_9)
    for i in (2, 9, 10):
        write(tmp_path / f"frame_{i}.vasp", read(traj, index=i % 10), format="vasp")
    (tmp_path / "notes.txt").write_text("not a frame")
    fold = read_frames(tmp_path)
    assert len(fold) == count_frames(tmp_path) == 3
    assert np.allclose(fold[1].structure.positions, read(traj, index=9).positions, atol=1e-6)
    assert fold[2].structure.source.endswith("frame_10.vasp")
    with pytest.raises(TrajectoryError, match="slice"):
        read_frames(traj, "a:b")
    with pytest.raises(TrajectoryError, match="out of range"):
        read_frames(traj, [12])


def test_frames_match_direct_computation(serial, tiny_model):
    """Every frame's gap, edges, Fermi level and DOS equal those computed directly from the
    model's H and S on the same mesh (midgap level, Gaussian DOS on the window around it)."""
    import eqtb
    from eqtb.tb.spectrum import ElectronicStructure, band_gap, dos

    res = serial["res"]
    assert len(res.frames) == 10 and res.computed == list(range(10)) and not res.skipped
    model = eqtb.load(tiny_model)
    for k in (0, 6):
        pred = model.predict(serial["frames"][k].structure)
        es = ElectronicStructure(pred.hamiltonian, pred.overlap)
        _, w, e = es.mesh_eigenvalues(MESH)
        g = band_gap(e, 16)
        f = res.frames[k]
        assert f["index"] == k and f["time"] == 0.5 * k and f["method"] == "dense" and f["mesh"] == list(MESH)
        assert f["n_electrons"] == 32 and f["norb"] == 32
        for key in ("vbm", "cbm", "gap"):
            assert f[key] == pytest.approx(g[key], abs=1e-6)
        fermi = es.fermi(NEL, MESH)
        expect = fermi.midgap if fermi.insulating else fermi.mu
        assert f["fermi_level"] == pytest.approx(expect, abs=1e-6)
        assert f["insulating"] == (g["gap"] > 0) and f["fermi_level_source"] == "nel_atom, 2x2x2 mesh"
        grid = f["fermi_level"] + np.linspace(*WINDOW[:2], WINDOW[2])
        np.testing.assert_allclose(f["dos"], dos(e, w, grid, 0.05), atol=1e-6)
        assert f["dos_reference"] == f["fermi_level"] and f["dos_broadening"] == 0.05


def test_statistics_and_files(serial):
    res, out = serial["res"], serial["out"]
    s = res.summary
    gaps = np.array([f["gap"] for f in res.frames])
    assert s["n_frames"] == s["n_ok"] == s["gap"]["n"] == 10 and s["failed"] == []
    assert s["gap"]["mean"] == pytest.approx(gaps.mean()) and s["gap"]["std"] == pytest.approx(gaps.std(ddof=1))
    assert s["gap"]["min"] == gaps.min() and s["gap"]["max"] == gaps.max()
    assert s["gap"]["median"] == pytest.approx(np.median(gaps))
    assert sum(s["gap"]["histogram"]["counts"]) == 10
    assert s["vbm"]["mean"] == pytest.approx(np.mean([f["vbm"] for f in res.frames]))
    D = np.array([f["dos"] for f in res.frames])
    np.testing.assert_allclose(s["dos_mean"], D.mean(0))
    np.testing.assert_allclose(s["dos_std"], D.std(0, ddof=1))
    assert s["insulating_fraction"] == np.mean([f["insulating"] for f in res.frames])
    # the frames differ (MD displacements): a spread, but a small one
    assert 0 < s["gap"]["std"] < 0.1
    # files
    doc = json.loads((out / "trajectory.json").read_text())
    assert doc["n_frames"] == 10 and doc["frames_computed"] == 10 and len(doc["frames"]) == 10
    assert doc["statistics"]["gap"]["mean"] == pytest.approx(s["gap"]["mean"])
    assert doc["frames"][3]["gap"] == res.frames[3]["gap"] and doc["frames"][3]["time"] == 1.5
    cols = np.load(out / "trajectory_dos.npy")
    assert cols.shape == (WINDOW[2], 3 + 10)
    np.testing.assert_allclose(cols[:, 0], np.linspace(*WINDOW[:2], WINDOW[2]))
    np.testing.assert_allclose(cols[:, 3 + 4], res.frames[4]["dos"])
    assert (out / "trajectory.png").stat().st_size > 10_000
    assert sorted(p.name for p in (out / "frames").iterdir()) == [FRAME_FILE.format(i) for i in range(10)]
    # the averaged DOS integrates to the states in the window (Gaussian tails aside)
    e = cols[:, 0]
    assert np.trapezoid(cols[:, 1], e) == pytest.approx(np.mean([np.trapezoid(d, e) for d in D]))


def test_resume(serial, tiny_model, tmp_path):
    """A rerun reuses every frame done with the same settings and atoms; a missing, failed or
    stale frame file (other settings, other atoms) is computed again."""
    out = tmp_path / "run"
    shutil.copytree(serial["out"], out)
    frames = serial["frames"]
    kw = {"nel_atom": NEL, "mesh": MESH, "window": WINDOW, "plot": False}
    again = run_trajectory(tiny_model, frames, out, **kw)
    assert again.computed == [] and again.skipped == list(range(10))
    assert [f["gap"] for f in again.frames] == [f["gap"] for f in serial["res"].frames]
    # frame 2 removed, frame 5 marked failed, frame 7's atoms moved: those three are redone
    (out / "frames" / FRAME_FILE.format(2)).unlink()
    p5 = out / "frames" / FRAME_FILE.format(5)
    rec = json.loads(p5.read_text())
    p5.write_text(json.dumps({**rec, "error": "RuntimeError: killed"}))
    moved = list(frames)
    st = moved[7].structure
    pos = st.positions.copy()
    pos[3] += [0.05, -0.03, 0.02]
    moved[7] = type(moved[7])(7, type(st)(st.numbers, pos, st.cell, st.pbc, st.source), None)
    part = run_trajectory(tiny_model, moved, out, **kw)
    assert part.computed == [2, 5, 7] and len(part.skipped) == 7
    assert part.frames[2]["gap"] == pytest.approx(serial["res"].frames[2]["gap"], abs=1e-9)
    assert part.frames[7]["gap"] != serial["res"].frames[7]["gap"]
    # other settings: everything again; resume=False likewise
    other = run_trajectory(tiny_model, frames[:3], out, **{**kw, "sigma": 0.1})
    assert other.computed == [0, 1, 2]
    assert run_trajectory(tiny_model, frames[:2], out, resume=False, **{**kw, "sigma": 0.1}).computed == [0, 1]


def test_failed_frame_does_not_stop_the_others(serial, tiny_model, tmp_path):
    frames = serial["frames"][:3]
    st = frames[1].structure
    pos = st.positions.copy()
    pos[1] = pos[0]  # two atoms on top of each other
    bad = [frames[0], type(frames[1])(1, type(st)(st.numbers, pos, st.cell, st.pbc, "bad"), None), frames[2]]
    res = run_trajectory(tiny_model, bad, tmp_path, nel_atom=NEL, mesh=MESH, window=WINDOW, plot=False)
    assert res.summary["failed"] == [1] and res.summary["gap"]["n"] == 2
    assert "Error" in res.frames[1]["error"] and res.frames[0]["gap"] == serial["res"].frames[0]["gap"]
    # a rerun retries the failed frame only
    assert run_trajectory(tiny_model, bad, tmp_path, nel_atom=NEL, mesh=MESH, window=WINDOW,
                          plot=False).computed == [1]


def test_cli_workers_match_serial(serial, tiny_model, traj, tmp_path, capsys):
    """``eqtb run`` over a .traj (detected as a trajectory) with two worker processes gives the
    frames of the serial run; a rerun reuses them."""
    task = tmp_path / "dos.json"
    task.write_text(json.dumps({"task_options": {"task": "dos", "nel_atom": NEL, "mesh_grid": list(MESH)}}))
    out = tmp_path / "out"
    args = ["run", str(task), "-i", str(tiny_model), "-stu", str(traj), "-o", str(out), "--workers", "2",
            "--emin", str(WINDOW[0]), "--emax", str(WINDOW[1]), "--npts", str(WINDOW[2]), "--timestep", "0.5"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "10 frames of" in text and "10 computed, 0 reused" in text and "s/frame with 2 worker(s)" in text
    assert "gap" in text and "trajectory.png" in text
    doc = json.loads((out / "trajectory.json").read_text())
    assert doc["workers"] == 2 and doc["n_frames"] == 10
    for a, b in zip(doc["frames"], serial["res"].frames):
        assert a["index"] == b["index"] and a["time"] == b["time"]
        for key in ("gap", "vbm", "cbm", "fermi_level"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)
    assert main(args[:-2] + ["--frames", "::2"]) == 0
    assert "5 frames of" in (text := capsys.readouterr().out) and "0 computed, 5 reused" in text
    # export is a one-structure task
    task.write_text(json.dumps({"task_options": {"task": "export"}}))
    assert main(["run", str(task), "-i", str(tiny_model), "-stu", str(traj), "-o", str(tmp_path / "x")]) == 2
    assert "not a trajectory" in capsys.readouterr().err


def test_frame_spectrum_sparse_route_matches_dense(data_dir):
    """One frame by the sparse route (KPM Fermi level, shift-invert band edges at Gamma) against
    the dense route at Gamma: the DFT Si64 frame, an insulator with a 1.75 eV gap at Gamma."""
    from eqtb.data.folder import TrajectoryFolder

    fr = TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0)
    dense = frame_spectrum(fr.hamiltonian, fr.overlap, nel_atom=NEL, mesh=(1, 1, 1), window=WINDOW)
    sparse = frame_spectrum(fr.hamiltonian, fr.overlap, nel_atom=NEL, window=WINDOW, method="sparse", seed=1)
    assert dense["method"] == "dense" and sparse["method"] == "sparse" and sparse["mesh"] == [1, 1, 1]
    assert dense["insulating"] and sparse["insulating"]
    assert sparse["vbm"] == pytest.approx(dense["vbm"], abs=1e-8)
    assert sparse["cbm"] == pytest.approx(dense["cbm"], abs=1e-8)
    assert sparse["gap"] == pytest.approx(1.7505, abs=1e-4) and sparse["gap_type"] == "Gamma"
    assert dense["vbm"] < sparse["fermi_level"] < dense["cbm"]
    assert sparse["fermi_level_source"] == "nel_atom, middle of the KPM gap at Gamma"
    kpm = sparse["kpm"]
    assert abs(kpm["states_below"] - 256) < 40 and kpm["gap"][0] < sparse["fermi_level"] < kpm["gap"][1]
    # the KPM DOS (resolution 0.15 eV) and the Gaussian DOS (0.05 eV) hold the same states
    e = np.linspace(*WINDOW[:2], WINDOW[2])
    assert np.trapezoid(sparse["dos"], e) == pytest.approx(np.trapezoid(dense["dos"], e), rel=0.05)
    # no electron count: no Fermi level, absolute energies, no edges
    bare = frame_spectrum(fr.hamiltonian, fr.overlap, mesh=(1, 1, 1), window=WINDOW)
    assert bare["fermi_level"] is None and bare["gap"] is None and bare["dos_reference"] == 0.0
    agg = aggregate([dense, bare, {"index": 9, "error": "x"}], WINDOW)
    assert agg["gap"]["n"] == 1 and agg["failed"] == [9] and agg["n_ok"] == 2

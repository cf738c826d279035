"""The cutoff floor (:mod:`eqtb.tb.cutoff`, ``eqtb cutoff``, the floor of ``eqtb test``) on the real
Si64 ABACUS frame (Si 1s1p, bonds with blocks up to 9.78 A), at NK of its k-points to stay cheap."""

import json

import numpy as np
import pytest

from conftest import copy_si64
from eqtb.cli import main

NK = 4
NEL = {"Si": 4}


@pytest.fixture(scope="module")
def frame(data_dir):
    from eqtb.data.folder import TrajectoryFolder

    fr = TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0, density_matrix=False)
    return fr.hamiltonian, fr.overlap, fr.kpoints[:: 36 // NK][:NK]


@pytest.fixture(scope="module")
def folder(data_dir, frame, tmp_path_factory):
    """A copy of Si64.0 with NK k-points and eigenvalues.npy of all its blocks there."""
    from eqtb.tb.spectrum import band_energies

    H, S, kpts = frame
    out = copy_si64(data_dir, tmp_path_factory.mktemp("cutoff"))
    np.save(out / "kpoints.npy", kpts)
    np.save(out / "eigenvalues.npy", band_energies(H, S, kpts)[None])
    return out


def test_truncated_keeps_the_graph_bonds(frame):
    """Operator.truncated keeps exactly the data's bonds that build_graph has at r_max (the bonds a
    model there predicts), for a radius and DeePTB's per-element and per-bond dicts alike."""
    from eqtb.bonds import match_bonds
    from eqtb.structure import build_graph

    H, _, _ = frame
    for r in (2.4, 5.0, 7.4):
        t = H.truncated(r)
        g = build_graph(H.structure, r)
        idx = match_bonds((H.i, H.j, H.R), (g.i, g.j, g.R), H.natoms)
        assert len(t.i) == int((idx >= 0).sum()) and 0 < len(t.i) < len(H.i)
        assert (t.bond_lengths < r).all() and (np.sort(H.bond_lengths)[len(t.i)] >= r)
        np.testing.assert_array_equal(t.onsite, H.onsite)
        for other in ({"Si": r}, {"Si-Si": r}):
            u = H.truncated(other)
            assert np.array_equal(u.i, t.i) and np.array_equal(u.R, t.R) and np.array_equal(u.offsite, t.offsite)


def test_floor_on_si64(frame):
    from ase.neighborlist import neighbor_list

    from eqtb.tb.cutoff import cutoff_floor

    H, S, kpts = frame
    longest = max(H.bond_lengths.max(), S.bond_lengths.max())
    rs = [5.0, 6.0, 7.0, 8.0, float(longest) + 0.01, 12.0]
    res = cutoff_floor(H, S, rs, kpts, nel_atom=NEL, name="Si64")
    assert res["longest_bond"] == pytest.approx(longest) and 9 < longest < 10
    assert res["fermi_source"] == f"nel_atom, {NK} k-points of the data" and res["window"] == 5.0
    rows = res["rows"]
    assert [r["r_max"] for r in rows] == rs
    # beyond the longest bond nothing is dropped: the floor is exactly zero
    for r in rows[4:]:
        assert r["window"]["mae"] == 0.0 and r["window"]["max_abs"] == 0.0 and r["all"]["max_abs"] == 0.0
    # on this frame the floor falls with r_max (checked, not a law) and is large at 5 A
    mae = [r["window"]["mae"] for r in rows]
    assert all(a >= b for a, b in zip(mae, mae[1:]))
    assert mae[0] > 50 and mae[2] < 5 and all(r["window"]["count"] > 0 for r in rows)
    # the cost grows with r_max; the neighbour count equals ASE's independent count
    bonds = [r["bonds_per_atom"] for r in rows]
    assert all(a < b for a, b in zip(bonds, bonds[1:]))
    atoms = H.structure.to_ase()
    for r in rows:
        assert r["neighbours_per_atom"] == pytest.approx(len(neighbor_list("i", atoms, r["r_max"])) / len(atoms))
        assert r["data_bonds_per_atom"] <= r["bonds_per_atom"]
        assert r["s_positive_definite"] is True and r["s_min_eigenvalue"] > 0 and r["error"] is None


def test_indefinite_truncated_overlap_is_reported(frame):
    """Si64's overlap cut after the first neighbours (2.4 A) is not positive definite: that cutoff is
    reported without bands, the others are measured."""
    from eqtb.tb.cutoff import cutoff_floor, floor_table, summarize

    H, S, kpts = frame
    res = cutoff_floor(H, S, [2.4, 5.0], kpts, nel_atom=NEL)
    bad, ok = res["rows"]
    assert bad["s_positive_definite"] is False and bad["s_min_eigenvalue"] < 0
    assert "not positive definite" in bad["error"] and bad["window"] is None and bad["all"] is None
    assert ok["s_positive_definite"] is True and ok["window"]["mae"] > 0
    s = summarize([res], target_meV=1e6)
    assert [r["label"] for r in s["rows"]] == ["2.4", "5"]
    assert s["rows"][0]["meets_target"] is False and s["rows"][1]["meets_target"] is True
    assert s["recommended"] == 5.0
    assert "NO" in floor_table(s)


def test_recommendation(frame):
    from eqtb.tb.cutoff import cutoff_floor, summarize

    H, S, kpts = frame
    res = cutoff_floor(H, S, [12.0, 5.0, 7.0, 6.0], kpts, nel_atom=NEL)
    s = summarize([res, res], target_meV=20.0)
    assert [r["r_max"] for r in s["rows"]] == [5.0, 6.0, 7.0, 12.0]  # ordered by cost
    assert s["rows"][0]["relative_cost"] == 1.0 and s["rows"][-1]["relative_cost"] > 10
    rec = next(r for r in s["rows"] if r["r_max"] == s["recommended"])
    assert rec["window"]["mae"] <= 20.0
    cheaper = [r for r in s["rows"] if r["bonds_per_atom"] < rec["bonds_per_atom"]]
    assert cheaper and all(r["window"]["mae"] > 20.0 for r in cheaper)  # the smallest meeting it
    assert s["rows"][0]["window"]["count"] == 2 * res["rows"][1]["window"]["count"]
    exact = summarize([res], target_meV=1e-9)  # only the cutoff past the longest bond has no error at all
    assert exact["recommended"] == 12.0
    none = summarize([{**res, "rows": res["rows"][1:]}], target_meV=1e-9)  # without 12 A
    assert none["recommended"] is None and "no candidate" in none["recommendation"]


def test_cutoff_command(folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["cutoff", str(folder), "--rmax", "5", "7", "12", "--nel-atom", '{"Si": 4}', "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "recommended r_max = 7 A" in cap.out and "bonds/atom" in cap.out
    assert "differ from eigenvalues.npy by 0.00 meV" in cap.out
    rep = json.loads((out / "cutoff_floor.json").read_text())
    assert (out / "cutoff_floor.png").stat().st_size > 10_000
    assert rep["recommended"] == 7.0 and rep["window"] == 5.0 and rep["target_meV"] == 20.0
    assert [r["r_max"] for r in rep["rows"]] == [5.0, 7.0, 12.0] and rep["rows"][2]["window"]["mae"] == 0.0
    (f,) = rep["per_frame"]
    assert f["name"] == "Si64.0[0]" and f["nk"] == NK and f["blocks_vs_eigenvalues"]["window"]["mae"] < 1e-6


def test_cutoff_command_config(folder, data_dir, tmp_path, capsys):
    """A training config: its data root, and its model's r_max joins the candidates; a config whose
    basis differs from the data's basis.dat is an error naming that file."""
    cfg = json.loads((data_dir / "si64_abacus" / "input_short_cpu.json").read_text())
    cfg["data_options"]["train"]["root"] = str(folder.parent)
    path = tmp_path / "input.json"
    path.write_text(json.dumps(cfg))
    rc = main(["cutoff", str(path), "--rmax", "5", "-q", "--nel-atom", '{"Si": 4}', "-o", str(tmp_path / "a")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out == ""
    rep = json.loads((tmp_path / "a" / "cutoff_floor.json").read_text())
    assert rep["config_r_max"] == {"Si": 7.4} and rep["r_max_candidates"] == [5.0, {"Si": 7.4}]
    assert rep["recommended"] == {"Si": 7.4}
    cfg["common_options"]["basis"] = {"Si": "2s2p1d"}
    path.write_text(json.dumps(cfg))
    rc = main(["cutoff", str(path), "-q", "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "basis.dat" in err and "2s2p1d" in err and "Traceback" not in err
    assert not (tmp_path / "b" / "cutoff_floor.json").exists()


def test_cutoff_help_states_the_defaults(capsys):
    from eqtb.config import CUTOFF_FRAMES, CUTOFF_RMAX, CUTOFF_TARGET_MEV, CUTOFF_WINDOW

    with pytest.raises(SystemExit):
        main(["cutoff", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {' '.join(f'{r:g}' for r in CUTOFF_RMAX)})" in text
    for opt, value in (("meV", CUTOFF_TARGET_MEV), ("E_F +- EV", CUTOFF_WINDOW), ("dataset", CUTOFF_FRAMES)):
        assert f"{opt} (default {value:g})" in text


def test_cutoff_command_errors(folder, tmp_path, capsys):
    rc = main(["cutoff", str(tmp_path / "nowhere"), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "nowhere" in err and "no such" in err
    rc = main(["cutoff", str(folder), "--rmax", "0", "-o", str(tmp_path)])
    assert rc == 2 and "--rmax" in capsys.readouterr().err
    rc = main(["cutoff", str(tmp_path), "-o", str(tmp_path)])
    assert rc == 2 and "no trajectory folder" in capsys.readouterr().err


def test_eqtb_test_floor_equals_the_truncated_blocks(folder, frame):
    """``eqtb test``'s floor at the model's r_max (exact target blocks on the model's graph against
    eigenvalues.npy) is the cutoff floor of the truncated operators; a model that predicts the
    targets exactly has exactly the floor as its band error."""
    import torch

    from eqtb.basis import Basis
    from eqtb.tb.cutoff import cutoff_floor
    from eqtb.train.evaluate import evaluate, load_test_samples

    H, S, kpts = frame
    basis, r_max = Basis({"Si": "1s1p"}), 5.0
    samples, _ = load_test_samples([folder], basis, r_max, ["hamiltonian"], ["overlap"], eigenvalues=True,
                                   dtype=torch.float64)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
            self.basis, self.r_max, self.quantity, self.has_overlap = basis, r_max, "hamiltonian", True
            self.quantities = ("hamiltonian", "overlap")

        def forward(self, inputs):
            return samples[0].targets

    res = evaluate(Oracle(), samples, bands=True, window=5.0, nel_atom=NEL)
    floor = res["bands"]["floor"]
    assert floor["r_max"] == r_max and not floor["failed"]
    ref = cutoff_floor(H, S, [r_max], kpts, nel_atom=NEL)["rows"][0]
    for align in ("none", "mean"):
        got, model = floor["align"][align], res["bands"]["align"][align]
        assert got["mae"] == pytest.approx(model["mae"], abs=1e-9)
        assert got["window"]["mae"] == pytest.approx(model["window"]["mae"], abs=1e-9)
    assert floor["align"]["none"]["window"]["mae"] == pytest.approx(ref["window"]["mae"], rel=1e-9)
    assert floor["align"]["none"]["window"]["max_abs"] == pytest.approx(ref["window"]["max_abs"], rel=1e-9)
    assert floor["align"]["none"]["mae"] == pytest.approx(ref["all"]["mae"], rel=1e-9)
    assert "cutoff floor" in res["table"] and "floor none" in res["table"]

"""k-paths (DeePTB abacus/ase/vasp/array, automatic via seekpath) and k-meshes."""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from toy_models import silicon_primitive, sp_model

from eqtb.structure import Structure
from eqtb.tb.kpath import (KPath, KPathError, from_task, mesh_for_spacing, monkhorst_pack,
                           pretty_label)
from eqtb.tb.spectrum import eigh


@pytest.fixture(scope="module")
def band_task(data_dir):
    return json.loads((data_dir / "si64_abacus" / "band.json").read_text())["task_options"]


@pytest.fixture(scope="module")
def si64(data_dir):
    return Structure.read(data_dir / "si64_abacus" / "Si64.vasp")


def test_abacus_band_json(band_task, si64):
    kp = from_task(band_task, si64)
    rows = np.array(band_task["kpath"])
    counts = rows[:, 3].astype(int)
    assert len(kp) == counts.sum() == 144
    # every corner sits where the counts put it, with its coordinates and label
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    np.testing.assert_array_equal(kp.corners, starts)
    np.testing.assert_allclose(kp.kpts[kp.corners], rows[:, :3], atol=1e-14)
    assert kp.corner_labels == band_task["klabels"]
    # count-1 rows inside the list are jumps: the next point starts a new piece at the same x
    assert kp.breaks == (21, 62, 103)
    for b in kp.breaks:
        assert kp.x[b] == kp.x[b - 1]
        assert not np.allclose(kp.kpts[b], kp.kpts[b - 1])
    assert kp.tick_labels == ["G", "X|Y", "G", "Z|R_2", "G", "T_2|U_2", "G", "V_2"]
    assert len(kp.ticks) == 8 and np.all(np.diff(kp.ticks) > 0)
    assert np.all(np.diff(kp.x) >= 0)
    # G -> X is half a reciprocal vector (with 2 pi) of the cubic 10.887 A cell
    b = 2 * np.pi / np.linalg.norm(si64.cell[0])
    assert kp.ticks[1] == pytest.approx(0.5 * b, rel=1e-12)
    # 20 points G..X (X excluded), equally spaced
    np.testing.assert_allclose(np.diff(kp.x[:21]), 0.5 * b / 20, rtol=1e-12)
    assert [s.start for s in kp.segments] == [0, 21, 62, 103]


def test_abacus_errors(si64):
    cell = si64.cell
    with pytest.raises(KPathError, match="last row must have count 1"):
        KPath.from_abacus([[0, 0, 0, 10], [0.5, 0, 0, 10]], ["G", "X"], cell)
    with pytest.raises(KPathError, match="2 rows but klabels has 3"):
        KPath.from_abacus([[0, 0, 0, 10], [0.5, 0, 0, 1]], ["G", "X", "M"], cell)
    with pytest.raises(KPathError, match="positive integer"):
        KPath.from_abacus([[0, 0, 0, 2.5], [0.5, 0, 0, 1]], None, cell)
    with pytest.raises(KPathError, match=r"\[k1, k2, k3, n\]"):
        KPath.from_abacus([[0, 0, 10], [0.5, 0, 1]], None, cell)
    kp = KPath.from_abacus([[0, 0, 0, 10], [0.5, 0, 0, 1]], [""], cell)
    assert len(kp) == 11 and kp.tick_labels == ["", ""]


def test_ase_string_endpoints_are_special_points():
    si2 = silicon_primitive()
    kp = KPath.from_ase_string("GXWKGLUWLK,UX", si2.cell, npoints=200)
    assert len(kp) == 200
    special = si2.to_ase().cell.bandpath(npoints=0).special_points
    labels = "GXWKGLUWLKUX"
    assert kp.corner_labels == list(labels)
    for idx, lab in zip(kp.corners, labels):
        np.testing.assert_allclose(kp.kpts[idx], special[lab], atol=1e-14)
    assert kp.corners[0] == 0 and kp.corners[-1] == len(kp) - 1
    assert len(kp.breaks) == 1 and kp.corner_labels[kp.corners.tolist().index(kp.breaks[0])] == "U"
    assert kp.tick_labels[-2:] == ["K|U", "X"]
    # tick positions agree with ASE's own linear axis (also 1/A with 2 pi)
    _, ase_ticks, _ = si2.to_ase().cell.bandpath("GXWKGLUWLK,UX", npoints=200).get_linear_kpoint_axis()
    np.testing.assert_allclose(kp.ticks, np.unique(np.round(ase_ticks, 12)), atol=1e-9)
    # every leg gets points in proportion to its length
    kp2 = KPath.from_ase_string("GXL", si2.cell, density=40.0)
    assert kp2.corner_labels == ["G", "X", "L"] and len(kp2) >= 40 * kp2.x[-1]
    with pytest.raises(KPathError, match="no special point 'Q'"):
        KPath.from_ase_string("GQ", si2.cell)
    with pytest.raises(KPathError, match="too few"):
        KPath.from_ase_string("GXL", si2.cell, npoints=2)


def test_vasp_and_array_and_npy(si64, tmp_path):
    pts = {"G": [0, 0, 0], "X": [0.5, 0, 0], "M": [0.5, 0.5, 0]}
    kp = KPath.from_vasp(["G-X", "X-M", "G-M"], pts, 10, si64.cell)
    assert len(kp) == 30
    assert kp.breaks == (20,)  # M -> G is a jump
    assert kp.tick_labels == ["G", "X", "M|G", "M"]
    assert kp.x[10] == kp.x[9]  # duplicated shared corner X: zero step
    arr = np.array([[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0]])
    np.save(tmp_path / "k.npy", arr)
    kn = KPath.from_npy(tmp_path / "k.npy", si64.cell)
    np.testing.assert_array_equal(kn.kpts, arr)
    np.save(tmp_path / "bad.npy", np.zeros((4, 2)))
    with pytest.raises(KPathError, match="bad.npy"):
        KPath.from_npy(tmp_path / "bad.npy", si64.cell)
    with pytest.raises(FileNotFoundError):
        KPath.from_npy(tmp_path / "none.npy", si64.cell)
    ka = from_task({"kline_type": "array", "kpath": arr.tolist(), "high_sym_kpoints": {"G": [0, 0, 0], "X": [0.5, 0, 0]}}, si64)
    assert ka.tick_labels == ["G", "X"]
    with pytest.raises(KPathError, match="unknown kline_type"):
        from_task({"kline_type": "spiral", "kpath": []}, si64)
    ks = from_task({"kline_type": "ase", "kpath": "GXMGR", "nkpoints": 50}, si64)
    assert len(ks) == 50


def test_automatic_maps_back_to_given_cell():
    """seekpath standardises a rotated cell with permuted vectors; the special points mapped back
    to the *given* cell must give the energies computed directly in the standard cell."""
    si2 = silicon_primitive()
    H0, S0 = sp_model(si2)
    Q = Rotation.from_euler("xyz", [0.3, 0.7, -1.1]).as_matrix()
    perm = [1, 2, 0]
    rotated = Structure(si2.numbers, si2.positions @ Q.T, (si2.cell @ Q.T)[perm], [True] * 3)
    H1, S1 = sp_model(rotated)
    kp = KPath.automatic(rotated)
    assert kp.description.startswith("seekpath cF2")
    special = si2.to_ase().cell.bandpath(npoints=0).special_points  # ASE, standard cell
    checked = set()
    for idx, lab in zip(kp.corners, kp.corner_labels):
        if lab not in special:
            continue
        k_given = kp.kpts[[idx]]
        e_direct = eigh(H0.dense([special[lab]]), S0.dense([special[lab]]))
        e_mapped = eigh(H1.dense(k_given), S1.dense(k_given))
        np.testing.assert_allclose(e_mapped, e_direct, atol=1e-10, err_msg=lab)
        checked.add(lab)
    assert {"G", "X", "L", "W", "K"} <= checked
    # X and W really differ in this model, so a wrong mapping would be caught
    assert not np.allclose(eigh(H0.dense([special["X"]]), S0.dense([special["X"]])),
                           eigh(H0.dense([special["W"]]), S0.dense([special["W"]])), atol=1e-3)


def test_automatic_supercell(si64):
    kp = KPath.automatic(si64, npoints=100)
    assert len(kp) == 100 and np.allclose(kp.kpts[0], 0)
    assert kp.tick_labels[0] == "G"


def test_monkhorst_pack():
    for mesh, gamma in [((4, 4, 4), True), ((3, 3, 3), False), ((4, 3, 2), False), ((1, 1, 5), True)]:
        k, w = monkhorst_pack(mesh, gamma)
        assert len(k) == np.prod(mesh) and w.sum() == pytest.approx(1.0, abs=1e-14)
        assert np.all(k >= -0.5) and np.all(k < 0.5)
        has_gamma = bool(np.all(k == 0, axis=1).any())
        assert has_gamma == (gamma or bool(np.all(np.array(mesh) % 2 == 1)))
        kr, wr = monkhorst_pack(mesh, gamma, time_reversal=True)
        assert wr.sum() == pytest.approx(1.0, abs=1e-14) and len(kr) < len(k)
        # no pair k, -k (mod G) survives the reduction, and every full-mesh point is represented
        d = (kr[:, None, :] + kr[None, :, :]) % 1.0
        same = np.all(np.isclose(d, 0) | np.isclose(d, 1), axis=-1)
        assert same.sum() == np.sum(np.all(np.isclose((2 * kr) % 1.0, 0) | np.isclose((2 * kr) % 1.0, 1), axis=1))
        full = {tuple(np.round(x % 1.0, 9) % 1.0) for x in k}
        rep = {tuple(np.round(s * x % 1.0, 9) % 1.0) for x in kr for s in (1, -1)}
        assert full == rep
    kr, wr = monkhorst_pack((4, 4, 4), True, time_reversal=True)
    assert len(kr) == 36  # 64 points: 8 self-conjugate (2^3) + 56 / 2
    with pytest.raises(KPathError, match="three positive integers"):
        monkhorst_pack((4, 0, 4))
    with pytest.raises(KPathError):
        monkhorst_pack((2.5, 2, 2))


def test_mesh_for_spacing_and_labels(si64):
    assert mesh_for_spacing(si64, 0.15) == (4, 4, 4)
    s2 = Structure(si64.numbers, si64.positions, si64.cell, [True, True, False])
    assert mesh_for_spacing(s2, 0.15)[2] == 1
    assert pretty_label("G") == "Γ" and pretty_label("GAMMA") == "Γ"
    assert pretty_label("X|U") == "X|U" and pretty_label("R_2") == "R$_{2}$" and pretty_label("X1") == "X$_{1}$"

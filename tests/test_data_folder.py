"""DeePTB/dftio dataset folders: reading the shared real data, round trips, and bad input."""

import json
import shutil

import h5py
import numpy as np
import pytest

from eqtb.basis import Basis
from eqtb.data import folder as folder_mod
from eqtb.data.folder import (DatasetError, DatasetWarning, Frame, Info, TrajectoryFolder, find_folders,
                              read_dataset, read_info, write_folder)
from eqtb.bonds import parse_block_keys

TEXT_FILES = ["positions.dat", "cell.dat", "atomic_numbers.dat", "pbc.dat", "basis.dat", "kpoints.npy"]


@pytest.fixture(scope="module")
def si64_dir(data_dir):
    return data_dir / "si64_abacus" / "Si64.0"


@pytest.fixture(scope="module")
def si64(data_dir):
    folders = read_dataset(data_dir / "si64_abacus", "Si64")
    assert [f.path.name for f in folders] == ["Si64.0"]
    return folders[0].frame(0)


@pytest.fixture(scope="module")
def si64_blocks(si64_dir):
    with h5py.File(si64_dir / "hamiltonians.h5", "r") as h:
        return {k: ds[()] for k, ds in h["0"].items()}


def _copy_text(src, dst, files=TEXT_FILES):
    """A copy of the structure files of a frame folder plus the root info (no block files)."""
    dst.mkdir(parents=True)
    for name in files:
        shutil.copy(src / name, dst / name)
    shutil.copy(src.parent / "info.json", dst / "info.json")
    return dst


def _write_h5(path, groups):
    with h5py.File(path, "w") as h:
        for name, blocks in groups.items():
            g = h.create_group(name)
            for k, v in blocks.items():
                g.create_dataset(k, data=v)


def _onsite(blocks, n=64):
    return {f"{a}_{a}_0_0_0": blocks[f"{a}_{a}_0_0_0"] for a in range(n)}


# ---------------------------------------------------------------------------------- real data


def test_si64_loads(si64, si64_dir, si64_blocks):
    s = si64.structure
    assert s.natoms == 64 and set(s.numbers) == {14} and s.pbc.all()
    np.testing.assert_allclose(np.diag(s.cell), 10.88740444183349609, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(s.positions, np.loadtxt(si64_dir / "positions.dat"))
    H, S = si64.hamiltonian, si64.overlap
    assert H.basis == Basis({"Si": "1s1p"}) and S.basis == H.basis
    assert H.onsite.shape == (64, 4, 4) and S.onsite.shape == (64, 4, 4)
    assert len(H.i) == 4685  # canonical half of the 9370 off-site blocks of the file
    # onsite overlap of an orthonormal-ish atomic basis: identity to good accuracy
    np.testing.assert_allclose(S.onsite[0], np.eye(4), atol=1e-5)
    np.testing.assert_allclose(H.onsite[5], si64_blocks["5_5_0_0_0"], atol=1e-6)
    assert si64.kpoints.shape == (36, 3) and si64.eigenvalues is None and si64.density_matrix is None
    assert si64.source.endswith("Si64.0 frame 0")


def test_si64_selective_loading(si64_dir):
    tf = TrajectoryFolder(si64_dir)
    assert tf.basis == Basis({"Si": "1s1p"}) and tf.nframes == 1 and tf.info.pos_type == "cart"
    fr = tf.frame(0, hamiltonian=False, overlap=False)
    assert fr.hamiltonian is None and fr.overlap is None and fr.structure.natoms == 64


@pytest.mark.parametrize("name", ["silicon_bands/kpath.0", "silicon_bands/kpath_spk.0", "silicon_bands/kpt.0",
                                  "silicon_bands/kpathmd25.0", "silicon_bands/kpathmd100.0", "hbn_bands/kpath.0"])
def test_band_folders_load(data_dir, name):
    path = data_dir / name
    raw = json.loads((path / "info.json").read_text())
    legacy = "AtomicData_options" in raw
    with pytest.warns(DatasetWarning) if legacy else _no_warning():
        tf = TrajectoryFolder(path)
    assert tf.info.pbc3 == (True, True, True) and tf.info.bandinfo.band_min == 0
    assert tf.nframes == raw["nframes"]
    frames = list(tf.frames())
    assert len(frames) == raw["nframes"]
    ev = np.load(path / "eigenvalues.npy")
    kp = np.load(path / "kpoints.npy")
    assert ev.shape[0] == tf.info.nframes
    for k, fr in enumerate(frames):
        assert fr.structure.natoms == raw["natoms"]
        assert fr.eigenvalues.shape == ev.shape[1:] and fr.kpoints.shape == (ev.shape[1], 3)
        np.testing.assert_array_equal(fr.eigenvalues, ev[k])
        np.testing.assert_array_equal(fr.kpoints, kp.astype(np.float64))
        assert fr.hamiltonian is None
    if "hbn" in name:
        assert sorted(frames[0].structure.numbers) == [5, 7] and tf.basis is None


class _no_warning:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error", DatasetWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def test_legacy_info(data_dir):
    with pytest.warns(DatasetWarning) as record:
        info = read_info(data_dir / "silicon_bands" / "kpt.0" / "info.json")
    messages = " | ".join(str(w.message) for w in record)
    assert "AtomicData_options" in messages and "nkpoints" in messages and "kpt.0/info.json" in messages
    assert info.pbc is True and info.nframes == 1 and info.bandinfo.band_max == 6
    with pytest.warns(DatasetWarning) as record:
        Info.from_dict({"nframes": 1, "pos_type": "ase", "AtomicData_options": {"r_max": 3.0, "pbc": False},
                        "bandinfo": {"nkpoints": 3, "band_min": 1}})
    assert len(record) == 2
    with pytest.warns(DatasetWarning):
        info = Info.from_dict({"nframes": 1, "pos_type": "ase", "AtomicData_options": {"r_max": 3.0, "pbc": False}})
    assert info.pbc3 == (False, False, False)


def test_find_folders_order_and_prefix(data_dir, tmp_path):
    assert [p.name for p in find_folders(data_dir / "silicon_bands", "kpath")] == ["kpath.0"]
    assert [p.name for p in find_folders(data_dir / "silicon_bands", "kpathmd25")] == ["kpathmd25.0"]
    for name in ["Si.2", "Si.10", "Si.1"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "positions.dat").write_text("0 0 0\n")
    (tmp_path / "Si_x").mkdir()
    assert [p.name for p in find_folders(tmp_path, "Si")] == ["Si.1", "Si.10", "Si.2"]
    with pytest.raises(DatasetError, match="Si_x.*no data file"):
        find_folders(tmp_path, "Si", separator="_")
    (tmp_path / "Si.3").mkdir()
    with pytest.raises(DatasetError, match="Si.3"):
        find_folders(tmp_path, "Si")
    with pytest.raises(DatasetError, match="no folder matching"):
        find_folders(tmp_path, "Ge")


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt,pos_type", [("text", "cart"), ("text", "frac"), ("ase", "cart")])
def test_si64_round_trip(si64, si64_dir, tmp_path, fmt, pos_type):
    both = fmt == "ase"
    out = write_folder(tmp_path / "Si64.0", [si64], pos_type=pos_type, structure_format=fmt, both_triangles=both)
    assert out == tmp_path / "Si64.0" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    info = json.loads((out / "info.json").read_text())
    assert info == {"nframes": 1, "natoms": 64, "pos_type": "ase" if fmt == "ase" else pos_type, "pbc": True}
    assert (out / "basis.dat").read_text().strip() == "{'Si': '1s1p'}"
    assert (out / "xdat.traj").is_file() == (fmt == "ase") and (out / "positions.dat").is_file() == (fmt == "text")

    back = read_dataset(tmp_path, "Si64")[0].frame(0)
    s0, s1 = si64.structure, back.structure
    np.testing.assert_array_equal(s1.numbers, s0.numbers)
    np.testing.assert_array_equal(s1.cell, s0.cell)
    np.testing.assert_array_equal(s1.pbc, s0.pbc)
    np.testing.assert_allclose(s1.positions, s0.positions, rtol=0, atol=1e-12 if pos_type == "cart" else 1e-10)
    if pos_type == "cart":
        np.testing.assert_array_equal(s1.positions, s0.positions)
    for q in ("hamiltonian", "overlap"):
        a, b = getattr(si64, q).to_blocks(), getattr(back, q).to_blocks()
        assert a.keys() == b.keys()
        for k in a:
            assert b[k].dtype == np.float64
            np.testing.assert_array_equal(b[k], a[k])
    np.testing.assert_array_equal(back.kpoints, si64.kpoints)
    assert back.eigenvalues is None and back.density_matrix is None

    # written block file follows the spec: group "0", 0-based keys, every onsite block, right shapes
    with h5py.File(out / "hamiltonians.h5", "r") as h, h5py.File(si64_dir / "hamiltonians.h5", "r") as src:
        assert list(h.keys()) == ["0"]
        keys = list(h["0"].keys())
        idx = parse_block_keys(keys)
        assert idx[:, :2].min() == 0 and idx[:, :2].max() == 63
        assert {f"{a}_{a}_0_0_0" for a in range(64)} <= set(keys)
        assert all(h["0"][k].shape == (4, 4) for k in keys[:200])
        if both:  # both triangles: exactly the key set of the dftio source file
            assert set(keys) == set(src["0"].keys())
        else:  # canonical half: i < j (i == j only for R != 0 with one of +-R)
            assert len(keys) == 64 + 4685 and (idx[:, 0] <= idx[:, 1]).all()


def test_multiframe_round_trip(data_dir, tmp_path):
    src = TrajectoryFolder(data_dir / "silicon_bands" / "kpathmd25.0")
    frames = list(src.frames())
    assert len(frames) == 10
    assert not np.array_equal(frames[0].structure.positions, frames[1].structure.positions)
    for fmt in ("text", "ase"):
        out = write_folder(tmp_path / f"md.{fmt}", frames, structure_format=fmt,
                           bandinfo={"band_min": 0, "band_max": 28})
        info = read_info(out / "info.json")
        assert info.nframes == 10 and info.natoms == 8 and info.bandinfo.band_max == 28
        assert np.load(out / "eigenvalues.npy").shape == (10, 354, 60)
        assert np.load(out / "kpoints.npy").shape == (354, 3)  # shared k list stored once
        assert not (out / "basis.dat").exists()  # no operators, no basis
        back = list(TrajectoryFolder(out).frames())
        assert len(back) == 10
        for a, b in zip(frames, back):
            np.testing.assert_array_equal(b.structure.positions, a.structure.positions)
            np.testing.assert_array_equal(b.structure.cell, a.structure.cell)
            np.testing.assert_array_equal(b.structure.numbers, a.structure.numbers)
            np.testing.assert_array_equal(b.eigenvalues, a.eigenvalues)
            np.testing.assert_array_equal(b.kpoints, a.kpoints)


def test_write_refuses_and_is_atomic(si64, tmp_path, monkeypatch):
    out = write_folder(tmp_path / "A.0", [si64], with_basis=False)
    assert not (out / "basis.dat").exists()
    with pytest.raises(DatasetError, match="already exists"):
        write_folder(out, [si64])

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(folder_mod, "_write_h5", boom)
    with pytest.raises(RuntimeError):
        write_folder(tmp_path / "B.0", [si64])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.0"]  # no half folder, no temp folder
    with pytest.raises(DatasetError, match="overlap given for some frames only"):
        write_folder(tmp_path / "C.0", [si64, Frame(si64.structure, hamiltonian=si64.hamiltonian)])


# ---------------------------------------------------------------------------------- variants


def test_one_based_groups_and_keys_and_dm_preference(si64_dir, si64_blocks, tmp_path):
    d = _copy_text(si64_dir, tmp_path / "Si64.0")
    onsite = _onsite(si64_blocks)
    one_based = {f"{a + 1}_{a + 1}_0_0_0": v for a, v in enumerate(onsite.values())}
    _write_h5(d / "hamiltonians.h5", {"1": one_based})
    _write_h5(d / "overlaps.h5", {"0": onsite})
    scaled = {k: 2 * v for k, v in onsite.items()}
    _write_h5(d / "density_matrices.h5", {"0": scaled})
    _write_h5(d / "DM.h5", {"0": onsite})
    fr = TrajectoryFolder(d).frame(0)
    np.testing.assert_array_equal(fr.hamiltonian.onsite, fr.overlap.onsite)
    assert len(fr.hamiltonian.i) == 0
    np.testing.assert_allclose(fr.density_matrix.onsite, 2 * fr.overlap.onsite)  # density_matrices.h5 wins
    (d / "density_matrices.h5").unlink()
    np.testing.assert_array_equal(TrajectoryFolder(d).frame(0).density_matrix.onsite, fr.overlap.onsite)


def test_per_atom_basis_and_explicit_basis(si64_dir, si64_blocks, tmp_path):
    d = _copy_text(si64_dir, tmp_path / "Si64.0")
    (d / "basis.dat").write_text("1s1p\n" * 64)
    _write_h5(d / "overlaps.h5", {"0": _onsite(si64_blocks)})
    assert TrajectoryFolder(d).basis == Basis({"Si": "1s1p"})
    (d / "basis.dat").write_text("1s1p\n" * 63)
    with pytest.raises(DatasetError, match="basis.dat"):
        TrajectoryFolder(d)
    assert TrajectoryFolder(d, basis={"Si": "1s1p"}).frame(0).overlap.onsite.shape == (64, 4, 4)
    (d / "basis.dat").unlink()
    tf = TrajectoryFolder(d)
    assert tf.basis is None
    assert tf.frame(0, overlap=False).overlap is None
    with pytest.raises(DatasetError, match="overlaps.h5.*basis"):
        tf.frame(0)


def test_info_fallbacks(si64_dir, tmp_path):
    d = _copy_text(si64_dir, tmp_path / "root" / "Si64.0")
    (d / "info.json").unlink()
    info = Info(nframes=1, pos_type="cart", pbc=True)
    assert TrajectoryFolder(d, info=info).info.natoms == -1
    with pytest.raises(DatasetError, match=r"info\.json"):
        TrajectoryFolder(d)
    (tmp_path / "root" / "info.json").write_text('{"nframes": 1, "natoms": 64, "pos_type": "cart", "pbc": [true, true, true]}')
    tf = read_dataset(tmp_path / "root", "Si64")[0]
    assert tf.info.natoms == 64 and tf.info.pbc3 == (True, True, True)
    (d / "info.json").write_text('{"nframes": 1, "pos_type": "cart", "pbc": false}')  # own info wins
    assert TrajectoryFolder(d).frame(0, overlap=False, hamiltonian=False).structure.pbc.tolist() == [False] * 3


# ---------------------------------------------------------------------------------- bad input


def test_bad_info_json(tmp_path):
    p = tmp_path / "info.json"
    p.write_text('{\n  "nframes": 1,\n  "pos_type": "cart",\n  "pbc": true,\n}\n')
    with pytest.raises(DatasetError, match=r"info\.json.*line 5"):
        read_info(p)
    p.write_text('{"nframe": 1, "pos_type": "cart", "pbc": true}')
    with pytest.raises(DatasetError, match=r"info\.json.*'nframe'.*did you mean 'nframes'"):
        read_info(p)
    p.write_text('{"nframes": 1, "pos_type": "cart", "pbc": true, "bandinfo": {"band_mx": 3}}')
    with pytest.raises(DatasetError, match=r"info\.json: bandinfo.*'band_mx'.*'band_max'"):
        read_info(p)
    p.write_text('{"nframes": 1, "pos_type": "dirc", "pbc": true}')
    with pytest.raises(DatasetError, match=r"info\.json.*pos_type"):
        read_info(p)
    p.write_text('{"nframes": "2", "pos_type": "cart", "pbc": true}')
    with pytest.raises(DatasetError, match=r"info\.json.*nframes"):
        read_info(p)
    p.write_text('{"nframes": 1, "pos_type": "cart"}')
    with pytest.raises(DatasetError, match=r"info\.json.*pbc"):
        read_info(p)
    with pytest.raises(DatasetError, match="does not exist"):
        read_info(tmp_path / "nope" / "info.json")


def test_missing_info_and_structure(si64_dir, tmp_path):
    d = _copy_text(si64_dir, tmp_path / "Si64.0")
    (d / "positions.dat").unlink()
    with pytest.raises(DatasetError, match=r"positions\.dat.*missing"):
        TrajectoryFolder(d).frame(0)
    (d / "info.json").unlink()
    with pytest.raises(DatasetError, match=r"missing info\.json"):
        TrajectoryFolder(d)


def test_truncated_h5(si64_dir, tmp_path):
    d = _copy_text(si64_dir, tmp_path / "Si64.0")
    raw = (si64_dir / "hamiltonians.h5").read_bytes()
    (d / "hamiltonians.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"hamiltonians\.h5"):
        TrajectoryFolder(d).frame(0)
    (d / "hamiltonians.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DatasetError, match=r"hamiltonians\.h5"):
        TrajectoryFolder(d).frame(0)


def test_wrong_row_count(si64_dir, tmp_path):
    d = _copy_text(si64_dir, tmp_path / "Si64.0")
    info = json.loads((d / "info.json").read_text())
    (d / "info.json").write_text(json.dumps({**info, "natoms": 64}))
    lines = (d / "positions.dat").read_text().splitlines()
    (d / "positions.dat").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match=r"positions\.dat.*63 rows.*64"):
        TrajectoryFolder(d).frame(0)
    (d / "info.json").write_text(json.dumps({**info, "nframes": 2}))
    with pytest.raises(DatasetError, match=r"positions\.dat.*63 rows"):
        TrajectoryFolder(d).frame(0)


def test_bad_blocks(si64_dir, si64_blocks, tmp_path):
    d = _copy_text(si64_dir, tmp_path / "Si64.0")
    blocks = _onsite(si64_blocks)
    blocks["0_10_1_-1_0"] = si64_blocks["0_10_1_-1_0"][:, :3]
    _write_h5(d / "hamiltonians.h5", {"0": blocks})
    with pytest.raises(DatasetError, match=r"hamiltonians\.h5.*'0_10_1_-1_0'.*shape"):
        TrajectoryFolder(d).frame(0)
    blocks["0_10_1_-1_0"] = si64_blocks["0_10_1_-1_0"].copy()
    blocks["0_10_1_-1_0"][1, 2] = np.nan
    _write_h5(d / "hamiltonians.h5", {"0": blocks})
    with pytest.raises(DatasetError, match=r"hamiltonians\.h5.*NaN"):
        TrajectoryFolder(d).frame(0)
    del blocks["0_10_1_-1_0"], blocks["7_7_0_0_0"]
    _write_h5(d / "hamiltonians.h5", {"0": blocks})
    with pytest.raises(DatasetError, match=r"hamiltonians\.h5.*onsite.*\b7\b"):
        TrajectoryFolder(d).frame(0)
    _write_h5(d / "hamiltonians.h5", {"5": _onsite(si64_blocks)})  # no "0", so 1-based: "1" is missing
    with pytest.raises(DatasetError, match=r"hamiltonians\.h5: no group '1' for frame 0"):
        TrajectoryFolder(d).frame(0)


def test_nan_and_overlapping_positions(si64_dir, tmp_path):
    d = _copy_text(si64_dir, tmp_path / "Si64.0")
    pos = np.loadtxt(si64_dir / "positions.dat")
    bad = pos.copy()
    bad[5, 1] = np.nan
    np.savetxt(d / "positions.dat", bad)
    with pytest.raises(DatasetError, match=r"positions\.dat.*NaN.*row 6"):
        TrajectoryFolder(d).frame(0)
    dup = pos.copy()
    dup[9] = dup[3]
    np.savetxt(d / "positions.dat", dup)
    with pytest.raises(DatasetError, match=r"positions\.dat.*atoms 3 and 9.*on top"):
        TrajectoryFolder(d).frame(0, hamiltonian=False, overlap=False)


def test_bad_eigenvalues(data_dir, tmp_path):
    src = data_dir / "silicon_bands" / "kpathmd25.0"
    d = tmp_path / "md.0"
    shutil.copytree(src, d)
    ev = np.load(src / "eigenvalues.npy")
    np.save(d / "eigenvalues.npy", ev[:9])
    with pytest.raises(DatasetError, match=r"eigenvalues\.npy.*shape\[0\] = 9.*nframes = 10"):
        TrajectoryFolder(d).frame(0)
    assert TrajectoryFolder(d).frame(0, eigenvalues=False).eigenvalues is None
    bad = ev.copy()
    bad[3, 100, 7] = np.nan
    np.save(d / "eigenvalues.npy", bad)
    with pytest.raises(DatasetError, match=r"eigenvalues\.npy.*NaN"):
        TrajectoryFolder(d).frame(0)
    np.save(d / "eigenvalues.npy", ev[:, :-1])
    with pytest.raises(DatasetError, match=r"eigenvalues\.npy.*353 k-points.*354"):
        TrajectoryFolder(d).frame(0)
    (d / "xdat.traj").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"xdat\.traj"):
        TrajectoryFolder(d).frame(0)


def test_npy_shape_variants(data_dir, tmp_path):
    src = data_dir / "silicon_bands" / "kpathmd25.0"
    d = tmp_path / "md.0"
    shutil.copytree(src, d)
    kp = np.load(src / "kpoints.npy").astype(np.float64)
    per_frame = np.stack([kp + 0.01 * f for f in range(10)])  # (F, nk, 3): frame f gets its own list
    np.save(d / "kpoints.npy", per_frame)
    tf = TrajectoryFolder(d)
    np.testing.assert_array_equal(tf.frame(7).kpoints, per_frame[7])
    frames = [tf.frame(0), tf.frame(7)]
    out = write_folder(tmp_path / "two.0", frames, pos_type="frac")
    np.testing.assert_array_equal(np.load(out / "kpoints.npy"), per_frame[[0, 7]])
    assert TrajectoryFolder(out).frame(-1).kpoints[5, 0] == per_frame[7, 5, 0]
    # a single frame may store eigenvalues as (nk, nb)
    one = tmp_path / "one.0"
    shutil.copytree(data_dir / "silicon_bands" / "kpath_spk.0", one)
    ev = np.load(one / "eigenvalues.npy")
    np.save(one / "eigenvalues.npy", ev[0])
    np.testing.assert_array_equal(TrajectoryFolder(one).frame(0).eigenvalues, ev[0])

"""Export of operators for other codes (eqtb.data.export) and Operator.real_space_sparse, on the real
Si64 ABACUS frame: Bloch-sum identity, the three round trips, bad input and atomic writing."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from eqtb.data import export as export_mod
from eqtb.data.deeph import read_deeph_folder
from eqtb.data.export import FORMATS, ExportError, export_operators, load_npz_export
from eqtb.data.folder import DatasetWarning, TrajectoryFolder
from eqtb.operator import Operator

KPTS = np.array([[0.1, -0.23, 0.37], [0.5, 0.25, 0.0]])


@pytest.fixture(scope="module")
def si64(data_dir):
    return TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0, eigenvalues=False)


@pytest.fixture(scope="module")
def ops(si64):
    return {"hamiltonian": si64.hamiltonian, "overlap": si64.overlap}


def _bloch(Rs, mats, k):
    return sum(m.toarray() * np.exp(-2j * np.pi * np.dot(k, R)) for R, m in zip(Rs, mats))


def _assert_same_blocks(a, b, atol=1e-12):
    ba, bb = a.to_blocks(), b.to_blocks()
    assert ba.keys() == bb.keys()
    for key in ba:
        np.testing.assert_allclose(bb[key], ba[key], rtol=0, atol=atol, err_msg=key)


# ---------------------------------------------------------------------- real_space_sparse


def test_real_space_sparse_bloch_sum(si64):
    H = si64.hamiltonian
    Rs, mats = H.real_space_sparse()
    assert Rs.dtype == np.int64 and Rs.shape == (len(mats), 3)
    assert not Rs[0].any()  # R = 0 first, the rest lexicographic
    assert [tuple(r) for r in Rs[1:]] == sorted(tuple(r) for r in Rs[1:])
    assert all(isinstance(m, sp.csr_matrix) and m.shape == (H.norb, H.norb) for m in mats)
    assert mats[0].dtype == np.float64
    dense = H.dense(KPTS)
    for k, ref in zip(KPTS, dense):
        np.testing.assert_allclose(_bloch(Rs, mats, k), ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(H.sparse(k).toarray(), ref, rtol=0, atol=1e-12)
    index = {tuple(R): r for r, R in enumerate(Rs.tolist())}
    for r, R in enumerate(Rs.tolist()):
        back = mats[index[tuple(-x for x in R)]]
        assert (back != mats[r].T).nnz == 0  # O(-R) == O(R)^T exactly (real operator)
    # every stored entry of every block: onsite + both triangles of all bonds
    n_onsite = sum(H.basis.norb_of(H.structure.numbers) ** 2)
    assert sum(m.nnz for m in mats) <= n_onsite + 2 * len(H.i) * 16


def test_real_space_sparse_far_lattice_vectors(si64):
    """Lattice vectors too far apart for the lookup table take the sorting path; same identity."""
    H = si64.hamiltonian
    far = np.where((np.arange(len(H.i)) % 7 == 0)[:, None], H.R + [600, 0, 0], H.R)
    op = Operator(H.structure, H.basis, H.onsite, H.i, H.j, far, H.offsite)
    Rs, mats = op.real_space_sparse()
    assert not Rs[0].any() and [tuple(r) for r in Rs[1:]] == sorted(tuple(r) for r in Rs[1:])
    assert Rs[:, 0].max() == 601 and Rs[:, 0].min() == -601
    for k, ref in zip(KPTS, op.dense(KPTS)):
        np.testing.assert_allclose(_bloch(Rs, mats, k), ref, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- round trips


def test_dataset_round_trip(si64, ops, tmp_path):
    with pytest.warns(DatasetWarning, match="no place for the Fermi level"):
        out = export_operators(si64.structure, ops, tmp_path / "Si64.0", "dataset", fermi_level=-4.5)
    assert out == tmp_path / "Si64.0"
    back = TrajectoryFolder(out).frame(0)
    np.testing.assert_array_equal(back.structure.numbers, si64.structure.numbers)
    np.testing.assert_allclose(back.structure.positions, si64.structure.positions, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(back.structure.cell, si64.structure.cell)
    assert back.density_matrix is None
    for q, op in ops.items():
        _assert_same_blocks(op, getattr(back, q))
    assert [p.name for p in tmp_path.iterdir()] == ["Si64.0"]  # no temporary sibling left


def test_deeph_round_trip(si64, ops, tmp_path):
    # H only: the DeepH reader is the slow part (both triangles); S goes through the same code
    H = ops["hamiltonian"]
    out = export_operators(si64.structure, {"hamiltonian": H}, tmp_path / "deeph", "deeph", fermi_level=-4.5)
    assert json.loads((out / "info.json").read_text())["fermi_level"] == -4.5
    assert not (out / "overlaps.h5").exists()
    back = read_deeph_folder(out)
    np.testing.assert_allclose(back.structure.positions, si64.structure.positions, rtol=0, atol=1e-12)
    _assert_same_blocks(H, back.hamiltonian)


def test_npz_round_trip(si64, ops, tmp_path):
    out = export_operators(si64.structure, ops, tmp_path / "npz", "npz", fermi_level=-4.5)
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json", "hamiltonian.npz", "lattice_vectors.npy", "overlap.npz", "structure.extxyz"]
    H = ops["hamiltonian"]
    n = H.norb
    Rs = np.load(out / "lattice_vectors.npy")
    raw = sp.load_npz(out / "hamiltonian.npz")
    assert raw.format == "csr" and raw.shape == (n, len(Rs) * n)
    d = load_npz_export(out)
    np.testing.assert_array_equal(d["lattice_vectors"], Rs)
    info = d["info"]
    assert info["norb"] == n and info["natoms"] == 64 and info["nR"] == len(Rs)
    assert info["units"]["hamiltonian"] == "eV" and info["fermi_level_eV"] == -4.5
    assert info["elements"] == {"Si": ["1s", "1p_y", "1p_z", "1p_x"]}
    assert info["atom_orbital_offsets"] == list(range(0, n + 1, 4))
    assert "exp(-i 2 pi k.R)" in info["bloch_sum"]
    assert info["eqtb_version"]
    # the column blocks of the stacked file are the matrices of real_space_sparse
    Rs0, mats0 = H.real_space_sparse()
    np.testing.assert_array_equal(Rs, Rs0)
    for r in (0, 5):
        assert (raw[:, r * n:(r + 1) * n] != mats0[r]).nnz == 0
    for q, op in ops.items():
        assert len(d[q]) == len(Rs)
        dense = op.dense(KPTS)
        for k, ref in zip(KPTS, dense):
            np.testing.assert_allclose(_bloch(d["lattice_vectors"], d[q], k), ref, rtol=0, atol=1e-12)
    s = d["structure"]
    np.testing.assert_array_equal(s.numbers, si64.structure.numbers)
    np.testing.assert_allclose(s.positions, si64.structure.positions, rtol=0, atol=1e-7)
    np.testing.assert_allclose(s.cell, si64.structure.cell, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------- errors


def test_bad_format(si64, ops, tmp_path):
    with pytest.raises(ExportError, match=r"unknown export format 'npx'; did you mean 'npz'\?.*dataset, deeph, npz"):
        export_operators(si64.structure, ops, tmp_path / "x", "npx")
    with pytest.raises(ValueError, match="allowed formats"):
        export_operators(si64.structure, ops, tmp_path / "x", "wannier")
    assert FORMATS == ("dataset", "deeph", "npz", "sisl", "wannier90")
    with pytest.raises(ExportError, match="orthogonalize / mesh apply to the wannier90 format only"):
        export_operators(si64.structure, ops, tmp_path / "x", "npz", orthogonalize=True)
    with pytest.raises(ExportError, match="unknown quantity 'hamiltonians'; did you mean 'hamiltonian'"):
        export_operators(si64.structure, {"hamiltonians": ops["hamiltonian"]}, tmp_path / "x", "npz")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt", ["dataset", "deeph", "npz"])  # sisl, wannier90: tests/test_export_tools.py
def test_existing_folder(si64, ops, tmp_path, fmt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists.*overwrite=True"):
        export_operators(si64.structure, {"overlap": ops["overlap"]}, out, fmt)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_operators(si64.structure, {"overlap": ops["overlap"]}, out, fmt, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_npz_crash_leaves_nothing(si64, ops, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_mod.sp, "save_npz", boom)
    with pytest.raises(OSError, match="disk full"):
        export_operators(si64.structure, ops, tmp_path / "npz", "npz")
    assert list(tmp_path.iterdir()) == []


def test_operator_of_other_structure(si64, ops, tmp_path):
    other = si64.structure.repeat((1, 1, 2))
    with pytest.raises(ExportError, match="different structure"):
        export_operators(other, ops, tmp_path / "x", "npz")


def test_npz_quantities_with_different_lattice_vectors(si64, tmp_path):
    """One lattice_vectors.npy for all quantities: the union; missing R are empty blocks."""
    S = si64.overlap
    home = ~S.R.any(axis=1)  # bonds inside the home cell only: R = 0 alone
    D = Operator(S.structure, S.basis, S.onsite, S.i[home], S.j[home], S.R[home], S.offsite[home])
    out = export_operators(si64.structure, {"overlap": S, "density_matrix": D}, tmp_path / "npz", "npz")
    d = load_npz_export(out)
    assert len(d["lattice_vectors"]) == len(S.real_space_sparse()[0]) == 27
    assert sum(m.nnz for m in d["density_matrix"][1:]) == 0
    for q, op in (("overlap", S), ("density_matrix", D)):
        for k, ref in zip(KPTS, op.dense(KPTS)):
            np.testing.assert_allclose(_bloch(d["lattice_vectors"], d[q], k), ref, rtol=0, atol=1e-12)

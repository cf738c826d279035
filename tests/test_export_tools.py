"""Exports to sisl / TBtrans, Wannier90 _hr.dat and PythTB (eqtb.data.export_sisl, eqtb.data.export_tb),
checked with the real packages: bands from sisl, from the _hr.dat read back and from PythTB against
eqtb's band_energies, on real DFT frames (Si64 ABACUS SZP; Si2 ABACUS DZP 2s2p1d with a left-handed cell)
and on zinc-blende GaAs (Ga 2s2p2d1f, As 2s2p1d: two elements, f orbitals) with random operators, real
and complex (complex H(R) pins each tool's k sign: its bands at k are eqtb's at -k)."""

import json
import sys

import numpy as np
import pytest

from eqtb.basis import Basis
from eqtb.bonds import block_key
from eqtb.data.export import ExportError, export_operators
from eqtb.data.folder import TrajectoryFolder
from eqtb.operator import Operator
from eqtb.structure import Structure, build_graph
from eqtb.tb.spectrum import band_energies

sisl = pytest.importorskip("sisl", reason="pip install eqtb[export]")
pythtb = pytest.importorskip("pythtb", reason="pip install eqtb[export]")

from eqtb.data.export_sisl import orbital_signs, read_sisl_export, to_sisl  # noqa: E402
from eqtb.data.export_tb import (  # noqa: E402
    N_CHECK, default_mesh, loewdin, read_hr_dat, tight_binding, to_pythtb)

TOL = 1e-8  # eV, bands of an exact export
RNG_K = np.random.default_rng(7).uniform(-0.5, 0.5, size=(4, 3))
KPTS = np.vstack([[0, 0, 0], [0.5, 0, 0], [0.5, 0.25, 0.75], RNG_K])


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def si64(data_dir):
    return TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0, eigenvalues=False)


@pytest.fixture(scope="module")
def si2(data_dir):
    from eqtb.data.parsers.abacus import AbacusParser

    return AbacusParser(data_dir / "abacus_si_matrix").frame()


def random_operators(basis_spec, complex_=False, r_max=5.0, seed=0, with_overlap=True):
    """Zinc-blende GaAs (a = 5.65 A, primitive fcc cell) with random Hermitian H (eV) and, if asked, a
    positive definite S decaying with distance (S(k) checked on a mesh)."""
    from ase.build import bulk

    s = Structure.from_ase(bulk("GaAs", "zincblende", a=5.65))
    basis = Basis(basis_spec)
    g = build_graph(s, r_max)
    rng = np.random.default_rng(seed)
    norb = basis.norb_of(s.numbers)

    def rand(shape):
        x = rng.uniform(-1, 1, shape)
        return x + 1j * rng.uniform(-1, 1, shape) if complex_ else x

    Hb, Sb = {}, {}
    for a in range(s.natoms):
        h = rand((norb[a], norb[a]))
        Hb[block_key(a, a, (0, 0, 0))] = (h + np.conj(h.T)) + np.diag(rng.uniform(-8, 8, norb[a]))
        Sb[block_key(a, a, (0, 0, 0))] = np.eye(norb[a])
    for i, j, R, d in zip(g.i, g.j, g.R, g.lengths):
        decay = np.exp(-(d - 2.4))
        Hb[block_key(i, j, R)] = 2.0 * decay * rand((norb[i], norb[j]))
        Sb[block_key(i, j, R)] = 0.004 * decay * rand((norb[i], norb[j]))
    H = Operator.from_blocks(s, basis, Hb)
    if not with_overlap:
        return s, H, None
    S = Operator.from_blocks(s, basis, Sb)
    mesh = np.stack(np.meshgrid(*[np.arange(4) / 4] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert np.linalg.eigvalsh(S.dense(mesh)).min() > 0.3
    return s, H, S


GAAS = {"Ga": "2s2p2d1f", "As": "2s2p1d"}


@pytest.fixture(scope="module")
def gaas():
    return random_operators(GAAS)


@pytest.fixture(scope="module")
def gaas_complex():
    return random_operators(GAAS, complex_=True, seed=1)


def _assert_bands(got, ref, tol=TOL):
    err = np.abs(np.asarray(got) - ref).max()
    assert err < tol, f"band error {err:.3e} eV > {tol:.0e}"
    return err


def _hr_bands(d, kpts, sign=-1):
    """Bands of a read _hr.dat: sign=-1 eqtb's Bloch sum, +1 Wannier90's."""
    ph = np.exp(sign * 2j * np.pi * np.asarray(kpts) @ d["Rs"].T) / d["degeneracy"]
    return np.linalg.eigvalsh(np.einsum("kr,rmn->kmn", ph, d["H"]))


# ---------------------------------------------------------------------- sisl


def test_sisl_orbital_convention_is_siesta_signs():
    """sisl's real harmonics (SIESTA's) are eqtb's times (-1)^m for l = 0..3, same m order; the signs
    orbital_signs applies are exactly these."""
    import torch

    from eqtb.so3 import spherical_harmonics

    v = np.random.default_rng(3).normal(size=(30, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    theta, phi = np.arctan2(v[:, 1], v[:, 0]), np.arccos(v[:, 2])
    r = np.linspace(0, 3, 40)
    spec = {"Ga": "1s1p1d1f"}
    s = Structure([31], [[0, 0, 0]])
    signs = orbital_signs(s, Basis(spec))
    k = 0
    for l in range(4):
        eq = spherical_harmonics(l, torch.tensor(v)).numpy() / np.sqrt(4 * np.pi)  # orthonormal
        orb = sisl.SphericalOrbital(l, (r, np.exp(-r)))
        for m in range(-l, l + 1):
            np.testing.assert_allclose(orb.spher(theta, phi, m=m), signs[k] * eq[:, m + l], rtol=0, atol=1e-12)
            assert signs[k] == (-1) ** abs(m)
            k += 1


def test_sisl_si64_real_dft(si64):
    H, S = si64.hamiltonian, si64.overlap
    sh = to_sisl(H, S)
    assert not sh.orthogonal and sh.no == H.norb == 256 and sh.na == 64
    assert sh.geometry.nsc.tolist() == [3, 3, 3]
    np.testing.assert_allclose(sh.geometry.cell, si64.structure.cell, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sh.geometry.xyz, si64.structure.positions, rtol=0, atol=1e-12)
    orbs = sh.geometry.atoms[0].orbitals
    assert [(o.l, o.m) for o in orbs] == [(0, 0), (1, -1), (1, 0), (1, 1)]
    assert [o.name() for o in orbs] == ["1sZ1", "2pyZ1", "2pzZ1", "2pxZ1"]
    ref = band_energies(H, S, KPTS)
    got = np.array([sh.eigh(k) for k in KPTS])
    err = _assert_bands(got, ref)
    print(f"sisl Si64 max band error {err:.2e} eV")
    # the matrices themselves: sisl's H(-k) (lattice gauge) is eqtb's H(k) with the odd-m signs
    sg = orbital_signs(si64.structure, H.basis)
    for k in KPTS[[2, 4]]:
        np.testing.assert_allclose(sh.Hk(-k, gauge="lattice").toarray(), H.dense(k)[0] * np.outer(sg, sg),
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(sh.Sk(-k, gauge="lattice").toarray(), S.dense(k)[0] * np.outer(sg, sg),
                                   rtol=0, atol=1e-12)


def test_sisl_folder_round_trip_si2_d_orbitals(si2, tmp_path):
    """Real ABACUS DZP frame (2s2p1d, R up to 3, left-handed fcc cell): TSHS written and read back."""
    ops = {"hamiltonian": si2.hamiltonian, "overlap": si2.overlap}
    out = export_operators(si2.structure, ops, tmp_path / "sisl", "sisl", fermi_level=2.5)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "geometry.fdf", "hamiltonian.TSHS"]
    info = json.loads((out / "export.json").read_text())
    assert info["fermi_level_eV"] == 2.5 and info["orthogonal"] is False and info["nsc"] == [7, 7, 7]
    back = read_sisl_export(out)
    assert not back.orthogonal and back.no == 26
    names = [o.name() for o in back.geometry.atoms[0].orbitals]
    assert names[:2] == ["1sZ1", "1sZ2"] and names[-5:] == ["3dxyZ1", "3dyzZ1", "3dz2Z1", "3dxzZ1", "3dx2-y2Z1"]
    ref = band_energies(si2.hamiltonian, si2.overlap, KPTS)
    err = _assert_bands([back.eigh(k) for k in KPTS], ref)
    print(f"sisl TSHS Si2 (2s2p1d) max band error {err:.2e} eV")
    # what TBtrans reads: the TSHS file alone, with sisl's own reader
    plain = sisl.io.siesta.tshsSileSiesta(str(out / "hamiltonian.TSHS")).read_hamiltonian()
    _assert_bands([plain.eigh(k) for k in KPTS], ref)


def test_sisl_two_elements_f_orbitals(gaas, tmp_path):
    s, H, S = gaas
    out = export_operators(s, {"hamiltonian": H, "overlap": S}, tmp_path / "gaas", "sisl")
    back = read_sisl_export(out)
    assert [a.tag for a in back.geometry.atoms.atom] == ["Ga", "As"]
    ga = back.geometry.atoms[0].orbitals
    assert len(ga) == 25 and [(o.l, o.m, o.zeta) for o in ga[-7:]] == [(3, m, 1) for m in range(-3, 4)]
    ref = band_energies(H, S, KPTS)
    err = _assert_bands([back.eigh(k) for k in KPTS], ref)
    print(f"sisl TSHS GaAs max band error {err:.2e} eV")
    orth = to_sisl(H)  # no S: an orthogonal sisl Hamiltonian
    assert orth.orthogonal and orth.dtype == np.float64
    ref = band_energies(H, None, KPTS)
    _assert_bands([orth.eigh(k) for k in KPTS], ref)
    back = read_sisl_export(export_operators(s, {"hamiltonian": H}, tmp_path / "orth", "sisl"))
    assert back.orthogonal and json.loads((tmp_path / "orth" / "export.json").read_text())["orthogonal"]
    _assert_bands([back.eigh(k) for k in KPTS], ref)


def test_sisl_k_sign_with_complex_operators(gaas_complex, tmp_path):
    s, H, S = gaas_complex
    sh = to_sisl(H, S)
    at_k, at_minus_k = band_energies(H, S, KPTS), band_energies(H, S, -KPTS)
    assert np.abs(at_k - at_minus_k).max() > 0.1  # complex H(R): k and -k differ, the test has teeth
    _assert_bands([sh.eigh(k) for k in KPTS], at_minus_k)
    with pytest.raises(ExportError, match="TSHS file holds real matrices only"):
        export_operators(s, {"hamiltonian": H, "overlap": S}, tmp_path / "c", "sisl")
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------- Wannier90 _hr.dat


def test_hr_dat_orthogonal_exact(tmp_path):
    s, H, _ = random_operators(GAAS, with_overlap=False, seed=2)
    out = export_operators(s, {"hamiltonian": H}, tmp_path / "w90", "wannier90", fermi_level=1.25)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "wannier90.win", "wannier90_centres.xyz",
                                                     "wannier90_hr.dat"]
    lines = (out / "wannier90_hr.dat").read_text().splitlines()
    n, nR = int(lines[1]), int(lines[2])
    assert n == H.norb == 38 and "E_F = 1.250000 eV" in lines[0]
    deg_lines = -(-nR // 15)
    assert [len(x.split()) for x in lines[3:3 + deg_lines]] == [15] * (nR // 15) + ([nR % 15] if nR % 15 else [])
    first = lines[3 + deg_lines].split()
    assert first[:5] == ["0", "0", "0", "1", "1"] and lines[4 + deg_lines].split()[3:5] == ["2", "1"]  # m fast
    assert len(lines) == 3 + deg_lines + nR * n * n
    d = read_hr_dat(out / "wannier90_hr.dat")
    assert (d["degeneracy"] == 1).all() and not d["Rs"][0].any()
    Rs, mats = H.real_space_sparse()
    np.testing.assert_array_equal(d["Rs"], Rs)
    for r in (0, 3):
        np.testing.assert_allclose(d["H"][r], mats[r].toarray(), rtol=0, atol=1e-12)
    ref = band_energies(H, None, KPTS)
    err = _assert_bands(_hr_bands(d, KPTS), ref)
    _assert_bands(_hr_bands(d, -KPTS, sign=+1), ref)  # Wannier90's sign at -k
    info = json.loads((out / "export.json").read_text())
    assert info["orthogonalized"] is False and info["orthogonalization"] is None and info["num_wann"] == 38
    assert info["lattice_vectors_negated"] is False and info["fermi_level_eV"] == 1.25
    assert info["elements"]["Ga"][-7:] == ["1f_m-3", "1f_m-2", "1f_m-1", "1f_m0", "1f_m1", "1f_m2", "1f_m3"]
    print(f"_hr.dat GaAs (orthogonal) max band error {err:.2e} eV")


def test_hr_dat_complex_k_sign(tmp_path):
    s, H, _ = random_operators(GAAS, complex_=True, with_overlap=False, seed=3)
    out = export_operators(s, {"hamiltonian": H}, tmp_path / "w90", "wannier90")
    d = read_hr_dat(out / "wannier90_hr.dat")
    assert np.abs(d["H"].imag).max() > 0.1
    _assert_bands(_hr_bands(d, KPTS, sign=+1), band_energies(H, None, -KPTS))  # Wannier90 at k = eqtb at -k


def test_hr_dat_overlap_needs_orthogonalize(si2, tmp_path):
    ops = {"hamiltonian": si2.hamiltonian, "overlap": si2.overlap}
    with pytest.raises(ExportError, match="orthogonal basis but an overlap S is given; pass orthogonalize=True"):
        export_operators(si2.structure, ops, tmp_path / "w", "wannier90")
    with pytest.raises(ExportError, match="N = 1 along non-periodic"):
        slab = Structure(si2.structure.numbers, si2.structure.positions, si2.structure.cell, [True, True, False])
        fields = ("onsite", "i", "j", "R", "offsite")
        H, S = (Operator(slab, op.basis, *[getattr(op, f) for f in fields]) for op in (si2.hamiltonian, si2.overlap))
        loewdin(H, S, (2, 2, 2))
    assert not (tmp_path / "w").exists()


def test_hr_dat_loewdin_si2_real_dft(si2, tmp_path):
    """Real ABACUS DZP Si2 (left-handed cell: written as -a_i, -R): exact at the mesh, the measured
    error between mesh points in export.json, reproduced from the file."""
    H, S = si2.hamiltonian, si2.overlap
    assert default_mesh(si2.structure) == (8, 8, 8)  # 30 A supercell of the 3.82 A fcc cell
    with pytest.warns(UserWarning, match=r"8x8x8 mesh: bands between the mesh points are off by up to 0\.04"):
        out = export_operators(si2.structure, {"hamiltonian": H, "overlap": S}, tmp_path / "w90", "wannier90",
                               orthogonalize=True, mesh=(8, 8, 8))
    info = json.loads((out / "export.json").read_text())
    assert info["lattice_vectors_negated"] is True and info["orthogonalized"] is True
    o = info["orthogonalization"]
    assert o["mesh"] == [8, 8, 8] and len(o["error_measured_at"]) == N_CHECK
    cell = np.array(info["cell"])
    np.testing.assert_allclose(cell, -si2.structure.cell, rtol=0, atol=1e-12)
    d = read_hr_dat(out / "wannier90_hr.dat")
    assert d["num_wann"] == 26 and np.abs(d["H"].imag).max() == 0
    # on the negated lattice the file's R are -R: eqtb's sign at -k there is eqtb's H at k
    mesh_k = np.array([[0, 0, 0], [0.125, 0.5, 0.75], [0.375, 0.625, 0.875], [0.5, 0.5, 0.5]])
    err_mesh = _assert_bands(_hr_bands(d, -mesh_k), band_energies(H, S, mesh_k))
    check = np.array(o["error_measured_at"])
    err_off = np.abs(_hr_bands(d, -check) - band_energies(H, S, check)).max()
    assert abs(err_off - o["max_band_error_eV"]) < 1e-9
    assert err_off < 0.1  # measured 0.046 eV (all 26 bands up to 80 eV; DZP's diffuse basis decays slowly)
    print(f"_hr.dat Si2 Loewdin 8x8x8: mesh error {err_mesh:.2e} eV, off-mesh {err_off:.3e} eV")


def test_loewdin_si64_mesh_convergence(si64):
    """Real Si64 SZP frame: exact on the mesh; between mesh points 2x2x2 (21.8 A supercell) and 3x3x3
    (32.7 A) measured 1.7e-3 and 2.3e-5 eV (all 256 bands)."""
    H, S = si64.hamiltonian, si64.overlap
    tb2 = tight_binding(H, S, orthogonalize=True, mesh=2)
    assert tb2.mesh == (2, 2, 2) and tb2.mats.dtype == np.float64
    mesh_k = np.array([[0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0.5]])
    _assert_bands(tb2.bands(mesh_k), band_energies(H, S, mesh_k))
    idx = {tuple(R): r for r, R in enumerate(tb2.Rs.tolist())}
    for r, R in enumerate(tb2.Rs.tolist()):  # Hermitian model: H(-R) = H(R)^T
        np.testing.assert_allclose(tb2.mats[idx[tuple(-x for x in R)]], tb2.mats[r].T, rtol=0, atol=1e-13)
    tb3 = loewdin(H, S, 3)
    ref = band_energies(H, S, RNG_K)
    e2, e3 = (np.abs(t.bands(RNG_K) - ref).max() for t in (tb2, tb3))
    assert tb2.max_error_eV < 5e-3 and tb3.max_error_eV < 1e-4
    assert e2 < 5e-3 and e3 < 1e-4 and e3 < e2 / 10
    print(f"Loewdin Si64: 2x2x2 {tb2.max_error_eV:.2e} (random k {e2:.2e}) eV, "
          f"3x3x3 {tb3.max_error_eV:.2e} (random k {e3:.2e}) eV")


# ---------------------------------------------------------------------- PythTB


def test_pythtb_si64_loewdin(si64):
    H, S = si64.hamiltonian, si64.overlap
    with pytest.raises(ExportError, match="pass orthogonalize=True"):
        to_pythtb(H, S)
    model = to_pythtb(H, S, orthogonalize=True, mesh=2)
    assert model.get_num_orbitals() == 256
    np.testing.assert_allclose(model.get_orb()[:4], np.repeat(si64.structure.positions[:1] @ np.linalg.inv(
        si64.structure.cell), 4, axis=0), rtol=0, atol=1e-12)
    mesh_k = np.array([[0, 0, 0], [0.5, 0.5, 0]])
    err = _assert_bands(model.solve_all(mesh_k).T, band_energies(H, S, mesh_k))
    off = RNG_K[:1]
    assert np.abs(model.solve_all(off).T - band_energies(H, S, off)).max() < 5e-3
    assert model.eqtb_tight_binding.max_error_eV < 5e-3
    print(f"PythTB Si64 (Loewdin 2x2x2) mesh band error {err:.2e} eV")


def test_pythtb_complex_two_elements_and_k_sign():
    s, H, _ = random_operators(GAAS, complex_=True, with_overlap=False, seed=4)
    model = to_pythtb(H)
    got = model.solve_all(KPTS).T
    _assert_bands(got, band_energies(H, None, -KPTS))  # PythTB at k = eqtb at -k
    assert np.abs(got - band_energies(H, None, KPTS)).max() > 0.1


def test_pythtb_left_handed_cell_real_dft(si2):
    """PythTB refuses left-handed cells: the model uses -a_i and -R; bands still eqtb's."""
    with pytest.warns(UserWarning, match="off by up to"):
        model = to_pythtb(si2.hamiltonian, si2.overlap, orthogonalize=True, mesh=4)
    assert np.linalg.det(model.get_lat()) > 0
    mesh_k = np.array([[0, 0, 0], [0.25, 0.5, 0.75]])
    _assert_bands(model.solve_all(mesh_k).T, band_energies(si2.hamiltonian, si2.overlap, mesh_k))


def test_wannier90_folder_read_by_pythtb(tmp_path):
    """The export folder is what PythTB's own Wannier90 reader (pythtb.w90) takes."""
    s, H, _ = random_operators({"Ga": "1s1p", "As": "1s1p"}, complex_=True, r_max=4.5, with_overlap=False, seed=5)
    out = export_operators(s, {"hamiltonian": H}, tmp_path / "w90", "wannier90")
    model = pythtb.w90(str(out), "wannier90").model()
    np.testing.assert_allclose(model.get_lat(), s.cell, rtol=0, atol=1e-9)
    _assert_bands(model.solve_all(KPTS).T, band_energies(H, None, -KPTS))


def test_molecule_without_cell(tmp_path):
    """No cell, no periodicity: a box cell for sisl / PythTB, nsc 1, R = 0 only, Gamma only."""
    s = Structure([8, 1, 1], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    basis = Basis({"O": "2s2p1d", "H": "2s1p"})
    rng = np.random.default_rng(6)
    norb = basis.norb_of(s.numbers)
    Hb, Sb = {}, {}
    for i in range(3):
        for j in range(i, 3):
            h = rng.normal(size=(norb[i], norb[j]))
            Hb[block_key(i, j, (0, 0, 0))] = h + h.T if i == j else h
            Sb[block_key(i, j, (0, 0, 0))] = np.eye(norb[i]) if i == j else 0.05 * rng.normal(size=(norb[i], norb[j]))
    H, S = Operator.from_blocks(s, basis, Hb), Operator.from_blocks(s, basis, Sb)
    ref = band_energies(H, S, [[0, 0, 0]])[0]
    back = read_sisl_export(export_operators(s, {"hamiltonian": H, "overlap": S}, tmp_path / "sisl", "sisl"))
    assert back.geometry.nsc.tolist() == [1, 1, 1] and abs(np.linalg.det(back.geometry.cell)) > 100
    _assert_bands(back.eigh(), ref)
    out = export_operators(s, {"hamiltonian": H, "overlap": S}, tmp_path / "w90", "wannier90", orthogonalize=True)
    d = read_hr_dat(out / "wannier90_hr.dat")
    assert d["Rs"].tolist() == [[0, 0, 0]]
    assert json.loads((out / "export.json").read_text())["orthogonalization"]["max_band_error_eV"] < 1e-10
    _assert_bands(np.linalg.eigvalsh(d["H"][0]), ref)
    _assert_bands(to_pythtb(H, S, orthogonalize=True).solve_all(), ref)


# ---------------------------------------------------------------------- API, errors


def test_prediction_export_and_existing_folder(gaas, tmp_path):
    from eqtb.predict import Prediction

    s, H, S = gaas
    pred = Prediction(s, {"hamiltonian": H, "overlap": S})
    out = pred.export(tmp_path / "w", fmt="wannier90", orthogonalize=True, mesh=6)
    o = json.loads((out / "export.json").read_text())["orthogonalization"]
    assert o["mesh"] == [6, 6, 6] and o["max_band_error_eV"] < 1e-3
    for fmt, kw in (("sisl", {}), ("wannier90", {"orthogonalize": True, "mesh": 6})):
        target = tmp_path / f"keep_{fmt}"
        target.mkdir()
        (target / "keep.txt").write_text("mine")
        with pytest.raises(ExportError, match="already exists"):
            pred.export(target, fmt=fmt, **kw)
        assert [p.name for p in target.iterdir()] == ["keep.txt"]
        pred.export(target, fmt=fmt, overwrite=True, **kw)
        assert not (target / "keep.txt").exists()
    with pytest.raises(ExportError, match="no 'hamiltonian' given"):
        export_operators(s, {"overlap": S}, tmp_path / "x", "sisl")
    with pytest.warns(UserWarning, match="density matrix is not written"):
        export_operators(s, {"hamiltonian": H, "density_matrix": S}, tmp_path / "dm", "wannier90")


def test_missing_optional_dependency(gaas, tmp_path, monkeypatch):
    s, H, S = gaas
    monkeypatch.setitem(sys.modules, "sisl", None)
    monkeypatch.setitem(sys.modules, "pythtb", None)
    with pytest.raises(ExportError, match=r"pip install eqtb\[export\]"):
        export_operators(s, {"hamiltonian": H, "overlap": S}, tmp_path / "x", "sisl")
    with pytest.raises(ExportError, match=r"pip install eqtb\[export\]"):
        to_pythtb(H)
    assert not (tmp_path / "x").exists()

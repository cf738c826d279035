"""Generalized eigenproblem, Fermi level, band gap, DOS and PDOS on real Si64 ABACUS blocks."""

import json

import numpy as np
import pytest
import scipy.linalg as sla
from toy_models import silicon_primitive, sp_model

from eqtb.data.folder import TrajectoryFolder
from eqtb.tb.kpath import from_task, monkhorst_pack
from eqtb.tb.spectrum import (ElectronicStructure, FermiLevel, SpectrumError, band_energies, band_gap,
                              dos, dos_energies, eigh, electron_count, fermi_level,
                              mulliken_weights, n_electrons, occupied_bands, orbital_groups, pdos,
                              projected_dos, resolve_fermi_level)


@pytest.fixture(scope="module")
def si64(data_dir):
    fr = TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0, density_matrix=False, eigenvalues=False)
    return fr.hamiltonian, fr.overlap


@pytest.fixture(scope="module")
def path_kpts(data_dir, si64):
    task = json.loads((data_dir / "si64_abacus" / "band.json").read_text())["task_options"]
    return from_task(task, si64[0].structure).kpts


@pytest.fixture(scope="module")
def mesh_eigs(si64):
    """Eigenvalues on the time-reversal-reduced 3x3x3 mesh (14 k-points)."""
    H, S = si64
    k, w = monkhorst_pack((3, 3, 3), time_reversal=True)
    return k, w, band_energies(H, S, k)


def test_hk_sk_hermitian_and_s_positive_on_band_path(si64, path_kpts):
    H, S = si64
    assert H.norb == 256
    for a in range(0, len(path_kpts), 48):
        k = path_kpts[a:a + 48]
        Hk, Sk = H.dense(k), S.dense(k)
        assert Hk.dtype == np.complex128
        np.testing.assert_allclose(Hk, np.conj(np.swapaxes(Hk, 1, 2)), atol=1e-12)
        np.testing.assert_allclose(Sk, np.conj(np.swapaxes(Sk, 1, 2)), atol=1e-12)
        smin = np.linalg.eigvalsh(Sk)[:, 0]
        assert smin.min() > 1e-3, smin.min()


def test_eigh_matches_scipy_and_vectors(si64, path_kpts):
    H, S = si64
    k = path_kpts[[0, 7, 30, 77]]
    Hk, Sk = H.dense(k), S.dense(k)
    w = eigh(Hk, Sk)
    w2, c = eigh(Hk, Sk, vectors=True)
    assert w.shape == (4, 256) and c.shape == (4, 256, 256)
    for n in range(len(k)):
        ref = sla.eigh(Hk[n], Sk[n], eigvals_only=True)
        np.testing.assert_allclose(w[n], ref, atol=1e-9)
        np.testing.assert_allclose(w2[n], ref, atol=1e-9)
        # H c = E S c, bands on the last axis, and c^dagger S c = I
        np.testing.assert_allclose(Hk[n] @ c[n], (Sk[n] @ c[n]) * w2[n][None, :], atol=1e-8)
        np.testing.assert_allclose(np.conj(c[n].T) @ Sk[n] @ c[n], np.eye(256), atol=1e-9)
    # orthogonal problem
    w0 = eigh(Hk[0])
    np.testing.assert_allclose(w0, np.linalg.eigvalsh(Hk[0]), atol=1e-10)


def test_eigh_small_batched_branch():
    """Small matrices take the batched numpy route: same results and conventions."""
    H, S = sp_model(silicon_primitive())
    k = np.random.default_rng(1).random((9, 3))
    Hk, Sk = H.dense(k), S.dense(k)
    w, c = eigh(Hk, Sk, vectors=True)
    for n in range(len(k)):
        np.testing.assert_allclose(w[n], sla.eigh(Hk[n], Sk[n], eigvals_only=True), atol=1e-10)
        np.testing.assert_allclose(Hk[n] @ c[n], (Sk[n] @ c[n]) * w[n], atol=1e-10)
        np.testing.assert_allclose(np.conj(c[n].T) @ Sk[n] @ c[n], np.eye(8), atol=1e-10)
    single = eigh(Hk[3], Sk[3])
    assert single.shape == (8,)
    np.testing.assert_allclose(single, w[3])


@pytest.mark.parametrize("n", [8, 64])
def test_eigh_not_positive_definite_names_kpoint(n):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, n, n)) + 1j * rng.normal(size=(3, n, n))
    Hk = A + np.conj(np.swapaxes(A, 1, 2))
    Sk = np.broadcast_to(np.eye(n, dtype=complex), (3, n, n)).copy()
    Sk[1, 0, 0] = -0.5
    with pytest.raises(SpectrumError, match=r"k-point 1 \(k = \[0.25, 0.0, 0.0\]\).*smallest eigenvalue -5"):
        eigh(Hk, Sk, kpts=[[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0]])


def test_fermi_level_si64(si64, mesh_eigs):
    H, _ = si64
    _, w, e = mesh_eigs
    nel = n_electrons(H.structure, {"Si": 4})
    assert nel == 256
    res = fermi_level(e, w, nel)
    assert res.converged
    assert electron_count(e, w, res.mu) == pytest.approx(256, abs=1e-8)
    assert abs(res.count - 256) < 1e-10
    # 128 bands exactly filled: mu between the band edges, the insulator data filled in
    assert e[:, 127].max() < res.mu < e[:, 128].min()
    assert res.insulating and res.gap == pytest.approx(e[:, 128].min() - e[:, 127].max())
    assert res.vbm < res.midgap < res.cbm
    # gaussian smearing, and a non-integer count (metal-like): count still exact
    g = fermi_level(e, w, 255.3, smearing="gaussian", kT=0.1)
    assert electron_count(e, w, g.mu, smearing="gaussian", kT=0.1) == pytest.approx(255.3, abs=1e-8)
    assert not g.insulating
    with pytest.raises(SpectrumError, match="do not fit"):
        fermi_level(e, w, 600)
    with pytest.raises(SpectrumError, match="no entry for"):
        n_electrons(H.structure, {"Ge": 4})


def test_gap_si64_plausible(si64, path_kpts):
    H, S = si64
    e = band_energies(H, S, path_kpts[::4])
    gap = band_gap(e, 128)
    # ABACUS SZP (1s1p) Si: gap positive and of the order of eV (minimal basis overestimates it)
    assert 0.5 < gap["gap"] < 3.0
    assert gap["direct_gap"] >= gap["gap"] - 1e-12
    assert 10.0 < gap["valence_bandwidth"] < 14.0


def test_band_gap_direct_indirect():
    e = np.array([[-1.0, 1.0], [-0.5, 0.8], [-0.9, 0.2]])
    g = band_gap(e, 1)
    assert g["vbm"] == -0.5 and g["cbm"] == 0.2 and g["gap"] == pytest.approx(0.7)
    assert not g["direct"] and g["k_vbm"] == 1 and g["k_cbm"] == 2 and g["direct_gap"] == pytest.approx(1.1)
    g2 = band_gap(e[:2], 1)
    assert g2["direct"] and g2["k_vbm"] == g2["k_cbm"] == 1
    assert g["gap_type"] == "indirect" and g2["gap_type"] == "direct"
    assert band_gap(np.array([[-1.0, 0.1], [0.3, 0.9]]), 1)["gap_type"] == "metal"


def test_occupied_bands():
    assert occupied_bands(256) == 128 and occupied_bands(256, 256) == 128
    assert occupied_bands(255) is None  # a partly filled band
    assert occupied_bands(256, 128) is None  # all bands filled: no gap to look for above
    assert occupied_bands(0) is None and occupied_bands(6, spin_degeneracy=1) == 6


def test_dos_energies_window():
    eigs = np.array([[-2.0, 1.0], [-1.5, 3.0]])
    e = dos_energies(eigs, 0.1, 11)
    assert e[0] == pytest.approx(-2.0 - 1.0) and e[-1] == pytest.approx(3.0 + 1.0) and len(e) == 11
    e = dos_energies(eigs, 0.1, 5, emin=-1.0, emax=2.0, e_fermi=0.5)  # relative to E_F
    np.testing.assert_allclose(e[[0, -1]], [-0.5, 2.5])
    e = dos_energies(eigs, 0.1, 5, emax=2.0)  # no Fermi level: absolute
    assert e[-1] == 2.0 and e[0] == pytest.approx(-3.0)
    with pytest.raises(SpectrumError, match="empty energy window: emin 1 >= emax -1"):
        dos_energies(eigs, 0.1, 5, emin=1.0, emax=-1.0, e_fermi=4.0)


class _Solver:
    """A FermiSolver that records its calls and returns a fixed level (eV)."""

    def __init__(self, mu=1.25):
        self.mu, self.calls = mu, []

    def __call__(self, n):
        self.calls.append(n)
        return FermiLevel(self.mu, n, n, 2, "fermi-dirac", 0.0258), "2x2x2 mesh"


def test_resolve_fermi_level_priorities():
    """DeePTB's precedence, the command line above the task: --e-fermi > --nel-atom (computed) >
    task E_fermi > task nel_atom (computed) > none. A given level keeps the computed one beside
    it (estimate); the warning when --nel-atom overrides a task E_fermi; the solver runs once
    whenever an electron count is known and never otherwise."""
    st = silicon_primitive()
    solve = _Solver()
    c = resolve_fermi_level(st, solve, e_fermi=0.5, nel_atom={"Si": 4}, task_e_fermi=0.0)
    assert (c.value, c.source, c.n_electrons, c.warnings) == (0.5, "--e-fermi", 8.0, [])
    assert (c.estimate, c.estimate_source) == (1.25, "nel_atom, 2x2x2 mesh") and isinstance(c.result, FermiLevel)
    assert solve.calls == [8.0]
    # DeePTB: a task's E_fermi wins over the task's nel_atom, whose level is the estimate
    c = resolve_fermi_level(st, solve, task_e_fermi=0.0, task_nel_atom={"Si": 4})
    assert (c.value, c.source, c.n_electrons, c.warnings) == (0.0, "task E_fermi", 8.0, [])
    assert (c.estimate, c.estimate_source) == (1.25, "nel_atom, 2x2x2 mesh")
    # electrons given on the command line win over the task's E_fermi, with a warning
    c = resolve_fermi_level(st, solve, nel_atom={"Si": 4}, task_e_fermi=0.0, task_nel_atom={"Si": 3})
    assert c.value == 1.25 and c.source == "nel_atom, 2x2x2 mesh" and c.n_electrons == 8.0
    assert c.estimate is None and c.warnings == ["task E_fermi = 0.0 ignored: the Fermi level is computed from nel_atom"]
    c = resolve_fermi_level(st, solve, task_nel_atom={"Si": 4})
    assert c.value == 1.25 and c.source == "nel_atom, 2x2x2 mesh" and c.warnings == [] and c.estimate is None
    assert solve.calls == [8.0] * 4
    c = resolve_fermi_level(st, solve, task_e_fermi=-3)
    assert (c.value, c.source, c.n_electrons, c.result, c.warnings, c.estimate) == (-3.0, "task E_fermi", None, None, [], None)
    c = resolve_fermi_level(st, solve, e_fermi=2)
    assert (c.value, c.source, c.result, c.estimate) == (2.0, "--e-fermi", None, None)
    c = resolve_fermi_level(st, solve)
    assert c.value is None and c.source is None
    assert solve.calls == [8.0] * 4
    with pytest.raises(SpectrumError, match="no entry for"):
        resolve_fermi_level(st, solve, nel_atom={"Ge": 4})
    with pytest.raises(SpectrumError, match="no entry for"):
        resolve_fermi_level(st, solve, task_e_fermi=0.0, task_nel_atom={"Ge": 4})


def test_mesh_fermi_solver_matches_fermi_level(si64):
    """The dense route's solver: fermi_level on the (cached) time-reversal-reduced mesh."""
    H, S = si64
    es = ElectronicStructure(H, S)
    for gamma in (True, False):
        c = resolve_fermi_level(H.structure, es.fermi_solver((2, 2, 2), gamma), nel_atom={"Si": 4})
        k, w = monkhorst_pack((2, 2, 2), gamma_centered=gamma, time_reversal=True)
        ref = fermi_level(band_energies(H, S, k), w, 256)
        assert c.value == pytest.approx(ref.mu, abs=1e-12) and c.result.gap == pytest.approx(ref.gap)
        assert c.source == "nel_atom, 2x2x2 mesh"


def test_real_kpoints_use_the_real_solver_same_eigenvalues(si64):
    """At Gamma and zone-boundary points H(k), S(k) are real up to rounding and are solved as
    real matrices; eigenvalues and S-orthonormal vectors as with the complex solver."""
    H, S = si64
    k = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.1, 0.2, 0.3]])
    Hk, Sk = H.dense(k), S.dense(k)
    assert 0 < np.abs(Hk[1].imag).max() < 1e-14  # rounding only at the zone boundary
    w, c = eigh(Hk, Sk, vectors=True)
    for n in range(len(k)):
        np.testing.assert_allclose(w[n], sla.eigh(Hk[n], Sk[n], eigvals_only=True), atol=1e-9)
        np.testing.assert_allclose(Hk[n] @ c[n], (Sk[n] @ c[n]) * w[n], atol=1e-8)
        np.testing.assert_allclose(np.conj(c[n].T) @ Sk[n] @ c[n], np.eye(256), atol=1e-9)


def test_band_energies_workers(si64, path_kpts):
    """Worker processes give the same eigenvalues as the in-process loop."""
    H, S = si64
    k = path_kpts[::24]
    np.testing.assert_array_equal(band_energies(H, S, k, workers=2), band_energies(H, S, k))


def test_dos_integral_and_time_reversal(si64, mesh_eigs):
    H, S = si64
    k, w, e = mesh_eigs
    energies = np.linspace(e.min() - 1, e.max() + 1, 4001)
    d = dos(e, w, energies, sigma=0.1)
    assert np.trapezoid(d, energies) == pytest.approx(2 * 256, rel=1e-6)
    # the full 3x3x3 mesh (27 points) gives the same DOS as the reduced one (14 points)
    kf, wf = monkhorst_pack((3, 3, 3), time_reversal=False)
    ef = band_energies(H, S, kf)
    np.testing.assert_allclose(dos(ef, wf, energies, 0.1), d, atol=1e-9 * d.max())


def test_pdos_sums_to_dos(si64):
    H, S = si64
    k, w = monkhorst_pack((2, 2, 2), time_reversal=True)
    energies = np.linspace(-8, 22, 1201)
    for kind, ngroups in [("atom", 64), ("shell", 2), ("orbital", 4), ("element", 1)]:
        total, labels, proj, eigs = projected_dos(H, S, k, w, energies, 0.1, kind)
        assert len(labels) == ngroups == proj.shape[0]
        np.testing.assert_allclose(proj.sum(0), total, atol=1e-10 * total.max())
        np.testing.assert_allclose(total, dos(eigs, w, energies, 0.1), atol=1e-10 * total.max())
        if kind == "shell":
            assert labels == ["Si 1s", "Si 1p"]
            # valence bottom is s-like, the p shell carries most states overall
            assert proj[1].sum() > proj[0].sum()
    # Mulliken weights of every state sum to one
    _, c = eigh(H.dense(k[:2]), S.dense(k[:2]), vectors=True)
    mw = mulliken_weights(c, S.dense(k[:2]))
    np.testing.assert_allclose(mw.sum(-1), 1.0, atol=1e-10)
    labels, group = orbital_groups(H, "orbital")
    assert labels == ["Si 1s", "Si 1p_y", "Si 1p_z", "Si 1p_x"] and group[:8].tolist() == [0, 1, 2, 3] * 2


def test_electronic_structure_wrapper():
    H, S = sp_model(silicon_primitive())
    es = ElectronicStructure(H, S)
    f = es.fermi({"Si": 4}, (6, 6, 6))
    assert f.insulating and f.vbm < f.mu < f.cbm
    energies = np.linspace(-20, 15, 2001)
    total, labels, proj = es.pdos((4, 4, 4), energies, 0.2, kind="atom")
    assert labels == ["Si0", "Si1"]
    np.testing.assert_allclose(proj[0], proj[1], atol=1e-9 * total.max())  # the two atoms are equivalent
    np.testing.assert_allclose(es.dos((4, 4, 4), energies, 0.2), total, atol=1e-10 * total.max())
    with pytest.raises(SpectrumError, match="sigma"):
        dos(np.zeros((1, 2)), [1.0], energies, 0.0)
    with pytest.raises(SpectrumError, match="unknown PDOS projection"):
        orbital_groups(H, "spin")
    with pytest.raises(SpectrumError, match="do not match"):
        pdos(np.zeros((2, 8)), [0.5, 0.5], np.zeros((2, 7, 1)), energies)

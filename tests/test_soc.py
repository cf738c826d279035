"""Spin-orbit coupling of the nnsk family: the L and L.S matrices in eqtb's real harmonics, the
spinful operator (H(k) twice the size, DeePTB's spin-major order), its physics on real structures
(Hermiticity, time reversal and Kramers pairs, rotations, the j = l +- 1/2 splitting), DeePTB's soc
options, training of the strengths on DeePTB's hBN band data, and prediction through eqtb.load /
eqtb run."""

import json

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from ase.io import read
from scipy.spatial.transform import Rotation

import eqtb
from eqtb.basis import Basis
from eqtb.cli import main
from eqtb.models.assembly import to_operators
from eqtb.models.base import ModelError
from eqtb.models.inputs import ModelInputs
from eqtb.models.sk import SlaterKoster
from eqtb.models.testing import random_orthogonal, time_reversal_errors
from eqtb.predict import Predictor, load_model
from eqtb.quantities import SPIN_ORBIT
from eqtb.so3 import PAULI, angular_momentum, spherical_harmonics, spin_orbit_matrix, wigner_D
from eqtb.structure import Structure, build_graph
from eqtb.tb.spectrum import ElectronicStructure, band_energies
from eqtb.train.data import load_samples, make_batch
from eqtb.train.loss import EigvalsLoss
from eqtb.train.checkpoint import CheckpointError

HBN = {"B": ["2s", "2p"], "N": ["2s", "2p"]}
SI_SPD = {"Si": ["3s", "3p", "d*"]}
POWERLAW = {"method": "powerlaw", "rs": 1.6, "w": 0.3}


# ------------------------------------------------------------------------ L and L.S (core)
@pytest.mark.parametrize("l", [1, 2, 3])
def test_angular_momentum_is_minus_i_r_cross_grad_on_eqtbs_harmonics(l):
    """<Y_m'| L_a |Y_m> from the Wigner-D equals the action of -i (r x grad) on eqtb's own harmonic
    polynomials (autograd at random points, solved for the matrix), and L is an angular momentum."""
    rng = np.random.default_rng(l)
    r = torch.tensor(rng.normal(size=(40, 3)), requires_grad=True)
    Y = spherical_harmonics(l, r, normalize=False)  # (40, 2l+1) homogeneous polynomials
    grads = torch.stack([torch.autograd.grad(Y[:, m].sum(), r, retain_graph=True)[0] for m in range(2 * l + 1)], 1)
    LY = -1j * torch.linalg.cross(r[:, None, :].expand_as(grads), grads, dim=-1).detach().numpy()  # (40, 2l+1, 3)
    Ynp = Y.detach().numpy()
    L = angular_momentum(l)
    for a in range(3):
        # (L_a Y_m)(r) = sum_m' Y_m'(r) L[a][m', m]
        M = np.linalg.lstsq(Ynp.astype(complex), LY[:, :, a], rcond=None)[0]
        np.testing.assert_allclose(M, L[a], atol=1e-10)
    np.testing.assert_allclose(L[0] @ L[1] - L[1] @ L[0], 1j * L[2], atol=1e-12)
    np.testing.assert_allclose(sum(x @ x for x in L), l * (l + 1) * np.eye(2 * l + 1), atol=1e-12)
    if l == 1:  # p = (y, z, x): L_z p_x = i p_y
        assert L[2][0, 2] == pytest.approx(1j)


@pytest.mark.parametrize("l", [0, 1, 2, 3])
def test_spin_orbit_spectrum(l):
    """L.S has eigenvalue l/2 (j = l + 1/2, 2l + 2 states) and -(l+1)/2 (j = l - 1/2, 2l states)."""
    M = spin_orbit_matrix(l)
    assert M.shape == (2 * (2 * l + 1),) * 2
    np.testing.assert_allclose(M, M.conj().T, atol=1e-14)
    w = np.linalg.eigvalsh(M)
    expected = np.sort([l / 2] * (2 * l + 2) + [-(l + 1) / 2] * (2 * l))
    np.testing.assert_allclose(w, expected, atol=1e-12)


@pytest.mark.parametrize("l", [1, 2])
def test_orbital_and_spin_rotations(l):
    """eqtb's Wigner-D of a random rotation is exp(-i theta n.L); the L.S block is invariant under
    D_{1/2} (x) D_l (spin-major), for rotations and, spin being a pseudovector, rotation-reflections."""
    rng = np.random.default_rng(7)
    for det in (1, -1):
        Q = random_orthogonal(rng, det)
        rot = Rotation.from_matrix(det * Q).as_rotvec()
        D_half = sla.expm(-0.5j * np.einsum("a,aij->ij", rot, PAULI))
        D_l = wigner_D(l, Q, (-1) ** l)
        if det == 1:
            np.testing.assert_allclose(sla.expm(-1j * np.einsum("a,aij->ij", rot, angular_momentum(l))), D_l,
                                       atol=1e-12)
        U = np.kron(D_half, D_l)
        M = spin_orbit_matrix(l)
        np.testing.assert_allclose(U @ M @ U.conj().T, M, atol=1e-12)
        assert np.abs(np.kron(D_half, np.eye(2 * l + 1)) @ M - M).max() > 0.1  # a spin rotation alone moves it


# ------------------------------------------------------------------------ models on real structures
def _hbn(data_dir) -> Structure:
    return Structure.from_ase(read(data_dir / "deeptb_examples" / "hBN" / "data" / "struct.vasp"))


def _si(data_dir) -> Structure:
    return Structure.from_ase(read(data_dir / "silicon_bands" / "kpath.0" / "xdat.traj", index=0))


def _model(basis, soc={"method": "uniform"}, seed=0, overlap=False, hopping=POWERLAW, onsite={"method": "uniform"},
           **kw) -> SlaterKoster:
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = SlaterKoster(Basis(basis), hopping, onsite, std=0.3, soc=soc, overlap=overlap, **kw)
    finally:
        torch.set_default_dtype(default)
    if overlap:  # small overlap integrals: S(k) positive definite
        with torch.no_grad():
            model.overlap_hopping.params.mul_(0.1)
    if model.soc_params is not None:
        with torch.no_grad():
            model.soc_params.fill_(0.0).add_(torch.rand(model.soc_params.shape, dtype=torch.float64) + 0.2)
    return model


def _operators(model, structure):
    graph = build_graph(structure, model.r_max, model.basis.symbols)
    with torch.no_grad():
        out = model(ModelInputs.from_graph(graph, model.basis, torch.float64))
    return to_operators(structure, model.basis, graph.i, graph.j, graph.R, out)


SI_HOPPING = {"method": "powerlaw", "rs": 2.6, "w": 0.3}


@pytest.mark.parametrize("case", ["hbn", "si_overlap"])
def test_time_reversal_and_kramers(case, data_dir):
    """The inherited check (models/testing.py): H(-k) = Theta H(k) Theta^-1, E(k) = E(-k), Kramers
    pairs at every time-reversal-invariant k (hBN: no inversion centre, so the pairs split elsewhere;
    Si with sp + d* shells, d spin-orbit blocks and a non-orthogonal basis)."""
    if case == "hbn":
        model, s = _model(HBN), _hbn(data_dir)
    else:
        model, s = _model(SI_SPD, overlap=True, hopping=SI_HOPPING), _si(data_dir)
    err = time_reversal_errors(model, s)
    assert err["matrix"] < 1e-13 and err["even"] < 1e-10 and err["kramers"] < 1e-10, err
    if case == "hbn":  # without inversion symmetry the Kramers pairs split away from the TRIM
        H = _operators(model, s)["hamiltonian"]
        e = band_energies(H, None, [[1 / 3, 1 / 3, 0]])[0]
        assert np.abs(e[0::2] - e[1::2]).max() > 1e-3


def test_streamed_sparse_prediction_refuses_a_spinful_model(data_dir):
    """predict_sparse (the spinless Gamma matrices of eqtb run's sparse route) says so for a model
    with spin-orbit coupling instead of dropping its spin-orbit blocks; the spinless model runs."""
    from eqtb.predict import PredictionError

    s = _hbn(data_dir)
    with pytest.raises(PredictionError, match="spinful model"):
        Predictor(_model(HBN)).predict_sparse(s)
    H = Predictor(_model(HBN, soc={})).predict_sparse(s).sparse("hamiltonian")
    assert H.shape == (8, 8)  # 2 atoms x 4 orbitals, no spin doubling


def test_spinful_operator_layout_and_hermiticity(data_dir):
    """H(k) is 2 norb square, Hermitian, its spin-diagonal blocks are the spinless H(k) plus the
    onsite spin-orbit blocks, dense = sparse (the batched path below 48 orbitals and the per-k sparse
    path of a 64-atom cell), and the torch Bloch sum of the eigvals loss equals Operator.dense."""
    from eqtb.tb.bloch import BlochLayout

    model, s = _model(HBN), _hbn(data_dir)
    H = _operators(model, s)["hamiltonian"]
    assert H.spinful and H.dim == 2 * H.norb == 16 and H.soc.shape == (2, 8, 8)
    k = np.random.default_rng(0).uniform(-0.5, 0.5, size=(3, 3)) * [1, 1, 0]
    Hk, H0 = H.dense(k), H.spin_independent().dense(k)
    n = H.norb
    np.testing.assert_allclose(Hk, np.conj(np.swapaxes(Hk, 1, 2)), atol=1e-14)
    spin_diagonal = np.zeros_like(Hk)
    spin_diagonal[:, :n, :n] = spin_diagonal[:, n:, n:] = H0
    L = Hk - spin_diagonal
    assert np.abs(L).max() > 0.1
    np.testing.assert_allclose(L, L[:1].repeat(3, 0), atol=1e-13)  # onsite only: independent of k
    np.testing.assert_allclose(np.stack([H.sparse(kk).toarray() for kk in k]), Hk, atol=1e-13)
    graph = build_graph(s, model.r_max, model.basis.symbols)
    x = ModelInputs.from_graph(graph, model.basis, torch.float64)
    out = model(x)
    lay = BlochLayout(model.basis, x.types, x.i, x.j, x.R)
    Ht = lay.spinful(lay.bloch_sum(*out["hamiltonian"], k), out[SPIN_ORBIT])
    np.testing.assert_allclose(Ht.detach().numpy(), Hk, atol=1e-13)
    with pytest.raises(ValueError, match="spin-orbit blocks"):
        H.to_blocks()
    assert H.spin_independent().to_blocks()  # the spin-independent part writes
    big = Structure.from_ase(read(data_dir / "si64_abacus" / "Si64.vasp"))
    Hb = _operators(_model({"Si": "1s1p"}, hopping=SI_HOPPING), big)["hamiltonian"]
    kb = [[0.1, 0.2, 0.3]]
    assert Hb.norb == 256
    np.testing.assert_allclose(Hb.dense(kb)[0], Hb._spinful_dense(Hb.spin_independent().dense(kb))[0], atol=1e-13)


def test_zero_coupling_doubles_every_band(data_dir):
    """soc "none" (DeePTB's reference strengths, zero): a spinful model whose bands are the spinless
    model's, each twice; DOS, PDOS (both spins of an orbital in its group) and Fermi level count each
    state once (spin degeneracy 1) and equal the spinless ones."""
    s = _hbn(data_dir)
    spinful, spinless = _model(HBN, {"method": "none"}, seed=3), _model(HBN, {}, seed=3)
    assert spinful.soc_params is None and "soc" not in [n.split(".")[0] for n, _ in spinful.named_parameters()]
    H1, H0 = _operators(spinful, s)["hamiltonian"], _operators(spinless, s)["hamiltonian"]
    assert H1.spinful and not H0.spinful
    k = [[0, 0, 0], [0.2, 0.1, 0], [1 / 3, 1 / 3, 0]]
    e1, e0 = band_energies(H1, None, k), band_energies(H0, None, k)
    np.testing.assert_allclose(e1, np.repeat(e0, 2, axis=1), atol=1e-12)
    es1, es0 = ElectronicStructure(H1), ElectronicStructure(H0)
    assert (es1.spin_degeneracy, es0.spin_degeneracy) == (1, 2)
    f1, f0 = es1.fermi({"B": 3, "N": 5}, (4, 4, 1)), es0.fermi({"B": 3, "N": 5}, (4, 4, 1))
    assert float(f1) == pytest.approx(float(f0), abs=1e-9)
    energies = np.linspace(-20, 5, 50)
    np.testing.assert_allclose(es1.dos((4, 4, 1), energies), es0.dos((4, 4, 1), energies), atol=1e-9)
    (_, lab1, p1), (_, lab0, p0) = es1.pdos((4, 4, 1), energies, kind="shell"), es0.pdos((4, 4, 1), energies,
                                                                                          kind="shell")
    assert lab1 == lab0 and np.abs(p0).max() > 0.1
    np.testing.assert_allclose(p1, p0, atol=1e-9)


def test_rotations_leave_spinful_bands_and_transform_h(data_dir):
    """A rotated (or rotated-reflected) and translated Si cell: the spinful H(k) at the same
    fractional k is U H(k) U^dagger with U = D_{1/2} (x) D_orbitals, and the bands are unchanged."""
    s = _si(data_dir)
    model = _model(SI_SPD, hopping=SI_HOPPING)
    rng = np.random.default_rng(11)
    k = [[0.1, 0.25, -0.3], [0.0, 0.5, 0.5]]
    H = _operators(model, s)["hamiltonian"]
    for det in (1, -1):
        Q = random_orthogonal(rng, det)
        H2 = _operators(model, s.transformed(Q, rng.normal(size=3)))["hamiltonian"]
        D_half = sla.expm(-0.5j * np.einsum("a,aij->ij", Rotation.from_matrix(det * Q).as_rotvec(), PAULI))
        D_orb = sla.block_diag(*[wigner_D(sh.l, Q, (-1) ** sh.l) for _ in range(s.natoms)
                                 for sh in model.basis.elements[0].shells])
        U = np.kron(D_half, D_orb)
        Hk, Hk2 = H.dense(k), H2.dense(k)
        assert np.abs(Hk2 - Hk).max() > 1e-2  # the rotation does change H(k)
        np.testing.assert_allclose(Hk2, U @ Hk @ U.conj().T, atol=1e-10)
        np.testing.assert_allclose(band_energies(H2, None, k), band_energies(H, None, k), atol=1e-10)


@pytest.mark.parametrize("basis, l, symbol", [(HBN, 1, "N"), (SI_SPD, 2, "Si")])
def test_single_atom_splitting(basis, l, symbol):
    """A lone atom (no bonds): its shell of degree l splits into j = l + 1/2 (2l + 2 states at
    E + lambda l / 2) and j = l - 1/2 (2l states at E - lambda (l + 1) / 2): 3 lambda / 2 for p,
    5 lambda / 2 for d."""
    model = _model(basis)
    atom = Structure([{"N": 7, "Si": 14}[symbol]], [[0.0, 0.0, 0.0]], np.zeros((3, 3)), [False] * 3)
    H = _operators(model, atom)["hamiltonian"]
    assert len(H.i) == 0
    t = model.basis.symbols.index(symbol)
    lam = model.soc_strengths().detach()
    e = band_energies(H, None, [[0, 0, 0]])[0]
    energies = (model.onsite_ref + model.onsite_params[..., 0]).detach()[t]
    from eqtb.models.sk import onsite_pairs

    pairs = onsite_pairs(model.basis)
    for k, shell in enumerate(model.basis.full_shells):
        if shell.l != l or shell not in model.basis.elements[t].shells:
            continue
        E, lk = float(energies[pairs.index((shell, shell))]), float(lam[t, k])
        up, down = E + lk * l / 2, E - lk * (l + 1) / 2
        assert np.sum(np.abs(e - up) < 1e-9) == 2 * l + 2 and np.sum(np.abs(e - down) < 1e-9) == 2 * l
        assert up - down == pytest.approx(lk * (2 * l + 1) / 2)
        assert lk > 0.1


@pytest.mark.parametrize("family", ["nnsk", "mix"])
def test_inherited_checks_on_spinful_families(family, gaas_displaced, one_thread):
    """The families built on nnsk with soc on (example options, random parameters, a displaced GaAs
    supercell with s/p/d shells): time reversal holds and the spin-independent blocks keep the
    inherited equivariance and Hermiticity."""
    from eqtb.models import FAMILIES, model_from_options
    from eqtb.models.testing import equivariance_errors, randomize, reversal_errors

    basis = Basis({"Ga": "2s2p2d", "As": "2s2p1d"})
    options = FAMILIES[family].example_options(basis)
    options["nnsk"]["soc"] = {"method": "uniform"}
    torch.manual_seed(0)
    model = randomize(model_from_options(options, basis), 0).to(torch.float64).eval()
    err = time_reversal_errors(model, gaas_displaced, n_random=2)
    assert err["matrix"] < 1e-12 and err["even"] < 1e-9 and err["kramers"] < 1e-9, err
    assert max(equivariance_errors(model, gaas_displaced, -1).values()) < 1e-9
    rev = reversal_errors(model, gaas_displaced)
    assert rev["onsite"] < 1e-12 and rev["reversed"] < 1e-12


# ------------------------------------------------------------------------ options
@pytest.mark.parametrize("soc, message", [
    ({"method": "custom"}, "soc.method 'custom' is not supported"),
    ({"method": "uniform", "lambda": 0.1}, r"soc: unknown key\(s\) lambda"),
    ("uniform", "must be an object"),
])
def test_soc_option_errors(soc, message):
    with pytest.raises(ModelError, match=message):
        _model(HBN, soc)
    with pytest.raises(ModelError, match="term of the Hamiltonian"):
        _model(HBN, {"method": "uniform"}, quantity="density_matrix")


def test_spinless_options_are_unchanged(data_dir):
    """soc {} (every DeePTB example) builds the spinless model: no spin-orbit output, no extra
    parameter, the same parameters drawn in the same order as before."""
    a, b = _model(HBN, {}, seed=5), _model(HBN, {"method": "uniform"}, seed=5)
    assert a.soc_params is None
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sb) - set(sa) == {"soc_params"}
    assert all(torch.equal(sa[k], sb[k]) for k in sa if sa[k].dtype.is_floating_point)
    graph = build_graph(_hbn(data_dir), a.r_max, a.basis.symbols)
    x = ModelInputs.from_graph(graph, a.basis, torch.float64)
    assert a.spin_orbit(x) is None and SPIN_ORBIT not in a(x) and SPIN_ORBIT in b(x)


# ------------------------------------------------------------------------ training and prediction
def _train(model, samples, steps, lr=0.05):
    loss_fn = EigvalsLoss(model.basis, {"method": "eigvals"})
    batch = make_batch(samples)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(batch.inputs), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_training_moves_the_strengths_and_lowers_the_loss(data_dir):
    """DeePTB's hBN band data, the eigvals loss on the 2 norb spinful bands (band by band, as
    DeePTB): a few Adam steps change every p-shell strength and lower the loss; freeze ["soc"]
    keeps them while the hoppings move."""
    basis = Basis(HBN)
    model = _model(HBN)
    samples = load_samples(data_dir / "deeptb_examples" / "hBN" / "data", "kpath", basis, model.r_max, [],
                           eigenvalues=True, dtype=torch.float64)
    lam0 = model.soc_strengths().detach().clone()
    losses = _train(model, samples, 8)
    assert losses[-1] < losses[0]
    p = [k for k, s in enumerate(basis.full_shells) if s.l == 1]
    assert (model.soc_strengths().detach()[:, p] - lam0[:, p]).abs().min() > 1e-3
    frozen = _model(HBN, freeze=["soc"])
    lam, hop = frozen.soc_params.detach().clone(), frozen.hopping.params.detach().clone()
    _train(frozen, samples, 3)
    assert torch.equal(frozen.soc_params, lam) and not torch.equal(frozen.hopping.params, hop)
    with pytest.raises(ModelError, match="no 'soc' parameters"):
        _model(HBN, {"method": "none"}, freeze=["soc"])


def test_eqtb_train_and_run_band_with_soc(tmp_path, data_dir, monkeypatch, capsys):
    """DeePTB's hBN input with soc {"method": "uniform"} trains with eqtb train; its checkpoint
    loads with eqtb.load and predicts 2 norb Kramers-paired bands; eqtb run band writes them and
    counts one electron per band; a spinless checkpoint starts a spinful model (-i) with its
    hoppings and the strengths of the new model."""
    src = data_dir / "deeptb_examples" / "hBN"
    cfg = json.loads((src / "input_short.json").read_text())
    cfg["model_options"]["nnsk"]["soc"] = {"method": "uniform"}
    cfg["data_options"]["train"]["root"] = str(src / "data")
    cfg["train_options"].update(num_epoch=2, save_freq=1)
    (tmp_path / "input.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    assert main(["train", "input.json", "-o", "run", "-q"]) == 0
    assert "noncollinear" in capsys.readouterr().err  # said once: spinful bands against the reference one by one
    ckpt = tmp_path / "run" / "checkpoint" / "nnsk.latest.pth"
    pred = eqtb.load(ckpt).predict(src / "data" / "struct.vasp")
    kpath, bands = pred.bands("GMKG", npoints=20)
    assert bands.shape == (len(kpath.kpts), 16) and pred.hk([[0, 0, 0]]).shape == (1, 16, 16)
    np.testing.assert_allclose(bands[0, 0::2], bands[0, 1::2], atol=1e-5)  # Gamma: Kramers pairs (float32 model)
    task = {"task": "band", "kline_type": "ase", "kpath": "GMKG", "nkpoints": 20, "nel_atom": {"B": 3, "N": 5}}
    (tmp_path / "band.json").write_text(json.dumps(task))
    assert main(["run", "band.json", "-i", str(ckpt), "-stu", str(src / "data" / "struct.vasp"), "-o", "band",
                 "-q"]) == 0
    summary = json.loads((tmp_path / "band" / "band_summary.json").read_text())
    eigs = np.load(tmp_path / "band" / "bands.npy")
    assert eigs.shape[1] == 16
    assert summary["vbm"] == pytest.approx(eigs[:, 7].max(), abs=1e-5)  # 8 electrons fill 8 spin states
    spinless = load_model(src / "ref_ckpts" / "first" / "checkpoint" / "nnsk.iter500.pth")
    torch.manual_seed(0)
    model = SlaterKoster(Basis(HBN), POWERLAW, {"method": "none"}, soc={"method": "uniform"})
    state = {k: v for k, v in spinless.state_dict().items()}
    model.init_from("nnsk", state, {"common_options": {"basis": HBN, "overlap": False},
                                    "model_options": {"nnsk": {"hopping": POWERLAW, "onsite": {"method": "none"},
                                                               "soc": {}}}})
    assert torch.equal(model.hopping.params, spinless.hopping.params.to(model.hopping.params))
    assert model.soc_params is not None


def test_deeptb_soc_checkpoint_converts(tmp_path, data_dir):
    """A DeePTB nnsk checkpoint with soc: its soc_param (types x full-basis shells x 1) become the
    strengths |p|; without soc_param it is refused, naming the entry."""
    path = data_dir / "deeptb_examples" / "hBN" / "ref_ckpts" / "first" / "checkpoint" / "nnsk.iter500.pth"
    ckpt = torch.load(path, weights_only=False)
    ckpt["config"]["model_options"]["nnsk"]["soc"] = {"method": "uniform"}
    torch.save(ckpt, tmp_path / "no_param.pth")
    with pytest.raises(CheckpointError, match="soc_param"):
        load_model(tmp_path / "no_param.pth")
    param = torch.tensor([[[0.01], [-0.2]], [[0.03], [0.4]]])
    ckpt["model_state_dict"]["soc_param"] = param
    torch.save(ckpt, tmp_path / "soc.pth")
    model = load_model(tmp_path / "soc.pth")
    np.testing.assert_allclose(model.soc_strengths().detach().numpy(), param[..., 0].abs().numpy(), rtol=1e-6)
    plain = load_model(path)
    s = Structure.from_ase(read(data_dir / "deeptb_examples" / "hBN" / "data" / "struct.vasp"))
    e_soc = Predictor(model).predict(s).bands([[0.0, 0.0, 0.0]])[1][0]
    e_plain = Predictor(plain).predict(s).bands([[0.0, 0.0, 0.0]])[1][0]
    assert e_soc.shape == (16,) and e_plain.shape == (8,)
    assert np.abs(e_soc - np.repeat(e_plain, 2)).max() > 0.01

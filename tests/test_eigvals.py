"""Training on band energies: eigenvalue-only datasets load as samples without target blocks, the
torch Bloch sum equals Operator.dense, the eigvals loss has DeePTB's window semantics and exact
gradients, and ``eqtb train`` fits DeePTB's silicon tutorial data (plus checkpoints written every
save_freq iterations, exact restarts, init_model chains and the rop metric)."""

import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eqtb.basis import Basis
from eqtb.cli import main
from eqtb.config import load_config
from eqtb.data.folder import BandInfo, DatasetError, TrajectoryFolder
from eqtb.models.assembly import to_operators
from eqtb.models import model_from_options
from eqtb.models.testing import displaced
from eqtb.structure import Structure, build_graph
from eqtb.tb.bloch import BlochLayout, eigvalsh
from eqtb.tb.spectrum import band_energies
from eqtb.train.data import attach_bands, load_samples, make_batch, make_sample
from eqtb.train.loss import EigvalsLoss, LossError
from eqtb.train.trainer import Trainer, TrainError
from toy_models import silicon_primitive, sp_model

SI_SPD = {"Si": ["3s", "3p", "d*"]}


def _history(out):
    return [json.loads(line) for line in open(out / "log" / "history.jsonl")]


# ------------------------------------------------------------------------------------ data
def test_band_dataset_loads_without_target_blocks(data_dir):
    basis = Basis(SI_SPD)
    (s,) = load_samples(data_dir / "silicon_bands", "kpath", basis, 5.0, [], eigenvalues=True, dtype=torch.float64)
    assert s.targets == {} and s.structure.natoms == 2
    assert s.kpoints.shape == (302, 3) and s.eigenvalues.shape == (302, 14)
    assert s.bands.info.band_min == 0 and s.bands.info.band_max == 6 and s.bands.info.energy_window is None
    assert s.bands.layout.norb == 18 and s.bands.eigenvalues.shape == (302, 14)
    assert "kpath.0/info.json" in s.bands.source
    np.testing.assert_allclose(s.bands.eigenvalues.numpy(), np.load(data_dir / "silicon_bands/kpath.0/eigenvalues.npy")[0])


def test_band_dataset_errors_name_the_file(data_dir, tmp_path):
    shutil.copytree(data_dir / "silicon_bands" / "kpath.0", tmp_path / "kpath.0")
    info = json.loads((tmp_path / "kpath.0" / "info.json").read_text())
    info["bandinfo"]["weight"] = [1.0, 2.0]
    (tmp_path / "kpath.0" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"kpath\.0/eigenvalues\.npy.*bandinfo\.weight has 2 values.*302 k-points"):
        load_samples(tmp_path, "kpath", Basis(SI_SPD), 5.0, [], eigenvalues=True)
    (tmp_path / "kpath.0" / "eigenvalues.npy").unlink()
    with pytest.raises(DatasetError, match=r"kpath\.0/eigenvalues\.npy: missing"):
        load_samples(tmp_path, "kpath", Basis(SI_SPD), 5.0, [], eigenvalues=True)


def test_bandinfo_keeps_deeptb_keys_and_checks_values():
    assert BandInfo().to_json_dict() == {"band_min": 0, "band_max": None, "emin": None, "emax": None}
    b = BandInfo(band_max=8, emin=-1.0, emax=5.0, gap_penalty=True, fermi_band=3, loss_weight=2.0)
    assert b.energy_window == (-1.0, 5.0)
    assert b.to_json_dict()["gap_penalty"] is True and "weight" not in b.to_json_dict()
    with pytest.raises(ValueError, match="fermi_band"):
        BandInfo(band_max=4, gap_penalty=True, fermi_band=3)
    with pytest.raises(ValueError, match="weight"):
        BandInfo(weight=[0.0, -1.0])


def test_lmdb_band_dataset(data_dir, tmp_path):
    from eqtb.data.lmdb import folder_to_lmdb

    folder_to_lmdb(data_dir / "silicon_bands", "kpath_spk", tmp_path / "lmdb" / "data.0")
    (s,) = load_samples(tmp_path / "lmdb", "data", Basis(SI_SPD), 5.0, [], kind="LMDBDataset", eigenvalues=True)
    assert s.targets == {} and s.bands.eigenvalues.shape == (61, 14) and s.bands.info == BandInfo()


# ------------------------------------------------------------------------------------ Bloch sum
def test_bloch_sum_equals_operator_dense_with_padding():
    """GaAs with Ga 2s2p2d and As 2s2p1d: the full layout pads As, the compact layout does not."""
    from ase.build import bulk

    basis = Basis({"Ga": "2s2p2d", "As": "2s2p1d"})
    s = displaced(Structure.from_ase(bulk("GaAs", "zincblende", a=5.65).repeat((1, 1, 2))), seed=5)
    g = build_graph(s, 5.0)
    rng = np.random.default_rng(0)
    F = basis.full_norb
    on = rng.normal(size=(s.natoms, F, F))
    on = on + on.transpose(0, 2, 1)
    off = rng.normal(size=(g.n_edges, F, F))
    op = to_operators(s, basis, g.i, g.j, g.R, {"hamiltonian": (on, off)})["hamiltonian"]
    k = rng.random((7, 3))
    lay = BlochLayout(basis, basis.types_of(s.numbers), g.i, g.j, g.R)
    Hk = lay.bloch_sum(torch.as_tensor(on), torch.as_tensor(off), k)
    assert Hk.dtype == torch.complex128 and Hk.shape == (7, op.norb, op.norb)
    np.testing.assert_allclose(Hk.numpy(), op.dense(k), rtol=0, atol=1e-12)
    Hk32 = lay.bloch_sum(torch.as_tensor(on, dtype=torch.float32), torch.as_tensor(off, dtype=torch.float32),
                         lay.phases(k, torch.float32))
    assert Hk32.dtype == torch.complex64
    np.testing.assert_allclose(Hk32.numpy(), op.dense(k), rtol=0, atol=1e-4)


def test_generalized_eigenvalues_equal_the_reference_solver(data_dir):
    tf = TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0", basis=Basis({"Si": "1s1p"}))
    H, S = tf.operator("hamiltonian", 0), tf.operator("overlap", 0)
    k = np.random.default_rng(1).random((3, 3))
    Hk, Sk = (BlochLayout(o.basis, o.basis.types_of(o.structure.numbers), o.i, o.j, o.R).bloch_sum(
        torch.as_tensor(o.onsite), torch.as_tensor(o.offsite), k) for o in (H, S))
    np.testing.assert_allclose(eigvalsh(Hk, Sk).numpy(), band_energies(H, S, k), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="not positive definite at k-point 0"):
        eigvalsh(Hk, -Sk)


# ------------------------------------------------------------------------------------ the loss
def _fake(eig_ref, info, symbols=("Si", "Si"), kweights=None):
    nk = eig_ref.shape[0]
    w = torch.ones(nk, dtype=torch.float64) if kweights is None else torch.as_tensor(kweights)
    bands = SimpleNamespace(info=info, eigenvalues=torch.as_tensor(eig_ref), kweights=w, source="ref.npy")
    return SimpleNamespace(bands=bands, structure=SimpleNamespace(symbols=list(symbols)), name="frame")


def test_window_semantics():
    rng = np.random.default_rng(2)
    ref = np.sort(rng.uniform(-10, 10, size=(5, 12)), axis=1)
    pred = np.sort(rng.uniform(-10, 10, size=(5, 8)), axis=1) + 100.0  # absolute level is free
    basis = Basis({"Si": "1s1p"})
    widths = []  # the width of the kept aligned reference bands inside the window (eig_ham's guard)

    def loss(info, **opts):
        value, err, n, width = EigvalsLoss(basis, {"method": "eigvals", **opts}).sample_loss(torch.as_tensor(pred),
                                                                                             _fake(ref, info))
        widths.append(width)
        return float(value), float(err), n

    def cut(a, lo, hi):
        c = a[:, lo:hi]
        return c - c.min()

    # band window only: MSE of the aligned bands [1, 6); band_max None: min(8, 12) bands
    p, r = cut(pred, 1, 6), cut(ref, 1, 6)
    value, err, n = loss(BandInfo(band_min=1, band_max=6))
    assert value == pytest.approx(((p - r) ** 2).mean(), rel=1e-12) and n == 25
    assert err / n == pytest.approx(np.abs(p - r).mean(), rel=1e-12) and widths[-1] == pytest.approx(r.max())
    assert loss(BandInfo())[0] == pytest.approx(((cut(pred, 0, 8) - cut(ref, 0, 8)) ** 2).mean(), rel=1e-12)
    # energy window relative to the lowest reference energy in the band window; outside: eout_weight
    info = BandInfo(band_min=1, band_max=6, emin=2.0, emax=9.0)
    inside = (r > 2.0) & (r < 9.0)
    want = ((p - r)[inside] ** 2).mean() + 0.25 * ((p - r)[~inside] ** 2).mean()
    value, err, n = loss(info, eout_weight=0.25)
    assert value == pytest.approx(want, rel=1e-12) and n == inside.sum()
    assert widths[-1] == pytest.approx(r[inside].max() - r[inside].min())
    # align "none": no shift, the window still relative to the lowest kept reference band
    pa, ra = pred[:, 1:6], ref[:, 1:6]
    want = ((pa - ra)[inside] ** 2).mean() + 0.25 * ((pa - ra)[~inside] ** 2).mean()
    value, err, n = loss(info, eout_weight=0.25, align="none")
    assert value == pytest.approx(want, rel=1e-12) and value > 1e3 and n == inside.sum()
    assert err / n == pytest.approx(np.abs(pa - ra)[inside].mean(), rel=1e-12)
    assert loss(BandInfo(), align="none")[0] == pytest.approx(((pred[:, :8] - ref[:, :8]) ** 2).mean(), rel=1e-12)
    with pytest.raises(LossError, match='align must be "min" or "none"'):
        loss(info, align="max")
    # k-point weights
    w = rng.uniform(0.5, 2.0, size=5)
    value = EigvalsLoss(basis, {}).sample_loss(torch.as_tensor(pred), _fake(ref, BandInfo(band_max=6), kweights=w))[0]
    d2 = (cut(pred, 0, 6) - cut(ref, 0, 6)) ** 2
    assert float(value) == pytest.approx((w[:, None] * d2).sum() / (6 * w.sum()), rel=1e-12)
    # diff_valence: 2 Si x 4 electrons / spin_deg 2 -> the 4 lowest reference bands are dropped
    value = EigvalsLoss(basis, {"diff_valence": {"Si": 4}, "spin_deg": 2}).sample_loss(
        torch.as_tensor(pred), _fake(ref, BandInfo(band_max=6)))[0]
    assert float(value) == pytest.approx(((cut(pred, 0, 6) - cut(ref[:, 4:], 0, 6)) ** 2).mean(), rel=1e-12)
    # clear errors
    with pytest.raises(LossError, match=r"ref\.npy: bandinfo\.band_max = 9 .* 8 bands"):
        loss(BandInfo(band_max=9))
    with pytest.raises(LossError, match="not a multiple of spin_deg"):
        EigvalsLoss(basis, {"diff_valence": {"Si": 3}}).sample_loss(torch.as_tensor(pred),
                                                                      _fake(ref, BandInfo(), symbols=("Si",)))
    with pytest.raises(LossError, match="diff_valence: elements"):
        EigvalsLoss(basis, {"diff_valence": {"Ge": 4}})


def _tiny_problem(seed=3):
    """A displaced 2-atom Si cell, a tiny nnsk model (float64, H only) and reference bands of the
    sp model of toy_models at random k-points, shifted by 7 eV."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = model_from_options({"nnsk": {"onsite": {"method": "uniform"}, "std": 1.0,
                                             "hopping": {"method": "powerlaw", "rs": 3.0, "w": 0.2}}},
                                   Basis({"Si": "1s1p"}))
    finally:
        torch.set_default_dtype(torch.float32)
    s = displaced(silicon_primitive(), seed=seed)
    H, _ = sp_model(s, overlap=False)
    k = np.random.default_rng(seed).random((6, 3))
    sample = make_sample("tiny", s, {}, model.basis, model.r_max, torch.float64)
    return model, sample, k, band_energies(H, None, k) + 7.0


def test_eigvals_gradients_match_finite_differences():
    model, sample, k, ref = _tiny_problem()
    info = BandInfo(band_min=1, band_max=7, emin=1.0, emax=9.0, gap_penalty=True, fermi_band=2,
                    weight=[1.0, 2.0, 0.5, 1.0, 1.5, 1.0])
    attach_bands(sample, model.basis, k, ref, info, "tiny")
    batch = make_batch([sample])
    loss_fn = EigvalsLoss(model.basis, {"eout_weight": 0.3, "diff_on": True, "diff_weight": 0.5})
    names = [n for n, _ in model.named_parameters()]

    def f(*params):
        torch.manual_seed(0)  # the same random k-pairs for diff_on at every call
        pred = torch.func.functional_call(model, dict(zip(names, params)), (batch.inputs,))
        return loss_fn(pred, batch)

    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert float(f(*params)) > 0.1
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-5)


def assert_directional_derivatives(f, base, grads, rng, n: int = 3, h: float = 1e-6) -> None:
    """The analytic gradients ``grads`` of ``f(H_on, H_off, S_on, S_off)`` at ``base`` agree with
    central differences along ``n`` random directions (symmetric in the onsite blocks)."""
    for _ in range(n):
        d = [torch.as_tensor(rng.normal(size=b.shape)) for b in base]
        d[0], d[2] = d[0] + d[0].transpose(1, 2), d[2] + d[2].transpose(1, 2)
        fd = (f(*[b + h * e for b, e in zip(base, d)]) - f(*[b - h * e for b, e in zip(base, d)])) / (2 * h)
        an = sum((gr * e).sum() for gr, e in zip(grads, d))
        assert float(an) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_overlap_gradients_match_finite_differences():
    """Generalized problem: gradients in the H and S blocks along random symmetric directions."""
    s = displaced(silicon_primitive(), seed=4)
    H, S = sp_model(s)
    basis = H.basis
    g = build_graph(s, 4.0)
    sample = make_sample("gen", s, {"hamiltonian": H, "overlap": S}, basis, 4.0, torch.float64)
    k = np.random.default_rng(4).random((5, 3))
    attach_bands(sample, basis, k, band_energies(H, S, k) + 0.3, BandInfo(), "gen")
    batch = make_batch([sample])
    loss_fn = EigvalsLoss(basis, {}, overlap=True)
    blocks = [t.clone().requires_grad_(True) for q in ("hamiltonian", "overlap") for t in sample.targets[q]]
    rng = np.random.default_rng(5)
    base = [b.detach() * (1 + 0.05 * torch.as_tensor(rng.normal(size=b.shape))) for b in blocks]
    base[0], base[2] = 0.5 * (base[0] + base[0].transpose(1, 2)), 0.5 * (base[2] + base[2].transpose(1, 2))
    assert g.n_edges == sample.inputs.n_edges

    def f(*b):
        return loss_fn({"hamiltonian": (b[0], b[1]), "overlap": (b[2], b[3])}, batch)

    x = [b.clone().requires_grad_(True) for b in base]
    grads = torch.autograd.grad(f(*x), x)
    assert_directional_derivatives(f, base, grads, rng)


def test_band_gradients_at_a_degenerate_gamma():
    """Perfect diamond Si at Gamma: the p-like levels are triply degenerate, yet the eigenvalue
    gradients (torch's eigvalsh backward: V diag(dL/dE) V^H, no 1/(E_i - E_j) terms, which only
    eigenvector derivatives have) are finite and equal central finite differences of the loss
    along random Hermitian directions of the H and S blocks (the loss is symmetric in the
    degenerate levels, whose reference energies are equal)."""
    s = silicon_primitive()
    H, S = sp_model(s)
    basis = H.basis
    sample = make_sample("gamma", s, {"hamiltonian": H, "overlap": S}, basis, 4.0, torch.float64)
    k = np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]])
    ref = band_energies(H, S, k)
    assert np.diff(ref[0])[1:3].max() < 1e-10  # levels 1, 2, 3 at Gamma coincide
    attach_bands(sample, basis, k, 1.1 * ref, BandInfo(), "gamma")  # stretched: degenerate targets stay equal
    batch = make_batch([sample])
    loss_fn = EigvalsLoss(basis, {}, overlap=True)
    base = [t.detach().clone() for q in ("hamiltonian", "overlap") for t in sample.targets[q]]

    def f(*b):
        return loss_fn({"hamiltonian": (b[0], b[1]), "overlap": (b[2], b[3])}, batch)

    x = [b.clone().requires_grad_(True) for b in base]
    grads = torch.autograd.grad(f(*x), x)
    assert all(torch.isfinite(g).all() for g in grads) and max(float(g.abs().max()) for g in grads) > 0.1
    rng = np.random.default_rng(6)
    assert_directional_derivatives(f, base, grads, rng)


# ------------------------------------------------------------------------------------ eqtb train
@pytest.fixture()
def tutorial(tmp_path, data_dir, monkeypatch):
    """DeePTB's silicon tutorial v2.1 laid out as in DeePTB (its data folder, its input 2-1: sp3
    nnsk, powerlaw hopping, DeePTB's onsite energies, on the eigenvalues of kpath_spk), cwd the
    run folder; 40 epochs."""
    src = data_dir / "deeptb_examples" / "silicon"
    shutil.copytree(src / "data" / "kpath_spk.0", tmp_path / "data" / "kpath_spk.0")
    cfg = json.loads((src / "tutorial_v2.1" / "inputs" / "2-1_input.json").read_text())
    cfg["train_options"].update(num_epoch=40, display_freq=1)
    (tmp_path / "input.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return tmp_path


def _write(path, cfg):
    path.write_text(json.dumps(cfg))
    return path.name


def test_tutorial_trains_on_band_energies(tmp_path, data_dir, monkeypatch):
    """DeePTB's tutorial v2.2 input_1 ("cuda" -> "cpu"): poly4pow hopping, non-orthogonal (the
    frozen overlap enters H c = E S c), from scratch; the band error falls."""
    src = data_dir / "deeptb_examples" / "silicon"
    shutil.copytree(src / "data" / "kpath_spk.0", tmp_path / "data" / "kpath_spk.0")
    (tmp_path / "tutorial").mkdir()
    cfg = json.loads((src / "tutorial_v2.2" / "input_1.json").read_text())
    cfg["common_options"]["device"] = "cpu"
    monkeypatch.chdir(tmp_path / "tutorial")  # the config's root "../data/"
    torch.set_num_threads(1)
    assert main(["train", _write(tmp_path / "tutorial" / "input_1.json", cfg), "-o", "run", "-q",
                 "--num-epoch", "30"]) == 0
    run = tmp_path / "tutorial" / "run"
    hist = _history(run)
    mae = [h["train_band_mae_meV"] for h in hist]
    assert len(hist) == 30 and mae[-1] < 0.5 * mae[0], mae
    assert "band MAE" in (run / "log" / "log.txt").read_text()
    state = torch.load(run / "checkpoint" / "nnsk.latest.pth", weights_only=False)
    assert state["task"] == "eigenvalues" and state["model_family"] == "nnsk"
    assert (run / "checkpoint" / "nnsk.iter30.pth").is_file()  # save_freq 1


def test_tutorial_reaches_deeptbs_reference(tutorial, data_dir):
    """Input 2-1 trained for its 500 epochs ends where DeePTB's own run of it (its reference
    checkpoint, read through -i and scored by one step of a vanishing learning rate) ends; and
    DeePTB's final tutorial model scores tens of meV on the same bands."""
    ref = data_dir / "deeptb_examples" / "silicon" / "tutorial_v2.1" / "ref_ckpts"
    assert main(["train", "input.json", "-o", "ours", "-q", "--num-epoch", "500"]) == 0
    cfg = json.loads((tutorial / "input.json").read_text())
    cfg["train_options"]["optimizer"]["lr"] = 1e-12
    assert main(["train", _write(tutorial / "score.json", cfg), "-o", "theirs", "-q", "--num-epoch", "1",
                 "-i", str(ref / "nnsk" / "checkpoint" / "nnsk.iter500.pth")]) == 0
    ours, theirs = _history(tutorial / "ours")[-1], _history(tutorial / "theirs")[0]
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=0.02)
    assert ours["train_band_mae_meV"] == pytest.approx(theirs["train_band_mae_meV"], rel=0.02)
    cfg["model_options"]["nnsk"] = {"onsite": {"method": "strain", "rs": 2.5, "w": 0.3},
                                    "hopping": {"method": "powerlaw", "rs": 5.0, "w": 0.1}}
    cfg["common_options"]["basis"] = SI_SPD
    assert main(["train", _write(tutorial / "final.json", cfg), "-o", "final", "-q", "--num-epoch", "1",
                 "-i", str(ref / "nnsk_4" / "checkpoint" / "nnsk.iter_rs5.000_w0.100.pth")]) == 0
    assert _history(tutorial / "final")[0]["train_band_mae_meV"] < 60.0


def test_validation_on_band_data(tutorial, data_dir):
    shutil.copytree(data_dir / "silicon_bands" / "kpath.0", tutorial / "data" / "kpath.0")
    cfg = json.loads((tutorial / "input.json").read_text())
    cfg["train_options"].update(num_epoch=4, validation_freq=2, valid_fast=True)
    cfg["data_options"]["validation"] = {"root": "./data/", "prefix": "kpath", "get_eigenvalues": True}
    assert main(["train", _write(tutorial / "val.json", cfg), "-o", "val", "-q"]) == 0
    hist = _history(tutorial / "val")
    assert "val_band_mae_meV" in hist[1] and "val_loss" not in hist[0] and hist[3]["val_band_mae_meV"] > 0


def test_a_loss_needs_its_data(tutorial, capsys):
    cfg = json.loads((tutorial / "input.json").read_text())
    cfg["train_options"]["loss_options"]["train"] = {"method": "hamil_abs"}
    assert main(["train", _write(tutorial / "bad.json", cfg), "-o", "bad", "-q"]) == 2
    assert "compares hamiltonian blocks: set data_options.train.get_Hamiltonian" in capsys.readouterr().err


def test_init_model_chain(tutorial):
    """input A -> input B (DeePTB's chains change the cutoff): B starts from A's weights; with
    another basis or overlap switch, from those it shares (DeePTB's from_reference); another hopping
    form is a clear error."""
    main(["train", "input.json", "-o", "a", "-q", "--num-epoch", "5"])
    ckpt = tutorial / "a" / "checkpoint" / "nnsk.latest.pth"
    cfg = json.loads((tutorial / "input.json").read_text())
    cfg["model_options"]["nnsk"]["hopping"].update(rs=3.0, w=0.1)
    b = Trainer(load_config(_write(tutorial / "b.json", cfg)), "b", init_model=ckpt, progress=False)
    saved = torch.load(ckpt, weights_only=False)["model_state_dict"]
    for name, value in b.model.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
    assert b.epoch == 0 and b.iteration == 0
    cfg["common_options"]["overlap"] = True  # as DeePTB: the overlap integrals start afresh
    c = Trainer(load_config(_write(tutorial / "c.json", cfg)), "c", init_model=ckpt, progress=False)
    torch.testing.assert_close(c.model.hopping.params, saved["hopping.params"], rtol=0, atol=0)
    cfg["common_options"].update(overlap=False, basis=SI_SPD)  # sp -> sp + d*: the sp integrals are kept
    d = Trainer(load_config(_write(tutorial / "d.json", cfg)), "d", init_model=ckpt, progress=False)
    assert d.model.hopping.params.shape[0] > saved["hopping.params"].shape[0]
    cfg["model_options"]["nnsk"]["hopping"]["method"] = "poly2pow"
    with pytest.raises(TrainError, match="hopping integrals have 2 parameters each, the config's hopping method "
                                         "'poly2pow' takes 4"):
        Trainer(load_config(_write(tutorial / "e.json", cfg)), "e", init_model=ckpt, progress=False)



def test_reference_set_joins_every_step(tutorial):
    """data_options.reference (DeePTB): every step adds the loss of a reference batch; with the
    training frame as the reference, each step's loss is twice the reference part."""
    cfg = json.loads((tutorial / "input.json").read_text())
    cfg["data_options"]["reference"] = dict(cfg["data_options"]["train"])
    cfg["train_options"]["loss_options"]["reference"] = {"method": "eigvals"}
    cfg["train_options"]["ref_batch_size"] = 1
    assert main(["train", _write(tutorial / "ref.json", cfg), "-o", "ref", "-q", "--num-epoch", "2"]) == 0
    for h in _history(tutorial / "ref"):
        assert h["train_loss"] == pytest.approx(2 * h["train_ref_loss"], rel=1e-6)


_KILL_AT_16 = """
import os, torch
from eqtb.config import load_config
from eqtb.train.trainer import Trainer
torch.set_num_threads(1)
display = Trainer._display
def killed(self, rec, *args):
    display(self, rec, *args)
    if rec["epoch"] == 16:
        os._exit(137)  # like kill -9: no finally, no final checkpoint
Trainer._display = killed
Trainer(load_config("input.json"), "killed", progress=False).run()
"""


def test_latest_after_kill_and_exact_restart(tutorial):
    cfg = json.loads((tutorial / "input.json").read_text())
    cfg["train_options"].update(num_epoch=20, save_freq=5)
    _write(tutorial / "input.json", cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_16], cwd=tutorial, env=env, capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr
    latest = tutorial / "killed" / "checkpoint" / "nnsk.latest.pth"
    state = torch.load(latest, weights_only=False)
    assert state["epoch"] == 15 and state["iteration"] == 15 and state["epoch_progress"] is None
    Trainer(load_config("input.json"), "killed", restart=latest, progress=False).run()
    Trainer(load_config("input.json"), "full", progress=False).run()
    killed, full = _history(tutorial / "killed"), _history(tutorial / "full")
    assert [h["epoch"] for h in killed] == list(range(1, 21))  # epoch 16 is not logged twice
    assert [h["train_loss"] for h in killed] == pytest.approx([h["train_loss"] for h in full], rel=1e-12, abs=0)
    assert [h["lr"] for h in killed] == pytest.approx([h["lr"] for h in full], rel=1e-12, abs=0)


def test_restart_inside_an_epoch_is_exact(tutorial):
    """Two frames, one per batch: save_freq 3 writes checkpoints in the middle of epochs."""
    shutil.copytree(tutorial / "data" / "kpath_spk.0", tutorial / "data" / "kpath_spk.1")
    cfg = json.loads((tutorial / "input.json").read_text())
    cfg["train_options"].update(num_epoch=6, save_freq=3, max_ckpt=10)
    cfg["train_options"]["loss_options"]["train"].update(diff_on=True)  # draws random k-pairs
    _write(tutorial / "input.json", cfg)
    Trainer(load_config("input.json"), "full", progress=False).run()
    mid = tutorial / "full" / "checkpoint" / "nnsk.iter3.pth"
    state = torch.load(mid, weights_only=False)
    assert state["epoch"] == 1 and len(state["epoch_progress"]["losses"]) == 1
    shutil.copytree(tutorial / "full" / "log", tutorial / "part" / "log")
    Trainer(load_config("input.json"), "part", restart=mid, progress=False).run()
    full, part = _history(tutorial / "full"), _history(tutorial / "part")
    assert [h["epoch"] for h in part] == list(range(1, 7))
    assert [h["train_loss"] for h in part] == pytest.approx([h["train_loss"] for h in full], rel=1e-12, abs=0)


@pytest.mark.parametrize("validation", [False, True])
def test_rop_steps_on_one_kind_of_metric(tutorial, data_dir, validation):
    cfg = json.loads((tutorial / "input.json").read_text())
    cfg["train_options"].update(num_epoch=7, validation_freq=3, lr_scheduler={"type": "rop", "patience": 2})
    if validation:
        shutil.copytree(data_dir / "silicon_bands" / "kpath.0", tutorial / "data" / "kpath.0")
        cfg["data_options"]["validation"] = {"root": "./data/", "prefix": "kpath", "get_eigenvalues": True}
    trainer = Trainer(load_config(_write(tutorial / "rop.json", cfg)), "rop", progress=False)
    metrics = []
    step = trainer.scheduler.after_epoch
    trainer.scheduler.after_epoch = lambda m=None: (metrics.append(m), step(m))
    trainer.run()
    hist = _history(tutorial / "rop")
    if not validation:
        assert metrics == [h["train_loss"] for h in hist]
    else:  # epoch 1 validates once (no validation loss yet), then epochs 3 and 6
        val = {h["epoch"]: h["val_loss"] for h in hist if "val_loss" in h}
        assert sorted(val) == [1, 3, 6]
        assert metrics == [val[1], val[1], val[3], val[3], val[3], val[6], val[6]]


def _si64_eig_ham(tmp_path, data_dir, monkeypatch, **train_options):
    """The Si64 ABACUS frame with reference eigenvalues of its DFT H and S at 3 k-points (Gamma
    among them), and the folder's own SLEM config (with overlap) set to ``eig_ham`` (coeff_ham 0.5)
    plus ``train_options``; cwd tmp_path. Returns the config dict."""
    src = data_dir / "si64_abacus"
    shutil.copytree(src / "Si64.0", tmp_path / "data" / "Si64.0")
    shutil.copy(src / "info.json", tmp_path / "data" / "info.json")
    tf = TrajectoryFolder(tmp_path / "data" / "Si64.0", basis=Basis({"Si": "1s1p"}))
    k = np.array([[0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.5, 0.5, 0.0]])
    np.save(tmp_path / "data" / "Si64.0" / "kpoints.npy", k)
    np.save(tmp_path / "data" / "Si64.0" / "eigenvalues.npy",
            band_energies(tf.operator("hamiltonian", 0), tf.operator("overlap", 0), k)[None])
    cfg = json.loads((src / "input_short_cpu.json").read_text())
    cfg["data_options"]["train"].update(get_eigenvalues=True)
    cfg["train_options"].update(loss_options={"train": {"method": "eig_ham", "coeff_ham": 0.5}}, **train_options)
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return cfg


def test_eig_ham_on_dft_blocks(tmp_path, data_dir, monkeypatch):
    """eig_ham on the Si64 ABACUS frame with reference eigenvalues of its DFT H and S: block and
    band errors both reported, the loss falls."""
    cfg = _si64_eig_ham(tmp_path, data_dir, monkeypatch, num_epoch=15)
    cfg["model_options"] = {"nnsk": {"onsite": {"method": "uniform"}, "std": 0.1,
                                     "hopping": {"method": "powerlaw", "rs": 3.2, "w": 0.1}}}
    cfg["common_options"]["overlap"] = False
    cfg["data_options"]["train"].update(get_overlap=False)
    cfg["train_options"]["optimizer"]["lr"] = 0.02
    assert main(["train", _write(tmp_path / "eh.json", cfg), "-o", "run", "-q"]) == 0
    hist = _history(tmp_path / "run")
    assert {"train_onsite_mae", "train_hopping_mae", "train_band_mae_meV"} <= set(hist[0])
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert all(h["train_band_skipped"] == 0 for h in hist)


@pytest.mark.parametrize("overlap", [True, False])
def test_eig_ham_trains_an_e3_model(tmp_path, data_dir, monkeypatch, overlap):
    """SLEM (E3, the Si64 example's own config) on eig_ham from scratch at lr 1e-4: the band error
    falls and never jumps, the guard never acts; with the predicted overlap (H c = E S c, Gamma
    among the k-points) and without it (S = 1; the reference bands are still those of the DFT S)."""
    cfg = _si64_eig_ham(tmp_path, data_dir, monkeypatch, num_epoch=8)
    cfg["train_options"]["optimizer"]["lr"] = 1e-4
    if not overlap:
        cfg["common_options"]["overlap"] = False
        cfg["data_options"]["train"]["get_overlap"] = False
    assert main(["train", _write(tmp_path / "e3.json", cfg), "-o", "run", "-q"]) == 0
    hist = _history(tmp_path / "run")
    mae = [h["train_band_mae_meV"] for h in hist]
    assert ("train_overlap_mae" in hist[0]) == overlap
    assert all(h["train_band_skipped"] == 0 for h in hist)
    assert mae[-1] < 0.98 * mae[0] and max(mae) < 1.1 * mae[0], mae


def test_eig_ham_guard_stops_the_explosion(tmp_path, data_dir, monkeypatch, capsys):
    """The same SLEM from scratch at the config's lr 5e-3: the first Adam step multiplies the
    hopping error many-fold, which puts the band energies tens of eV off (38 eV MAE at epoch 2;
    ~2000 eV before SLEM's neighbour sums had their cutoff envelope). Without the guard (then) the
    band term kept the run there (loss 14 -> 1.8e6 at epoch 2, still 2e4 at epoch 6); with it the
    frame's band term is left out while its mean band error exceeds the width of its bands (named
    once in a warning, its error still reported), the block term alone trains, and the band term
    counts again once the error is below the width (epoch 5 here) -- so no epoch's loss exceeds
    what a band error of the width gives, (1 - coeff_ham) x width^2."""
    cfg = _si64_eig_ham(tmp_path, data_dir, monkeypatch, num_epoch=6)
    assert main(["train", _write(tmp_path / "e3.json", cfg), "-o", "run", "-q"]) == 0
    hist = _history(tmp_path / "run")
    err = capsys.readouterr().err
    assert err.count("eig_ham: band term of frame Si64.0[0] left out") == 1, err
    width = float(re.search(r"width of its kept reference bands \(([0-9.]+) eV\)", err).group(1))
    skipped = [h["train_band_skipped"] for h in hist]
    mae_eV = [h["train_band_mae_meV"] / 1e3 for h in hist]
    assert skipped[0] == 0 and skipped[1] == 1, skipped
    assert all((s == 1) == (m > width) for s, m in zip(skipped, mae_eV)), (skipped, mae_eV, width)
    assert mae_eV[1] > width  # reported as predicted, not hidden
    assert 0 in skipped[2:], skipped  # the band term comes back once the frame is comparable
    assert max(h["train_loss"] for h in hist) < 0.5 * width**2, [h["train_loss"] for h in hist]


def test_eig_ham_guard_on_an_indefinite_overlap():
    """A predicted S(k) that is not positive definite: eigvals stops with the frame named, eig_ham
    leaves that frame's band term out and counts it, the other frame's band term stays."""
    from eqtb.train.loss import EigHamLoss

    s = displaced(silicon_primitive(), seed=4)
    H, S = sp_model(s)
    basis = H.basis
    k = np.random.default_rng(4).random((4, 3))
    samples = []
    for name in ("good", "bad"):
        sample = make_sample(name, s, {"hamiltonian": H, "overlap": S}, basis, 4.0, torch.float64)
        attach_bands(sample, basis, k, band_energies(H, S, k) + 0.3, BandInfo(), name)
        samples.append(sample)
    batch = make_batch(samples)
    pred = {q: tuple(torch.cat([x.targets[q][i] for x in samples]) for i in (0, 1)) for q in ("hamiltonian", "overlap")}
    n_on = samples[0].inputs.types.shape[0]
    pred["overlap"][0][n_on:] *= -1.0  # the second frame's onsite overlap blocks: S(k) negative definite
    with pytest.raises(LossError, match="bad: the predicted overlap S\\(k\\) is not positive definite"):
        EigvalsLoss(basis, {}, overlap=True)(pred, batch)
    loss_fn = EigHamLoss(basis, {"coeff_ham": 0.5}, overlap=True)
    with pytest.warns(UserWarning, match="band term of frame bad left out .* not positive definite"):
        sums = loss_fn.sums(pred, batch)
    loss, info = loss_fn.combine(sums)
    assert info["band_skipped"] == 0.5 and float(sums["band_weight"]) == 1.0
    assert float(loss) > 0 and torch.isfinite(loss)
    assert info["band_mae_meV"] == pytest.approx(0.0, abs=1e-6)  # the good frame: exact blocks

"""``eqtb test`` and :mod:`eqtb.train.evaluate`: a tiny SLEM trained in-process on the real Si64
ABACUS frame, then tested through the command line on a folder, a dataset root and configs."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import copy_si64
from eqtb.cli import main

BASIS = {"Si": "1s1p"}
NK = 2  # k-points kept in the test copy, so that band errors stay cheap


@pytest.fixture(scope="module")
def setup(data_dir, tmp_path_factory):
    """A copy of Si64.0 (with eigenvalues.npy of the DFT H, S at NK k-points), its training config
    and the checkpoint of a 2-epoch tiny model."""
    from eqtb.config import load_config
    from eqtb.data.folder import TrajectoryFolder
    from eqtb.tb.spectrum import band_energies
    from eqtb.train.trainer import Trainer

    src = data_dir / "si64_abacus"
    tmp = tmp_path_factory.mktemp("evaluate")
    folder = copy_si64(data_dir, tmp)
    kpts = np.load(folder / "kpoints.npy")[:: 36 // NK][:NK]
    np.save(folder / "kpoints.npy", kpts)
    fr = TrajectoryFolder(folder).frame(0, density_matrix=False, eigenvalues=False)
    np.save(folder / "eigenvalues.npy", band_energies(fr.hamiltonian, fr.overlap, kpts)[None])

    cfg = json.loads((src / "input_short_cpu.json").read_text())
    cfg["model_options"]["embedding"].update(irreps_hidden="8x0e+8x1o+4x2e", n_layers=1, r_max={"Si": 5.0})
    cfg["model_options"]["prediction"]["neurons"] = [16, 16]
    cfg["train_options"]["num_epoch"] = 2
    config = tmp / "input.json"  # its data root "./data" resolves beside the config
    config.write_text(json.dumps(cfg, indent=2))
    Trainer(load_config(config), tmp / "train", progress=False).run()
    ckpt = tmp / "train" / "checkpoint" / "slem.latest.pth"
    assert ckpt.is_file()
    return {"tmp": tmp, "root": tmp / "data", "folder": folder, "config": config, "ckpt": ckpt, "cfg": cfg}


@pytest.fixture(scope="module")
def reference_mae(setup):
    """MAE (meV, and 1e-3 for S) of the model on the frame, computed independently with numpy."""
    from eqtb.predict import load_model
    from eqtb.train.data import load_samples

    model = load_model(setup["ckpt"])
    (s,) = load_samples(setup["root"], "Si64", model.basis, model.r_max, ["hamiltonian", "overlap"])
    with torch.no_grad():
        pred = model(s.inputs)
    out = {}
    for q in ("hamiltonian", "overlap"):
        err = [np.abs(p.double().numpy() - t.double().numpy()).ravel() for p, t in zip(pred[q], s.targets[q])]
        out[q] = 1000.0 * np.concatenate(err).mean()  # Si 1s1p: every entry of the 4x4 blocks exists
    return out


def _run(args, capsys):
    rc = main(["test", *map(str, args)])
    return rc, capsys.readouterr()


@pytest.mark.parametrize("kind", ["folder", "root+prefix", "train config", "test config"])
def test_errors_match_numpy(setup, reference_mae, tmp_path, capsys, kind):
    if kind == "folder":
        inp, extra, expect_set = setup["folder"], [], None
    elif kind == "root+prefix":
        inp, extra, expect_set = setup["root"], ["--prefix", "Si64"], None
    elif kind == "train config":
        inp, extra, expect_set = setup["config"], [], "data_options.train"
    else:
        inp = setup["tmp"] / "test.json"
        inp.write_text(json.dumps({"common_options": {"basis": BASIS, "overlap": True},
                                   "data_options": {"test": {"root": "./data", "prefix": "Si64",
                                                             "get_Hamiltonian": True, "get_overlap": True}}}))
        extra, expect_set = [], "data_options.test"
    out = tmp_path / "out"
    rc, cap = _run([inp, "-i", setup["ckpt"], "-o", out, *extra], capsys)
    assert rc == 0, cap.err
    assert "hamiltonian: errors in meV" in cap.out and "offsite Si-Si" in cap.out
    res = json.loads((out / "test_results.json").read_text())
    assert res["frames"] == 1 and res["dataset"]["set"] == expect_set
    assert res["dataset"]["quantities"] == ["hamiltonian", "overlap"]
    assert res["basis"] == BASIS and "bands" not in res
    for q in ("hamiltonian", "overlap"):
        r = res["blocks"][q]
        for group in ("all", "offsite"):
            assert np.isfinite(r[group]["mae"]) and r[group]["mae"] > 0
            assert np.isfinite(r[group]["rmse"]) and r[group]["rmse"] >= r[group]["mae"]
        assert r["all"]["count"] == r["onsite"]["count"] + r["offsite"]["count"] > 0
        assert r["all"]["mae"] == pytest.approx(reference_mae[q], rel=1e-5)
    assert res["blocks"]["hamiltonian"]["unit"] == "meV" and res["blocks"]["overlap"]["unit"] == "1e-3"


def test_bands_cli(setup, tmp_path, capsys):
    out = tmp_path / "out"
    rc, cap = _run([setup["folder"], "-i", setup["ckpt"], "-o", out, "--bands", "--nel-atom", '{"Si": 4}', "-q"],
                   capsys)
    assert rc == 0, cap.err
    assert cap.out == ""
    b = json.loads((out / "test_results.json").read_text())["bands"]
    assert b["unit"] == "meV" and set(b["align"]) == {"none", "mean"}
    assert b["frames"] + len(b["failed"]) == 1
    if b["frames"]:  # the predicted S of an untrained model may be indefinite: then the frame is listed as failed
        assert b["overlap"] == "model" and b["window"] == 1.0 and b["frames_with_fermi"] == 1
        for align in ("none", "mean"):
            r = b["align"][align]
            assert np.isfinite(r["mae"]) and r["mae"] > 0 and r["count"] == NK * b["nbands"]
            assert len(r["per_band_mae"]) == b["nbands"]
            assert r["window"]["count"] > 0 and np.isfinite(r["window"]["mae"])
        assert b["align"]["none"]["shift_mean"] == 0.0
    rc, cap = _run([setup["folder"], "-i", setup["ckpt"], "-o", out, "--attribute", "-q"], capsys)
    assert rc == 2 and "--attribute compares bands: give --bands" in cap.err
    rc, cap = _run([setup["folder"], "-i", setup["ckpt"], "-o", out, "--bands", "--attribute", "-q"], capsys)
    attribution = json.loads((out / "test_results.json").read_text())["bands"]["attribution"]
    assert rc == 0 and set(attribution) == {"exact_onsite", "exact_offsite"}


class _Oracle(torch.nn.Module):
    """A 'model' that returns the targets of the samples in order."""

    def __init__(self, samples, basis, r_max):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.basis, self.r_max, self.quantity, self.has_overlap = basis, r_max, "hamiltonian", True
        self.quantities = ("hamiltonian", "overlap")
        self._targets = iter([s.targets for s in samples])

    def forward(self, inputs):
        return next(self._targets)


def test_evaluate_exact_with_perfect_predictions(setup):
    """Targets as predictions: zero block errors, and zero band errors against the eigenvalues of
    the same (cutoff-truncated) H and S."""
    from eqtb.basis import Basis
    from eqtb.tb.spectrum import band_energies
    from eqtb.train.evaluate import evaluate, load_test_samples
    from eqtb.train.trainer import sample_operator

    basis = Basis(BASIS)
    samples, fermis = load_test_samples([setup["folder"]], basis, {"Si": 5.0}, ["hamiltonian"], ["overlap"],
                                        eigenvalues=True, dtype=torch.float64)
    assert len(samples) == 1 and fermis == [None] and set(samples[0].targets) == {"hamiltonian", "overlap"}
    s = samples[0]
    s.eigenvalues = band_energies(sample_operator(s, basis, "hamiltonian"), sample_operator(s, basis, "overlap"),
                                  s.kpoints)[:, :200]
    e_f = float(np.median(s.eigenvalues))
    res = evaluate(_Oracle(samples, basis, {"Si": 5.0}), samples, bands=True, window=0.5, fermi_levels=[e_f])
    assert res["frames"] == 1
    for q in ("hamiltonian", "overlap"):
        assert res["blocks"][q]["all"]["mae"] == 0.0 and res["blocks"][q]["all"]["count"] == 15360
    b = res["bands"]
    assert b["frames"] == 1 and b["nbands"] == 200 and b["overlap"] == "model" and not b["failed"]
    for align in ("none", "mean"):
        r = b["align"][align]
        assert r["mae"] < 1e-6 and r["count"] == NK * 200 and len(r["per_band_mae"]) == 200
        assert r["window"]["count"] > 0 and r["window"]["mae"] < 1e-6
    assert "bands: errors in meV" in res["table"] and "hamiltonian: errors in meV" in res["table"]


def test_attribution_puts_in_each_kind_of_exact_block(setup):
    """A 'model' with exact onsite blocks and perturbed off-site ones (and the exact S): its band
    error is all the off-site blocks', so putting in the exact off-site blocks removes it and putting
    in the exact onsite ones changes nothing; swapped roles with perturbed onsite blocks."""
    from eqtb.basis import Basis
    from eqtb.tb.spectrum import band_energies
    from eqtb.train.evaluate import ATTRIBUTIONS, evaluate, load_test_samples
    from eqtb.train.trainer import sample_operator

    basis = Basis(BASIS)
    gen = torch.Generator().manual_seed(0)
    for wrong in (1, 0):  # 1: off-site blocks perturbed, 0: onsite ones
        samples, _ = load_test_samples([setup["folder"]], basis, {"Si": 5.0}, ["hamiltonian"], ["overlap"],
                                       eigenvalues=True, dtype=torch.float64)
        s = samples[0]
        s.eigenvalues = band_energies(sample_operator(s, basis, "hamiltonian"),
                                      sample_operator(s, basis, "overlap"), s.kpoints)
        oracle = _Oracle(samples, basis, {"Si": 5.0})
        blocks = list(s.targets["hamiltonian"])
        noise = 1e-3 * torch.randn(blocks[wrong].shape, generator=gen, dtype=torch.float64)
        if wrong == 0:
            noise = noise + noise.transpose(1, 2)  # onsite blocks stay symmetric
        blocks[wrong] = blocks[wrong] + noise
        oracle._targets = iter([{**s.targets, "hamiltonian": tuple(blocks)}])
        res = evaluate(oracle, samples, bands=True, window=None, attribute=True)
        b = res["bands"]
        model = b["align"]["none"]["mae"]
        fixed, same = (b["attribution"][k]["none"]["mae"] for k in (ATTRIBUTIONS[wrong], ATTRIBUTIONS[1 - wrong]))
        assert model > 0.1 and fixed < 1e-6 and same == pytest.approx(model, rel=1e-12)
        assert "exact onsite" in res["table"] and "exact offsite" in res["table"]
    assert "attribution" not in evaluate(_Oracle(samples, basis, {"Si": 5.0}), samples, bands=True)["bands"]


def test_basis_mismatch_folder(setup, tmp_path, capsys):
    bad = tmp_path / "bad" / "Si64.0"
    bad.mkdir(parents=True)
    for f in setup["folder"].iterdir():
        if f.suffix != ".h5":  # the basis check comes before any block is read
            shutil.copyfile(f, bad / f.name)
    shutil.copyfile(setup["root"] / "info.json", bad.parent / "info.json")
    (bad / "hamiltonians.h5").touch()
    (bad / "basis.dat").write_text("{'Si': '2s2p1d'}")
    rc, cap = _run([bad, "-i", setup["ckpt"], "-o", tmp_path / "out", "-q"], capsys)
    assert rc == 2
    err = cap.err.strip()
    assert "\n" not in err and err.startswith("eqtb test: error:")
    assert str(bad / "basis.dat") in err and "2s2p1d" in err and "1s1p" in err
    assert not (tmp_path / "out" / "test_results.json").exists()


def test_basis_mismatch_config(setup, tmp_path, capsys):
    cfg = json.loads(json.dumps(setup["cfg"]))
    cfg["common_options"]["basis"] = {"Si": "2s2p1d"}
    path = setup["tmp"] / "other_basis.json"
    path.write_text(json.dumps(cfg))
    rc, cap = _run([path, "-i", setup["ckpt"], "-o", tmp_path / "out"], capsys)
    assert rc == 2
    errors = [line for line in cap.err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and str(path) in errors[0] and "common_options.basis" in errors[0], cap.err


def test_input_errors(setup, tmp_path, capsys):
    # a training config with a typo: the training schema's problem is reported, not the test schema's
    cfg = json.loads(json.dumps(setup["cfg"]))
    cfg["train_options"]["num_epochs"] = cfg["train_options"].pop("num_epoch")
    typo = setup["tmp"] / "typo.json"
    typo.write_text(json.dumps(cfg))
    rc, cap = _run([typo, "-i", setup["ckpt"]], capsys)
    assert rc == 2 and "train_options.num_epochs" in cap.err and str(typo) in cap.err
    # missing checkpoint, missing input, --prefix with a config
    missing = tmp_path / "nope.pth"
    rc, cap = _run([setup["folder"], "-i", missing], capsys)
    assert rc == 2 and str(missing) in cap.err
    rc, cap = _run([tmp_path / "nothing", "-i", setup["ckpt"]], capsys)
    assert rc == 2 and str(tmp_path / "nothing") in cap.err
    rc, cap = _run([setup["config"], "-i", setup["ckpt"], "--prefix", "Si64"], capsys)
    assert rc == 2 and "--prefix" in cap.err


def test_bands_compare_the_bandinfo_window(data_dir, tmp_path):
    """A band dataset's bandinfo [band_min, band_max) is what eqtb test compares (DeePTB's kpath_spk:
    bands 0-6 of 14, with DeePTB's tutorial nnsk, 18 orbitals); without bandinfo, all the bands
    both sides have."""
    silicon = data_dir / "deeptb_examples" / "silicon"
    ckpt = silicon / "tutorial_v2.2" / "ref_ckpt" / "nnsk_tr1.pth"
    folder = tmp_path / "kpath_spk.0"
    shutil.copytree(silicon / "data" / "kpath_spk.0", folder)
    torch.set_num_threads(1)

    def compared(out):
        assert main(["test", "-i", str(ckpt), str(folder), "--bands", "-q", "-o", str(tmp_path / out)]) == 0
        bands = json.loads((tmp_path / out / "test_results.json").read_text())["bands"]
        return bands["nbands"], bands["align"]["mean"]["mae"]

    n_window, mae_window = compared("window")
    info = json.loads((folder / "info.json").read_text())
    del info["bandinfo"]
    (folder / "info.json").write_text(json.dumps(info))
    n_all, mae_all = compared("all")
    assert (n_window, n_all) == (6, 14)
    assert mae_window < 100 < mae_all  # the fitted window; the conduction bands above it were never fitted

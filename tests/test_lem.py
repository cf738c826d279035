"""LEM (eqtb.models.lem): its receptive field counted in bonds, exactly; no chunking; DeePTB's lem
example configs (LMDB data, per-epoch and per-iteration schedulers) train unchanged but for the
device; its ignored keys. The physics every family has (equivariance, declared locality, Hermitian
blocks) is tested by tests/test_families.py."""

import json
import shutil

import numpy as np
import pytest
import torch

from eqtb.basis import Basis
from eqtb.cli import main
from eqtb.config import config_from_dict, ignored_keys
from eqtb.models import model_from_options
from eqtb.models.lem import LEM
from eqtb.models.testing import predict_blocks, randomize, receptive_field_in_bonds

SI = Basis({"Si": "1s1p"})
EXAMPLES = ["clr_per_epoch_test", "clr_per_iter_test", "exp_per_epoch_test", "exp_per_iter_test"]


def lem(n_layers: int, basis: Basis = SI, seed: int = 0) -> LEM:
    torch.manual_seed(seed)
    options = LEM.example_options(basis)
    options["embedding"]["n_layers"] = n_layers
    model = model_from_options(options, basis, overlap=True)
    assert type(model) is LEM
    return randomize(model, seed).double().eval()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("n_layers", [1, 2])
def test_receptive_field_is_n_layers_plus_one_bonds(n_layers, si64_displaced):
    """r_max 3 A: the bonds of displaced Si64 are its nearest-neighbour pairs. Moving an atom k by
    0.1 A changes the onsite block of i exactly when k is at most n_layers + 1 bonds from i, and
    the off-site block of bond (i, j) exactly when k is at most n_layers + 1 bonds from i or j:
    the declared Locality(n_layers + 1), and no wider or narrower."""
    model = lem(n_layers)
    assert model.locality.hops == n_layers + 1
    seen = receptive_field_in_bonds(model, si64_displaced, range(1, n_layers + 4))
    for which in ("onsite", "offsite"):
        for depth, change in seen[which].items():  # ~1e-7 at the far end inside, else exactly 0
            assert (change > 1e-9) if depth <= n_layers + 1 else (change < 1e-13), (which, depth, change)


def test_edge_chunk_is_ignored(gaas_displaced):
    """Not strictly local: one part whatever edge_chunk asks, the same blocks."""
    gaas = Basis({"Ga": "2s2p2d", "As": "2s2p1d"})
    model = lem(1, gaas)
    assert not model.locality.strictly_local and model.describe()["halo"] == 6.0
    _, full = predict_blocks(model, gaas_displaced)
    _, chunked = predict_blocks(model, gaas_displaced, edge_chunk=7)
    for q in full:
        for a, b in zip(full[q], chunked[q]):
            assert torch.equal(a, b)


@pytest.fixture()
def deeptb_lem_run(tmp_path, data_dir, monkeypatch):
    """DeePTB's clr_and_per_iter_update folder: the four lem configs with device cuda -> cpu (the
    only edit), the LMDB data next to them; cwd is the folder, as for DeePTB."""
    src = data_dir / "deeptb_examples" / "clr_and_per_iter_update"
    shutil.copytree(src / "gau_2_items", tmp_path / "gau_2_items")
    for name in EXAMPLES:
        cfg = json.loads((src / f"{name}.json").read_text())
        assert cfg["common_options"].pop("device") == "cuda"
        cfg["common_options"]["device"] = "cpu"
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg, indent=4))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return tmp_path


@pytest.mark.parametrize("name", EXAMPLES)
def test_deeptb_lem_examples_train_unchanged(deeptb_lem_run, name):
    """All 10 epochs of each config (C/H/O molecules, 5s4p1d, 5 LEM layers, H and S, cyclic or
    exponential lr stepped per epoch or per iteration): the loss falls; the checkpoint is a lem
    model that eqtb.load predicts with, Hermitian operators on a molecule of the data's elements."""
    pytest.importorskip("tensorboard", reason="the configs set use_tensorboard (pip install tensorboard)")
    import eqtb
    from ase.build import molecule

    assert main(["train", f"{name}.json", "-o", "run", "-q"]) == 0
    hist = [json.loads(line) for line in open(deeptb_lem_run / "run" / "log" / "history.jsonl")]
    losses = [h["train_loss"] for h in hist]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0] and sum(losses[-3:]) / 3 < 0.75 * losses[0], losses
    lrs = [h["lr"] for h in hist]
    assert len(set(lrs)) > 3  # the scheduler acts
    assert (deeptb_lem_run / "run" / "tensorboard_logs").is_dir()
    model = eqtb.load(deeptb_lem_run / "run" / "checkpoint" / "lem.latest.pth")
    assert model.model.family == "lem" and model.model.locality.hops == 6
    pred = model.predict(molecule("CH3CH2OH"))
    H = pred.hk([[0, 0, 0]])[0]
    assert np.abs(H).max() > 0.1 and np.allclose(H, H.conj().T, atol=1e-6 * np.abs(H).max())


def test_lem_ignored_keys_are_slem_keys(data_dir):
    """The lem embedding has slem's keys; those eqtb's LEM does not act on are named as for SLEM."""
    cfg = json.loads((data_dir / "si64_abacus" / "input_short_cpu.json").read_text())
    cfg["model_options"]["embedding"].update(method="lem", env_embed_multiplicity=16, res_update_ratios=0.3)
    listed = dict(ignored_keys(config_from_dict(cfg)))
    assert set(listed) == {"model_options.embedding.tp_radial_emb", "model_options.embedding.env_embed_multiplicity"}
    assert listed["model_options.embedding.env_embed_multiplicity"].startswith("eqtb's LEM has no")

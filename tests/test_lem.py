"""LEM (eqtb.models.lem): its receptive field counted in bonds, exactly; no chunking; DeePTB's lem
example configs (LMDB data, per-epoch and per-iteration schedulers) train unchanged but for the
device; its ignored keys. The physics every family has (equivariance, declared locality, Hermitian
blocks) is tested by tests/test_families.py."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path

from eqtb.basis import Basis
from eqtb.cli import main
from eqtb.config import config_from_dict, ignored_keys
from eqtb.models import model_from_options
from eqtb.models.lem import LEM
from eqtb.models.testing import predict_blocks, randomize, rel
from eqtb.structure import Structure

SI = Basis({"Si": "1s1p"})
EXAMPLES = ["clr_per_epoch_test", "clr_per_iter_test", "exp_per_epoch_test", "exp_per_iter_test"]


def lem(n_layers: int, basis: Basis = SI, seed: int = 0) -> LEM:
    torch.manual_seed(seed)
    options = LEM.example_options(basis)
    options["embedding"]["n_layers"] = n_layers
    model = model_from_options(options, basis, overlap=True)
    assert type(model) is LEM
    return randomize(model, seed).double().eval()


def bond_hops(graph, n: int) -> np.ndarray:
    """(n, n) number of bonds on the shortest path between atoms (periodic images are one atom)."""
    adjacency = coo_matrix((np.ones(graph.n_edges), (graph.i, graph.j)), shape=(n, n))
    return shortest_path(adjacency, directed=False, unweighted=True)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("n_layers", [1, 2])
def test_receptive_field_is_n_layers_plus_one_bonds(n_layers, si64_displaced):
    """r_max 3 A: the bonds of displaced Si64 are its nearest-neighbour pairs. Moving an atom k by
    0.1 A changes the onsite block of i exactly when k is at most n_layers + 1 bonds from i, and
    the off-site block of bond (i, j) exactly when k is at most n_layers + 1 bonds from i or j:
    the declared Locality(n_layers + 1), and no wider or narrower."""
    model = lem(n_layers)
    assert model.locality.hops == n_layers + 1
    s = si64_displaced
    g, out = predict_blocks(model, s)
    on, off = out["hamiltonian"]
    hops = bond_hops(g, s.natoms)
    e = int(np.argmin(np.where(g.i != g.j, g.lengths, np.inf)))
    i, j = int(g.i[e]), int(g.j[e])
    rng = np.random.default_rng(7)
    seen = {"onsite": set(), "offsite": set()}
    for depth in range(1, n_layers + 4):
        for which, dist in (("onsite", hops[i]), ("offsite", np.minimum(hops[i], hops[j]))):
            k = next(int(k) for k in rng.permutation(s.natoms) if k not in (i, j) and dist[k] == depth)
            pos = s.positions.copy()
            step = rng.normal(size=3)
            pos[k] += 0.1 * step / np.linalg.norm(step)
            g2, out2 = predict_blocks(model, Structure(s.numbers, pos, s.cell, s.pbc))
            assert np.array_equal(g2.i, g.i) and np.array_equal(g2.j, g.j) and np.array_equal(g2.R, g.R)
            on2, off2 = out2["hamiltonian"]
            change = rel(on2[i], on[i]) if which == "onsite" else rel(off2[e], off[e])
            if depth <= n_layers + 1:
                assert change > 1e-9, (which, depth, change)  # ~1e-7 at the far end, else 0
                seen[which].add(depth)
            else:
                assert change < 1e-13, (which, depth, change)
    assert seen["onsite"] == seen["offsite"] == set(range(1, n_layers + 2))


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

"""The two-body onsite term of the E3 families (:class:`eqtb.models.heads.PairOnsite`) on real data.

An onsite block of an atom in a crystal is dominated by sums over its neighbours of two-body terms;
SLEM, LEM and ELCT add such sums, ``sum_j w(s_ij) Y_L(r_ij)``, to their onsite features. Here, on
the Si64 ABACUS frame: the sums of an untrained, calibrated SLEM (one column per edge scalar) fitted
by ridge least squares to the onsite blocks of 48 atoms predict the other 16 atoms' blocks to a
fraction of the spread of the targets (measured: 16 % for s-s and p-p 0e, 5 % for s-p 1o and p-p
2e; a wrong frame or parity would leave the spread) -- what the term is there for --, the channel of unnatural parity stays
exactly zero, and a checkpoint without the term loads as the model it describes.
"""

import json

import numpy as np
import pytest
import torch

from eqtb.blocks import BlockTransform
from eqtb.config import load_config
from eqtb.train.trainer import Trainer


@pytest.fixture(scope="module")
def si64_slem(data_dir, tmp_path_factory):
    src = data_dir / "si64_abacus"
    cfg = json.loads((src / "input_short_cpu.json").read_text())
    cfg["model_options"]["embedding"].update(irreps_hidden="8x0e+8x1o+4x2e", n_layers=1, r_max={"Si": 6.0})
    cfg["data_options"]["train"]["root"] = str(src)
    path = tmp_path_factory.mktemp("pair_onsite") / "input.json"
    path.write_text(json.dumps(cfg))
    torch.set_num_threads(1)
    with pytest.warns(Warning):  # the tutorial's tp_radial_emb is ignored (named once)
        trainer = Trainer(load_config(path, {"train_options.num_epoch": 1}), path.parent / "run", progress=False)
    return trainer.model.double(), trainer.train_set[0]


def _columns(model, inputs) -> np.ndarray:
    """(N, onsite_dim, C + 1): the flat onsite features of PairOnsite with w = edge scalar c (and,
    last, w = 1), for every atom, each edge's term times its cutoff envelope as the model sums it."""
    head = model.pair_onsite
    inputs = inputs.to(torch.device("cpu"), torch.float64)
    geo = model.geometry(inputs)
    s = model._edge_scalars(geo["radial"], inputs.types[inputs.src], inputs.types[inputs.dst])
    cols = []
    with torch.no_grad():
        for c in range(head.lin.in_features + 1):
            head.lin.weight.zero_()
            head.lin.bias.zero_()
            if c < head.lin.in_features:
                head.lin.weight[:, c] = 1.0
            else:
                head.lin.bias.fill_(1.0)
            parts = head.add(None, s, geo["D"], inputs.src, inputs.n_atoms, geo["envelope"])
            cols.append(head.layout.merge(parts).numpy())
        head.lin.weight.zero_()
        head.lin.bias.zero_()
    return np.stack(cols, axis=2)


def test_two_body_sums_predict_the_onsite_blocks_of_atoms_not_fitted(si64_slem):
    model, sample = si64_slem
    X = _columns(model, sample.inputs)
    up = BlockTransform(model.basis, "upper")
    Y = up.to_features(sample.targets["hamiltonian"][0].double()).numpy()  # (N, onsite_dim), eV
    fit, held = np.arange(48), np.arange(48, 64)
    checked = 0
    for p in up.pairs:
        for ell in p.irreps_l:
            comps = slice(p.start + sum(2 * x + 1 for x in p.irreps_l if x < ell),
                          p.start + sum(2 * x + 1 for x in p.irreps_l if x <= ell))
            A, y = X[:, comps], Y[:, comps]
            if (p.parity * (-1) ** ell) != 1:  # unnatural parity (the antisymmetric p-p 1e): nothing
                assert np.abs(A).max() == 0.0
                continue
            if ell == 0:
                A = np.concatenate([A, np.ones_like(A[:, :, :1])], axis=2)
            Af, yf = A[fit].reshape(-1, A.shape[2]), y[fit].reshape(-1)
            scale = np.abs(Af).max(axis=0) + 1e-30  # ridge on columns of unit size (more columns than atoms)
            B = Af / scale
            coef = np.linalg.solve(B.T @ B + 1e-4 * len(B) * np.eye(B.shape[1]), B.T @ yf) / scale
            err = np.abs(A[held].reshape(-1, A.shape[2]) @ coef - y[held].reshape(-1)).mean()
            spread = np.abs(y - y.mean(axis=0) if ell == 0 else y).mean()
            assert err < 0.25 * spread, (p.name, ell, err, spread)
            checked += 1
    assert checked == 4  # s-s 0e, s-p 1o, p-p 0e and 2e


def test_a_checkpoint_without_the_term_loads_as_the_same_model(si64_slem):
    model, sample = si64_slem
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("pair_onsite.")}
    with torch.no_grad():
        model.pair_onsite.lin.weight.normal_()
        model.load_state_dict(state)
        assert model.pair_onsite.lin.weight.abs().max() == 0.0
        model.pair_onsite.lin.weight.normal_()
        model.init_from(model.family, state)  # eqtb train -i from such a checkpoint
        assert model.pair_onsite.lin.weight.abs().max() == 0.0
        inputs = sample.inputs.to(torch.device("cpu"), torch.float64)
        before = model(inputs)["hamiltonian"][0]
        model.pair_onsite.lin.bias.fill_(0.1)
        assert (model(inputs)["hamiltonian"][0] - before).abs().max() > 1e-4  # the term does act
        model.pair_onsite.lin.bias.zero_()

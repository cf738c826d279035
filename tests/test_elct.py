"""ELCT (eqtb.models.elct) and its building blocks (eqtb.nn.attention, eqtb.nn.norm).

tests/test_families.py runs the physics every family has on ELCT's example options (the default,
semi-local variant). Here: the strictly local variant through the same checks (and chunked =
unchunked), the receptive fields counted in bonds, exactly; the attention's online softmax over
chunks of edges and its smooth cutoff; the layer norm's equivariance and its two forms; the config
schema and ignored keys; and examples/elct_si64.json trained with `eqtb train` on the Si64 data."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import copy_si64
from eqtb.basis import Basis
from eqtb.cli import main
from eqtb.config import ConfigError, config_from_dict, ignored_keys
from eqtb.models import model_from_options
from eqtb.models.elct import ELCT
from eqtb.models.testing import (
    chunk_errors,
    equivariance_errors,
    locality_errors,
    predict_blocks,
    randomize,
    receptive_field_in_bonds,
    rel,
    reversal_errors,
)
from eqtb.nn.attention import VertexAttention, head_of_channel, segment_softmax
from eqtb.nn.norm import EquivariantLayerNorm
from eqtb.nn.so2 import IrrepsLayout, directed_frames
from eqtb.so3 import irreps_D
from eqtb.structure import Structure

SI = Basis({"Si": "1s1p"})
GAAS = Basis({"Ga": "2s2p2d", "As": "2s2p1d"})
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "elct_si64.json"


def elct(basis: Basis = SI, seed: int = 0, dtype=torch.float64, **embedding) -> ELCT:
    torch.manual_seed(seed)
    options = ELCT.example_options(basis)
    options["embedding"].update(embedding)
    model = model_from_options(options, basis, overlap=True)
    assert type(model) is ELCT
    return randomize(model, seed).to(dtype).eval()


# ---------------------------------------------------------------------------------- the model
@pytest.mark.usefixtures("one_thread")
class TestStrictlyLocal:
    """The strictly local variant: the checks of tests/test_families.py, and chunks."""

    def test_declared(self):
        model = elct(GAAS, strictly_local=True)
        assert model.locality.hops == 1 and model.locality.strictly_local
        assert elct(GAAS).locality.hops == 2  # the example's default variant: n_layers blocks

    @pytest.mark.parametrize("det", [1, -1], ids=["proper", "improper"])
    def test_equivariance(self, det, gaas_displaced):
        errors = equivariance_errors(elct(GAAS, strictly_local=True), gaas_displaced, det, seed=30 + det)
        assert max(errors.values()) < 1e-9, errors
        model = elct(GAAS, strictly_local=True, dtype=torch.float32)
        errors = equivariance_errors(model, gaas_displaced, det, torch.float32, seed=40 + det)
        assert max(errors.values()) < 1e-5, errors

    def test_locality(self, si64_displaced):
        errors = locality_errors(elct(SI, strictly_local=True, r_max=4.0), si64_displaced, seed=5)
        assert errors["outside"] < 1e-12 and errors["inside"] > 1e-4, errors

    def test_hermitian(self, gaas_displaced):
        errors = reversal_errors(elct(GAAS, strictly_local=True), gaas_displaced)
        assert errors["onsite"] < 1e-12 and errors["reversed"] < 1e-10 and errors["asymmetry"] > 1e-2, errors

    @pytest.mark.parametrize("chunk", [7, 20])
    def test_chunked_equals_unchunked(self, chunk, gaas_displaced):
        model = elct(GAAS, strictly_local=True)
        assert chunk_errors(model, gaas_displaced, chunk=chunk) < 1e-10
        g, _ = predict_blocks(model, gaas_displaced)
        from eqtb.models.inputs import ModelInputs

        x = ModelInputs.from_graph(g, model.basis, torch.float64)
        parts = list(model.features(x, edge_chunk=chunk))
        assert len(parts) == model.chunk_steps(x, chunk) // (model.n_layers + 1) > 1

    def test_one_block_default_is_strictly_local_and_chunks(self, gaas_displaced):
        """The default variant with one block reads no neighbour's hidden features beyond the edge
        embedding: Locality(1), and chunked evaluation is exact."""
        model = elct(GAAS, n_layers=1)
        assert model.locality.hops == 1
        assert chunk_errors(model, gaas_displaced, chunk=7) < 1e-10


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("n_layers, strict", [(1, False), (2, False), (3, False), (2, True)],
                         ids=["default-1", "default-2", "default-3", "strict-2"])
def test_receptive_field_in_bonds(n_layers, strict, si64_displaced):
    """r_max 3 A: the bonds of displaced Si64 are its nearest-neighbour pairs. Moving an atom k by
    0.1 A changes the onsite block of i exactly when k is at most `hops` bonds from i, and the
    off-site block of bond (i, j) exactly when k is at most `hops` bonds from i or j, where hops is
    the declared locality: n_layers for the default variant, 1 for the strictly local one."""
    model = elct(SI, n_layers=n_layers, strictly_local=strict)
    hops = model.locality.hops
    assert hops == (1 if strict else n_layers)
    seen = receptive_field_in_bonds(model, si64_displaced, range(1, hops + 3))
    for which in ("onsite", "offsite"):
        for depth, change in seen[which].items():
            assert (change > 1e-9) if depth <= hops else (change < 1e-13), (which, depth, change)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_every_parameter_learns(strict, gaas_displaced):
    """One backward pass reaches every parameter (no dead stage: the first block's convolutions
    take the m = 0 group alone, as nothing else is there)."""
    model = elct(GAAS, strictly_local=strict).train()
    from eqtb.models.inputs import ModelInputs
    from eqtb.structure import build_graph

    x = ModelInputs.from_graph(build_graph(gaas_displaced, model.r_max, model.basis.symbols), model.basis,
                               torch.float64)
    out = model(x)
    sum((on.pow(2).sum() + off.pow(2).sum()) for on, off in out.values()).backward()


    def masked_out(name):  # SO(2) weights of parity-changing paths, which natural-parity irreps lack
        prefix, kind, m = name.rsplit(".", 2)
        return kind == "wb" and not getattr(model.get_submodule(prefix), f"mask_b{int(m) + 1}").any()

    dead = [n for n, p in model.named_parameters() if p.grad is None or not (p.grad.abs().sum() > 0 or masked_out(n))]
    assert not dead, dead


def test_smooth_at_the_cutoff(si64_displaced):
    """A neighbour at the cutoff sphere enters with attention weight 0 (the envelope weights the
    softmax): blocks are continuous as an atom crosses r_max."""
    model = elct(SI, r_max=3.0, n_layers=1)
    s = si64_displaced
    g, _ = predict_blocks(model, s)
    e = int(np.argmax(g.lengths))  # the longest bond, moved to just inside / just outside r_max
    a, b = int(g.i[e]), int(g.j[e])
    d = g.vectors[e] / g.lengths[e]
    blocks = {}
    for tag, r in (("in", 3.0 - 1e-4), ("out", 3.0 + 1e-4)):
        pos = s.positions.copy()
        pos[b] += (r - g.lengths[e]) * d
        g2, out2 = predict_blocks(model, Structure(s.numbers, pos, s.cell, s.pbc))
        blocks[tag] = out2["hamiltonian"][0][a]
    assert rel(blocks["in"], blocks["out"]) < 1e-6


@pytest.mark.parametrize("strict", [False, True], ids=["semi-local", "strictly-local"])
def test_inputs_shared_with_other_models(strict, gaas_displaced):
    """Models handed one ModelInputs (a comparison, an ensemble) each compute and keep their own
    geometry: ELCT before and after a LEM of the same cutoff with another radial basis, and after an
    ELCT of higher l_max, gives what it gives on fresh inputs, chunked and in one pass."""
    from eqtb.models.inputs import ModelInputs
    from eqtb.models.lem import LEM

    model = elct(GAAS, strictly_local=strict)
    graph, alone = predict_blocks(model, gaas_displaced)
    options = LEM.example_options(GAAS)
    options["embedding"]["n_radial_basis"] = 5
    torch.manual_seed(3)
    lem = randomize(model_from_options(options, GAAS, overlap=True)).double().eval()
    _, lem_alone = predict_blocks(lem, gaas_displaced)
    higher = elct(GAAS, seed=1, irreps_hidden="8x0e+4x1o+4x2e+4x3o+2x4e")
    assert lem.r_max == model.r_max == higher.r_max
    shared = ModelInputs.from_graph(graph, GAAS, torch.float64)
    kw = {"edge_chunk": 40} if strict else {}
    for other in (None, lem, higher):
        if other is not None:
            predict_blocks(other, gaas_displaced, inputs=shared)
        _, again = predict_blocks(model, gaas_displaced, inputs=shared, **kw)
        for q in alone:
            assert rel(again[q][0], alone[q][0]) < 1e-10 and rel(again[q][1], alone[q][1]) < 1e-10
    _, lem_again = predict_blocks(lem, gaas_displaced, inputs=shared)
    assert rel(lem_again["hamiltonian"][1], lem_alone["hamiltonian"][1]) < 1e-10


# ------------------------------------------------------------------------------ building blocks
def test_segment_softmax():
    torch.manual_seed(0)
    logits = 30 * torch.randn(50, 3, dtype=torch.float64)  # large: no overflow
    index = torch.randint(0, 6, (50,))
    index[index == 5] = 4  # vertex 5 has no edge
    w = segment_softmax(logits, index, 6)
    sums = torch.zeros(6, 3, dtype=torch.float64).index_add(0, index, w)
    assert torch.allclose(sums[:5], torch.ones(5, 3, dtype=torch.float64)) and (sums[5] == 0).all()
    for v in range(5):
        assert torch.allclose(w[index == v], torch.softmax(logits[index == v], dim=0))
    weight = torch.rand(50, 1, dtype=torch.float64)
    ww = segment_softmax(logits, index, 6, weight)
    ref = torch.exp(logits - logits.max()) * weight
    total = torch.zeros(6, 3, dtype=torch.float64).index_add(0, index, ref)
    assert torch.allclose(ww, ref / total[index])


def test_attention_in_chunks_equals_one_pass():
    """Online accumulation (running maximum, rescaled sums) over parts of the edges equals one pass,
    and equals the explicit softmax-weighted sum; an edge of weight 0 has no effect."""
    torch.manual_seed(1)
    layout = IrrepsLayout("6x0e+2x0o+4x1o+2x1e+4x2e")
    att = VertexAttention(layout, layout, n_scalars=5, n_heads=3, head_dim=4).double()
    with torch.no_grad():
        for p in att.parameters():
            p.add_(0.3 * torch.randn_like(p))
    E, N = 40, 7
    D = directed_frames(torch.randn(E // 2, 3, dtype=torch.float64), layout.lmax)
    x = layout.to_frame(layout.split(torch.randn(E, layout.dim, dtype=torch.float64)), D)
    s = torch.randn(E, 5, dtype=torch.float64)
    index = torch.randint(0, N - 1, (E,))  # vertex N - 1 has no edge
    env = torch.rand(E, 1, dtype=torch.float64)
    whole = att.finish(att.accumulate(att.start(N, s), x, s, index, D, env))
    acc = att.start(N, s)
    for sl in (slice(0, 9), slice(9, 10), slice(10, 33), slice(33, 40)):
        acc = att.accumulate(acc, [xm[sl] for xm in x], s[sl], index[sl], [d[sl] for d in D], env[sl])
    parts = att.finish(acc)
    for a, b in zip(whole, parts):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-13) and (a[N - 1] == 0).all()
    # explicit: softmax per head over the vertex's edges, each channel read by its head
    logits, _, _ = att.logits_values(x, s)
    alpha = segment_softmax(logits, index, N, env)
    ones = att.finish(att.accumulate(att.start(N, s), x, s, index, D, env))
    heads = head_of_channel(layout, 3)
    assert sorted(set(heads.tolist())) == [0, 1, 2]
    y, gates = att.conv(x, s)
    from eqtb.nn.irreps import gate_frame

    v = layout.from_frame(gate_frame(y, gates[:, : att.n_gates], layout, att.modulation(s) * alpha[:, heads]), D)
    ref = layout.zeros(N, s)
    for l, p in enumerate(v):
        if p is not None:
            ref[l] = ref[l].index_add(0, index, p)
            assert torch.allclose(ones[l], ref[l], atol=1e-12)
    # a zero-weight edge changes nothing
    env2 = env.clone()
    env2[3] = 0.0
    x2 = [xm.clone() for xm in x]
    x2[0][3] += 5.0
    a = att.finish(att.accumulate(att.start(N, s), x, s, index, D, env2))
    b = att.finish(att.accumulate(att.start(N, s), x2, s, index, D, env2))
    for p, q in zip(a, b):
        if p is not None:
            assert torch.allclose(p, q, atol=1e-13)


@pytest.mark.parametrize("separate", [False, True], ids=["one-norm", "per-degree"])
@pytest.mark.parametrize("det", [1, -1], ids=["proper", "improper"])
def test_layer_norm_equivariant(separate, det):
    torch.manual_seed(2)
    irreps = "5x0e+3x0o+4x1o+2x1e+3x2e+2x3o"
    layout = IrrepsLayout(irreps)
    ln = EquivariantLayerNorm(layout, separate=separate).double()
    with torch.no_grad():
        for p in ln.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rng = np.random.default_rng(3)
    Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    Q = Q * det * np.sign(np.linalg.det(Q))
    Dm = torch.as_tensor(irreps_D(irreps, Q))
    x = torch.randn(11, layout.dim, dtype=torch.float64)
    y = layout.merge(ln(layout.split(x)))
    y_rot = layout.merge(ln(layout.split(x @ Dm.T)))
    assert torch.allclose(y_rot, y @ Dm.T, atol=1e-12)
    # the frame form is the same function of the rotated features
    D = directed_frames(torch.randn(11, 3, dtype=torch.float64), layout.lmax)
    D = [d[:11] for d in D]
    f = ln.frame(layout.to_frame(layout.split(x), D))
    g = layout.to_frame(ln(layout.split(x)), D)
    for a, b in zip(f, g):
        assert torch.allclose(a, b, atol=1e-12)


def test_layer_norm_keeps_degrees_in_proportion():
    """One norm (ELCT's): a degree that is 1000x smaller stays so; per degree: brought to unit size."""
    layout = IrrepsLayout("4x0e+4x1o+4x2e")
    x = layout.split(torch.randn(3, layout.dim, dtype=torch.float64))
    x[1] = 1e-3 * x[1]
    with torch.no_grad():
        one = EquivariantLayerNorm(layout).double()(x)
        per = EquivariantLayerNorm(layout, separate=True).double()(x)
    ratio = lambda p: float(p[1].pow(2).mean().sqrt() / p[2].pow(2).mean().sqrt())  # noqa: E731
    assert ratio(one) < 1e-2 and ratio(per) > 0.3
    # one norm: mean over degrees of the mean square per component is 1 (even scalars centred)
    xc = [p.clone() for p in x]
    xc[0] = xc[0] - xc[0].mean(dim=2, keepdim=True)
    ms = sum(p.pow(2).mean(dim=(1, 2)) for p in one) / 3
    assert torch.allclose(ms, torch.ones(3, dtype=torch.float64), atol=1e-4)


# ------------------------------------------------------------------------------------ config
def test_config_schema_and_ignored_keys():
    cfg = json.loads(EXAMPLE.read_text())
    plain = config_from_dict(cfg)
    emb = plain.model_options.embedding
    assert emb.method == "elct" and emb.n_heads == 4 and emb.strictly_local is False
    assert ignored_keys(plain) == []
    minimal = {"method": "elct", "r_max": 5.0, "irreps_hidden": "8x0e+8x1o+4x2e"}
    model = model_from_options({"embedding": minimal, "prediction": {"method": "e3tb"}}, SI)
    assert model.n_layers == 3 and model.attention[0].n_heads == 4 and model.locality.hops == 3
    bad = json.loads(json.dumps(cfg))
    bad["model_options"]["embedding"]["n_head"] = 2
    with pytest.raises(ConfigError, match="n_heads"):
        config_from_dict(bad)
    quiet = json.loads(json.dumps(cfg))
    quiet["common_options"]["overlap"] = False
    quiet["model_options"]["embedding"].update(cutoff_type="cosine", PolynomialCutoff_p=4)
    listed = {k for k, _ in ignored_keys(config_from_dict(quiet)) if k.startswith("model_options")}
    assert listed == {"model_options.prediction.neurons", "model_options.embedding.PolynomialCutoff_p"}


# ---------------------------------------------------------------------------------- training
@pytest.fixture()
def si64_run(tmp_path, data_dir, monkeypatch):
    """The layout of benchmarks/train_si64.py: data/Si64.0 + data/info.json; cwd there."""
    copy_si64(data_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return tmp_path


def test_example_trains_on_si64(si64_run, data_dir):
    """examples/elct_si64.json, unchanged but for the number of epochs: the loss falls; the
    checkpoint is an elct model that eqtb test and eqtb.load use."""
    import eqtb

    assert main(["train", str(EXAMPLE), "-o", "run", "--num-epoch", "8", "-q"]) == 0
    hist = [json.loads(line) for line in open(si64_run / "run" / "log" / "history.jsonl")]
    losses = [h["train_loss"] for h in hist]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0] and min(losses[-3:]) < 0.7 * losses[0], losses
    ckpt = si64_run / "run" / "checkpoint" / "elct.latest.pth"
    assert main(["test", "data/Si64.0", "-i", str(ckpt), "-o", "results", "-q"]) == 0
    model = eqtb.load(ckpt)
    assert model.model.family == "elct" and model.model.locality.hops == 3
    pred = model.predict(data_dir / "si64_abacus" / "Si64.vasp")
    H = pred.hk([[0, 0, 0]])[0]
    assert np.abs(H).max() > 0.1 and np.allclose(H, H.conj().T, atol=1e-6 * np.abs(H).max())

"""The ``mix`` family: nnsk integrals corrected by the se2 environment (:mod:`eqtb.models.mix`).

DeePTB's own numbers (``tests/data/deeptb_reference/mix_*``, made by ``benchmarks/deeptb_mix_reference.py``
in DeePTB 2.2.1's environment): band energies of the mix checkpoints of DeePTB's silicon tutorials,
H(k) and S(k) of random two-element mix models. Then what the correction is (factors of nnsk's
integrals and onsite energies, overlap untouched), the option errors, and ``eqtb train`` on DeePTB's
tutorial mix inputs started (``-i``) from the nnsk checkpoints of the tutorial's previous step. The
physics every family has (equivariance, locality, chunks, Hermiticity) is in ``tests/test_families.py``."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

import eqtb
from eqtb.cli import main
from eqtb.config import load_config
from eqtb.models import ModelError, from_checkpoint, model_from_options
from eqtb.models.inputs import ModelInputs
from eqtb.models.mix import Mix
from eqtb.models.sk import SlaterKoster
from eqtb.models.testing import predict_blocks, randomize
from eqtb.predict import Predictor, load_model
from eqtb.structure import Structure, build_graph
from eqtb.train.checkpoint import load_checkpoint
from eqtb.train.trainer import TrainError, Trainer

REFERENCE = Path(__file__).parent / "data" / "deeptb_reference"
CASES = json.loads((REFERENCE / "mix_cases.json").read_text())
BANDS = sorted(c for c in CASES if not c.startswith("random_"))
RANDOM = sorted(c for c in CASES if c.startswith("random_"))
SI_SPD = {"Si": ["3s", "3p", "d*"]}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(data_dir) -> Path:
    return data_dir / "deeptb_examples"


def _path(name: str, examples: Path) -> Path:
    return REFERENCE / name if (REFERENCE / name).exists() else examples / name


def _structure(case: str, examples: Path) -> Structure:
    return Structure.from_ase(read(_path(CASES[case]["structure"], examples), index=CASES[case]["frame"]))


def _float64(path: Path):
    state = load_checkpoint(path)
    state["config"]["common_options"]["dtype"] = "float64"
    return from_checkpoint(state)


# ------------------------------------------------------------------------------- DeePTB's numbers
@pytest.mark.parametrize("case", BANDS)
def test_bands_equal_deeptb(case, examples):
    """DeePTB's tutorial mix checkpoints (v2.2: poly4pow + uniform + overlap; v2.1: powerlaw +
    strain) on an MD frame: band energies to 1e-6 eV in float64, within 1 meV as loaded (float32)."""
    ref = np.load(REFERENCE / f"{case}.npz")
    path = _path(CASES[case]["model"], examples)
    structure = _structure(case, examples)
    for predictor, tol in ((Predictor(_float64(path)), 1e-6), (eqtb.load(path), 1e-3)):
        _, bands = predictor.predict(structure).bands(ref["kpoints"])
        assert bands.shape == ref["eigenvalues"].shape
        assert np.abs(bands - ref["eigenvalues"]).max() < tol


@pytest.mark.parametrize("case", RANDOM)
def test_matrices_equal_deeptb(case, examples):
    """H(k), S(k) of random DeePTB mix models with corrections of order one: B/N with two s and
    two p shells on N (the bond factors' layout), every shape of DeePTB's networks (blocks that
    widen, narrow, keep their width; final MLP or linear layer; n_axis), relu/silu/tanh."""
    ref = np.load(REFERENCE / f"{case}.npz")
    pred = Predictor(_float64(REFERENCE / CASES[case]["model"])).predict(_structure(case, examples))
    np.testing.assert_allclose(pred.hk(ref["kpoints"]), ref["hk"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.sk(ref["kpoints"]), ref["sk"], rtol=0, atol=1e-9)


def test_converted_checkpoint(examples):
    state = load_checkpoint(examples / "silicon/tutorial_v2.2/ref_ckpt/mix.md100.pth")
    assert state["model_family"] == "mix" and state["converted_from"] == "deeptb"
    assert state["config"]["model_options"]["embedding"]["rc"] == 5.0
    model = load_model(examples / "silicon/tutorial_v2.2/ref_ckpt/mix.md100.pth")
    assert isinstance(model, Mix) and model.locality.hops == 1
    assert model.r_max == pytest.approx(5.64 + 3 * 0.2)  # the hopping cutoff, above rc = 5
    assert not any(k.startswith("edge_prediction_s") for k in model.state_dict())  # DeePTB discards it


# ------------------------------------------------------------------------------- the correction
def _mix(onsite="uniform", overlap=True, **embedding) -> Mix:
    options = {"nnsk": {"onsite": {"method": onsite, **({"rs": 2.6, "w": 0.1} if onsite == "strain" else {})},
                        "hopping": {"method": "poly2pow", "rs": 2.9, "w": 0.1}, "std": 0.3},
               "embedding": {"method": "se2", "rs": 2.0, "rc": 3.5, "radial_net": {"neurons": [4, 8]}, **embedding},
               "prediction": {"method": "sktb", "neurons": [8, 8]}}
    torch.manual_seed(0)
    return model_from_options(options, {"Ga": "2s2p2d", "As": "2s2p1d"}, overlap=overlap).double()


def _blocks(model, structure, r_max: float = 3.5):
    """Blocks of ``model`` (a mix model or its nnsk part) on the graph of the mix model's cutoff."""
    inputs = ModelInputs.from_graph(build_graph(structure, r_max), model.basis, torch.float64)
    return predict_blocks(model, structure, inputs=inputs)[1]


def test_a_new_mix_model_is_its_nnsk_model(gaas_displaced):
    """The heads' last layers start at N(0, 1e-3): a new model is its nnsk model to ~1e-3; with
    them zero, exactly."""
    model = _mix("strain")
    mix, sk = _blocks(model, gaas_displaced), _blocks(model.nnsk, gaas_displaced)
    for q in mix:
        for a, b in zip(mix[q], sk[q]):
            assert (a - b).abs().max() < 1e-2 * b.abs().max()
    with torch.no_grad():
        for head in (model.onsite_head, model.bond_head):
            head.out.weight.zero_()
            head.out.bias.zero_()
    mix = _blocks(model, gaas_displaced)
    for q in mix:
        for a, b in zip(mix[q], sk[q]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _constant_factors(model: Mix, onsite: float, bond: float) -> None:
    with torch.no_grad():
        for head, c in ((model.onsite_head, onsite), (model.bond_head, bond)):
            head.out.weight.zero_()
            head.out.bias.fill_(c)


def test_corrections_are_factors_of_the_integrals(gaas_displaced):
    """Constant factors 1 + c scale nnsk's Hamiltonian bonds and onsite energies by them; the
    overlap is nnsk's; strain blocks are not scaled (with a basis without shell labels the strain
    blocks are the whole onsite block: DeePTB's reference energies are then 0)."""
    model = _mix("uniform")
    sk = _blocks(model.nnsk, gaas_displaced)
    _constant_factors(model, 0.3, -0.4)
    mix = _blocks(model, gaas_displaced)
    torch.testing.assert_close(mix["hamiltonian"][1], 0.6 * sk["hamiltonian"][1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mix["hamiltonian"][0], 1.3 * sk["hamiltonian"][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(mix["overlap"], sk["overlap"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    model = _mix("strain")
    sk = _blocks(model.nnsk, gaas_displaced)
    _constant_factors(model, 0.3, -0.4)
    onsite = _blocks(model, gaas_displaced)["hamiltonian"][0]
    assert sk["hamiltonian"][0].abs().max() > 0.1
    torch.testing.assert_close(onsite, sk["hamiltonian"][0], rtol=0, atol=1e-12)


def test_dftbsk_tables_corrected(gaas_displaced):
    """A mix of dftbsk tables (DeePTB's dftbsk + environment correction): constant factors 1 + c
    scale the tables' Hamiltonian bonds and onsite energies; the overlap is the tables'; the graph
    reaches rc; it does not start from an nnsk model."""
    from eqtb.models.dftbsk import DftbSlaterKoster

    basis = {"Ga": "1s1p1d", "As": "1s1p1d"}
    options = {**DftbSlaterKoster.example_options(basis),
               "embedding": {"method": "se2", "rs": 2.0, "rc": 5.0, "radial_net": {"neurons": [4, 8]}},
               "prediction": {"method": "sktb", "neurons": [8]}}
    torch.set_default_dtype(torch.float64)
    try:
        model = model_from_options(options, basis, overlap=True)
    finally:
        torch.set_default_dtype(torch.float32)
    assert model.sk is model.dftbsk and model.r_max == pytest.approx(5.0)
    sk = _blocks(model.dftbsk, gaas_displaced, r_max=4.45)
    _constant_factors(model, 0.3, -0.4)
    mix = _blocks(model, gaas_displaced, r_max=4.45)
    assert sk["hamiltonian"][1].abs().max() > 0.1
    torch.testing.assert_close(mix["hamiltonian"][1], 0.6 * sk["hamiltonian"][1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mix["hamiltonian"][0], 1.3 * sk["hamiltonian"][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(mix["overlap"], sk["overlap"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ModelError, match="corrects dftbsk tables: it starts from a mix model"):
        model.init_from("nnsk", {}, None)


def test_environment_reaches_rc_not_beyond(si64_displaced):
    """The graph cutoff is rc when rc exceeds the nnsk cutoff; bonds beyond the hopping cutoff have
    zero blocks; the descriptor sees neighbours within rc only."""
    model = _mix(overlap=False, rc=4.2)
    assert model.r_max == pytest.approx(4.2) and model.nnsk.r_max == pytest.approx(3.2)
    basis = {"Si": "1s1p"}
    model = randomize(Mix(SlaterKoster(basis, {"method": "poly2pow", "rs": 2.9, "w": 0.1}, {"method": "uniform"}),
                          rs=2.0, rc=4.2, radial_neurons=[4, 8], neurons=[8, 8]).double(), seed=3).eval()
    graph, blocks = predict_blocks(model, si64_displaced)
    long = graph.lengths > 3.2
    assert long.any() and (graph.lengths < 4.2).all()
    assert blocks["hamiltonian"][1][torch.as_tensor(long)].abs().max() == 0


@pytest.mark.parametrize("change, message", [
    ({"embedding": {"rs": 5.0}}, "0 < rs < rc"),
    ({"embedding": {"n_axis": 9}}, "n_axis 9 exceeds the last radial width 8"),
    ({"embedding": {"radial_net": {"neurons": [4, 8], "if_batch_normalized": True}}}, "batch normalisation"),
    ({"prediction": {"activation": "sigmoid"}}, "prediction.activation 'sigmoid'"),
    ({"nnsk": {"push": {"rs_thr": 0.01, "period": 10}}}, "push cannot be used in a mix model"),
])
def test_option_errors(change, message):
    options = {"nnsk": {"onsite": {"method": "uniform"}, "hopping": {"method": "powerlaw", "rs": 2.6, "w": 0.1}},
               "embedding": {"method": "se2", "rs": 2.0, "rc": 3.5, "radial_net": {"neurons": [4, 8]}},
               "prediction": {"method": "sktb", "neurons": [8]}}
    for key, value in change.items():
        options[key] = {**options[key], **value}
    with pytest.raises(ModelError, match=message):
        model_from_options(options, {"Si": "1s1p"})


def test_deeptb_dftbsk_mix_checkpoint(examples, monkeypatch):
    """A DeePTB dftbsk + environment-correction checkpoint (hBN_dftb/input_dftb_env.json's model,
    random networks with order-one corrections; benchmarks/deeptb_dftbsk_mix_reference.py) gives
    DeePTB's bands to 1e-9 eV, loaded from the folder whose slakos it names (as DeePTB); from
    another folder, an error naming the tables."""
    ref = np.load(REFERENCE / "dftbsk_mix_hbn.npz")
    structure = Structure(ref["numbers"], ref["positions"], ref["cell"], np.ones(3, dtype=bool))
    monkeypatch.chdir(examples / "hBN_dftb")
    model = eqtb.load(REFERENCE / "dftbsk_mix_hbn.pth")
    assert isinstance(model.model, Mix) and model.model.sk is model.model.dftbsk
    _, bands = model.predict(structure).bands(ref["kpoints"])
    assert np.abs(bands - ref["eigenvalues"]).max() < 1e-9
    monkeypatch.chdir(REFERENCE)
    with pytest.raises(Exception, match="slakos"):
        eqtb.load(REFERENCE / "dftbsk_mix_hbn.pth")


# ------------------------------------------------------------------------------- eqtb train
def _tutorial(tmp_path: Path, examples: Path, version: str, name: str) -> Path:
    """A DeePTB tutorial input ("cuda" -> "cpu") in a folder laid out as DeePTB's (data next to it)."""
    src = examples / "silicon"
    for folder in ("kpathmd100.0", "kpath_spk.0"):  # the training and the reference set
        shutil.copytree(src / "data" / folder, tmp_path / "data" / folder)
    cfg = json.loads((src / version / name).read_text())
    cfg["common_options"]["device"] = "cpu"
    for which in ("train", "reference"):
        cfg["data_options"][which]["root"] = "../data/"
    (tmp_path / "tut").mkdir()
    path = tmp_path / "tut" / "input.json"
    path.write_text(json.dumps(cfg))
    return path


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log" / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("version, name, nnsk", [
    ("tutorial_v2.2", "input_3.json", "tutorial_v2.2/ref_ckpt/nnsk.md100.pth"),
    ("tutorial_v2.1", "inputs/2-4_input.json", "tutorial_v2.1/ref_ckpts/nnsk_md100/checkpoint/nnsk.ep20.pth"),
])
def test_tutorial_mix_trains_from_the_nnsk_step(tmp_path, examples, monkeypatch, version, name, nnsk):
    """DeePTB's tutorial mix inputs, started with -i from the tutorial's nnsk checkpoint of the MD
    frames: the band loss falls in 3 epochs; the frozen nnsk part keeps the checkpoint's weights; the
    checkpoints are mix checkpoints that eqtb.load reads."""
    config = _tutorial(tmp_path, examples, version, name)
    monkeypatch.chdir(config.parent)
    start = load_checkpoint(examples / "silicon" / nnsk)
    assert main(["train", config.name, "-o", "run", "-q", "--num-epoch", "3", "-i",
                 str(examples / "silicon" / nnsk)]) == 0
    losses = [h["train_loss"] for h in _history(config.parent / "run")]
    assert losses[-1] < losses[0], losses
    state = torch.load(config.parent / "run" / "checkpoint" / "mix.latest.pth", weights_only=False)
    assert state["model_family"] == "mix"
    for key, value in start["model_state_dict"].items():
        torch.testing.assert_close(state["model_state_dict"][f"nnsk.{key}"].double(), value.double(), rtol=0,
                                   atol=1e-7)
    assert isinstance(load_model(config.parent / "run" / "checkpoint" / "mix.latest.pth"), Mix)


def test_init_from_other_models(tmp_path, examples):
    """-i: a mix model starts from a mix checkpoint (DeePTB's, converted) as from its own family;
    an nnsk checkpoint of another shape is a clear error."""
    config = _tutorial(tmp_path, examples, "tutorial_v2.2", "input_3.json")
    cfg = load_config(config)
    mix = examples / "silicon/tutorial_v2.2/ref_ckpt/mix.md100.pth"
    trainer = Trainer(cfg, tmp_path / "a", init_model=mix, progress=False)
    saved = load_checkpoint(mix)["model_state_dict"]
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value.double(), saved[key].double(), rtol=0, atol=1e-7)
    strain = examples / "silicon/tutorial_v2.1/ref_ckpts/nnsk_md100/checkpoint/nnsk.ep20.pth"
    with pytest.raises(TrainError, match="nnsk weights do not fit the mix model's nnsk part"):
        Trainer(load_config(config), tmp_path / "b", init_model=strain, progress=False)

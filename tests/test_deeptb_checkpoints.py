"""DeePTB's trained nnsk models run in eqtb and give DeePTB's numbers.

References: ``tests/data/deeptb_reference`` (made by ``benchmarks/deeptb_nnsk_reference.py`` in
DeePTB 2.2.1's own environment; README.md there): DeePTB's float64 band energies of every nnsk
checkpoint of DeePTB's examples (``../shared/data/deeptb_examples``) and of JSON models DeePTB wrote,
and DeePTB's H(k), S(k) of random models of the forms and onsite modes no example uses. eqtb loads
the same files with ``eqtb.load`` / ``eqtb.predict.load_model``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

import eqtb
from eqtb.models import from_checkpoint
from eqtb.predict import Predictor, load_model
from eqtb.structure import Structure
from eqtb.train.checkpoint import CheckpointError, load_checkpoint

REFERENCE = Path(__file__).parent / "data" / "deeptb_reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())
BANDS = sorted(c for c in CASES if not c.startswith("random_"))
RANDOM = sorted(c for c in CASES if c.startswith("random_"))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(data_dir) -> Path:
    return data_dir / "deeptb_examples"


def _model_file(case: str, examples: Path) -> Path:
    name = CASES[case]["model"]
    return REFERENCE / name if (REFERENCE / name).exists() else examples / name


def _structure(case: str, root: Path) -> Structure:
    name, frame = CASES[case]["structure"], CASES[case]["frame"]
    path = REFERENCE / name if (REFERENCE / name).exists() else root / name
    return Structure.from_ase(read(path, index=frame))


def float64_model(path: Path):
    """The model of a checkpoint built and evaluated in float64 throughout (its tables too)."""
    state = load_checkpoint(path)
    state["config"]["common_options"]["dtype"] = "float64"
    return from_checkpoint(state)


def band_error(case: str, examples: Path, exact: bool) -> float:
    """max |E_eqtb - E_DeePTB| (eV) over the reference k-points and bands; ``exact``: the model in
    float64, else as ``eqtb.load`` gives it (the checkpoint's dtype: float32 for DeePTB's examples)."""
    ref = np.load(REFERENCE / f"{case}.npz")
    path = _model_file(case, examples)
    predictor = Predictor(float64_model(path)) if exact else eqtb.load(path)
    _, bands = predictor.predict(_structure(case, examples)).bands(ref["kpoints"])
    assert bands.shape == ref["eigenvalues"].shape
    return float(np.abs(bands - ref["eigenvalues"]).max())


@pytest.mark.parametrize("case", BANDS)
def test_bands_equal_deeptb(case, examples):
    """Band energies to 1e-6 eV with the model in float64, and within 1 meV as loaded (float32)."""
    assert band_error(case, examples, exact=True) < 1e-6
    assert band_error(case, examples, exact=False) < 1e-3


@pytest.mark.parametrize("case", RANDOM)
def test_matrices_equal_deeptb(case, examples):
    """H(k) and S(k) themselves (not only their eigenvalues, which hide sign conventions) of random
    DeePTB models: every hopping form family, strain / NRL / uniform / uniform_noref onsite, per
    element and per bond rs, both radius tables, NRL1 overlap, two shells of one l."""
    ref = np.load(REFERENCE / f"{case}.npz")
    pred = Predictor(float64_model(REFERENCE / CASES[case]["model"])).predict(_structure(case, examples))
    np.testing.assert_allclose(pred.hk(ref["kpoints"]), ref["hk"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.sk(ref["kpoints"]), ref["sk"], rtol=0, atol=1e-9)


def test_converted_checkpoint(examples):
    """What load_checkpoint makes of a DeePTB file: an eqtb checkpoint dict of the nnsk family."""
    state = load_checkpoint(examples / "silicon/tutorial_v2.2/ref_ckpt/nnsk_tr1.pth")
    assert state["model_family"] == "nnsk" and state["converted_from"] == "deeptb"
    nnsk = state["config"]["model_options"]["nnsk"]
    assert nnsk["hopping"] == {"method": "poly4pow", "rs": {"Si-Si": 5.64}, "w": 0.2}
    assert nnsk["atomic_radius"] == "cov" and state["config"]["common_options"]["overlap"] is True
    model = load_model(examples / "silicon/tutorial_v2.2/ref_ckpt/nnsk_tr1.pth")
    assert model.basis.spec == {"Si": ["3s", "3p", "d*"]} and model.r_max == pytest.approx(5.64 + 3 * 0.2)
    assert next(model.parameters()).dtype == torch.float32  # the checkpoint's dtype


def test_pushed_checkpoint_keeps_its_cutoff(examples):
    """A checkpoint saved by push holds the pushed rs/w: the graph cutoff follows them."""
    model = load_model(examples / "hBN/ref_ckpts/push_w/checkpoint/nnsk.iter_rs3.400_w0.210.pth")
    assert model.r_max == pytest.approx(3.4 + 8 * 0.21)
    assert model.locality.hops == 1  # strain onsite


@pytest.mark.parametrize("name, message", [
    ("skf2nnsk/HBCNOSi.nnsk.model/best_df2sk.pth", "fit of Slater-Koster tables.*nnsk_from_skf.pth"),
])
def test_other_deeptb_models_are_refused(examples, name, message):
    with pytest.raises(CheckpointError, match=message):
        load_model(examples / name)


def test_unconvertible_files(tmp_path, examples):
    e3 = {"config": {"model_options": {"embedding": {"method": "slem"}, "prediction": {"method": "e3tb"}},
                     "common_options": {"basis": {"Si": "1s1p"}}}, "model_state_dict": {}}
    torch.save(e3, tmp_path / "slem.pth")
    with pytest.raises(CheckpointError, match="DeePTB slem model: eqtb reads DeePTB's nnsk and mix models only"):
        load_model(tmp_path / "slem.pth")
    v1 = json.loads((REFERENCE / "json_si_tr1.json").read_text())
    v1["version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    with pytest.raises(CheckpointError, match="version 1"):
        load_model(tmp_path / "v1.json")
    (tmp_path / "config.json").write_text(json.dumps({"common_options": {}}))
    with pytest.raises(CheckpointError, match="not an eqtb checkpoint"):
        load_model(tmp_path / "config.json")

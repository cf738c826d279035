"""eqtb's built-in Slater-Koster table (``eqtb/data/esk_table.json``, fitted by
``eqtb/train/esk_fit.py`` to PySCF band structures) and ``eqtb esk`` (``eqtb/train/esk.py``).

The table's test errors are recomputed from the shipped parameters on the stored test frames
(``tests/data/esk/<system>.npz``: the strained and displaced PySCF frame each fit did not see).
DeePTB's esk inputs run in ``tests/test_deeptb_examples.py``."""

from pathlib import Path

import numpy as np
import pytest
import torch

from eqtb.cli import main
from eqtb.data.folder import BandInfo
from eqtb.predict import Predictor
from eqtb.structure import Structure
from eqtb.train.data import attach_bands, make_batch, make_sample
from eqtb.train.esk import EXTRA_SHELL_ABOVE, EskError, load_table, starting_model
from eqtb.train.loss import EigvalsLoss

TABLE = load_table()
FRAMES = Path(__file__).parent / "data" / "esk"


def _system_basis(name: str) -> dict:
    symbols = dict.fromkeys(TABLE["systems"][name]["crystal"]["symbols"])
    return {s: TABLE["elements"][s]["shells"] for s in symbols}


@pytest.fixture
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


@pytest.mark.parametrize("symbol", sorted(TABLE["elements"]))
def test_every_element_gives_bands_on_its_reference_crystal(symbol):
    """The starting model of each shipped element: finite bands along the automatic path of its
    reference crystal, a valence band of some width, and S = 1 (the table is orthogonal: no
    overlap, positive definite on every structure)."""
    name = TABLE["elements"][symbol]["system"]
    crystal = TABLE["systems"][name]["crystal"]
    st = Structure.from_ase(__import__("ase").Atoms(crystal["symbols"], positions=crystal["positions"],
                                                    cell=crystal["cell"], pbc=True))
    model, config, _ = starting_model({symbol: TABLE["elements"][symbol]["shells"]} | _system_basis(name))
    assert config["common_options"]["overlap"] is False and not model.has_overlap
    pred = Predictor(model).predict(st)
    assert pred.overlap is None
    _, bands = pred.bands(None, npoints=40)
    assert np.isfinite(bands).all() and bands.shape[1] == pred.hamiltonian.norb
    assert np.ptp(bands) > 1.0  # bonding and antibonding states, not one atomic level


@pytest.mark.parametrize("name", sorted(TABLE["systems"]))
def test_fit_error_is_reproduced_from_the_shipped_parameters(name, float64):
    """The table's test-frame band MAE of each reference system, recomputed from the shipped
    parameters (through eqtb esk's model builder) on the stored PySCF frame, to 0.01 meV; and the
    fit beat Harrison's start."""
    entry = TABLE["systems"][name]
    frame = np.load(FRAMES / f"{name}.npz")
    st = Structure(frame["numbers"], frame["positions"], frame["cell"], np.array([True] * 3))
    model, _, sources = starting_model(_system_basis(name))
    assert all(v.startswith("fitted") for v in {**sources["shells"], **sources["bonds"]}.values())
    w = entry["window"]
    sample = make_sample(name, st, {}, model.basis, model.r_max, torch.float64)
    attach_bands(sample, model.basis, frame["kpoints"], frame["eigenvalues"],
                 BandInfo(band_min=0, band_max=w["band_max"], emin=-1.0, emax=w["emax"]), name)
    loss = EigvalsLoss(model.basis, {"eout_weight": TABLE["dft"]["eout_weight"], "diff_valence": w["diff_valence"]})
    batch = make_batch([sample])
    with torch.no_grad():
        mae = loss.evaluate(model(batch.inputs), batch)[1]["band_mae_meV"]
    assert mae == pytest.approx(entry["band_mae_meV"]["test"], abs=0.01)
    assert entry["band_mae_meV"]["train"] < entry["band_mae_meV"]["start"]


def test_extra_shells_combining_rule_and_unknown_elements():
    """A shell the table lacks is uncoupled above the basis' levels; a bond type the table has
    not fitted takes the geometric mean of the two elements' own integrals; an element it lacks is
    an error naming the elements it has."""
    si = TABLE["elements"]["Si"]
    model, _, sources = starting_model({"Si": ["3s", "3p", "d*"]})
    assert sources["shells"]["Si d*"].startswith("not in the table")
    energies = model.onsite_params[0, :, 0].detach().numpy()
    assert max(energies) == pytest.approx(max(si["onsite"].values()) + EXTRA_SHELL_ABOVE)
    pairs = [k for k in TABLE["pairs"] if k.split("-")[0] != k.split("-")[1]]
    elements = sorted(TABLE["elements"])
    unfitted = [(a, b) for a in elements for b in elements if a < b and f"{a}-{b}" not in pairs
                and f"{a}-{a}" in TABLE["pairs"] and f"{b}-{b}" in TABLE["pairs"]]
    if unfitted:
        a, b = unfitted[0]
        _, _, sources = starting_model({a: TABLE["elements"][a]["shells"], b: TABLE["elements"][b]["shells"]})
        bonds = sources["bonds"]
        assert bonds.get(f"{a}-{b}", bonds.get(f"{b}-{a}")).startswith("combined")
    with pytest.raises(EskError, match="no parameters for Og.*it has .*Si"):
        starting_model({"Og": ["7s", "7p"]})


def test_esk_command_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"common_options": {"device": "cpu"}}')
    assert main(["esk", str(bad), "-o", str(tmp_path / "out")]) == 2
    assert "common_options.basis is required" in capsys.readouterr().err
    bad.write_text('{"common_options": {"basis": {"Og": ["7s"]}}}')
    assert main(["esk", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "no parameters for Og" in err
    bad.write_text('{"common_options": {"basis": {"Si": ["3s", "3p"]}}}')
    assert main(["esk", str(bad), "-o", str(tmp_path / "out"), "--method", "NRL0"]) == 2
    assert "poly4pow" in capsys.readouterr().err


def test_markdown_table_is_current():
    """docs/esk_table.md is the table's current human-readable form (per-element fit errors)."""
    from eqtb.train.esk_fit import MARKDOWN_PATH, markdown

    assert MARKDOWN_PATH.read_text() == markdown(TABLE)
    for symbol in TABLE["elements"]:
        assert f"| {symbol} |" in MARKDOWN_PATH.read_text()


def test_every_hopping_form_gives_the_same_bands(float64, data_dir):
    """The table's powerlaw integrals written as poly1pow..poly4pow (rs + 5 w, higher coefficients
    zero) are the same model: the same bands on strained silicon to 1e-10 eV; DeePTB's tutorial
    input that follows ``dptb esk`` (poly4pow, overlap, rs 5.64) starts from the poly4pow model
    with the table's integrals (``eqtb train -i``)."""
    import json

    from ase.build import bulk

    from eqtb.models.sk import SlaterKoster
    from eqtb.train.esk import METHODS

    atoms = bulk("Si", "diamond", a=5.43) * (1, 1, 2)
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)
    k = np.random.default_rng(0).random((6, 3))
    ref = None
    for method in METHODS:
        model, config, _ = starting_model({"Si": ["3s", "3p", "d*"]}, method=method)
        assert config["model_options"]["nnsk"]["hopping"]["method"] == method
        H = Predictor(model).predict(atoms).hk(k)
        e = np.linalg.eigvalsh(H)
        ref = e if ref is None else ref
        assert np.abs(e - ref).max() < 1e-10, method
    tutorial = json.loads((data_dir / "deeptb_examples/silicon/tutorial_v2.2/input_1.json").read_text())
    nnsk = tutorial["model_options"]["nnsk"]
    new = SlaterKoster(model.basis, nnsk["hopping"], nnsk["onsite"], atomic_radius=nnsk["atomic_radius"], overlap=True)
    new.init_from("nnsk", model.state_dict(), config)
    assert torch.allclose(new.hopping.params, model.hopping.params)
    assert torch.allclose(new.onsite_params[0, :, 0] + new.onsite_ref[0], model.onsite_params[0, :, 0])

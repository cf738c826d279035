"""The physics every registered model family must have (:mod:`eqtb.models.testing`), run on each
family's :meth:`~eqtb.models.base.OperatorModel.example_options` with random parameters, on real
structures displaced randomly by ~0.1 A: the 64-atom Si cell of the ABACUS data (s/p basis) and a
zincblende GaAs supercell with a two-element s/p/d basis. A family added to the registry is tested
here without a line of its own."""

import numpy as np
import pytest
import torch
from ase.build import bulk

from eqtb.basis import Basis
from eqtb.config import ModelOptions
from eqtb.models import FAMILIES
from eqtb.models.testing import chunk_errors, equivariance_errors, locality_errors, randomize, reversal_errors
from eqtb.structure import Structure

SI = Basis({"Si": "1s1p"})
GAAS = Basis({"Ga": "2s2p2d", "As": "2s2p1d"})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturbed(structure: Structure, seed: int) -> Structure:
    rng = np.random.default_rng(seed)
    return Structure(structure.numbers, structure.positions + rng.normal(scale=0.1, size=structure.positions.shape),
                     structure.cell, structure.pbc)


@pytest.fixture(scope="module")
def si64(data_dir) -> Structure:
    return _perturbed(Structure.read(data_dir / "si64_abacus" / "Si64.vasp"), seed=1)


@pytest.fixture(scope="module")
def gaas() -> Structure:
    return _perturbed(Structure.from_ase(bulk("GaAs", "zincblende", a=5.65).repeat((2, 2, 2))), seed=3)


def build(family: str, basis: Basis, dtype=torch.float64, seed: int = 0):
    cls = FAMILIES[family]
    options = ModelOptions.model_validate(cls.example_options(basis)).model_dump()
    torch.manual_seed(seed)
    model = cls.from_options(options, basis, None, overlap=True)
    return randomize(model, seed).to(dtype).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
class TestFamily:
    def test_declarations(self, family):
        model = build(family, GAAS)
        d = model.describe()
        assert d["family"] == family and FAMILIES[family] is type(model)
        assert set(d["quantities"]) == {"hamiltonian", "overlap"}
        assert set(d["outputs"].values()) <= {"irreps", "sk"}
        assert set(d["cutoffs"]) == {"Ga-Ga", "Ga-As", "As-As"} and min(d["cutoffs"].values()) > 0
        assert d["halo"] >= model.max_cutoff

    @pytest.mark.parametrize("det", [1, -1], ids=["proper", "improper"])
    def test_equivariance_float64(self, family, det, gaas):
        errors = equivariance_errors(build(family, GAAS), gaas, det, torch.float64, seed=20 + det)
        assert max(errors.values()) < 1e-9, errors

    @pytest.mark.parametrize("det", [1, -1], ids=["proper", "improper"])
    def test_equivariance_float32(self, family, det, gaas):
        errors = equivariance_errors(build(family, GAAS, torch.float32), gaas, det, torch.float32, seed=10 + det)
        assert max(errors.values()) < 1e-5, errors

    def test_locality_as_declared(self, family, si64):
        errors = locality_errors(build(family, SI), si64, seed=5)
        assert errors["outside"] < 1e-12, errors
        assert errors["inside"] > 1e-4, errors

    def test_chunked_equals_unchunked(self, family, gaas):
        model = build(family, GAAS)
        if not model.locality.strictly_local:
            pytest.skip(f"{family} is {model.locality.describe()}: no chunked inference")
        assert chunk_errors(model, gaas, chunk=7) < 1e-10

    def test_raw_blocks_hermitian(self, family, gaas):
        errors = reversal_errors(build(family, GAAS), gaas)
        assert errors["onsite"] < 1e-12 and errors["reversed"] < 1e-10, errors
        assert errors["asymmetry"] > 1e-2, errors

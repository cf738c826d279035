"""The physics every registered model family must have (:mod:`eqtb.models.testing`), run on each
family's :meth:`~eqtb.models.base.OperatorModel.example_options` with random parameters, on real
structures displaced randomly by ~0.1 A: the 64-atom Si cell of the ABACUS data (s/p basis) and a
zincblende GaAs supercell with a two-element s/p/d basis (reduced by a family's ``example_basis``
where it takes fewer shells, e.g. dftbsk's one per l). A family added to the registry is tested
here without a line of its own."""

import pytest
import torch

from eqtb.basis import Basis
from eqtb.models import FAMILIES, model_from_options
from eqtb.models.testing import (
    chunk_errors,
    cutoff_continuity_errors,
    equivariance_errors,
    locality_errors,
    randomize,
    reversal_errors,
)
from eqtb.structure import Structure

SI = Basis({"Si": "1s1p"})
GAAS = Basis({"Ga": "2s2p2d", "As": "2s2p1d"})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def si64(si64_displaced) -> Structure:
    return si64_displaced


@pytest.fixture(scope="module")
def gaas(gaas_displaced) -> Structure:
    return gaas_displaced


def build(family: str, basis: Basis, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    basis = FAMILIES[family].example_basis(basis)
    model = model_from_options(FAMILIES[family].example_options(basis), basis, overlap=True)
    assert type(model) is FAMILIES[family]
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

    def test_continuous_at_the_cutoff(self, family, si64):
        """An atom crossing a cutoff sphere by 2e-7 A changes only the bond that crosses it (a
        neighbour sum without an envelope jumped by 5 % of the largest block: SLEM before)."""
        errors = cutoff_continuity_errors(build(family, SI), si64, delta=1e-7)
        assert errors["onsite"] < 1e-5 and errors["offsite"] < 1e-5, errors
        assert errors["seen"] > 1e-3, errors

    def test_chunked_equals_unchunked(self, family, gaas):
        model = build(family, GAAS)
        if not model.locality.strictly_local:
            pytest.skip(f"{family} is {model.locality.describe()}: no chunked inference")
        assert chunk_errors(model, gaas, chunk=7) < 1e-10

    def test_raw_blocks_hermitian(self, family, gaas):
        errors = reversal_errors(build(family, GAAS), gaas)
        assert errors["onsite"] < 1e-12 and errors["reversed"] < 1e-10, errors
        assert errors["asymmetry"] > 1e-2, errors

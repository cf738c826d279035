"""The prediction API (:mod:`eqtb.predict`) on a tiny SLEM trained on the real Si64 frame: the
predicted operators are the model's blocks, chunked inference equals unchunked, sparse assembly
equals dense, predictions follow the structure (translation, supercell), and bad structures give
clear errors."""

import numpy as np
import pytest
import torch
from ase.build import bulk

import eqtb
from eqtb.data.folder import TrajectoryFolder
from eqtb.predict import PredictionError, Predictor
from eqtb.structure import Structure


@pytest.fixture(scope="module")
def model(tiny_model):
    return eqtb.load(tiny_model)


@pytest.fixture(scope="module")
def si64(data_dir):
    return TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0, density_matrix=False)


def test_load_and_describe(model):
    assert isinstance(model, Predictor)
    assert model.quantities == ["hamiltonian", "overlap"]
    assert "1s1p" in repr(model) and model.basis.symbols == ["Si"]


def test_prediction_is_the_models_output_and_close_to_dft(model, si64):
    pred = model.predict(si64.structure, chunk=None)
    H, S = pred.hamiltonian, pred.overlap
    assert H.natoms == 64 and H.norb == 256
    # the same bonds as the DFT operator restricted to the model's cutoff, blocks from the model
    with torch.no_grad():
        from eqtb.models.inputs import ModelInputs
        from eqtb.structure import build_graph

        g = build_graph(si64.structure, model.model.r_max, ["Si"])
        raw = model.model(ModelInputs.from_graph(g, model.basis))
    np.testing.assert_array_equal(H.i, g.i)
    np.testing.assert_allclose(H.offsite, raw["hamiltonian"][1].double().numpy(), rtol=0, atol=0)
    # S is a two-centre quantity: after 3 epochs it is already close to the DFT overlap at Gamma
    Sd, Sp = si64.overlap.dense([[0, 0, 0]])[0], S.dense([[0, 0, 0]])[0]
    assert np.abs(Sp - Sd).max() < 0.5 and np.abs(Sp - Sd).max() > 0
    # Hermitian H(k) at a general k
    Hk = pred.hk([[0.1, 0.2, 0.3]])[0]
    np.testing.assert_allclose(Hk, Hk.conj().T, atol=1e-12)


def test_chunked_equals_unchunked(model, si64):
    full = model.predict(si64.structure, chunk=None)
    for chunk in (2, 1000, 4097):
        part = model.predict(si64.structure, chunk=chunk)
        for q in ("hamiltonian", "overlap"):
            a, b = full.operators[q], part.operators[q]
            scale = np.abs(a.offsite).max()
            assert scale > 1e-3
            assert np.abs(a.offsite - b.offsite).max() < 1e-5 * scale
            assert np.abs(a.onsite - b.onsite).max() < 1e-5 * np.abs(a.onsite).max()


def test_sparse_equals_dense(model):
    pred = model.predict(bulk("Si", "diamond", a=5.43, cubic=True))  # 8 atoms: bonds to many images
    for q in ("hamiltonian", "overlap"):
        for k in (None, [0.25, -0.1, 0.4]):
            dense = pred.operators[q].dense([k if k is not None else [0, 0, 0]])[0]
            sparse = pred.sparse(q, k).toarray()
            assert np.abs(dense).max() > 0.1
            np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-12)


def test_supercell_and_translation(model):
    """Locality: a supercell's blocks are the primitive cell's, and a translated structure has
    the same blocks (the model sees only relative positions)."""
    prim = Structure.from_ase(bulk("Si", "diamond", a=5.43))
    super_ = prim.repeat((2, 2, 2))
    a, b = model.predict(prim), model.predict(super_)
    e_a = np.sort(np.linalg.eigvalsh(a.hk([[0, 0, 0]])[0]))
    # Gamma of the 2x2x2 supercell folds the primitive cell's k = 0 and 1/2 points
    ks = np.array([[x, y, z] for x in (0, .5) for y in (0, .5) for z in (0, .5)])
    from eqtb.tb.spectrum import band_energies

    folded = np.sort(band_energies(a.hamiltonian, a.overlap, ks).ravel())
    supercell = np.sort(band_energies(b.hamiltonian, b.overlap, [[0, 0, 0]]).ravel())
    np.testing.assert_allclose(supercell, folded, atol=2e-4)
    assert e_a.size == 8
    moved = Structure(prim.numbers, prim.positions + [0.3, -1.1, 2.0], prim.cell, prim.pbc)
    np.testing.assert_allclose(model.predict(moved).hamiltonian.onsite, a.hamiltonian.onsite, atol=1e-5)


def test_bands_dos_fermi_blocks(model):
    pred = model.predict(bulk("Si", "diamond", a=5.43))
    kpath, eigs = pred.bands("GXL", npoints=15)
    assert eigs.shape == (len(kpath), 8) and np.all(np.diff(eigs, axis=1) >= -1e-9)
    fermi = pred.fermi({"Si": 4}, mesh=(4, 4, 4))
    assert eigs.min() < fermi.mu < eigs.max()
    energies = np.linspace(eigs.min() - 1, eigs.max() + 1, 400)
    dos = pred.dos(energies, mesh=(4, 4, 4), sigma=0.2)
    assert abs(np.trapezoid(dos, energies) - 16) < 0.1  # 8 bands x 2 spins
    blocks = pred.blocks("hamiltonian")
    assert blocks["0_0_0_0_0"].shape == (4, 4)
    np.testing.assert_allclose(blocks["0_0_0_0_0"], pred.hamiltonian.onsite[0])


def test_bad_structures(model, tmp_path):
    with pytest.raises(PredictionError, match="no basis"):
        model.predict(bulk("GaAs", "zincblende", a=5.65))
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions[1] = atoms.positions[0] + 0.01
    with pytest.raises(PredictionError, match="on top of each other"):
        model.predict(atoms)
    with pytest.raises(PredictionError, match="expected a Structure"):
        model.predict(42)
    with pytest.raises(Exception, match="not found|does not exist|No such"):
        model.predict(tmp_path / "missing.vasp")


def test_sparse_equals_dense_two_elements():
    """Elements with different orbital counts (GaAs 2s2p2d / 2s2p1d): the padding of the
    full-basis layout is removed from the sparse matrices."""
    from eqtb.basis import Basis
    from eqtb.models import model_from_options

    torch.manual_seed(0)
    basis = Basis({"Ga": "2s2p2d", "As": "2s2p1d"})
    model = Predictor(model_from_options({"embedding": {"method": "slem", "r_max": 6.0, "n_layers": 1,
                                                        "irreps_hidden": "8x0e+8x1o+4x2e+2x3o+2x4e",
                                                        "avg_num_neighbors": 30.0},
                                          "prediction": {"method": "e3tb", "neurons": [64, 64]}}, basis, overlap=True))
    pred = model.predict(bulk("GaAs", "zincblende", a=5.65).repeat((2, 1, 1)))
    assert pred.hamiltonian.norb == 2 * (18 + 13)
    for q in ("hamiltonian", "overlap"):
        for k in (None, [0.1, 0.2, -0.3]):
            dense = pred.operators[q].dense([k or [0, 0, 0]])[0]
            assert np.abs(dense).max() > 1e-2
            np.testing.assert_allclose(pred.sparse(q, k).toarray(), dense, rtol=0, atol=1e-12)


def test_predict_sparse_streams_the_same_matrices(model, monkeypatch):
    """predict_sparse (blocks streamed into BSR matrices part by part) equals predict().sparse() at
    Gamma, also with the chunk geometry recomputed in every pass instead of kept; an 8-atom cell,
    whose bonds to several images of one atom share a block; KPM takes the BSR matrices as they are."""
    import scipy.linalg as sla
    import scipy.sparse as sp

    import eqtb.models.base as base
    from eqtb.tb.kpm import kpm_dos

    s = bulk("Si", "diamond", a=5.43, cubic=True)
    ref = model.predict(s, chunk=100)  # the same chunks, geometry kept
    monkeypatch.setattr(base, "GEOMETRY_CACHE_MAX_EDGES", 0)  # recompute the geometry every pass
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        got = model.predict_sparse(s, chunk=100, dtype=dtype)  # several chunks
        for q in ("hamiltonian", "overlap"):
            A, B = got.sparse(q), ref.sparse(q).toarray()
            assert A.format == "bsr" and A.blocksize == (4, 4) and A.dtype == dtype
            assert np.abs(B).max() > 0.1
            np.testing.assert_allclose(A.toarray(), B, rtol=0, atol=tol * np.abs(B).max())
    H, S = got.sparse("hamiltonian"), got.sparse("overlap")
    a = kpm_dos(H, S, n_moments=64, n_random=4, seed=1)
    b = kpm_dos(sp.csr_matrix(H), sp.csr_matrix(S), n_moments=64, n_random=4, seed=1, bounds=a.bounds)
    np.testing.assert_allclose(a.moments, b.moments, rtol=0, atol=1e-6)
    # the Lanczos bounds enclose the exact spectrum tightly (this small symmetric cell exhausts its
    # Krylov space: reorthogonalized, with S r by products)
    w = sla.eigh(H.toarray(), S.toarray(), eigvals_only=True)
    lo, hi = a.bounds
    assert lo < w[0] and hi > w[-1] and (hi - lo) < 1.1 * (w[-1] - w[0])
    with pytest.raises(PredictionError, match="predicts"):
        got.sparse("density_matrix")

"""The ``dftbsk`` family (:mod:`eqtb.models.dftbsk`) on DeePTB's hBN_dftb tables: DeePTB 2.2.1's
bands (``tests/data/deeptb_reference/dftbsk_hbn.npz``, ``benchmarks/deeptb_dftbsk_reference.py``)
and its H(k), S(k) up to the orbital parity by which DeePTB's blocks differ from DFTB+'s; an
independent dense Slater-Koster implementation with DFTB+'s formulas; the signs of DFT overlaps;
cutoffs, onsite blocks, DeePTB's config without r_max, and errors. (The physics every family must
have -- equivariance, locality, chunks, Hermiticity -- is in ``tests/test_families.py``.)"""

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from eqtb.config import config_to_dict, load_config
from eqtb.data.skf import read_skdata
from eqtb.models import ModelError, model_from_options
from eqtb.models.assembly import to_operators
from eqtb.models.dftbsk import DftbSlaterKoster
from eqtb.models.inputs import ModelInputs
from eqtb.models.testing import predict_blocks
from eqtb.structure import Structure, build_graph

REFERENCE = Path(__file__).resolve().parent / "data" / "deeptb_reference" / "dftbsk_hbn.npz"
BN = {"B": ["2s", "2p"], "N": ["2s", "2p"]}
R_MAX = 5.0  # hBN_dftb/run/band.json, AtomicData_options.r_max

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hbn_dftb(data_dir):
    return data_dir / "deeptb_examples" / "hBN_dftb"


@pytest.fixture(scope="module")
def slakos(hbn_dftb):
    return str(hbn_dftb / "slakos")


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


def dftbsk(slakos, basis, dtype=torch.float64, **options):
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return model_from_options({"dftbsk": {"skdata": slakos, **options}}, basis, overlap=True).eval()
    finally:
        torch.set_default_dtype(default)


def operators(model, structure, dtype=torch.float64):
    g, out = predict_blocks(model, structure, dtype)
    return to_operators(structure, model.basis, g.i, g.j, g.R, out)


def matrices(model, structure, kpts, dtype=torch.float64):
    ops = operators(model, structure, dtype)
    return ops["hamiltonian"].dense(kpts), ops["overlap"].dense(kpts)


def bands(model, structure, kpts, dtype=torch.float64):
    H, S = matrices(model, structure, kpts, dtype)
    return np.array([sl.eigvalsh(h, s) for h, s in zip(H, S)])


def reference_structure(ref, name):
    return Structure(ref[f"numbers_{name}"], ref[f"positions_{name}"], ref[f"cell_{name}"], np.ones(3, dtype=bool))


# ===================================================================== DeePTB
def test_bands_equal_deeptb(hbn_dftb, slakos, reference):
    """hBN_dftb/run/band.json's structure and cutoff: DeePTB's bands to 1e-9 eV in float64, within
    1 meV in float32."""
    hbn = Structure.read(hbn_dftb / "data" / "struct.vasp")
    k, ref = reference["kpoints"], reference["eigenvalues"]
    exact = bands(dftbsk(slakos, BN, r_max=R_MAX), hbn, k)
    assert np.abs(exact - ref).max() < 1e-9
    single = bands(dftbsk(slakos, BN, torch.float32, r_max=R_MAX), hbn, k, torch.float32)
    assert np.abs(single - ref).max() < 1e-3


@pytest.mark.parametrize("name, basis", [("bn", {"B": ["2s", "2p", "d*"], "N": ["2s", "2p", "d*"]}),
                                         ("si", {"Si": ["3s", "3p", "3d"]})])
def test_matrices_equal_deeptb_up_to_parity(slakos, reference, name, basis):
    """H(k), S(k) of displaced cells (B/N without d integrals; Si with Si-Si.skf's sd, pd, dd) are
    DeePTB's ``P M P``, P = (-1)^l on each orbital: DeePTB applies its nnsk sign (-1)^(l_a + l_b) to
    the tables' columns (module docstring of eqtb.models.dftbsk). Not P M P: the test is not vacuous."""
    model = dftbsk(slakos, basis, r_max=R_MAX)
    s = reference_structure(reference, name)
    H, S = matrices(model, s, reference["k_generic"])
    elements = [model.basis.elements[model.basis.symbols.index(x)] for x in s.symbols]
    P = np.diag([(-1.0) ** sh.l for e in elements for sh in e.shells for _ in range(sh.dim)])
    np.testing.assert_allclose(P @ H[0] @ P, reference[f"hk_{name}"][0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(P @ S[0] @ P, reference[f"sk_{name}"][0], rtol=0, atol=1e-12)
    assert np.abs(H[0] - reference[f"hk_{name}"][0]).max() > 1.0


# ===================================================================== independent dense implementation
def dense_sp(slakos, structure: Structure, k, r_max):
    """H(k), S(k) of an s/p basis straight from the files with DFTB+'s formulas (its sk.F90 ``ss``,
    ``sp``, ``pp`` and the transpose rule of ``rotateH0``), p = (y, z, x), np.interp between rows:
    a loop over atoms and lattice images, nothing shared with eqtb's assemblers."""
    symbols = [structure.symbols[a] for a in range(structure.natoms)]
    tables = read_skdata(slakos, sorted(set(symbols)))

    def integrals(a, b, r, overlap):
        t = tables[a, b]
        x = t.distances
        f = (lambda l1, l2, m: np.interp(r, x, t.integral(l1, l2, m, overlap)) if x[0] <= r <= x[-1] else 0.0)
        return {n: f(*lm) for n, lm in (("ss", (0, 0, 0)), ("sp", (0, 1, 0)), ("pp0", (1, 1, 0)), ("pp1", (1, 1, 1)))}

    n = structure.natoms
    H, S = np.zeros((4 * n, 4 * n), complex), np.zeros((4 * n, 4 * n), complex)
    for a in range(n):
        levels = tables[symbols[a], symbols[a]].onsite
        H[4 * a:4 * a + 4, 4 * a:4 * a + 4] += np.diag([levels[0], levels[1], levels[1], levels[1]])
        S[4 * a:4 * a + 4, 4 * a:4 * a + 4] += np.eye(4)
    cells = [np.array([x, y, z]) for x in range(-3, 4) for y in range(-3, 4) for z in range(-1, 2)]
    for a in range(n):
        for b in range(n):
            for R in cells:
                d = structure.positions[b] + R @ structure.cell - structure.positions[a]
                r = np.linalg.norm(d)
                if r == 0 or r > r_max:
                    continue
                c = np.array([d[1], d[2], d[0]]) / r  # direction cosines in the order (y, z, x)
                phase = np.exp(-2j * np.pi * np.dot(k, R))
                for M, overlap in ((H, False), (S, True)):
                    ab = integrals(symbols[a], symbols[b], r, overlap)
                    ba = integrals(symbols[b], symbols[a], r, overlap)
                    block = np.zeros((4, 4))
                    block[0, 0] = ab["ss"]
                    block[0, 1:] = c * ab["sp"]  # <s_a|p_b>: the s atom first
                    block[1:, 0] = -c * ba["sp"]  # <p_a|s_b> from b-a.skf, (-1)^(0+1) transposed
                    block[1:, 1:] = np.outer(c, c) * (ab["pp0"] - ab["pp1"]) + np.eye(3) * ab["pp1"]
                    M[4 * a:4 * a + 4, 4 * b:4 * b + 4] += block * phase
    return H, S


def test_dense_reference(slakos, reference):
    """eqtb's H(k), S(k) of the displaced hBN cell equal the dense DFTB+ formulas (s/p, both sp
    orders of a heteronuclear bond, second neighbours)."""
    s = reference_structure(reference, "bn")
    k = np.array([0.1, 0.2, -0.3])
    H, S = matrices(dftbsk(slakos, BN, r_max=R_MAX), s, k[None])
    H_ref, S_ref = dense_sp(slakos, s, k, R_MAX)
    np.testing.assert_allclose(H[0], H_ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(S[0], S_ref, rtol=0, atol=1e-12)


def test_overlap_signs_of_dft(data_dir, slakos):
    """The physical check of the sign convention: the overlap blocks of Si64 from Si-Si.skf agree with
    ABACUS's overlaps of the same bonds (Si 1s1p; the basis differ, the phases of the orbitals must
    not): every sizeable s-p element has ABACUS's sign (DeePTB's reading would flip them all)."""
    from eqtb.data.folder import TrajectoryFolder

    dft = TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0).overlap
    S = operators(dftbsk(slakos, {"Si": "1s1p"}, r_max=4.0), dft.structure)["overlap"]
    index = {(int(a), int(b), tuple(int(x) for x in R)): e for e, (a, b, R) in enumerate(zip(dft.i, dft.j, dft.R))}
    ours, theirs = [], []
    for e, (a, b, R) in enumerate(zip(S.i, S.j, S.R)):
        other = index.get((int(a), int(b), tuple(int(x) for x in R)))
        if other is not None:
            ours.append(S.offsite[e])
            theirs.append(dft.offsite[other])
    ours, theirs = np.array(ours), np.array(theirs)
    assert len(ours) > 400
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9
    sp, sp_dft = ours[:, 0, 1:].ravel(), theirs[:, 0, 1:].ravel()
    sizeable = np.abs(sp_dft) > 0.02
    assert sizeable.sum() > 500 and np.all(np.sign(sp[sizeable]) == np.sign(sp_dft[sizeable]))


# ===================================================================== tables, cutoffs, onsite
def test_linear_interpolation_and_range(slakos):
    """DeePTB's interpolation: the row values at the rows, linear between them, zero below the first
    row and beyond the last; the ss sigma integral of B -> N is Hss0 of B-N.skf."""
    model = dftbsk(slakos, BN)
    table = read_skdata(slakos, ["B", "N"])["B", "N"]
    column = table.integral(0, 0, 0)
    x = table.distances
    r = torch.tensor([x[54], 0.5 * (x[54] + x[55]), x[-1], x[-1] + 1e-6, 0.5 * x[0]])
    T = model.basis.n_types
    b, n = model.basis.symbols.index("B"), model.basis.symbols.index("N")
    pair = torch.full((len(r),), b * T + n)
    ss = model.bond_integrals(model.h_table, r, pair)[:, 0].numpy()
    np.testing.assert_allclose(ss, [column[54], 0.5 * (column[54] + column[55]), column[-1], 0.0, 0.0], atol=1e-12)


def test_cutoffs(slakos, hbn_dftb):
    """No r_max: the tables' last distance (10.56 A for hBN_dftb), also before the model is built
    (cutoff_of reads the grid lines). r_max: the graph's cutoff, and longer bonds of a larger graph
    have zero blocks."""
    model = dftbsk(slakos, BN)
    assert model.r_max == pytest.approx(399 * 0.05 * 0.529177249)
    cut = DftbSlaterKoster.cutoff_of({"dftbsk": {"skdata": slakos}})
    assert cut["B-N"] == cut["N-B"] == pytest.approx(model.r_max) and cut["C-H"] == pytest.approx(5.2811889)
    assert DftbSlaterKoster.cutoff_of({"dftbsk": {"skdata": slakos, "r_max": 3.0}}) == 3.0
    short = dftbsk(slakos, BN, r_max=3.0)
    hbn = Structure.read(hbn_dftb / "data" / "struct.vasp")
    assert build_graph(hbn, short.r_max, short.basis.symbols).lengths.max() <= 3.0
    wide = build_graph(hbn, 6.0, short.basis.symbols)
    with torch.no_grad():
        blocks = short(ModelInputs.from_graph(wide, short.basis, torch.float64))
    far = wide.lengths > 3.0
    assert far.any() and not blocks["hamiltonian"][1][far].any() and blocks["hamiltonian"][1][~far].abs().max() > 1


def test_onsite_blocks(slakos, hbn_dftb):
    """Onsite H: the free atom's Es, Ep of B-B.skf / N-N.skf on the diagonal; onsite S: identity."""
    tables = read_skdata(slakos, ["B", "N"])
    model = dftbsk(slakos, BN, r_max=R_MAX)
    hbn = Structure.read(hbn_dftb / "data" / "struct.vasp")
    ops = operators(model, hbn)
    for a in range(hbn.natoms):
        levels = tables[hbn.symbols[a], hbn.symbols[a]].onsite
        np.testing.assert_allclose(ops["hamiltonian"].onsite[a], np.diag([levels[0]] + 3 * [levels[1]]), atol=1e-12)
        np.testing.assert_allclose(ops["overlap"].onsite[a], np.eye(4), atol=1e-15)


# ===================================================================== configs and errors
def test_deeptb_config_without_r_max(hbn_dftb, slakos):
    """DeePTB's own hBN_dftb/input_dftb_env.json gives only skdata (DeePTB 2.2.1's argcheck requires
    r_max and rejects it): eqtb reads it, and writes no r_max back."""
    cfg = load_config(hbn_dftb / "input_dftb_env.json")
    assert cfg.model_options.family == "mix" and cfg.model_options.dftbsk.r_max is None
    assert "r_max" not in config_to_dict(cfg)["model_options"]["dftbsk"]
    assert dftbsk(slakos, {"B": ["2s", "2p", "d*"], "N": ["2s", "2p", "d*"]}).basis.full_norb == 9


def test_errors(slakos, tmp_path):
    with pytest.raises(ModelError, match="B has several s/p shells in the basis"):
        dftbsk(slakos, {"B": "2s2p", "N": "1s1p"})
    with pytest.raises(ModelError, match="not the density_matrix"):
        model_from_options({"dftbsk": {"skdata": slakos}}, BN, quantity="density_matrix")
    with pytest.raises(ModelError, match=r"skdata: .*missing Slater-Koster file\(s\) B-Si.skf, Si-B.skf"):
        dftbsk(slakos, {"B": "1s1p", "Si": "1s1p"})
    with pytest.raises(ModelError, match="B-B.skf has integrals up to l = 2, the basis gives B the shells 1f"):
        dftbsk(slakos, {"B": "1s1p1f", "N": "1s1p"})
    with pytest.raises(ModelError, match="r_max: r_max has no entry for bond B-N"):
        dftbsk(slakos, BN, r_max={"B-B": 3.0, "N-N": 3.0})
    with pytest.raises(ModelError, match="Slater-Koster folder not found"):
        DftbSlaterKoster.cutoff_of({"dftbsk": {"skdata": str(tmp_path / "nowhere")}})


def test_training_dftbsk_alone_is_a_clear_error(hbn_dftb, tmp_path, monkeypatch, capsys):
    """dftbsk's tables are fixed: `eqtb train` says there is nothing to train (one line, exit 2)."""
    import json
    import shutil

    from eqtb.cli import main

    cfg = json.loads((hbn_dftb / "input_nnsk_eigvals.json").read_text())
    cfg["model_options"] = {"dftbsk": {"skdata": str(hbn_dftb / "slakos"), "r_max": 5.0}}
    shutil.copytree(hbn_dftb / "data", tmp_path / "data")
    (tmp_path / "dftbsk.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "dftbsk.json", "-o", "run", "-q"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "no trainable parameters" in errors[0], errors


# ===================================================================== the skints loss
def test_skints_loss_is_deeptbs_up_to_the_parity(hbn_dftb, slakos):
    """The skints loss (eqtb.train.loss.SkintsLoss) of DeePTB's own fit of these tables
    (hBN_dftb/nnskint, 500 epochs of DeePTB's skints): its onsite energies are the tables' (the
    uniform onsite), and its integrals are the tables' once the parameters of shell pairs with odd
    l_a + l_b change sign -- DeePTB fits its P B P reading, eqtb the blocks of its dftbsk (same bands)."""
    import warnings

    from eqtb.models import from_checkpoint
    from eqtb.train.checkpoint import load_checkpoint
    from eqtb.train.data import load_samples, make_batch
    from eqtb.train.loss import LossError, SkintsLoss

    model = from_checkpoint(load_checkpoint(hbn_dftb / "nnskint/checkpoint/nnsk.ep500.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the example's info.json carries DeePTB v2.0 keys
        batch = make_batch(load_samples(hbn_dftb / "data", "kpath", model.basis, model.r_max, []))
    loss = SkintsLoss(model.basis, {"skdata": slakos})
    as_fitted, info = loss.evaluate(loss.predict(model, batch.inputs), batch)
    assert info["onsite_mae"] < 1e-5 and info["hopping_mae"] > 0.3 and float(as_fitted.detach()) > 1.0
    with torch.no_grad():
        for row, (_, _, a, b, _) in enumerate(model.hopping.keys):
            model.hopping.params[row] *= (-1) ** (a.l + b.l)
    flipped, info = loss.evaluate(loss.predict(model, batch.inputs), batch)
    assert info["hopping_mae"] < 0.05 and float(flipped.detach()) < 0.01
    with pytest.raises(LossError, match="fits the integrals of an nnsk model, not of a dftbsk model"):
        loss.predict(dftbsk(slakos, BN), batch.inputs)
    with pytest.raises(LossError, match="skints.*Slater-Koster folder not found"):
        SkintsLoss(model.basis, {"skdata": str(hbn_dftb / "nowhere")})

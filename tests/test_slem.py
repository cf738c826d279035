"""Symmetries and locality of the SLEM model (random-initialised, real structures).

Structures: the 64-atom Si cell of the ABACUS data set (periodic, and a non-periodic cluster cut
from it) and a zincblende GaAs supercell with a two-element s/p/d basis, every atom displaced
randomly by ~0.1 A so that no crystal symmetry can hide an error. All parameters are perturbed away
from their initial values (many start at zero or one), so that biases, masks and radial
modulations all take part.
"""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from ase.build import bulk
from e3nn import o3

from eqtb.basis import Basis
from eqtb.models.inputs import ModelInputs, collate
from eqtb.models import ModelError, model_from_options
from eqtb.models.slem import SLEM
from eqtb.models.testing import displaced, full_D, random_orthogonal, rel
from eqtb.so3 import float64_default
from eqtb.structure import Structure, build_graph
from eqtb.operator import Operator

SI_BASIS = Basis({"Si": "1s1p"})
SI_HIDDEN = "8x0e+8x1o+4x2e"
SI_RMAX = {"Si": 4.0}

GAAS_BASIS = Basis({"Ga": "2s2p2d", "As": "2s2p1d"})
# every irrep the basis needs (natural parity, up to 4e) plus unnatural-parity channels (1e, 2o)
GAAS_HIDDEN = "8x0e+8x1o+4x1e+8x2e+4x2o+4x3o+4x4e"
GAAS_RMAX = {"Ga": 4.5, "As": 4.0}


# ---------------------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("one_thread")


#: torch's default dtype float64 while the model runs (a control: frames are float64 regardless)
exact_frames = float64_default


@pytest.fixture(scope="module")
def si64(si64_displaced) -> Structure:
    return si64_displaced


@pytest.fixture(scope="module")
def si_cluster(data_dir) -> Structure:
    """Non-periodic Si cluster: the atoms of a 2x2x2 supercell of Si64 within 7.5 A of its centre."""
    big = Structure.read(data_dir / "si64_abacus" / "Si64.vasp").repeat((2, 2, 2))
    centre = big.cell.sum(axis=0) / 2
    keep = np.linalg.norm(big.positions - centre, axis=1) < 7.5
    return displaced(Structure(big.numbers[keep], big.positions[keep] - centre), seed=2)


@pytest.fixture(scope="module")
def gaas(gaas_displaced) -> Structure:
    return gaas_displaced


def make_model(basis: Basis, r_max, hidden: str, n_layers: int = 2, dtype=torch.float64, seed: int = 0) -> SLEM:
    torch.manual_seed(seed)
    model = model_from_options({"embedding": {"method": "slem", "r_max": r_max, "irreps_hidden": hidden,
                                              "n_layers": n_layers, "avg_num_neighbors": 10.0, "latent_dim": 16},
                                "prediction": {"method": "e3tb", "neurons": [16]}}, basis, overlap=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "overlap.onsite_features":
                p.add_(0.2 * torch.randn_like(p))
        # the overlap's onsite blocks are per-element constants: give them random invariant (0e) parts
        onsite = model.overlap.onsite_features
        irreps = o3.Irreps(model.overlap.assembler.onsite_transform.irreps)
        scalar = torch.cat([torch.full((ir.dim,), ir.l == 0 and ir.p == 1) for mul, ir in irreps for _ in range(mul)])
        onsite.copy_(torch.randn_like(onsite) * scalar)
    return model.to(dtype).eval()


def predict(model: SLEM, structure: Structure, dtype=torch.float64, exact: bool = False, **kw):
    graph = build_graph(structure, model.r_max, model.basis.symbols)
    with exact_frames() if exact else nullcontext():
        out = model(ModelInputs.from_graph(graph, model.basis, dtype), **kw)
    return graph, {k: tuple(t.detach().to(torch.float64) for t in v) for k, v in out.items()}


def bond_index(graph) -> dict:
    return {(int(i), int(j), tuple(int(x) for x in R)): e for e, (i, j, R) in enumerate(zip(graph.i, graph.j, graph.R))}


CASES = {
    "Si": (SI_BASIS, SI_RMAX, SI_HIDDEN),
    "GaAs": (GAAS_BASIS, GAAS_RMAX, GAAS_HIDDEN),
}


def _structure(case, request):
    return request.getfixturevalue("si64" if case == "Si" else "gaas")


def test_hidden_irreps_must_cover_the_basis():
    assert GAAS_BASIS.essential_irreps == "9x0e+8x1o+10x2e+4x3o+3x4e"
    with pytest.raises(ModelError, match="4e"):
        model_from_options({"embedding": {"method": "slem", "r_max": GAAS_RMAX, "irreps_hidden": "8x0e+8x1o+8x2e+4x3o",
                                          "n_layers": 1, "avg_num_neighbors": 10.0},
                            "prediction": {"method": "e3tb"}}, GAAS_BASIS)


# ---------------------------------------------------------------------------------------- 1. O(3)
def _equivariance_errors(model, structure, det, dtype, seed, exact=False):
    rng = np.random.default_rng(seed)
    Q = random_orthogonal(rng, det)
    g, out = predict(model, structure, dtype, exact)
    g2, out2 = predict(model, structure.transformed(Q, rng.normal(size=3)), dtype, exact)
    # a rotation of positions and cell leaves the bond list (i, j, R) unchanged
    np.testing.assert_array_equal(g2.i, g.i)
    np.testing.assert_array_equal(g2.j, g.j)
    np.testing.assert_array_equal(g2.R, g.R)
    D = full_D(model.basis, Q)
    errors = {}
    for quantity in ("hamiltonian", "overlap"):
        for part, B, B2 in zip(("onsite", "offsite"), out[quantity], out2[quantity]):
            expected = D @ B @ D.T
            assert B.abs().max() > 1e-2, (quantity, part)
            if (quantity, part) != ("overlap", "onsite"):  # per-element constants, invariant
                assert rel(B2, B) > 1e-2, (quantity, part)  # non-trivial: the blocks do change under Q
            errors[quantity, part] = rel(B2, expected)
    return errors


@pytest.mark.parametrize("det", [1, -1], ids=["proper", "improper"])
@pytest.mark.parametrize("case", ["Si", "GaAs"])
def test_equivariance_float32(case, det, request):
    basis, r_max, hidden = CASES[case]
    model = make_model(basis, r_max, hidden, dtype=torch.float32)
    errors = _equivariance_errors(model, _structure(case, request), det, torch.float32, seed=10 + det)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("det", [1, -1], ids=["proper", "improper"])
@pytest.mark.parametrize("case", ["Si", "GaAs"])
def test_equivariance_float64(case, det, request):
    basis, r_max, hidden = CASES[case]
    model = make_model(basis, r_max, hidden)
    errors = _equivariance_errors(model, _structure(case, request), det, torch.float64, seed=20 + det)
    assert max(errors.values()) < 1e-9, errors


@pytest.mark.parametrize("det", [1, -1], ids=["proper", "improper"])
@pytest.mark.parametrize("case", ["Si", "GaAs"])
def test_equivariance_float64_exact_frames(case, det, request):
    """With the frames built in float64 the model is equivariant to round-off: the frame precision is
    the only float64 defect (proper and improper, s/p/d, unnatural-parity channels)."""
    basis, r_max, hidden = CASES[case]
    model = make_model(basis, r_max, hidden)
    errors = _equivariance_errors(model, _structure(case, request), det, torch.float64, seed=20 + det, exact=True)
    assert max(errors.values()) < 1e-9, errors


@pytest.mark.parametrize("det", [1, -1],
                         ids=["proper", "improper"])
def test_equivariance_with_pseudoscalar_channels(det, gaas):
    """Hidden irreps with odd scalars (0o), as DeePTB configurations often have (exact frames, so
    that only this defect shows)."""
    model = make_model(GAAS_BASIS, GAAS_RMAX, "4x0o+" + GAAS_HIDDEN)
    errors = _equivariance_errors(model, gaas, det, torch.float64, seed=30 + det, exact=True)
    assert max(errors.values()) < 1e-9, errors


def _frame_errors(lmax: int = 4) -> tuple[float, float]:
    """The frames of random bonds: error of their m = 0 column against Y_l(r) / sqrt(2l + 1), and
    of their orthogonality (max over l = 1..lmax)."""
    from eqtb.nn.so2 import directed_frames
    from eqtb.so3 import spherical_harmonics

    v = torch.as_tensor(np.random.default_rng(4).normal(size=(50, 3)))
    frames = directed_frames(v, lmax)
    col = orth = 0.0
    for l in range(1, lmax + 1):
        D = frames[l]
        assert D.dtype == torch.float64
        y = spherical_harmonics(l, torch.cat([v, -v])) / np.sqrt(2 * l + 1)
        col = max(col, rel(D[:, :, l], y))
        orth = max(orth, float((D @ D.transpose(1, 2) - torch.eye(2 * l + 1, dtype=torch.float64)).abs().max()))
    return col, orth


def test_bond_frames():
    """The frame of bond r is the rotation taking z onto r (also for the reversed edges)."""
    col, orth = _frame_errors()
    assert col < 1e-5 and orth < 1e-5


def test_bond_frames_float64_round_off():
    """The root of test_equivariance_float64's failure, in isolation."""
    col, orth = _frame_errors()
    assert col < 1e-12 and orth < 1e-12


# ---------------------------------------------------------------------------------------- 2. locality
def _min_distance(structure: Structure, a: int, b_pos: np.ndarray) -> float:
    """Distance from atom a to the point b_pos and all its periodic images."""
    d = b_pos - structure.positions[a]
    if not structure.pbc.any():
        return float(np.linalg.norm(d))
    shifts = np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)]) @ structure.cell
    return float(np.linalg.norm(d + shifts, axis=1).min())


def _moved(structure: Structure, k: int, delta: np.ndarray) -> Structure:
    pos = structure.positions.copy()
    pos[k] += delta
    return Structure(structure.numbers, pos, structure.cell, structure.pbc)


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("kind", ["cluster", "periodic"])
def test_strict_locality(kind, n_layers, request):
    structure = request.getfixturevalue("si_cluster" if kind == "cluster" else "si64")
    rc = SI_RMAX["Si"]
    model = make_model(SI_BASIS, SI_RMAX, SI_HIDDEN, n_layers=n_layers)
    g, out = predict(model, structure)
    H_on, H_off = out["hamiltonian"]
    n = structure.natoms
    dist = np.array([[_min_distance(structure, a, structure.positions[b]) for b in range(n)] for a in range(n)])
    # bond (i, j): i the atom nearest the centre, j its nearest neighbour
    i = int(np.argmin(np.linalg.norm(structure.positions - structure.positions.mean(axis=0), axis=1)))
    e = next(e for e in np.argsort(g.lengths) if i in (g.i[e], g.j[e]))
    i, j, key = int(g.i[e]), int(g.j[e]), (int(g.i[e]), int(g.j[e]), tuple(int(x) for x in g.R[e]))
    rng = np.random.default_rng(5)

    def best(margins: dict) -> tuple[int, float]:
        """The candidate atom with the largest margin (A) to the spheres it must stay in / out of."""
        k = max(margins, key=margins.get)
        assert margins[k] > 0.1, "no suitable atom"
        return k, margins[k]

    def blocks_after(k, margin, far_from=(), near=()):
        """Move atom k (and its images) by less than ``margin``, checking it stays outside r_max of
        ``far_from`` and inside r_max of ``near``; blocks of the moved structure."""
        delta = rng.normal(size=3)
        delta *= min(0.15, 0.5 * margin) / np.linalg.norm(delta)
        moved = _moved(structure, k, delta)
        for a in far_from:
            assert _min_distance(moved, a, moved.positions[k]) > rc
        for a in near:
            assert _min_distance(moved, a, moved.positions[k]) < rc
        g2, out2 = predict(model, moved)
        on2, off2 = out2["hamiltonian"]
        return on2, off2[bond_index(g2)[key]], on2[k]

    # k: outside r_max of i and of j (and of all their images), but within r_max of a neighbour of i,
    # so that two rounds of ordinary message passing would carry k's position to i
    neighbours = np.nonzero((dist[i] < rc) & (np.arange(n) != i))[0]
    k, margin = best({k: min(dist[i, k] - rc, dist[j, k] - rc, rc - dist[neighbours, k].min()) for k in range(n)})
    on2, off2, onk = blocks_after(k, margin, far_from=(i, j))
    assert torch.equal(off2, H_off[e]) or rel(off2, H_off[e]) < 1e-12
    assert rel(on2[i], H_on[i]) < 1e-12 and rel(on2[j], H_on[j]) < 1e-12
    assert rel(onk, H_on[k]) > 1e-4  # the move itself is seen (by k's own block)

    # an atom within r_max of j but not of i: the onsite block of i is unchanged, the bond's is not
    m, margin = best({m: min(dist[i, m] - rc, rc - dist[j, m]) for m in range(n) if m != j})
    on2, off2, _ = blocks_after(m, margin, far_from=(i,), near=(j,))
    assert rel(on2[i], H_on[i]) < 1e-12
    assert rel(off2, H_off[e]) > 1e-4

    # control: an atom within r_max of i (other than j) changes the onsite block of i and the bond's
    m, margin = best({m: rc - dist[i, m] for m in neighbours if m != j})
    on2, off2, _ = blocks_after(m, margin, near=(i,))
    assert rel(on2[i], H_on[i]) > 1e-4
    assert rel(off2, H_off[e]) > 1e-4


# ---------------------------------------------------------------------------------------- 3. invariances
@pytest.mark.parametrize("case", ["Si", "GaAs"])
def test_translation_invariance(case, request):
    basis, r_max, hidden = CASES[case]
    structure = _structure(case, request)
    model = make_model(basis, r_max, hidden)
    g, out = predict(model, structure)
    g2, out2 = predict(model, structure.transformed(np.eye(3), (1.3, -2.1, 0.7)))
    np.testing.assert_array_equal(g2.i, g.i)
    np.testing.assert_array_equal(g2.j, g.j)
    np.testing.assert_array_equal(g2.R, g.R)
    for quantity in out:
        for B, B2 in zip(out[quantity], out2[quantity]):
            assert rel(B2, B) < 1e-10


# Relabelling atoms or reversing a bond changes the bond frames (the edge i->j becomes the reverse
# edge of the pair): results must agree to round-off either way.
FRAMES = pytest.mark.parametrize("exact, tol", [(False, 1e-10), (True, 1e-10)], ids=["default-frames", "exact-frames"])


@FRAMES
@pytest.mark.parametrize("case", ["Si", "GaAs"])
def test_permutation_invariance(case, exact, tol, request):
    basis, r_max, hidden = CASES[case]
    structure = _structure(case, request)
    model = make_model(basis, r_max, hidden)
    perm = np.random.default_rng(6).permutation(structure.natoms)  # new atom a is old atom perm[a]
    inv = np.argsort(perm)  # old atom a is new atom inv[a]
    permuted = Structure(structure.numbers[perm], structure.positions[perm], structure.cell, structure.pbc)
    g, out = predict(model, structure, exact=exact)
    g2, out2 = predict(model, permuted, exact=exact)
    assert g2.n_edges == g.n_edges
    index2 = bond_index(g2)
    flipped = 0
    for quantity in out:
        on, off = out[quantity]
        on2, off2 = out2[quantity]
        assert rel(on2[inv], on) < tol
        assert on.abs().max() > 1e-3
        for e in range(g.n_edges):
            a, b, R = inv[g.i[e]], inv[g.j[e]], tuple(int(x) for x in g.R[e])
            if (a, b, R) in index2:
                B2 = off2[index2[a, b, R]]
            else:  # canonical orientation flipped: O_ba(-R) = O_ab(R)^T
                B2 = off2[index2[b, a, tuple(-x for x in R)]].T
                flipped += 1
            assert rel(B2, off[e]) < tol, (quantity, e)
    assert flipped > g.n_edges // 4  # many bonds really are seen from the other end
    # the transposition matters: off-site blocks are not symmetric
    assert rel(off.transpose(1, 2), off) > 1e-2


# ---------------------------------------------------------------------------------------- 4. Hermiticity
def test_hermiticity(gaas):
    model = make_model(GAAS_BASIS, GAAS_RMAX, GAAS_HIDDEN)
    g, out = predict(model, gaas)
    kpts = np.random.default_rng(7).uniform(-0.5, 0.5, size=(4, 3))
    for on, off in out.values():
        on, off = on.numpy(), off.numpy()
        np.testing.assert_array_equal(on, np.swapaxes(on, 1, 2))
        assert np.abs(off - np.swapaxes(off, 1, 2)).max() > 1e-2 * np.abs(off).max()
        op = Operator(gaas, GAAS_BASIS, on, g.i, g.j, g.R, off)
        Ok = op.dense(kpts)
        assert Ok.shape == (4, op.norb, op.norb) and op.norb == 8 * (13 + 18)
        assert np.abs(Ok.imag).max() > 1e-2 * np.abs(Ok).max()  # complex: k really enters
        np.testing.assert_allclose(Ok, np.conj(np.swapaxes(Ok, 1, 2)), rtol=0, atol=1e-12 * np.abs(Ok).max())
        # real blocks: O(-k) = conj(O(k))
        np.testing.assert_allclose(op.dense(-kpts), np.conj(Ok), rtol=0, atol=1e-12 * np.abs(Ok).max())


@FRAMES
def test_reversed_bond_gives_transposed_block(gaas, exact, tol):
    """Feeding every bond in the opposite direction (j, i, -R, -d) gives the transposed blocks: the
    model's prediction for the pair does not depend on which direction is called canonical."""
    model = make_model(GAAS_BASIS, GAAS_RMAX, GAAS_HIDDEN)
    graph = build_graph(gaas, GAAS_RMAX, GAAS_BASIS.symbols)
    x = ModelInputs.from_graph(graph, GAAS_BASIS, torch.float64)
    rev = ModelInputs(x.types, x.j, x.i, -x.vectors, -x.R, x.atom_offsets, x.edge_offsets)
    with torch.no_grad(), exact_frames() if exact else nullcontext():
        out, out_rev = model(x), model(rev)
    for quantity in out:
        on, off = out[quantity]
        on_r, off_r = out_rev[quantity]
        assert rel(on_r, on) < tol
        assert rel(off_r.transpose(1, 2), off) < tol
        assert rel(off.transpose(1, 2), off) > 1e-2


# ---------------------------------------------------------------------------------------- 5. chunks
@pytest.mark.parametrize("case", ["Si", "GaAs"])
def test_chunked_equals_unchunked(case, request):
    basis, r_max, hidden = CASES[case]
    structure = _structure(case, request)
    model = make_model(basis, r_max, hidden)
    graph = build_graph(structure, r_max, basis.symbols)
    assert 2 * graph.n_edges > 3 * 37 and (2 * graph.n_edges) % 37
    x = ModelInputs.from_graph(graph, basis, torch.float64)
    full = model(x)
    chunked = model(ModelInputs.from_graph(graph, basis, torch.float64), edge_chunk=37)
    for quantity in ("hamiltonian", "overlap"):
        for B, Bc in zip(full[quantity], chunked[quantity]):
            assert B.abs().max() > 1e-3
            assert rel(Bc, B) < 1e-10
    # on the same (cached) inputs too
    for B, Bc in zip(full["hamiltonian"], model(x, edge_chunk=37)["hamiltonian"]):
        assert rel(Bc, B) < 1e-10


# ---------------------------------------------------------------------------------------- 6. batches
@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "cached"])
def test_batch_equals_separate(gaas, cached):
    other = displaced(Structure.from_ase(bulk("GaAs", "zincblende", a=5.75)), seed=8)  # 2 atoms, self-image bonds
    model = make_model(GAAS_BASIS, GAAS_RMAX, GAAS_HIDDEN)
    graphs = [build_graph(s, GAAS_RMAX, GAAS_BASIS.symbols) for s in (gaas, other)]
    assert (graphs[1].i == graphs[1].j).any()
    items = [ModelInputs.from_graph(g, GAAS_BASIS, torch.float64) for g in graphs]
    separate = [model(x) for x in items]
    if not cached:
        items = [ModelInputs.from_graph(g, GAAS_BASIS, torch.float64) for g in graphs]
    batch = collate(items)
    assert bool(batch.cache) == cached
    out = model(batch, edge_chunk=53 if cached else None)  # chunks straddling the two structures too
    na, ne = gaas.natoms, graphs[0].n_edges
    assert out["hamiltonian"][0].shape[0] == na + other.natoms
    for quantity in out:
        on, off = out[quantity]
        for (a0, a1), (e0, e1), sep in zip(((0, na), (na, None)), ((0, ne), (ne, None)), separate):
            assert rel(on[a0:a1], sep[quantity][0]) < 1e-10
            assert rel(off[e0:e1], sep[quantity][1]) < 1e-10
    # the two structures' blocks do differ (the batch cannot pass by repeating one of them)
    assert rel(separate[1]["hamiltonian"][1][0], separate[0]["hamiltonian"][1][0]) > 1e-2

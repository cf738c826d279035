"""The defining properties every model family must have, as reusable checks (in the spirit of
e3nn's ``assert_equivariant``). ``tests/test_families.py`` runs them on every registered family, so a
new family gets them by registering; a family's own tests may call them with other structures.

Each check returns the measured errors (relative to the size of the blocks) so that a test can
state its tolerance, and asserts the controls that keep it from passing vacuously (the blocks are
not zero; a rotation does change them; the moved atom is seen where it should be).

* :func:`equivariance_errors` -- blocks of a rotated / reflected structure are ``D B D^T``;
* :func:`locality_errors` -- an atom outside the declared receptive field does not change a block;
* :func:`receptive_field_in_bonds` -- the receptive field counted in bonds (how far a moved atom is seen);
* :func:`cutoff_continuity_errors` -- an atom crossing a cutoff sphere changes no block but the
  bond that crosses it (neighbours enter and leave the sums smoothly);
* :func:`chunk_errors` -- chunked evaluation equals unchunked (where the locality allows chunks);
* :func:`reversal_errors` -- the raw predicted blocks are Hermitian: onsite blocks symmetric, and the
  bond fed in the opposite direction (j, i, -R) yields the transposed block;
* :func:`time_reversal_errors` -- for spinful models (spin-orbit coupling): H(-k) is the time
  reverse of H(k), so bands are even in k and Kramers-degenerate at the time-reversal-invariant k.

The block checks compare the spin-independent blocks (:data:`eqtb.quantities.SPIN_ORBIT` is left
out of :func:`predict_blocks`); the spin-orbit blocks are covered by :func:`time_reversal_errors`.
"""

from __future__ import annotations

import numpy as np
import torch
from e3nn import o3
from scipy.linalg import block_diag

from eqtb.basis import Basis
from eqtb.models.base import OperatorModel
from eqtb.models.inputs import ModelInputs
from eqtb.quantities import OVERLAP, SPIN_ORBIT
from eqtb.so3 import wigner_D
from eqtb.structure import Structure, build_graph, pair_cutoffs

__all__ = ["chunk_errors", "cutoff_continuity_errors", "displaced", "equivariance_errors", "full_D", "locality_errors", "predict_blocks", "randomize",
           "random_orthogonal", "receptive_field_in_bonds", "rel", "reversal_errors", "time_reversal_errors"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    return float((a - b).abs().max() / b.abs().max())


def displaced(structure: Structure, seed: int, sigma: float = 0.1) -> Structure:
    """``structure`` with every atom displaced by N(0, sigma^2) per component (Angstrom), so that no
    crystal symmetry can hide an error."""
    rng = np.random.default_rng(seed)
    return Structure(structure.numbers, structure.positions + rng.normal(scale=sigma, size=structure.positions.shape),
                     structure.cell, structure.pbc)


def full_D(basis: Basis, Q: np.ndarray) -> torch.Tensor:
    """Orbital representation (float64) of the orthogonal matrix Q on the full-basis layout."""
    return torch.as_tensor(block_diag(*[wigner_D(s.l, Q, (-1) ** s.l) for s in basis.full_shells]))


def random_orthogonal(rng: np.random.Generator, det: int) -> np.ndarray:
    """A random 3x3 rotation (``det`` 1) or rotation-reflection (``det`` -1)."""
    Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return Q * det * np.sign(np.linalg.det(Q))


@torch.no_grad()
def randomize(model: OperatorModel, seed: int = 0, scale: float = 0.2) -> OperatorModel:
    """Perturb every parameter by ``scale`` x N(0, 1) so that biases, masks and modulations all take
    part (many start at zero or one). Per-element onsite constants (a parameter of shape
    (n_types, onsite_dim) of a head) get noise on their invariant (0e) components only: a constant
    cannot carry a direction."""
    gen = torch.Generator().manual_seed(seed)
    T = model.basis.n_types
    invariant = {}
    for head in model.heads().values():
        irreps = o3.Irreps(head.onsite_transform.irreps)
        invariant[(T, head.onsite_dim)] = torch.cat(
            [torch.full((ir.dim,), float(ir.l == 0 and ir.p == 1)) for mul, ir in irreps for _ in range(mul)])
    for p in model.parameters():
        noise = scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
        mask = invariant.get(tuple(p.shape))
        p.add_(noise if mask is None else noise * mask.to(p))
    return model


def predict_blocks(model: OperatorModel, structure: Structure, dtype=torch.float64, inputs=None, **kw):
    """(graph, {quantity: (onsite, offsite)} float64 blocks) of ``structure`` at the model's cutoff
    (spin-orbit blocks left out)."""
    graph = build_graph(structure, model.r_max, model.basis.symbols)
    x = inputs if inputs is not None else ModelInputs.from_graph(graph, model.basis, dtype)
    with torch.no_grad():
        out = model(x, **kw)
    return graph, {q: tuple(t.detach().to(torch.float64) for t in v) for q, v in out.items() if q != SPIN_ORBIT}


def equivariance_errors(model: OperatorModel, structure: Structure, det: int, dtype=torch.float64,
                        seed: int = 0) -> dict:
    """{(quantity, part): error} of the blocks of the structure rotated (``det`` 1) or
    rotated-reflected (``det`` -1) by a random Q and translated, against ``D B D^T``."""
    rng = np.random.default_rng(seed)
    Q = random_orthogonal(rng, det)
    g, out = predict_blocks(model, structure, dtype)
    g2, out2 = predict_blocks(model, structure.transformed(Q, rng.normal(size=3)), dtype)
    assert np.array_equal(g2.i, g.i) and np.array_equal(g2.j, g.j) and np.array_equal(g2.R, g.R)
    D = full_D(model.basis, Q)
    errors = {}
    for q in out:
        for part, B, B2 in zip(("onsite", "offsite"), out[q], out2[q]):
            assert B.abs().max() > 1e-3, f"{q} {part} blocks are zero: the check would be vacuous"
            if part == "offsite":
                assert rel(B2, B) > 1e-3, f"{q} off-site blocks do not change under a rotation"
            errors[q, part] = rel(B2, D @ B @ D.T)
    return errors


def _image_distances(structure: Structure, a: int) -> np.ndarray:
    """Distance from atom a to every atom, minimised over the 27 nearest periodic images."""
    d = structure.positions - structure.positions[a]
    if not structure.pbc.any():
        return np.linalg.norm(d, axis=1)
    shifts = np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)]) @ structure.cell
    return np.linalg.norm(d[:, None, :] + shifts[None], axis=2).min(axis=1)


def _moved(structure: Structure, k: int, delta) -> Structure:
    pos = structure.positions.copy()
    pos[k] += delta
    return Structure(structure.numbers, pos, structure.cell, structure.pbc)


def locality_errors(model: OperatorModel, structure: Structure, seed: int = 0) -> dict:
    """Move one atom k by 0.1 A and compare the blocks of a short bond (i, j) of a central atom:
    ``"outside"`` -- k farther than the receptive field (``hops x r_max``; any other atom for a
    two-centre model) from i and j: the relative change of the bond's block and of i's onsite block
    (must be ~0); ``"inside"`` -- k a neighbour of i within r_max (for a two-centre model: j itself):
    the larger relative change of the bond's block and of i's onsite block (must be clearly > 0; a
    model may see its environment through the onsite blocks only)."""
    rng = np.random.default_rng(seed)
    g, out = predict_blocks(model, structure)
    q = model.quantity
    on, off = out[q]
    n = structure.natoms
    centre = structure.positions.mean(axis=0)
    i = int(np.argmin(np.linalg.norm(structure.positions - centre, axis=1)))
    e = next(int(e) for e in np.argsort(g.lengths) if i in (g.i[e], g.j[e]))
    bi, bj, R = int(g.i[e]), int(g.j[e]), tuple(int(x) for x in g.R[e])
    di, dj = _image_distances(structure, bi), _image_distances(structure, bj)
    reach = model.locality.hops * model.max_cutoff
    others = [k for k in range(n) if k not in (bi, bj)]
    margin = {k: min(di[k], dj[k]) - reach for k in others}
    k_out = max(margin, key=margin.get) if reach > 0 else min(others, key=lambda k: di[k])
    assert reach == 0 or margin[k_out] > 0.2, "the structure is too small to test this receptive field"
    k_in = (min((k for k in others if di[k] < model.max_cutoff), key=lambda k: di[k])
            if model.locality.hops > 0 else bj)

    def change(k):
        delta = rng.normal(size=3)
        g2, out2 = predict_blocks(model, _moved(structure, k, 0.1 * delta / np.linalg.norm(delta)))
        idx = {(int(a), int(b), tuple(int(x) for x in r)): m for m, (a, b, r) in enumerate(zip(g2.i, g2.j, g2.R))}
        on2, off2 = out2[q]
        return rel(off2[idx[bi, bj, R]], off[e]), rel(on2[bi], on[bi])

    bond_out, onsite_out = change(k_out)
    return {"outside": max(bond_out, onsite_out), "inside": max(change(k_in))}


def cutoff_continuity_errors(model: OperatorModel, structure: Structure, delta: float = 1e-5) -> dict:
    """Move one atom k along the line from a central atom i so that their distance is the pair's
    cutoff minus, then plus, ``delta`` (Angstrom): the bond (i, k) leaves the graph, and every other
    block -- the onsite blocks of all atoms, the other bonds -- must barely change. Returns
    ``{"onsite", "offsite"}``: the largest change across the cutoff relative to the largest block,
    and ``"seen"``: the larger change of i's onsite block and of the bond's block when k moves from
    0.6 to 0.3 A inside the cutoff (the control: the model does see k there). k is the atom whose
    distance to i lies nearest the cutoff, so the move is short; moving it also changes its other
    bonds smoothly, by O(``delta``)."""
    q = model.quantity
    centre = structure.positions.mean(axis=0)
    i = int(np.argmin(np.linalg.norm(structure.positions - centre, axis=1)))
    d = structure.positions - structure.positions[i]
    if structure.pbc.any():  # nearest image of every atom along the periodic directions, seen from i
        frac = np.linalg.solve(structure.cell.T, d.T).T
        d = (frac - np.round(frac) * structure.pbc) @ structure.cell
    dist = np.linalg.norm(d, axis=1)
    types = model.basis.types_of(structure.numbers)
    rc = pair_cutoffs(model.r_max, model.basis.symbols)[types[i], types]
    k = int(np.argmin(np.where(np.arange(len(dist)) == i, np.inf, np.abs(dist - rc))))
    u = d[k] / dist[k]

    def blocks(r):
        g, out = predict_blocks(model, _moved(structure, k, (r - dist[k]) * u))
        on, off = out[q]
        return on, {(int(a), int(b), tuple(int(x) for x in R)): off[m] for m, (a, b, R) in enumerate(zip(g.i, g.j, g.R))}

    on_in, off_in = blocks(rc[k] - delta)
    on_out, off_out = blocks(rc[k] + delta)
    scale = float(max(on_in.abs().max(), max(b.abs().max() for b in off_in.values())))
    crossing = set(off_in) - set(off_out)
    assert crossing and all({a, b} == {i, k} for a, b, _ in crossing), "the move should remove bond (i, k) only"
    offsite = max(float((off_in[key] - off_out[key]).abs().max()) for key in off_out)
    (on_far, off_far), (on_near, off_near) = blocks(rc[k] - 0.6), blocks(rc[k] - 0.3)
    seen = max(float((on_far[i] - on_near[i]).abs().max()),
               max(float((off_far[key] - off_near[key]).abs().max()) for key in crossing))
    return {"onsite": float((on_in - on_out).abs().max()) / scale, "offsite": offsite / scale,
            "seen": seen / scale}


def receptive_field_in_bonds(model: OperatorModel, structure: Structure, depths, seed: int = 7) -> dict:
    """The receptive field counted in bonds, exactly: with the bonds of ``model``'s graph on
    ``structure`` (periodic images are one atom), for a shortest bond (i, j) and each ``depth``, move
    one atom k at ``depth`` bonds from i (for the off-site block: from the nearer of i and j) by 0.1 A
    and measure the relative change of i's onsite block and of the bond's block. Returns
    ``{"onsite": {depth: change}, "offsite": {depth: change}}``; a model of locality ``hops`` (counted
    in bonds when r_max spans one bond shell) changes them exactly for depth <= hops."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    g, out = predict_blocks(model, structure)
    on, off = out[model.quantity]
    n = structure.natoms
    dist = shortest_path(coo_matrix((np.ones(g.n_edges), (g.i, g.j)), shape=(n, n)), directed=False, unweighted=True)
    e = int(np.argmin(np.where(g.i != g.j, g.lengths, np.inf)))
    i, j = int(g.i[e]), int(g.j[e])
    rng = np.random.default_rng(seed)
    seen = {"onsite": {}, "offsite": {}}
    for depth in depths:
        for which, d in (("onsite", dist[i]), ("offsite", np.minimum(dist[i], dist[j]))):
            k = next(int(k) for k in rng.permutation(n) if k not in (i, j) and d[k] == depth)
            step = rng.normal(size=3)
            g2, out2 = predict_blocks(model, _moved(structure, k, 0.1 * step / np.linalg.norm(step)))
            assert np.array_equal(g2.i, g.i) and np.array_equal(g2.j, g.j) and np.array_equal(g2.R, g.R), \
                "moving the atom changed the graph: use a smaller step or cutoff"
            on2, off2 = out2[model.quantity]
            seen[which][depth] = rel(on2[i], on[i]) if which == "onsite" else rel(off2[e], off[e])
    return seen


def chunk_errors(model: OperatorModel, structure: Structure, chunk: int = 37) -> float:
    """Largest relative difference between blocks evaluated in chunks of ``chunk`` directed edges
    and all at once (every quantity, onsite and off-site)."""
    g, full = predict_blocks(model, structure)
    assert 2 * g.n_edges > 3 * chunk, "too few edges to test chunks"
    _, chunked = predict_blocks(model, structure, edge_chunk=chunk)
    return max(rel(Bc, B) for q in full for B, Bc in zip(full[q], chunked[q]))


def reversal_errors(model: OperatorModel, structure: Structure) -> dict:
    """Hermiticity of the raw predicted blocks: ``"onsite"`` -- asymmetry of onsite blocks;
    ``"reversed"`` -- difference between the blocks of every bond fed as (j, i, -R, -d) and the
    transposed blocks of (i, j, R, d). Off-site blocks must not be symmetric themselves
    (``"asymmetry"``, a control that must be clearly > 0 for a basis with p orbitals)."""
    graph = build_graph(structure, model.r_max, model.basis.symbols)
    x = ModelInputs.from_graph(graph, model.basis, torch.float64)
    rev = ModelInputs(x.types, x.j, x.i, -x.vectors, -x.R, x.atom_offsets, x.edge_offsets)
    with torch.no_grad():
        out, out_rev = model(x), model(rev)
    errors = {"onsite": 0.0, "reversed": 0.0, "asymmetry": np.inf}
    for q in model.quantities:
        on, off = out[q]
        errors["onsite"] = max(errors["onsite"], rel(on.transpose(1, 2), on))
        errors["reversed"] = max(errors["reversed"], rel(out_rev[q][1].transpose(1, 2), off),
                                 rel(out_rev[q][0], on))
        errors["asymmetry"] = min(errors["asymmetry"], rel(off.transpose(1, 2), off))
    return errors


def time_reversal_errors(model: OperatorModel, structure: Structure, n_random: int = 4, seed: int = 0) -> dict:
    """Time-reversal symmetry of a spinful model's H(k) (spin-orbit coupling; spin-major order,
    :class:`eqtb.operator.Operator`), with ``Theta = (i sigma_y (x) 1) K``:

    * ``"matrix"`` -- ``max |H(-k) - Theta H(k) Theta^-1|`` relative to ``max |H(k)|`` at random k;
    * ``"even"`` -- ``max |E(k) - E(-k)|`` (eV) of the eigenvalues (``H c = E S c`` with the model's S);
    * ``"kramers"`` -- the largest splitting (eV) of the eigenvalue pairs (2n, 2n + 1) at the
      time-reversal-invariant k-points of the cell (components 0 or 1/2 along periodic directions).

    Controls (asserted): the model is spinful, its spin-orbit blocks are not zero, and they change the
    bands at a random k by more than 1e-6 eV (else the checks would hold for a spinless H)."""
    from eqtb.models.assembly import to_operators
    from eqtb.tb.spectrum import band_energies

    graph = build_graph(structure, model.r_max, model.basis.symbols)
    x = ModelInputs.from_graph(graph, model.basis, torch.float64)
    with torch.no_grad():
        out = model(x)
    assert SPIN_ORBIT in out, f"the {model.family} model is not spinful"
    ops = to_operators(structure, model.basis, graph.i, graph.j, graph.R, out)
    H, S = ops[model.quantity], ops.get(OVERLAP)
    assert np.abs(H.soc).max() > 1e-6, "the spin-orbit blocks are zero: the check would be vacuous"
    rng = np.random.default_rng(seed)
    periodic = np.asarray(structure.pbc, dtype=float)
    k = rng.uniform(-0.5, 0.5, size=(n_random, 3)) * periodic
    n = H.norb
    T = np.kron(np.array([[0.0, 1.0], [-1.0, 0.0]]), np.eye(n))  # i sigma_y (x) 1
    Hk, Hm = H.dense(k), H.dense(-k)
    matrix = float(np.abs(Hm - T @ np.conj(Hk) @ T.T).max() / np.abs(Hk).max())
    e_k, e_m = band_energies(H, S, k), band_energies(H, S, -k)
    e_0 = band_energies(H.spin_independent(), S, k)
    assert np.abs(e_k - np.repeat(e_0, 2, axis=1)).max() > 1e-6, "spin-orbit coupling does not change the bands"
    trim = np.array(np.meshgrid(*[(0.0, 0.5) if p else (0.0,) for p in structure.pbc], indexing="ij")).reshape(3, -1).T
    e_t = band_energies(H, S, trim)
    return {"matrix": matrix, "even": float(np.abs(e_k - e_m).max()),
            "kramers": float(np.abs(e_t[:, 0::2] - e_t[:, 1::2]).max())}

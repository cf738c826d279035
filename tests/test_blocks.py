import h5py
import numpy as np
import pytest
import torch

from eqtb.basis import Basis
from eqtb.blocks import BlockTransform
from eqtb.so3 import coupling_matrix, irreps_D, spherical_harmonics, wigner_D
from eqtb.structure import Structure
from eqtb.operator import Operator


@pytest.fixture(scope="module")
def si64(data_dir):
    d = data_dir / "si64_abacus" / "Si64.0"
    s = Structure(np.loadtxt(d / "atomic_numbers.dat"), np.loadtxt(d / "positions.dat"),
                  np.loadtxt(d / "cell.dat"), True)
    basis = Basis({"Si": "1s1p"})
    ops = {}
    for name in ("hamiltonians", "overlaps"):
        with h5py.File(d / f"{name}.h5") as f:
            ops[name] = Operator.from_blocks(s, basis, {k: v[()] for k, v in f["0"].items()})
    return s, basis, ops


def test_coupling_matrices_orthogonal():
    for l1 in range(5):
        for l2 in range(5):
            C = coupling_matrix(l1, l2)
            np.testing.assert_allclose(C.T @ C, np.eye(len(C)), atol=1e-12)


def test_round_trip_real_si64_blocks(si64):
    _, basis, ops = si64
    for op in ops.values():
        onsite = torch.as_tensor(op.onsite)
        up = BlockTransform(basis, "upper")
        back = up.to_blocks(up.to_features(onsite), symmetric=True)
        assert (back - onsite).abs().max() < 1e-12
        offsite = torch.as_tensor(op.offsite)
        full = BlockTransform(basis, "all")
        feats = full.to_features(offsite)
        assert (full.to_blocks(feats) - offsite).abs().max() < 1e-12
        # orthogonal: norms preserved
        np.testing.assert_allclose(feats.norm(dim=1), offsite.flatten(1).norm(dim=1), rtol=1e-12)


@pytest.mark.parametrize("spec", [{"Si": "2s2p1d"}, {"Mo": "3s2p2d1f", "S": "2s2p1d"}, {"Fe": "1s1p1d1f1g"}])
def test_round_trip_mixed_bases(spec):
    basis = Basis(spec)
    g = torch.Generator().manual_seed(0)
    B = torch.randn(11, basis.full_norb, basis.full_norb, generator=g, dtype=torch.float64)
    full = BlockTransform(basis, "all")
    assert full.dim == basis.full_norb ** 2
    assert (full.to_blocks(full.to_features(B)) - B).abs().max() < 1e-12
    up = BlockTransform(basis, "upper")
    assert up.dim == basis.n_rme
    sym = B + B.transpose(1, 2)
    assert (up.to_blocks(up.to_features(sym), symmetric=True) - sym).abs().max() < 1e-12


def test_random_rotation_of_blocks_rotates_features():
    """B -> D_la B D_lb^T for every shell pair  <=>  features -> D(irreps) features."""
    basis = Basis({"Mo": "3s2p2d1f", "S": "2s2p1d"})
    full = BlockTransform(basis, "all")
    rng = np.random.default_rng(3)
    B = rng.normal(size=(5, basis.full_norb, basis.full_norb))
    for det in (1, -1):
        Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        Q *= det * np.sign(np.linalg.det(Q))
        Dorb = np.zeros((basis.full_norb, basis.full_norb))
        for sh in basis.full_shells:
            o = basis.shell_offset[sh]
            Dorb[o:o + sh.dim, o:o + sh.dim] = wigner_D(sh.l, Q, (-1) ** sh.l)
        rotated = Dorb @ B @ Dorb.T
        lhs = full.to_features(torch.as_tensor(rotated)).numpy()
        rhs = full.to_features(torch.as_tensor(B)).numpy() @ irreps_D(full.irreps, Q).T
        np.testing.assert_allclose(lhs, rhs, atol=1e-12)


def test_two_centre_overlap_features_follow_the_bond(si64):
    """ABACUS overlap blocks are two-centre integrals: each irreps feature of an off-site S block
    must be proportional to Y_L of the bond direction (in eqtb's (y, z, x) convention). This checks
    the orbital convention of the data and of the transform on real DFT output."""
    s, basis, ops = si64
    S = ops["overlaps"]
    full = BlockTransform(basis, "all")
    feats = full.to_features(torch.as_tensor(S.offsite)).numpy()
    d = s.positions[S.j] + S.R @ s.cell - s.positions[S.i]
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    checked = 0
    offset = 0
    for p in full.pairs:
        for L in p.irreps_l:
            v = feats[:, offset:offset + 2 * L + 1]
            offset += 2 * L + 1
            big = np.linalg.norm(v, axis=1) > 1e-4
            if (-1) ** L != p.parity:
                # odd-parity partner (e.g. 1e of p-p) vanishes for a homonuclear two-centre integral
                assert np.abs(v).max() < 1e-5
                continue
            y = spherical_harmonics(L, torch.as_tensor(d[big])).numpy()
            cos = np.abs(np.sum(v[big] * y, axis=1)) / (np.linalg.norm(v[big], axis=1) * np.linalg.norm(y, axis=1))
            assert cos.min() > 1 - 1e-6, (p.name, L, cos.min())
            checked += big.sum()
    assert checked > 1000

"""Rotating or reflecting a real molecule transforms its operator features as their irreps say.

The blocks come from PySCF integrals (overlap and core Hamiltonian T + V_nuc of CH3-SH with
cc-pVDZ: s, p and d shells, two elements with different bases), recomputed from scratch for the
rotated geometry: nothing about the rotation is fed to eqtb except the new coordinates."""

import numpy as np
import pytest
import torch

pyscf = pytest.importorskip("pyscf")
from pyscf import gto  # noqa: E402

from eqtb.blocks import BlockTransform  # noqa: E402
from eqtb.data.pyscf_engine import operators_from_ao  # noqa: E402
from eqtb.so3 import irreps_D  # noqa: E402

GEOMETRY = np.array([[0.000, 0.000, 0.000], [1.820, 0.000, 0.000], [2.050, 1.330, 0.050],
                     [-0.360, 1.020, 0.100], [-0.370, -0.490, 0.900], [-0.360, -0.520, -0.880]])
SYMBOLS = ["C", "S", "H", "H", "H", "H"]


def _operators(positions):
    mol = gto.M(atom=[[s, p] for s, p in zip(SYMBOLS, positions)], basis="cc-pvdz", unit="A", verbose=0)
    hcore = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
    return operators_from_ao(mol, hcore, mol.intor("int1e_ovlp"))


def _features(op):
    up, full = BlockTransform(op.basis, "upper"), BlockTransform(op.basis, "all")
    return (up.to_features(torch.as_tensor(op.onsite)).numpy(), full.to_features(torch.as_tensor(op.offsite)).numpy(),
            up.irreps, full.irreps)


@pytest.mark.parametrize("det", [1, -1])
def test_features_transform_as_irreps(det):
    rng = np.random.default_rng(7 + det)
    Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    Q *= det * np.sign(np.linalg.det(Q))
    shift = rng.normal(size=3)
    _, basis, H, S = _operators(GEOMETRY)
    _, _, H2, S2 = _operators(GEOMETRY @ Q.T + shift)
    assert basis.lmax == 2 and basis.n_types == 3
    np.testing.assert_array_equal(H.i, H2.i)
    for a, b in ((H, H2), (S, S2)):
        on, off, irr_on, irr_off = _features(a)
        on2, off2, _, _ = _features(b)
        scale = np.abs(off).max()
        # onsite of H is not invariant (nuclear attraction of the neighbours), it must rotate
        np.testing.assert_allclose(on2, on @ irreps_D(irr_on, Q).T, atol=1e-9 * np.abs(on).max())
        np.testing.assert_allclose(off2, off @ irreps_D(irr_off, Q).T, atol=1e-9 * scale)
        # and the transformation is not trivial
        assert np.abs(off2 - off).max() > 1e-3 * scale


def test_translation_and_permutation_invariance():
    _, _, H, _ = _operators(GEOMETRY)
    _, _, Ht, _ = _operators(GEOMETRY + np.array([3.0, -2.0, 0.5]))
    np.testing.assert_allclose(Ht.offsite, H.offsite, atol=1e-9)
    # swapping the two methyl hydrogens 3 and 4 swaps their blocks
    perm = [0, 1, 2, 4, 3, 5]
    mol_p = gto.M(atom=[[SYMBOLS[p], GEOMETRY[p]] for p in perm], basis="cc-pvdz", unit="A", verbose=0)
    _, _, Hp, _ = operators_from_ao(mol_p, mol_p.intor("int1e_kin") + mol_p.intor("int1e_nuc"),
                                    mol_p.intor("int1e_ovlp"))
    np.testing.assert_allclose(Hp.onsite[[0, 1, 2, 4, 3, 5]], H.onsite, atol=1e-9)

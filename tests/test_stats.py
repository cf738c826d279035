import numpy as np
import pytest
import torch

from eqtb.blocks import BlockTransform
from eqtb.data.folder import TrajectoryFolder
from eqtb.data.stats import dataset_stats, load_stats, operator_stats, save_stats
from eqtb.operator import Operator


@pytest.fixture(scope="module")
def si64(data_dir):
    f = TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0")
    return f, f.frame(0, density_matrix=False, eigenvalues=False)


def test_streaming_equals_one_pass(si64):
    _, fr = si64
    H = fr.hamiltonian
    rng = np.random.default_rng(0)
    H2 = Operator(H.structure, H.basis, H.onsite * 1.1 + 0.3 * np.eye(4), H.i, H.j, H.R,
                  H.offsite + 0.01 * rng.normal(size=H.offsite.shape))
    st = operator_stats([H, H2], H.basis)
    full = BlockTransform(H.basis, "all")
    feats = np.concatenate([full.to_features(torch.as_tensor(op.offsite)).numpy() for op in (H, H2)])
    c = st.offsite
    for k in range(len(c.L)):
        v = feats[:, c.start[k]:c.start[k] + 2 * c.L[k] + 1]
        assert c.count[0, k] == len(feats)
        if c.L[k] == 0:
            np.testing.assert_allclose(c.mean[0, k], v.mean(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(c.std[0, k], v.std(), rtol=1e-10)
        else:
            np.testing.assert_allclose(c.std[0, k], np.sqrt((v**2).mean()), rtol=1e-10)
    shift, scale = c.expanded()
    assert shift.shape == scale.shape == (1, full.dim) and (scale > 0).all()


def test_overlap_statistics_are_physical(si64):
    folder, _ = si64
    st = dataset_stats([folder], quantities=("overlap", "hamiltonian"), r_max=7.4)
    S = st["overlap"]
    names = S.onsite.names
    # normalised orbitals: onsite s-s overlap is exactly 1 for every atom
    k = names.index("1s-1s:0e")
    assert abs(S.onsite.mean[0, k] - 1) < 1e-5 and S.onsite.std[0, k] < 1e-5
    # two-centre integrals of a homonuclear pair have no antisymmetric (1e) p-p part, H does
    k = S.offsite.names.index("1p-1p:1e")
    assert S.offsite.std[0, k] < 1e-5 < st["hamiltonian"].offsite.std[0, k]
    # the cutoff restricts the bonds counted: 86 neighbours per atom within 7.4 A (S lacks the few
    # bonds near 7.4 A = twice the 7 a.u. orbital radius, whose overlap is exactly zero)
    assert st["hamiltonian"].offsite.count.max() == 64 * 86 // 2
    assert 64 * 86 // 2 - 10 < S.offsite.count.max() <= 64 * 86 // 2
    assert operator_stats([folder.operator("hamiltonian", 0)], S.basis).offsite.count.max() == 4685


def test_save_load_round_trip(si64, tmp_path):
    folder, _ = si64
    st = dataset_stats([folder], quantities=("hamiltonian",))
    save_stats(st, tmp_path / "stats.json")
    back = load_stats(tmp_path / "stats.json")
    np.testing.assert_array_equal(back["hamiltonian"].offsite.std, st["hamiltonian"].offsite.std)
    assert back["hamiltonian"].basis == st["hamiltonian"].basis
    assert "onsite Si" in back["hamiltonian"].summary()

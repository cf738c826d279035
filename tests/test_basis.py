import numpy as np
import pytest
from e3nn import o3

from eqtb.basis import Basis, BasisError, parse_basis_string


@pytest.mark.parametrize("spec, norb", [("1s1p", 4), ("2s2p1d", 13), ("3s3p2d1f", 29), ("6s3p3d2f", 44)])
def test_orbital_counts(spec, norb):
    assert Basis({"Si": spec})["Si"].norb == norb


def test_shell_order_is_l_major():
    assert parse_basis_string("1d2s2p") == (0, 0, 1, 1, 2)
    b = Basis({"Si": "2s2p1d"})
    assert b.orbital_labels("Si")[:5] == ["1s", "2s", "1p_y", "1p_z", "1p_x"]
    assert b.orbital_labels("Si")[-5:] == ["1d_xy", "1d_yz", "1d_z2", "1d_xz", "1d_x2-y2"]


@pytest.mark.parametrize("spec, essential, n_rme", [
    ({"Si": "1s1p"}, "2x0e+1x1o+1x2e", 13),
    ({"Si": "2s2p1d"}, "7x0e+6x1o+6x2e+2x3o+1x4e", 107),
    ({"Mo": "3s2p2d1f", "S": "2s2p1d"}, "13x0e+12x1o+15x2e+9x3o+6x4e+2x5o+1x6e", 398),
])
def test_essential_irreps_and_feature_length(spec, essential, n_rme):
    b = Basis(spec)
    assert b.essential_irreps == essential
    assert b.n_rme == n_rme
    # the feature irreps have exactly the feature dimension, in both layouts
    assert o3.Irreps(b.irreps()).dim == n_rme
    assert o3.Irreps(b.irreps(b.all_pairs)).dim == b.full_norb ** 2


def test_deeptb_pair_offsets_2s2p1d():
    b = Basis({"Si": "2s2p1d"})
    got = {p.name: p.start for p in b.upper_pairs}
    assert got == {"1s-1s": 0, "1s-2s": 1, "2s-2s": 2, "1s-1p": 3, "1s-2p": 6, "2s-1p": 9, "2s-2p": 12,
                   "1s-1d": 15, "2s-1d": 20, "1p-1p": 25, "1p-2p": 34, "2p-2p": 43, "1p-1d": 52,
                   "2p-1d": 67, "1d-1d": 82}


def test_full_basis_and_types():
    b = Basis({"S": "2s2p1d", "Mo": "3s2p2d1f"})
    assert b.symbols == ["S", "Mo"]  # sorted by atomic number
    assert [s.name for s in b.full_shells] == ["1s", "2s", "3s", "1p", "2p", "1d", "2d", "1f"]
    assert b.full_norb == 26
    # S (2s2p1d) sits on 1s, 2s, 1p, 2p, 1d of the full layout
    assert b.orbital_index[0].tolist() == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert b.orbital_mask.sum(axis=1).tolist() == [13, 26]
    np.testing.assert_array_equal(b.types_of([42, 16, 16]), [1, 0, 0])
    m = b.pair_mask(b.upper_pairs, 0, 0)
    assert m.sum() < b.n_rme and m.any()


def test_sk_list_basis_sorting():
    assert Basis({"Si": ["3s", "s*", "3p"]})["Si"].shell_l == (0, 0, 1)
    assert Basis({"C": ["2s", "2p"]})["C"].norb == 4


@pytest.mark.parametrize("spec, msg", [
    ({"Si": "10s"}, "malformed"), ({"Si": "2s2s"}, "twice"), ({"Si": "2x"}, "malformed"),
    ({"Xx": "1s"}, "unknown element"), ({"Si": ""}, "expected"), ({}, "non-empty"), ({"Si": 3}, "expected"),
    ({"Si": ["3s", "3s"]}, "repeated"),
])
def test_bad_basis_errors(spec, msg):
    with pytest.raises(BasisError, match=msg):
        Basis(spec)


def test_element_not_in_basis():
    with pytest.raises(BasisError, match=r"\['C'\] have no basis"):
        Basis({"Si": "1s1p"}).types_of([14, 6])

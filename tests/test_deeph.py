"""DeepH-pack (OpenMX) folders: eqtb -> DeepH -> eqtb round trip on Si64, the OpenMX orbital
permutation, hand-made folders and bad input."""

import json

import h5py
import numpy as np
import pytest

from eqtb.data.deeph import _read_h5_root  # noqa: E402
from eqtb.data.deeph import (DeepHError, DeepHFolder, DeepHParser, deeph_key, parse_deeph_key, read_deeph_folder,
                             write_deeph_folder)
from eqtb.data.folder import DatasetError, DatasetWarning, Frame, read_dataset
from eqtb.data.parsers import PARSERS, ParseError
from eqtb.structure import Structure
from eqtb.operator import Operator

#: eqtb p order is (y, z, x); OpenMX's is (x, y, z): eqtb component k = OpenMX component P[k]
P_EQTB_FROM_OPENMX = [1, 2, 0]
#: eqtb d order (xy, yz, z2, xz, x2-y2) from OpenMX's (z2, x2-y2, xy, xz, yz)
D_EQTB_FROM_OPENMX = [2, 4, 0, 3, 1]


@pytest.fixture(scope="module")
def si64(data_dir):
    return read_dataset(data_dir / "si64_abacus", "Si64")[0].frame(0)


@pytest.fixture(scope="module")
def si64_deeph(si64, tmp_path_factory):
    path = tmp_path_factory.mktemp("deeph") / "si64"
    write_deeph_folder(si64, path, fermi_level=-4.25)
    return path


@pytest.fixture(scope="module")
def si64_deeph_H(si64_deeph):
    return _h5(si64_deeph / "hamiltonians.h5")


def _ops_equal(a: Operator, b: Operator) -> bool:
    return a.basis == b.basis and all(np.array_equal(getattr(a, x), getattr(b, x))
                                      for x in ("onsite", "i", "j", "R", "offsite"))


def _h5(path):
    """Every root dataset of a block file (low-level reader: h5py's high-level API is slow for 10^4
    small datasets)."""
    return _read_h5_root(path)


# ---------------------------------------------------------------------------------- Si64 round trip


def test_round_trip_si64_is_exact(si64, si64_deeph):
    back = read_deeph_folder(si64_deeph)
    s, t = si64.structure, back.structure
    assert np.array_equal(s.numbers, t.numbers)
    assert np.array_equal(s.positions, t.positions)
    assert np.array_equal(s.cell, t.cell)
    assert t.pbc.all()
    for q in ("hamiltonian", "overlap"):
        assert _ops_equal(getattr(si64, q), getattr(back, q)), q
    assert back.density_matrix is None
    assert DeepHFolder(si64_deeph).fermi_level == -4.25


def test_written_files_follow_deeph_layout(si64, si64_deeph, si64_deeph_H):
    s = si64.structure
    assert np.array_equal(np.loadtxt(si64_deeph / "element.dat"), s.numbers)
    assert np.array_equal(np.loadtxt(si64_deeph / "site_positions.dat"), s.positions.T)  # 3 x N
    assert np.array_equal(np.loadtxt(si64_deeph / "lat.dat"), s.cell.T)  # lattice vectors as columns
    rlat = np.loadtxt(si64_deeph / "rlat.dat")
    assert np.allclose(s.cell @ rlat, 2 * np.pi * np.eye(3))  # reciprocal vectors as columns
    assert (si64_deeph / "orbital_types.dat").read_text().splitlines() == ["0\t1"] * 64
    assert json.loads((si64_deeph / "info.json").read_text()) == {"isspinful": False, "fermi_level": -4.25}
    H = si64_deeph_H
    assert "[0, 0, 0, 1, 1]" in H and "[0, 0, 0, 64, 64]" in H and "[0, 0, 0, 0, 0]" not in H
    # both triangles, as DeepH stores them: [R, i, j] and [-R, j, i] = transpose
    n_off = len(si64.hamiltonian.i)
    assert len(H) == 64 + 2 * n_off
    for key, blk in list(H.items())[:500]:
        i, j, *R = parse_deeph_key(key)
        assert np.array_equal(H[deeph_key(j, i, [-r for r in R])], blk.T)
    Rs = {tuple(r) for r in np.loadtxt(si64_deeph / "R_list.dat", dtype=int)}
    assert Rs == {tuple(parse_deeph_key(k)[2:]) for k in H}
    # file -> eqtb -> file reproduces the file
    again = si64_deeph.parent / "again"
    write_deeph_folder(read_deeph_folder(si64_deeph, overlap=False), again, fermi_level=-4.25)
    B = _h5(again / "hamiltonians.h5")
    assert H.keys() == B.keys() and all(np.array_equal(H[k], B[k]) for k in H)


def test_openmx_permutation_is_applied(si64, si64_deeph_H):
    """An s-p block in the DeepH file equals the eqtb block with the p columns put in (x, y, z) order."""
    H = si64_deeph_H
    op = si64.hamiltonian
    blocks = op.to_blocks()
    xyz = [0, 3, 1, 2]  # eqtb (s, y, z, x) -> OpenMX (s, x, y, z)
    checked = 0
    for e in range(0, len(op.i), 97):
        i, j, R = op.i[e], op.j[e], op.R[e]
        eq = blocks[f"{i}_{j}_{R[0]}_{R[1]}_{R[2]}"]
        dh = H[deeph_key(i, j, R)]
        assert np.array_equal(dh[0, 1:], eq[0, [3, 1, 2]])  # s row, p columns x, y, z
        assert np.array_equal(dh, eq[np.ix_(xyz, xyz)])
        assert not np.array_equal(dh, eq)  # the permutation is not the identity on this data
        checked += 1
    assert checked > 40


def test_openmx_sp_overlap_points_along_the_bond(si64, si64_deeph):
    """Physical check of the OpenMX order in the written file: the s-p overlap row of a nearest
    neighbour pair is proportional to the bond direction (x, y, z), one sign for all bonds."""
    S = _h5(si64_deeph / "overlaps.h5")
    s = si64.structure
    cosines = []
    for key, blk in S.items():
        i, j, *R = parse_deeph_key(key)
        d = s.positions[j] + np.array(R) @ s.cell - s.positions[i]
        if i == j or np.linalg.norm(d) > 2.5:
            continue
        row = blk[0, 1:]
        cosines.append(row @ d / np.linalg.norm(row) / np.linalg.norm(d))
    assert len(cosines) == 64 * 4
    assert np.allclose(np.abs(cosines), 1, atol=1e-6)
    assert len({np.sign(c) for c in cosines}) == 1


# ---------------------------------------------------------------------------------- hand-made folders


def _make_folder(path, numbers, positions, cell, orbital_types, blocks, info=None, name="hamiltonians.h5"):
    """A DeepH folder written by hand (not by eqtb): ``blocks`` maps DeepH key strings to arrays."""
    path.mkdir(parents=True, exist_ok=True)
    np.savetxt(path / "element.dat", numbers, fmt="%d")
    np.savetxt(path / "site_positions.dat", np.asarray(positions).T)
    np.savetxt(path / "lat.dat", np.asarray(cell).T)
    (path / "orbital_types.dat").write_text("".join(" ".join(map(str, ls)) + "\n" for ls in orbital_types))
    (path / "info.json").write_text(json.dumps(info or {"isspinful": False, "fermi_level": 1.5}))
    with h5py.File(path / name, "w") as h:
        for k, v in blocks.items():
            h[k] = v
    return path


def _random_blocks(norb, pairs, seed=0):
    """Hermitian set of blocks in file order for ``pairs`` [(i, j, R)] (0-based), plus onsite."""
    rng = np.random.default_rng(seed)
    out = {}
    for a, n in enumerate(norb):
        m = rng.standard_normal((n, n))
        out[deeph_key(a, a, (0, 0, 0))] = m + m.T
    for i, j, R in pairs:
        m = rng.standard_normal((norb[i], norb[j]))
        out[deeph_key(i, j, R)] = m
        out[deeph_key(j, i, [-r for r in R])] = m.T
    return out


CELL = np.diag([6.0, 7.0, 8.0])
POS3 = [[0.0, 0.0, 0.0], [1.5, 0.3, 0.2], [0.2, 2.0, 1.0]]


@pytest.fixture
def handmade(tmp_path):
    """Si (s s p p d), C (s p), C: 13 + 4 + 4 orbitals."""
    types = [[0, 0, 1, 1, 2], [0, 1], [0, 1]]
    blocks = _random_blocks([13, 4, 4], [(0, 1, (0, 0, 0)), (0, 2, (1, 0, 0)), (1, 2, (0, -1, 0)), (0, 0, (0, 0, 1))])
    return _make_folder(tmp_path / "f", [14, 6, 6], POS3, CELL, types, blocks), blocks


def test_handmade_folder_basis_and_orbital_order(handmade):
    path, blocks = handmade
    f = DeepHFolder(path)
    assert f.basis.spec == {"C": "1s1p", "Si": "2s2p1d"}
    assert f.fermi_level == 1.5
    fr = f.frame()
    assert fr.overlap is None and fr.density_matrix is None
    out = fr.hamiltonian.to_blocks()
    si = [0, 1] + [2 + p for p in P_EQTB_FROM_OPENMX] + [5 + p for p in P_EQTB_FROM_OPENMX] \
        + [8 + d for d in D_EQTB_FROM_OPENMX]
    c = [0] + [1 + p for p in P_EQTB_FROM_OPENMX]
    assert np.array_equal(out["0_1_0_0_0"], blocks["[0, 0, 0, 1, 2]"][np.ix_(si, c)])
    assert np.array_equal(out["0_2_1_0_0"], blocks["[1, 0, 0, 1, 3]"][np.ix_(si, c)])
    assert np.array_equal(out["1_2_0_-1_0"], blocks["[0, -1, 0, 2, 3]"][np.ix_(c, c)])
    assert np.array_equal(out["0_0_0_0_1"], blocks["[0, 0, 1, 1, 1]"][np.ix_(si, si)])
    assert np.array_equal(out["1_1_0_0_0"], blocks["[0, 0, 0, 2, 2]"][np.ix_(c, c)])
    # and back: eqtb -> DeepH reproduces the hand-made file exactly
    write_deeph_folder(fr, path.parent / "back")
    back = _h5(path.parent / "back" / "hamiltonians.h5")
    assert back.keys() == blocks.keys()
    assert all(np.array_equal(back[k], blocks[k]) for k in blocks)


def test_shells_out_of_l_order_are_sorted(tmp_path):
    """orbital_types "0 1 0" (s, p, s) becomes eqtb's 2s1p (s, s, p), the p permuted to (y, z, x)."""
    blocks = _random_blocks([5], [(0, 0, (1, 0, 0))])
    path = _make_folder(tmp_path / "f", [14], [[0, 0, 0]], CELL, [[0, 1, 0]], blocks)
    fr = read_deeph_folder(path)
    assert fr.hamiltonian.basis.spec == {"Si": "2s1p"}
    idx = [0, 4, 1 + 1, 1 + 2, 1 + 0]  # s(1st), s(2nd), p_y, p_z, p_x
    out = fr.hamiltonian.to_blocks(both_triangles=True)
    assert np.array_equal(out["0_0_1_0_0"], blocks["[1, 0, 0, 1, 1]"][np.ix_(idx, idx)])


def test_basis_argument_when_orbital_types_is_absent(handmade):
    """As DeePTB's DeePHDataset (basis from the config): orbital_types.dat optional given a basis."""
    path, _ = handmade
    ref = read_deeph_folder(path).hamiltonian
    with pytest.raises(DeepHError, match=r"orbital_types\.dat: C has basis '1s1p' but the basis argument"):
        read_deeph_folder(path, basis={"Si": "2s2p1d", "C": "2s1p"})
    (path / "orbital_types.dat").unlink()
    assert _ops_equal(read_deeph_folder(path, basis={"Si": "2s2p1d", "C": "1s1p"}).hamiltonian, ref)
    with pytest.raises(DeepHError, match="l=4"):
        read_deeph_folder(path, basis={"Si": "2s2p1d1g", "C": "1s1p"})


def test_lenient_key_spelling(tmp_path):
    blocks = {k.replace(" ", ""): v for k, v in _random_blocks([1, 1], [(0, 1, (0, 0, 0))]).items()}
    path = _make_folder(tmp_path / "f", [1, 1], POS3[:2], CELL, [[0], [0]], blocks)
    assert len(read_deeph_folder(path).hamiltonian.i) == 1


def test_registered_parser(si64_deeph, tmp_path):
    assert PARSERS["deeph"] is DeepHParser
    assert DeepHParser.detect(si64_deeph) and not DeepHParser.detect(tmp_path)
    p = DeepHParser(si64_deeph)
    assert p.nframes == 1 and p.basis.spec == {"Si": "1s1p"} and p.fermi_level == -4.25
    fr = p.frame(0, hamiltonian=True, overlap=True)
    assert fr.hamiltonian is not None and fr.overlap is not None
    with pytest.raises(ParseError, match="density_matrixs.h5"):
        p.frame(0, density_matrix=True)
    with pytest.raises(IndexError):
        p.frame(1)


def test_unknown_fermi_level_is_written_as_zero(si64, tmp_path):
    write_deeph_folder(Frame(si64.structure, overlap=si64.overlap), tmp_path / "f")
    assert json.loads((tmp_path / "f" / "info.json").read_text()) == {"isspinful": False, "fermi_level": 0.0}
    assert not (tmp_path / "f" / "hamiltonians.h5").exists()
    assert _ops_equal(read_deeph_folder(tmp_path / "f").overlap, si64.overlap)


# ---------------------------------------------------------------------------------- bad input


def test_missing_element_dat(handmade):
    path, _ = handmade
    (path / "element.dat").unlink()
    with pytest.raises(DatasetError, match=r"element\.dat: missing"):
        read_deeph_folder(path)


def test_orbital_types_inconsistent_with_block_shapes(handmade):
    path, _ = handmade
    (path / "orbital_types.dat").write_text("0 0 1 1\n0 1\n0 1\n")  # Si without its d shell
    msg = r"hamiltonians\.h5: block '\[.*\]' has shape .*13.* but orbital_types\.dat gives"
    with pytest.raises(DatasetError, match=msg):
        read_deeph_folder(path)


def test_malformed_key(handmade):
    path, _ = handmade
    with h5py.File(path / "hamiltonians.h5", "a") as h:
        h["0_1_0_0_0"] = np.zeros((13, 4))
    with pytest.raises(DatasetError, match=r"hamiltonians\.h5: malformed block name '0_1_0_0_0'"):
        read_deeph_folder(path)


def test_different_orbital_types_for_one_element(handmade):
    path, _ = handmade
    (path / "orbital_types.dat").write_text("0 0 1 1 2\n0 1\n0 0\n")
    with pytest.raises(DeepHError, match=r"orbital_types\.dat: line 3: atom 3 \(C\).*atom 2"):
        read_deeph_folder(path)


def test_other_bad_input(handmade, tmp_path):
    path, blocks = handmade
    with pytest.raises(DeepHError, match="does not exist"):
        read_deeph_folder(tmp_path / "nope")
    # missing onsite block
    with h5py.File(path / "hamiltonians.h5", "a") as h:
        del h["[0, 0, 0, 3, 3]"]
    with pytest.raises(DeepHError, match=r"hamiltonians\.h5: onsite blocks .* missing for atoms \[3\]"):
        read_deeph_folder(path)
    # atom index out of range
    with h5py.File(path / "hamiltonians.h5", "a") as h:
        h["[0, 0, 0, 3, 3]"] = blocks["[0, 0, 0, 3, 3]"]
        h["[0, 0, 0, 1, 4]"] = np.zeros((13, 4))
    with pytest.raises(DeepHError, match=r"hamiltonians\.h5: block '\[0, 0, 0, 1, 4\]': atom index out of range"):
        read_deeph_folder(path)
    # a DeePTB-style file with frame groups
    with h5py.File(path / "hamiltonians.h5", "w") as h:
        h.create_group("0")
    with pytest.raises(DeepHError, match="not a dataset"):
        read_deeph_folder(path)
    # spinful
    (path / "info.json").write_text('{"isspinful": true, "fermi_level": 0}')
    with pytest.raises(DeepHError, match=r"info\.json: isspinful"):
        read_deeph_folder(path)
    (path / "info.json").write_text('{"isspinful": false,')
    with pytest.raises(DeepHError, match=r"info\.json: malformed JSON"):
        read_deeph_folder(path)
    (path / "info.json").unlink()  # optional, as for DeePTB's DeePHDataset
    # transposed positions
    np.savetxt(path / "site_positions.dat", np.array(POS3))
    np.savetxt(path / "element.dat", [14, 6, 6, 6], fmt="%d")
    np.savetxt(path / "site_positions.dat", np.zeros((4, 3)))
    with pytest.raises(DeepHError, match=r"site_positions\.dat: shape \(4, 3\), expected \(3, 4\).*transposed"):
        read_deeph_folder(path)
    (path / "orbital_types.dat").unlink()
    np.savetxt(path / "element.dat", [14, 6, 6], fmt="%d")
    np.savetxt(path / "site_positions.dat", np.array(POS3).T)
    with pytest.raises(DeepHError, match=r"orbital_types\.dat: missing"):
        read_deeph_folder(path)


def test_write_errors(si64, tmp_path):
    write_deeph_folder(si64, tmp_path / "a")
    with pytest.raises(DeepHError, match="already exists"):
        write_deeph_folder(si64, tmp_path / "a")
    write_deeph_folder(Frame(si64.structure, overlap=si64.overlap), tmp_path / "a", overwrite=True)
    assert not (tmp_path / "a" / "hamiltonians.h5").exists()
    with pytest.raises(DeepHError, match="no operator"):
        write_deeph_folder(Frame(si64.structure), tmp_path / "b")
    mol = Structure([1, 1], [[0, 0, 0], [0.74, 0, 0]])
    from eqtb.basis import Basis

    b = Basis({"H": "1s"})
    op = Operator.from_blocks(mol, b, {"0_0_0_0_0": np.ones((1, 1)), "1_1_0_0_0": np.ones((1, 1))})
    with pytest.raises(DeepHError, match="no cell"):
        write_deeph_folder(Frame(mol, hamiltonian=op), tmp_path / "c")
    slab = Structure([1, 1], [[0, 0, 0], [0.74, 0, 0]], CELL, [True, True, False])
    op = Operator.from_blocks(slab, b, {"0_0_0_0_0": np.ones((1, 1)), "1_1_0_0_0": np.ones((1, 1))})
    with pytest.warns(DatasetWarning, match="periodic"):
        write_deeph_folder(Frame(slab, hamiltonian=op), tmp_path / "d")


def test_registered_as_parser(si64_deeph):
    from eqtb.data.parsers import get_parser

    parser = get_parser("deeph")
    assert parser is DeepHParser and parser.detect(si64_deeph)

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list

from eqtb.structure import Structure, StructureError, build_graph, pair_cutoffs


def _canonical(g):
    lexpos = np.where(g.R[:, 0] != 0, g.R[:, 0], np.where(g.R[:, 1] != 0, g.R[:, 1], g.R[:, 2])) > 0
    return np.all((g.i < g.j) | ((g.i == g.j) & lexpos))


def _edge_set(i, j, S):
    return {(a, b, *r) for a, b, r in zip(i.tolist(), j.tolist(), S.tolist())}


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (True, False, False), (False,) * 3])
def test_graph_matches_ase_for_any_periodicity(pbc):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.pbc = pbc
    s = Structure.from_ase(atoms)
    g = build_graph(s, 4.0)
    assert _canonical(g)
    i, j, S = neighbor_list("ijS", atoms, 4.0)
    directed = g.directed()
    assert _edge_set(*directed) == _edge_set(i, j, S)
    np.testing.assert_allclose(g.vectors, s.positions[g.j] + g.R @ s.cell - s.positions[g.i], atol=1e-12)
    assert (g.lengths < 4.0).all()


def test_graph_si64_real_structure(data_dir):
    s = Structure.read(data_dir / "si64_abacus" / "Si64.vasp")
    g = build_graph(s, 7.4)
    # every Si atom of a (near) perfect diamond crystal has 86 neighbours within 7.4 A
    counts = np.bincount(np.concatenate([g.i, g.j]), minlength=64)
    assert counts.tolist() == [86] * 64
    assert g.n_edges == 64 * 86 // 2


def test_per_species_and_per_bond_cutoffs():
    atoms = bulk("NaCl", "rocksalt", a=5.64) * (2, 2, 2)
    s = Structure.from_ase(atoms)
    np.testing.assert_allclose(pair_cutoffs({"Na": 3.0, "Cl": 5.0}, ["Na", "Cl"]), [[3.0, 4.0], [4.0, 5.0]])
    np.testing.assert_allclose(pair_cutoffs({"Na-Cl": 3.0, "Cl-Na": 4.0, "Na-Na": 1.0, "Cl-Cl": 2.0},
                                            ["Na", "Cl"]), [[1.0, 3.5], [3.5, 2.0]])
    g = build_graph(s, {"Na": 3.0, "Cl": 4.5}, symbols=["Na", "Cl"])
    zi, zj = s.numbers[g.i], s.numbers[g.j]
    # Na-Na (3.99 A) beyond 3.0, Na-Cl (2.82 A) within 3.75, Cl-Cl (3.99 A) within 4.5
    assert not ((zi == 11) & (zj == 11)).any()
    assert ((zi == 17) & (zj == 17)).any() and (zi != zj).any()
    with pytest.raises(ValueError, match="no entry for bond"):
        pair_cutoffs({"Na-Cl": 3.0}, ["Na", "Cl"])


def test_bad_structures():
    with pytest.raises(StructureError, match="NaN"):
        Structure([1, 1], [[0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(StructureError, match="degenerate"):
        Structure([14], [[0, 0, 0]], np.zeros((3, 3)), True)
    s = Structure.from_ase(molecule("H2O"))
    s.positions[1] = s.positions[0] + 0.01
    with pytest.raises(StructureError, match="on top of each other"):
        s.check_distances()
    with pytest.raises(FileNotFoundError, match="nope.vasp"):
        Structure.read("nope.vasp")


def test_read_formats(data_dir, tmp_path):
    s = Structure.read(data_dir / "si64_abacus" / "Si64.vasp")
    for ext in ("cif", "xyz", "traj"):
        s.to_ase().write(tmp_path / f"si.{ext}")
        t = Structure.read(tmp_path / f"si.{ext}")
        np.testing.assert_allclose(t.positions, s.positions, atol=1e-6)
        assert t.natoms == 64


def test_spatial_order_is_a_local_permutation(data_dir):
    """Z-order renumbering: a permutation that keeps every bond (same lengths) and puts atoms close
    in index close in space (the point of it: cache-friendly products): the first eighth of the
    atoms of a cubic supercell fill a compact box, where ASE's order gives a bar across the cell."""
    big = Structure.read(data_dir / "si64_abacus" / "Si64.vasp").repeat((4, 4, 4))
    order = big.spatial_order()
    assert sorted(order.tolist()) == list(range(big.natoms))
    new = big.reordered(order)
    np.testing.assert_array_equal(new.positions, big.positions[order])
    g_old, g_new = build_graph(big, 5.0), build_graph(new, 5.0)
    np.testing.assert_allclose(np.sort(g_new.lengths), np.sort(g_old.lengths), atol=1e-9)
    edge = np.linalg.norm(big.cell, axis=1)
    extent = lambda s: np.ptp(s.positions[: s.natoms // 8], axis=0) / edge  # noqa: E731
    assert extent(new).max() < 0.75
    assert extent(big).max() > 0.95
    with pytest.raises(StructureError, match="permutation"):
        big.reordered(np.zeros(big.natoms, dtype=int))

"""The DFTB Slater-Koster file reader (:mod:`eqtb.data.skf`): the hBN_dftb tables of DeePTB's
examples (equal to what DeePTB's own reader made of them, its ``skparams.pth``), Fortran
list-directed records, the extended (f) format, and errors that name the file."""

import numpy as np
import pytest

from eqtb.data.skf import (BOHR_ANGSTROM, HARTREE_EV, INTEGRALS, SKFError, SKTable, read_skdata, read_skf,
                           skdata_cutoffs, write_skf)


@pytest.fixture(scope="module")
def slakos(data_dir):
    path = data_dir / "deeptb_examples" / "hBN_dftb" / "slakos"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def test_homonuclear_header_and_grid(slakos):
    """B-B.skf: line 1 ``0.05 400``, line 2 ``0.0 -0.131903 -0.339811 0. 0. 0.380450 0.447900 0. 1.
    2.`` (Ed Ep Es SPE Ud Up Us fd fp fs, Hartree), then 399 rows from 0.05 Bohr."""
    t = read_skf(slakos / "B-B.skf")
    assert t.n_points == 400 and t.hamiltonian.shape == t.overlap.shape == (399, 20) and t.max_l == 2
    assert t.spacing == pytest.approx(0.05 * BOHR_ANGSTROM)
    assert t.distances[0] == pytest.approx(t.spacing) and t.cutoff == pytest.approx(399 * 0.05 * BOHR_ANGSTROM)
    np.testing.assert_allclose(t.onsite, np.array([-0.339811, -0.131903, 0.0]) * HARTREE_EV)
    np.testing.assert_allclose(t.hubbard_u, np.array([0.447900, 0.380450, 0.0]) * HARTREE_EV)
    np.testing.assert_allclose(t.occupations, [2.0, 1.0, 0.0])
    assert t.mass == pytest.approx(10.811)
    assert not t.hamiltonian[:, :INTEGRALS.index("dd0")].any()  # no f columns in the simple format


def test_heteronuclear_row(slakos):
    """Row 10 of B-N.skf (0.5 Bohr): ``5*0.0 0.79726833 1.24185726 0.0 -0.57056668 -0.89213163
    5*0.0 -0.74185104 -0.89054509 0.0 -0.04662674 0.83435051``; the rows before it are placeholders."""
    t = read_skf(slakos / "B-N.skf")
    assert t.onsite is None and t.mass is None
    row = 9
    assert t.distances[row] == pytest.approx(0.5 * BOHR_ANGSTROM)
    assert t.integral(1, 1, 0)[row] == pytest.approx(0.79726833 * HARTREE_EV)
    assert t.integral(1, 1, 1)[row] == pytest.approx(1.24185726 * HARTREE_EV)
    assert t.integral(0, 1, 0)[row] == pytest.approx(-0.57056668 * HARTREE_EV)
    assert t.integral(0, 0, 0)[row] == pytest.approx(-0.89213163 * HARTREE_EV)
    assert t.integral(0, 1, 0, overlap=True)[row] == pytest.approx(-0.04662674)
    assert t.integral(0, 0, 0, overlap=True)[row] == pytest.approx(0.83435051)
    assert not t.hamiltonian[:row].any() and not t.overlap[:row].any()
    with pytest.raises(ValueError, match="l1 <= l2"):
        t.integral(1, 0, 0)


def test_equals_deeptb_reader(slakos):
    """Every table of the folder equals DeePTB's reading of the same files (``skparams.pth``, the dict
    of its ``SKParam.read_skfiles``, float32), with the files' different grids (0.05 and 0.02 Bohr)."""
    for symbols in (["B", "N"], ["C", "H"], ["Si"]):
        ours, deeptb = read_skdata(slakos, symbols), read_skdata(slakos / "skparams.pth", symbols)
        assert set(ours) == {(a, b) for a in symbols for b in symbols}
        for pair, t in ours.items():
            ref = deeptb[pair]
            np.testing.assert_allclose(t.distances, ref.distances, rtol=0, atol=2e-6)
            np.testing.assert_allclose(t.hamiltonian, ref.hamiltonian, rtol=0, atol=5e-6)
            np.testing.assert_allclose(t.overlap, ref.overlap, rtol=0, atol=1e-7)
            if pair[0] == pair[1]:
                np.testing.assert_allclose(t.onsite, ref.onsite, rtol=0, atol=5e-6)
                np.testing.assert_allclose(t.hubbard_u, ref.hubbard_u, rtol=0, atol=5e-6)
                np.testing.assert_allclose(t.occupations, ref.occupations)


def test_cutoffs(slakos):
    cut = skdata_cutoffs(slakos)
    assert cut["B-N"] == pytest.approx(399 * 0.05 * BOHR_ANGSTROM)
    assert cut["C-H"] == pytest.approx(499 * 0.02 * BOHR_ANGSTROM)
    assert set(cut) == {p.stem for p in slakos.glob("*.skf")}
    assert skdata_cutoffs(slakos / "skparams.pth")["B-N"] == pytest.approx(cut["B-N"], abs=1e-5)


def test_fortran_records(tmp_path):
    """Commas, ``n*x`` repeats, D exponents, a record continued on the next line, and words after the
    numbers a record needs (B-B.skf's ``T 1``) read as Fortran's list-directed input reads them."""
    onsite = "-0.5, -0.2 -0.7 0.0 0.3 0.4 0.5 0.0 1.0 2.0 T 1 extra words\n"
    rows = ["20*0.0\n", "1.0D-1 2*0.2 7*0.0\n 5*0.0, 0.5, 4*0.0\n"]
    (tmp_path / "X-X.skf").write_text("0.5, 3, 2\n" + onsite + "1.0 19*0.0\n" + "".join(rows) + "Spline\n")
    t = read_skf(tmp_path / "X-X.skf")
    np.testing.assert_allclose(t.onsite, np.array([-0.7, -0.2, -0.5]) * HARTREE_EV)
    np.testing.assert_allclose(t.hamiltonian[1, [INTEGRALS.index(n) for n in ("dd0", "dd1", "dd2")]],
                               np.array([0.1, 0.2, 0.2]) * HARTREE_EV)
    assert t.overlap[1, INTEGRALS.index("pp0")] == 0.5 and not t.hamiltonian[0].any()


@pytest.mark.parametrize("max_l", [2, 3], ids=["simple", "extended"])
def test_write_read_round_trip(tmp_path, max_l):
    rng = np.random.default_rng(max_l)
    h, s = rng.normal(size=(6, 20)), rng.normal(size=(6, 20))
    if max_l == 2:  # no f integrals in a simple-format file
        f = [n for n, name in enumerate(INTEGRALS) if "f" in name]
        h[:, f] = s[:, f] = 0.0
    table = SKTable("A-A.skf", 0.1, 7, h, s, max_l, onsite=rng.normal(size=max_l + 1),
                    hubbard_u=rng.uniform(size=max_l + 1), occupations=np.arange(max_l + 1.0), mass=3.0)
    back = read_skf(write_skf(tmp_path / "A-A.skf", table))
    assert back.max_l == max_l and back.n_points == 7 and back.spacing == pytest.approx(0.1)
    for field in ("hamiltonian", "overlap", "onsite", "hubbard_u", "occupations"):
        np.testing.assert_allclose(getattr(back, field), getattr(table, field), rtol=1e-11, atol=1e-12)
    assert back.mass == 3.0
    if max_l == 3:
        assert (tmp_path / "A-A.skf").read_text().startswith("@")


def test_errors_name_the_file(tmp_path, slakos):
    with pytest.raises(SKFError, match="Z-Z.skf: cannot read"):
        read_skf(tmp_path / "Z-Z.skf")
    truncated = tmp_path / "B-N.skf"
    truncated.write_text("".join((slakos / "B-N.skf").read_text().splitlines(keepends=True)[:100]))
    with pytest.raises(SKFError, match=r"B-N.skf: file ends early: row 99 of the integral table"):
        read_skf(truncated)
    bad = tmp_path / "Q-Q.skf"
    bad.write_text("0.1 10\n-0.5 -0.2 oops\n")
    with pytest.raises(SKFError, match=r"Q-Q.skf, line 2: 'oops' is not a number \(the onsite line"):
        read_skf(bad)
    bad.write_text("-0.1 10\n")
    with pytest.raises(SKFError, match="Q-Q.skf: bad grid line"):
        read_skf(bad)
    with pytest.raises(SKFError, match="whether the file is homonuclear"):
        read_skf(tmp_path / "table.skf")
    with pytest.raises(SKFError, match=r"missing Slater-Koster file\(s\) B-Si.skf, Si-B.skf"):
        read_skdata(slakos, ["B", "Si"])
    with pytest.raises(SKFError, match="Slater-Koster folder not found"):
        read_skdata(tmp_path / "nowhere", ["B"])
    with pytest.raises(SKFError, match="no tables for the bond type B-Si"):
        read_skdata(slakos / "skparams.pth", ["B", "Si"])

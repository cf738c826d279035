"""ABACUS parser and ``eqtb parse`` on real ABACUS output (shared/data/abacus_si_matrix, gaas_abacus)
and on broken copies built in tmp_path."""

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eqtb.data.conventions import from_eqtb
from eqtb.data.folder import TrajectoryFolder, write_folder
from eqtb.data.parse import parse_folders
from eqtb.data.parsers import ParseError, get_parser
from eqtb.data.parsers.abacus import RY_TO_EV, AbacusParser, read_csr
from eqtb.tb.spectrum import band_energies

BOHR = 0.529177210903


@pytest.fixture(scope="module")
def si(data_dir):
    return AbacusParser(data_dir / "abacus_si_matrix")


@pytest.fixture(scope="module")
def gaas(data_dir):
    return AbacusParser(data_dir / "gaas_abacus")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dst


# ------------------------------------------------------------------ Si 2s2p1d: structure, basis, matrices
def test_registered():
    assert get_parser("abacus") is AbacusParser


def test_si_structure_and_basis(si):
    # no running_*.log: structure from STRU (10.2 Bohr fcc, Direct positions), basis from the .orb header
    assert si.structure_source == "STRU" and si.basis_source == "Si_gga_8au_60Ry_2s2p1d.orb"
    a = 10.2 * BOHR
    assert np.allclose(si.structure.cell, 0.5 * a * np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]]), atol=1e-12)
    assert np.allclose(si.structure.positions, [[0, 0, 0], [a / 4] * 3], atol=1e-12)
    assert si.structure.symbols == ["Si", "Si"]
    assert si.basis.spec == {"Si": "2s2p1d"}
    assert si.basis.norb_of(si.structure.numbers).sum() == 26  # 2s2p1d x 2 atoms, d included
    assert si.fermi_level is None  # no log


def test_si_raw_csr(data_dir):
    out = data_dir / "abacus_si_matrix" / "OUT.ABACUS"
    H = read_csr(out / "data-HR-sparse_SPIN0.csr")
    S = read_csr(out / "data-SR-sparse_SPIN0.csr")
    assert H.dim == S.dim == 26 and len(H.R) == len(S.R) == 183
    assert len(H.values) == 89242 and len(S.values) == 35550
    # first R block of the H file is R = (-3, -1, 1) with 156 entries, first value 1.88660844e-10 Ry
    assert H.R[0].tolist() == [-3, -1, 1] and H.values[0] == 1.88660844e-10
    # both triangles and all R are stored: M(R) = M(-R)^T on the raw file, before any conversion
    for csr in (H, S):
        Rset = {tuple(r) for r in csr.R}
        assert all((-r[0], -r[1], -r[2]) in Rset for r in Rset)
        worst = max(np.abs(csr.dense(r) - csr.dense(-r).T).max() for r in csr.R)
        assert worst == 0.0
    assert np.allclose(np.diag(S.dense((0, 0, 0))), 1.0, atol=3e-3)  # normalised orbitals (grid integration)


def test_si_blocks_hermitian_both_triangles(si):
    for q, unit in (("hamiltonian", RY_TO_EV), ("overlap", 1.0)):
        blocks = si.blocks(q)
        worst, scale = 0.0, max(np.abs(b).max() for b in blocks.values())
        for key, b in blocks.items():
            i, j, x, y, z = (int(t) for t in key.split("_"))
            partner = blocks[f"{j}_{i}_{-x}_{-y}_{-z}"]  # every block has its (j, i, -R) partner
            worst = max(worst, np.abs(b - partner.T).max())
        print(f"{q}: {len(blocks)} blocks, Hermiticity residual max|B_ij(R) - B_ji(-R)^T| = {worst:.3g} "
              f"(largest |B| {scale:.3g})")
        assert worst <= 1e-12 * scale
        assert si.hermiticity[q] == worst
    assert len(si.blocks("overlap")) == 246 and len(si.blocks("hamiltonian")) == 562
    # unit: H onsite s level in eV = Rydberg value x 13.605698
    raw = read_csr(si.out_dir / "data-HR-sparse_SPIN0.csr").dense((0, 0, 0))
    assert np.isclose(si.blocks("hamiltonian")["0_0_0_0_0"][0, 0], raw[0, 0] * RY_TO_EV, rtol=1e-15)


def test_si_overlap_positive_definite_and_gamma_bands(si):
    fr = si.frame()
    S, H = fr.overlap, fr.hamiltonian
    assert H.norb == S.norb == 26
    rng = np.random.default_rng(7)
    k = rng.random((6, 3)) - 0.5
    smin = np.linalg.eigvalsh(S.dense(k)).min(axis=1)
    print("smallest eigenvalue of S(k) at random k:", np.round(smin, 5))
    assert (smin > 1e-3).all()
    e = band_energies(H, S, [[0.0, 0.0, 0.0]])[0]
    print("Gamma eigenvalues (eV):", np.round(e, 4))
    # -6.0451, 5.8627 (x3), 8.6288 (x3), 9.5922, 14.0725 (x2), ...
    assert np.all(np.diff(e) >= 0)
    assert -8.0 < e[0] < -4.0  # Gamma_1 valence bottom
    assert np.ptp(e[1:4]) < 1e-6 and np.ptp(e[4:7]) < 1e-6  # Gamma_25' (VBM) and Gamma_15, threefold
    assert 10.0 < e[1] - e[0] < 14.0  # valence band width of Si ~ 12 eV
    assert 1.5 < e[4] - e[3] < 4.0  # direct gap at Gamma: 2.77 eV here (DFT ~2.5, exp. 3.4)
    assert abs(e[0] - (-6.04509)) < 1e-4 and abs(e[3] - 5.86268) < 1e-4 and abs(e[4] - 8.62885) < 1e-4


def _sd(u):
    x, y, z = u
    r3 = np.sqrt(3)
    return np.array([r3 * x * y, r3 * y * z, (3 * z * z - 1) / 2, r3 * x * z, r3 / 2 * (x * x - y * y)])


def test_si_sp_and_sd_overlap_rows_follow_eqtb_harmonics(si):
    """Off-site overlap rows s(i)-p(j) are c(d)*(y, z, x) and s(i)-d(j) are c'(d)*(sqrt3 xy, sqrt3 yz,
    (3z^2-1)/2, sqrt3 xz, sqrt3/2 (x^2-y^2)) of the bond direction, with c, c' depending on the bond
    length only: the ABACUS table works on real p and d orbitals. Before conversion the s-p rows are
    (z, -x, -y), which do not fit (y, z, x)."""
    st = si.structure
    shells = si.basis["Si"].shell_l
    sp_res, sd_res, raw_res, raw_wrong = [], [], [], []
    coef: dict[tuple, list] = {}
    for key, b in si.blocks("overlap").items():
        i, j, x, y, z = (int(t) for t in key.split("_"))
        d = st.positions[j] + np.array([x, y, z]) @ st.cell - st.positions[i]
        if np.linalg.norm(d) < 1e-6:
            continue
        u = d / np.linalg.norm(d)
        for s_row in (0, 1):  # s zeta 1 and 2; p zeta 1 = columns 2:5, d = columns 8:13
            v, w = b[s_row, 2:5], b[s_row, 8:13]
            if np.abs(v).max() < 1e-6 or np.abs(w).max() < 1e-6:
                continue
            t, f = u[[1, 2, 0]], _sd(u)
            sp_res.append(np.linalg.norm(v - (v @ t) * t) / np.linalg.norm(v))
            sd_res.append(np.linalg.norm(w - (w @ f) * f) / np.linalg.norm(w))  # |f| = 1 for unit u
            coef.setdefault((s_row, round(float(np.linalg.norm(d)), 4)), []).append((v @ t, w @ f))
            raw = from_eqtb("abacus", b, shells, shells)[s_row, 2:5]
            traw = np.array([u[2], -u[0], -u[1]])
            raw_res.append(np.linalg.norm(raw - (raw @ traw) * traw) / np.linalg.norm(raw))
            raw_wrong.append(np.linalg.norm(raw - (raw @ t) * t) / np.linalg.norm(raw))
    spread = max(np.ptp(np.array(c), axis=0).max() / np.abs(c).max() for c in coef.values())
    print(f"{len(sp_res)} s-p / s-d rows in {len(coef)} (zeta, distance) groups: max residual s-p "
          f"{max(sp_res):.2e}, s-d {max(sd_res):.2e}, raw s-p vs (z,-x,-y) {max(raw_res):.2e}; "
          f"relative spread of c, c' within a group {spread:.2e}")
    assert len(sp_res) > 100 and len(coef) >= 10
    assert max(sp_res) < 1e-6 and max(sd_res) < 1e-6
    assert spread < 1e-6  # same coefficient for every bond of one length (no stray sign flips)
    assert all(c[0] < 0 for cs in coef.values() for c in cs)  # s-p: one sign for all bonds
    assert max(raw_res) < 1e-6  # ABACUS's own order is (z, -x, -y) ...
    assert np.median(raw_wrong) > 0.1  # ... which is not eqtb's (y, z, x): the test can fail


# ------------------------------------------------------------------ GaAs: structure, basis, bands, Fermi level
def test_gaas_structure_basis(gaas):
    # STRU: LATTICE_CONSTANT 1.8897261258369282 Bohr (= 1 Angstrom), vectors (0, 2.875091, 2.875091) ...,
    # Direct positions Ga (0, 0, 0), As (0.25, 0.25, 0.25); the log prints the same to 6 digits
    assert gaas.structure_source == "STRU (checked against running_scf.log)"
    assert gaas.structure.symbols == ["Ga", "As"]
    assert np.allclose(gaas.structure.cell, [[0, 2.875091, 2.875091], [2.875091, 0, 2.875091],
                                             [2.875091, 2.875091, 0]], atol=1e-7)
    assert np.allclose(gaas.structure.positions, [[0, 0, 0], [1.4375455, 1.4375455, 1.4375455]], atol=1e-7)
    assert gaas.basis.spec == {"Ga": "2s2p2d1f", "As": "2s2p1d"}  # from 'L=..., number of zeta = ...'
    assert gaas.basis_source == "running_scf.log"
    assert gaas.basis.norb_of(gaas.structure.numbers).tolist() == [25, 13]
    assert gaas.fermi_level == 6.6796828183  # "EFERMI = 6.6796828183 eV"


def test_gaas_kpoints_eigenvalues(gaas):
    fr = gaas.frame(hamiltonian=False, overlap=False, eigenvalues=True)
    assert fr.hamiltonian is None and fr.overlap is None
    assert fr.kpoints.shape == (1099, 3) and fr.eigenvalues.shape == (1099, 19)
    # kpoints, new 'KPT DirectX ...' header: rows 1, 2, 3 and 1099
    assert np.array_equal(fr.kpoints[:3], [[0, 0, 0], [-0.0769231, 0, 0], [-0.153846, 0, 0]])
    assert np.array_equal(fr.kpoints[-1], [0.0769231, 0.0769231, -0.461538])
    # BANDS_1.dat row 1 "1 0  -8.2018605 -8.2018605 -8.2018605 -8.1361373 -8.1361373 -5.8085887 6.6154542 ..."
    assert np.array_equal(fr.eigenvalues[0, :7], [-8.2018605, -8.2018605, -8.2018605, -8.1361373, -8.1361373,
                                                   -5.8085887, 6.6154542])
    assert fr.eigenvalues[0, -1] == 24.016307 and fr.eigenvalues[-1, 0] == -8.2643354
    assert fr.eigenvalues[-1, -1] == 22.997338


def test_gaas_old_kpoints_header_and_istate(gaas, tmp_path):
    """Old ' KPOINTS DIRECT_X ...' header accepted; istate.info used when BANDS_1.dat is absent."""
    d = _copy(gaas.path, tmp_path / "gaas")
    out = d / "OUT.ABACUS_SCF"
    text = (out / "kpoints").read_text().replace(
        "      KPT             DirectX             DirectY             DirectZ              Weight",
        " KPOINTS     DIRECT_X   DIRECT_Y   DIRECT_Z  WEIGHT", 1)
    (out / "kpoints").write_text(text)
    (out / "BANDS_1.dat").unlink()
    p = AbacusParser(d)
    assert np.array_equal(p.kpoints(), gaas.kpoints())
    ev = p.eigenvalues()  # istate.info prints 6 significant digits
    assert ev.shape == (1099, 19) and ev[0, 0] == -8.20186
    assert np.abs(ev - gaas.eigenvalues()).max() < 1e-4


def test_gaas_without_log_needs_orb_files(gaas, tmp_path):
    d = _copy(gaas.path, tmp_path / "gaas")
    (d / "OUT.ABACUS_SCF" / "running_scf.log").unlink()
    with pytest.raises(ParseError, match=r"Ga_gga_8au_100Ry_2s2p2d1f\.orb: orbital file named in STRU"):
        AbacusParser(d)
    # provide the two .orb headers: now the basis comes from them and the structure from STRU
    for name, counts in (("Ga_gga_8au_100Ry_2s2p2d1f.orb", (2, 2, 2, 1)), ("As_gga_7au_100Ry_2s2p1d.orb", (2, 2, 1))):
        head = "".join(f"Number of {'SPDF'[l]}orbital-->       {n}\n" for l, n in enumerate(counts))
        (d / name).write_text(f"Element                     {name[:2]}\n{head}SUMMARY  END\n")
    p = AbacusParser(d)
    assert p.structure_source == "STRU" and p.fermi_level is None
    assert p.basis.spec == {"Ga": "2s2p2d1f", "As": "2s2p1d"}
    assert np.allclose(p.structure.cell, gaas.structure.cell, atol=1e-12)


# ------------------------------------------------------------------ bad input
@pytest.fixture
def si_copy(data_dir, tmp_path):
    return _copy(data_dir / "abacus_si_matrix", tmp_path / "si")


def test_truncated_csr(si_copy):
    f = si_copy / "OUT.ABACUS" / "data-HR-sparse_SPIN0.csr"
    lines = f.read_text().split("\n")
    # cut the values line of the first R block with non-zeros after line 100 to 50 numbers
    h = next(k for k in range(100, len(lines)) if len(lines[k].split()) == 4 and int(lines[k].split()[3]) > 50)
    nnz = int(lines[h].split()[3])
    f.write_text("\n".join(lines[:h + 1]) + "\n" + " ".join(lines[h + 1].split()[:50]) + "\n")
    p = AbacusParser(si_copy)
    with pytest.raises(ParseError) as exc:
        p.frame()
    msg = str(exc.value)
    print(msg)
    block = sum(1 for ln in lines[2:h + 1] if len(ln.split()) == 4)
    R = " ".join(lines[h].split()[:3])
    assert msg.startswith(f"{f}: truncated: the file ends inside R block {block} of 183 (R = {R})")
    assert f"expected {nnz} values, found 50" in msg and msg.endswith(f"line {h + 2}")
    # the overlap file is intact
    assert p.operator("overlap").norb == 26
    # cut after a complete block: the next block header is missing
    f.write_text("\n".join(lines[:h]) + "\n")
    with pytest.raises(ParseError, match=r"truncated: .*expected the block header 'Rx Ry Rz nnz'; .*line " + str(h)):
        AbacusParser(si_copy).frame()


def test_basis_does_not_match_matrix_dimension(si_copy):
    stru = si_copy / "STRU"
    stru.write_text(stru.read_text().replace("Si_gga_8au_60Ry_2s2p1d.orb", "Si_3s.orb"))
    (si_copy / "Si_3s.orb").write_text("Element Si\nNumber of Sorbital--> 2\nNumber of Porbital--> 2\n"
                                       "Number of Dorbital--> 2\nSUMMARY  END\n")
    p = AbacusParser(si_copy)
    assert p.basis.spec == {"Si": "2s2p2d"}
    with pytest.raises(ParseError) as exc:
        p.frame()
    msg = str(exc.value)
    print(msg)
    assert "data-HR-sparse_SPIN0.csr" in msg and "dimension 26" in msg and "gives 36 orbitals" in msg
    assert "Si_3s.orb" in msg


def test_missing_files(si_copy, tmp_path):
    (si_copy / "OUT.ABACUS" / "data-SR-sparse_SPIN0.csr").unlink()
    p = AbacusParser(si_copy)
    assert p.frame(overlap=False).hamiltonian is not None
    with pytest.raises(ParseError, match=r"data-SR-sparse_SPIN0\.csr: missing"):
        p.frame()
    with pytest.raises(ParseError, match=r"data-DMR-sparse_SPIN0\.csr: missing"):
        p.frame(overlap=False, density_matrix=True)
    with pytest.raises(ParseError, match=r"BANDS_1\.dat: missing \(nor istate\.info\)"):
        p.frame(overlap=False, eigenvalues=True)
    (si_copy / "Si_gga_8au_60Ry_2s2p1d.orb").unlink()
    with pytest.raises(ParseError, match=r"Si_gga_8au_60Ry_2s2p1d\.orb: orbital file named in STRU"):
        AbacusParser(si_copy)
    (si_copy / "STRU").unlink()
    with pytest.raises(ParseError, match=r"STRU: missing"):
        AbacusParser(si_copy)
    shutil.rmtree(si_copy / "OUT.ABACUS")
    with pytest.raises(ParseError, match=r"OUT\.autotest: missing \(no OUT\.\* output folder"):
        AbacusParser(si_copy)
    with pytest.raises(ParseError, match="does not exist"):
        AbacusParser(tmp_path / "nothing")


def test_spin_not_supported(si_copy):
    inp = si_copy / "INPUT"
    inp.write_text(inp.read_text() + "nspin 4\n")
    with pytest.raises(ParseError, match="nspin=4 .*not supported"):
        AbacusParser(si_copy)
    inp.write_text(inp.read_text().replace("nspin 4", "nspin 2"))
    with pytest.raises(ParseError, match="nspin=2 .*not supported"):
        AbacusParser(si_copy)
    inp.write_text(inp.read_text().replace("nspin 2", "nspin 1"))
    f = si_copy / "OUT.ABACUS" / "data-SR-sparse_SPIN0.csr"
    f.write_text(f.read_text().replace(" 1.25466617e-06", " (1.25466617e-06,0.0)", 1))
    with pytest.raises(ParseError, match=r"data-SR-sparse_SPIN0\.csr: complex .*nspin=4"):
        AbacusParser(si_copy).frame()


def test_md_not_supported(si_copy):
    inp = si_copy / "INPUT"
    inp.write_text(inp.read_text().replace("calculation     scf", "calculation     md"))
    with pytest.raises(ParseError, match="calculation 'md'"):
        AbacusParser(si_copy)


def test_stru_coordinate_types_and_comments(si_copy):
    """Cartesian (units of the lattice constant) and Cartesian_angstrom give the Direct structure."""
    a = 10.2 * BOHR
    ref = AbacusParser(si_copy).structure
    stru = si_copy / "STRU"
    text = stru.read_text()
    cart = text.replace("Direct", "Cartesian  # units of LATTICE_CONSTANT").replace(
        "0.25 0.25 0.25 1 1 1", "0.25 0.25 0.25 1 1 1 // comment")
    stru.write_text(cart)
    assert np.allclose(AbacusParser(si_copy).structure.positions[1], [0.25 * 10.2 * BOHR] * 3, atol=1e-12)
    ang = text.replace("Direct", "Cartesian_angstrom").replace("0.25 0.25 0.25", f"{a / 4!r} {a / 4!r} {a / 4!r}")
    stru.write_text(ang)
    assert np.allclose(AbacusParser(si_copy).structure.positions, ref.positions, atol=1e-12)


# ------------------------------------------------------------------ ABACUS >= 3.11 CSR layout
def _to_nao_layout(legacy: Path, dst: Path, label: str = "H", empty_block: bool = True) -> None:
    """Rewrite a legacy CSR file in the layout of ABACUS's write_hcontainer_csr / UcellIO::write_ucell /
    Output_HContainer (values 6 per line, indices 16 per line, marker comment lines)."""
    lines = legacy.read_text().split("\n")
    dim, nR = int(lines[0].split()[-1]), int(lines[1].split()[-1])
    out = [" --- Ionic Step 1 ---", f" # print {label} matrix in real space {label}(R)",
           " 1 # number of spin directions", " 1 # spin index", f" {dim} # number of localized basis",
           f" {nR + int(empty_block)} # number of Bravais lattice vector R",
           "", " user_defined_lattice", " 5.39761", " 0.5 0.5 0", " 0.5 0 0.5", " 0 0.5 0.5", " Si", " 2", " Direct",
           " 0 0 0", " 0.25 0.25 0.25", "",
           " #----------------------------------------------------------------------#",
           " #                               CSR Format                             #",
           " # The outer loop corresponds to the number of Bravais lattice vectors. #",
           " # The first line contains the index of the Bravais lattice vector      #",
           " # (Rx, Ry, Rz), followed by the number of non-zero elements.           #",
           " # The subsequent lines consist of three blocks of data, which are      #",
           " # values, column indices, row pointers.                                #",
           " #----------------------------------------------------------------------#", ""]

    def chunks(tokens, n):
        return [" " + " ".join(tokens[k:k + n]) for k in range(0, len(tokens), n)]

    k = 2
    if empty_block:  # an R with no element above the threshold, as the writer prints it
        out += [" 9 9 9 0", " # CSR values", "", " # CSR column indices", "", " # CSR row pointers",
                " " + " ".join(["0"] * (dim + 1))]
    while k < len(lines) and lines[k].strip():
        head = lines[k].split()
        out.append(" " + " ".join(head))
        k += 1
        if int(head[3]) == 0:
            continue
        vals, cols, ptr = lines[k].split(), lines[k + 1].split(), lines[k + 2].split()
        out += [" # CSR values", *chunks(vals, 6), " # CSR column indices", *chunks(cols, 16),
                " # CSR row pointers", *chunks(ptr, 16)]
        k += 3
    out += [" --- Ionic Step 2 ---", " 1 2 3"]  # appended later steps are ignored
    dst.write_text("\n".join(out) + "\n")


def test_nao_csr_layout_equals_legacy(si_copy):
    out = si_copy / "OUT.ABACUS"
    for legacy, new, lab in (("data-HR-sparse_SPIN0.csr", "hrs1_nao.csr", "H"),
                             ("data-SR-sparse_SPIN0.csr", "srs1_nao.csr", "S")):
        _to_nao_layout(out / legacy, out / new, lab)
        a, b = read_csr(out / legacy), read_csr(out / new)
        assert len(b.R) == len(a.R) + 1 and b.R[0].tolist() == [9, 9, 9]
        assert np.array_equal(a.R, b.R[1:]) and np.array_equal(a.r_index + 1, b.r_index)
        for f in ("rows", "cols", "values"):
            assert np.array_equal(getattr(a, f), getattr(b, f))
    ref = AbacusParser(si_copy).frame()
    for name in ("data-HR-sparse_SPIN0.csr", "data-SR-sparse_SPIN0.csr"):
        (out / name).unlink()
    fr = AbacusParser(si_copy).frame()
    assert np.array_equal(fr.hamiltonian.offsite, ref.hamiltonian.offsite)
    assert np.array_equal(fr.overlap.onsite, ref.overlap.onsite)
    # truncated new-layout file: named, with the line
    f = out / "srs1_nao.csr"
    f.write_text("\n".join(f.read_text().split("\n")[:200]) + "\n")
    with pytest.raises(ParseError, match=r"srs1_nao\.csr: truncated: .*line 200"):
        read_csr(f)


def test_csr_from_hscsr_tgz(si_copy, si):
    """dftio unpacks OUT.*/hscsr.tgz; the parser reads the members directly, without unpacking."""
    import tarfile

    out = si_copy / "OUT.ABACUS"
    with tarfile.open(out / "hscsr.tgz", "w:gz") as tar:
        for name in ("data-HR-sparse_SPIN0.csr", "data-SR-sparse_SPIN0.csr"):
            tar.add(out / name, arcname=name)
            (out / name).unlink()
    p = AbacusParser(si_copy)
    fr = p.frame()
    assert np.array_equal(fr.hamiltonian.offsite, si.frame().hamiltonian.offsite)
    assert sorted(q.name for q in out.iterdir()) == ["hscsr.tgz"]


# ------------------------------------------------------------------ writing, round trip, many folders
def test_round_trip_write_read(si, tmp_path):
    fr = si.frame()
    path = write_folder(tmp_path / "Si2.0", [fr])
    back = TrajectoryFolder(path).frame(0)
    for q in ("hamiltonian", "overlap"):
        a, b = getattr(fr, q), getattr(back, q)
        assert np.array_equal(a.i, b.i) and np.array_equal(a.j, b.j) and np.array_equal(a.R, b.R)
        assert np.array_equal(a.onsite, b.onsite) and np.array_equal(a.offsite, b.offsite)
    assert np.array_equal(back.structure.positions, si.structure.positions)
    assert np.array_equal(back.structure.cell, si.structure.cell)


def test_parse_folders_gaas_eigenvalues(data_dir, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "run_gaas").symlink_to(data_dir / "gaas_abacus")
    (root / "unrelated").mkdir()
    s = parse_folders(root, "run", tmp_path / "out", hamiltonian=False, overlap=False, eigenvalues=True,
                      progress=False, quiet=True)
    assert not s.failed and [Path(d).name for _, d in s.ok] == ["AsGa.0"]
    out = tmp_path / "out" / "AsGa.0"
    info = json.loads((out / "info.json").read_text())
    assert info["nframes"] == 1 and info["pbc"] is True and info["bandinfo"]["band_min"] == 0
    assert np.load(out / "eigenvalues.npy").shape == (1, 1099, 19)
    assert np.load(out / "kpoints.npy").shape == (1099, 3)
    assert json.loads((out / "fermi_level.json").read_text())["fermi_level"] == 6.6796828183
    assert ast.literal_eval((out / "basis.dat").read_text()) == {"Ga": "2s2p2d1f", "As": "2s2p1d"}
    tf = TrajectoryFolder(out)
    assert tf.structure(0).symbols == ["Ga", "As"] and tf.eigenvalues()[0, 0, 5] == -5.8085887


def test_cli_parse_one_good_one_broken(data_dir, tmp_path, capsys):
    from eqtb.cli import main

    root = tmp_path / "root"
    _copy(data_dir / "abacus_si_matrix", root / "frame_a")
    bad = _copy(data_dir / "abacus_si_matrix", root / "frame_b")
    f = bad / "OUT.ABACUS" / "data-HR-sparse_SPIN0.csr"
    f.write_text(f.read_text()[:100000])
    out = tmp_path / "out"
    rc = main(["parse", "-r", str(root), "-p", "frame", "-o", str(out), "-ham", "-ovp", "-n", "2"])
    text = capsys.readouterr().out
    print(text)
    assert rc == 1
    assert "parsed 1 of 2 folders; 1 failed" in text and "FAILED" in text and "frame_b" in text
    assert "data-HR-sparse_SPIN0.csr: truncated" in text
    assert sorted(p.name for p in out.iterdir()) == ["Si2.0"]
    back = TrajectoryFolder(out / "Si2.0").frame(0)
    assert back.hamiltonian.norb == 26 and back.overlap is not None
    # all good -> 0; bad arguments -> 2
    shutil.rmtree(bad)
    assert main(["parse", "-r", str(root), "-p", "frame", "-o", str(tmp_path / "out2"), "-ham"]) == 0
    assert main(["parse", "-r", str(tmp_path / "nope"), "-p", "frame", "-o", str(out)]) == 2
    assert main(["parse", "-r", str(root), "-p", "frame", "-o", str(out), "-m", "vasp9"]) == 2
    assert main(["parse", "-r", str(root), "-p", "zzz", "-o", str(out)]) == 2
    # existing output folder is a failure of that folder unless --overwrite
    assert main(["parse", "-r", str(root), "-p", "frame", "-o", str(tmp_path / "out2"), "-ham"]) == 1
    assert "Si2.0: output folder already exists" in capsys.readouterr().out
    assert main(["parse", "-r", str(root), "-p", "frame", "-o", str(tmp_path / "out2"), "-ham", "--overwrite"]) == 0

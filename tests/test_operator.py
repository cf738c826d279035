import h5py
import numpy as np
import pytest

from eqtb.basis import Basis, BasisError
from eqtb.structure import Structure
from eqtb.bonds import BlockError
from eqtb.operator import Operator


@pytest.fixture(scope="module")
def si64(data_dir):
    d = data_dir / "si64_abacus" / "Si64.0"
    s = Structure(np.loadtxt(d / "atomic_numbers.dat"), np.loadtxt(d / "positions.dat"),
                  np.loadtxt(d / "cell.dat"), True)
    blocks = {}
    for name in ("hamiltonians", "overlaps"):
        with h5py.File(d / f"{name}.h5") as f:
            blocks[name] = {k: v[()].astype(np.float64) for k, v in f["0"].items()}
    return s, Basis({"Si": "1s1p"}), blocks


def test_hermitian_and_positive_definite(si64):
    s, basis, blocks = si64
    H = Operator.from_blocks(s, basis, blocks["hamiltonians"])
    S = Operator.from_blocks(s, basis, blocks["overlaps"])
    assert H.norb == 256 and len(H.i) == 4685
    k = np.random.default_rng(0).uniform(-0.5, 0.5, size=(6, 3))
    Hk, Sk = H.dense(k), S.dense(k)
    np.testing.assert_allclose(Hk, np.conj(np.swapaxes(Hk, 1, 2)), atol=1e-13)
    assert np.linalg.eigvalsh(Sk).min() > 0.1
    # sparse assembly equals dense, and follows DeePTB's sign exp(-i 2 pi k.R)
    for q in range(len(k)):
        np.testing.assert_allclose(H.sparse(k[q]).toarray(), Hk[q], atol=1e-12)
    direct = np.zeros((256, 256), complex)
    for key, b in blocks["hamiltonians"].items():
        i, j, *R = map(int, key.split("_"))
        direct[4 * i:4 * i + 4, 4 * j:4 * j + 4] += b * np.exp(-2j * np.pi * k[0] @ R)
    np.testing.assert_allclose(direct, Hk[0], atol=1e-5)  # file triangles agree to float32 round-off


def test_one_triangle_equals_both(si64):
    s, basis, blocks = si64
    H = Operator.from_blocks(s, basis, blocks["hamiltonians"])
    upper = H.to_blocks(both_triangles=False)
    assert len(upper) == 64 + 4685
    H2 = Operator.from_blocks(s, basis, upper)
    np.testing.assert_array_equal(H2.offsite, H.offsite)
    # 1-based keys (DeepH/PySCF style) are detected when 0_0_0_0_0 is absent
    one_based = {"_".join(str(int(x) + (n < 2)) for n, x in enumerate(k.split("_"))): v for k, v in upper.items()}
    H3 = Operator.from_blocks(s, basis, one_based)
    np.testing.assert_array_equal(H3.offsite, H.offsite)
    back = H.to_blocks(both_triangles=True)
    assert set(back) == set(blocks["hamiltonians"])


def test_complex_blocks_keep_imaginary_parts(si64):
    s, basis, blocks = si64
    mixed = dict(blocks["hamiltonians"])
    key = next(k for k in sorted(mixed) if k.split("_")[0] != k.split("_")[1])
    mixed[key] = mixed[key] + 0.5j
    H = Operator.from_blocks(s, basis, mixed)
    assert np.iscomplexobj(H.offsite) and np.abs(H.offsite.imag).max() > 0.1


def test_bad_blocks(si64):
    s, basis, blocks = si64
    bad = dict(blocks["hamiltonians"])
    bad["0_1_0_0_0"] = np.zeros((4, 9))
    with pytest.raises(BlockError, match=r"'0_1_0_0_0' has shape \(4, 9\).*\(4, 4\)"):
        Operator.from_blocks(s, basis, bad, source="h.h5")
    bad = {k: v for k, v in blocks["hamiltonians"].items() if k != "5_5_0_0_0"}
    with pytest.raises(BlockError, match=r"onsite blocks missing for atoms \[5\].*in h.h5"):
        Operator.from_blocks(s, basis, bad, source="h.h5")
    bad = dict(blocks["hamiltonians"])
    bad["0_0_0_0_0"] = np.full((4, 4), np.nan)
    with pytest.raises(BlockError, match="NaN"):
        Operator.from_blocks(s, basis, bad)
    bad = {k: v for k, v in blocks["hamiltonians"].items() if k != "0_0_0_0_0"}
    with pytest.raises(BlockError, match="onsite block of atom 0 missing"):
        Operator.from_blocks(s, basis, bad)
    with pytest.raises(BlockError, match="malformed block key"):
        Operator.from_blocks(s, basis, {"0_0_0_0": np.eye(4)})
    with pytest.raises(BasisError, match="have no basis"):
        Operator.from_blocks(s, Basis({"C": "1s1p"}), blocks["hamiltonians"])


def test_dense_per_kpoint_route_equals_batched(data_dir):
    """Above DENSE_BATCH_MAX_NORB orbitals Operator.dense assembles per k-point from the sparse
    Bloch sum: the same matrices as the batched route."""
    import eqtb.operator as operator
    from eqtb.data.folder import TrajectoryFolder

    H = TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0).hamiltonian
    k = np.array([[0.0, 0.0, 0.0], [0.1, -0.2, 0.3]])
    assert H.norb > operator.DENSE_BATCH_MAX_NORB
    per_k = H.dense(k)
    old = operator.DENSE_BATCH_MAX_NORB
    operator.DENSE_BATCH_MAX_NORB = 10**9
    try:
        batched = H.dense(k)
    finally:
        operator.DENSE_BATCH_MAX_NORB = old
    assert per_k.dtype == np.complex128 and np.abs(per_k[1].imag).max() > 1e-3
    np.testing.assert_allclose(per_k, batched, atol=1e-12)

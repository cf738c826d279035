"""The FSAI preconditioner (:mod:`eqtb.tb.fsai`) on the real ABACUS Si64 overlap: G S G^dagger has
identity diagonal blocks, G is block lower triangular on the strongly overlapping neighbours, CG
converges in far fewer iterations to the same solution (real S at Gamma and complex S(k)), and
an indefinite "overlap" is refused."""

import numpy as np
import pytest
import scipy.sparse as sp

from eqtb.data.folder import TrajectoryFolder
from eqtb.tb.fsai import FSAIError, fsai_factor
from eqtb.tb.kpm import Preconditioner, block_cg
from eqtb.tb.spectrum import SpectrumError


@pytest.fixture(scope="module")
def overlap(data_dir):
    return TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0").frame(0).overlap


@pytest.mark.parametrize("k", [None, [0.1, 0.25, -0.3]])
def test_fsai_blocks_and_iterations(overlap, k):
    S = overlap.sparse(k)
    n = S.shape[0]
    G = fsai_factor(S, block=4, threshold=0.05)
    assert G.blocksize == (4, 4)
    Gd = G.toarray()
    assert np.abs(np.triu(Gd, 4)).max() == 0  # block lower triangular (4 x 4 atom blocks)
    W = Gd @ S.toarray() @ Gd.conj().T
    for a in range(0, n, 4):
        np.testing.assert_allclose(W[a:a + 4, a:a + 4], np.eye(4), atol=1e-12)
    # only the strong neighbours enter: far fewer entries than S, and a preconditioner that works
    assert G.nnz < 0.2 * S.nnz
    B = np.random.default_rng(1).standard_normal((n, 3)) + (0j if k is not None else 0)
    plain, it_plain = block_cg(lambda P: S @ P, B, None, tol=1e-10)
    pre = Preconditioner(S.tobsr(blocksize=(4, 4)))
    assert pre.kind == "fsai"
    X, it = block_cg(lambda P: S @ P, B, pre, tol=1e-10)
    assert it < 0.5 * it_plain
    np.testing.assert_allclose(X, plain, atol=1e-8)
    # entry-wise (blocks of one orbital) on the CSR matrix: weaker, still a gain
    X1, it1 = block_cg(lambda P: S @ P, B, Preconditioner(S), tol=1e-10)
    assert it <= it1 < it_plain
    np.testing.assert_allclose(X1, plain, atol=1e-8)


def test_fsai_refuses_indefinite(overlap):
    S = overlap.sparse()
    bad = S - 1.2 * sp.identity(S.shape[0])  # shifts the lowest eigenvalues (0.17) below zero
    with pytest.raises(FSAIError, match="not positive definite"):
        fsai_factor(bad, block=4, threshold=0.0)
    with pytest.raises(SpectrumError, match="not positive definite"):
        Preconditioner(sp.csr_matrix(-sp.identity(8)))
    with pytest.raises(ValueError, match="does not divide"):
        fsai_factor(S, block=3)

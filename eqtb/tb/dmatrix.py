"""Sparse matrices distributed by rows over processes, and the KPM DOS on them.

A :class:`DistributedMatrix` is an ``n x n`` sparse matrix (H or S at one k-point, eV or
dimensionless) of which every process holds a set of rows, ``owned`` (global indices, ascending;
together the processes hold every row exactly once), as a CSR matrix ``local`` of shape
``(n_own, n_own + n_halo)``: its columns are the owned indices followed by the *halo*, the other
global columns its rows touch (ascending per owning process). A vector (block) is distributed
alike: each process holds the rows ``owned`` of it. The product ``Y = M @ X`` first fetches the
halo rows of X from the processes owning them (one message per neighbouring process each way,
``torch.distributed`` point-to-point, gloo on CPU; complex blocks travel as pairs of reals), then
multiplies locally (:class:`eqtb.tb.kpm.BlockProduct`). The exchange plan is made once, when the
matrix is built (:meth:`DistributedMatrix.from_rows`).

:class:`DistributedPencil` is :class:`eqtb.tb.kpm.Pencil` on such matrices: its dot products are
summed over processes (``all_reduce``), the S^-1 solves (block CG with the Jacobi or block-Jacobi
preconditioner of the owned diagonal block, which is the restriction of the global one) and the
Chebyshev recursion run unchanged, and the random vectors are the owned rows of the one-process
block. :func:`kpm_dos_distributed` therefore returns, on every process, the one-process
:func:`eqtb.tb.kpm.kpm_dos` result up to the rounding of the summation order (and of a CG stopping
one iteration apart where a residual lies at the tolerance); the Fermi level follows from it on
every process. Not distributed: the incomplete-LU preconditioner and shift-invert band edges
(:mod:`eqtb.tb.lanczos` factorizes ``H - sigma S`` with a sparse LU, which has no row-wise matrix
product to reuse): :meth:`DistributedMatrix.gather` brings the whole matrix to one process for
them. In a single process (no process group) everything works with one rank.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from eqtb.tb.kpm import (
    FLOAT32_MIN_NNZ,
    BlockProduct,
    KPMResult,
    Pencil,
    Preconditioner,
    check_kpm_options,
    kpm_pencil,
    storage_dtype,
)
from eqtb.tb.spectrum import SpectrumError

__all__ = ["DistributedMatrix", "DistributedPencil", "kpm_dos_distributed"]


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def _all_gather(obj) -> list:
    dist = _dist()
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _all_reduce_sum(x: np.ndarray) -> np.ndarray:
    dist = _dist()
    if dist is None:
        return x
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    dist.all_reduce(t)
    return t.numpy()


class _Plan:
    """Who sends which owned rows to whom, and where received rows go in the halo."""

    def __init__(self, owned: np.ndarray, halo_owner: np.ndarray, requests: dict[int, np.ndarray]):
        self.halo_owner = halo_owner
        # received rows: the halo is sorted by owner, so each peer fills one slice
        peers = np.unique(halo_owner)
        self.recv = {int(p): slice(int(np.searchsorted(halo_owner, p, "left")),
                                   int(np.searchsorted(halo_owner, p, "right"))) for p in peers}
        # sent rows: the local positions of what each peer asked for
        self.send = {int(p): np.searchsorted(owned, g) for p, g in requests.items() if len(g)}


class DistributedMatrix:
    """Rows ``owned`` of an ``n x n`` sparse matrix (module docstring). Build with
    :meth:`from_rows`; ``M @ X`` for an (n_own, m) block X of the owned rows returns the owned rows
    of the product. Every process must call the methods that communicate (``@``, :meth:`from_rows`,
    :meth:`gather`, :attr:`global_nnz`) together."""

    def __init__(self, local: sp.csr_matrix, owned: np.ndarray, halo: np.ndarray, n: int, plan: _Plan,
                 backend: str = "auto"):
        if local.nnz < 2**31 - 1 and local.shape[1] < 2**31 - 1:  # int32 indices: torch's CSR kernel
            local.indices = local.indices.astype(np.int32, copy=False)
            local.indptr = local.indptr.astype(np.int32, copy=False)
        self.local, self.owned, self.halo, self.n, self.plan = local, owned, halo, int(n), plan
        self.backend = backend
        self.product = BlockProduct(local, backend)
        self.work = self.product.work
        self.shape = (self.n, self.n)

    @classmethod
    def from_rows(cls, rows: sp.spmatrix, owned, n: int | None = None, backend: str = "auto") -> DistributedMatrix:
        """From this process's rows ``rows`` (n_own x n, global column indices) of the matrix,
        ``owned`` their global indices (ascending). Collective: every process calls it with its
        own rows; together the ``owned`` sets must partition ``0 .. n - 1``."""
        rows = sp.csr_matrix(rows)
        owned = np.asarray(owned, dtype=np.int64)
        n = int(rows.shape[1] if n is None else n)
        if rows.shape != (len(owned), n):
            raise SpectrumError(f"{len(owned)} owned rows of an {n} x {n} matrix, but rows of shape {rows.shape}")
        if len(owned) and (np.diff(owned) <= 0).any():
            raise SpectrumError("owned row indices must be strictly ascending")
        everyone = _all_gather(owned)
        owner = np.full(n, -1, dtype=np.int64)
        for r, o in enumerate(everyone):
            if (owner[o] != -1).any():
                raise SpectrumError(f"rows owned by two processes (process {r} and another)")
            owner[o] = r
        if (owner < 0).any():
            raise SpectrumError(f"{int((owner < 0).sum())} rows of the {n} x {n} matrix are owned by no process")
        me = _rank()
        rows.sum_duplicates()
        used = np.zeros(n, dtype=bool)
        used[rows.indices] = True
        cols = np.flatnonzero(used)
        halo = cols[owner[cols] != me]
        halo = halo[np.lexsort((halo, owner[halo]))]  # by owner, then global index
        halo_owner = owner[halo]
        # global column -> local column: owned first, then the halo
        where = np.full(n, -1, dtype=np.int64)
        where[owned] = np.arange(len(owned))
        where[halo] = len(owned) + np.arange(len(halo))
        local = sp.csr_matrix((rows.data, where[rows.indices], rows.indptr), shape=(len(owned), len(owned) + len(halo)))
        if len(everyone) > 1:  # one process: the columns kept their order
            local.has_sorted_indices = False
            local.sort_indices()
        wanted = {int(p): halo[halo_owner == p] for p in np.unique(halo_owner)}
        asked = _all_gather(wanted)
        requests = {r: a[me] for r, a in enumerate(asked) if me in a}
        return cls(local, owned, halo, n, _Plan(owned, halo_owner, requests), backend)

    # ------------------------------------------------------------------ facts
    @property
    def n_owned(self) -> int:
        return len(self.owned)

    @property
    def dtype(self):
        return self.local.dtype

    @property
    def global_nnz(self) -> int:
        """Stored nonzeros of the whole matrix (collective)."""
        return int(_all_reduce_sum(np.array([float(self.local.nnz)]))[0])

    def diagonal_block(self) -> sp.csr_matrix:
        """The owned x owned block (n_own x n_own): holds the diagonal and every block of the
        (block-)Jacobi preconditioner of owned atoms."""
        return self.local[:, :self.n_owned].tocsr()

    def astype(self, dtype) -> DistributedMatrix:
        """The same matrix stored in ``dtype`` (same exchange plan)."""
        if np.dtype(dtype) == self.local.dtype:
            return self
        return DistributedMatrix(self.local.astype(dtype), self.owned, self.halo, self.n, self.plan, self.backend)

    # ------------------------------------------------------------------ products
    def exchange(self, X: np.ndarray) -> np.ndarray:
        """The halo rows (n_halo, m) of the distributed block whose owned rows are X (collective)."""
        out = np.empty((len(self.halo),) + X.shape[1:], dtype=X.dtype)
        dist = _dist()
        if dist is None or (not self.plan.send and not self.plan.recv):
            return out
        import torch

        def as_real(a):
            a = np.ascontiguousarray(a)
            return torch.from_numpy(a.view(np.float64) if a.dtype == np.complex128 else a)

        reqs, bufs = [], []
        for peer, sl in self.plan.recv.items():
            buf = np.empty((sl.stop - sl.start,) + X.shape[1:], dtype=X.dtype)
            bufs.append((sl, buf))
            reqs.append(dist.irecv(as_real(buf), src=peer))
        keep = []
        for peer, idx in self.plan.send.items():
            t = as_real(X[idx])
            keep.append(t)
            reqs.append(dist.isend(t, dst=peer))
        for q in reqs:
            q.wait()
        for sl, buf in bufs:
            out[sl] = buf
        return out

    def __matmul__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.shape[0] != self.n_owned:
            raise SpectrumError(f"a block of {X.shape[0]} rows times a matrix holding {self.n_owned} rows here")
        ext = np.concatenate([X, self.exchange(np.ascontiguousarray(X))]) if len(self.halo) else X
        return self.product @ ext

    # ------------------------------------------------------------------ whole matrix
    def gather(self, root: int = 0) -> sp.csr_matrix | None:
        """The whole matrix (scipy CSR, global indices) on process ``root``, None elsewhere (collective)."""
        cols = np.concatenate([self.owned, self.halo])
        mine = sp.csr_matrix((self.local.data, cols[self.local.indices], self.local.indptr),
                             shape=(self.n_owned, self.n))
        parts = _all_gather((self.owned, mine))  # every process gets them: simple, and rare
        if _rank() != root:
            return None
        order = np.concatenate([o for o, _ in parts])
        full = sp.vstack([m for _, m in parts], format="csr")
        perm = np.empty_like(order)
        perm[order] = np.arange(len(order))
        return full[perm].tocsr()


class DistributedPencil(Pencil):
    """:class:`eqtb.tb.kpm.Pencil` of distributed H and S (module docstring). ``preconditioner``:
    "auto"/"jacobi", "block-jacobi" (``blocks``: offsets of the owned rows' blocks, local indices)
    or "none"."""

    def __init__(self, H: DistributedMatrix, S: DistributedMatrix | None = None, preconditioner: str = "auto",
                 blocks=None, solve_tol: float = 1e-8, max_cg_iter: int = 1000):
        if preconditioner == "ilu":
            raise SpectrumError("the incomplete-LU preconditioner is not available for distributed matrices; "
                                "use 'jacobi' or 'block-jacobi'")
        if S is not None and not np.array_equal(S.owned, H.owned):
            raise SpectrumError("H and S are distributed over different rows")
        prec = Preconditioner(S.diagonal_block(), preconditioner, blocks, S.backend) if S is not None else None
        super().__init__(H, S, prec, solve_tol, max_cg_iter)
        self.owned = H.owned

    def dot(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return _all_reduce_sum(super().dot(A, B))

    def dots(self, *pairs) -> list[np.ndarray]:
        local = super().dots(*pairs)
        total = _all_reduce_sum(np.concatenate(local))  # one reduction: the same sums as one per pair
        return np.split(total, np.cumsum([len(x) for x in local])[:-1])

    def rows(self, X: np.ndarray) -> np.ndarray:
        return X[self.owned]


def kpm_dos_distributed(H: DistributedMatrix, S: DistributedMatrix | None = None, energies=None,
                        n_moments: int = 256, n_random: int = 8, kernel: str = "jackson", bounds=None,
                        seed: int = 0, solve_tol: float = 1e-8, spin_degeneracy: int = 2, progress: bool = False,
                        dtype=None, preconditioner: str = "auto", blocks=None, random_vectors: str = "auto",
                        max_cg_iter: int = 1000, lanczos_steps: int = 40, margin: float = 0.01) -> KPMResult:
    """:func:`eqtb.tb.kpm.kpm_dos` of distributed H and S (same options, the same result on every
    process; collective). ``dtype="auto"`` decides from the global nonzeros of H; ``blocks``: local
    offsets for "block-jacobi"; no "ilu"."""
    check_kpm_options(n_moments, n_random, kernel, solve_tol)
    t0 = time.perf_counter()
    if isinstance(dtype, str) and dtype == "auto":
        dtype = "float32" if H.global_nnz > FLOAT32_MIN_NNZ else None
    store = storage_dtype(dtype, H.dtype.kind == "c" or (S is not None and S.dtype.kind == "c"))
    H = H.astype(store)
    S = S.astype(store) if S is not None else None
    pen = DistributedPencil(H, S, preconditioner, blocks, solve_tol, max_cg_iter)
    return kpm_pencil(pen, energies, n_moments, n_random, kernel, bounds, seed, spin_degeneracy, progress,
                      random_vectors, lanczos_steps, margin, dtype=str(np.dtype(store)), t_start=t0)

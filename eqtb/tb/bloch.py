"""Differentiable Bloch sums and band energies in torch, for losses on eigenvalues.

:class:`BlochLayout` holds the index tables of one structure's graph (element types, canonical bonds
``(i, j, R)``) that place its blocks into the compact orbital layout; :meth:`BlochLayout.bloch_sum`
turns the blocks a model returns -- onsite (N, F, F) and off-site (E, F, F) in the full-basis layout
of :class:`eqtb.basis.Basis` -- into dense ``O(k)``, and :func:`eigvalsh` solves ``H c = E S c``.
Both are differentiable with respect to the blocks.

Conventions (identical to :meth:`eqtb.operator.Operator.dense`, which this module reproduces to
rounding in float64):

* ``O(k) = sum_R O(R) exp(-i 2 pi k.R)`` with k in fractional reciprocal coordinates (no 2 pi in
  k; positions are not in the phase) -- DeePTB's sign;
* rows and columns are atoms in structure order, each with its own ``norb`` orbitals in eqtb's
  order (the *compact* layout: the padding of the full-basis layout is removed);
* the canonical bond e = (i, j, R) contributes ``O_ij(R) e^{-i 2 pi k.R}`` and its Hermitian
  partner ``O_ji(-R) = O_ij(R)^T`` the conjugate transpose; onsite blocks sit on the diagonal.

A spinful Hamiltonian (spin-orbit coupling) adds its onsite spin-orbit blocks with
:meth:`BlochLayout.spinful`: ``[[H(k) + L_uu, L_ud], [L_du, H(k) + L_dd]]``, all orbitals spin up
first, as :meth:`eqtb.operator.Operator.dense`; an overlap enters such an eigenproblem on both spins
(:meth:`BlochLayout.spinful` without blocks).

Blocks must be real (as every eqtb model returns them), spin-orbit blocks complex. Units follow the blocks: H in eV, S
dimensionless; eigenvalues in eV. The complex dtype follows the blocks' real dtype (float32 ->
complex64, float64 -> complex128); phases are computed in float64 and then cast.
"""

from __future__ import annotations

import numpy as np
import torch

from eqtb.basis import Basis

__all__ = ["BlochError", "BlochLayout", "eigvalsh"]


class BlochError(ValueError):
    """Blocks that do not fit a layout, or an overlap that is not positive definite."""


def _as_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


class BlochLayout:
    """Index tables of one structure for :meth:`bloch_sum`.

    ``basis``: the orbital basis; ``types`` (N,): element-type index of every atom in ``basis``;
    ``i``, ``j`` (E,), ``R`` (E, 3): the canonical bonds (0-based atoms, R the cell of atom j in
    lattice vectors), as :class:`eqtb.models.inputs.ModelInputs` holds them. Built once per
    structure (numpy, vectorised over bonds); :meth:`to` moves the tables to a device."""

    def __init__(self, basis: Basis, types, i, j, R):
        types = _as_numpy(types, np.int64)
        i, j = _as_numpy(i, np.int64), _as_numpy(j, np.int64)
        R = _as_numpy(R, np.int64).reshape(-1, 3)
        F = basis.full_norb
        idx = [np.asarray(x, dtype=np.int64) for x in basis.orbital_index]
        norb = np.array([len(idx[t]) for t in types], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(norb)])
        self.n_atoms, self.n_edges, self.full_norb = len(types), len(i), F
        self.norb = int(self.offsets[-1])
        n = self.norb
        if len(R):
            Rs, r_of_edge = np.unique(R, axis=0, return_inverse=True)
        else:
            Rs, r_of_edge = np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.Rs = Rs
        r_of_edge = np.asarray(r_of_edge).reshape(-1)
        atoms = np.arange(len(types))
        on_src, on_dst = self._tables(types, idx, atoms, atoms, np.zeros(len(types), dtype=np.int64), F, n)
        off_src, off_dst = self._tables(types, idx, i, j, r_of_edge, F, n)
        self.on_src, self.on_dst = torch.as_tensor(on_src), torch.as_tensor(on_dst)
        self.off_src, self.off_dst = torch.as_tensor(off_src), torch.as_tensor(off_dst)
        self._types, self._idx, self._soc_index = types, idx, None

    def _tables(self, types, idx, a_atoms, b_atoms, r_index, F, n):
        """Flat source indices into the (M, F, F) blocks and flat destination indices into the
        (nR, n, n) compact matrices, grouped by the element pair of (a, b)."""
        src, dst = [], []
        T = len(idx)
        key = types[a_atoms] * T + types[b_atoms]
        for pair in np.unique(key):
            sel = np.flatnonzero(key == pair)
            ta, tb = divmod(int(pair), T)
            ia, ib = idx[ta], idx[tb]
            s = sel[:, None, None] * F * F + ia[None, :, None] * F + ib[None, None, :]
            rows = self.offsets[a_atoms[sel]][:, None, None] + np.arange(len(ia))[None, :, None]
            cols = self.offsets[b_atoms[sel]][:, None, None] + np.arange(len(ib))[None, None, :]
            d = r_index[sel][:, None, None] * n * n + rows * n + cols
            src.append(np.broadcast_to(s, d.shape).ravel())
            dst.append(d.ravel())
        cat = lambda x: np.concatenate(x) if x else np.zeros(0, dtype=np.int64)  # noqa: E731
        return cat(src), cat(dst)

    def to(self, device) -> "BlochLayout":
        """Move the index tables to ``device`` (in place); returns self."""
        for name in ("on_src", "on_dst", "off_src", "off_dst"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def phases(self, kpts, dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of ``2 pi k.R`` (each (nk, nR)) for fractional ``kpts`` (nk, 3) and the
        layout's lattice vectors, computed in float64 and returned in ``dtype``. Independent of
        the blocks: compute once per structure and pass to :meth:`bloch_sum`."""
        k = _as_numpy(kpts, np.float64).reshape(-1, 3)
        arg = 2.0 * np.pi * (k @ self.Rs.T.astype(np.float64))
        return (torch.as_tensor(np.cos(arg), dtype=dtype, device=device),
                torch.as_tensor(np.sin(arg), dtype=dtype, device=device))

    def bloch_sum(self, onsite: torch.Tensor, offsite: torch.Tensor, phases) -> torch.Tensor:
        """``O(k)`` as (nk, norb, norb) complex from real ``onsite`` (N, F, F) and ``offsite``
        (E, F, F) blocks of this layout's atoms and bonds; ``phases``: :meth:`phases` of the
        k-points (or the k-points themselves, (nk, 3) fractional). Differentiable in the blocks."""
        if onsite.shape != (self.n_atoms, self.full_norb, self.full_norb) or \
                offsite.shape != (self.n_edges, self.full_norb, self.full_norb):
            raise BlochError(f"blocks of shape {tuple(onsite.shape)} and {tuple(offsite.shape)} do not fit a "
                             f"layout of {self.n_atoms} atoms, {self.n_edges} bonds and {self.full_norb} "
                             f"full-basis orbitals")
        if onsite.is_complex() or offsite.is_complex():
            raise BlochError("bloch_sum takes real blocks")
        if not isinstance(phases, tuple):
            phases = self.phases(phases, offsite.dtype, offsite.device)
        cos, sin = (p.to(offsite) for p in phases)
        n = self.norb
        D = onsite.new_zeros(n * n).index_add(0, self.on_dst, onsite.reshape(-1)[self.on_src]).view(n, n)
        M = offsite.new_zeros(len(self.Rs) * n * n).index_add(0, self.off_dst, offsite.reshape(-1)[self.off_src])
        M = M.view(len(self.Rs), n * n)
        nk = cos.shape[0]
        re = (cos @ M).view(nk, n, n)  # A(k) = sum_R O(R) e^{-i 2 pi k.R} = re - i im
        im = (sin @ M).view(nk, n, n)
        return torch.complex(D + re + re.transpose(1, 2), im.transpose(1, 2) - im)


    def soc_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat source indices into (N, 2F, 2F) spin-orbit blocks (spin-major) and flat destination
        indices into the spinful compact (2n, 2n) matrix; built on first use (spinful models only)."""
        if self._soc_index is None:
            F, n, types = self.full_norb, self.norb, self._types
            src, dst = [], []
            for t in np.unique(types):
                atoms = np.flatnonzero(types == t)
                x = self._idx[t]
                spin_idx = np.concatenate([x, F + x])
                rows = self.offsets[atoms][:, None] + np.concatenate([np.arange(len(x)), n + np.arange(len(x))])[None]
                src.append((atoms[:, None, None] * 4 * F * F + spin_idx[None, :, None] * 2 * F
                            + spin_idx[None, None, :]).ravel())
                dst.append((rows[:, :, None] * 2 * n + rows[:, None, :]).ravel())
            self._soc_index = (torch.as_tensor(np.concatenate(src)), torch.as_tensor(np.concatenate(dst)))
        return self._soc_index

    def spinful(self, Ok: torch.Tensor, soc: torch.Tensor | None = None) -> torch.Tensor:
        """(nk, 2 norb, 2 norb): ``Ok`` (nk, norb, norb, :meth:`bloch_sum`) on both spins, plus the
        onsite spin-orbit blocks ``soc`` ((N, 2F, 2F) complex, spin-major; None: none, as for S).
        Differentiable in both."""
        n = self.norb
        zero = torch.zeros_like(Ok)
        out = torch.cat([torch.cat([Ok, zero], 2), torch.cat([zero, Ok], 2)], 1)
        if soc is None:
            return out
        if soc.shape != (self.n_atoms, 2 * self.full_norb, 2 * self.full_norb):
            raise BlochError(f"spin-orbit blocks of shape {tuple(soc.shape)} do not fit a layout of {self.n_atoms} "
                             f"atoms and {self.full_norb} full-basis orbitals")
        src, dst = (x.to(soc.device) for x in self.soc_index())
        L = soc.new_zeros(4 * n * n).index_add(0, dst, soc.reshape(-1)[src]).view(2 * n, 2 * n)
        return out + L.to(out.dtype)[None]


def eigvalsh(H: torch.Tensor, S: torch.Tensor | None = None) -> torch.Tensor:
    """Eigenvalues (..., n), ascending, of the Hermitian ``H c = E S c`` (``S`` None: ``H c = E c``).

    With ``S``: ``S = L L^H`` (Cholesky), ``A = L^{-1} H L^{-H}``, eigenvalues of A -- differentiable
    in H and S through ``torch.linalg`` (eigenvalue gradients stay finite at degeneracies). Raises
    :class:`BlochError` naming the first batch index whose S is not positive definite."""
    if S is None:
        return torch.linalg.eigvalsh(H)
    L, info = torch.linalg.cholesky_ex(S)
    bad = torch.nonzero(info.reshape(-1)).flatten()
    if len(bad):
        raise BlochError(f"overlap S(k) is not positive definite at k-point {int(bad[0])} "
                         f"({len(bad)} of {info.numel()} k-points)")
    X = torch.linalg.solve_triangular(L, H, upper=False)  # L^{-1} H
    A = torch.linalg.solve_triangular(L, X.mH, upper=False)  # L^{-1} H L^{-H}
    return torch.linalg.eigvalsh(0.5 * (A + A.mH))

"""Equivariant operations in the edge-aligned frame: SO(2) convolutions.

For a directed edge with unit vector r, the *edge frame* is reached by the rotation ``Q`` with
``Q z = r`` (eqtb convention: z is the polar axis, the m = 0 axis of the real spherical harmonics,
see :mod:`eqtb.so3`). A global feature of degree l becomes ``x_frame = D_l(Q)^T x`` there; in the
frame the direction of the bond is fixed, so the only symmetry left is the rotation about z
(and the mirror planes containing it). Every linear map commuting with those symmetries mixes
channels separately for each |m|:

* m = 0 components with any matrix, restricted to channel pairs whose mirror parity agrees,
  ``p_in p_out (-1)^(l_in + l_out) = 1``;
* each pair (+m, -m) as a complex number: ``out+ = x+ A - x- B``, ``out- = x- A + x+ B`` with
  ``A`` on parity-agreeing channel pairs and ``B`` on the others.

This is the full tensor product of the features with the spherical harmonics of the bond (all
paths, one weight per path and channel pair), done as a few dense matrix products over all edges
at once: the cost grows as L^3 instead of L^6.

Frame features are kept *m-major*: a list whose element 0 is ``(E, C_0)`` (the m = 0 component of
every channel with l >= 0) and element m >= 1 is ``(E, 2, C_m)`` (components +m and -m of every
channel with l >= m). Inside each group channels are ordered by l, then by their order in the
irreps. Frames are computed once per graph (:func:`edge_frames`); global features enter and leave
the frame in the *parts* form of :class:`IrrepsLayout`.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from eqtb.so3 import float64_default, to_e3nn_frame

FrameFeatures = list  # [ (E, C_0), (E, 2, C_1), ..., (E, 2, C_lmax) ]


def edge_frames(vectors: torch.Tensor, lmax: int, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Wigner-D matrices ``D_l(Q)`` (E, 2l+1, 2l+1), l = 0..lmax, of the rotation ``Q`` taking z
    onto each edge direction (eqtb convention). Computed in float64, returned in ``dtype``
    (default: that of ``vectors``). Not differentiable with respect to the vectors.

    ``Q`` is e3nn's ``angles_to_matrix(alpha, beta, 0)`` for the angles of the edge (in e3nn's
    frame); ``D_1 = Q`` there and ``D_l = C_l^T (D_1 x D_{l-1}) C_l`` with ``C_l`` the orthonormal
    coupling of 1 x (l-1) onto l (:func:`_coupling`): the same matrices as ``e3nn.o3.wigner_D``,
    several times faster."""
    dtype = dtype or vectors.dtype
    with torch.no_grad(), float64_default():  # e3nn builds its generators in the default dtype
        v = to_e3nn_frame(vectors.detach().to(torch.float64))  # eqtb z is e3nn's polar axis y
        alpha, beta = o3.xyz_to_angles(v)
        D1 = o3.angles_to_matrix(alpha, beta, torch.zeros_like(alpha))
        out = [torch.ones((len(v), 1, 1), dtype=torch.float64, device=v.device), D1]
        for l in range(2, lmax + 1):
            prev = out[-1]
            n = 2 * l - 1
            K = (D1[:, :, None, :, None] * prev[:, None, :, None, :]).reshape(len(v), 3 * n, 3 * n)
            C = _coupling(l).to(v.device)
            out.append(C.T @ K @ C)
        return [D.to(dtype) for D in out[: lmax + 1]]


_COUPLINGS: dict[int, torch.Tensor] = {}


def _coupling(l: int) -> torch.Tensor:
    """(3 (2l-1), 2l+1) float64 isometry from the product 1 x (l-1) onto its degree-l part (e3nn's
    basis): columns of ``wigner_3j(1, l-1, l)`` normalised."""
    if l not in _COUPLINGS:
        w = o3.wigner_3j(1, l - 1, l, dtype=torch.float64).reshape(3 * (2 * l - 1), 2 * l + 1)
        _COUPLINGS[l] = w / w.norm(dim=0, keepdim=True)
    return _COUPLINGS[l]


def flip_diagonal(l: int) -> torch.Tensor:
    """Diagonal of D_l(R_x(pi)) in eqtb's convention, m = -l..l: (-1)^(l+|m|), negated for m < 0.
    The frame of the reverse edge is ``Q R_x(pi)``, so its D is the forward D with columns scaled
    by this vector."""
    return torch.tensor([(-1.0) ** (l + abs(m)) * (1.0 if m >= 0 else -1.0) for m in range(-l, l + 1)])


def directed_frames(vectors: torch.Tensor, lmax: int, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Frames of the directed edges ``[d; -d]`` of canonical bonds d (E, 3): the forward frames of
    :func:`edge_frames` and, for the reverse edges, the same rotation followed by R_x(pi) (which
    takes z to -z). With this pairing the frame features of a neighbour's node seen from edge
    i->j equal :meth:`IrrepsLayout.flip` of those seen from j->i: no second rotation is needed."""
    fwd = edge_frames(vectors, lmax, dtype)
    return [torch.cat([D, D * flip_diagonal(l).to(D)]) for l, D in enumerate(fwd)]


class IrrepsLayout:
    """The layout of an irreps feature and its three forms.

    * *flat*: ``(N, dim)`` in e3nn's order (irreps blocks, each ``mul x (2l+1)`` channel-major) —
      the form of files, heads and :mod:`eqtb.blocks`;
    * *parts* (global frame, the working form of node features): a list indexed by l of tensors
      ``(N, 2l+1, n_l)`` holding every channel of degree l (irreps order), None where absent — so
      channel mixing is one matrix product per l and rotations one batched product;
    * *frame* (edge frame, m-major, see the module docstring): ``channels[m]`` lists the
      (l, parity) of group m, ordered by l, so group m is the tail of group 0 made of its channels
      with l >= m.

    Layouts built by :meth:`concat` describe concatenated frame features only."""

    def __init__(self, irreps=None):
        self.flat_index: dict[int, torch.Tensor] = {}
        self.parity: dict[int, list[int]] = {}
        self.channels: list[list[tuple[int, int]]] = []
        if irreps is None:
            return
        self.irreps = o3.Irreps(irreps)
        self.dim = self.irreps.dim
        offsets = [0]
        for mul, ir in self.irreps:
            offsets.append(offsets[-1] + mul * ir.dim)
        for l in range(self.irreps.lmax + 1):
            rows, pars = [], []
            for (mul, ir), o in zip(self.irreps, offsets):
                if ir.l == l:
                    for u in range(mul):
                        rows.append([o + u * ir.dim + k for k in range(ir.dim)])
                        pars.append(ir.p)
            if rows:
                self.flat_index[l] = torch.tensor(rows, dtype=torch.long).T.contiguous()  # (2l+1, n_l)
                self.parity[l] = pars
        self.ls = sorted(self.parity)
        for m in range(self.irreps.lmax + 1):
            self.channels.append([(l, p) for l in self.ls if l >= m for p in self.parity[l]])

    @classmethod
    def concat(cls, *layouts: IrrepsLayout) -> IrrepsLayout:
        """Layout of frame features with these layouts concatenated channel-wise, group by group
        (the input of :class:`SO2Linear` given a list of frame features)."""
        out = cls()
        for m in range(max(lay.lmax for lay in layouts) + 1):
            out.channels.append([c for lay in layouts if lay.lmax >= m for c in lay.channels[m]])
        return out

    @property
    def lmax(self) -> int:
        return len(self.channels) - 1

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.channels]

    @property
    def n_scalars(self) -> int:
        """Number of l = 0 channels (the head of frame group 0)."""
        return sum(1 for l, _ in self.channels[0] if l == 0)

    # ------------------------------------------------------------------ flat <-> parts
    def split(self, flat: torch.Tensor) -> list:
        """(N, dim) -> parts."""
        out = [None] * (self.lmax + 1)
        for l, idx in self.flat_index.items():
            out[l] = flat[:, idx.to(flat.device)]
        return out

    def merge(self, parts: list) -> torch.Tensor:
        """parts -> (N, dim)."""
        ref = next(p for p in parts if p is not None)
        out = ref.new_zeros((ref.shape[0], self.dim))
        for l, idx in self.flat_index.items():
            out[:, idx.to(ref.device)] = parts[l]
        return out

    def natural(self) -> torch.Tensor:
        """(C_0,) float: 1 for the channels of frame group 0 of natural parity ``p = (-1)^l`` (the
        only ones a function of a bond vector alone, ``f(|r|) Y_l(r)``, can fill), 0 for the others."""
        return torch.tensor([1.0 if p == (-1) ** l else 0.0 for l, p in self.channels[0]],
                            dtype=torch.get_default_dtype())

    def along_axis(self, w: torch.Tensor, D: list[torch.Tensor]) -> list:
        """Parts (E, 2l+1, n_l) in the global frame of the features that hold ``w[:, c]`` (E, C_0)
        on the m = 0 component of channel c in the frame of each edge and zero elsewhere:
        ``w_c Y_l(r) / sqrt(2l + 1)``, the m = 0 column of the edge's Wigner-D (``D``,
        :func:`directed_frames`). Only natural-parity channels transform as such; mask ``w`` with
        :meth:`natural` unless it is zero on the others."""
        out, k = [None] * (self.lmax + 1), 0
        for l in self.ls:
            n = len(self.parity[l])
            out[l] = D[l][:, :, l:l + 1] * w[:, None, k:k + n]
            k += n
        return out

    def zeros(self, n: int, like: torch.Tensor) -> list:
        out = [None] * (self.lmax + 1)
        for l, pars in self.parity.items():
            out[l] = like.new_zeros((n, 2 * l + 1, len(pars)))
        return out

    def flip_signs(self) -> list[torch.Tensor]:
        """Per frame group, the signs of :func:`flip_diagonal` for every channel: (C_0,) for
        m = 0, (2, C_m) for the (+m, -m) components."""
        out = [torch.tensor([(-1.0) ** l for l, _ in self.channels[0]])]
        for m in range(1, self.lmax + 1):
            s = torch.tensor([(-1.0) ** (l + m) for l, _ in self.channels[m]])
            out.append(torch.stack([s, -s]))
        return out

    # ------------------------------------------------------------------ parts <-> frame
    def to_frame(self, x: list, D: list[torch.Tensor]) -> FrameFeatures:
        """Parts of E edges (global frame) -> m-major frame features; ``D``: frames of those edges."""
        rot = {l: rotate(D[l], x[l], transpose=True) for l in self.ls}  # (E, 2l+1, n_l)
        out = [torch.cat([rot[l][:, l] for l in self.ls], dim=1)]
        for m in range(1, self.lmax + 1):
            ls = [l for l in self.ls if l >= m]
            plus = torch.cat([rot[l][:, l + m] for l in ls], dim=1)
            minus = torch.cat([rot[l][:, l - m] for l in ls], dim=1)
            out.append(torch.stack([plus, minus], dim=1))
        return out

    def from_frame(self, f: FrameFeatures, D: list[torch.Tensor]) -> list:
        """m-major frame features -> parts in the global frame."""
        out = [None] * (self.lmax + 1)
        pos = [0] * (self.lmax + 1)  # running channel offset in each m group
        for l in self.ls:
            n = len(self.parity[l])
            comps = [None] * (2 * l + 1)
            comps[l] = f[0][:, pos[0]:pos[0] + n]
            pos[0] += n
            for m in range(1, l + 1):
                comps[l + m] = f[m][:, 0, pos[m]:pos[m] + n]
                comps[l - m] = f[m][:, 1, pos[m]:pos[m] + n]
                pos[m] += n
            out[l] = rotate(D[l], torch.stack(comps, dim=1))
        return out


def rotate(D: torch.Tensor, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``D x`` (or ``D^T x``) for a batch of small rotations D (E, d, d) and features x (E, d, n).
    Batched GEMM is slow for 3 x 3 matrices and for few channels (per-matrix overhead): those go
    through d fused multiply-adds over the whole batch instead (4x faster for l = 1, measured on
    one CPU thread)."""
    d, n = D.shape[1], x.shape[2]
    if d > 3 and n >= 16:
        return torch.matmul(D.transpose(1, 2) if transpose else D, x)
    cols = D if transpose else D.transpose(1, 2)  # cols[:, b, a] multiplies x[:, b] into output row a
    out = cols[:, 0, :, None] * x[:, 0, None, :]
    for b in range(1, d):
        out.addcmul_(cols[:, b, :, None], x[:, b, None, :])
    return out


def _allowed(cin: list[tuple[int, int]], cout: list[tuple[int, int]]) -> torch.Tensor:
    """(C_in, C_out) +1 where the mirror parities agree, -1 where they differ."""
    a = torch.tensor([p * (-1) ** l for l, p in cin], dtype=torch.float64)
    b = torch.tensor([p * (-1) ** l for l, p in cout], dtype=torch.float64)
    return a[:, None] * b[None, :]


class SO2Linear(nn.Module):
    """Equivariant linear map between frame features of two layouts (see the module docstring),
    with optional invariant scalars appended to the m = 0 input (``n_scalars_in``: radial and
    species embeddings) and extra invariant outputs (``n_scalars_out``: gates), which are returned
    separately. Output m groups beyond the input's lmax are zero. Biases on invariant outputs only."""

    def __init__(self, layout_in: IrrepsLayout, layout_out: IrrepsLayout, n_scalars_in: int = 0,
                 n_scalars_out: int = 0):
        super().__init__()
        self.layout_in, self.layout_out = layout_in, layout_out
        self.n_scalars_in, self.n_scalars_out = n_scalars_in, n_scalars_out
        scal = [(0, 1)]
        cin0 = layout_in.channels[0] + scal * n_scalars_in
        cout0 = layout_out.channels[0] + scal * n_scalars_out
        self.n_m = min(layout_in.lmax, layout_out.lmax)
        sign0 = _allowed(cin0, cout0)
        self.register_buffer("mask0", (sign0 > 0).float(), persistent=False)
        self.w0 = nn.Parameter(torch.randn(len(cin0), len(cout0)) / math.sqrt(max(1, len(cin0))))
        invariant = torch.tensor([l == 0 and p == 1 for l, p in cout0])
        self.register_buffer("bias_mask", invariant.float(), persistent=False)
        self.bias = nn.Parameter(torch.zeros(len(cout0)))
        self.wa = nn.ParameterList()
        self.wb = nn.ParameterList()
        for m in range(1, self.n_m + 1):
            sign = _allowed(layout_in.channels[m], layout_out.channels[m])
            self.register_buffer(f"mask_a{m}", (sign > 0).float(), persistent=False)
            self.register_buffer(f"mask_b{m}", (sign < 0).float(), persistent=False)
            scale = 1.0 / math.sqrt(2 * sign.shape[0])
            self.wa.append(nn.Parameter(torch.randn(sign.shape) * scale))
            self.wb.append(nn.Parameter(torch.randn(sign.shape) * scale))

    def forward(self, x: FrameFeatures | list[FrameFeatures], scalars: torch.Tensor | None = None):
        """``x``: frame features in ``layout_in``, or a list of frame features whose channels,
        concatenated group by group, make ``layout_in`` (:meth:`IrrepsLayout.concat`): the map is
        then a sum of products with row blocks of the weights, without copying the inputs together.
        Returns (frame features in ``layout_out``, extra invariant outputs or None)."""
        parts = x if isinstance(x[0], list) else [x]
        E = parts[0][0].shape[0]
        W0 = self.w0 * self.mask0
        y0 = (self.bias * self.bias_mask).expand(E, -1)
        r = 0
        for p in parts + ([[scalars]] if scalars is not None else []):
            c = p[0].shape[1]
            y0 = torch.addmm(y0, p[0], W0[r:r + c])
            r += c
        c0 = self.layout_out.sizes[0]
        out = [y0[:, :c0]]
        for m in range(1, self.layout_out.lmax + 1):
            c_out = self.layout_out.sizes[m]
            if m > self.n_m:
                out.append(y0.new_zeros((E, 2, c_out)))
                continue
            A = self.wa[m - 1] * getattr(self, f"mask_a{m}")
            B = self.wb[m - 1] * getattr(self, f"mask_b{m}")
            ym, r = None, 0
            for p in parts:
                if len(p) <= m:
                    continue
                c = p[m].shape[2]
                a, b = A[r:r + c], B[r:r + c]
                W = torch.cat([torch.cat([a, b], dim=1), torch.cat([-b, a], dim=1)], dim=0)
                xm = p[m].reshape(E, 2 * c)
                ym = xm @ W if ym is None else torch.addmm(ym, xm, W)
                r += c
            out.append(ym.reshape(E, 2, c_out))
        return out, (y0[:, c0:] if self.n_scalars_out else None)



"""Equivariant multi-head attention of a vertex over its edges, computed in the edge frames.

For every directed edge i -> j an SO(2) convolution (:class:`eqtb.nn.so2.SO2Linear`) of the edge's
input features (frame features: the vertex's own, the neighbour's, the edge's, as a model chooses)
and invariant edge scalars gives

* the *value* ``v_ij``: frame features of the output layout, through a gated nonlinearity
  (:func:`eqtb.nn.irreps.gate_frame`) and multiplied channel by channel by a learned linear function
  of the edge scalars;
* per head h, the *logit* ``a_ij^h = sum_d w_hd silu(q_ij^hd)`` from invariant outputs ``q`` of the
  same convolution (m = 0 components with even mirror parity: invariants of the edge, so the
  attention weights are the same in any frame and under reflections).

The vertex receives ``sum_j alpha_ij^h v_ij`` rotated back to the global frame, with
``alpha_ij^h = c_ij exp(a_ij^h) / sum_k c_ik exp(a_ik^h)`` -- a softmax over the edges of i,
optionally weighted by a smooth cutoff envelope ``c_ij`` (a neighbour crossing the cutoff sphere
enters with weight 0) -- each channel read by the head it belongs to (the channels of every degree
split evenly between the heads, :func:`head_of_channel`).

The sums over a vertex's edges are scatter operations (``index_add``, ``scatter_reduce`` with
``"amax"``), no per-edge Python loop. They are accumulated *online* (:class:`AttentionSums`): edges
may come in several parts (chunks of bonds), each part rescaling the running sums to the running
maximum logit, so that a chunked evaluation equals the one-part evaluation to round-off and no
exponential overflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from eqtb.nn.irreps import gate_frame, n_gates
from eqtb.nn.so2 import FrameFeatures, IrrepsLayout, SO2Linear


def head_of_channel(layout: IrrepsLayout, n_heads: int) -> torch.Tensor:
    """(C_0,) head of every channel, in frame group 0 order (by l, then irreps order): the n_l
    channels of degree l are split into ``n_heads`` consecutive runs of (nearly) equal length."""
    out = []
    for l in layout.ls:
        n = len(layout.parity[l])
        out += [(k * n_heads) // n for k in range(n)]
    return torch.tensor(out, dtype=torch.long)


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, n: int,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of ``logits`` (E, H) over the edges sharing a value of ``index`` (E,) in 0..n-1, each
    term multiplied by ``weight`` (E, 1) when given; segments whose weights are all zero give zeros."""
    H = logits.shape[1]
    idx = index[:, None].expand(-1, H)
    top = torch.full((n, H), -math.inf, dtype=logits.dtype, device=logits.device)
    top = top.scatter_reduce(0, idx, logits.detach(), "amax", include_self=True)
    p = torch.exp(logits - top[index])
    if weight is not None:
        p = p * weight
    total = torch.zeros((n, H), dtype=p.dtype, device=p.device).index_add(0, index, p)
    return p / total.clamp_min(torch.finfo(p.dtype).tiny)[index]


@dataclass
class AttentionSums:
    """Running sums of one vertex attention over parts of the edges: ``top`` (N, H) the largest
    logit seen per vertex and head, ``total`` (N, H) the sum of the weights ``c exp(a - top)``,
    ``values`` the weighted values (parts form, global frame)."""

    top: torch.Tensor
    total: torch.Tensor
    values: list


class VertexAttention(nn.Module):
    """Multi-head attention of vertices over their edges (module docstring): ``layout_in`` the
    frame features read per edge, ``layout`` those of the values (and of the result),
    ``n_scalars`` invariant edge scalars appended to the convolution's m = 0 input and driving the
    value modulation, ``n_heads`` heads of ``head_dim`` invariant features each.

    Use: ``acc = att.start(N, like)``, then ``att.accumulate(acc, x, s, index, D, weight)`` for each
    part of the edges (``index``: the vertex each edge reports to), then ``att.finish(acc)``."""

    def __init__(self, layout_in: IrrepsLayout, layout: IrrepsLayout, n_scalars: int, n_heads: int,
                 head_dim: int):
        super().__init__()
        self.layout, self.n_heads, self.head_dim = layout, n_heads, head_dim
        self.n_gates = n_gates(layout)
        self.conv = SO2Linear(layout_in, layout, n_scalars, self.n_gates + n_heads * head_dim)
        self.modulation = nn.Linear(n_scalars, layout.sizes[0])
        nn.init.zeros_(self.modulation.weight)
        nn.init.ones_(self.modulation.bias)
        self.score = nn.Parameter(torch.randn(n_heads, head_dim) / math.sqrt(head_dim))
        heads = head_of_channel(layout, n_heads)
        self.register_buffer("heads", heads, persistent=False)
        self.slices = {}  # l -> channels of degree l in frame group 0 order
        k = 0
        for l in layout.ls:
            n = len(layout.parity[l])
            self.slices[l] = slice(k, k + n)
            k += n

    def start(self, n: int, like: torch.Tensor) -> AttentionSums:
        """Empty sums for ``n`` vertices (dtype and device of ``like``)."""
        H = self.n_heads
        return AttentionSums(like.new_full((n, H), -math.inf), like.new_zeros((n, H)), self.layout.zeros(n, like))

    def logits_values(self, x: FrameFeatures | list[FrameFeatures], s: torch.Tensor):
        """(logits (E, H), pre-activation value frame features, gate scalars) of edges with inputs
        ``x`` (frame features, or a list of them making ``layout_in``) and scalars ``s``."""
        y, inv = self.conv(x, s)
        q = nn.functional.silu(inv[:, self.n_gates:]).view(-1, self.n_heads, self.head_dim)
        return (q * self.score).sum(dim=2), y, inv[:, : self.n_gates]

    def accumulate(self, acc: AttentionSums, x, s: torch.Tensor, index: torch.Tensor, D: list[torch.Tensor],
                   weight: torch.Tensor | None = None) -> AttentionSums:
        """Add the edges of one part to ``acc`` (replaced, not modified in place: autograd-safe):
        ``x``, ``s`` as :meth:`logits_values`, ``index`` (E,) the vertex of each edge, ``D`` the
        edges' frames (:func:`eqtb.nn.so2.directed_frames`), ``weight`` (E, 1) the envelope."""
        logits, y, gates = self.logits_values(x, s)
        H = self.n_heads
        top = acc.top.scatter_reduce(0, index[:, None].expand(-1, H), logits.detach(), "amax", include_self=True)
        rescale = torch.exp(acc.top - top).nan_to_num(0.0)  # -inf - -inf: a vertex with no edge yet
        p = torch.exp(logits - top[index])
        if weight is not None:
            p = p * weight
        total = (acc.total * rescale).index_add(0, index, p)
        v = gate_frame(y, gates, self.layout, self.modulation(s) * p[:, self.heads])
        parts = self.layout.from_frame(v, D)
        values = [None] * len(acc.values)
        for l, sl in self.slices.items():
            values[l] = (acc.values[l] * rescale[:, None, self.heads[sl]]).index_add(0, index, parts[l])
        return AttentionSums(top, total, values)

    def finish(self, acc: AttentionSums) -> list:
        """The attention-weighted sums (parts form); zero at a vertex without edges."""
        total = acc.total.clamp_min(torch.finfo(acc.total.dtype).tiny)
        out = [None] * len(acc.values)
        for l, sl in self.slices.items():
            out[l] = acc.values[l] / total[:, None, self.heads[sl]]
        return out

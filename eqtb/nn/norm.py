"""Equivariant layer normalisation of irreps features, in the global (*parts*) and the edge-frame
(*frame*) forms of :class:`eqtb.nn.so2.IrrepsLayout`.

Per item (atom or directed edge): the even scalars (0e) are centred (their mean subtracted), then
features are divided by a root mean square of *per-channel norms* ``|x_c|^2 / (2l + 1)`` (the mean
square per component of a channel of degree l), without centring anything else -- a mean over
channels of vectors or pseudo-scalars is no invariant to subtract. Two ways to form the RMS:

* ``separate=False`` (one norm, as EquiformerV2's default RMS norm): one RMS over every channel,
  each degree weighing alike (``sum_l mean_(c of degree l) |x_c|^2 / (2l+1)`` over the number of
  degrees). Degrees keep their relative sizes: features that a nearly symmetric environment makes
  small (l = 1, 2 at a site of cubic symmetry) stay small, so tiny displacements change the output
  smoothly and float32 round-off is not blown up;
* ``separate=True`` (per degree, as a layer norm of each degree): the even scalars, the odd
  scalars and each degree l > 0 divided by their own RMS -- every degree brought to unit size,
  which amplifies one that symmetry makes small.

Then each channel is multiplied by a learned weight (started at 1) and the even scalars get a
learned bias (started at 0). Every statistic is a norm of a whole channel (rotation invariant,
unchanged by a reflection) or a mean of even scalars, so the map is E(3)-equivariant, and it is the
same function of a feature in the global frame and of the same feature rotated into an edge frame:
per-channel norms do not depend on the frame.
"""

from __future__ import annotations

import torch
from torch import nn

from eqtb.nn.so2 import FrameFeatures, IrrepsLayout


class EquivariantLayerNorm(nn.Module):
    """Layer norm of features of ``layout`` (see the module docstring); ``eps`` is added to every
    mean square. ``separate``: each group normalised by its own RMS (per degree); else one RMS for
    all channels, ``sum_l mean_(c of degree l) |x_c|^2 / (2l+1)`` over the number of degrees
    (every degree weighs alike). ``centre``: subtract the mean of the even scalars first.
    :meth:`forward` takes the parts form, :meth:`frame` the m-major frame form; both give the same
    channels (up to the frame rotation)."""

    def __init__(self, layout: IrrepsLayout, eps: float = 1e-6, separate: bool = False, centre: bool = True):
        super().__init__()
        self.layout, self.eps = layout, eps
        chans = layout.channels[0]  # (l, parity) of every channel, by l then irreps order
        dims = torch.tensor([2.0 * l + 1.0 for l, _ in chans])
        if separate:
            groups = [(0, 1), (0, -1)] + [(l, 0) for l in layout.ls if l > 0]
            key = [(l, p) if l == 0 else (l, 0) for l, p in chans]
            groups = [g for g in groups if g in key]
            member = torch.tensor([[float(k == g) for g in groups] for k in key])  # (C_0, G)
            mean = member / member.sum(0, keepdim=True) / dims[:, None]
        else:  # one group; every degree weighs 1 / (number of degrees)
            n_l = torch.tensor([float(len(layout.parity[l])) for l, _ in chans])
            member = torch.ones((len(chans), 1))
            mean = (1.0 / (len(layout.ls) * n_l * dims))[:, None]
        # (per-channel |x_c|^2) @ mean_over_group -> per group mean square per component
        self.register_buffer("mean_over_group", mean, persistent=False)
        self.register_buffer("member", member.T.contiguous(), persistent=False)  # (G, C_0)
        even = torch.tensor([float(c == (0, 1)) for c in chans])
        self.n_even = int(even.sum()) if centre else 0
        self.register_buffer("even", even, persistent=False)
        self.weight = nn.Parameter(torch.ones(len(chans)))
        self.bias = nn.Parameter(torch.zeros(len(chans)))  # acts on the even scalars only
        self.offsets = {}  # l -> (start, stop) of its channels in frame group 0 order
        k = 0
        for l in layout.ls:
            n = len(layout.parity[l])
            self.offsets[l] = (k, k + n)
            k += n

    def _centre(self, x0: torch.Tensor) -> torch.Tensor:
        """The leading channels of frame group 0 (n, C <= C_0; the scalars come first, so every even
        scalar is among them) with the mean of the even scalars subtracted from those."""
        if not self.n_even:
            return x0
        even = self.even[: x0.shape[1]].to(x0)
        return x0 - (x0 @ even / self.n_even)[:, None] * even

    def _factors(self, sq: torch.Tensor) -> torch.Tensor:
        """(n, C_0) per-channel squared norms -> (n, C_0) multipliers: weight / group RMS."""
        ms = sq @ self.mean_over_group.to(sq)  # (n, G)
        return torch.rsqrt(ms + self.eps) @ self.member.to(sq) * self.weight

    def forward(self, x: list) -> list:
        """Parts form: list by l of (N, 2l+1, n_l) (None where absent)."""
        x = list(x)
        if x[0] is not None:
            x[0] = self._centre(x[0][:, 0]).unsqueeze(1)
        sq = torch.cat([x[l].pow(2).sum(dim=1) for l in self.layout.ls], dim=1)
        f = self._factors(sq)
        out = [None] * len(x)
        for l in self.layout.ls:
            a, b = self.offsets[l]
            out[l] = x[l] * f[:, None, a:b]
        if self.n_even:
            n0 = out[0].shape[2]
            out[0] = out[0] + (self.bias * self.even)[:n0].to(out[0])
        return out

    def frame(self, x: FrameFeatures) -> FrameFeatures:
        """Frame form: ``[(E, C_0), (E, 2, C_1), ...]`` (group m the tail of group 0's channels)."""
        x0 = self._centre(x[0])
        sq = x0.pow(2)
        c0 = sq.shape[1]
        for xm in x[1:]:  # add the (+m, -m) components onto their channels (the tail of group 0)
            sq = sq + nn.functional.pad(xm.pow(2).sum(dim=1), (c0 - xm.shape[2], 0))
        f = self._factors(sq)
        y0 = x0 * f + (self.bias * self.even).to(x0)
        return [y0] + [xm * f[:, None, c0 - xm.shape[2]:] for xm in x[1:]]

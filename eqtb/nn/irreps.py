"""Equivariant linear maps and gated nonlinearities on irreps features.

Global features are in the *parts* form of :class:`eqtb.nn.so2.IrrepsLayout` (one tensor
``(N, 2l+1, n_l)`` per degree, eqtb's convention :mod:`eqtb.so3`); frame features are the m-major
lists of :mod:`eqtb.nn.so2`. Gates follow the
usual recipe: invariant channels (l = 0) go through an activation (SiLU for even, tanh for odd
parity, so that parity is respected), every channel with l > 0 is multiplied by the sigmoid of its
own invariant gate scalar, which preserves equivariance.
"""

from __future__ import annotations

import torch
from torch import nn

from eqtb.nn.so2 import FrameFeatures, IrrepsLayout


class IrrepsLinear(nn.Module):
    """Channel mixing of global features (parts form) between two layouts: one matrix per
    (l, parity) applied to all 2l+1 components alike (a single matrix product per l); bias on even
    scalars. Output degrees absent from the input are zero."""

    def __init__(self, layout_in: IrrepsLayout, layout_out: IrrepsLayout):
        super().__init__()
        self.layout_in, self.layout_out = layout_in, layout_out
        self.weights = nn.ParameterDict()
        for l, pout in layout_out.parity.items():
            pin = layout_in.parity.get(l)
            if pin is None:
                continue
            mask = (torch.tensor(pin)[:, None] == torch.tensor(pout)[None, :]).float()
            self.register_buffer(f"mask{l}", mask, persistent=False)
            fan = mask.sum(0).clamp(min=1)
            self.weights[str(l)] = nn.Parameter(torch.randn(mask.shape) / fan.sqrt())
        even0 = [p == 1 for p in layout_out.parity.get(0, [])]
        self.bias = nn.Parameter(torch.zeros(len(even0)))
        self.register_buffer("bias_mask", torch.tensor(even0, dtype=torch.float32), persistent=False)

    def forward(self, x: list) -> list:
        ref = next(p for p in x if p is not None)
        out = [None] * (self.layout_out.lmax + 1)
        for l, pout in self.layout_out.parity.items():
            if str(l) not in self.weights:
                out[l] = ref.new_zeros((ref.shape[0], 2 * l + 1, len(pout)))
                continue
            y = x[l] @ (self.weights[str(l)] * getattr(self, f"mask{l}"))
            out[l] = y + (self.bias * self.bias_mask)[None, None, :] if l == 0 else y
        return out


def _scalar_activation(x: torch.Tensor, parities: list[int]) -> torch.Tensor:
    """SiLU on even, tanh on odd scalars (channels along the last dimension)."""
    if all(p == 1 for p in parities):
        return nn.functional.silu(x)
    odd = torch.tensor([p == -1 for p in parities], device=x.device)
    return torch.where(odd, torch.tanh(x), nn.functional.silu(x))


def n_gates(layout: IrrepsLayout) -> int:
    """Number of gate scalars a gated layout needs: one per channel with l > 0."""
    return layout.sizes[0] - layout.n_scalars


def gate_frame(x: FrameFeatures, gates: torch.Tensor, layout: IrrepsLayout,
               scale: torch.Tensor | None = None) -> FrameFeatures:
    """Gated nonlinearity on frame features (E, ...) with gate scalars (E, n_gates(layout)), then
    (optionally) every channel multiplied by ``scale`` (E, C_0) (an invariant per edge and channel,
    channels ordered as frame group 0) — fused into one multiplication per group."""
    n0 = layout.n_scalars
    g = torch.sigmoid(gates)
    mult = g if scale is None else scale[:, n0:] * g
    scalars = _scalar_activation(x[0][:, :n0], [p for _, p in layout.channels[0][:n0]])
    if scale is not None:
        scalars = scalars * scale[:, :n0]
    out = [torch.cat([scalars, x[0][:, n0:] * mult], dim=1)]
    for m in range(1, len(x)):
        out.append(x[m] * mult[:, mult.shape[1] - x[m].shape[2]:].unsqueeze(1))
    return out


def gate_parts(x: list, gates: torch.Tensor, layout: IrrepsLayout) -> list:
    """Gated nonlinearity on global features (parts form) with gate scalars (N, n_gates(layout));
    gates are ordered like the l > 0 channels of frame group 0 (by l, then channel)."""
    g = torch.sigmoid(gates)
    out = [None] * len(x)
    k = 0
    for l in layout.ls:
        if l == 0:
            out[0] = _scalar_activation(x[0], layout.parity[0])
            continue
        n = x[l].shape[2]
        out[l] = x[l] * g[:, None, k:k + n]
        k += n
    return out

"""DeePTB's environment networks: its residual MLP and the DeePMD-style ``se2`` descriptor, with
DeePTB 2.2.1's definitions (``dptb/nn/base.py``, ``dptb/nn/embedding/se2.py``), so that the weights
of a DeePTB model give its numbers here.

**Residual MLP** (:class:`ResNet`), from a list of widths ``[n_in, h_1, ..., h_k, n_out]``, read as
DeePTB reads it: pairs of hidden widths make residual blocks ``n -> h_a -> h_b``, the rest a final
layer (:func:`layer_plan`). A block maps x to ``act(act(W2 act(W1 x + b1) + b2 + res(x)))`` -- DeePTB
applies the activation twice, once in the block and once after it -- with ``res`` the identity
(equal widths), nearest-neighbour interpolation (widening) or adaptive average pooling (narrowing)
of x. DeePTB's two residual networks differ in their final layer: the radial network of ``se2``
(``ResNet``) honours a final ``n -> h -> n_out`` MLP, the prediction heads (``AtomicResNet``) always
end in one linear layer ``n -> n_out`` (the hidden width of a trailing triple is dropped) whose
weights and biases start from N(0, 1e-3), so that a correction starts near zero.

**se2 descriptor** (:class:`Se2Descriptor`) of atom i, from its neighbours j with ``r_ij < rc``
(Angstrom; vectors r_ij = x_j - x_i):

* ``s(r) = u(x) / r`` with ``x = (r - rs) / (rc - rs)`` clamped to [0, 1] and
  ``u(x) = x^3 (-10 + x (15 - 6 x)) + 1`` (1 below rs, 0 from rc on; 1/Angstrom);
* ``G_ij = radial([s, onehot(t_i), onehot(t_j)])`` (D = the last radial width) and the moments
  ``A_i = mean_j G_ij (x) [s, s r_ij / r]`` (D x 4; a mean over the neighbours within rc, so the
  number of neighbours enters, as in DeePTB);
* ``d_i = (A_i A_i^T)[:, :n_axis]`` flattened (D n_axis values, invariant under O(3)), minus its
  mean, divided by its norm. An atom without neighbours has ``d_i = 0`` (DeePTB: NaN).

The descriptor of a bond i-j of length r is ``[d_i + d_j, 1 / r]`` (symmetric in i and j). The
moments are sums over directed edges, accumulated chunk by chunk (:meth:`Se2Descriptor.moments`),
so any chunking of the edges gives the same descriptors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "ResNet", "Se2Descriptor", "layer_plan", "smooth_inverse"]

#: DeePTB's activation names
ACTIVATIONS = {"relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}


def layer_plan(widths: list[int]) -> list[tuple[int, ...]]:
    """DeePTB's reading of a width list (its ``get_neuron_config``): triples ``(n, h, m)`` of the
    residual blocks and of a final MLP, or a final pair ``(n, m)`` (a linear layer) when the list
    has an even length; e.g. ``[3, 10, 20, 30] -> [(3, 10, 20), (20, 30)]``,
    ``[900, 16, 16, 16, 3] -> [(900, 16, 16), (16, 16, 3)]``."""
    if len(widths) < 2:
        raise ValueError(f"a network needs at least an input and an output width, got {widths}")
    core = widths[:-1] if len(widths) % 2 == 0 else widths
    plan = [tuple(core[k - 1:k + 2]) for k in range(1, len(core) - 1, 2)]
    if len(widths) % 2 == 0:
        plan.append((core[-1], widths[-1]))
    return plan


class _MLP(nn.Module):
    """``fc2(act(fc1(x)))``."""

    def __init__(self, n_in: int, hidden: int, n_out: int, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(n_in, hidden), nn.Linear(hidden, n_out), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _ResBlock(_MLP):
    """``act(act(mlp(x) + res(x)))`` (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in, n_out = self.fc1.in_features, self.fc2.out_features
        if n_in < n_out:
            res = F.interpolate(x.unsqueeze(1), size=[n_out]).squeeze(1)
        elif n_in == n_out:
            res = x
        else:
            res = F.adaptive_avg_pool1d(x, n_out)
        return self.act(self.act(super().forward(x) + res))


class ResNet(nn.Module):
    """DeePTB's residual MLP of ``widths`` (module docstring). ``activation``: a name of
    :data:`ACTIVATIONS`; ``head``: True for a prediction head (final layer always linear, started
    from N(0, 1e-3)), False for the radial network of se2 (a final triple is an MLP)."""

    def __init__(self, widths: list[int], activation: str, head: bool):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of DeePTB's ({', '.join(ACTIVATIONS)})")
        act = ACTIVATIONS[activation]
        plan = layer_plan(list(widths))
        self.blocks = nn.ModuleList([_ResBlock(*t, act) for t in plan[:-1]])
        last = plan[-1]
        if head or len(last) == 2:
            self.out = nn.Linear(last[0], last[-1])
            if head:
                nn.init.normal_(self.out.weight, 0.0, 1e-3)
                nn.init.normal_(self.out.bias, 0.0, 1e-3)
        else:
            self.out = _MLP(*last, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def smooth_inverse(r: torch.Tensor, rs: float, rc: float) -> torch.Tensor:
    """``s(r)`` of the module docstring (1/Angstrom): 1/r below ``rs``, smoothly to 0 at ``rc``."""
    x = ((r - rs) / (rc - rs)).clamp(0.0, 1.0)
    return (x ** 3 * (-10.0 + x * (15.0 - 6.0 * x)) + 1.0) / r


class Se2Descriptor(nn.Module):
    """The se2 descriptor of the module docstring for ``n_types`` elements: switching radii ``rs`` <
    ``rc`` (Angstrom), radial widths ``neurons`` (DeePTB's ``radial_net.neurons``), ``n_axis``
    columns kept (None: D, the last radial width), radial ``activation``."""

    def __init__(self, n_types: int, rs: float, rc: float, neurons: list[int], n_axis: int | None,
                 activation: str = "tanh"):
        super().__init__()
        if not 0 < rs < rc:
            raise ValueError(f"the se2 radii must satisfy 0 < rs < rc, got rs={rs}, rc={rc}")
        self.n_types, self.rs, self.rc = n_types, float(rs), float(rc)
        self.width = int(neurons[-1])
        self.n_axis = self.width if n_axis is None else int(n_axis)
        if self.n_axis > self.width:
            raise ValueError(f"n_axis {self.n_axis} exceeds the last radial width {self.width}")
        self.radial = ResNet([2 * n_types + 1, *neurons], activation, head=False)

    @property
    def dim(self) -> int:
        """Length of an atom's descriptor, D n_axis (a bond's has one more: 1/r)."""
        return self.width * self.n_axis

    def moments(self, types: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums (N, D, 4), counts (N,)) over the directed edges src -> dst (vectors (n, 3),
        Angstrom) shorter than rc: what :meth:`finish` turns into descriptors once every edge of
        every atom has been added (sums of chunks add up)."""
        r = vectors.norm(dim=1)
        near = r < self.rc
        src, dst, vectors, r = src[near], dst[near], vectors[near], r[near]
        s = smooth_inverse(r, self.rs, self.rc)[:, None]
        onehot = F.one_hot(torch.stack([types[src], types[dst]], 1), self.n_types).to(vectors).flatten(1)
        g = self.radial(torch.cat([s, onehot], 1))
        env = torch.cat([s, s * vectors / r[:, None]], 1)
        n = types.shape[0]
        sums = vectors.new_zeros(n, self.width, 4).index_add_(0, src, g[:, :, None] * env[:, None, :])
        counts = vectors.new_zeros(n).index_add_(0, src, torch.ones_like(r))
        return sums, counts

    def finish(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(N, dim) atom descriptors from the accumulated :meth:`moments`."""
        a = sums / counts.clamp(min=1.0)[:, None, None]
        d = (a @ a.transpose(1, 2))[:, :, :self.n_axis].flatten(1)
        d = d - d.mean(1, keepdim=True)
        norm = d.norm(dim=1, keepdim=True)
        return d / torch.where(norm > 0, norm, torch.ones_like(norm))

"""Dataset statistics of operator blocks in irreps form, for normalising model targets.

For every element type (onsite blocks, ``upper`` pair layout) and every unordered pair of element
types (off-site blocks, ``all`` pair layout, oriented so the lighter element is the row atom:
blocks of a heavier-lighter bond are transposed, ``O_ji(-R) = O_ij(R)^T``), and for every irreps
channel of the layout (one orbital pair, one L), the statistics are

* L = 0: mean and standard deviation of the scalar;
* L > 0: mean zero (any non-zero mean would break rotation symmetry) and the root-mean-square of the
  2L+1 components, ``sqrt(sum |v|^2 / (count (2L+1)))``, as the scale.

They are gathered in one streaming pass over frames with exact merging of partial moments (Chan's
formula), so memory does not grow with the dataset. Units: those of the operator (eV for H).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from eqtb.basis import Basis
from eqtb.blocks import BlockTransform
from eqtb.quantities import QUANTITIES
from eqtb.structure import pair_cutoffs


@dataclass
class _Moments:
    """Running count, mean and centred second moment per channel (float64)."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def zeros(cls, shape) -> "_Moments":
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape))

    def add(self, slot, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        n_a, n_b = self.n[slot], count
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = mean - self.mean[slot]
            w = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
            self.mean[slot] = self.mean[slot] + delta * w
            self.m2[slot] = self.m2[slot] + m2 + delta**2 * n_a * w
        self.n[slot] = n


@dataclass
class ChannelStats:
    """Statistics of one layout (onsite or off-site) for every type (pair) and channel.

    ``mean``/``std``: (n_groups, n_channels); channel c covers feature components
    ``slice(start[c], start[c] + 2 L[c] + 1)``; ``count``: (n_groups, n_channels) number of blocks seen
    (zero where the channel does not exist for that group)."""

    L: np.ndarray
    start: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    names: list[str] = field(default_factory=list)

    def expanded(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature-component (shift, scale), (n_groups, dim): shift = mean for L = 0 channels,
        0 otherwise; scale = std (1 where a channel was never seen or is constant)."""
        dim = int(self.start[-1] + 2 * self.L[-1] + 1)
        reps = 2 * self.L + 1
        shift = np.repeat(np.where(self.L == 0, self.mean, 0.0), reps, axis=1)
        std = np.where((self.count > 1) & (self.std > 0), self.std, 1.0)
        scale = np.repeat(std, reps, axis=1)
        assert shift.shape[1] == dim
        return shift, scale


@dataclass
class OperatorStats:
    """Statistics of one operator (H, S or D) of a dataset; see the module docstring."""

    basis: Basis
    onsite: ChannelStats
    offsite: ChannelStats
    n_frames: int

    @property
    def pair_types(self) -> list[tuple[int, int]]:
        """Off-site groups: unordered type pairs (a <= b), in order."""
        T = self.basis.n_types
        return [(a, b) for a in range(T) for b in range(a, T)]

    def to_dict(self) -> dict:
        def ch(c: ChannelStats):
            return {"L": c.L.tolist(), "start": c.start.tolist(), "names": c.names, "mean": c.mean.tolist(),
                    "std": c.std.tolist(), "count": c.count.tolist()}
        return {"basis": self.basis.spec, "n_frames": self.n_frames, "onsite": ch(self.onsite),
                "offsite": ch(self.offsite)}

    @classmethod
    def from_dict(cls, d: dict) -> "OperatorStats":
        def ch(c):
            return ChannelStats(np.array(c["L"]), np.array(c["start"]), np.array(c["mean"]), np.array(c["std"]),
                                np.array(c["count"]), list(c["names"]))
        return cls(Basis(d["basis"]), ch(d["onsite"]), ch(d["offsite"]), int(d["n_frames"]))

    def summary(self) -> str:
        """A readable table: per group, the scalar channels' mean/std and the largest scales."""
        sym = self.basis.symbols
        lines = []
        for title, c, groups in (("onsite", self.onsite, [(s,) for s in sym]),
                                 ("offsite", self.offsite, [(sym[a], sym[b]) for a, b in self.pair_types])):
            for g, name in enumerate(groups):
                seen = c.count[g] > 0
                if not seen.any():
                    continue
                lines.append(f"{title} {'-'.join(name)}: {int(c.count[g].max())} blocks")
                for k in np.where(seen)[0]:
                    kind = f"mean {c.mean[g, k]: .5f}  std" if c.L[k] == 0 else "rms       " + " " * 9
                    lines.append(f"  {c.names[k]:>12s} L={c.L[k]}  {kind} {c.std[g, k]:.5f}")
        return "\n".join(lines)


def _channels(transform: BlockTransform) -> tuple[np.ndarray, np.ndarray, list[str]]:
    L, start, names, o = [], [], [], 0
    for p in transform.pairs:
        for ell in p.irreps_l:
            L.append(ell)
            start.append(o)
            names.append(f"{p.name}:{ell}{'e' if p.parity > 0 else 'o'}")
            o += 2 * ell + 1
    return np.array(L), np.array(start), names


def _group_moments(feats: np.ndarray, L: np.ndarray, start: np.ndarray):
    """Per channel: (count, mean, m2) of the scalar (L = 0) or of the components about zero (L > 0),
    with m2 counted per block (sum over components / (2L + 1)) so std = sqrt(m2 / count)."""
    n = feats.shape[0]
    count = np.full(len(L), float(n))
    mean = np.zeros(len(L))
    m2 = np.zeros(len(L))
    for c, (ell, s) in enumerate(zip(L, start)):
        v = feats[:, s:s + 2 * ell + 1]
        if ell == 0:
            mean[c] = v.mean()
            m2[c] = ((v - mean[c]) ** 2).sum()
        else:
            m2[c] = (v**2).sum() / (2 * ell + 1)
    return count, mean, m2


def operator_stats(operators: Iterable, basis: Basis, r_max=None) -> OperatorStats:
    """Statistics over a stream of :class:`~eqtb.operator.Operator` (one per frame, same basis).
    ``r_max`` (number or DeePTB dict) restricts off-site blocks to bonds within the model cutoff."""
    basis = Basis(basis)
    up, full = BlockTransform(basis, "upper"), BlockTransform(basis, "all")
    Lo, so, no = _channels(up)
    Le, se, ne = _channels(full)
    T = basis.n_types
    pair_index = {}
    for a in range(T):
        for b in range(a, T):
            pair_index[(a, b)] = len(pair_index)
    on = _Moments.zeros((T, len(Lo)))
    off = _Moments.zeros((len(pair_index), len(Le)))
    on_mask = np.stack([basis.pair_mask(basis.upper_pairs, t, t)[so] for t in range(T)])
    off_mask = np.stack([basis.pair_mask(basis.all_pairs, a, b)[se] for (a, b) in pair_index])
    cut = pair_cutoffs(r_max, basis.symbols) if r_max is not None else None
    n_frames = 0
    for op in operators:
        n_frames += 1
        types = basis.types_of(op.structure.numbers)
        onsite = up.to_features(torch.as_tensor(op.onsite.real)).numpy()
        for t in np.unique(types):
            c, m, q = _group_moments(onsite[types == t], Lo, so)
            on.add(t, c * on_mask[t], m, q)
        ti, tj = types[op.i], types[op.j]
        blocks = op.offsite.real
        keep = np.ones(len(ti), dtype=bool)
        if cut is not None:
            keep = op.bond_lengths < cut[ti, tj]
        swap = ti > tj
        blocks = np.where(swap[:, None, None], np.swapaxes(blocks, 1, 2), blocks)
        a, b = np.minimum(ti, tj), np.maximum(ti, tj)
        for (x, y), g in pair_index.items():
            sel = keep & (a == x) & (b == y)
            if sel.any():
                feats = full.to_features(torch.as_tensor(blocks[sel])).numpy()
                c, m, q = _group_moments(feats, Le, se)
                off.add(g, c * off_mask[g], m, q)

    def finish(mom: _Moments, L, start, names) -> ChannelStats:
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(mom.n > 0, np.sqrt(mom.m2 / np.maximum(mom.n, 1)), 0.0)
        return ChannelStats(L, start, np.where(mom.n > 0, mom.mean, 0.0), std, mom.n.astype(np.int64), names)

    return OperatorStats(basis, finish(on, Lo, so, no), finish(off, Le, se, ne), n_frames)


def dataset_stats(folders, quantities=QUANTITIES, r_max=None,
                  basis=None) -> dict[str, OperatorStats]:
    """Statistics of every quantity present in a list of
    :class:`~eqtb.data.folder.TrajectoryFolder` (or anything with ``frames(**flags)``), frames read one
    at a time."""
    out = {}
    for q in quantities:
        def stream(q=q):
            for folder in folders:
                if folder.block_file(q) is None:
                    continue
                for k in range(folder.nframes):
                    op = folder.operator(q, k)
                    if op is not None:
                        yield op
        first = next(iter(stream()), None)
        if first is None:
            continue
        out[q] = operator_stats(stream(), basis or first.basis, r_max=r_max)
    return out


def save_stats(stats: dict[str, OperatorStats], path: str | Path) -> None:
    Path(path).write_text(json.dumps({k: v.to_dict() for k, v in stats.items()}))


def load_stats(path: str | Path) -> dict[str, OperatorStats]:
    return {k: OperatorStats.from_dict(v) for k, v in json.loads(Path(path).read_text()).items()}

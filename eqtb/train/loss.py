"""Training losses on predicted blocks (DeePTB's ``loss_options`` methods, FORMATS.md 5.4).

All block losses compare the Hermitian blocks a model returns with the aligned targets of a
:class:`~eqtb.train.data.Sample` batch, counting only orbital entries that exist for the atoms'
element types (the full-basis layout pads smaller bases with zeros). Units: eV for H.

* ``hamil_abs``: for onsite H blocks, off-site ("hopping") H blocks and, when the model predicts
  it, all overlap blocks, the term ``(MAE + RMSE) / 2``; the loss is the mean of the terms.
* ``hamil_blas``: the same terms, but MAE and MSE first averaged per element type (onsite) or
  element pair (off-site) and then over types, so rare species weigh as much as common ones.
* ``hamil_wt``: ``hamil_blas`` with per-element ``onsite_weight`` and per-pair ``hopping_weight``
  (a number, or a dict element -> weight / ``"A-B"`` -> weight).
"""

from __future__ import annotations

import torch

from eqtb.basis import Basis


class LossError(ValueError):
    """Loss options that cannot be used here."""


def _pair_weights(spec, basis: Basis, onsite: bool) -> torch.Tensor:
    T = basis.n_types
    sym = basis.symbols
    if isinstance(spec, (int, float)):
        return torch.full((T,) if onsite else (T, T), float(spec))
    if onsite:
        unknown = [k for k in spec if k not in sym]
        if unknown:
            raise LossError(f"onsite_weight: unknown elements {unknown} (basis has {sym})")
        return torch.tensor([float(spec.get(s, 1.0)) for s in sym])
    w = torch.ones((T, T))
    for key, val in spec.items():
        a, _, b = key.partition("-")
        if a not in sym or b not in sym:
            raise LossError(f"hopping_weight: {key!r} is not a bond 'A-B' of elements in {sym}")
        w[sym.index(a), sym.index(b)] = w[sym.index(b), sym.index(a)] = float(val)
    return w


class BlockLoss(torch.nn.Module):
    """Block loss for a model predicting ``quantity`` (and optionally the overlap)."""

    def __init__(self, basis: Basis, options: dict, quantity: str = "hamiltonian", overlap: bool = False):
        super().__init__()
        method = options.get("method", "hamil_abs")
        if method not in ("hamil_abs", "hamil_blas", "hamil_wt"):
            raise LossError(f"loss method {method!r} is not supported yet (use hamil_abs, hamil_blas or hamil_wt)")
        if options.get("onsite_shift"):
            raise LossError("onsite_shift is not supported yet")
        self.basis, self.method, self.quantity, self.overlap = basis, method, quantity, overlap
        self.register_buffer("orb_mask", torch.as_tensor(basis.orbital_mask), persistent=False)
        on_w = _pair_weights(options.get("onsite_weight", 1.0), basis, True)
        off_w = _pair_weights(options.get("hopping_weight", 1.0), basis, False)
        self.register_buffer("onsite_weight", on_w, persistent=False)
        self.register_buffer("hopping_weight", off_w, persistent=False)

    def _masks(self, types, i, j):
        m = self.orb_mask.to(types.device)
        on = m[types][:, :, None] & m[types][:, None, :]
        off = m[types[i]][:, :, None] & m[types[j]][:, None, :]
        return on, off

    def _term(self, pred, target, mask, groups, weights, n_groups):
        diff = (pred - target) * mask
        n = mask.sum(dim=(1, 2)).to(pred.dtype)
        if self.method == "hamil_abs":
            total = n.sum().clamp(min=1)
            mae = diff.abs().sum() / total
            mse = (diff**2).sum() / total
            return 0.5 * (mae + (mse + 1e-30).sqrt())
        ae = torch.zeros(n_groups, dtype=pred.dtype, device=pred.device).index_add_(0, groups, diff.abs().sum(dim=(1, 2)))
        se = torch.zeros_like(ae).index_add_(0, groups, (diff**2).sum(dim=(1, 2)))
        cnt = torch.zeros_like(ae).index_add_(0, groups, n)
        seen = cnt > 0
        w = weights.to(pred)[seen]
        mae = (w * ae[seen] / cnt[seen]).sum() / seen.sum()
        mse = (w * se[seen] / cnt[seen]).sum() / seen.sum()
        return 0.5 * (mae + (mse + 1e-30).sqrt())

    def terms(self, pred: dict, targets: dict, types, i, j) -> dict[str, torch.Tensor]:
        """Loss terms {"onsite", "hopping"[, "overlap"]} for one batch."""
        T = self.basis.n_types
        on_mask, off_mask = self._masks(types, i, j)
        a, b = types[i], types[j]
        on_groups, off_groups = types, torch.minimum(a, b) * T + torch.maximum(a, b)
        on_w, off_w = self.onsite_weight, self.hopping_weight.flatten()
        q = self.quantity
        out = {"onsite": self._term(pred[q][0], targets[q][0], on_mask, on_groups, on_w, T),
               "hopping": self._term(pred[q][1], targets[q][1], off_mask, off_groups, off_w, T * T)}
        if self.overlap:
            ps, ts = pred["overlap"], targets["overlap"]
            p = torch.cat([ps[0].flatten(1), ps[1].flatten(1)])
            t = torch.cat([ts[0].flatten(1), ts[1].flatten(1)])
            m = torch.cat([on_mask.flatten(1), off_mask.flatten(1)])
            g = torch.cat([on_groups * (T + 1), off_groups])  # onsite type t -> pair (t, t)
            w = torch.ones(T * T)
            out["overlap"] = self._term(p.unsqueeze(1), t.unsqueeze(1), m.unsqueeze(1), g, w, T * T)
        return out

    @torch.no_grad()
    def mae(self, pred: dict, targets: dict, types, i, j) -> dict[str, float]:
        """Plain MAE over existing entries (eV for H): {"onsite_mae", "hopping_mae"[, "overlap_mae"]}."""
        on_mask, off_mask = self._masks(types, i, j)
        q = self.quantity

        def mae(p, t, m):
            return float(((p - t).abs() * m).sum() / m.sum().clamp(min=1))

        out = {"onsite_mae": mae(pred[q][0], targets[q][0], on_mask),
               "hopping_mae": mae(pred[q][1], targets[q][1], off_mask)}
        if self.overlap:
            ps, ts = pred["overlap"], targets["overlap"]
            n_on, n_off = on_mask.sum(), off_mask.sum()
            out["overlap_mae"] = (mae(ps[0], ts[0], on_mask) * float(n_on) + mae(ps[1], ts[1], off_mask)
                                  * float(n_off)) / max(float(n_on + n_off), 1.0)
        return out

    def forward(self, pred: dict, targets: dict, types, i, j) -> torch.Tensor:
        terms = self.terms(pred, targets, types, i, j)
        return sum(terms.values()) / len(terms)

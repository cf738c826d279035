"""Error metrics of predicted block matrices (H, S, D) and of band energies.

Block errors (:class:`BlockErrors`)
-----------------------------------
Blocks are given in the full-basis layout of :class:`eqtb.basis.Basis` (``(E, F, F)``, F =
``basis.full_norb``) together with the element type of the row atom and of the column atom of
every block. Only the *existing orbital entries* count: row orbitals of the row atom's element times
column orbitals of the column atom's element (``basis.orbital_mask``); the padding entries of the
full layout are ignored whatever they hold. Onsite blocks count in full (every entry of the
``norb x norb`` block); off-site blocks are those of the canonical half of the bonds (as in
:class:`eqtb.operator.Operator`), so every bond is counted once, in one direction. A block is
onsite or off-site by how it is passed to :meth:`BlockErrors.add` (``type_j=None``: onsite), so a
bond of an atom to its own periodic image is off-site. :meth:`BlockErrors.add_operator` does both
parts of an :class:`~eqtb.operator.Operator` at once.

For a group G of such entries with errors ``e = pred - target`` (``|e|`` is the modulus for complex
blocks)::

    MAE(G)  = sum_G |e| / |G|          RMSE(G) = sqrt(sum_G |e|^2 / |G|)       count = |G|

(every entry weighs the same: a group's MAE is not the mean of per-structure MAEs). The sums are
accumulated over any number of :meth:`BlockErrors.add` calls, so the metrics of a whole test set are
exact, not averages of batch averages.

Groups, per quantity (``"hamiltonian"``, ``"overlap"``, ``"density_matrix"``):

* ``all``, ``onsite``, ``offsite``;
* ``by_pair``: per element (onsite, ``"Si"``) and per unordered element pair (off-site,
  ``"Ga-As"``: the block of a Ga row atom and an As column atom and the one of an As row atom and a
  Ga column atom fall in the same group, named in basis type order, i.e. lighter element first);
* ``by_orbital``: per unordered pair of angular momenta of the row and column shells, ``"s-s"``,
  ``"s-p"`` (s rows x p columns and p rows x s columns), ``"p-p"``, ``"p-d"``, ...; letters
  ``spdfgh``, lower l first.

Units (one convention for every quantity): inputs are H in eV, S and D dimensionless; every
reported error is the input error **multiplied by 1000**. For H that is meV; for S and D it is
units of 1e-3. The JSON dict therefore uses neutral keys ``mae`` and ``rmse`` and states the unit
once per quantity: ``"unit": "meV"`` for the Hamiltonian, ``"unit": "1e-3"`` for the overlap and
the density matrix (the table prints the latter as ``×1e-3``)::

    {"hamiltonian": {"unit": "meV",
                     "all": {"mae": .., "rmse": .., "count": ..}, "onsite": {..}, "offsite": {..},
                     "by_pair": {"onsite": {"Si": {..}}, "offsite": {"Si-Si": {..}}},
                     "by_orbital": {"onsite": {"s-s": {..}, ..}, "offsite": {..}}},
     "overlap": {"unit": "1e-3", ..}}

Groups with no entries are left out of ``by_pair``/``by_orbital``; ``all``/``onsite``/``offsite``
are always there (``mae``/``rmse`` None, i.e. JSON null, when empty).

Band errors (:func:`band_errors`)
---------------------------------
Eigenvalues ``(nk, nb)`` in eV, reported in meV; see the function for windows and alignment.
"""

from __future__ import annotations

import sys

import numpy as np

from eqtb.basis import ANGULAR_LETTERS, Basis
from eqtb.quantities import ERROR_UNITS

__all__ = ["BlockErrors", "band_errors"]
_SCALE = 1000.0
_KINDS = ("onsite", "offsite")


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x, dtype=None) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _abs_error(pred, target) -> np.ndarray:
    """|pred - target| as float64 numpy, subtracting on the tensors' device when both are torch."""
    if _is_torch(pred) and _is_torch(target):
        torch = sys.modules["torch"]
        d = (pred.detach() - target.detach().to(pred.device)).abs()
        return d.to("cpu", dtype=torch.float64).numpy()
    return np.abs(_to_numpy(pred) - _to_numpy(target)).astype(np.float64, copy=False)


def _stats(abs_sum: float, sq_sum: float, count: int) -> dict:
    if count == 0:
        return {"mae": None, "rmse": None, "count": 0}
    return {"mae": float(_SCALE * abs_sum / count), "rmse": float(_SCALE * np.sqrt(sq_sum / count)),
            "count": int(count)}


class BlockErrors:
    """Streaming accumulator of block-matrix errors, grouped as described in the module docstring.

    >>> err = BlockErrors(basis)
    >>> err.add("hamiltonian", pred.onsite, ref.onsite, types)                    # onsite blocks
    >>> err.add("hamiltonian", pred.offsite, ref.offsite, types[ref.i], types[ref.j])
    >>> err.result()["hamiltonian"]["offsite"]["mae"]                             # meV
    >>> print(err.table())
    """

    def __init__(self, basis: Basis | dict):
        self.basis = Basis(basis)
        b = self.basis
        T, F = b.n_types, b.full_norb
        om = b.orbital_mask
        #: (T, T, F, F): entry (mu, nu) exists in a block of a type-a row atom and a type-b column atom
        self._mask = om[:, None, :, None] & om[None, :, None, :]
        l_of = np.concatenate([np.full(s.dim, s.l) for s in b.full_shells])
        ls = sorted(set(l_of.tolist()))
        self._lpairs = [(l1, l2) for x, l1 in enumerate(ls) for l2 in ls[x:]]
        index = {p: n for n, p in enumerate(self._lpairs)}
        lo, hi = np.minimum.outer(l_of, l_of), np.maximum.outer(l_of, l_of)
        #: (F, F): which unordered l pair every entry belongs to
        self._lpair_of = np.vectorize(lambda a, c: index[(int(a), int(c))], otypes=[np.int64])(lo, hi)
        self._acc: dict[str, dict[str, list[np.ndarray]]] = {}
        self._T, self._F = T, F

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        """Forget everything accumulated."""
        self._acc.clear()

    @property
    def quantities(self) -> list[str]:
        """Quantities that received at least one ``add`` call."""
        return list(self._acc)

    def add(self, quantity: str, pred, target, type_i, type_j=None) -> None:
        """Accumulate the errors of blocks ``pred`` against ``target``.

        ``pred``, ``target``: ``(E, F, F)`` numpy arrays or torch tensors in the full-basis layout
        (eV for H; real or complex). ``type_i``/``type_j``: ``(E,)`` element-type indices (basis
        order) of the row and column atom of every block; ``type_j=None`` means the blocks are
        onsite blocks (``type_j = type_i``), otherwise they are off-site blocks (pass only the
        canonical half of the bonds to count each bond once)."""
        if quantity not in ERROR_UNITS:
            raise ValueError(f"unknown quantity {quantity!r}; expected one of {list(ERROR_UNITS)}")
        T, F = self._T, self._F
        kind = "onsite" if type_j is None else "offsite"
        ti = _to_numpy(type_i).reshape(-1)
        tj = ti if type_j is None else _to_numpy(type_j).reshape(-1)
        shape_p, shape_t = tuple(pred.shape), tuple(target.shape)
        E = len(ti)
        if shape_p != shape_t or shape_p != (E, F, F):
            raise ValueError(f"{quantity} {kind}: pred {shape_p} and target {shape_t} must both be "
                             f"(E, F, F) = ({E}, {F}, {F}) (E from type_i, F = basis.full_norb)")
        if len(tj) != E:
            raise ValueError(f"{quantity} {kind}: type_j has {len(tj)} entries, type_i {E}")
        for name, t in (("type_i", ti), ("type_j", tj)):
            if E and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= T):
                raise ValueError(f"{quantity} {kind}: {name} must hold integer type indices 0..{T - 1}")
        acc = self._acc.setdefault(quantity, {})
        if kind not in acc:
            acc[kind] = [np.zeros((T, T, F, F)), np.zeros((T, T, F, F)), np.zeros((T, T), dtype=np.int64)]
        if E == 0:
            return
        err = _abs_error(pred, target).reshape(E, F * F)
        pair = ti.astype(np.int64) * T + tj.astype(np.int64)
        onehot = np.zeros((T * T, E))  # sums per type pair as one matrix product
        onehot[pair, np.arange(E)] = 1.0
        abs_sum = (onehot @ err).reshape(T, T, F, F)
        sq_sum = (onehot @ (err * err)).reshape(T, T, F, F)
        nblk = np.bincount(pair, minlength=T * T).reshape(T, T)
        bad = ~np.isfinite(sq_sum) & self._mask & (nblk[:, :, None, None] > 0)
        if bad.any():
            a, b, mu, nu = np.argwhere(bad)[0]
            raise ValueError(f"{quantity} {kind}: NaN or infinite error in the {self.basis.symbols[a]}-"
                             f"{self.basis.symbols[b]} blocks, entry ({mu}, {nu})")
        acc[kind][0] += np.where(self._mask, abs_sum, 0.0)
        acc[kind][1] += np.where(self._mask, sq_sum, 0.0)
        acc[kind][2] += nblk

    def add_operator(self, quantity: str, pred, target) -> None:
        """Accumulate onsite and off-site errors of two :class:`~eqtb.operator.Operator` of the same
        structure and bonds (``pred`` may also be a ``(onsite, offsite)`` pair of arrays/tensors laid
        out like ``target``)."""
        if isinstance(pred, tuple):
            p_on, p_off = pred
        else:
            if len(pred.i) != len(target.i) or not (np.array_equal(pred.i, target.i)
                                                    and np.array_equal(pred.j, target.j)
                                                    and np.array_equal(pred.R, target.R)):
                raise ValueError(f"{quantity}: pred and target operators have different bonds")
            p_on, p_off = pred.onsite, pred.offsite
        types = self.basis.types_of(target.structure.numbers)
        self.add(quantity, p_on, target.onsite, types)
        self.add(quantity, p_off, target.offsite, types[target.i], types[target.j])

    # ------------------------------------------------------------------ results
    def _groups(self, quantity: str) -> dict:
        """(abs_sum, sq_sum, count) of every group of one quantity."""
        sym = self.basis.symbols
        T = self._T
        nl = len(self._lpairs)
        out = {"all": [0.0, 0.0, 0], "onsite": [0.0, 0.0, 0], "offsite": [0.0, 0.0, 0],
               "by_pair": {"onsite": {}, "offsite": {}}, "by_orbital": {"onsite": {}, "offsite": {}}}
        for kind in _KINDS:
            if kind not in self._acc[quantity]:
                continue
            abs_sum, sq_sum, nblk = self._acc[quantity][kind]
            count = nblk[:, :, None, None] * self._mask  # (T, T, F, F) entries counted
            tot = [abs_sum.sum(), sq_sum.sum(), int(count.sum())]
            out[kind] = tot
            out["all"] = [x + y for x, y in zip(out["all"], tot)]
            # element pairs, unordered (a <= b)
            pa, ps, pc = abs_sum.sum((2, 3)), sq_sum.sum((2, 3)), count.sum((2, 3))
            for a in range(T):
                for b in range(a, T):
                    if kind == "onsite" and a != b:
                        continue
                    both = [(a, b)] if a == b else [(a, b), (b, a)]
                    c = int(sum(pc[x] for x in both))
                    if c:
                        name = sym[a] if kind == "onsite" else f"{sym[a]}-{sym[b]}"
                        out["by_pair"][kind][name] = [sum(pa[x] for x in both), sum(ps[x] for x in both), c]
            # orbital kinds, unordered l pair
            lp = self._lpair_of.ravel()
            oa = np.bincount(lp, weights=abs_sum.sum((0, 1)).ravel(), minlength=nl)
            os_ = np.bincount(lp, weights=sq_sum.sum((0, 1)).ravel(), minlength=nl)
            oc = np.bincount(lp, weights=count.sum((0, 1)).ravel(), minlength=nl)
            for n, (l1, l2) in enumerate(self._lpairs):
                if oc[n]:
                    name = f"{ANGULAR_LETTERS[l1]}-{ANGULAR_LETTERS[l2]}"
                    out["by_orbital"][kind][name] = [oa[n], os_[n], round(oc[n])]
        return out

    def result(self) -> dict:
        """Nested JSON-serialisable dict of the metrics (layout and units in the module docstring)."""
        res = {}
        for q in self._acc:
            g = self._groups(q)
            res[q] = {"unit": ERROR_UNITS[q],
                      **{k: _stats(*g[k]) for k in ("all", "onsite", "offsite")},
                      **{sec: {kind: {name: _stats(*v) for name, v in g[sec][kind].items()} for kind in _KINDS}
                         for sec in ("by_pair", "by_orbital")}}
        return res

    def table(self) -> str:
        """Fixed-width text table per quantity: rows all/onsite/offsite, per element (pair), per
        orbital kind; columns MAE, RMSE (meV for H, ×1e-3 for S and D) and number of entries."""
        res = self.result()
        if not res:
            return "(no block errors accumulated)"
        blocks = []
        for q, r in res.items():
            unit = "meV" if r["unit"] == "meV" else "×1e-3"
            title = (f"{q}: errors in meV" if unit == "meV" else
                     f"{q} (dimensionless): errors in units of 1e-3 (×1e-3)")
            head = f"{'group':<22}{'MAE (' + unit + ')':>15}{'RMSE (' + unit + ')':>16}{'N entries':>13}"
            lines = [title, head, "-" * len(head)]

            def row(label, s):
                if s["count"] == 0:
                    return f"{label:<22}{'-':>15}{'-':>16}{0:>13d}"
                return f"{label:<22}{s['mae']:>15.4f}{s['rmse']:>16.4f}{s['count']:>13d}"

            for k in ("all", "onsite", "offsite"):
                lines.append(row(k, r[k]))
            for sec, what in (("by_pair", "element pair"), ("by_orbital", "orbital kind")):
                lines.append(f"-- by {what}")
                for kind in _KINDS:
                    for name, s in r[sec][kind].items():
                        lines.append(row(f"{kind} {name}", s))
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def __repr__(self) -> str:
        return f"BlockErrors({self.basis!r}, quantities={self.quantities})"


# ====================================================================== bands

_ALIGN = ("none", "mean", "min")


def band_errors(pred_eigs, ref_eigs, window: float | None = None, fermi: float | None = None,
                align: str = "none") -> dict:
    """Errors of predicted band energies ``pred_eigs`` against ``ref_eigs``, both ``(nk, nb)`` in eV
    (numpy or torch, same bands in the same order), reported in meV.

    ``align``: how the predicted bands are shifted before comparing (the DFT potential zero is
    arbitrary, so a rigid offset may be physically meaningless):

    * ``"none"``: absolute energies, no shift;
    * ``"mean"``: subtract the mean difference ``mean(pred - ref)`` over all (k, band) entries;
    * ``"min"``: shift so that the lowest predicted energy equals the lowest reference energy.

    ``window`` (eV) with ``fermi`` (eV, on the reference's energy scale): the ``window`` entry
    additionally reports the errors over the (k, band) entries whose *reference* energy lies within
    ``fermi +- window``.

    Returns ``{"unit": "meV", "shift": s, "mae": .., "max_abs": .., "count": nk*nb,
    "per_band_mae": [nb values], "window": {"mae", "max_abs", "count"} (only with a window)}``;
    ``shift`` is what was subtracted from the predictions (meV)."""
    pred = _to_numpy(pred_eigs, np.float64)
    ref = _to_numpy(ref_eigs, np.float64)
    if pred.ndim != 2 or pred.shape != ref.shape:
        raise ValueError(f"band_errors: pred {pred.shape} and ref {ref.shape} must both be (nk, nb)")
    if not (np.isfinite(pred).all() and np.isfinite(ref).all()):
        raise ValueError("band_errors: NaN or infinite eigenvalues")
    if align not in _ALIGN:
        raise ValueError(f"band_errors: align must be one of {_ALIGN}, got {align!r}")
    if window is not None and fermi is None:
        raise ValueError("band_errors: a window needs the Fermi level (fermi=..., eV)")
    if pred.size == 0:
        raise ValueError("band_errors: no eigenvalues")
    shift = {"none": 0.0, "mean": float(np.mean(pred - ref)), "min": float(pred.min() - ref.min())}[align]
    err = np.abs(pred - shift - ref) * _SCALE
    out = {"unit": "meV", "shift": shift * _SCALE, "mae": float(err.mean()), "max_abs": float(err.max()),
           "count": int(err.size), "per_band_mae": [float(x) for x in err.mean(axis=0)]}
    if window is not None:
        sel = np.abs(ref - fermi) <= window
        n = int(sel.sum())
        out["window"] = {"fermi": float(fermi), "window": float(window), "count": n,
                         "mae": float(err[sel].mean()) if n else None,
                         "max_abs": float(err[sel].max()) if n else None}
    return out

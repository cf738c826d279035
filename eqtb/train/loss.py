"""Training losses (DeePTB's ``loss_options`` methods, FORMATS.md 5.4), built by :func:`build_loss`.

Every loss takes the Hermitian blocks a model returns and a :class:`~eqtb.train.data.Batch`;
``evaluate(pred, batch)`` returns the differentiable loss and a dict of plain error figures
(``*_mae``: eV for H blocks, dimensionless for S; ``band_mae_meV``: meV).

Sums: each loss is a function of sums over the entries, blocks or frames of a batch
(:meth:`SummedLoss.sums`: e.g. the absolute and squared errors and the entry counts of each element
pair, or the frames' weighted band losses and their weights), and :meth:`SummedLoss.combine`
turns sums into the loss and its figures. Sums add over any split of a batch, so frames spread
over several processes (``torchrun``, :mod:`eqtb.distributed`) give the loss of the whole batch
exactly: each process sums its frames, the sums are added over the processes, and every process
combines the totals.

Block losses compare the blocks with the aligned targets, counting only orbital entries that exist
for the atoms' element types (the full-basis layout pads smaller bases with zeros). Units: eV for H.

* ``hamil_abs``: for onsite H blocks, off-site ("hopping") H blocks and, when the model predicts
  it, all overlap blocks, the term ``(MAE + RMSE) / 2``; the loss is the mean of the terms.
* ``hamil_blas``: the same terms, but MAE and MSE first averaged per element type (onsite) or
  element pair (off-site) and then over types, so rare species weigh as much as common ones.
* ``hamil_wt``: ``hamil_blas`` with per-element ``onsite_weight`` and per-pair ``hopping_weight``
  (a number, or a dict element -> weight / ``"A-B"`` -> weight).

Band losses compare the eigenvalues of the predicted H(k) (``H c = E S c`` when the model predicts
the overlap) at the k-points of each frame with the frame's reference eigenvalues, following
DeePTB (``dptb/nnops/loss.py``), with the frame's ``bandinfo`` (:class:`eqtb.data.folder.BandInfo`):

* ``eigvals`` (:class:`EigvalsLoss`), per frame: drop the ``diff_valence`` lowest reference bands
  (electrons per element / ``spin_deg``); keep bands ``[band_min, band_max)`` of both; shift each
  set by its own minimum over the kept bands and k-points (*alignment*: energies are relative to
  the lowest kept band, so the absolute level of the model is free; eqtb's ``align: "none"`` leaves
  both as they are, for a model of a DFT code's own H and S, whose eigenvalues share the
  reference's energy zero: the band term then also fits that level); energies inside the energy
  window ``emin < E_ref < emax`` (eV, reference relative to its lowest kept band) give the mean-square error, those
  outside it the same times ``eout_weight``; ``diff_on`` adds ``diff_weight`` times the
  mean-square error of band-energy differences between random pairs of k-points (inside the
  window); a ``bandinfo.gap_penalty`` adds ``0.1 * MSE(1/(gap + loss_gap_eta))`` of the gap above
  band ``fermi_band``. ``bandinfo.weight`` weighs the k-points in the mean-square errors and
  ``bandinfo.loss_weight`` the frames in the batch mean. Loss unit: eV^2.
* ``eig_ham`` (:class:`EigHamLoss`): ``coeff_ham * block loss + (1 - coeff_ham) * eigvals loss``,
  the block loss being ``hamil_abs`` with the overlap term weighted ``coeff_ovp / coeff_ham``
  (DeePTB's weighting, well defined at ``coeff_ham = 0``). *Guard* (eqtb's, where DeePTB has
  none): a frame's band term is left out of the loss -- its blocks still count -- while its
  predicted bands are not comparable with the reference band by band: the predicted overlap S(k)
  is not positive definite at one of its k-points, or the mean absolute band error exceeds the
  width of the kept reference bands (all of them span less than the error). Such a frame's band
  gradient is meaningless and huge (errors of 10-10^3 eV after one Adam step at lr 5e-3 on an E3
  model of the Si64 frame: loss up to 1.8e6) and kept the run there; without it the block term trains
  the blocks, and the band term counts again as soon as the frame is comparable (DeePTB's loss
  wherever every frame is). Each frame is named in a warning the first time it is left out;
  ``band_skipped`` (a figure) is the share of frames left out, and ``band_mae_meV`` includes them
  (what the model predicts), except those with an indefinite S(k). The guard does not make a
  large learning rate safe for the band term: E3 models want block training first and a small
  rate for ``eig_ham`` (README).

``band_mae_meV`` is the mean absolute error of the aligned band energies inside the window (all
kept ones without a window), in meV.

A spinful model (nnsk ``soc``, :mod:`eqtb.models.sk`) has 2 norb bands, each one spin state: band
losses compare them with the reference band by band, as DeePTB does (the reference should then be a
noncollinear calculation); block losses see its spin-independent blocks only.

``skints`` (:class:`SkintsLoss`) fits an nnsk model's Slater-Koster integrals to the tables of a
DFTB parameter set (``skdata``: a folder of ``.skf`` files or DeePTB's ``.pth``, read as
:mod:`eqtb.models.dftbsk` reads it), on the bonds of the training structures (no reference
energies or blocks needed): the mean-square error of the onsite energies (one per atom and same-l
shell pair) plus that of the two-centre integrals of every directed bond (plus that of the overlap
integrals with ``common_options.overlap``). Unit: eV^2. DeePTB compares the same three groups, but
its tables enter its blocks as ``P B P`` (``P = (-1)^l``, :mod:`eqtb.models.dftbsk`): eqtb compares
the integrals as they enter the blocks, so the fitted model has the blocks of eqtb's dftbsk, and
its parameters of shell pairs with odd ``l_a + l_b`` have the opposite sign of DeePTB's fit of the
same tables (the same bands).

Departures from DeePTB v2: its ``diff_on`` term indexes the band arrays with one axis too many and
fills the in-window energies with zeros before differencing; eqtb differences the in-window
energies, which is what the option is documented to do.
"""

from __future__ import annotations

import warnings

import torch

from eqtb.basis import Basis
from eqtb.quantities import HAMILTONIAN, OVERLAP, SPIN_ORBIT
from eqtb.tb.bloch import BlochError, eigvalsh

__all__ = ["BLOCK_METHODS", "BAND_METHODS", "BlockLoss", "EigHamLoss", "EigvalsLoss", "LossError", "SkintsLoss",
           "SummedLoss", "build_loss"]

#: loss methods on blocks only, and those that need reference band energies
BLOCK_METHODS = ("hamil_abs", "hamil_blas", "hamil_wt")
BAND_METHODS = ("eigvals", "eig_ham")
#: DeePTB v1's factor of the gap penalty
GAP_PENALTY_WEIGHT = 0.1


class LossError(ValueError):
    """Loss options that cannot be used here, or band data that do not fit them."""


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


class SummedLoss(torch.nn.Module):
    """A loss computed from sums over a batch (module docstring, *Sums*). Subclasses define
    :meth:`sum_shapes`, :meth:`sums` and :meth:`combine`."""

    def sum_shapes(self) -> dict[str, tuple[int, ...]]:
        """{name: shape} of the tensors :meth:`sums` returns (the same for every batch)."""
        raise NotImplementedError

    def sums(self, pred: dict, batch) -> dict[str, torch.Tensor]:
        """Additive sums of ``batch`` (differentiable where the loss depends on the prediction)."""
        raise NotImplementedError

    def combine(self, sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, figures) from the sums of one batch, or of its parts added together."""
        raise NotImplementedError

    def zero_sums(self, dtype: torch.dtype, device=None) -> dict[str, torch.Tensor]:
        """The sums of no frames (a process whose share of a batch is empty)."""
        return {k: torch.zeros(shape, dtype=dtype, device=device) for k, shape in self.sum_shapes().items()}

    def evaluate(self, pred: dict, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, figures) of one batch."""
        return self.combine(self.sums(pred, batch))

    def forward(self, pred: dict, batch) -> torch.Tensor:
        return self.evaluate(pred, batch)[0]


def _group_sums(pred, target, mask, groups, n_groups: int, prefix: str) -> dict[str, torch.Tensor]:
    """{prefix_ae, prefix_se, prefix_n}: sums of |error|, error^2 and of the entries counted, per
    group of rows (``groups`` (B,) of rows (B, ...), ``mask`` the entries that exist)."""
    diff = (pred - target) * mask
    dims = tuple(range(1, diff.dim()))
    zeros = torch.zeros(n_groups, dtype=pred.dtype, device=pred.device)
    return {f"{prefix}_ae": zeros.index_add(0, groups, diff.abs().sum(dim=dims)),
            f"{prefix}_se": zeros.index_add(0, groups, (diff ** 2).sum(dim=dims)),
            f"{prefix}_n": zeros.index_add(0, groups, mask.sum(dim=dims).to(pred.dtype))}


class BlockLoss(SummedLoss):
    """Block loss for a model predicting ``quantity`` (and optionally the overlap). Sums: per term
    (``onsite``, ``hopping``[, ``overlap``]) the absolute errors, squared errors and entry counts of
    each element (onsite) or element pair (off-site, overlap)."""

    needs_blocks, needs_bands = True, False

    def __init__(self, basis: Basis, options: dict, quantity: str = "hamiltonian", overlap: bool = False):
        super().__init__()
        method = options.get("method", "hamil_abs")
        if method not in BLOCK_METHODS:
            raise LossError(f"loss method {method!r} is not a block loss (use {', '.join(BLOCK_METHODS)})")
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

    def _groups(self) -> dict[str, int]:
        """{term: number of groups}: elements (onsite), element pairs (hopping, overlap)."""
        T = self.basis.n_types
        return {"onsite": T, "hopping": T * T, **({"overlap": T * T} if self.overlap else {})}

    def sum_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{t}_{k}": (g,) for t, g in self._groups().items() for k in ("ae", "se", "n")}

    def sums(self, pred: dict, batch) -> dict[str, torch.Tensor]:
        types, i, j, targets = batch.inputs.types, batch.inputs.i, batch.inputs.j, batch.targets
        T = self.basis.n_types
        on_mask, off_mask = self._masks(types, i, j)
        a, b = types[i], types[j]
        on_groups, off_groups = types, torch.minimum(a, b) * T + torch.maximum(a, b)
        q = self.quantity
        out = {**_group_sums(pred[q][0], targets[q][0], on_mask, on_groups, T, "onsite"),
               **_group_sums(pred[q][1], targets[q][1], off_mask, off_groups, T * T, "hopping")}
        if self.overlap:
            ps, ts = pred[OVERLAP], targets[OVERLAP]
            p = torch.cat([ps[0].flatten(1), ps[1].flatten(1)])
            t = torch.cat([ts[0].flatten(1), ts[1].flatten(1)])
            m = torch.cat([on_mask.flatten(1), off_mask.flatten(1)])
            g = torch.cat([on_groups * (T + 1), off_groups])  # onsite type t -> pair (t, t)
            out.update(_group_sums(p, t, m, g, T * T, "overlap"))
        return out

    def terms(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms {"onsite", "hopping"[, "overlap"]}, each ``(MAE + RMSE) / 2`` (``hamil_abs``:
        over all entries; ``hamil_blas``/``hamil_wt``: per group, then the weighted mean over the
        groups present)."""
        weights = {"onsite": self.onsite_weight, "hopping": self.hopping_weight.flatten()}
        out = {}
        for t in self._groups():
            ae, se, n = sums[f"{t}_ae"], sums[f"{t}_se"], sums[f"{t}_n"]
            if self.method == "hamil_abs":
                total = n.sum().clamp(min=1)
                mae, mse = ae.sum() / total, se.sum() / total
            else:
                seen = n > 0
                w = weights[t].to(ae)[seen] if t in weights else 1.0
                mae = (w * ae[seen] / n[seen]).sum() / seen.sum()
                mse = (w * se[seen] / n[seen]).sum() / seen.sum()
            out[t] = 0.5 * (mae + (mse + 1e-30).sqrt())
        return out

    @torch.no_grad()
    def figures(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Plain MAE over existing entries (eV for H): {"onsite_mae", "hopping_mae"[, "overlap_mae"]}."""
        return {f"{t}_mae": float(sums[f"{t}_ae"].sum() / sums[f"{t}_n"].sum().clamp(min=1)) for t in self._groups()}

    def combine(self, sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(mean of the terms, block MAEs)."""
        terms = self.terms(sums)
        return sum(terms.values()) / len(terms), self.figures(sums)


class EigvalsLoss(SummedLoss):
    """DeePTB's ``eigvals`` loss (module docstring) for a model predicting H (and optionally S).
    ``options``: the ``loss_options.train`` dict (``diff_on``, ``eout_weight``, ``diff_weight``,
    ``diff_valence``, ``spin_deg``); ``overlap``: solve ``H c = E S c`` with the predicted S.
    Sums: the frames' losses times their ``loss_weight``, the weights, the absolute band errors and
    their count. ``diff_on`` draws its k-point pairs from torch's global generator, frame after
    frame: frames split over processes draw other pairs than one process does."""

    needs_blocks, needs_bands = False, True

    def __init__(self, basis: Basis, options: dict, quantity: str = HAMILTONIAN, overlap: bool = False):
        super().__init__()
        if quantity != HAMILTONIAN:
            raise LossError(f"loss method {options.get('method')!r} fits band energies, which need the Hamiltonian, "
                            f"but the model predicts the {quantity}")
        self.basis, self.overlap = basis, overlap
        self._warned: set[str] = set()  # frames the guard of sums has named in a warning
        self.align = options.get("align", "min")
        if self.align not in ("min", "none"):
            raise LossError(f"loss_options: align must be \"min\" or \"none\", got {self.align!r}")
        self.diff_on = bool(options.get("diff_on", False))
        self.eout_weight = float(options.get("eout_weight", 0.001))
        self.diff_weight = float(options.get("diff_weight", 0.01))
        self.spin_deg = int(options.get("spin_deg", 2))
        self.diff_valence = options.get("diff_valence") or {}
        unknown = [e for e in self.diff_valence if e not in basis.symbols]
        if unknown:
            raise LossError(f"diff_valence: elements {unknown} are not in the basis ({basis.symbols})")

    def frame_energies(self, pred: dict, batch, n: int) -> torch.Tensor:
        """Predicted band energies (nk, norb) in eV of sample ``n`` of ``batch`` at its k-points
        ((nk, 2 norb) for a spinful model: each band one spin state, compared with the reference
        band by band as DeePTB does); raises :class:`~eqtb.tb.bloch.BlochError` where its
        predicted S(k) is not positive definite."""
        inp, s = batch.inputs, batch.samples[n]
        a, e = inp.atom_offsets.tolist(), inp.edge_offsets.tolist()
        if s.bands is None:
            raise LossError(f"{s.name}: no reference band energies (set get_eigenvalues true)")
        lay, ph = s.bands.layout, s.bands.phases
        H = lay.bloch_sum(pred[HAMILTONIAN][0][a[n]:a[n + 1]], pred[HAMILTONIAN][1][e[n]:e[n + 1]], ph)
        S = lay.bloch_sum(pred[OVERLAP][0][a[n]:a[n + 1]], pred[OVERLAP][1][e[n]:e[n + 1]], ph) \
            if self.overlap else None
        if SPIN_ORBIT in pred:  # a spinful H (2 norb bands), S on both spins
            H = lay.spinful(H, pred[SPIN_ORBIT][a[n]:a[n + 1]])
            S = lay.spinful(S) if S is not None else None
        return eigvalsh(H, S)

    def _reference(self, sample) -> torch.Tensor:
        """The sample's reference bands without the ``diff_valence`` lowest ones."""
        ref = sample.bands.eigenvalues
        if not self.diff_valence:
            return ref
        missing = sorted(set(sample.structure.symbols) - set(self.diff_valence))
        if missing:
            raise LossError(f"loss_options: diff_valence has no entry for {', '.join(missing)} (frame {sample.name})")
        n = sum(self.diff_valence[sym] for sym in sample.structure.symbols)
        if n % self.spin_deg:
            raise LossError(f"loss_options: diff_valence gives {n} electrons in {sample.name}, not a multiple of "
                            f"spin_deg = {self.spin_deg}")
        if n // self.spin_deg >= ref.shape[1]:
            raise LossError(f"loss_options: diff_valence drops {n // self.spin_deg} bands but {sample.bands.source} "
                            f"has {ref.shape[1]}")
        return ref[:, n // self.spin_deg:]

    def sample_loss(self, eig: torch.Tensor, sample) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        """(loss in eV^2, sum of |errors| in eV, number of errors counted, width in eV of the kept
        aligned reference bands inside the window) of one frame with predicted band energies ``eig``
        (nk, norb)."""
        info, src = sample.bands.info, sample.bands.source
        ref = self._reference(sample).to(eig.dtype)
        up = min(eig.shape[1], ref.shape[1])
        lo, hi = info.band_min, info.band_max if info.band_max is not None else up
        if hi > up:
            raise LossError(f"{src}: bandinfo.band_max = {hi} but the model has {eig.shape[1]} bands and the "
                            f"reference {ref.shape[1]}" + (" after diff_valence" if self.diff_valence else ""))
        if lo >= hi:
            raise LossError(f"{src}: bandinfo.band_min = {lo} leaves no band below band_max = {hi}")
        p, r = eig[:, lo:hi], ref[:, lo:hi]
        window, zero = info.energy_window, r.min()
        if self.align == "min":
            p, r, zero = p - p.min(), r - zero, 0.0
        w = sample.bands.kweights.to(eig.dtype)[:, None].expand_as(r)
        inside = (r - zero > window[0]) & (r - zero < window[1]) if window else torch.ones_like(r, dtype=torch.bool)
        d2 = (p - r) ** 2

        def mse(mask):
            ww = w * mask
            return (ww * d2).sum() / ww.sum().clamp(min=torch.finfo(eig.dtype).tiny)

        loss = mse(inside) if inside.any() else eig.new_zeros(())
        if window and not inside.all():
            loss = loss + self.eout_weight * mse(~inside)
        nk = p.shape[0]
        if self.diff_on and nk > 1:
            ki = torch.randint(0, nk, (nk,), device=eig.device)
            kj = torch.randint(0, nk, (nk,), device=eig.device)
            both = inside[ki] & inside[kj]
            if both.any():
                dd = ((p[ki] - p[kj]) - (r[ki] - r[kj]))[both]
                loss = loss + self.diff_weight * (dd ** 2).mean()
        if info.gap_penalty:
            f = info.fermi_band
            if f + 1 >= p.shape[1]:
                raise LossError(f"{src}: bandinfo.fermi_band = {f} needs band {f + 1} inside the band window "
                                f"[{lo}, {hi})")
            gp, gr = p[:, f + 1] - p[:, f], r[:, f + 1] - r[:, f]
            eta = info.loss_gap_eta
            loss = loss + GAP_PENALTY_WEIGHT * ((1.0 / (gp + eta) - 1.0 / (gr + eta)) ** 2).mean()
        with torch.no_grad():
            err = (p - r).abs()[inside]
            width = float(r[inside].max() - r[inside].min()) if inside.any() else 0.0
        return loss, err.sum(), int(err.numel()), width

    def sum_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"band_loss": (), "band_weight": (), "band_abs": (), "band_count": (), "band_frames": (),
                "band_skipped": ()}

    def sums(self, pred: dict, batch, guard: bool = False) -> dict[str, torch.Tensor]:
        """The sums of ``batch``; ``guard`` (``eig_ham``'s guard, module docstring): frames whose
        predicted bands are not comparable with the reference are left out of ``band_loss`` and
        counted in ``band_skipped`` instead of raising (an indefinite S(k)), each named in a warning
        the first time."""
        out = self.zero_sums(pred[HAMILTONIAN][0].dtype, pred[HAMILTONIAN][0].device)
        for n, s in enumerate(batch.samples):
            out["band_frames"] += 1
            try:
                eig = self.frame_energies(pred, batch, n)
            except BlochError as err:
                if not guard:
                    raise LossError(f"{s.name}: the predicted {err}") from None
                self._skip(out, s, f"the predicted {err}")
                continue
            loss, abs_err, count, width = self.sample_loss(eig, s)
            out["band_abs"] += abs_err.to(out["band_abs"])
            out["band_count"] += count
            if guard and float(abs_err) > width * count:
                self._skip(out, s, f"its mean band error {float(abs_err) / count:.3g} eV exceeds the width of its kept "
                                   f"reference bands ({width:.3g} eV)")
                continue
            lw = s.bands.info.loss_weight
            out["band_loss"] = out["band_loss"] + lw * loss.to(out["band_loss"])
            out["band_weight"] += lw
        return out

    def _skip(self, out: dict, sample, why: str) -> None:
        out["band_skipped"] += 1
        if sample.name not in self._warned:
            self._warned.add(sample.name)
            warnings.warn(f"eig_ham: band term of frame {sample.name} left out (its blocks still count) while "
                          f"{why}; it counts again once the frame's bands are comparable (logged: band_skipped)",
                          stacklevel=2)

    def combine(self, sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(the frames' losses averaged with their ``bandinfo.loss_weight``, {"band_mae_meV"})."""
        w = sums["band_weight"]
        loss = sums["band_loss"] / torch.where(w == 0, torch.ones_like(w), w)
        info = {"band_mae_meV": 1e3 * float(sums["band_abs"]) / max(float(sums["band_count"]), 1.0)}
        return loss, info


class EigHamLoss(SummedLoss):
    """DeePTB's ``eig_ham``: ``coeff_ham * hamil_abs + (1 - coeff_ham) * eigvals`` (module
    docstring), the overlap term of ``hamil_abs`` weighted ``coeff_ovp / coeff_ham``. Sums: those
    of both losses."""

    needs_blocks, needs_bands = True, True

    def __init__(self, basis: Basis, options: dict, quantity: str = HAMILTONIAN, overlap: bool = False):
        super().__init__()
        self.blocks = BlockLoss(basis, {"method": "hamil_abs", "onsite_shift": options.get("onsite_shift", False)},
                                quantity, overlap)
        self.bands = EigvalsLoss(basis, options, quantity, overlap)
        self.coeff_ham = float(options.get("coeff_ham", 1.0))
        self.coeff_ovp = float(options.get("coeff_ovp", 1.0))

    def sum_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**self.blocks.sum_shapes(), **self.bands.sum_shapes()}

    def sums(self, pred: dict, batch) -> dict[str, torch.Tensor]:
        return {**self.blocks.sums(pred, batch), **self.bands.sums(pred, batch, guard=True)}

    def combine(self, sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, block MAEs, band MAE and ``band_skipped``, the share of frames whose band term the
        guard left out)."""
        terms = self.blocks.terms(sums)
        ham = self.coeff_ham * (terms["onsite"] + terms["hopping"]) / len(terms)
        if "overlap" in terms:
            ham = ham + self.coeff_ovp * terms["overlap"] / len(terms)
        eig, info = self.bands.combine(sums)
        info["band_skipped"] = float(sums["band_skipped"]) / max(float(sums["band_frames"]), 1.0)
        return ham + (1.0 - self.coeff_ham) * eig, {**self.blocks.figures(sums), **info}


class SkintsLoss(SummedLoss):
    """DeePTB's ``skints`` (module docstring): an nnsk model's integrals and onsite energies against
    the tables of ``options["skdata"]`` (a relative path from the current directory, as DeePTB).
    :meth:`predict` replaces the model's forward: it returns the integrals of the model and of the
    tables for the same bonds. Sums: per group (``onsite``, ``hopping``[, ``overlap``]) the squared
    and absolute errors and their count."""

    needs_blocks, needs_bands = False, False

    def __init__(self, basis: Basis, options: dict, quantity: str = HAMILTONIAN, overlap: bool = False):
        super().__init__()
        from eqtb.models.base import ModelError
        from eqtb.models.dftbsk import DftbSlaterKoster
        from eqtb.models.sk import onsite_pairs

        if quantity != HAMILTONIAN:
            raise LossError(f"loss method 'skints' fits Hamiltonian integrals, but the model predicts the {quantity}")
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            self.tables = DftbSlaterKoster(basis, options["skdata"], overlap=overlap)
        except ModelError as err:
            raise LossError(f"loss method 'skints': {err}") from None
        finally:
            torch.set_default_dtype(default)
        self.basis, self.overlap = basis, overlap
        pairs = onsite_pairs(basis)
        F = basis.full_norb
        place = torch.zeros(len(pairs), F, F, dtype=torch.float64)
        mask = torch.zeros(basis.n_types, len(pairs), dtype=torch.bool)
        for k, (a, b) in enumerate(pairs):
            oa, ob = basis.shell_offset[a], basis.shell_offset[b]
            place[k, oa:oa + a.dim, ob:ob + b.dim] = torch.eye(a.dim, dtype=torch.float64) / a.dim
            for t, e in enumerate(basis.elements):
                mask[t, k] = a in e.shells and b in e.shells
        self.register_buffer("place", place, persistent=False)  # block -> energy of each same-l shell pair
        self.register_buffer("pair_mask", mask, persistent=False)

    def _energies(self, model, parts, inputs) -> torch.Tensor:
        """(N, K) onsite energies (eV) of every atom and same-l shell pair of a model's features."""
        onsite = next(p.onsite[HAMILTONIAN] for p in parts if HAMILTONIAN in p.onsite)
        blocks = model.heads()[HAMILTONIAN].onsite(onsite, inputs.types)
        return torch.einsum("nij,kij->nk", blocks, self.place.to(blocks))

    def predict(self, model, inputs) -> dict:
        """{"hopping": (model, tables) (2E, n_integrals) integrals of the directed bonds [fwd; rev],
        "onsite": (model, tables, mask) (N, K) onsite energies, ["overlap": (model, tables)]}."""
        from eqtb.models.sk import SlaterKoster

        if not isinstance(model, SlaterKoster):
            raise LossError(f"loss method 'skints' fits the integrals of an nnsk model, not of a {model.family} model")
        parts = list(model.features(inputs))
        with torch.no_grad():
            ref = list(self.tables.features(inputs))
        out = {"hopping": tuple(torch.cat([p.offsite[HAMILTONIAN] for p in ps]) for ps in (parts, ref)),
               "onsite": (self._energies(model, parts, inputs), self._energies(self.tables, ref, inputs).detach(),
                          self.pair_mask[inputs.types])}
        if self.overlap:
            out["overlap"] = tuple(torch.cat([p.offsite[OVERLAP] for p in ps]) for ps in (parts, ref))
        return out

    def sum_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{t}_{k}": () for t in ("onsite", "hopping", "overlap")[:2 + self.overlap] for k in ("se", "ae", "n")}

    def sums(self, pred: dict, batch) -> dict[str, torch.Tensor]:
        e, e_ref, mask = pred["onsite"]
        terms = {"onsite": (e[mask], e_ref[mask].to(e)), "hopping": pred["hopping"]}
        if "overlap" in pred:
            terms["overlap"] = pred["overlap"]
        out = {}
        for t, (p, r) in terms.items():
            d = p - r.to(p)
            out.update({f"{t}_se": (d ** 2).sum(), f"{t}_ae": d.detach().abs().sum(),
                        f"{t}_n": torch.tensor(float(d.numel()), dtype=p.dtype, device=p.device)})
        return out

    def combine(self, sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss in eV^2: the sum of the groups' mean-square errors, {"onsite_mae", "hopping_mae"[,
        "overlap_mae"]})."""
        groups = [t for t in ("onsite", "hopping", "overlap") if f"{t}_se" in sums]
        loss = sum(sums[f"{t}_se"] / sums[f"{t}_n"] for t in groups)
        return loss, {f"{t}_mae": float(sums[f"{t}_ae"] / sums[f"{t}_n"]) for t in groups}


def build_loss(basis: Basis, options: dict, quantity: str = HAMILTONIAN,
               overlap: bool = False) -> BlockLoss | EigvalsLoss | EigHamLoss | SkintsLoss:
    """The loss of a ``loss_options.train`` dict (validated, defaults filled) for a model
    predicting ``quantity`` and, when ``overlap``, the overlap. Its ``needs_blocks`` /
    ``needs_bands`` say which references the data must provide."""
    method = options.get("method", "hamil_abs")
    if method in BLOCK_METHODS:
        return BlockLoss(basis, options, quantity, overlap)
    if method == "eigvals":
        return EigvalsLoss(basis, options, quantity, overlap)
    if method == "eig_ham":
        return EigHamLoss(basis, options, quantity, overlap)
    if method == "skints":
        return SkintsLoss(basis, options, quantity, overlap)
    raise LossError(f"loss method {method!r} is not supported yet (supported: "
                    f"{', '.join(BLOCK_METHODS + BAND_METHODS)}, skints)")

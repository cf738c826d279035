"""DeePTB's ``skf2nnsk``: an nnsk model fitted to the Slater-Koster tables of a DFTB parameter set,
run by ``eqtb train`` on DeePTB's skf2nnsk input unchanged (DeePTB runs it as ``dptb skf2nnsk``).

The input (DeePTB 2.2.1's ``normalize_skf2nnsk`` schema)::

    {"common_options": {"basis": "auto" | {...}, "skdata": "tables.pth" | "slakos/", "device", "dtype", "seed"},
     "model_options": {"method": "poly4pow", "rs": null | number, "w": 0.2, "atomic_radius": "cov"},
     "train_options": {"nstep", "nsample", "max_elmt_batch", "dis_freq", "save_freq", "optimizer", "lr_scheduler"}}

``skdata``: DeePTB's ``.pth`` dict of tables or a folder of ``A-B.skf`` files (a relative path from
the working folder, as DeePTB, else from the input's folder), read as :mod:`eqtb.models.dftbsk`
reads them. ``basis`` ``"auto"``: every element of the tables with the shells ``s`` up to the
highest l the tables hold (DeePTB: ``["s", "p", "d"]`` for every element; the same for the
simple-format tables of its example).

**The model**: an nnsk model (:mod:`eqtb.models.sk`) of the basis with the hopping form ``method``,
``w``, ``atomic_radius``, and ``rs`` one radius or, when null, DeePTB's per-bond radius (the
largest distance where an H integral of ``A-B`` or ``B-A`` still exceeds 0.01 eV in magnitude,
rounded to 0.01 Angstrom); onsite ``uniform_noref`` holding the tables' free-atom energies (not
fitted), and overlap integrals of the same form.

**The fit** (DeePTB's ``DFTB2NNSK.optimize``): every step visits the ordered element pairs in a
random order, ``max_elmt_batch^2`` pairs per optimizer step; for each pair ``nsample`` bond lengths
are drawn from a normal distribution truncated to [r_min, r_max] (centred, sigma the width of the
range; r_min the mean covalent radius of the pair, r_max the pair's rs), and the loss is
``MAE + RMSE`` of the H integrals plus ``15 (MAE + RMSE)`` of the S integrals; the learning rate
steps once per step. The integrals are compared as they enter the blocks (as the ``skints`` loss,
:mod:`eqtb.train.loss`): the fitted model gives the blocks of eqtb's dftbsk of the same tables, and
its parameters of shell pairs with odd ``l_a + l_b`` have the opposite sign of DeePTB's fit (same
bands). DeePTB reads ``nsample`` under the misspelled key ``n_samples`` (so always 256); eqtb reads
``nsample``.

**Outputs** (as ``eqtb train``'s): ``OUT/train_config.json`` (the input), ``OUT/checkpoint/
nnsk.latest.pth`` (every ``save_freq`` steps and at the end) and ``nnsk.best.pth`` (lowest step
loss) -- eqtb nnsk checkpoints, which ``eqtb run``, ``eqtb.load`` and ``eqtb train -i`` take (a
model of another basis, e.g. ``["3s", "3p", "d*"]``, starts from the shells it shares, DeePTB's
``dptb esk``) --, ``OUT/log/history.jsonl`` (one line per step: ``epoch`` = step, ``train_loss``,
``train_hopping_mae``, ``train_overlap_mae`` in eV / dimensionless) and ``OUT/log/log.txt``.
``init_model``: an eqtb nnsk checkpoint of the same basis and options, or DeePTB's own fit
(``best_df2sk.pth``: ``hopping_params``, ``overlap_params``; its parameters change sign as said).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from eqtb import __version__
from eqtb.basis import Basis
from eqtb.data.sk_tables import atomic_radius as table_radius
from eqtb.data.skf import SHELL_LETTERS, SKFError, read_skdata, skdata_cutoffs
from eqtb.models.base import ModelError
from eqtb.models.dftbsk import DftbSlaterKoster
from eqtb.models.sk import HOPPING_FORMS, SlaterKoster, onsite_pairs
from eqtb.train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from eqtb.train.optim import Scheduler, TrainOptionsError, build_optimizer

__all__ = ["Skf2NnskError", "bond_ranges", "fit_skf", "is_skf2nnsk_input"]

log = logging.getLogger("eqtb.train")

#: the keys of DeePTB's skf2nnsk input and their defaults (None: required)
_SCHEMA = {
    "common_options": {"basis": "auto", "skdata": None, "device": "cpu", "dtype": "float32", "seed": 3982377700},
    "model_options": {"method": "poly2pow", "rs": "auto", "w": 0.2, "atomic_radius": "cov"},
    "train_options": {"nstep": None, "nsample": 256, "max_elmt_batch": 4, "dis_freq": 1, "save_freq": 1,
                      "optimizer": {}, "lr_scheduler": {}},
}
#: DeePTB's weight of the overlap terms of the loss
OVERLAP_WEIGHT = 15.0
#: an H integral above this (eV) marks a bond length as inside DeePTB's per-bond rs
RS_THRESHOLD = 0.01


class Skf2NnskError(ValueError):
    """An skf2nnsk input that cannot be run (keys, tables, checkpoint)."""


def is_skf2nnsk_input(path) -> bool:
    """True when the JSON file ``path`` is a DeePTB skf2nnsk input (``common_options.skdata`` and
    ``train_options.nstep``), not a training config."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(obj, dict) and isinstance(obj.get("common_options"), dict)
            and "skdata" in obj["common_options"] and isinstance(obj.get("train_options"), dict)
            and "nstep" in obj["train_options"])


def _options(obj: dict, source: str) -> dict:
    """The input with DeePTB's defaults filled; :class:`Skf2NnskError` naming unknown or missing keys."""
    problems, out = [], {}
    unknown = sorted(set(obj) - set(_SCHEMA))
    problems += [f"{k}: unknown section (skf2nnsk takes {', '.join(_SCHEMA)})" for k in unknown]
    for section, keys in _SCHEMA.items():
        given = obj.get(section)
        if not isinstance(given, dict):
            problems.append(f"{section}: missing (an object)")
            continue
        problems += [f"{section}.{k}: unknown key (allowed: {', '.join(keys)})" for k in sorted(set(given) - set(keys))]
        problems += [f"{section}.{k}: required" for k, v in keys.items() if v is None and k not in given]
        out[section] = {**keys, **given}
    if problems:
        raise Skf2NnskError(f"{source}: " + "; ".join(problems))
    mo = out["model_options"]
    if mo["method"] not in HOPPING_FORMS:
        raise Skf2NnskError(f"{source}: model_options.method {mo['method']!r} is not a hopping form "
                            f"({', '.join(HOPPING_FORMS)})")
    if mo["rs"] == "auto":
        mo["rs"] = None
    return out


def _resolve(name: str, source: Path) -> Path:
    """A file name of the input: from the working folder (DeePTB), else from the input's folder."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists():
        return path
    beside = source.parent / path
    return beside if beside.exists() else path


def _symbols(skdata: Path) -> list[str]:
    try:
        bonds = skdata_cutoffs(skdata)
    except SKFError as err:
        raise Skf2NnskError(f"common_options.skdata: {err}") from None
    out: list[str] = []
    for bond in bonds:
        a, b = bond.split("-")
        if a == b and a not in out:
            out.append(a)
    return out


def bond_ranges(tables: dict, symbols: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """DeePTB's ``cal_rmin_rmax_bondwise``: ``({"A-B": r_min}, {"A-B": r_max})`` (Angstrom) of every
    ordered pair: r_min the mean covalent radius, r_max the largest tabulated distance where an H
    integral of A-B or B-A exceeds :data:`RS_THRESHOLD` in magnitude (the last distance if none
    does), both rounded to 0.01 Angstrom."""
    def last(t) -> float:
        big = np.flatnonzero((np.abs(t.hamiltonian) >= RS_THRESHOLD).any(axis=1))
        return float(t.distances[big[-1]] if len(big) else t.distances[-1])

    r_min, r_max = {}, {}
    for a in symbols:
        for b in symbols:
            r_max[f"{a}-{b}"] = round(max(last(tables[a, b]), last(tables[b, a])), 2)
            r_min[f"{a}-{b}"] = round(0.5 * (table_radius(a, "cov") + table_radius(b, "cov")), 2)
    return r_min, r_max


def _truncated_normal(rng: torch.Generator, n: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(len(lo), n) samples of N((lo + hi) / 2, (hi - lo)^2) truncated to [lo, hi] (DeePTB's sampler
    with stdsigma 0.5), by inverting the CDF."""
    lo, hi = lo[:, None], hi[:, None]
    mean, std = (lo + hi) / 2, (hi - lo)
    u = torch.rand((len(lo), n), generator=rng, dtype=lo.dtype)
    c_lo = torch.erf((lo - mean) / (std * math.sqrt(2))) / 2 + 0.5
    c_hi = torch.erf((hi - mean) / (std * math.sqrt(2))) / 2 + 0.5
    return torch.erfinv(2 * (c_lo + u * (c_hi - c_lo)) - 1) * math.sqrt(2) * std + mean


class _Fit:
    """The model, the tables, the optimizer of one skf2nnsk run."""

    def __init__(self, opts: dict, source: Path, out: Path, init_model=None):
        co, mo, to = opts["common_options"], opts["model_options"], opts["train_options"]
        if str(co["device"]).startswith("cuda") and not torch.cuda.is_available():
            raise Skf2NnskError(f"{source}: common_options.device is {co['device']!r} but CUDA is not available")
        self.device = torch.device(co["device"])
        self.dtype = torch.float64 if co["dtype"] == "float64" else torch.float32
        self.seed = int(co["seed"])
        torch.manual_seed(self.seed)
        self.rng = torch.Generator().manual_seed(self.seed)
        self.order = np.random.default_rng(self.seed % 2**32)
        skdata = _resolve(co["skdata"], source)
        symbols = _symbols(skdata)
        try:
            tables = read_skdata(skdata, symbols)
        except SKFError as err:
            raise Skf2NnskError(f"{source}: common_options.skdata: {err}") from None
        basis = co["basis"]
        if basis == "auto":
            basis = {s: [SHELL_LETTERS[ell] for ell in range(tables[s, s].max_l + 1)] for s in symbols}
        try:
            self.basis = Basis(basis)
        except ValueError as err:
            raise Skf2NnskError(f"{source}: common_options.basis: {err}") from None
        sym = self.basis.symbols
        self.r_min, r_max = bond_ranges(tables, sym)
        rs = mo["rs"] if mo["rs"] is not None else r_max
        self.r_max = {k: float(rs if not isinstance(rs, dict) else rs[k]) for k in r_max}
        hopping = {"method": mo["method"], "rs": rs, "w": mo["w"]}
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            self.model = SlaterKoster(self.basis, hopping, {"method": "uniform_noref"}, std=1.0,
                                      atomic_radius=mo["atomic_radius"], overlap=True)
            self.tables = DftbSlaterKoster(self.basis, str(skdata), overlap=True)
        except ModelError as err:
            raise Skf2NnskError(f"{source}: {err}") from None
        finally:
            torch.set_default_dtype(default)
        self.options = {"nnsk": {"onsite": {"method": "uniform_noref"}, "hopping": hopping, "std": 1.0,
                                 "atomic_radius": mo["atomic_radius"], "freeze": False, "push": False}}
        pairs = onsite_pairs(self.basis)
        with torch.no_grad():  # the free atoms' levels, kept
            for t, element in enumerate(self.basis.elements):
                for shell in element.shells:
                    self.model.onsite_params[t, pairs.index((shell, shell)), 0] = \
                        float(tables[element.symbol, element.symbol].onsite[shell.l])
        self.model.onsite_params.requires_grad_(False)
        self.model.overlap_onsite.requires_grad_(False)
        if init_model is not None:
            self._init(init_model)
        self.model.to(self.device)
        self.tables.to(self.device)
        params = [self.model.hopping.params, self.model.overlap_hopping.params]
        try:
            self.optimizer = build_optimizer(params, to["optimizer"])
            self.scheduler = Scheduler(self.optimizer, to["lr_scheduler"])
        except TrainOptionsError as err:
            raise Skf2NnskError(f"{source}: {err}") from None
        T = self.basis.n_types
        self.pairs = torch.arange(T * T)
        self.lo = torch.tensor([self.r_min[f"{sym[p // T]}-{sym[p % T]}"] for p in range(T * T)], dtype=self.dtype)
        self.hi = torch.tensor([self.r_max[f"{sym[p // T]}-{sym[p % T]}"] for p in range(T * T)], dtype=self.dtype)
        self.nsample, self.per_step = int(to["nsample"]), int(to["max_elmt_batch"]) ** 2
        self.ckpt = CheckpointManager(out / "checkpoint", "nnsk", 1)
        self.common = {"basis": self.basis.spec, "overlap": True, "device": str(co["device"]),
                       "dtype": co["dtype"], "seed": self.seed}

    def _init(self, path) -> None:
        """Start from an eqtb nnsk checkpoint or DeePTB's fit (module docstring)."""
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 -- torch raises many kinds here
            raise Skf2NnskError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None
        if isinstance(obj, dict) and "hopping_params" in (obj.get("model_state_dict") or {}):
            from eqtb.models.deeptb import load_nnsk_state

            saved = Basis(obj["config"]["basis"])
            if saved != self.basis:
                raise Skf2NnskError(f"{path}: DeePTB's fit has the basis {saved.spec}, the input {self.basis.spec}")
            sd = obj["model_state_dict"]
            T, K = self.basis.n_types, len(onsite_pairs(self.basis))
            keep = self.model.onsite_params.detach().clone()
            try:
                load_nnsk_state(self.model, {"hopping_param": sd["hopping_params"], "overlap_param": sd["overlap_params"],
                                             "onsite_param": torch.zeros(T, K, 1)})
            except ModelError as err:
                raise Skf2NnskError(f"{path}: {err}") from None
            with torch.no_grad():
                self.model.onsite_params.copy_(keep)
                for table in (self.model.hopping, self.model.overlap_hopping):
                    for row, (_, _, a, b, _) in enumerate(table.keys):
                        table.params[row] *= (-1) ** (a.l + b.l)  # DeePTB's parity (module docstring)
            self.model.train()
            return
        try:
            state = load_checkpoint(path)
            self.model.init_from(state.get("model_family", "nnsk"), state["model_state_dict"], state["config"])
        except (CheckpointError, ModelError, KeyError) as err:
            raise Skf2NnskError(f"{path}: {err}") from None

    def loss(self, pairs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """DeePTB's loss on ``nsample`` random bond lengths of each ordered type pair ``pairs``."""
        r = _truncated_normal(self.rng, self.nsample, self.lo[pairs], self.hi[pairs]).to(self.device).reshape(-1)
        pair = pairs.to(self.device).repeat_interleave(self.nsample)
        out, info = 0.0, {}
        for name, table, ref, weight in (("hopping", self.model.hopping, self.tables.h_table, 1.0),
                                         ("overlap", self.model.overlap_hopping, self.tables.s_table, OVERLAP_WEIGHT)):
            fit = self.model.bond_integrals(table, r, pair, overlap=name == "overlap")
            with torch.no_grad():
                target = self.tables.bond_integrals(ref, r, pair).to(fit)
            d = fit - target
            mae, rmse = d.abs().mean(), (d.pow(2).mean() + 1e-30).sqrt()
            out = out + weight * (mae + rmse)
            info[f"{name}_mae"] = float(mae.detach())
        return out, info

    def state(self, step: int) -> dict:
        from eqtb.config import CommonOptions, ModelOptions

        config = {"common_options": CommonOptions.model_validate(self.common).model_dump(),
                  "model_options": ModelOptions.model_validate(self.options).model_dump()}
        return {"config": config, "model_state_dict": self.model.state_dict(), "eqtb_version": __version__,
                "model_family": "nnsk", "quantity": "hamiltonian", "epoch": step, "iteration": step,
                "task": "skf2nnsk"}


def fit_skf(path, out, nstep: int | None = None, init_model=None, max_time: float | None = None,
            progress: bool = True) -> dict:
    """Run the skf2nnsk input ``path`` (module docstring) into the folder ``out``; ``nstep``
    overrides ``train_options.nstep``. Returns a summary like :meth:`eqtb.train.trainer.Trainer.run`'s."""
    from tqdm import tqdm

    path, out = Path(path), Path(out)
    try:
        obj = json.loads(path.read_text())
    except ValueError as err:
        raise Skf2NnskError(f"{path}: not valid JSON ({err})") from None
    opts = _options(obj, str(path))
    to = opts["train_options"]
    nstep = int(nstep if nstep is not None else to["nstep"])
    fit = _Fit(opts, path, out, init_model)
    (out / "log").mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(opts, indent=2))
    handler = logging.FileHandler(out / "log" / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    n_pairs = len(fit.pairs)
    log.info(f"eqtb {__version__} skf2nnsk: {fit.basis.spec}, {n_pairs} element pairs, {nstep} steps")
    t0, best, stop, step = time.perf_counter(), None, "done", 0
    bar = tqdm(total=nstep, desc="skf2nnsk", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        with open(out / "log" / "history.jsonl", "w") as history:
            for step in range(1, nstep + 1):
                order = torch.as_tensor(fit.order.permutation(n_pairs))
                losses, infos = [], []
                for k in range(0, n_pairs, fit.per_step):
                    loss, info = fit.loss(order[k:k + fit.per_step])
                    fit.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    fit.optimizer.step()
                    losses.append(float(loss.detach()))
                    infos.append(info)
                total = float(np.mean(losses))
                if not math.isfinite(total):
                    raise Skf2NnskError(f"{path}: the fit diverged at step {step}; lower the learning rate")
                fit.scheduler.after_epoch(total)
                rec = {"epoch": step, "iteration": step, "lr": fit.scheduler.lr, "train_loss": total,
                       **{f"train_{k}": float(np.mean([i[k] for i in infos])) for k in infos[0]}}
                history.write(json.dumps(rec) + "\n")
                history.flush()
                if fit.ckpt.is_improvement(total):
                    fit.ckpt.save_best(fit.state(step), total)
                    best = total
                if step % int(to["save_freq"]) == 0:
                    fit.ckpt.save_latest(fit.state(step))
                if step % int(to["dis_freq"]) == 0 or step == nstep:
                    line = (f"step {step:>6d}  lr {rec['lr']:.2e}  loss {total:.4e}  H MAE {rec['train_hopping_mae']:.4f} "
                            f"eV  S MAE {rec['train_overlap_mae']:.5f}")
                    log.info(line)
                    if progress:
                        bar.write(line)
                bar.update(1)
                if max_time is not None and time.perf_counter() - t0 > max_time:
                    stop = f"time limit {max_time:g} s reached"
                    break
    except KeyboardInterrupt:
        stop = "interrupted"
    finally:
        bar.close()
        fit.ckpt.save_latest(fit.state(step))
        log.removeHandler(handler)
        handler.close()
    return {"epochs": step, "iterations": step, "stop": stop,
            "seconds": time.perf_counter() - t0, "best_metric": best, "latest": str(fit.ckpt.latest_path),
            "best": str(fit.ckpt.best_path)}

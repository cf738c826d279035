"""The training loop behind ``eqtb train``.

Reads a DeePTB-style configuration (:mod:`eqtb.config`), loads the datasets once into aligned
samples (:mod:`eqtb.train.data`), computes the per-element output normalisation from the training
targets (:mod:`eqtb.data.stats`), builds the model (:func:`eqtb.models.build_model`) and trains it
with the configured optimizer, scheduler and loss.

Epochs and iterations are counted from 1, like DeePTB. The order of the training frames in epoch
``n`` is a permutation drawn from ``seed + n`` alone, so a run restarted from a checkpoint
(``restart``) continues with exactly the losses the uninterrupted run would have had.

Outputs in ``out_dir``: ``train_config.json`` (the configuration with defaults filled),
``checkpoint/<name>.latest.pth`` (every ``save_freq`` iterations, at the end, on Ctrl-C and on the
time limit), ``<name>.best.pth`` (lowest validation loss, else training loss, checked every
``validation_freq`` epochs), ``<name>.iter<N>.pth`` (every ``save_freq`` iterations, the newest
``max_ckpt`` kept), ``log/log.txt`` (one line per display step) and ``log/history.jsonl`` (the same
figures as JSON lines). All checkpoints are written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from eqtb import __version__
from eqtb.basis import Basis
from eqtb.config import (
    ConfigError,
    TrainConfig,
    basis_from_config,
    config_from_dict,
    config_to_dict,
    resolve_root,
)
from eqtb.data.stats import operator_stats
from eqtb.models import ModelError, build_model
from eqtb.models.assembly import to_operators
from eqtb.models.base import family_class, family_name
from eqtb.models.inputs import ModelInputs, collate
from eqtb.operator import Operator
from eqtb.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from eqtb.quantities import DATA_FLAGS
from eqtb.train.data import Sample, load_samples
from eqtb.train.loss import BlockLoss
from eqtb.train.optim import Scheduler, build_optimizer

log = logging.getLogger("eqtb.train")


class TrainError(ValueError):
    """A training run that cannot start (inconsistent config, data or checkpoint)."""


def quantities_of(cfg: TrainConfig) -> tuple[str, list[str]]:
    """(main quantity, all quantities to load) from the data flags and ``common_options.overlap``."""
    flags = cfg.data_options.train
    wanted = [q for q, f in DATA_FLAGS.items() if getattr(flags, f)]
    if "hamiltonian" in wanted:
        main = "hamiltonian"
    elif "density_matrix" in wanted:
        main = "density_matrix"
    else:
        raise TrainError(f"{cfg.source}: data_options.train: set get_Hamiltonian (or get_DM) to true")
    load = [main]
    if cfg.common_options.overlap:
        if not flags.get_overlap:
            raise TrainError(f"{cfg.source}: common_options.overlap is true but data_options.train.get_overlap is false")
        load.append("overlap")
    return main, load


def sample_operator(s: Sample, basis: Basis, quantity: str) -> Operator:
    """The aligned targets of a sample as an Operator (bonds within the cutoff only)."""
    inp = s.inputs
    return to_operators(s.structure, basis, inp.i, inp.j, inp.R, {quantity: s.targets[quantity]})[quantity]


def _batch(samples: list[Sample]):
    inputs = collate([s.inputs for s in samples])
    targets = {q: tuple(torch.cat([s.targets[q][k] for s in samples]) for k in range(2)) for q in samples[0].targets}
    return inputs, targets


class Trainer:
    """One training run; :meth:`run` trains and returns a summary dict."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, restart: str | Path | None = None,
                 init_model: str | Path | None = None, progress: bool = True):
        self.out = Path(out_dir)
        self.progress = progress
        self.restart_state = None
        if restart is not None:
            self.restart_state = load_checkpoint(restart)
            saved = config_from_dict(self.restart_state["config"], source=str(restart))
            if cfg.model_options is None:
                cfg.model_options = saved.model_options
            if cfg.train_options is None:
                cfg.train_options = saved.train_options
        init_state = load_checkpoint(init_model) if init_model is not None else None
        if init_state is not None and cfg.model_options is None:
            cfg.model_options = config_from_dict(init_state["config"], source=str(init_model)).model_options
        if cfg.train_options is None or cfg.model_options is None:
            raise TrainError(f"{cfg.source}: model_options and train_options are required without a checkpoint")
        self.cfg = cfg
        self.opts = cfg.train_options
        common = cfg.common_options
        self.device = torch.device(common.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TrainError(f"{cfg.source}: common_options.device is {common.device!r} but CUDA is not available")
        self.dtype = torch.float64 if common.dtype == "float64" else torch.float32
        self.seed = int(common.seed)
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        self.basis = basis_from_config(cfg)
        plain = config_to_dict(cfg)
        try:
            self.family = family_name(plain["model_options"])
            self.r_max = family_class(plain["model_options"]).cutoff_of(plain["model_options"])
        except ModelError as exc:
            raise ConfigError(cfg.source, "model_options", str(exc)) from None
        self.quantity, self.quantities = quantities_of(cfg)

        self.train_set = self._load("train")
        self.val_set = self._load("validation") if cfg.data_options.validation is not None else []
        stats = None
        if self.restart_state is None and init_state is None:
            stats = {q: operator_stats((sample_operator(s, self.basis, q) for s in self.train_set), self.basis)
                     for q in self.quantities}
        try:
            self.model = build_model(plain, stats, self.quantity).to(device=self.device, dtype=self.dtype)
        except ModelError as exc:
            raise ConfigError(cfg.source, "model_options", str(exc)) from None
        if stats is not None:
            self.model.calibrate([s.inputs for s in self.train_set])
        if init_state is not None:
            self._load_weights(init_state, init_model)
        self.loss_fn = BlockLoss(self.basis, plain["train_options"]["loss_options"]["train"],
                                 self.quantity, common.overlap).to(self.device)
        opts = plain["train_options"]
        self.optimizer = build_optimizer(self.model.parameters(), opts["optimizer"])
        self.scheduler = Scheduler(self.optimizer, opts["lr_scheduler"], update_lr_per_iter=opts["update_lr_per_iter"],
                                   sliding_win_size=opts["sliding_win_size"])
        self.ckpt = CheckpointManager(self.out / "checkpoint", self.family, self.opts.max_ckpt)
        self.epoch = 0
        self.iteration = 0
        if self.restart_state is not None:
            self._restore(self.restart_state, restart)

    # ------------------------------------------------------------------ setup
    def _load(self, which: str) -> list[Sample]:
        ds = getattr(self.cfg.data_options, which)
        root = resolve_root(ds.root, self.cfg.path, f"data_options.{which}.root")
        samples = load_samples(root, ds.prefix, self.basis, self.r_max, self.quantities, ds.separator, ds.type,
                               dtype=self.dtype, progress=self.progress)
        if not samples:
            raise TrainError(f"{self.cfg.source}: data_options.{which}: no frames found under {root} "
                             f"with prefix {ds.prefix!r}")
        for s in samples:
            s.inputs = s.inputs.to(self.device, self.dtype)
            s.targets = {q: (a.to(self.device), b.to(self.device)) for q, (a, b) in s.targets.items()}
        return samples

    def _load_weights(self, state: dict, path) -> None:
        saved = Basis(state["config"]["common_options"]["basis"])
        if saved != self.basis:
            raise TrainError(f"{path}: the model's basis {saved.spec} differs from the config's {self.basis.spec}")
        try:
            self.model.load_state_dict(state["model_state_dict"])
        except RuntimeError as err:
            raise TrainError(f"{path}: weights do not fit the configured model ({str(err).splitlines()[0]})") from None

    def _restore(self, state: dict, path) -> None:
        self._load_weights(state, path)
        try:
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
            self.scheduler.load_state_dict(state["lr_scheduler_state_dict"])
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot restore the optimizer/scheduler ({err})") from None
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.ckpt.load_state_dict(state.get("checkpoints", {}))
        set_rng_state(state["rng"])

    def state(self) -> dict:
        return {"config": config_to_dict(self.cfg), "model_state_dict": self.model.state_dict(),
                "optimizer_state_dict": self.optimizer.state_dict(),
                "lr_scheduler_state_dict": self.scheduler.state_dict(), "epoch": self.epoch,
                "iteration": self.iteration, "rng": rng_state(), "checkpoints": self.ckpt.state_dict(),
                "eqtb_version": __version__, "quantity": self.quantity, "model_family": self.family,
                "task": "hamiltonians"}

    # ------------------------------------------------------------------ steps
    def _step(self, batch: list[Sample]) -> tuple[float, dict]:
        inputs, targets = _batch(batch)
        self.model.train()
        pred = self.model(inputs)
        loss, info = self._loss(pred, targets, inputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), info

    def _loss(self, pred, targets, inputs: ModelInputs):
        loss = self.loss_fn(pred, targets, inputs.types, inputs.i, inputs.j)
        with torch.no_grad():
            info = self.loss_fn.mae(pred, targets, inputs.types, inputs.i, inputs.j)
        return loss, info

    @torch.no_grad()
    def validate(self) -> tuple[float, dict]:
        self.model.eval()
        sets = self.val_set[:self.opts.val_batch_size] if self.opts.valid_fast else self.val_set
        losses, infos = [], []
        for k in range(0, len(sets), self.opts.val_batch_size):
            inputs, targets = _batch(sets[k:k + self.opts.val_batch_size])
            loss, info = self._loss(self.model(inputs), targets, inputs)
            losses.append(float(loss))
            infos.append(info)
        return float(np.mean(losses)), {k: float(np.mean([i[k] for i in infos])) for k in infos[0]}

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "log").mkdir(exist_ok=True)
        save_atomic_json(config_to_dict(self.cfg), self.out / "train_config.json")
        handler = logging.FileHandler(self.out / "log" / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        history = open(self.out / "log" / "history.jsonl", "a")
        writer = self._tensorboard()
        o = self.opts
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(f"eqtb {__version__}: {len(self.train_set)} training frames, {len(self.val_set)} validation "
                 f"frames, {n_params} parameters, device {self.device}, {self.dtype}")
        start, t0 = self.epoch, time.perf_counter()
        stop_reason = "done"
        best = None
        bar = tqdm(total=o.num_epoch, initial=start, desc="training", unit="epoch", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            for epoch in range(start + 1, o.num_epoch + 1):
                te = time.perf_counter()
                order = np.random.default_rng(self.seed + epoch).permutation(len(self.train_set))
                losses, infos = [], []
                for b in range(0, len(order), o.batch_size):
                    loss, info = self._step([self.train_set[k] for k in order[b:b + o.batch_size]])
                    if not math.isfinite(loss):
                        raise TrainError(f"training diverged at epoch {epoch} (loss {loss}); "
                                         f"lower the learning rate (checkpoint of the last good state kept)")
                    losses.append(loss)
                    infos.append(info)
                    self.iteration += 1
                    self.scheduler.after_iteration(loss)
                    self.model.after_iteration(self.iteration)
                    if self.iteration % o.save_freq == 0:
                        self.epoch = epoch - 1 if b + o.batch_size < len(order) else epoch
                        self.ckpt.save_iter(self.state(), self.iteration)
                self.epoch = epoch
                train_loss = float(np.mean(losses))
                rec = {"epoch": epoch, "iteration": self.iteration, "lr": self.scheduler.lr, "train_loss": train_loss}
                rec.update({f"train_{k}": float(np.mean([i[k] for i in infos])) for k in infos[0]})
                metric = train_loss
                if epoch % o.validation_freq == 0:
                    if self.val_set:
                        val_loss, vinfo = self.validate()
                        rec["val_loss"] = metric = val_loss
                        rec.update({f"val_{k}": v for k, v in vinfo.items()})
                    if self.ckpt.is_improvement(metric):
                        self.ckpt.save_best(self.state(), metric)
                        best = metric
                self.scheduler.after_epoch(rec.get("val_loss", train_loss))
                rec["seconds"] = time.perf_counter() - te
                if epoch % o.display_freq == 0 or epoch == o.num_epoch:
                    self._display(rec, bar, history, writer)
                bar.update(1)
                if o.max_time is not None and time.perf_counter() - t0 > o.max_time:
                    stop_reason = f"time limit {o.max_time:g} s reached"
                    break
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        finally:
            bar.close()
            self.ckpt.save_latest(self.state())
            history.close()
            if writer is not None:
                writer.close()
        summary = {"epochs": self.epoch, "iterations": self.iteration, "stop": stop_reason,
                   "seconds": time.perf_counter() - t0, "best_metric": self.ckpt.best_metric if best is None else best,
                   "latest": str(self.ckpt.latest_path), "best": str(self.ckpt.best_path)}
        log.info(f"stopped after epoch {self.epoch} ({stop_reason}); latest checkpoint {self.ckpt.latest_path}")
        log.removeHandler(handler)
        handler.close()
        return summary

    def _display(self, rec: dict, bar, history, writer) -> None:
        parts = [f"epoch {rec['epoch']:>5d}", f"lr {rec['lr']:.2e}", f"loss {rec['train_loss']:.3e}"]
        if "val_loss" in rec:
            parts.append(f"val {rec['val_loss']:.3e}")
        for k, unit in (("onsite", " meV"), ("hopping", " meV"), ("overlap", " (x1e-3)")):
            if f"train_{k}_mae" in rec:
                parts.append(f"{k} MAE {rec[f'train_{k}_mae'] * 1e3:.3f}{unit}")
        parts.append(f"{rec['seconds']:.2f} s")
        line = "  ".join(parts)
        log.info(line)
        if self.progress:
            bar.write(line)
        history.write(json.dumps(rec) + "\n")
        history.flush()
        if writer is not None:
            for k, v in rec.items():
                if k not in ("epoch", "iteration"):
                    writer.add_scalar(k, v, rec["epoch"])

    def _tensorboard(self):
        if not self.opts.use_tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainError(f"{self.cfg.source}: train_options.use_tensorboard is true but the tensorboard "
                             f"package is not installed (pip install tensorboard)") from None
        return SummaryWriter(str(self.out / "tensorboard_logs"))


def save_atomic_json(data: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)

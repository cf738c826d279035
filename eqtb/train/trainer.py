"""The training loop behind ``eqtb train``.

Reads a DeePTB-style configuration (:mod:`eqtb.config`), loads the datasets once into aligned
samples (:mod:`eqtb.train.data`), computes the per-element output normalisation from the training
targets (:mod:`eqtb.data.stats`; none when only eigenvalues are loaded: the model is then built
without statistics), builds the model (:func:`eqtb.models.build_model`) and trains it with the
configured optimizer, scheduler and loss (:func:`eqtb.train.loss.build_loss`: block losses on H/S
targets, ``eigvals`` on reference band energies, ``eig_ham`` on both).

What is loaded follows ``data_options.train``: ``get_Hamiltonian`` / ``get_DM`` (target blocks of
the main quantity), ``get_overlap`` (overlap targets, with ``common_options.overlap``) and
``get_eigenvalues`` (``eigenvalues.npy`` + ``kpoints.npy`` with the folder's ``bandinfo``). A
dataset of structures and eigenvalues alone trains a model of the Hamiltonian (and, with
``common_options.overlap``, of the overlap that enters ``H c = E S c``) on band energies.

Epochs and iterations are counted from 1, like DeePTB. The order of the training frames in epoch
``n`` is a permutation drawn from ``seed + n`` alone, and a checkpoint written inside an epoch
records the batches already done, so a run restarted from any checkpoint (``restart``) continues
with exactly the losses the uninterrupted run would have had. ``init_model`` starts a new run from
the weights of a checkpoint (DeePTB's ``-i``, e.g. its tutorials' chains input_1 -> input_2 ->
input_3, whose hopping cutoffs, bases and onsite modes may differ): the configured model is built
and starts from the checkpoint as its family decides (:meth:`eqtb.models.base.OperatorModel.init_from`:
the same model loads as saved; nnsk takes what it shares with a model of another basis or onsite
mode, as DeePTB; mix starts from nnsk), else :class:`TrainError` says what differs.

A reference set (``data_options.reference``), as in DeePTB: every optimizer step adds to the
batch's loss the loss (``loss_options.reference``, else ``loss_options.train``) of
``ref_batch_size`` reference frames drawn afresh for that step (DeePTB 2.2.1 builds the reference
loss but evaluates reference batches with the training loss; the two are the same in its examples).

Outputs in ``out_dir``: ``train_config.json`` (the configuration with defaults filled),
``checkpoint/<name>.latest.pth`` (every ``save_freq`` iterations, at the end, on Ctrl-C and on the
time limit), ``<name>.best.pth`` (lowest loss over the *whole* validation set -- also with
``valid_fast``, logged as ``val_loss_whole`` --, else the lowest training loss, checked every
``validation_freq`` epochs, and at the last epoch when none was saved yet), ``<name>.iter<N>.pth`` (every ``save_freq`` iterations, the newest
``max_ckpt`` kept), ``log/log.txt`` (one line per display step) and ``log/history.jsonl`` (the same
figures as JSON lines: losses in the loss's unit -- eV for block losses, eV^2 for ``eigvals`` --,
``*_onsite_mae``/``*_hopping_mae`` in eV, ``*_overlap_mae`` dimensionless, ``*_band_mae_meV`` in
meV, ``seconds`` and ``cpu_seconds`` the epoch's wall and process CPU time; a restart drops the
lines of epochs after its checkpoint). All checkpoints are written atomically. ``max_time`` and
``max_cpu_time`` stop a run at the end of the first epoch after which the wall time, or the CPU
time of the process (``time.process_time``, all threads), spent in the training loop since this
run started exceeds them.

Several processes (``torchrun --nproc_per_node N -m eqtb.cli train ...``, :mod:`eqtb.distributed`):
every process loads the datasets and builds the same model (rank 0's weights are broadcast), and
each batch of ``batch_size`` frames (the *global* batch, so that N processes take the same
optimizer steps as one) is split into N contiguous shares (:func:`eqtb.distributed.share`), one
per process. Each process computes the loss sums of its share (:class:`eqtb.train.loss.SummedLoss`);
the sums are added over the processes, every process combines the totals into the batch's loss,
and the gradients are summed over the processes before the optimizer step. The losses, figures
and weights are then those of one process (up to the order of floating-point additions) for the
block, ``eigvals``, ``eig_ham`` and ``skints`` losses (``diff_on`` excepted: its random k-point
pairs are drawn per process). Reference and validation batches are split the same way, so the
logged validation figures are those of the whole validation set. Rank 0 alone writes the
configuration, logs, TensorBoard files and checkpoints and shows progress; a restart (``-r``) reads
the checkpoint in every process. A process whose share of a batch is empty (fewer frames than
processes) adds zero sums. The gradients are summed by :func:`eqtb.distributed.all_reduce_grads`
after the backward pass rather than by ``DistributedDataParallel``: the loss of a batch depends on
sums over every process's frames, ``skints`` calls the model's features and heads and not its
forward, and which parameters receive gradients differs between the shares (the bond types present),
all of which DDP's per-forward bookkeeping and gradient averaging do not fit; the models are small,
so overlapping the reduction with the backward pass gains little.

The ``rop`` scheduler (stepped per epoch) steps on the validation loss when there is a validation
set -- the latest one, computed every ``validation_freq`` epochs and once at the end of the first
epoch of a run that has none yet -- and on the epoch's training loss otherwise, never on a mix.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from eqtb import __version__
from eqtb.basis import Basis
from eqtb.config import (
    ConfigError,
    ConfigWarning,
    TrainConfig,
    basis_from_config,
    config_from_dict,
    config_to_dict,
    resolve_root,
)
from eqtb.data.stats import operator_stats
from eqtb.distributed import (
    all_reduce_grads,
    all_reduce_sums,
    broadcast_flag,
    broadcast_module,
    is_main,
    setup,
    share,
    world_size,
)
from eqtb.models import ModelError, build_model, check_revision
from eqtb.models.assembly import to_operators
from eqtb.models.base import family_class, family_name, state_mismatch
from eqtb.operator import Operator
from eqtb.quantities import DATA_FLAGS, DENSITY_MATRIX, HAMILTONIAN, OVERLAP
from eqtb.structure import pair_cutoffs
from eqtb.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    resume_path,
    rng_state,
    set_rng_state,
)
from eqtb.train.data import Sample, load_samples, make_batch
from eqtb.train.loss import LossError, build_loss
from eqtb.train.optim import Scheduler, build_optimizer

log = logging.getLogger("eqtb.train")


class TrainError(ValueError):
    """A training run that cannot start (inconsistent config, data or checkpoint)."""


def quantities_of(cfg: TrainConfig) -> tuple[str, list[str], bool]:
    """(main quantity the model predicts, quantities whose target blocks are loaded, whether
    reference band energies are loaded) from ``data_options.train`` and ``common_options.overlap``.
    Band energies alone make the Hamiltonian the main quantity, with no target blocks; so does the
    ``skints`` loss, which needs the structures only."""
    flags = cfg.data_options.train
    wanted = [q for q, f in DATA_FLAGS.items() if getattr(flags, f)]
    bands = bool(flags.get_eigenvalues)
    skints = cfg.train_options is not None and cfg.train_options.loss_options.train.method == "skints"
    if HAMILTONIAN in wanted or ((bands or skints) and DENSITY_MATRIX not in wanted):
        main = HAMILTONIAN
    elif DENSITY_MATRIX in wanted:
        main = DENSITY_MATRIX
    else:
        raise TrainError(f"{cfg.source}: data_options.train: set get_Hamiltonian, get_DM or get_eigenvalues to true")
    load = [main] if main in wanted else []
    if cfg.common_options.overlap and flags.get_overlap:
        load.append(OVERLAP)
    return main, load, bands


def sample_operator(s: Sample, basis: Basis, quantity: str) -> Operator:
    """The aligned targets of a sample as an Operator (bonds within the cutoff only)."""
    inp = s.inputs
    return to_operators(s.structure, basis, inp.i, inp.j, inp.R, {quantity: s.targets[quantity]})[quantity]


def _trim_history(path: Path, epoch: int) -> None:
    """Keep the lines of ``path`` (history.jsonl) of epochs up to ``epoch`` (atomic rewrite)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("epoch", 0) <= epoch]
    if len(kept) != len(lines):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


class Trainer:
    """One training run; :meth:`run` trains and returns a summary dict."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, restart: str | Path | None = None,
                 init_model: str | Path | None = None, progress: bool = True):
        self.out = Path(out_dir)
        self.restart_state = None
        if restart is not None:
            restart = resume_path(restart)
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
        if torch.device(common.device).type == "cuda" and not torch.cuda.is_available():
            raise TrainError(f"{cfg.source}: common_options.device is {common.device!r} but CUDA is not available")
        self.device = setup(common.device)  # this process's device; joins the group of a torchrun launch
        self.main = is_main()  # the process that writes files and shows progress
        self.progress = progress and self.main
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
        self.r_max = self._graph_cutoff(plain["model_options"])
        self.quantity, self.quantities, self.bands = quantities_of(cfg)
        loss_options = plain["train_options"]["loss_options"]["train"]
        try:
            self.loss_fn = build_loss(self.basis, loss_options, self.quantity, common.overlap).to(self.device)
        except LossError as exc:
            raise ConfigError(cfg.source, "train_options.loss_options.train", str(exc)) from None
        self._check_data_for_loss(loss_options["method"])
        if self.loss_fn.needs_bands and (plain["model_options"].get("nnsk") or {}).get("soc"):
            warnings.warn(f"{cfg.source}: model_options.nnsk.soc makes the model spinful: the band loss compares its "
                          "2 norb spin states with the reference bands one by one (as DeePTB), so the reference "
                          "must come from a noncollinear (spin-orbit) calculation; bands of a spinless one hold "
                          "both spins each and would have to be listed twice", ConfigWarning, stacklevel=2)
        self.ref_loss_fn = None
        if cfg.data_options.reference is not None:  # DeePTB: a reference batch's loss joins every step
            ref_options = plain["train_options"]["loss_options"].get("reference") or loss_options
            try:
                self.ref_loss_fn = build_loss(self.basis, ref_options, self.quantity, common.overlap).to(self.device)
            except LossError as exc:
                raise ConfigError(cfg.source, "train_options.loss_options.reference", str(exc)) from None

        self.train_set = self._load("train")
        self.val_set = self._load("validation") if cfg.data_options.validation is not None else []
        self.ref_set = self._load("reference", self.ref_loss_fn) if self.ref_loss_fn is not None else []
        stats = None
        if self.restart_state is None and init_state is None and self.quantities:
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
        broadcast_module(self.model)  # the same weights in every process (already so from the seed)
        opts = plain["train_options"]
        if not any(p.requires_grad for p in self.model.parameters()):
            raise TrainError(f"{cfg.source}: model_options: the {self.family} model has no trainable parameters "
                             f"(all fixed or frozen): nothing to train")
        self.optimizer = build_optimizer(self.model.parameters(), opts["optimizer"])
        self.scheduler = Scheduler(self.optimizer, opts["lr_scheduler"], update_lr_per_iter=opts["update_lr_per_iter"],
                                   sliding_win_size=opts["sliding_win_size"])
        self.ckpt = CheckpointManager(self.out / "checkpoint", self.family, self.opts.max_ckpt, write=self.main)
        self.epoch = 0
        self.iteration = 0
        self.last_val_loss: float | None = None  # the latest validation loss (the rop metric)
        self._progress: dict | None = None  # the current epoch's batches so far: {"losses", "infos"}
        if self.restart_state is not None:
            self._restore(self.restart_state, restart)

    # ------------------------------------------------------------------ setup
    def _graph_cutoff(self, model_options: dict):
        """The cutoff (Angstrom; a number or ``{"A-B": radius}``) of the training graphs: the model's,
        and for nnsk raised to ``data_options.r_max`` where that is larger. An nnsk ``push`` that grows
        ``rs`` or ``w`` reaches bonds beyond the starting cutoff, which only a graph built out to
        ``data_options.r_max`` holds (the model zeroes bonds beyond its current cutoff itself); without
        it such a push is warned about and the graphs stay at the starting cutoff, as DeePTB's do."""
        r_max = self.cfg.data_options.r_max
        if self.family != "nnsk":
            return self.r_max
        push = model_options["nnsk"].get("push")
        if r_max is None:
            if isinstance(push, dict) and (push.get("rs_thr", 0) > 0 or push.get("w_thr", 0) > 0):
                warnings.warn(f"{self.cfg.source}: model_options.nnsk.push grows rs or w, but without "
                              f"data_options.r_max the training graphs hold the bonds up to the starting cutoff "
                              f"{self.r_max} Angstrom only (as DeePTB's): longer bonds never enter; set "
                              "data_options.r_max to the longest bond the pushed model should reach",
                              ConfigWarning, stacklevel=2)
            return self.r_max
        sym = self.basis.symbols
        try:
            cut = np.maximum(pair_cutoffs(self.r_max, sym), pair_cutoffs(r_max, sym))
        except ValueError as exc:
            raise ConfigError(self.cfg.source, "data_options.r_max", str(exc)) from None
        if np.allclose(cut, cut.flat[0], rtol=0, atol=1e-12):
            return float(cut.flat[0])
        return {f"{a}-{b}": float(cut[x, y]) for x, a in enumerate(sym) for y, b in enumerate(sym) if x <= y}

    def _check_data_for_loss(self, method: str) -> None:
        """The training data provide what the loss compares."""
        key = f"{self.cfg.source}: train_options.loss_options.train.method {method!r}"
        if self.loss_fn.needs_blocks and self.quantity not in self.quantities:
            raise TrainError(f"{key} compares {self.quantity} blocks: set data_options.train."
                             f"{DATA_FLAGS[self.quantity]} to true")
        if self.loss_fn.needs_blocks and self.cfg.common_options.overlap and OVERLAP not in self.quantities:
            raise TrainError(f"{self.cfg.source}: common_options.overlap is true but data_options.train.get_overlap "
                             f"is false (the {method!r} loss compares overlap blocks)")
        if self.loss_fn.needs_bands and not self.bands:
            raise TrainError(f"{key} fits band energies: set data_options.train.get_eigenvalues to true")

    def _load(self, which: str, loss_fn=None) -> list[Sample]:
        ds = getattr(self.cfg.data_options, which)
        root = resolve_root(ds.root, self.cfg.path, f"data_options.{which}.root")
        loss_fn = loss_fn or self.loss_fn
        samples = load_samples(root, ds.prefix, self.basis, self.r_max, self.quantities, ds.separator, ds.type,
                               eigenvalues=self.bands and loss_fn.needs_bands, dtype=self.dtype,
                               progress=self.progress)
        if not samples:
            raise TrainError(f"{self.cfg.source}: data_options.{which}: no frames found under {root} "
                             f"with prefix {ds.prefix!r}")
        for s in samples:
            s.inputs = s.inputs.to(self.device, self.dtype)
            s.targets = {q: (a.to(self.device), b.to(self.device)) for q, (a, b) in s.targets.items()}
            if s.bands is not None:
                s.bands = s.bands.to(self.device, self.dtype)
        return samples

    def _load_weights(self, state: dict, path, init: bool = True) -> None:
        """The checkpoint's weights into the model: ``init`` (``-i``) lets the model decide how it
        starts from them (:meth:`eqtb.models.base.OperatorModel.init_from`: nnsk from another basis or
        onsite mode as DeePTB, mix from nnsk); a restart (``-r``) needs the same model."""
        family = state.get("model_family") or family_name(state["config"]["model_options"])
        if family == self.family:
            try:
                check_revision(type(self.model), state)
            except ModelError as err:
                raise TrainError(f"{path}: {err}") from None
        if init:
            try:
                self.model.init_from(family, state["model_state_dict"], state["config"])
            except ModelError as err:
                if family != self.family:
                    raise TrainError(f"{path}: the checkpoint holds a {family!r} model but the config builds a "
                                     f"{self.family!r} model: {err}") from None
                raise TrainError(f"{path}: {err}") from None
            return
        saved = Basis(state["config"]["common_options"]["basis"])
        if saved != self.basis:
            raise TrainError(f"{path}: the model's basis {saved.spec} differs from the config's {self.basis.spec}")
        problems = state_mismatch(self.model, state["model_state_dict"])
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise TrainError(f"{path}: the checkpoint's weights do not fit the configured {self.family} model: "
                             f"{'; '.join(problems[:5])}{more}")
        self.model.load_state_dict(state["model_state_dict"])

    def _restore(self, state: dict, path) -> None:
        self._load_weights(state, path, init=False)
        try:
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
            self.scheduler.load_state_dict(state["lr_scheduler_state_dict"])
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot restore the optimizer/scheduler ({err}); a checkpoint of an "
                                  f"earlier eqtb whose model had fewer weights (e.g. without the onsite pair term) "
                                  f"is continued with -i") from None
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.ckpt.load_state_dict(state.get("checkpoints", {}))
        self.last_val_loss = state.get("last_val_loss")
        self._progress = state.get("epoch_progress")
        set_rng_state(state["rng"])

    def state(self) -> dict:
        """The checkpoint dict: weights, optimizer and scheduler states, counters (``epoch``: epochs
        completed; ``epoch_progress``: the losses of the batches done in the next epoch, None at an
        epoch's end), random state, and what the model is."""
        return {"config": config_to_dict(self.cfg), "model_state_dict": self.model.state_dict(),
                "optimizer_state_dict": self.optimizer.state_dict(),
                "lr_scheduler_state_dict": self.scheduler.state_dict(), "epoch": self.epoch,
                "iteration": self.iteration, "rng": rng_state(), "checkpoints": self.ckpt.state_dict(),
                "last_val_loss": self.last_val_loss, "epoch_progress": self._progress,
                "eqtb_version": __version__, "quantity": self.quantity, "model_family": self.family,
                "model_revision": self.model.revision,
                "task": "hamiltonians" if self.quantities else "eigenvalues"}

    def _save_iter(self) -> None:
        """``<name>.iter<N>.pth`` and ``<name>.latest.pth`` of the current state."""
        state = self.state()
        self.ckpt.save_iter(state, self.iteration)
        self.ckpt.save_latest(state)

    # ------------------------------------------------------------------ steps
    def _step(self, samples: list[Sample]) -> tuple[float, dict]:
        """One optimizer step on the (global) batch ``samples``; with a reference set, plus the loss
        of a batch of ``ref_batch_size`` reference frames drawn afresh for every step (DeePTB's
        semantics), from ``seed`` and the iteration alone (so that a restart, and every process,
        draws the same ones)."""
        self.model.train()
        loss, info = self._loss(samples)
        if self.ref_set:
            rng = np.random.default_rng([self.seed % 2**32, self.iteration])
            pick = rng.permutation(len(self.ref_set))[:self.opts.ref_batch_size]
            ref_loss, _ = self._loss([self.ref_set[k] for k in pick], self.ref_loss_fn)
            loss = loss + ref_loss
            info = {**info, "ref_loss": float(ref_loss.detach())}
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # not in a process whose shares are empty
            loss.backward()
        all_reduce_grads(self.model.parameters())
        self.optimizer.step()
        return float(loss.detach()), info

    def _loss(self, samples: list[Sample], loss_fn=None):
        """(loss, info) of the model on the (global) batch ``samples``: this process's share of
        the frames gives its sums (the loss's own ``predict`` -- ``skints``: integrals -- where it
        has one, else the model's blocks), the sums of all processes are added and combined."""
        loss_fn = loss_fn or self.loss_fn
        mine = share(samples)
        try:
            if mine:
                batch = make_batch(mine)
                predict = getattr(loss_fn, "predict", None)
                pred = predict(self.model, batch.inputs) if predict is not None else self.model(batch.inputs)
                sums = loss_fn.sums(pred, batch)
            else:
                sums = loss_fn.zero_sums(self.dtype, self.device)
            return loss_fn.combine(all_reduce_sums(sums))
        except LossError as exc:
            raise TrainError(str(exc)) from None

    @torch.no_grad()
    def validate(self, whole: bool = False) -> tuple[float, dict]:
        """(loss, MAEs) on the validation set: its first batch when ``valid_fast`` (DeePTB's
        semantics, for the logged ``val_loss`` and the rop scheduler) unless ``whole``."""
        self.model.eval()
        fast = self.opts.valid_fast and not whole
        sets = self.val_set[:self.opts.val_batch_size] if fast else self.val_set
        losses, infos = [], []
        for k in range(0, len(sets), self.opts.val_batch_size):
            loss, info = self._loss(sets[k:k + self.opts.val_batch_size])
            losses.append(float(loss))
            infos.append(info)
        return float(np.mean(losses)), {k: float(np.mean([i[k] for i in infos])) for k in infos[0]}

    def _rop_needs_validation(self) -> bool:
        """A validation set, a per-epoch ``rop`` scheduler and no validation loss yet."""
        return bool(self.val_set) and self.scheduler.type == "rop" and not self.scheduler.update_lr_per_iter \
            and self.last_val_loss is None

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        from tqdm import tqdm

        handler = history = writer = None
        if self.main:  # one writer: the other processes of a torchrun launch write nothing
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "log").mkdir(exist_ok=True)
            save_atomic_json(config_to_dict(self.cfg), self.out / "train_config.json")
            handler = logging.FileHandler(self.out / "log" / "log.txt")
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            _trim_history(self.out / "log" / "history.jsonl", self.epoch)
            history = open(self.out / "log" / "history.jsonl", "a")
            writer = self._tensorboard()
        o = self.opts
        n_params = sum(p.numel() for p in self.model.parameters())
        procs = f", {world_size()} processes" if world_size() > 1 else ""
        log.info(f"eqtb {__version__}: {len(self.train_set)} training frames, {len(self.val_set)} validation "
                 f"frames, {n_params} parameters, device {self.device}{procs}, {self.dtype}")
        start, t0, c0 = self.epoch, time.perf_counter(), time.process_time()
        stop_reason = "done"
        best = None
        diverged = False
        bar = tqdm(total=o.num_epoch, initial=start, desc="training", unit="epoch", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            for epoch in range(start + 1, o.num_epoch + 1):
                te, ce = time.perf_counter(), time.process_time()
                order = np.random.default_rng(self.seed + epoch).permutation(len(self.train_set))
                batches = [order[b:b + o.batch_size] for b in range(0, len(order), o.batch_size)]
                done = self._progress or {"losses": [], "infos": []}
                losses, infos = list(done["losses"]), list(done["infos"])
                save_at_end = False
                for nb in range(len(losses), len(batches)):
                    loss, info = self._step([self.train_set[k] for k in batches[nb]])
                    if not math.isfinite(loss):
                        diverged = True
                        raise TrainError(f"training diverged at epoch {epoch} (loss {loss}); lower the learning "
                                         f"rate (the checkpoints of the last good state are kept)")
                    losses.append(loss)
                    infos.append(info)
                    self.iteration += 1
                    self.scheduler.after_iteration(loss)
                    self.model.after_iteration(self.iteration)
                    self._progress = {"losses": losses, "infos": infos}
                    if self.iteration % o.save_freq == 0:
                        if nb + 1 < len(batches):
                            self._save_iter()
                        else:  # the epoch's end: save once its scheduler step and validation are done
                            save_at_end = True
                self.epoch = epoch
                self._progress = None
                train_loss = float(np.mean(losses))
                rec = {"epoch": epoch, "iteration": self.iteration, "lr": self.scheduler.lr, "train_loss": train_loss}
                rec.update({f"train_{k}": float(np.mean([i[k] for i in infos])) for k in infos[0]})
                # the last epoch checks too when no best exists yet (a run shorter than
                # validation_freq still leaves the best.pth that a next step's -i names)
                validation_epoch = epoch % o.validation_freq == 0 or (
                    epoch == o.num_epoch and not self.ckpt.best_path.exists())
                if self.val_set and (validation_epoch or self._rop_needs_validation()):
                    val_loss, vinfo = self.validate()
                    rec["val_loss"] = self.last_val_loss = val_loss
                    rec.update({f"val_{k}": v for k, v in vinfo.items()})
                if validation_epoch:
                    metric = train_loss
                    if self.val_set:  # best: the loss over the whole validation set
                        metric = (self.validate(whole=True)[0] if len(self.val_set) > o.val_batch_size
                                  and o.valid_fast else self.last_val_loss)
                        rec["val_loss_whole"] = metric
                    if self.ckpt.is_improvement(metric):
                        self.ckpt.save_best(self.state(), metric)
                        best = metric
                self.scheduler.after_epoch(self.last_val_loss if self.val_set else train_loss)
                if save_at_end:
                    self._save_iter()
                rec["seconds"] = time.perf_counter() - te
                rec["cpu_seconds"] = time.process_time() - ce
                if self.main and (epoch % o.display_freq == 0 or epoch == o.num_epoch):
                    self._display(rec, bar, history, writer)
                bar.update(1)
                over = [f"{name} limit {limit:g} s reached" for name, limit, used in
                        (("time", o.max_time, time.perf_counter() - t0),
                         ("CPU time", o.max_cpu_time, time.process_time() - c0))
                        if limit is not None and used > limit]
                if broadcast_flag(bool(over)):  # rank 0 decides
                    stop_reason = over[0] if over else "time limit reached on rank 0"
                    break
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        finally:
            bar.close()
            if not diverged:
                self.ckpt.save_latest(self.state())
            if history is not None:
                history.close()
            if writer is not None:
                writer.close()
        summary = {"epochs": self.epoch, "iterations": self.iteration, "stop": stop_reason,
                   "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                   "best_metric": self.ckpt.best_metric if best is None else best,
                   "latest": str(self.ckpt.latest_path), "best": str(self.ckpt.best_path)}
        log.info(f"stopped after epoch {self.epoch} ({stop_reason}); latest checkpoint {self.ckpt.latest_path}")
        if handler is not None:
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
        if "train_band_mae_meV" in rec:
            parts.append(f"band MAE {rec['train_band_mae_meV']:.2f} meV")
        if "val_band_mae_meV" in rec:
            parts.append(f"val band MAE {rec['val_band_mae_meV']:.2f} meV")
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

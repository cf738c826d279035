"""Optimizers and learning-rate schedules built from DeePTB ``train_options`` dictionaries.

``train_options.optimizer`` and ``train_options.lr_scheduler`` (FORMATS.md section 5.4) are
variants on ``type``. The accepted keys and their defaults are those of the configuration schema
(:mod:`eqtb.config`: :class:`~eqtb.config.AdamOptions`, :class:`~eqtb.config.ExpLR`, ...), which
holds DeePTB's defaults; they are *not* always PyTorch's (e.g. ``linear`` has ``end_factor`` 1/3
and ``cyclic`` has ``mode`` ``"exp_range"``). The builders also take plain, unvalidated dicts:
unknown types and keys raise :class:`TrainOptionsError` with the closest valid spelling, and values
are checked by PyTorch.

eqtb extensions: optimizer ``AdamW`` (PyTorch defaults, ``weight_decay`` 0.01) and scheduler key
``warmup_epochs`` (default 0, see :class:`Scheduler`). ``LBFGS``, accepted by DeePTB's schema, is
refused: it needs a loss closure re-evaluated several times per step, which eqtb's trainer does not
provide.
"""

from __future__ import annotations

import collections
import copy
import math
from typing import Any

import torch
from pydantic import BaseModel
from torch.optim import lr_scheduler as _lrs

from eqtb.config import (
    AdamOptions,
    AdamWOptions,
    CosineLR,
    CyclicLR,
    ExpLR,
    LinearLR,
    ReduceOnPlateauLR,
    RMSpropOptions,
    SGDOptions,
    TrainOptions,
)
from eqtb.hints import did_you_mean


class TrainOptionsError(ValueError):
    """An optimizer or learning-rate scheduler option that cannot be used."""


#: optimizer type -> (schema model holding its keys and defaults, torch class)
_OPTIMIZERS: dict[str, tuple[type[BaseModel], type[torch.optim.Optimizer]]] = {
    "Adam": (AdamOptions, torch.optim.Adam), "AdamW": (AdamWOptions, torch.optim.AdamW),
    "SGD": (SGDOptions, torch.optim.SGD), "RMSprop": (RMSpropOptions, torch.optim.RMSprop)}

#: scheduler type -> (schema model holding its keys and defaults, torch class)
_SCHEDULERS: dict[str, tuple[type[BaseModel], type]] = {
    "exp": (ExpLR, _lrs.ExponentialLR), "linear": (LinearLR, _lrs.LinearLR),
    "rop": (ReduceOnPlateauLR, _lrs.ReduceLROnPlateau), "cos": (CosineLR, _lrs.CosineAnnealingLR),
    "cyclic": (CyclicLR, _lrs.CyclicLR)}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: marks a key without default that must be given (cyclic ``base_lr``/``max_lr``)
REQUIRED = _Required()


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Key -> default (a fresh copy; :data:`REQUIRED` for keys without one) of a schema model of
    :mod:`eqtb.config`, in declaration order, without its variant tag ``type``."""
    return {name: REQUIRED if field.is_required() else field.get_default(call_default_factory=True)
            for name, field in model.model_fields.items() if name != "type"}


def _train_default(key: str) -> Any:
    """The schema's default of ``train_options.<key>`` (a section: its variant ``type``)."""
    value = TrainOptions.model_fields[key].get_default(call_default_factory=True)
    return value.type if isinstance(value, BaseModel) else value


#: keys accepted by DeePTB's schema that PyTorch no longer takes (checked, then dropped)
_CYCLIC_DROPPED = ("last_epoch", "verbose", "scale_fn")


def _resolve(kind: str, options: dict | None, variants: dict[str, tuple[type[BaseModel], type]],
             default_type: str, refused: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Split ``options`` into (type, keyword arguments with the schema's defaults filled in);
    raises TrainOptionsError for a non-dict, an unknown or refused type, an unknown key or a
    missing required key."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TrainOptionsError(f"train_options.{kind} must be a dict with a 'type' key, got "
                                f"{type(options).__name__}")
    kwargs = dict(options)
    typ = kwargs.pop("type", default_type)
    if typ in refused:
        raise TrainOptionsError(f"train_options.{kind}: type {typ!r} is not supported by eqtb: "
                                f"{refused[typ]}")
    if typ not in variants:
        raise TrainOptionsError(f"train_options.{kind}: unknown type {typ!r}"
                                f"{did_you_mean(typ, variants, cutoff=0.5)}; valid types: {', '.join(variants)}")
    allowed = _defaults(variants[typ][0])
    for key in kwargs:
        if key not in allowed:
            raise TrainOptionsError(f"train_options.{kind}: unknown key {key!r} for type {typ!r}"
                                    f"{did_you_mean(key, allowed, cutoff=0.5)}; valid keys: {', '.join(allowed)}")
    out = {**allowed, **kwargs}
    missing = [k for k, v in out.items() if v is REQUIRED]
    if missing:
        raise TrainOptionsError(f"train_options.{kind}: type {typ!r} requires {', '.join(missing)}")
    return typ, out


def build_optimizer(params, options: dict | None) -> torch.optim.Optimizer:
    """Build a torch optimizer from a DeePTB ``train_options.optimizer`` dict.

    ``options`` is ``{"type": "Adam"|"AdamW"|"SGD"|"RMSprop", <keys of that type>}``; a missing
    ``type`` means Adam and missing keys take the schema's defaults (DeePTB's values, see
    :class:`eqtb.config.AdamOptions` and its siblings). ``params`` is what torch optimizers accept
    (an iterable of tensors or of param-group dicts).

    Guarantees: the returned optimizer's param groups carry exactly the resolved hyper-parameters;
    ``options`` is not modified. Raises :class:`TrainOptionsError` for LBFGS (unsupported), an
    unknown type or key (with the closest valid spelling), or values torch rejects (e.g. a negative
    ``lr``, ``nesterov`` without momentum).
    """
    typ, kwargs = _resolve("optimizer", options, _OPTIMIZERS, _train_default("optimizer"), refused={
        "LBFGS": "it needs a closure that re-evaluates the loss several times per step, which the "
                 "eqtb trainer does not provide; use Adam or AdamW"})
    if "betas" in kwargs:
        betas = kwargs["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise TrainOptionsError(f"train_options.optimizer: 'betas' must be a pair of numbers, "
                                    f"got {betas!r}")
        kwargs["betas"] = (float(betas[0]), float(betas[1]))
    try:
        return _OPTIMIZERS[typ][1](params, **kwargs)
    except (ValueError, TypeError) as exc:
        raise TrainOptionsError(f"train_options.optimizer ({typ}): {exc}") from exc


def _group_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]


def _set_group_lrs(optimizer: torch.optim.Optimizer, lrs: list[float]) -> None:
    if len(lrs) != len(optimizer.param_groups):
        raise TrainOptionsError(f"scheduler state has {len(lrs)} learning rates but the optimizer "
                                f"has {len(optimizer.param_groups)} param groups")
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


_STATE_KEYS = {"type", "warmup_epochs", "epoch", "lr0", "lrs", "main"}


class Scheduler:
    """Learning-rate schedule from a DeePTB ``train_options.lr_scheduler`` dict, with warm-up,
    stepped once per epoch or once per iteration.

    ``options`` is ``{"type": "exp"|"linear"|"rop"|"cos"|"cyclic", <DeePTB keys of that type>,
    "warmup_epochs": W}``; a missing ``type`` means ``exp`` and missing keys take the schema's
    defaults (:class:`eqtb.config.ExpLR` and its siblings). The wrapped PyTorch scheduler ("main")
    is built on ``optimizer`` at construction; its starting learning rate ``lr0`` per param group
    is the optimizer's lr (``cyclic``: its ``base_lr``). ``update_lr_per_iter`` and
    ``sliding_win_size`` are the ``train_options`` keys of those names (defaults from
    :class:`eqtb.config.TrainOptions`).

    The trainer calls :meth:`after_iteration` after every optimizer step with that batch's
    training loss, and :meth:`after_epoch` at the end of every epoch with the epoch metric (the
    validation loss if any, else the epoch-mean training loss). A "step" of the main scheduler is
    one epoch (``update_lr_per_iter`` false, the default, DeePTB's default) or one iteration
    (``update_lr_per_iter`` true); its counts (``gamma`` per step, ``T_max``, ``total_iters``,
    ``patience``, ``cooldown``, ``step_size_up/down``) are in those steps. Guarantees:

    * warm-up, always counted in epochs: during the first ``W`` epochs (0-based epoch ``e < W``)
      the lr is ``lr0 * (e + 1) / (W + 1)``, a linear ramp from ``lr0/(W+1)`` constant within an
      epoch; epoch ``W`` starts at ``lr0`` and from then on the main scheduler runs exactly as it
      would without warm-up, shifted by ``W`` epochs. Nothing passed during warm-up steps the main
      scheduler (per iteration: the iterations of warm-up epochs take no step; ``rop`` counts no
      bad epochs or iterations there).
    * per epoch: ``after_iteration`` does nothing; ``after_epoch(metric)`` is :meth:`step`
      ``(metric)``. ``rop`` steps on that metric (lower is better for ``mode`` "min").
    * per iteration: ``after_epoch`` only counts the epoch for warm-up; ``after_iteration(loss)``
      appends ``loss`` to a window of the last ``sliding_win_size`` iteration losses (kept during
      warm-up too) and, after warm-up, steps the main scheduler; ``rop`` steps on the mean of the
      window, this iteration's loss included (DeePTB's sliding mean, for large data sets with
      small batches). The other types ignore metrics.
    * a non-finite metric counts as "not improved" for ``rop``.
    * restart exactness: ``load_state_dict(s.state_dict())`` on a Scheduler freshly built with the
      same options on a rebuilt optimizer (with or without the optimizer's state loaded) makes the
      following learning rates identical, bit for bit, to an uninterrupted run, also in the middle
      of an epoch or of a window. The state holds the group learning rates, so it restores them on
      the optimizer too.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, options: dict | None = None, *,
                 update_lr_per_iter: bool = _train_default("update_lr_per_iter"),
                 sliding_win_size: int = _train_default("sliding_win_size")):
        if not isinstance(update_lr_per_iter, bool):
            raise TrainOptionsError(f"train_options.update_lr_per_iter must be true or false, got "
                                    f"{update_lr_per_iter!r}")
        if isinstance(sliding_win_size, bool) or not isinstance(sliding_win_size, int) or sliding_win_size < 1:
            raise TrainOptionsError(f"train_options.sliding_win_size must be an integer >= 1, got "
                                    f"{sliding_win_size!r}")
        typ, kwargs = _resolve("lr_scheduler", options, _SCHEDULERS, _train_default("lr_scheduler"),
                              refused={})
        warmup = kwargs.pop("warmup_epochs")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise TrainOptionsError(f"train_options.lr_scheduler: 'warmup_epochs' must be an integer "
                                    f">= 0, got {warmup!r}")
        if typ == "cyclic":
            if kwargs["last_epoch"] != -1:
                raise TrainOptionsError("train_options.lr_scheduler (cyclic): 'last_epoch' must be -1 "
                                        "(resume a schedule by loading its state instead)")
            if kwargs["scale_fn"] is not None:
                raise TrainOptionsError("train_options.lr_scheduler (cyclic): 'scale_fn' must be null "
                                        "(a custom function cannot be given in JSON; use 'mode')")
            for key in _CYCLIC_DROPPED:
                kwargs.pop(key)
        try:
            self.main = _SCHEDULERS[typ][1](optimizer, **kwargs)
        except (ValueError, TypeError) as exc:
            raise TrainOptionsError(f"train_options.lr_scheduler ({typ}): {exc}") from exc
        self.optimizer = optimizer
        self.type = typ
        self.options = kwargs
        self.warmup_epochs = warmup
        self.update_lr_per_iter = update_lr_per_iter
        self.epoch = 0
        self._window: collections.deque[float] = collections.deque(maxlen=sliding_win_size)
        self._lr0 = _group_lrs(optimizer)
        if warmup:
            _set_group_lrs(optimizer, [lr / (warmup + 1) for lr in self._lr0])

    @property
    def lr(self) -> float:
        """Current learning rate of param group 0 (the one the next optimizer step uses)."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def in_warmup(self) -> bool:
        """True while the current epoch (the next one to finish) is a warm-up epoch."""
        return self.epoch < self.warmup_epochs

    @property
    def sliding_win_size(self) -> int:
        """Number of iteration losses averaged for ``rop`` when stepping per iteration."""
        return int(self._window.maxlen)

    def _count_epoch(self) -> bool:
        """Count one finished epoch and set the warm-up learning rate of the next; True when
        warm-up was already over before this epoch (the main scheduler governs it)."""
        self.epoch += 1
        w = self.warmup_epochs
        if self.epoch < w:
            _set_group_lrs(self.optimizer, [lr * (self.epoch + 1) / (w + 1) for lr in self._lr0])
        elif self.epoch == w:
            _set_group_lrs(self.optimizer, list(self._lr0))
        return self.epoch > w

    def _step_main(self, metric: float | None) -> None:
        if self.type != "rop":
            self.main.step()
        elif metric is None:
            raise ValueError("the 'rop' learning-rate scheduler needs a metric (the epoch loss) at "
                             "every step after warm-up")
        else:
            self.main.step(float(metric))

    def step(self, metric: float | None = None) -> None:
        """End one epoch and step the main scheduler once (after warm-up), whatever
        ``update_lr_per_iter`` says; the trainer calls :meth:`after_epoch` instead.

        ``metric`` (the epoch's validation or training loss) is required by ``rop`` after warm-up
        (a ``ValueError`` otherwise) and ignored by the other types and during warm-up.
        """
        if self._count_epoch():
            self._step_main(metric)

    def after_iteration(self, loss: float) -> None:
        """After one optimizer step with training loss ``loss`` (of that batch): with
        ``update_lr_per_iter``, record it and, after warm-up, step the main scheduler (``rop``: on
        the mean of the last ``sliding_win_size`` recorded losses). Otherwise nothing."""
        if not self.update_lr_per_iter:
            return
        self._window.append(float(loss))
        if not self.in_warmup:
            self._step_main(math.fsum(self._window) / len(self._window))

    def after_epoch(self, metric: float | None = None) -> None:
        """At the end of an epoch, with the epoch metric (validation loss if any, else the
        epoch-mean training loss): :meth:`step` ``(metric)`` when stepping per epoch; when stepping
        per iteration, only the warm-up count advances (``metric`` is ignored)."""
        if self.update_lr_per_iter:
            self._count_epoch()
        else:
            self.step(metric)

    def state_dict(self) -> dict[str, Any]:
        """A deep-copied, picklable snapshot: type, warm-up length, epoch count, starting and
        current group learning rates, the main scheduler's own state, the stepping mode and the
        window of recent iteration losses."""
        return {"type": self.type, "warmup_epochs": self.warmup_epochs, "epoch": self.epoch,
                "lr0": list(self._lr0), "lrs": _group_lrs(self.optimizer),
                "main": copy.deepcopy(self.main.state_dict()),
                "update_lr_per_iter": self.update_lr_per_iter,
                "sliding_win_size": self.sliding_win_size, "window": list(self._window)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot, including the optimizer's group learning rates.
        The stored schedule (its hyper-parameters, warm-up and stepping mode) wins over the
        options this object was built with; a different scheduler type raises
        :class:`TrainOptionsError`. A state written before eqtb stepped per iteration (no
        ``window``) keeps this object's stepping mode and starts an empty window."""
        missing = _STATE_KEYS - set(state)
        if missing:
            raise TrainOptionsError(f"not an eqtb Scheduler state (missing {sorted(missing)})")
        if state["type"] != self.type:
            raise TrainOptionsError(f"saved learning-rate scheduler is {state['type']!r} but the "
                                    f"options ask for {self.type!r}")
        if len(state["lr0"]) != len(self.optimizer.param_groups):
            raise TrainOptionsError(f"scheduler state has {len(state['lr0'])} param groups but the "
                                    f"optimizer has {len(self.optimizer.param_groups)}")
        self.main.load_state_dict(copy.deepcopy(state["main"]))
        self.warmup_epochs = int(state["warmup_epochs"])
        self.epoch = int(state["epoch"])
        self._lr0 = [float(x) for x in state["lr0"]]
        if "window" in state:
            self.update_lr_per_iter = bool(state["update_lr_per_iter"])
            self._window = collections.deque((float(x) for x in state["window"]),
                                             maxlen=int(state["sliding_win_size"]))
        else:
            self._window.clear()
        _set_group_lrs(self.optimizer, [float(x) for x in state["lrs"]])

    def __repr__(self) -> str:
        per = "iteration" if self.update_lr_per_iter else "epoch"
        return (f"Scheduler(type={self.type!r}, per {per}, warmup_epochs={self.warmup_epochs}, "
                f"epoch={self.epoch}, lr={self.lr:.6g})")

"""Optimizers and learning-rate schedules built from DeePTB ``train_options`` dictionaries.

``train_options.optimizer`` and ``train_options.lr_scheduler`` (FORMATS.md section 5.4) are
variants on ``type``; keys left out take DeePTB's defaults (:data:`OPTIMIZER_DEFAULTS`,
:data:`SCHEDULER_DEFAULTS`), which are *not* always PyTorch's (e.g. ``linear`` has
``end_factor`` 1/3 and ``cyclic`` has ``mode`` ``"exp_range"``). Unknown types and keys raise
:class:`TrainOptionsError` with the closest valid spelling.

eqtb extensions: optimizer ``AdamW`` (PyTorch defaults, ``weight_decay`` 0.01) and scheduler key
``warmup_epochs`` (default 0, see :class:`Scheduler`). ``LBFGS``, accepted by DeePTB's schema, is
refused: it needs a loss closure re-evaluated several times per step, which eqtb's trainer does not
provide.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.optim import lr_scheduler as _lrs

from eqtb.hints import did_you_mean


class TrainOptionsError(ValueError):
    """An optimizer or learning-rate scheduler option that cannot be used."""


#: DeePTB's defaults per optimizer type (``dptb/utils/argcheck.py``), plus eqtb's AdamW
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "Adam": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
    "AdamW": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False},
    "SGD": {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "dampening": 0.0, "nesterov": False},
    "RMSprop": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                "centered": False},
}

_OPTIMIZER_CLASSES = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD,
                      "RMSprop": torch.optim.RMSprop}

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: marks a key without default that must be given (cyclic ``base_lr``/``max_lr``)
REQUIRED = _Required()

#: DeePTB's defaults per scheduler type
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {
    "exp": {"gamma": 0.999},
    "linear": {"start_factor": 0.3333333, "end_factor": 0.3333333, "total_iters": 5},
    "rop": {"mode": "min", "factor": 0.1, "patience": 10, "threshold": 1e-4, "threshold_mode": "rel",
            "cooldown": 0, "min_lr": 0.0, "eps": 1e-8},
    "cos": {"T_max": 100, "eta_min": 0.0},
    "cyclic": {"base_lr": REQUIRED, "max_lr": REQUIRED, "step_size_up": 10, "step_size_down": 40,
               "mode": "exp_range", "gamma": 1.0, "scale_fn": None, "scale_mode": "cycle",
               "cycle_momentum": False, "base_momentum": 0.8, "max_momentum": 0.9,
               "last_epoch": -1, "verbose": "deprecated"},
}

_SCHEDULER_CLASSES = {"exp": _lrs.ExponentialLR, "linear": _lrs.LinearLR,
                      "rop": _lrs.ReduceLROnPlateau, "cos": _lrs.CosineAnnealingLR,
                      "cyclic": _lrs.CyclicLR}

#: keys accepted by DeePTB's schema that PyTorch no longer takes (checked, then dropped)
_CYCLIC_DROPPED = ("last_epoch", "verbose", "scale_fn")


def _resolve(kind: str, options: dict | None, defaults: dict[str, dict[str, Any]], default_type: str,
             refused: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Split ``options`` into (type, keyword arguments with defaults filled in); raises
    TrainOptionsError for a non-dict, an unknown or refused type, an unknown key or a missing
    required key."""
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
    if typ not in defaults:
        raise TrainOptionsError(f"train_options.{kind}: unknown type {typ!r}"
                                f"{did_you_mean(typ, defaults, cutoff=0.5)}; valid types: {', '.join(defaults)}")
    allowed = defaults[typ]
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
    ``type`` means Adam and missing keys take :data:`OPTIMIZER_DEFAULTS` (DeePTB's values).
    ``params`` is what torch optimizers accept (an iterable of tensors or of param-group dicts).

    Guarantees: the returned optimizer's param groups carry exactly the resolved hyper-parameters;
    ``options`` is not modified. Raises :class:`TrainOptionsError` for LBFGS (unsupported), an
    unknown type or key (with the closest valid spelling), or values torch rejects (e.g. a negative
    ``lr``, ``nesterov`` without momentum).
    """
    typ, kwargs = _resolve("optimizer", options, OPTIMIZER_DEFAULTS, "Adam", refused={
        "LBFGS": "it needs a closure that re-evaluates the loss several times per step, which the "
                 "eqtb trainer does not provide; use Adam or AdamW"})
    if "betas" in kwargs:
        betas = kwargs["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise TrainOptionsError(f"train_options.optimizer: 'betas' must be a pair of numbers, "
                                    f"got {betas!r}")
        kwargs["betas"] = (float(betas[0]), float(betas[1]))
    try:
        return _OPTIMIZER_CLASSES[typ](params, **kwargs)
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


class Scheduler:
    """Learning-rate schedule from a DeePTB ``train_options.lr_scheduler`` dict, with warm-up.

    ``options`` is ``{"type": "exp"|"linear"|"rop"|"cos"|"cyclic", <DeePTB keys of that type>,
    "warmup_epochs": W}``; a missing ``type`` means ``exp`` and missing keys take
    :data:`SCHEDULER_DEFAULTS`. The wrapped PyTorch scheduler ("main") is built on ``optimizer``
    at construction; its starting learning rate ``lr0`` per param group is the optimizer's lr
    (``cyclic``: its ``base_lr``).

    Call :meth:`step` once per epoch, after the epoch (DeePTB also allows once per iteration;
    "epoch" below means one call). Guarantees:

    * warm-up: during the first ``W`` epochs (0-based epoch ``e < W``) the lr is
      ``lr0 * (e + 1) / (W + 1)``, a linear ramp from ``lr0/(W+1)``; epoch ``W`` runs at ``lr0``
      and later epochs follow the main scheduler exactly as it would without warm-up, shifted by
      ``W`` epochs. Metrics passed during warm-up are ignored (``rop`` counts no bad epochs there).
    * ``rop`` steps on the metric passed to :meth:`step` (lower is better for ``mode`` "min");
      the other types ignore it.
    * restart exactness: ``load_state_dict(s.state_dict())`` on a Scheduler freshly built with the
      same options on a rebuilt optimizer (with or without the optimizer's state loaded) makes the
      following learning rates identical, bit for bit, to an uninterrupted run. The state holds
      the group learning rates, so it restores them on the optimizer too.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, options: dict | None = None):
        options = dict(options or {})
        warmup = options.pop("warmup_epochs", 0)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise TrainOptionsError(f"train_options.lr_scheduler: 'warmup_epochs' must be an integer "
                                    f">= 0, got {warmup!r}")
        typ, kwargs = _resolve("lr_scheduler", options, SCHEDULER_DEFAULTS, "exp", refused={})
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
            self.main = _SCHEDULER_CLASSES[typ](optimizer, **kwargs)
        except (ValueError, TypeError) as exc:
            raise TrainOptionsError(f"train_options.lr_scheduler ({typ}): {exc}") from exc
        self.optimizer = optimizer
        self.type = typ
        self.options = kwargs
        self.warmup_epochs = warmup
        self.epoch = 0
        self._lr0 = _group_lrs(optimizer)
        if warmup:
            _set_group_lrs(optimizer, [lr / (warmup + 1) for lr in self._lr0])

    @property
    def lr(self) -> float:
        """Current learning rate of param group 0 (the one the next epoch uses)."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def in_warmup(self) -> bool:
        """True while the next epoch is a warm-up epoch."""
        return self.epoch < self.warmup_epochs

    def step(self, metric: float | None = None) -> None:
        """End one epoch and set the learning rate of the next one.

        ``metric`` (the epoch's validation or training loss) is required by ``rop`` after warm-up
        (a ``ValueError`` otherwise) and ignored by the other types and during warm-up. A
        non-finite metric counts as "not improved" for ``rop``.
        """
        self.epoch += 1
        w = self.warmup_epochs
        if self.epoch < w:
            _set_group_lrs(self.optimizer, [lr * (self.epoch + 1) / (w + 1) for lr in self._lr0])
        elif self.epoch == w:
            _set_group_lrs(self.optimizer, list(self._lr0))
        elif self.type == "rop":
            if metric is None:
                raise ValueError("the 'rop' learning-rate scheduler needs a metric (the epoch loss) "
                                 "at every step after warm-up")
            self.main.step(float(metric))
        else:
            self.main.step()

    def state_dict(self) -> dict[str, Any]:
        """A deep-copied, picklable snapshot: type, warm-up length, epoch count, starting and
        current group learning rates and the main scheduler's own state."""
        return {"type": self.type, "warmup_epochs": self.warmup_epochs, "epoch": self.epoch,
                "lr0": list(self._lr0), "lrs": _group_lrs(self.optimizer),
                "main": copy.deepcopy(self.main.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot, including the optimizer's group learning rates.
        The stored schedule (its hyper-parameters and warm-up) wins over the options this object
        was built with; a different scheduler type raises :class:`TrainOptionsError`."""
        missing = {"type", "warmup_epochs", "epoch", "lr0", "lrs", "main"} - set(state)
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
        _set_group_lrs(self.optimizer, [float(x) for x in state["lrs"]])

    def __repr__(self) -> str:
        return (f"Scheduler(type={self.type!r}, warmup_epochs={self.warmup_epochs}, "
                f"epoch={self.epoch}, lr={self.lr:.6g})")

"""Optimizers, learning-rate schedules (with warm-up and exact restarts) and checkpoint files."""

import io
import math
import os
import random

import numpy as np
import pytest
import torch

from eqtb.train import checkpoint as ckpt_mod
from eqtb.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from eqtb.train.optim import Scheduler, TrainOptionsError, build_optimizer

# some tests step schedulers without training; torch warns about that order
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")


def _params():
    return [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2, 2))]


# ----------------------------------------------------------------------------------- optimizers

def test_optimizer_types_and_explicit_options():
    opt = build_optimizer(_params(), {"type": "Adam", "lr": 0.005, "betas": [0.8, 0.99], "eps": 1e-7,
                                      "weight_decay": 0.1, "amsgrad": True})
    assert isinstance(opt, torch.optim.Adam)
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"]) == (0.005, (0.8, 0.99), 1e-7,
                                                                                  0.1, True)
    assert isinstance(build_optimizer(_params(), {"type": "AdamW"}), torch.optim.AdamW)
    assert isinstance(build_optimizer(_params(), {"type": "SGD", "momentum": 0.9, "nesterov": True}),
                      torch.optim.SGD)
    assert isinstance(build_optimizer(_params(), {"type": "RMSprop"}), torch.optim.RMSprop)


def test_optimizer_deeptb_defaults():
    g = build_optimizer(_params(), {}).param_groups[0]  # {} -> Adam
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"]) == (1e-3, (0.9, 0.999), 1e-8,
                                                                                  0, False)
    g = build_optimizer(_params(), {"type": "SGD"}).param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["dampening"], g["nesterov"]) == (1e-3, 0, 0, 0,
                                                                                         False)
    g = build_optimizer(_params(), {"type": "RMSprop"}).param_groups[0]
    assert (g["lr"], g["alpha"], g["eps"], g["weight_decay"], g["momentum"], g["centered"]) == (
        1e-2, 0.99, 1e-8, 0, 0, False)
    g = build_optimizer(_params(), {"type": "AdamW"}).param_groups[0]
    assert (g["lr"], g["weight_decay"]) == (1e-3, 1e-2)
    options = {"type": "Adam", "lr": 0.01}
    build_optimizer(_params(), options)
    assert options == {"type": "Adam", "lr": 0.01}  # not modified


def test_optimizer_errors():
    with pytest.raises(TrainOptionsError, match="did you mean 'Adam'"):
        build_optimizer(_params(), {"type": "adam"})
    with pytest.raises(TrainOptionsError, match="did you mean 'RMSprop'"):
        build_optimizer(_params(), {"type": "RMSProp2"})
    with pytest.raises(TrainOptionsError, match="LBFGS.*not supported"):
        build_optimizer(_params(), {"type": "LBFGS"})
    with pytest.raises(TrainOptionsError, match="unknown key 'momentun'.*did you mean 'momentum'"):
        build_optimizer(_params(), {"type": "SGD", "momentun": 0.9})
    with pytest.raises(TrainOptionsError, match="Invalid learning rate"):
        build_optimizer(_params(), {"lr": -1.0})
    with pytest.raises(TrainOptionsError, match="betas"):
        build_optimizer(_params(), {"betas": [0.9]})
    assert issubclass(TrainOptionsError, ValueError)


# ------------------------------------------------------------------------------------ schedulers

def _run(options, n_epochs, restart_at=None, lr=0.01, opt_type="Adam"):
    """lr of each epoch (the one the epoch trains with) over n_epochs; with restart_at, the optimizer
    and scheduler are rebuilt from state dicts (through a torch.save round trip) after that many
    epochs."""
    noise = np.random.default_rng(7).normal(size=n_epochs)
    params = _params()
    opt = build_optimizer(params, {"type": opt_type, "lr": lr})
    sched = Scheduler(opt, options)
    lrs = []
    for epoch in range(n_epochs):
        if epoch == restart_at:
            buf = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=False)
            params = _params()
            opt = build_optimizer(params, {"type": opt_type, "lr": lr})
            opt.load_state_dict(saved["opt"])
            sched = Scheduler(opt, options)
            sched.load_state_dict(saved["sched"])
        lrs.append(sched.lr)
        # a fake epoch: one optimizer step on a tiny loss
        opt.zero_grad()
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
        # a noisy plateauing metric so that rop both improves and reduces
        metric = 1.0 / (1 + epoch) ** 0.3 + 0.05 * noise[epoch] if epoch < 10 else 0.6 + 0.05 * noise[epoch]
        sched.step(metric)
    return lrs


@pytest.mark.parametrize("options", [
    {"type": "rop", "patience": 2, "factor": 0.5},
    {"type": "rop", "patience": 1, "factor": 0.3, "cooldown": 2, "warmup_epochs": 3},
    {"type": "exp", "gamma": 0.9, "warmup_epochs": 5},
    {"type": "cos", "T_max": 7, "eta_min": 1e-4},
    {"type": "linear", "start_factor": 0.5, "end_factor": 0.1, "total_iters": 20, "warmup_epochs": 2},
    {"type": "cyclic", "base_lr": 1e-4, "max_lr": 1e-2, "step_size_up": 4, "step_size_down": 6,
     "mode": "triangular2"},
])
def test_scheduler_restart_is_exact(options):
    full = _run(options, 30)
    restarted = _run(options, 30, restart_at=12)
    assert restarted == full  # bit-identical
    assert len(set(full)) > 3  # the schedule actually moves


def test_scheduler_restart_without_optimizer_state():
    """The scheduler state alone restores the group learning rates."""
    opt = build_optimizer(_params(), {"lr": 0.1})
    sched = Scheduler(opt, {"type": "exp", "gamma": 0.5, "warmup_epochs": 2})
    for _ in range(4):
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(_params(), {"lr": 0.1})
    sched2 = Scheduler(opt2, {"type": "exp", "gamma": 0.5, "warmup_epochs": 2})
    sched2.load_state_dict(state)
    for _ in range(3):
        assert sched2.lr == sched.lr
        sched.step()
        sched2.step()


def test_rop_reduces_on_plateau():
    opt = build_optimizer(_params(), {"lr": 1.0})
    sched = Scheduler(opt, {"type": "rop", "patience": 2, "factor": 0.5})
    lrs = []
    for metric in [3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]:
        sched.step(metric)
        lrs.append(sched.lr)
    assert lrs == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="needs a metric"):
        sched.step(None)


def test_warmup_ramp_then_main_schedule():
    opt = build_optimizer(_params(), {"lr": 0.06})
    sched = Scheduler(opt, {"type": "exp", "gamma": 0.5, "warmup_epochs": 5})
    lrs = [sched.lr]
    for _ in range(8):
        sched.step()
        lrs.append(sched.lr)
    expected = [0.06 * k / 6 for k in range(1, 6)] + [0.06, 0.03, 0.015, 0.0075]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert lrs[5] == 0.06  # the full lr is restored exactly
    # rop ignores metrics (even missing ones) during warm-up
    sched = Scheduler(build_optimizer(_params(), {"lr": 1.0}), {"type": "rop", "patience": 0,
                                                                  "warmup_epochs": 3})
    for _ in range(3):
        sched.step(None)
    assert sched.lr == 1.0
    assert sched.main.num_bad_epochs == 0


def test_scheduler_defaults_and_errors():
    opt = build_optimizer(_params(), {"lr": 1.0})
    sched = Scheduler(opt, {})  # exp, gamma 0.999
    assert sched.type == "exp" and sched.options == {"gamma": 0.999}
    sched.step()
    assert sched.lr == pytest.approx(0.999)
    lin = Scheduler(build_optimizer(_params(), {"lr": 1.0}), {"type": "linear"})
    assert lin.lr == pytest.approx(0.3333333)  # DeePTB: start = end = 1/3
    cyc = Scheduler(build_optimizer(_params(), {"lr": 1.0}),
                    {"type": "cyclic", "base_lr": 0.1, "max_lr": 1.0, "verbose": "deprecated",
                     "last_epoch": -1, "scale_fn": None})
    assert cyc.lr == pytest.approx(0.1)
    with pytest.raises(TrainOptionsError, match="did you mean 'exp'"):
        Scheduler(opt, {"type": "expo"})
    with pytest.raises(TrainOptionsError, match="requires base_lr, max_lr"):
        Scheduler(opt, {"type": "cyclic"})
    with pytest.raises(TrainOptionsError, match="did you mean 'patience'"):
        Scheduler(opt, {"type": "rop", "patient": 3})
    with pytest.raises(TrainOptionsError, match="warmup_epochs"):
        Scheduler(opt, {"warmup_epochs": -1})
    with pytest.raises(TrainOptionsError, match="Factor"):
        Scheduler(opt, {"type": "rop", "factor": 2.0})
    with pytest.raises(TrainOptionsError, match="'exp' but the options ask for 'cos'"):
        Scheduler(opt, {"type": "cos"}).load_state_dict(Scheduler(opt, {}).state_dict())


def test_builders_take_their_defaults_from_the_config_schema():
    from eqtb import config

    for model in (config.AdamOptions, config.AdamWOptions, config.SGDOptions, config.RMSpropOptions):
        defaults = model().model_dump(exclude={"type"})
        group = build_optimizer(_params(), {"type": model.model_fields["type"].default}).param_groups[0]
        assert {k: list(group[k]) if k == "betas" else group[k] for k in defaults} == defaults
    for model in (config.ExpLR, config.LinearLR, config.ReduceOnPlateauLR, config.CosineLR):
        sched = Scheduler(build_optimizer(_params(), {}), {"type": model.model_fields["type"].default})
        assert sched.options == model().model_dump(exclude={"type", "warmup_epochs"})
        assert sched.warmup_epochs == model().warmup_epochs
    cyc = Scheduler(build_optimizer(_params(), {}), {"type": "cyclic", "base_lr": 0.1, "max_lr": 1.0})
    assert cyc.options == config.CyclicLR(base_lr=0.1, max_lr=1.0).model_dump(
        exclude={"type", "warmup_epochs", "last_epoch", "verbose", "scale_fn"})
    plain = Scheduler(build_optimizer(_params(), {}))
    assert plain.update_lr_per_iter is config.TrainOptions.model_fields["update_lr_per_iter"].default
    assert plain.sliding_win_size == config.TrainOptions.model_fields["sliding_win_size"].default


# ------------------------------------------------------------------- per-iteration lr updates

def _drive(sched, losses, per_epoch, metric=lambda e: 100.0):
    """Feed iteration ``losses`` to ``sched`` in epochs of ``per_epoch`` iterations (the trainer's
    calls); returns the lr after every iteration."""
    lrs = []
    for k, loss in enumerate(losses):
        sched.after_iteration(loss)
        lrs.append(sched.lr)
        if (k + 1) % per_epoch == 0:
            sched.after_epoch(metric(k // per_epoch))
    return lrs


def test_per_iteration_exp_decays_once_per_iteration():
    sched = Scheduler(build_optimizer(_params(), {"lr": 0.01}), {"type": "exp", "gamma": 0.9},
                      update_lr_per_iter=True)
    lrs = _drive(sched, [1.0] * 12, per_epoch=4)  # 3 epochs of 4 iterations
    np.testing.assert_allclose(lrs, [0.01 * 0.9 ** n for n in range(1, 13)], rtol=1e-12)
    assert sched.epoch == 3


def test_per_iteration_warmup_is_counted_in_epochs():
    sched = Scheduler(build_optimizer(_params(), {"lr": 0.06}), {"type": "exp", "gamma": 0.5, "warmup_epochs": 2},
                      update_lr_per_iter=True)
    seen = []  # lr each iteration trains with
    for epoch in range(3):
        for _ in range(3):
            seen.append(sched.lr)
            sched.after_iteration(1.0)
        sched.after_epoch(1.0)
    expected = [0.02] * 3 + [0.04] * 3 + [0.06, 0.03, 0.015]  # ramp constant within an epoch, then per-iteration decay
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert seen[6] == 0.06


@pytest.mark.parametrize("options", [
    {"type": "rop", "patience": 2, "factor": 0.5, "warmup_epochs": 1},
    {"type": "exp", "gamma": 0.7},
    {"type": "cyclic", "base_lr": 1e-4, "max_lr": 1e-2, "step_size_up": 2, "step_size_down": 3},
])
def test_per_epoch_mode_is_the_epoch_step(options):
    """Without update_lr_per_iter, after_iteration does nothing and after_epoch(metric) is step(metric)."""
    metrics = [3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    ref = Scheduler(build_optimizer(_params(), {"lr": 1.0}), options)
    new = Scheduler(build_optimizer(_params(), {"lr": 1.0}), options, update_lr_per_iter=False, sliding_win_size=3)
    ref_lrs, new_lrs = [], []
    for metric in metrics:
        for loss in (9.0, 8.0, 7.0):
            new.after_iteration(loss)
            assert new.lr == ref.lr  # no per-iteration effect
        ref.step(metric)
        new.after_epoch(metric)
        ref_lrs.append(ref.lr)
        new_lrs.append(new.lr)
    assert new_lrs == ref_lrs and len(set(ref_lrs)) > 1


def test_per_iteration_rop_steps_on_the_sliding_mean():
    losses = [4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    opts = {"type": "rop", "patience": 2, "factor": 0.5}
    # window 3: means 4, 3.5, 3, 2, 1.33, 1, 1, 1, 1 -> best at iteration 6, third bad one (9) reduces
    sched = Scheduler(build_optimizer(_params(), {"lr": 1.0}), opts, update_lr_per_iter=True, sliding_win_size=3)
    assert _drive(sched, losses, per_epoch=3, metric=lambda e: 1e9) == [1.0] * 8 + [0.5]
    assert sched.main.num_bad_epochs == 0
    # window 1 (the iteration loss itself): best at iteration 4, reduced at 7
    sched = Scheduler(build_optimizer(_params(), {"lr": 1.0}), opts, update_lr_per_iter=True, sliding_win_size=1)
    assert _drive(sched, losses, per_epoch=3) == [1.0] * 6 + [0.5, 0.5, 0.5]


def _run_per_iter(options, n_iter, per_epoch, win, restart_at=None):
    """lr of every iteration with per-iteration updates; with restart_at, optimizer and scheduler are
    rebuilt from state dicts (through a torch.save round trip) after that many iterations."""
    losses = 1.0 + 0.3 * np.random.default_rng(3).random(n_iter)  # noisy plateau: rop improves and reduces
    params = _params()

    def build():
        opt = build_optimizer(params, {"lr": 0.01})
        return opt, Scheduler(opt, options, update_lr_per_iter=True, sliding_win_size=win)

    opt, sched = build()
    lrs = []
    for k in range(n_iter):
        if k == restart_at:
            buf = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=False)
            opt, sched = build()
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
        lrs.append(sched.lr)
        opt.zero_grad()
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
        sched.after_iteration(float(losses[k]))
        if (k + 1) % per_epoch == 0:
            sched.after_epoch(float(losses[k]))
    return lrs


@pytest.mark.parametrize("options", [
    {"type": "rop", "patience": 1, "factor": 0.7, "warmup_epochs": 1},
    {"type": "cyclic", "base_lr": 1e-4, "max_lr": 1e-2, "step_size_up": 3, "step_size_down": 5},
    {"type": "exp", "gamma": 0.95, "warmup_epochs": 2},
])
def test_per_iteration_restart_mid_window_is_exact(options):
    full = _run_per_iter(options, 40, per_epoch=6, win=5)
    restarted = _run_per_iter(options, 40, per_epoch=6, win=5, restart_at=15)  # mid-epoch, mid-window
    assert restarted == full  # bit-identical
    assert len(set(full[15:])) > 3


def test_scheduler_state_restores_window_and_mode():
    opt = build_optimizer(_params(), {"lr": 1.0})
    sched = Scheduler(opt, {"type": "rop"}, update_lr_per_iter=True, sliding_win_size=3)
    for loss in (5.0, 4.0, 3.0, 2.0):
        sched.after_iteration(loss)
    state = sched.state_dict()
    assert state["window"] == [4.0, 3.0, 2.0] and state["sliding_win_size"] == 3
    other = Scheduler(build_optimizer(_params(), {"lr": 1.0}), {"type": "rop"})  # per epoch, window 50
    other.load_state_dict(state)
    assert other.update_lr_per_iter and other.sliding_win_size == 3 and other.state_dict() == state
    old = {k: v for k, v in state.items() if k not in ("update_lr_per_iter", "sliding_win_size", "window")}
    other.load_state_dict(old)  # a state written before per-iteration updates existed
    assert other.state_dict()["window"] == []


def test_per_iteration_option_errors():
    opt = build_optimizer(_params(), {"lr": 1.0})
    with pytest.raises(TrainOptionsError, match="sliding_win_size must be an integer >= 1"):
        Scheduler(opt, {}, sliding_win_size=0)
    with pytest.raises(TrainOptionsError, match="update_lr_per_iter must be true or false"):
        Scheduler(opt, {}, update_lr_per_iter="yes")


# ----------------------------------------------------------------------------------- checkpoints

def test_save_atomic_roundtrip_and_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "model.latest.pth"
    save_atomic({"a": torch.arange(3)}, path)
    old_bytes = path.read_bytes()
    assert torch.equal(torch.load(path, weights_only=False)["a"], torch.arange(3))

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial garbage")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="simulated"):
        save_atomic({"a": torch.arange(1000)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == old_bytes
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.latest.pth"]

    # a first write that fails leaves nothing at all
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError):
        save_atomic({}, tmp_path / "new.pth")
    monkeypatch.setattr(torch, "save", real_save)
    assert not (tmp_path / "new.pth").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_iter_rotation_keeps_newest(tmp_path):
    man = CheckpointManager(tmp_path, "nnenv", max_ckpt=3)
    for n in range(10, 80, 10):
        path = man.save_iter({"iteration": n}, n)
        assert path == tmp_path / f"nnenv.iter{n}.pth"
    assert [n for n, _ in man.iter_files()] == [50, 60, 70]
    assert torch.load(tmp_path / "nnenv.iter70.pth", weights_only=False) == {"iteration": 70}
    # a restart from iteration 50 leaves the abandoned run's later files alone until it reaches them
    man2 = CheckpointManager(tmp_path, "nnenv", max_ckpt=3)
    man2.save_iter({"iteration": 55}, 55)
    assert [n for n, _ in man2.iter_files()] == [50, 55, 60, 70]
    man2.save_iter({"iteration": 60, "new": True}, 60)
    assert [n for n, _ in man2.iter_files()] == [50, 55, 60, 70]
    assert torch.load(tmp_path / "nnenv.iter60.pth", weights_only=False)["new"]
    man2.save_iter({"iteration": 65}, 65)
    assert [n for n, _ in man2.iter_files()] == [55, 60, 65, 70]
    # other names are not touched
    (tmp_path / "mix.iter1.pth").write_bytes(b"x")
    man.save_iter({}, 100)
    assert (tmp_path / "mix.iter1.pth").exists()
    with pytest.raises(ValueError, match="max_ckpt"):
        CheckpointManager(tmp_path, "x", max_ckpt=0)
    with pytest.raises(ValueError, match="name"):
        CheckpointManager(tmp_path, "a/b")


def test_best_only_improves_and_latest_is_real_file(tmp_path):
    man = CheckpointManager(tmp_path, "nnenv")
    assert man.best_metric is None
    assert man.save_best({"v": 1}, 0.5)
    assert not man.save_best({"v": 2}, 0.7)
    assert not man.save_best({"v": 3}, 0.5)
    assert not man.save_best({"v": 4}, math.nan)
    assert man.save_best({"v": 5}, 0.2)
    assert man.best_metric == 0.2
    assert torch.load(man.best_path, weights_only=False) == {"v": 5}
    man.save_latest({"v": 6})
    man.save_latest({"v": 7})
    assert not man.latest_path.is_symlink() and not man.best_path.is_symlink()
    assert torch.load(man.latest_path, weights_only=False) == {"v": 7}
    # best_metric survives a restart through state_dict
    man2 = CheckpointManager(tmp_path, "nnenv")
    man2.load_state_dict(man.state_dict())
    assert not man2.save_best({"v": 8}, 0.3)
    assert torch.load(man.best_path, weights_only=False) == {"v": 5}


def test_rng_restore_reproduces_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_atomic({"rng": rng_state()}, tmp_path / "rng.pth")

    def draws():
        return (torch.rand(5).tolist(), np.random.rand(5).tolist(), [random.random() for _ in range(5)],
                torch.randperm(10).tolist(), np.random.permutation(10).tolist())

    first = draws()
    assert draws() != first  # the generators moved on
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=False)["rng"])
    assert draws() == first


def _checkpoint():
    return {"config": {"model_options": {}}, "model_state_dict": {"w": torch.ones(100, 100)},
            "eqtb_version": "0.1.0", "epoch": 3}


def test_load_checkpoint_ok_and_errors(tmp_path):
    good = save_atomic(_checkpoint(), tmp_path / "nnenv.latest.pth")
    ck = load_checkpoint(good)
    assert ck["epoch"] == 3 and torch.equal(ck["model_state_dict"]["w"], torch.ones(100, 100))

    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth.*not found"):
        load_checkpoint(missing)
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)

    truncated = tmp_path / "truncated.pth"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(truncated)
    assert str(truncated) in str(info.value)

    deeptb = save_atomic({"config": {}, "model_state_dict": {}, "task": "hamiltonians"},
                         tmp_path / "dptb.pth")
    with pytest.raises(CheckpointError, match="missing key.*'eqtb_version'.*DeePTB") as info:
        load_checkpoint(deeptb)
    assert str(deeptb) in str(info.value)
    v1 = save_atomic({"model_config": {}}, tmp_path / "v1.pth")
    with pytest.raises(CheckpointError, match="v1"):
        load_checkpoint(v1)
    not_dict = save_atomic([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list"):
        load_checkpoint(not_dict)
    assert issubclass(CheckpointError, ValueError)
    assert ckpt_mod.REQUIRED_KEYS == ("config", "model_state_dict", "eqtb_version")

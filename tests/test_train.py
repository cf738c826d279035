"""eqtb train on the real Si64 ABACUS data: the shipped DeePTB config is accepted unchanged, the loss
falls, a restarted run continues with exactly the losses of the uninterrupted one, and bad input
gives one-line errors."""

import json
import shutil

import pytest
import torch

from eqtb.cli import main
from eqtb.config import load_config
from eqtb.train.trainer import Trainer


@pytest.fixture()
def si64_run(tmp_path, data_dir, monkeypatch):
    """A DeePTB tutorial layout (data/Si64.0, data/info.json) with a small, quick variant of the
    tutorial config; cwd is the run folder so the config's root "./data" resolves as for DeePTB."""
    src = data_dir / "si64_abacus"
    (tmp_path / "data").mkdir()
    shutil.copytree(src / "Si64.0", tmp_path / "data" / "Si64.0")
    shutil.copy(src / "info.json", tmp_path / "data" / "info.json")
    cfg = json.loads((src / "input_short_cpu.json").read_text())
    emb = cfg["model_options"]["embedding"]
    emb.update(irreps_hidden="8x0e+8x1o+4x2e", n_layers=1, r_max={"Si": 5.0})
    cfg["train_options"].update(num_epoch=12, save_freq=5, validation_freq=4)
    (tmp_path / "small.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return tmp_path


def _losses(out):
    return [json.loads(line)["train_loss"] for line in open(out / "log" / "history.jsonl")]


def test_shipped_config_is_accepted_unchanged(data_dir):
    cfg = load_config(data_dir / "si64_abacus" / "input_short_cpu.json", {"train_options.num_epoch": 3})
    assert cfg.train_options.num_epoch == 3
    assert cfg.model_options.embedding.irreps_hidden == "32x0e+32x1o+16x2e"


def test_training_reduces_the_loss_and_writes_checkpoints(si64_run):
    code = main(["train", "small.json", "-o", "run", "-q"])
    assert code == 0
    losses = _losses(si64_run / "run")
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.75 * losses[0]
    ck = si64_run / "run" / "checkpoint"
    for name in ("slem.latest.pth", "slem.best.pth", "slem.iter5.pth", "slem.iter10.pth"):
        assert (ck / name).is_file()
    saved = json.loads((si64_run / "run" / "train_config.json").read_text())
    assert saved["train_options"]["num_epoch"] == 12
    assert saved["model_options"]["embedding"]["n_radial_basis"] == 10  # defaults filled


def test_a_run_shorter_than_validation_freq_leaves_a_best_checkpoint(si64_run):
    assert main(["train", "small.json", "-o", "short", "-q", "--num-epoch", "2"]) == 0  # validation_freq 4
    assert (si64_run / "short" / "checkpoint" / "slem.best.pth").is_file()


def test_restart_reproduces_the_uninterrupted_run(si64_run):
    cfg = load_config("small.json")
    full = Trainer(cfg, "full", progress=False)
    full.run()
    part = Trainer(load_config("small.json", {"train_options.num_epoch": 5}), "part", progress=False)
    part.run()
    resumed = Trainer(load_config("small.json"), "part", restart="part/checkpoint/slem.latest.pth", progress=False)
    assert resumed.epoch == 5
    resumed.run()
    a, b = _losses(si64_run / "full"), _losses(si64_run / "part")
    assert len(b) == len(a) == 12
    assert b[5:] == pytest.approx(a[5:], rel=1e-6, abs=0)


def test_fine_tuning_starts_from_the_given_weights(si64_run):
    main(["train", "small.json", "-o", "first", "-q", "--num-epoch", "6"])
    main(["train", "small.json", "-o", "second", "-q", "--num-epoch", "1", "-i", "first/checkpoint/slem.latest.pth"])
    first, second = _losses(si64_run / "first"), _losses(si64_run / "second")
    assert second[0] < 0.8 * first[0]  # not a fresh start


def test_a_checkpoint_of_an_earlier_model_revision_is_refused(si64_run, capsys):
    """A SLEM checkpoint written before SLEM's neighbour sums had their cutoff envelope (no
    ``model_revision``: revision 1) would predict other blocks with the same weights: loading it for
    prediction, fine-tuning (-i) and restart (-r) all stop with one line naming the file and why."""
    from eqtb.models import ModelError
    from eqtb.predict import load_model

    assert main(["train", "small.json", "-o", "new", "-q", "--num-epoch", "1"]) == 0
    state = torch.load("new/checkpoint/slem.latest.pth", weights_only=False)
    assert state["model_revision"] == 2
    load_model("new/checkpoint/slem.latest.pth")  # the current revision loads
    del state["model_revision"]
    torch.save(state, "old.pth")
    with pytest.raises(ModelError, match="slem model of revision 1, this eqtb's slem is revision 2 .*cutoff envelope"):
        load_model("old.pth")
    capsys.readouterr()
    for flag in ("-i", "-r"):
        assert main(["train", "small.json", "-o", f"again{flag}", "-q", flag, "old.pth"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and err[-1].startswith("eqtb train: error: old.pth: ") and "revision 1" in err[-1], err


def test_cpu_time_budget_stops_the_run_after_the_epoch_that_exceeds_it(si64_run):
    """--max-cpu-time: the epoch that passes the budget is the last one (a budget far below one epoch's
    CPU time: exactly one epoch), with its CPU time logged and the latest checkpoint written."""
    assert main(["train", "small.json", "-o", "run", "-q", "--max-cpu-time", "1e-6"]) == 0
    hist = [json.loads(line) for line in open(si64_run / "run" / "log" / "history.jsonl")]
    assert [h["epoch"] for h in hist] == [1]
    assert 0 < hist[0]["cpu_seconds"]
    assert load_config("small.json", {"train_options.max_cpu_time": 30}).train_options.max_cpu_time == 30.0
    assert (si64_run / "run" / "checkpoint" / "slem.latest.pth").is_file()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["train_options"]["optimizer"].update(lrr=1.0), "did you mean 'lr'"),
    (lambda c: c["model_options"]["embedding"].update(irreps_hidden="8x0e+8x1o"), "lacks 2e"),
    (lambda c: c["common_options"].update(basis={"Si": "2s2p"}), "basis"),
    (lambda c: c["data_options"]["train"].update(root="./nowhere"), "not found"),
])
def test_bad_configs_give_one_line_errors(si64_run, capsys, edit, message):
    cfg = json.loads((si64_run / "small.json").read_text())
    edit(cfg)
    (si64_run / "bad.json").write_text(json.dumps(cfg))
    assert main(["train", "bad.json", "-o", "bad", "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("eqtb train: error: ")]
    assert len(errors) == 1 and message in errors[0], lines
    assert all(line.startswith("eqtb train: warning: ") for line in lines if line not in errors), lines


def test_ignored_keys_are_named_once_on_one_line(si64_run, capsys):
    """The tutorial config sets tp_radial_emb, which eqtb does not implement: one warning line."""
    assert main(["train", "small.json", "-o", "run", "-q", "--num-epoch", "1"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["eqtb train: warning: small.json: model_options.embedding.tp_radial_emb: ignored by eqtb "
                     "(eqtb embeds the radial basis and the element types with one MLP, without a tensor product)"]


def test_update_lr_per_iter_steps_the_scheduler_every_batch(si64_run):
    """Two frames (the Si64 folder twice) -> two iterations per epoch: with update_lr_per_iter the
    exponential schedule decays per batch, otherwise per epoch (DeePTB's semantics)."""
    shutil.copytree(si64_run / "data" / "Si64.0", si64_run / "data" / "Si64.1")
    cfg = json.loads((si64_run / "small.json").read_text())
    cfg["train_options"].update(num_epoch=3, lr_scheduler={"type": "exp", "gamma": 0.5})
    lrs = {}
    for per_iter in (False, True):
        cfg["train_options"]["update_lr_per_iter"] = per_iter
        (si64_run / "lr.json").write_text(json.dumps(cfg))
        assert main(["train", "lr.json", "-o", f"run{per_iter}", "-q"]) == 0
        lrs[per_iter] = [json.loads(line)["lr"] for line in open(si64_run / f"run{per_iter}" / "log" / "history.jsonl")]
    lr0 = cfg["train_options"]["optimizer"]["lr"]
    assert lrs[False] == pytest.approx([lr0, lr0 * 0.5, lr0 * 0.25])  # logged before the epoch's step
    assert lrs[True] == pytest.approx([lr0 * 0.25, lr0 * 0.5**4, lr0 * 0.5**6])  # after each epoch's 2 steps


def test_kill_9_then_resume_from_the_run_folder(si64_run):
    """A run killed with SIGKILL mid-training resumes with ``-r RUN_FOLDER`` from its newest periodic
    checkpoint and ends with exactly the losses of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = json.loads((si64_run / "small.json").read_text())
    cfg["train_options"].update(num_epoch=30, save_freq=5)
    (si64_run / "kill.json").write_text(json.dumps(cfg))
    assert main(["train", "kill.json", "-o", "full", "-q"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "eqtb.cli", "train", "kill.json", "-o", "part", "-q"],
                            cwd=si64_run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = si64_run / "part" / "log" / "history.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(history.read_text().splitlines())
    assert 12 <= killed_at < 30
    assert main(["train", "kill.json", "-o", "part", "-q", "-r", "part"]) == 0
    full, part = _losses(si64_run / "full"), _losses(si64_run / "part")
    assert len(part) == len(full) == 30
    assert part == pytest.approx(full, rel=1e-6, abs=0)


def test_restart_from_a_folder_without_checkpoints_is_one_line(si64_run, capsys):
    (si64_run / "empty").mkdir()
    assert main(["train", "small.json", "-o", "x", "-q", "-r", "empty"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if ": error: " in line] == [
        "eqtb train: error: empty: no *.latest.pth to resume from; give the checkpoint file"]


def test_best_is_chosen_on_the_whole_validation_set(si64_run):
    """With valid_fast (DeePTB's default: the logged val_loss is the first batch only) the best
    checkpoint still follows the loss over every validation frame."""
    for k in (1, 2):
        shutil.copytree(si64_run / "data" / "Si64.0", si64_run / "data" / f"Si64.{k}")
    cfg = json.loads((si64_run / "small.json").read_text())
    cfg["data_options"]["validation"] = dict(cfg["data_options"]["train"])
    cfg["train_options"].update(num_epoch=4, validation_freq=2, valid_fast=True, val_batch_size=1)
    (si64_run / "val.json").write_text(json.dumps(cfg))
    assert main(["train", "val.json", "-o", "val", "-q"]) == 0
    hist = [json.loads(line) for line in open(si64_run / "val" / "log" / "history.jsonl")]
    whole = {h["epoch"]: h["val_loss_whole"] for h in hist if "val_loss_whole" in h}
    assert sorted(whole) == [2, 4]
    best = torch.load(si64_run / "val" / "checkpoint" / "slem.best.pth", weights_only=False)
    assert best["epoch"] == min(whole, key=whole.get)

"""Training on two processes (``torchrun``, gloo on the CPU) equals training in one process with
the same global batch: a two-process run resumed (``-r``) from a one-process checkpoint goes on
with the per-step losses and weights of the one-process run to 1e-6, logs the same figures
(validation included), and only rank 0 writes and prints. The sums behind every loss add over any
split of a batch, gradients included. Data: water frames computed with PySCF in the test (blocks
of H and S, eigenvalues; the training set as LMDB, the validation set as folders). One torchrun
launch (two processes starting Python and torch take most of the test's time)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

from eqtb.config import load_config
from eqtb.distributed import share
from eqtb.train.data import make_batch
from eqtb.train.loss import build_loss
from eqtb.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

ROOT = Path(__file__).resolve().parents[1]

WATER_CFG = {
    "common_options": {"basis": {"O": "2s1p", "H": "1s"}, "device": "cpu", "dtype": "float64", "overlap": True,
                       "seed": 7},
    "model_options": {"embedding": {"method": "slem", "r_max": {"O": 3.0, "H": 3.0}, "irreps_hidden": "8x0e+8x1o+4x2e",
                                    "n_layers": 1, "avg_num_neighbors": 2.0},
                      "prediction": {"method": "e3tb", "neurons": [16, 16]}},
    # 5 frames in batches of 2: the last batch has one frame, so rank 1's share is empty
    "train_options": {"num_epoch": 3, "batch_size": 2, "optimizer": {"type": "Adam", "lr": 0.01},
                      "lr_scheduler": {"type": "exp", "gamma": 0.9},
                      "loss_options": {"train": {"method": "eig_ham", "coeff_ham": 0.5}},
                      "save_freq": 1, "validation_freq": 1, "display_freq": 1, "max_ckpt": 100, "val_batch_size": 3},
    "data_options": {"train": {"root": "lmdb", "prefix": "h2o", "type": "LMDBDataset", "get_Hamiltonian": True,
                               "get_overlap": True, "get_eigenvalues": True},
                     "validation": {"root": "folders", "prefix": "H2O", "get_Hamiltonian": True, "get_overlap": True,
                                    "get_eigenvalues": True}},
}


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    """Five displaced water molecules (PySCF, STO-3G) as folders and as one LMDB, and the config."""
    from ase import Atoms

    from eqtb.cli import main
    from eqtb.data.generate import generate

    tmp = tmp_path_factory.mktemp("ddp_water")
    generate(Atoms("OH2", positions=[[0, 0, 0], [0.757, 0.586, 0], [-0.757, 0.586, 0]]), tmp / "folders",
             nframes=5, basis="sto-3g", displacement=0.05, seed=3, progress=False, verbose=False)
    assert main(["convert", str(tmp / "folders"), "--to", "lmdb", "-p", "H2O", "-o", str(tmp / "lmdb" / "h2o.lmdb")]) == 0
    (tmp / "water.json").write_text(json.dumps(WATER_CFG))
    return tmp


def _torchrun(cwd: Path, *args: str) -> Path:
    """``eqtb train ARGS`` on 2 processes (torchrun, gloo); returns torchrun's per-rank log folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", "torchrun_logs", "--redirects", "3", "-m", "eqtb.cli", "train", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return cwd / "torchrun_logs"


def _single(cwd: Path, config: str, out: str) -> None:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        torch.set_num_threads(1)
        Trainer(load_config(config), out, progress=False).run()
    finally:
        os.chdir(old)


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log" / "history.jsonl").read_text().splitlines()]


def _assert_same_history(a: list[dict], b: list[dict]) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in ra:
            if k not in ("seconds", "cpu_seconds"):  # timings
                assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=0), (ra["epoch"], k)


def _assert_same_checkpoints(a: Path, b: Path, names: list[str]) -> None:
    """Weights (each tensor to 1e-6 of its largest entry) and the per-step losses of the epoch in
    progress of the checkpoints ``names`` in both folders."""
    for name in names:
        sa, sb = (torch.load(d / "checkpoint" / name, weights_only=False) for d in (a, b))
        assert sa["iteration"] == sb["iteration"] and sa["epoch"] == sb["epoch"]
        for k, t in sa["model_state_dict"].items():
            if t.is_floating_point():
                err = float((t - sb["model_state_dict"][k]).abs().max())
                assert err <= 1e-6 * float(t.abs().max()), (name, k, err)
        pa, pb = sa["epoch_progress"], sb["epoch_progress"]
        assert (pa is None) == (pb is None), name
        if pa is not None:
            assert pb["losses"] == pytest.approx(pa["losses"], rel=1e-6, abs=0), name


def test_two_processes_train_as_one(water):
    """SLEM, eig_ham (block and eigenvalue losses), LMDB training set, folder validation set,
    restarted by torchrun from the one-process checkpoint after step 1 (inside epoch 1): the
    weights and per-step losses of every later step, every logged figure; files and output from
    rank 0 only."""
    _single(water, "water.json", "single")
    logs = _torchrun(water, "water.json", "-o", "ddp", "-r", "single/checkpoint/slem.iter1.pth")
    single, ddp = water / "single", water / "ddp"
    names = sorted(p.name for p in (ddp / "checkpoint").iterdir())
    assert len(names) == 3 * 3 - 1 + 2 and "slem.iter9.pth" in names  # 3 steps per epoch, + latest, best
    _assert_same_checkpoints(single, ddp, names)
    hist = _history(ddp)
    assert len(hist) == 3 and "val_band_mae_meV" in hist[0] and "train_hopping_mae" in hist[0]
    _assert_same_history(_history(single), hist)
    # one writer: the same files, log lines not doubled, nothing printed by rank 1
    files = sorted(str(p.relative_to(ddp)) for p in ddp.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(single)) for p in single.rglob("*") if p.is_file()
                           if p.name != "slem.iter1.pth")
    lines = (ddp / "log" / "log.txt").read_text().splitlines()
    assert len(lines) == len((single / "log" / "log.txt").read_text().splitlines())
    assert "2 processes" in lines[0]
    out = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    err = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert set(out) == {0, 1}
    assert "trained 3 epochs" in out[0] and "epoch     3" in out[0] + err[0]
    assert out[1] == "" and err[1] == ""


@pytest.fixture(scope="module")
def water_trainer(water):
    """A Trainer of the water config (data loaded, model built), not run."""
    old = os.getcwd()
    os.chdir(water)
    try:
        return Trainer(load_config("water.json"), "unused", progress=False)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("options", [
    {"method": "hamil_abs"}, {"method": "hamil_blas"},
    {"method": "hamil_wt", "onsite_weight": {"O": 3.0}, "hopping_weight": {"O-H": 0.5, "H-H": 2.0}},
    {"method": "eigvals"}, {"method": "eig_ham", "coeff_ham": 0.3}])
def test_sums_add_over_shares(water_trainer, options, one_thread):
    """A batch split into 3 shares: the loss combined from the added sums, and the sum over the
    shares of the gradients with the other shares' sums held fixed (what each process computes),
    equal the loss and gradient of the whole batch."""
    trainer = water_trainer
    model, samples = trainer.model, trainer.train_set
    loss_fn = build_loss(trainer.basis, options, trainer.quantity, overlap=True)
    params = [p for p in model.parameters() if p.requires_grad]

    def sums(part):
        batch = make_batch(part)
        return loss_fn.sums(model(batch.inputs), batch)

    whole, info = loss_fn.combine(sums(samples))
    grad = torch.autograd.grad(whole, params, allow_unused=True)
    parts = [share(samples, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [2, 2, 1]
    mine = [sums(p) for p in parts]
    total = {k: sum(m[k].detach() for m in mine) for k in mine[0]}
    combined, info_split = loss_fn.combine(total)
    assert float(combined.detach()) == pytest.approx(float(whole.detach()), rel=1e-12)
    assert info_split == pytest.approx(info, rel=1e-12)
    split_grad = [torch.zeros_like(p) for p in params]
    for m in mine:  # this share's sums live, the others' fixed at the total
        loss = loss_fn.combine({k: m[k] + (total[k] - m[k].detach()) for k in m})[0]
        for acc, g in zip(split_grad, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                acc += g
    for g, s in zip(grad, split_grad):
        ref = g if g is not None else torch.zeros_like(s)
        assert float((ref - s).abs().max()) <= 1e-10 * max(float(ref.abs().max()), 1e-30)
    assert any(float(g.abs().max()) > 0 for g in grad if g is not None)
    # shares of a mean-type loss do not average to the batch's loss: the test can fail
    per_share = [float(loss_fn.combine(m)[0].detach()) for m in mine]
    assert abs(sum(per_share) / 3 - float(whole.detach())) > 1e-6 * float(whole.detach())

"""The newcomer's first run, ``eqtb.demo.run_demo``, in its quick form: real PySCF data of Si,
a short training, the test on an unseen frame and the supercell prediction (one run shared by
the module, about a minute), then a second run on the cached data."""

import contextlib
import io
import json
import math

import numpy as np
import pytest

pytest.importorskip("pyscf")

from eqtb.config import config_to_dict, load_config, resolve_root
from eqtb.demo import QUICK_EPOCHS, DemoError, diamond_silicon, evaluate_frame, run_demo


def _run(out, **kw):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary = run_demo(out, quick=True, progress=False, **kw)
    return summary, buf.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    summary, text = _run(out)
    return out, summary, text


def test_stages_files_and_summary(demo):
    out, summary, text = demo
    for k in range(1, 5):
        assert f"[{k}/4]" in text
    assert "generating" in text and "with PySCF" in text
    for key in ("config", "checkpoint", "band_test", "band_supercell", "summary"):
        assert (out / summary["files"][key]).is_file(), key
    for png in ("band_test.png", "band_supercell.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "demo_summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    t = summary["timings_s"]
    assert set(t) == {"data", "train", "test", "scale", "total"}
    assert all(v > 0 for v in t.values())
    assert t["total"] >= t["data"] + t["train"] + t["test"] + t["scale"] - 0.05  # each rounded to 0.01 s
    # quick mode trains a fixed number of epochs, however busy the machine (no time budget)
    assert summary["training"]["epochs"] == QUICK_EPOCHS and summary["training"]["stop"] == "done"
    assert summary["epochs"] == QUICK_EPOCHS and summary["minutes"] is None
    assert summary["training"]["checkpoint"].endswith("slem.latest.pth")  # the model at the end, not best
    assert "train/checkpoint/slem.latest.pth" in text and "latest, not best" in text
    # a fresh folder: every frame computed by PySCF and checked by the generator (< 1 meV)
    assert summary["data"]["computed"] == len(summary["data"]["frames_train"]) + 1
    assert summary["data"]["cached"] == 0
    assert summary["data"]["self_check_max_meV"] < 1.0


def test_input_json_reproduces_the_run(demo):
    """OUT/input.json is a valid DeePTB-style config whose data roots resolve (from any working
    directory) to the demo's split, and it is the configuration the run used."""
    out, summary, _ = demo
    cfg = load_config(out / "input.json")
    assert cfg.train_options.num_epoch == QUICK_EPOCHS and cfg.train_options.max_time is None
    train_root = resolve_root(cfg.data_options.train.root, cfg.path)
    test_root = resolve_root(cfg.data_options.validation.root, cfg.path)
    assert train_root == (out / "data" / "train").resolve()
    assert test_root == (out / "data" / "test").resolve()
    train_frames = sorted(p.name for p in train_root.iterdir())
    test_frames = sorted(p.name for p in test_root.iterdir())
    assert train_frames == sorted(summary["data"]["frames_train"])
    assert test_frames == [summary["data"]["frame_test"]]
    assert summary["data"]["frame_test"] not in train_frames
    used = json.loads((out / "train" / "train_config.json").read_text())
    assert used == config_to_dict(cfg)


def test_trained_model_beats_untrained_on_unseen_frame(demo, tmp_path):
    """Band errors of the trained model on the test frame are finite, small on the scale of the
    valence band width, and far below those of the same network before training (its data-
    calibrated initial state, which predicts about the mean blocks: errors of eV)."""
    from eqtb.predict import Predictor
    from eqtb.train.trainer import Trainer

    out, summary, _ = demo
    te = summary["test"]
    for part in ("occupied", "empty"):
        assert math.isfinite(te[part]["mae_meV"]) and math.isfinite(te[part]["max_meV"])
    ideal = diamond_silicon(cubic=False)
    untrained = Trainer(load_config(out / "input.json"), tmp_path / "untrained", progress=False).model
    ev0 = evaluate_frame(Predictor(untrained), out / "data" / "test" / te["frame"], ideal.cell)
    width = float(ev0["vbm"] - ev0["reference"][:, 0].min())  # valence band width, eV (~13 here)
    assert 10.0 < width < 15.0
    e0 = ev0["errors"]
    assert e0["occupied"]["mae_meV"] > 500.0  # the untrained network is far off
    assert te["occupied"]["mae_meV"] < 0.5 * e0["occupied"]["mae_meV"]
    assert te["occupied"]["mae_meV"] < 0.03 * width * 1e3  # QUICK_EPOCHS epochs: < 3 % of the band width
    assert te["empty"]["mae_meV"] < 0.5 * e0["empty"]["mae_meV"]
    gap_err = abs(te["gap_eV"]["model"] - te["gap_eV"]["reference"])
    assert gap_err < 0.5 * abs(e0["gap_eV"]["model"] - e0["gap_eV"]["reference"])
    assert te["blocks"]["hamiltonian_mae_meV"]["all"] < 0.5 * ev0["blocks"]["hamiltonian_mae_meV"]["all"]
    # the reference bands are PySCF's (the generator's self-check on this frame, meV)
    assert te["self_check_meV"] < 1.0


def test_supercell(demo):
    _out, summary, _ = demo
    sc = summary["supercell"]
    assert sc["natoms"] == 8 * 2 * 2 * 2
    assert sc["norb"] == 4 * sc["natoms"] and sc["n_bands"] == sc["norb"]  # Si 1s1p: 4 states per atom
    assert sc["n_occupied"] == 2 * sc["natoms"]
    assert sc["nk"] >= 8 and sc["predict_s"] > 0
    assert 0.0 < sc["gap_eV"] < 3.0


def test_second_run_uses_cached_data_and_logs_progress(demo, capsys, monkeypatch):
    """A rerun reuses the PySCF frames; with its output redirected (not a terminal) and
    progress=None, the long stages write plain progress lines at a steady pace (here every
    0.2 s instead of ~20 s) rather than staying silent."""
    import eqtb.tb.spectrum as spectrum

    out, first, _ = demo
    monkeypatch.setattr(spectrum, "PROGRESS_LINE_S", 0.2)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        second = run_demo(out, quick=True, progress=None, epochs=40)
    text, err = buf.getvalue(), capsys.readouterr().err
    assert "cached from an earlier run" in text
    assert "generating" not in text
    assert second["data"]["computed"] == 0
    assert second["data"]["cached"] == len(first["data"]["frames_train"]) + 1
    assert second["timings_s"]["data"] < first["timings_s"]["data"]
    assert second["training"]["epochs"] == 40 and json.loads((out / "input.json").read_text())[
        "train_options"]["num_epoch"] == 40
    lines = [ln for ln in err.splitlines() if ln.strip().startswith("training: ")]
    assert len(lines) >= 2 and "/40 epochs" in lines[0] and lines[-1].endswith("(done)")
    assert "\r" not in err  # no bar in a log


def test_unusable_output_folder(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(DemoError, match="not empty"):
        run_demo(tmp_path / "busy", quick=True, progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DemoError, match="cannot write|not a folder"):
        run_demo(tmp_path / "afile" / "sub", quick=True, progress=False)
    with pytest.raises(DemoError, match="not a folder"):
        run_demo(tmp_path / "afile", quick=True, progress=False)


def test_missing_pyscf_is_a_clear_error(tmp_path, monkeypatch):
    import eqtb.demo as demo_mod

    monkeypatch.setattr(demo_mod, "_have_pyscf", lambda: False)
    with pytest.raises(DemoError, match=r"pip install pyscf") as exc:
        _run(tmp_path / "new")
    assert ".[pyscf]" in str(exc.value)


def test_diamond_cells():
    cubic, prim = diamond_silicon(cubic=True), diamond_silicon(cubic=False)
    assert cubic.natoms == 8 and prim.natoms == 2
    # same density, nearest-neighbour distance a sqrt(3) / 4
    assert np.isclose(abs(np.linalg.det(cubic.cell)) / 8, abs(np.linalg.det(prim.cell)) / 2)
    d = np.linalg.norm(prim.positions[1] - prim.positions[0])
    assert np.isclose(d, 5.43 * np.sqrt(3) / 4)

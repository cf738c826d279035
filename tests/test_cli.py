"""The ``eqtb`` command line: band and dos subcommands on real Si64 data, and error handling."""

import json
import subprocess
import sys

import numpy as np
import pytest

from eqtb.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "band" in out and "dos" in out


def test_help_does_not_import_heavy_modules():
    code = ("import sys\nfrom eqtb.cli import build_parser\nbuild_parser().format_help()\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'scipy', 'h5py', 'e3nn') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_band_si64(data_dir, tmp_path, capsys):
    out = tmp_path / "band"
    rc = main(["band", str(data_dir / "si64_abacus" / "Si64.0"), str(data_dir / "si64_abacus" / "band.json"),
               "-o", str(out)])
    assert rc == 0
    for name in ("band.png", "bands.npy", "kpoints.npy", "band_summary.json", "bandstructure.npy"):
        assert (out / name).is_file(), name
    bands = np.load(out / "bands.npy")
    kpts = np.load(out / "kpoints.npy")
    assert bands.shape == (144, 256) and kpts.shape == (144, 3)
    assert np.all(np.diff(bands, axis=1) >= 0)
    s = json.loads((out / "band_summary.json").read_text())
    for key in ("fermi_level", "gap", "vbm", "cbm", "direct", "gap_type", "valence_bandwidth", "n_kpoints"):
        assert key in s, key
    assert s["n_kpoints"] == 144 and s["n_electrons"] == 256 and s["molecule"] is False
    # DeePTB: the task's "E_fermi": 0.0 is the reference, the level from nel_atom is reported beside it
    assert s["fermi_level"] == 0.0 and s["fermi_level_source"] == "task E_fermi"
    assert s["vbm"] < s["fermi_level_nel_atom"] < s["cbm"]
    assert s["fermi_level_nel_atom_source"].startswith("nel_atom, ")
    assert s["gap"] == pytest.approx(s["cbm"] - s["vbm"], abs=1e-5) and s["gap"] > 0.5
    assert s["vbm"] == pytest.approx(bands[:, 127].max(), abs=1e-5)
    assert s["tick_labels"][:2] == ["G", "X|Y"]
    d = np.load(out / "bandstructure.npy", allow_pickle=True).item()  # DeePTB's layout
    assert d["eigenvalues"].shape == (144, 256) and d["E_fermi"] == pytest.approx(s["fermi_level"], abs=1e-6)
    printed = capsys.readouterr()
    assert "band gap" in printed.out and printed.err == ""
    assert "Fermi level 0.0000 eV (task E_fermi); from nel_atom: " in printed.out


def test_dos_dataset_root_flat_task(data_dir, tmp_path, capsys):
    # dataset root with one folder; a flat dos task (no task_options) with DeePTB keys
    task = tmp_path / "dos.json"
    task.write_text(json.dumps({"task": "dos", "mesh_grid": [2, 2, 2], "sigma": 0.1, "npoints": 801,
                                "width": [-15, 15], "nel_atom": {"Si": 4}, "device": "cpu"}))
    out = tmp_path / "dos"
    rc = main(["dos", str(data_dir / "si64_abacus"), str(task), "--pdos", "shell", "-o", str(out)])
    assert rc == 0
    arr = np.load(out / "dos.npy")
    head = json.loads((out / "dos.json").read_text())
    assert head["columns"] == ["energy", "total", "Si 1s", "Si 1p"] and arr.shape == (801, 4)
    np.testing.assert_allclose(arr[:, 2] + arr[:, 3], arr[:, 1], atol=1e-9 * arr[:, 1].max())
    assert head["n_kpoints_irreducible"] == 8 and head["fermi_level"] is not None
    assert arr[0, 0] == pytest.approx(head["fermi_level"] - 15)
    assert (out / "dos.png").is_file()


def test_fermi_rule_same_in_band_and_dos(data_dir, tmp_path, capsys):
    """band and dos apply one Fermi-level rule. With DeePTB's band.json (nel_atom and
    "E_fermi": 0.0) both use the task's E_fermi, as DeePTB does, and report the same level computed
    from nel_atom beside it; --nel-atom on the command line makes the computed level the
    reference (with a warning that the task's E_fermi is not used); an explicit --e-fermi wins."""
    folder, task = str(data_dir / "si64_abacus" / "Si64.0"), str(data_dir / "si64_abacus" / "band.json")
    common = [folder, task, "--mesh", "2", "2", "2", "-q"]
    assert main(["band", *common, "--kpath", "GX", "--nkpoints", "5", "-o", str(tmp_path / "b")]) == 0
    band_err = capsys.readouterr().err
    assert main(["dos", *common, "-o", str(tmp_path / "d")]) == 0
    dos_err = capsys.readouterr().err
    band = json.loads((tmp_path / "b" / "band_summary.json").read_text())
    dos = json.loads((tmp_path / "d" / "dos.json").read_text())
    for summary, err in ((band, band_err), (dos, dos_err)):
        assert summary["fermi_level"] == 0.0 and summary["fermi_level_source"] == "task E_fermi"
        assert summary["fermi_level_nel_atom_source"] == "nel_atom, 2x2x2 mesh"
        assert summary["warnings"] == [] and err == ""
    assert band["fermi_level_nel_atom"] == dos["fermi_level_nel_atom"] and band["mesh_gap"] == dos["gap"]
    nel = ["--nel-atom", '{"Si": 4}']
    assert main(["band", *common, *nel, "--kpath", "GX", "--nkpoints", "5", "-o", str(tmp_path / "b2")]) == 0
    band_err = capsys.readouterr().err
    assert main(["dos", *common, *nel, "-o", str(tmp_path / "d2")]) == 0
    dos_err = capsys.readouterr().err
    band2 = json.loads((tmp_path / "b2" / "band_summary.json").read_text())
    dos2 = json.loads((tmp_path / "d2" / "dos.json").read_text())
    warning = "task E_fermi = 0.0 ignored: the Fermi level is computed from nel_atom"
    for summary, err, cmd in ((band2, band_err, "band"), (dos2, dos_err, "dos")):
        assert summary["fermi_level_source"] == "nel_atom, 2x2x2 mesh"
        assert summary["fermi_level"] == band["fermi_level_nel_atom"]
        assert warning in summary["warnings"] and err == f"eqtb {cmd}: warning: {warning}\n"
    assert main(["dos", *common, "--e-fermi", "6.5", "-o", str(tmp_path / "e")]) == 0
    explicit = json.loads((tmp_path / "e" / "dos.json").read_text())
    assert explicit["fermi_level"] == 6.5 and explicit["fermi_level_source"] == "--e-fermi"
    assert explicit["fermi_level_nel_atom"] == band["fermi_level_nel_atom"]
    assert explicit["warnings"] == [] and capsys.readouterr().err == ""
    rc, err = _run_err(["dos", *common, "--emin", "1", "--emax", "-1", "-o", str(tmp_path / "f")], capsys)
    assert rc == 2 and "empty energy window: emin 1 >= emax -1" in err


def test_quiet_prints_nothing(data_dir, tmp_path, capsys):
    folder = str(data_dir / "si64_abacus" / "Si64.0")
    assert main(["band", folder, "--kpath", "GX", "--nkpoints", "4", "--mesh", "1", "1", "1", "-q",
                 "-o", str(tmp_path / "b")]) == 0
    assert main(["dos", folder, "--mesh", "1", "1", "1", "-q", "-o", str(tmp_path / "d")]) == 0
    assert capsys.readouterr() == ("", "")


def test_warnings_once_under_the_command_name(capsys):
    """Python warnings and eqtb's own messages print through one channel: one line, the name of
    the command that was typed, each message once."""
    import warnings

    from eqtb.cli import _one_line_warnings, warn

    with _one_line_warnings("run"):
        warnings.warn("device 'cuda' requested")
        warn("run", "device 'cuda'   requested")
        warn("run", "another")
        warnings.warn("another")
    assert capsys.readouterr().err == "eqtb run: warning: device 'cuda' requested\neqtb run: warning: another\n"


def _run_err(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


def test_errors_are_one_line_exit_2(data_dir, tmp_path, capsys):
    folder = str(data_dir / "si64_abacus" / "Si64.0")
    bad = tmp_path / "broken_task.json"
    bad.write_text('{"task_options": {"task": "band", "kline_type": "abacus",, }}')
    rc, err = _run_err(["band", folder, str(bad), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "broken_task.json" in err and "malformed JSON" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    unk = tmp_path / "typo.json"
    unk.write_text(json.dumps({"task_options": {"task": "band", "kline_type": "abacus", "kpaht": []}}))
    rc, err = _run_err(["band", folder, str(unk)], capsys)
    assert rc == 2 and "typo.json" in err and "'kpaht'" in err and "did you mean 'kpath'" in err

    top = tmp_path / "top.json"
    top.write_text(json.dumps({"task_options": {"task": "band"}, "strucutre": "x.vasp"}))
    rc, err = _run_err(["band", folder, str(top)], capsys)
    assert rc == 2 and "did you mean 'structure'" in err

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"task_options": {"task": "band", "kline_type": "abacus",
                                                  "kpath": [[0, 0, 0, 5], [0.5, 0, 0, 5]]}}))
    rc, err = _run_err(["band", folder, str(wrong), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "wrong.json" in err and "count 1" in err

    rc, err = _run_err(["band", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "nowhere" in err

    rc, err = _run_err(["band", folder, "--nel-atom", "{Si"], capsys)
    assert rc == 2 and "--nel-atom" in err

    rc, err = _run_err(["dos", folder, str(tmp_path / "missing.json")], capsys)
    assert rc == 2 and "missing.json" in err


def test_convert_round_trips(data_dir, tmp_path):
    """dataset folder -> DeepH -> dataset folder keeps every block; dataset root -> LMDB keeps the frame."""
    import numpy as np

    from eqtb.cli import main
    from eqtb.data.folder import TrajectoryFolder
    from eqtb.data.lmdb import LMDBDataset

    src = data_dir / "si64_abacus" / "Si64.0"
    assert main(["convert", str(src), "--to", "deeph", "-o", str(tmp_path / "deeph")]) == 0
    assert main(["convert", str(tmp_path / "deeph" / "0"), "--to", "folder", "-o", str(tmp_path / "back")]) == 0
    a = TrajectoryFolder(src).frame(0)
    b = TrajectoryFolder(tmp_path / "back").frame(0)
    np.testing.assert_array_equal(a.hamiltonian.offsite, b.hamiltonian.offsite)
    np.testing.assert_array_equal(a.overlap.onsite, b.overlap.onsite)
    assert main(["convert", str(data_dir / "si64_abacus"), "--to", "lmdb", "-p", "Si64", "-o", str(tmp_path / "db")]) == 0
    c = LMDBDataset(tmp_path / "db")[0]
    np.testing.assert_array_equal(c.hamiltonian.offsite, a.hamiltonian.offsite)
    assert main(["convert", str(data_dir / "si64_abacus"), "--to", "lmdb", "-o", str(tmp_path / "db2")]) == 2

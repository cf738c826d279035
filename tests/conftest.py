"""Shared test fixtures. Real DFT data lives in ../shared/data relative to the project root
(override with the EQTB_SHARED_DATA environment variable)."""

import os
from pathlib import Path

# One thread for every library, set before numpy/torch load: the suite's matrices are small, and on a
# shared 2-core machine a second BLAS / OpenMP thread per process spins against the other jobs
# (a 144-k-point band test took 418 s instead of 2 s with a busy core). Subprocesses inherit it.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EQTB_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _no_progress_lines_on_a_loaded_machine():
    """Progress lines (printed to a non-terminal stderr every PROGRESS_LINE_S seconds of long work)
    would depend on the machine's load; tests that check them set their own interval."""
    from eqtb.tb import spectrum

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spectrum, "PROGRESS_LINE_S", 1e9)
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared DFT data not found at {DATA}")
    return DATA


def copy_si64(data_dir: Path, root: Path) -> Path:
    """DeePTB's tutorial layout of the Si64 ABACUS frame under ``root``: ``data/Si64.0`` (a writable
    copy; copyfile, as the shared files are read-only) and ``data/info.json``. Returns the frame folder."""
    import shutil

    src = data_dir / "si64_abacus"
    out = root / "data" / "Si64.0"
    out.mkdir(parents=True)
    for f in (src / "Si64.0").iterdir():
        shutil.copyfile(f, out / f.name)
    shutil.copyfile(src / "info.json", root / "data" / "info.json")
    return out


@pytest.fixture(scope="session")
def tiny_model(data_dir, tmp_path_factory) -> Path:
    """Checkpoint of a tiny SLEM (H and S of Si 1s1p) trained for 3 epochs on the real Si64 frame."""
    import json

    from eqtb.config import load_config
    from eqtb.train.trainer import Trainer

    src = data_dir / "si64_abacus"
    tmp = tmp_path_factory.mktemp("tiny_model")
    copy_si64(data_dir, tmp)
    cfg = json.loads((src / "input_short_cpu.json").read_text())
    cfg["model_options"]["embedding"].update(irreps_hidden="8x0e+8x1o+4x2e", n_layers=1, r_max={"Si": 5.0})
    cfg["model_options"]["prediction"]["neurons"] = [16, 16]
    cfg["train_options"]["num_epoch"] = 3
    (tmp / "input.json").write_text(json.dumps(cfg))
    Trainer(load_config(tmp / "input.json"), tmp / "train", progress=False).run()
    return tmp / "train" / "checkpoint" / "slem.latest.pth"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny graphs: intra-op threads only add overhead (seconds per forward on a busy host)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def si64_displaced(data_dir):
    """The 64-atom Si cell of the ABACUS data, every atom displaced by ~0.1 A (seed 1)."""
    from eqtb.models.testing import displaced
    from eqtb.structure import Structure

    return displaced(Structure.read(data_dir / "si64_abacus" / "Si64.vasp"), seed=1)


@pytest.fixture(scope="module")
def gaas_displaced():
    """A 16-atom zincblende GaAs supercell, every atom displaced by ~0.1 A (seed 3)."""
    from ase.build import bulk

    from eqtb.models.testing import displaced
    from eqtb.structure import Structure

    return displaced(Structure.from_ase(bulk("GaAs", "zincblende", a=5.65).repeat((2, 2, 2))), seed=3)

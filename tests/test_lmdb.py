"""LMDB datasets: folder -> LMDB -> Frame round trips on real data, dftio and DeePTB variants,
DataLoader workers, bad input, and streaming a dataset larger than a memory budget."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time

import lmdb
import numpy as np
import pytest

from eqtb.basis import Basis
from eqtb.data.folder import DatasetError, DatasetWarning, Frame, read_dataset
from eqtb.data.lmdb import LMDBDataset, entry_key, folder_to_lmdb, write_lmdb
from eqtb.operator import Operator


@pytest.fixture(scope="module")
def si64(data_dir):
    return read_dataset(data_dir / "si64_abacus", "Si64")[0].frame(0)


@pytest.fixture(scope="module")
def si64_lmdb(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmdb") / "si64.lmdb"
    assert folder_to_lmdb(data_dir / "si64_abacus", "Si64", out) == 1
    return out


def _ops_equal(a: Operator, b: Operator) -> bool:
    return a.basis == b.basis and all(np.array_equal(getattr(a, x), getattr(b, x))
                                      for x in ("onsite", "i", "j", "R", "offsite"))


def _frames_equal(a: Frame, b: Frame) -> None:
    for x in ("numbers", "positions", "cell", "pbc"):
        assert np.array_equal(getattr(a.structure, x), getattr(b.structure, x)), x
    for q in ("hamiltonian", "overlap", "density_matrix"):
        A, B = getattr(a, q), getattr(b, q)
        assert (A is None) == (B is None), q
        if A is not None:
            assert _ops_equal(A, B), q
    for x in ("kpoints", "eigenvalues"):
        A, B = getattr(a, x), getattr(b, x)
        assert (A is None) == (B is None), x
        if A is not None:
            assert np.array_equal(A, B), x


def _put_raw(path, values):
    """An LMDB database written by hand, one pickled value per 4-byte big-endian key."""
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for k, v in enumerate(values):
            txn.put(entry_key(k), v if isinstance(v, bytes) else pickle.dumps(v))
    env.close()
    return path


# ---------------------------------------------------------------------------------- round trips


def test_folder_to_lmdb_si64_blocks_identical(si64, si64_lmdb):
    ds = LMDBDataset(si64_lmdb)
    assert len(ds) == 1
    fr = ds[0]
    _frames_equal(si64, fr)
    assert fr.kpoints is not None and fr.eigenvalues is None  # Si64.0 has kpoints.npy only
    assert _ops_equal(ds[-1].hamiltonian, si64.hamiltonian)
    raw = ds.raw(0)  # dftio's layout
    assert raw["atomic_numbers"].dtype == np.int32 and raw["pos"].shape == (64, 3)
    assert raw["pbc"].tolist() == [True] * 3 and json.loads(raw["basis"]) == {"Si": "1s1p"}
    assert "0_0_0_0_0" in raw["hamiltonian"] and raw["idx"] == 0 and raw["nf"] == 0
    with pytest.raises(IndexError):
        ds[1]


def test_folder_to_lmdb_eigenvalues_identical(data_dir, tmp_path):
    root = data_dir / "silicon_bands"
    n = folder_to_lmdb(root, "kpathmd25", tmp_path / "bands.lmdb", progress=False)
    folder = read_dataset(root, "kpathmd25")[0]
    assert n == folder.nframes == 10
    ds = LMDBDataset(tmp_path / "bands.lmdb")
    assert len(ds) == 10
    for k in range(10):
        fr = ds[k]
        _frames_equal(folder.frame(k), fr)
        assert fr.eigenvalues.shape == (354, 60) and fr.kpoints.shape == (354, 3)
        assert ds.raw(k)["nf"] == k


def test_write_options_append_and_several_databases(si64, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert write_lmdb([si64], a, both_triangles=True, block_dtype=np.float32) == 1
    raw = LMDBDataset(a).raw(0)
    assert raw["hamiltonian"]["0_0_0_0_0"].dtype == np.float32
    assert len(raw["hamiltonian"]) == 64 + 2 * len(si64.hamiltonian.i)  # both triangles, as dftio
    with pytest.raises(DatasetError, match="already exists"):
        write_lmdb([si64], a)
    assert write_lmdb([Frame(si64.structure)], a, append=True) == 1  # key counter continues at 1
    write_lmdb([si64], b)
    ds = LMDBDataset([a, b])
    assert len(ds) == 3 and ds[1].hamiltonian is None
    assert np.allclose(ds[0].hamiltonian.offsite, si64.hamiltonian.offsite, atol=1e-6)
    _frames_equal(ds[2], si64)
    assert write_lmdb([si64, si64], a, overwrite=True) == 2
    assert len(LMDBDataset(a)) == 2
    # only the labels asked for are built
    fr = LMDBDataset(b, overlap=False, eigenvalues=False)[0]
    assert fr.overlap is None and fr.hamiltonian is not None
    # dftio's folder naming: <root>/data.<pid>.lmdb
    for name in ("data.12.lmdb", "data.7.lmdb"):
        write_lmdb([si64], tmp_path / "root" / name)
    ds = LMDBDataset.from_root(tmp_path / "root")
    assert [p.name for p in ds.paths] == ["data.12.lmdb", "data.7.lmdb"] and len(ds) == 2


def test_two_datasets_on_one_database_and_pickling(si64_lmdb, si64):
    """py-lmdb allows one handle per database per process: datasets share it."""
    a, b = LMDBDataset(si64_lmdb), LMDBDataset(si64_lmdb, overlap=False)
    assert _ops_equal(a[0].hamiltonian, b[0].hamiltonian)
    c = pickle.loads(pickle.dumps(a))  # what a spawn-started DataLoader worker receives
    _frames_equal(c[0], si64)
    a.close()
    _frames_equal(a[0], si64)  # reopened on demand
    assert b[0].overlap is None and _ops_equal(b[0].hamiltonian, si64.hamiltonian)


def _collate(frame):
    return frame.source, float(frame.hamiltonian.onsite[0, 0, 0]), frame.overlap.offsite.sum()


def test_dataloader_workers_after_fork(si64, tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    def frames():
        for k in range(6):
            H = si64.hamiltonian
            yield Frame(si64.structure, hamiltonian=Operator(H.structure, H.basis, H.onsite + k, H.i, H.j, H.R,
                                                             H.offsite), overlap=si64.overlap)

    write_lmdb(frames(), tmp_path / "db")
    ds = LMDBDataset(tmp_path / "db", check=False)
    first = _collate(ds[0])  # the parent has the database open before the workers fork
    loader = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=_collate,
                        multiprocessing_context="fork")
    got = list(loader)
    assert [g[1] for g in got] == [si64.hamiltonian.onsite[0, 0, 0] + k for k in range(6)]
    assert got[0] == first and len({g[0] for g in got}) == 6
    assert _collate(ds[5]) == got[5]  # the parent still reads after the workers are gone
    del torch


# ---------------------------------------------------------------------------------- foreign variants


def test_dftio_variant_needs_a_basis(si64, tmp_path):
    """dftio: float32 pos/cell, both triangles, no basis in the value, (nk, nb) eigenvalue arrays."""
    s = si64.structure
    value = {"atomic_numbers": s.numbers.astype(np.int32), "pos": s.positions.astype(np.float32),
             "cell": s.cell.astype(np.float32), "pbc": np.ones(3, bool),
             "hamiltonian": {k: v.astype(np.float32) for k, v in si64.hamiltonian.to_blocks(True).items()},
             "kpoint": np.zeros((2, 3)), "eigenvalue": np.array([[-1.0, 2.0, 3.0], [0.5, 1.0, 4.0]]),
             "idx": 3, "nf": 0}
    path = _put_raw(tmp_path / "data.123.lmdb", [value])
    ds = LMDBDataset(path)
    with pytest.raises(DatasetError, match=r"data\.123\.lmdb entry 0: blocks need a basis.*basis="):
        ds[0]
    fr = LMDBDataset(path, basis={"Si": "1s1p"})[0]
    assert np.allclose(fr.structure.positions, s.positions, atol=1e-5)
    assert np.allclose(fr.hamiltonian.offsite, si64.hamiltonian.offsite, atol=1e-5)
    assert fr.eigenvalues.shape == (2, 3) and fr.overlap is None
    assert LMDBDataset(path, hamiltonian=False)[0].hamiltonian is None  # no blocks asked: no basis needed


def test_deeptb_variant(si64, tmp_path):
    """DeePTB's own parser: per-atom basis bytes, 1-based keys, raw float32 bytes for k-points and
    eigenvalues (shape lost: skipped with a warning)."""
    s = si64.structure
    blocks = {}
    for k, v in si64.overlap.to_blocks().items():
        i, j, *R = (int(x) for x in k.split("_"))
        blocks[f"{i + 1}_{j + 1}_{R[0]}_{R[1]}_{R[2]}"] = v
    value = {"cell": s.cell.astype(np.float32), "pos": s.positions.astype(np.float32),
             "atomic_numbers": s.numbers.astype(np.int32), "pbc": np.ones(3, bool),
             "basis": ("1s1p\n" * 64).encode(), "overlap": blocks,
             "kpoint": np.zeros((4, 3), np.float32).tobytes(), "eigenvalue": np.zeros((4, 8), np.float32).tobytes(),
             "idx": 0}
    path = _put_raw(tmp_path / "deeptb.lmdb", [value, value])
    ds = LMDBDataset(path)
    with pytest.warns(DatasetWarning, match="raw bytes"):
        fr = ds[0]
    assert fr.kpoints is None and fr.eigenvalues is None
    assert fr.overlap.basis == Basis({"Si": "1s1p"})
    assert np.array_equal(fr.overlap.offsite, si64.overlap.offsite)  # 1-based keys detected
    bad = dict(value, basis=("1s1p\n" * 63 + "2s2p1d\n").encode())
    with pytest.raises(DatasetError, match="atom 63 .*'2s2p1d'"):
        LMDBDataset(_put_raw(tmp_path / "bad.lmdb", [bad]))[0]


# ---------------------------------------------------------------------------------- bad input


def test_bad_input(si64, tmp_path):
    with pytest.raises(DatasetError, match="nope: LMDB database does not exist"):
        LMDBDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: not an LMDB database directory"):
        LMDBDataset(tmp_path / "empty")
    (tmp_path / "file.lmdb").write_text("x")
    with pytest.raises(DatasetError, match=r"file\.lmdb: not an LMDB database directory"):
        LMDBDataset(tmp_path / "file.lmdb")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "positions.dat").write_text("0 0 0\n")
    with pytest.raises(DatasetError, match="not an LMDB database"):
        write_lmdb([si64], tmp_path / "folder")
    with pytest.raises(DatasetError, match="no LMDB directory matching"):
        LMDBDataset.from_root(tmp_path)
    s = si64.structure
    good = {"atomic_numbers": s.numbers, "pos": s.positions, "cell": s.cell, "pbc": np.ones(3, bool)}
    path = _put_raw(tmp_path / "bad.lmdb", [b"not a pickle", pickle.dumps([1, 2]), {"pos": s.positions},
                                            dict(good, hamiltonian={"0_0_0_0_0": np.zeros((4, 4))},
                                                 basis='{"Si": "1s1p"}'),
                                            dict(good, pos=s.positions[:10]), dict(good, basis="{'Si': 1}",
                                                                                   overlap={})])
    ds = LMDBDataset(path)
    assert len(ds) == 6
    with pytest.raises(DatasetError, match=r"bad\.lmdb entry 0: cannot unpickle"):
        ds[0]
    with pytest.raises(DatasetError, match="entry 1: value is a list"):
        ds[1]
    with pytest.raises(DatasetError, match=r"entry 2: missing \['atomic_numbers'\]"):
        ds[2]
    with pytest.raises(DatasetError, match="entry 3: hamiltonian: onsite blocks missing for atoms"):
        ds[3]
    with pytest.raises(DatasetError, match="entry 4: structure: 64 atomic numbers but 10 positions"):
        ds[4]
    with pytest.raises(DatasetError, match="entry 5: .*basis"):
        ds[5]
    with pytest.raises(DatasetError, match="eigenvalues must be"):
        write_lmdb([si64, Frame(s, eigenvalues=np.zeros((3, 4)))], tmp_path / "x")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".x", "x"))]  # no half database left


# ---------------------------------------------------------------------------------- streaming


STREAM_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from eqtb.data.lmdb import LMDBDataset

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

    path, budget = sys.argv[1], int(sys.argv[2])
    ds = LMDBDataset(path)
    ds[0]  # warm up: imports, caches, first allocations
    anon0, data0 = status("RssAnon:"), status("VmData:")
    # hard budget on private memory from here on; LMDB's read-only file mapping is shared, not counted
    resource.setrlimit(resource.RLIMIT_DATA, (data0 + budget, resource.RLIM_INFINITY))
    peak, bad = 0, []
    for k in range(len(ds)):
        fr = ds[k]
        if fr.hamiltonian.onsite[0, 0, 0] != k:
            bad.append(k)
        peak = max(peak, status("RssAnon:") - anon0)
    del fr
    result = {"n": len(ds), "peak_anon": peak, "bad": bad, "rss_file": status("RssFile:")}
    # control: keeping the frames instead of streaming them must break the same budget
    kept = []
    try:
        for k in range(len(ds)):
            kept.append(ds[k])
        result["control"] = "no MemoryError"
    except MemoryError:
        result["control"] = f"MemoryError after {len(kept)} frames"
    del kept
    print(json.dumps(result))
""")


def test_streams_a_dataset_larger_than_the_memory_budget(si64, tmp_path):
    """~320 MB of frames (Si64 graph, synthetic 2s2p1d H blocks, 6.6 MB per frame) streamed under a
    64 MiB hard limit on private memory (RLIMIT_DATA, set after the first frame)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_DATA accounting and /proc/self/status are Linux features")
    s, H = si64.structure, si64.hamiltonian
    basis = Basis({"Si": "2s2p1d"})
    F = basis.full_norb
    n, budget = 48, 64 << 20

    def frames():  # generated one at a time: writing is streamed too
        rng = np.random.default_rng(0)
        for k in range(n):
            on = rng.standard_normal((s.natoms, F, F))
            on = on + on.transpose(0, 2, 1)
            on[0, 0, 0] = k
            yield Frame(s, hamiltonian=Operator(s, basis, on, H.i, H.j, H.R, rng.standard_normal((len(H.i), F, F))))

    t0 = time.perf_counter()
    assert write_lmdb(frames(), tmp_path / "big") == n
    t_write = time.perf_counter() - t0
    size = os.path.getsize(tmp_path / "big" / "data.mdb")
    assert size > 4 * budget
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(tmp_path / "big"), str(budget)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    t_read = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nLMDB stream: {n} frames, {size / 1e6:.0f} MB; write {t_write / n * 1e3:.0f} ms/frame "
          f"({size / t_write / 1e6:.0f} MB/s); read+control subprocess {t_read:.1f} s; peak RssAnon growth "
          f"{res['peak_anon'] / 2**20:.1f} MiB (budget {budget >> 20} MiB); RssFile {res['rss_file'] / 2**20:.0f} "
          f"MiB (clean shared map pages); control: {res['control']}")
    assert res["n"] == n and res["bad"] == []
    assert res["peak_anon"] < budget
    assert res["control"].startswith("MemoryError")  # the limit is real: holding frames breaks it

"""Prediction across processes (eqtb.domains, Predictor.predict_domain), the distributed sparse
matrices and KPM (eqtb.tb.dmatrix) and ``eqtb run`` under torchrun: two processes (gloo, CPU) on a
256-atom supercell of the real Si64 cell must give the one-process H, S, KPM moments, DOS and
Fermi level.

The two-process part runs this file as the torchrun worker (``__main__`` below) in one launch; the
model is the session's tiny SLEM (trained on the ABACUS Si64 frame), rebuilt in float64 so that
"equal" means equal to double-precision rounding."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REPS = (4, 1, 1)  # 256 atoms, 43 A along a1: a slab of 21.7 A plus two 10 A halos fits inside
KPM = {"n_moments": 32, "n_random": 4, "solve_tol": 1e-6, "lanczos_steps": 20}
RUN_ARGS = ["--supercell", *map(str, REPS), "--method", "sparse", "--moments", "32", "--random-vectors", "2",
            "--nel-atom", '{"Si": 4}', "-q"]


def _gloo() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


pytestmark = pytest.mark.skipif(not _gloo(), reason="torch.distributed with the gloo backend is not available")


def _structure(data_dir):
    from eqtb.structure import Structure

    return Structure.read(data_dir / "si64_abacus" / "Si64.vasp").repeat(REPS)


K = [0.1, 0.2, -0.3]  # a general k-point (fractional) for the complex product


def _complex_block(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.standard_normal((n, 3)) + 1j * rng.standard_normal((n, 3))


# ------------------------------------------------------------------------------ single process
def test_domains_partition_and_hold_the_halo(data_dir):
    """Owned atoms of the domains partition the structure; every atom image within the halo of an
    owned atom is in its cluster, and the cluster maps back onto the structure's positions."""
    from eqtb.domains import decompose
    from eqtb.structure import build_graph

    s = _structure(data_dir)
    halo = 6.0
    doms = [decompose(s, 3, r, halo) for r in range(3)]
    owned = np.concatenate([d.owned for d in doms])
    assert sorted(owned.tolist()) == list(range(s.natoms))
    assert doms[0].axis == 0  # the long direction
    g = build_graph(s, halo)  # all pairs within the halo, with their cell shifts
    for d in doms:
        assert np.allclose(d.cluster.positions, s.positions[d.atoms] + d.shifts @ s.cell)
        # along the split axis the cluster holds images; along the others it stays periodic
        have = {(int(a), int(sh[0])) for a, sh in zip(d.atoms, d.shifts)}
        shift_of = {int(a): int(d.shifts[k, 0]) for k, a in enumerate(d.atoms[:d.n_owned])}
        for i, j, R in zip(*g.directed()):
            if int(i) in shift_of:
                assert (int(j), shift_of[int(i)] + int(R[0])) in have
        assert d.cluster.pbc.tolist() == [False, True, True]
        assert d.cluster.natoms < s.natoms  # a real halo, not the whole structure


def test_domains_of_a_structure_without_cell(data_dir):
    """No cell (a molecule, a cluster): slabs along the Cartesian axis of the largest extent, no
    images; every atom within the halo of an owned atom is in the cluster, and no other."""
    from scipy.spatial.distance import cdist

    from eqtb.domains import decompose
    from eqtb.structure import Structure

    s = _structure(data_dir)
    m = Structure(s.numbers, s.positions)
    d = decompose(m, 2, 1, 4.0)
    assert d.axis == 0 and not d.cluster.pbc.any() and not d.shifts.any()
    near = cdist(m.positions, m.positions[d.owned]).min(axis=1) <= 4.0
    assert set(np.flatnonzero(near)) <= set(d.atoms.tolist())
    assert len(d.atoms) < m.natoms


# ------------------------------------------------------------------------------ two processes
@pytest.fixture(scope="module")
def model64(tiny_model, tmp_path_factory) -> Path:
    """The tiny SLEM checkpoint rebuilt in float64 (same weights)."""
    import torch

    state = torch.load(tiny_model, map_location="cpu", weights_only=False)
    state["config"]["common_options"]["dtype"] = "float64"
    out = tmp_path_factory.mktemp("model64") / "slem64.pth"
    torch.save(state, out)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(model64, data_dir, tmp_path_factory) -> Path:
    """One torchrun launch of two processes running :func:`_worker`; returns its output folder."""
    out = tmp_path_factory.mktemp("dist")
    (out / "dos.json").write_text(json.dumps({"task_options": {"task": "dos"}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(model64),
           str(data_dir / "si64_abacus" / "Si64.vasp"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_two_processes_equal_one(two_processes, model64, data_dir):
    """Distributed H and S rows, KPM moments and DOS equal the one-process ones, and so does the
    product of the complex H(k) at a general k; the halo exchange was needed (each process reads
    columns it does not own)."""
    from eqtb.predict import Predictor
    from eqtb.tb.kpm import kpm_dos

    got = np.load(two_processes / "rank0.npz")
    ranks = [np.load(two_processes / f"rank{r}.npz") for r in range(2)]
    assert all(int(r["n_halo"]) > 0 for r in ranks)
    assert sum(int(r["n_owned"]) for r in ranks) == 1024
    pred = Predictor.load(model64).predict(_structure(data_dir))
    H, S = pred.sparse("hamiltonian"), pred.sparse("overlap")
    import scipy.sparse as sp

    Hd = sp.csr_matrix((got["H_data"], got["H_indices"], got["H_indptr"]), shape=H.shape)
    Sd = sp.csr_matrix((got["S_data"], got["S_indices"], got["S_indptr"]), shape=S.shape)
    assert abs(Hd - H).max() < 1e-10 * abs(H).max()
    assert abs(Sd - S).max() < 1e-10
    ref = kpm_dos(H, S, **KPM)
    assert np.allclose(got["bounds"], ref.bounds, rtol=0, atol=1e-9)
    assert np.abs(got["moments"] - ref.moments_per_vector).max() < 1e-9
    assert np.abs(got["dos"] - ref.dos).max() < 1e-8 * ref.dos.max()
    assert int(got["cg_total"]) == ref.cg_iterations["total"]
    yk = pred.sparse("hamiltonian", K) @ _complex_block(1024)
    assert np.abs(got["yk"] - yk).max() < 1e-10 * np.abs(yk).max()


def test_eqtb_run_under_torchrun_equals_one_process(two_processes, model64, data_dir):
    """``eqtb run`` dos under torchrun (2 processes, rank 0 writes) = the same run in one process."""
    from eqtb.cli import main

    one = two_processes / "run1"
    assert main(["run", str(two_processes / "dos.json"), "-i", str(model64), "-stu",
                 str(data_dir / "si64_abacus" / "Si64.vasp"), "-o", str(one), *RUN_ARGS]) == 0
    two = two_processes / "run2"
    a, b = json.loads((one / "dos.json").read_text()), json.loads((two / "dos.json").read_text())
    assert b["processes"] == 2 and "processes" not in a
    assert b["norb"] == a["norb"] == 1024
    assert abs(b["fermi_level"] - a["fermi_level"]) < 1e-8
    assert np.allclose(b["kpm"]["bounds"], a["kpm"]["bounds"], rtol=0, atol=1e-8)
    da, db = np.load(one / "dos.npy"), np.load(two / "dos.npy")
    assert np.abs(da - db).max() < 1e-7 * da[:, 1].max()


# ------------------------------------------------------------------------------ the worker
def _worker(model: str, poscar: str, out: str) -> None:
    """Run by torchrun: predict this rank's domain, gather H and S, distributed KPM, then ``eqtb run``."""
    import torch
    from eqtb import distributed
    from eqtb.cli import main
    from eqtb.predict import Predictor
    from eqtb.structure import Structure
    from eqtb.tb.dmatrix import kpm_dos_distributed

    out = Path(out)
    distributed.setup("cpu")
    assert distributed.world_size() == 2
    rank = distributed.rank()
    structure = Structure.read(poscar).repeat(REPS)
    dom = Predictor.load(model).predict_domain(structure)
    H, S = dom.sparse("hamiltonian"), dom.sparse("overlap")
    res = kpm_dos_distributed(H, S, **KPM)
    Hf, Sf = H.gather(), S.gather()
    Hk = dom.sparse("hamiltonian", k=K)  # complex rows: the exchange sends real pairs
    yk = Hk @ _complex_block(dom.norb)[Hk.owned]
    yk_all = [None, None]
    torch.distributed.all_gather_object(yk_all, (Hk.owned, yk))
    info = {"n_halo": len(H.halo), "n_owned": H.n_owned}
    if rank == 0:
        info.update(H_data=Hf.data, H_indices=Hf.indices, H_indptr=Hf.indptr, S_data=Sf.data,
                    S_indices=Sf.indices, S_indptr=Sf.indptr, moments=res.moments_per_vector, dos=res.dos,
                    bounds=np.array(res.bounds), cg_total=res.cg_iterations["total"],
                    yk=np.concatenate([y for _, y in yk_all])[np.argsort(np.concatenate([o for o, _ in yk_all]))])
    np.savez(out / f"rank{rank}.npz", **info)
    code = main(["run", str(out / "dos.json"), "-i", model, "-stu", poscar, "-o", str(out / "run2"), *RUN_ARGS])
    distributed.teardown()
    sys.exit(code)


if __name__ == "__main__":
    _worker(*sys.argv[1:4])

import json

import numpy as np
import pytest
import torch

from eqtb.basis import Basis
from eqtb.data.folder import TrajectoryFolder
from eqtb.metrics import BlockErrors, band_errors


@pytest.fixture(scope="module")
def si64(data_dir):
    folder = TrajectoryFolder(data_dir / "si64_abacus" / "Si64.0")
    H = folder.operator("hamiltonian", 0)
    S = folder.operator("overlap", 0)
    return H, S


def _types(op):
    t = op.basis.types_of(op.structure.numbers)
    return t, t[op.i], t[op.j]


def test_exact_blocks_give_zero(si64):
    H, S = si64
    err = BlockErrors(H.basis)
    err.add_operator("hamiltonian", H, H)
    err.add_operator("overlap", S, S)
    res = err.result()
    assert set(res) == {"hamiltonian", "overlap"}
    assert res["hamiltonian"]["unit"] == "meV" and res["overlap"]["unit"] == "1e-3"
    for q in res.values():
        assert q["onsite"]["count"] == 64 * 16
    for q, op in ((res["hamiltonian"], H), (res["overlap"], S)):
        assert q["offsite"]["count"] == len(op.i) * 16
        assert q["all"]["count"] == (64 + len(op.i)) * 16
        assert q["all"]["mae"] == 0 and q["all"]["rmse"] == 0
        assert set(q["by_pair"]["onsite"]) == {"Si"} and set(q["by_pair"]["offsite"]) == {"Si-Si"}
        assert set(q["by_orbital"]["offsite"]) == {"s-s", "s-p", "p-p"}
        # s-p counts both s-row/p-column and p-row/s-column entries
        assert q["by_orbital"]["offsite"]["s-p"]["count"] == len(op.i) * 6
        assert q["by_orbital"]["onsite"]["p-p"]["count"] == 64 * 9


def test_known_perturbation(si64):
    H, _ = si64
    types, ti, tj = _types(H)
    on = H.onsite.copy()
    on[:, 0, 0] += 1e-3  # +1 meV on every onsite s-s entry
    off = H.offsite.copy()
    off[:, 0, 1:4] += 2e-3  # +2 meV on the s-row/p-column entries of every bond (not p-row/s-column)
    err = BlockErrors(H.basis)
    err.add("hamiltonian", on, H.onsite, types)
    err.add("hamiltonian", off, H.offsite, ti, tj)
    r = err.result()["hamiltonian"]
    assert r["by_orbital"]["onsite"]["s-s"]["mae"] == pytest.approx(1.0, rel=1e-9)
    assert r["by_orbital"]["onsite"]["s-s"]["rmse"] == pytest.approx(1.0, rel=1e-9)
    assert r["by_orbital"]["onsite"]["s-p"]["mae"] == 0 and r["by_orbital"]["onsite"]["p-p"]["mae"] == 0
    assert r["by_orbital"]["offsite"]["s-s"]["mae"] == 0 and r["by_orbital"]["offsite"]["p-p"]["mae"] == 0
    # half of the s-p entries are off by 2 meV
    assert r["by_orbital"]["offsite"]["s-p"]["mae"] == pytest.approx(1.0, rel=1e-9)
    assert r["by_orbital"]["offsite"]["s-p"]["rmse"] == pytest.approx(np.sqrt(2.0), rel=1e-9)
    # 1 of the 16 entries of every onsite block is off by 1 meV
    assert r["onsite"]["mae"] == pytest.approx(1 / 16, rel=1e-9)
    assert r["onsite"]["rmse"] == pytest.approx(0.25, rel=1e-9)
    assert r["by_pair"]["onsite"]["Si"]["mae"] == pytest.approx(1 / 16, rel=1e-9)
    assert r["offsite"]["mae"] == pytest.approx(6 / 16, rel=1e-9)
    assert r["all"]["mae"] == pytest.approx((64 * 1 + len(H.i) * 6) / ((64 + len(H.i)) * 16), rel=1e-9)


def test_random_errors_match_direct_computation(si64):
    H, _ = si64
    _, ti, tj = _types(H)
    rng = np.random.default_rng(0)
    pred = H.offsite + rng.normal(scale=0.01, size=H.offsite.shape)
    err = BlockErrors(H.basis)
    err.add("hamiltonian", pred, H.offsite, ti, tj)
    d = np.abs(pred - H.offsite) * 1000
    r = err.result()["hamiltonian"]
    assert r["offsite"]["mae"] == pytest.approx(d.mean(), rel=1e-12)
    assert r["offsite"]["rmse"] == pytest.approx(np.sqrt((d ** 2).mean()), rel=1e-12)
    assert r["by_orbital"]["offsite"]["p-p"]["mae"] == pytest.approx(d[:, 1:, 1:].mean(), rel=1e-12)
    assert r["onsite"] == {"mae": None, "rmse": None, "count": 0}
    for sec in (r["by_pair"]["offsite"], r["by_orbital"]["offsite"]):
        for s in sec.values():
            assert s["rmse"] >= s["mae"] > 0
    # streaming: two halves give the same as one call; torch tensors give the same as numpy
    half = BlockErrors(H.basis)
    cut = len(ti) // 3
    half.add("hamiltonian", pred[:cut], H.offsite[:cut], ti[:cut], tj[:cut])
    half.add("hamiltonian", torch.from_numpy(pred[cut:]), torch.from_numpy(H.offsite[cut:]),
             torch.from_numpy(ti[cut:]), torch.from_numpy(tj[cut:]))
    assert half.result()["hamiltonian"]["offsite"]["mae"] == pytest.approx(r["offsite"]["mae"], rel=1e-12)
    assert half.result()["hamiltonian"]["offsite"]["count"] == r["offsite"]["count"]


def test_two_elements_masks_and_unordered_pairs():
    basis = Basis({"As": "2s2p1d", "Ga": "2s2p2d1f"})
    assert basis.symbols == ["Ga", "As"]
    F = basis.full_norb
    assert F == 2 + 6 + 10 + 7
    ga_norb, as_norb = 25, 13
    mask = basis.orbital_mask
    # onsite: 3 Ga, 2 As atoms; garbage outside each element's orbitals must not count
    t_on = np.array([0, 0, 0, 1, 1])
    target = np.zeros((5, F, F))
    pred = np.full((5, F, F), 1e6)
    for n, t in enumerate(t_on):
        m = np.outer(mask[t], mask[t])
        pred[n][m] = 1e-3 if t == 0 else 3e-3
    # off-site: 2 Ga-As, 1 As-Ga, 1 Ga-Ga, 2 As-As blocks
    ti = np.array([0, 0, 1, 0, 1, 1])
    tj = np.array([1, 1, 0, 0, 1, 1])
    vals = np.array([1e-3, 1e-3, 4e-3, 2e-3, 5e-3, 5e-3])
    t_off = np.zeros((6, F, F))
    p_off = np.full((6, F, F), -7e5)
    for n, (a, b) in enumerate(zip(ti, tj)):
        p_off[n][np.outer(mask[a], mask[b])] = vals[n]
    err = BlockErrors(basis)
    err.add("hamiltonian", pred, target, t_on)
    err.add("hamiltonian", p_off, t_off, ti, tj)
    r = err.result()["hamiltonian"]
    on = r["by_pair"]["onsite"]
    assert on["Ga"] == {"mae": pytest.approx(1.0), "rmse": pytest.approx(1.0), "count": 3 * ga_norb ** 2}
    assert on["As"]["mae"] == pytest.approx(3.0) and on["As"]["count"] == 2 * as_norb ** 2
    off = r["by_pair"]["offsite"]
    assert set(off) == {"Ga-Ga", "Ga-As", "As-As"}  # As-Ga blocks are in Ga-As
    assert off["Ga-As"]["count"] == 3 * ga_norb * as_norb
    assert off["Ga-As"]["mae"] == pytest.approx((1 + 1 + 4) / 3)
    assert off["Ga-As"]["rmse"] == pytest.approx(np.sqrt((1 + 1 + 16) / 3))
    assert off["Ga-Ga"]["mae"] == pytest.approx(2.0) and off["As-As"]["mae"] == pytest.approx(5.0)
    assert r["all"]["count"] == 3 * 625 + 2 * 169 + 3 * 325 + 625 + 2 * 169
    # orbital kinds: f only on Ga, so f-f only in Ga-Ga blocks, d-f from Ga-Ga and Ga-As/As-Ga
    obo = r["by_orbital"]["offsite"]
    assert obo["f-f"]["count"] == 49 and obo["f-f"]["mae"] == pytest.approx(2.0)
    assert obo["d-f"]["count"] == 2 * 10 * 7 + 3 * 5 * 7
    assert set(r["by_orbital"]["onsite"]) == {"s-s", "s-p", "s-d", "s-f", "p-p", "p-d", "p-f", "d-d",
                                              "d-f", "f-f"}
    assert sum(s["count"] for s in obo.values()) == r["offsite"]["count"]
    # the same blocks counted with rows and columns swapped (the other triangle) give the same groups
    sw = BlockErrors(basis)
    sw.add("hamiltonian", np.swapaxes(p_off, 1, 2), t_off, tj, ti)
    swapped = sw.result()["hamiltonian"]["by_pair"]
    assert swapped["onsite"] == {} and set(swapped["offsite"]) == set(off)
    for name, s in off.items():
        assert swapped["offsite"][name] == {k: pytest.approx(v, rel=1e-12) for k, v in s.items()}


def test_result_json_and_table(si64):
    H, S = si64
    _, ti, tj = _types(S)
    rng = np.random.default_rng(1)
    err = BlockErrors(H.basis)
    err.add_operator("hamiltonian", (H.onsite + rng.normal(scale=1e-3, size=H.onsite.shape), H.offsite), H)
    err.add("overlap", S.offsite + 1e-4, S.offsite, ti, tj)
    res = err.result()
    assert json.loads(json.dumps(res)) == res
    assert res["overlap"]["offsite"]["mae"] == pytest.approx(0.1, rel=1e-9)  # 1e-4 = 0.1 x 1e-3
    text = err.table()
    for label in ("all", "onsite", "offsite", "onsite Si", "offsite Si-Si", "onsite s-s", "offsite s-p",
                  "offsite p-p", "MAE (meV)", "RMSE (meV)", "N entries", "×1e-3", "hamiltonian", "overlap"):
        assert label in text
    assert BlockErrors(H.basis).table() == "(no block errors accumulated)"


def test_bad_input(si64):
    H, _ = si64
    err = BlockErrors(H.basis)
    types = np.zeros(64, dtype=np.int64)
    with pytest.raises(ValueError, match="unknown quantity"):
        err.add("hamiltonain", H.onsite, H.onsite, types)
    with pytest.raises(ValueError, match=r"\(E, F, F\)"):
        err.add("hamiltonian", H.onsite[:, :3], H.onsite[:, :3], types)
    with pytest.raises(ValueError, match="type indices"):
        err.add("hamiltonian", H.onsite, H.onsite, types + 1)
    bad = H.onsite.copy()
    bad[3, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        err.add("hamiltonian", bad, H.onsite, types)
    assert err.result()["hamiltonian"]["all"]["count"] == 0  # nothing accumulated by failed calls


def test_band_errors(data_dir):
    ref = np.load(data_dir / "silicon_bands" / "kpath.0" / "eigenvalues.npy")[0]
    nk, nb = ref.shape
    shifted = ref + 0.3
    r = band_errors(shifted, ref, align="mean")
    assert r["mae"] == pytest.approx(0, abs=1e-9) and r["max_abs"] == pytest.approx(0, abs=1e-9)
    assert r["shift"] == pytest.approx(300)
    assert band_errors(shifted, ref, align="min")["mae"] == pytest.approx(0, abs=1e-9)
    r = band_errors(torch.from_numpy(shifted), ref)
    assert r["mae"] == pytest.approx(300) and r["max_abs"] == pytest.approx(300)
    assert r["unit"] == "meV" and r["count"] == nk * nb and len(r["per_band_mae"]) == nb
    json.dumps(r)
    # one band wrong by 50 meV: per-band list and window
    pred = ref.copy()
    pred[:, 4] += 0.05
    fermi = float(ref[:, 3].max())
    r = band_errors(pred, ref, window=1.0, fermi=fermi)
    assert r["per_band_mae"][4] == pytest.approx(50) and r["per_band_mae"][3] == 0
    assert r["mae"] == pytest.approx(50 / nb)
    sel = np.abs(ref - fermi) <= 1.0
    assert r["window"]["count"] == sel.sum() > 0
    assert r["window"]["mae"] == pytest.approx(50 * sel[:, 4].sum() / sel.sum())
    assert r["window"]["max_abs"] == pytest.approx(50 if sel[:, 4].any() else 0)
    with pytest.raises(ValueError, match="fermi"):
        band_errors(pred, ref, window=1.0)
    with pytest.raises(ValueError, match="align"):
        band_errors(pred, ref, align="fermi")
    with pytest.raises(ValueError, match=r"\(nk, nb\)"):
        band_errors(pred[:, :3], ref)


def test_complex_blocks_use_modulus(si64):
    H, _ = si64
    _, ti, tj = _types(H)
    err = BlockErrors(H.basis)
    err.add("hamiltonian", H.offsite + (3e-3 + 4e-3j), H.offsite.astype(complex), ti, tj)
    r = err.result()["hamiltonian"]["offsite"]
    assert r["mae"] == pytest.approx(5.0, rel=1e-9) and r["rmse"] == pytest.approx(5.0, rel=1e-9)

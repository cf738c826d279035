"""The cutoff floor: how much band error a cutoff alone costs, before any model is trained.

A model with cutoff ``r_max`` predicts the blocks of the bonds shorter than ``r_max`` and nothing
beyond (:meth:`eqtb.operator.Operator.truncated`: a bond of elements A, B is kept when its length
``|r_j + R.A - r_i|`` is below the pair cutoff of ``r_max``, a number or a per-element / per-bond
dict as in DeePTB's ``model_options``, :func:`eqtb.structure.pair_cutoffs`). Even a perfect model
then has the bands of the exact DFT blocks truncated at ``r_max``; their error against the bands
of all the blocks is the *cutoff floor*, the least band error any model at that cutoff can reach.

:func:`cutoff_floor` measures it for one frame (exact H and S :class:`~eqtb.operator.Operator`)
at several candidate cutoffs: eigenvalues of the truncated H, S at the frame's k-points against
those of the untruncated ones, the same bands index by index, errors by
:func:`eqtb.metrics.band_errors` (no shift; a mean-shift-removed figure beside it) over the
entries whose untruncated energy lies within ``E_F +- window`` (default 5 eV), and over all bands.
The Fermi level follows eqtb's one rule (:func:`eqtb.tb.spectrum.resolve_fermi_level`): a given
level (``e_fermi``), else valence electrons (``nel_atom``: the level computed on the untruncated
bands of the frame's k-points, equal weights, or of the mesh, in the middle of the gap for an
insulator), else a known level of the data (``fermi_level.json`` of ``eqtb parse``), else none
(errors over all bands, ``window`` None). Per cutoff it also reports what a model there costs:
``bonds_per_atom``, the bonds of the model's graph (:func:`eqtb.structure.build_graph` at that
cutoff, each bond once) per atom; ``neighbours_per_atom`` = 2 x that; ``data_bonds_per_atom``, the
bonds of the data kept. A truncated overlap may lose positive definiteness: that cutoff is
reported (``s_positive_definite`` False, ``s_min_eigenvalue`` the smallest eigenvalue of S(k) over
the k-points, no band errors), not raised.

:func:`summarize` combines the frames (exact means over all (frame, k, band) entries, maxima over
frames), estimates the relative training cost per epoch as proportional to the bonds of the graph
(the edge work dominates a strictly local model's step) and recommends the cheapest candidate that
meets a target band MAE (default 20 meV) with positive-definite S, requiring every costlier
candidate to meet it too (so that a lucky dip of the floor is not recommended). :func:`floor_table`
prints it.

Units: Angstrom, eV; errors in meV (:func:`eqtb.metrics.band_errors`).
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from eqtb.config import CUTOFF_FRAMES, CUTOFF_TARGET_MEV, CUTOFF_WINDOW
from eqtb.data.folder import DatasetError, TrajectoryFolder, read_fermi_level
from eqtb.metrics import band_errors
from eqtb.operator import Operator
from eqtb.structure import build_graph, pair_cutoffs
from eqtb.tb.kpath import mesh_for_spacing, monkhorst_pack
from eqtb.tb.spectrum import (SpectrumError, band_energies, centre_in_gap, default_chunk, fermi_level,
                              iter_eigh, progress_reporter, resolve_fermi_level)

__all__ = ["CutoffError", "cutoff_floor", "dataset_floor", "floor_table", "rmax_label", "summarize"]

#: k-spacing (1/Angstrom, with 2 pi) of the mesh used when a frame has no k-points
MESH_SPACING = 0.25


class CutoffError(ValueError):
    """A cutoff or frame the floor cannot be computed for (bad r_max, broken untruncated data)."""


def rmax_label(r_max) -> str:
    """Short text of a cutoff: ``"8"``, ``"8.5"``, or a dict as compact JSON."""
    if isinstance(r_max, Mapping):
        return json.dumps(dict(r_max), separators=(",", ":"))
    return f"{float(r_max):g}"


def _check_rmax(r_max, symbols: list[str]):
    try:
        cut = pair_cutoffs(r_max, symbols)
    except (TypeError, ValueError) as exc:
        raise CutoffError(f"r_max {r_max!r}: {exc}") from None
    if not (np.isfinite(cut).all() and (cut > 0).all()):
        raise CutoffError(f"r_max {rmax_label(r_max)}: cutoffs must be positive, got {cut.ravel().tolist()}")
    return cut


def _min_overlap_eigenvalue(S: Operator, kpts: np.ndarray) -> float:
    """Smallest eigenvalue of S(k) over the k-points."""
    chunk = default_chunk(S.norb)
    return float(min(np.linalg.eigvalsh(S.dense(kpts[a:a + chunk]))[:, 0].min() for a in range(0, len(kpts), chunk)))


def cutoff_floor(H: Operator, S: Operator | None, r_maxes: Sequence, kpts=None, *, e_fermi: float | None = None,
                 nel_atom: Mapping[str, float] | None = None, data_fermi: float | None = None,
                 window: float | None = CUTOFF_WINDOW, reference_eigenvalues=None, name: str = "",
                 progress=None) -> dict:
    """The cutoff floor of one frame at each cutoff of ``r_maxes`` (module docstring).

    ``H``, ``S``: the exact operators of the frame (``S`` None: orthogonal basis). ``kpts`` (nk, 3)
    fractional (the dataset's ``kpoints.npy``; equal weights for the Fermi level), or None: a
    Gamma-centred, time-reversal-reduced mesh of k-spacing :data:`MESH_SPACING` (Gamma for a
    molecule). ``e_fermi``, ``nel_atom``, ``data_fermi``: the Fermi level (eV) or how to find it
    (module docstring). ``window`` (eV; None: all bands). ``reference_eigenvalues`` (nk, nb) eV:
    the data's own band energies at ``kpts`` (``eigenvalues.npy``): the error of the untruncated
    blocks against them is reported as ``blocks_vs_eigenvalues`` (a floor no cutoff removes).
    ``progress``: an object with ``update(1)`` called once per cutoff (or None).

    Returns ``{"name", "natoms", "norb", "nk", "kpoints", "fermi_level", "fermi_source", "window",
    "longest_bond", "rows", "warnings"[, "blocks_vs_eigenvalues"]}``; ``longest_bond`` (Angstrom)
    is the longest bond with a block in H or S (beyond it the floor is exactly 0); ``rows``, one
    per cutoff in the given order: ``r_max``, ``label``, ``max_pair_cutoff``, ``bonds_per_atom``,
    ``neighbours_per_atom``, ``data_bonds_per_atom``, ``s_positive_definite`` (None without S),
    ``s_min_eigenvalue``, ``error`` (text when the bands could not be computed, else None),
    ``all`` and ``window`` (``{"mae", "max_abs", "count"}`` in meV, ``window`` None without a Fermi
    level; None when ``error``) and ``window_mean_aligned`` (the window MAE after removing the mean
    shift of all the bands: a small floor can grow when high bands move)."""
    structure, basis = H.structure, H.basis
    cuts = [_check_rmax(r, basis.symbols) for r in r_maxes]
    weights = None
    if kpts is None:
        if structure.pbc.any():
            mesh = mesh_for_spacing(structure, MESH_SPACING)
            kpts, weights = monkhorst_pack(mesh, True, time_reversal=True)
            k_source = f"{mesh[0]}x{mesh[1]}x{mesh[2]} mesh"
        else:
            kpts, k_source = np.zeros((1, 3)), "Gamma (molecule)"
    else:
        kpts = np.atleast_2d(np.asarray(kpts, dtype=np.float64))
        k_source = f"{len(kpts)} k-points of the data"
    if weights is None:
        weights = np.full(len(kpts), 1.0 / len(kpts))
    try:
        full = band_energies(H, S, kpts)
    except SpectrumError as exc:
        raise CutoffError(f"{name}: the untruncated blocks give no bands: {exc}") from None

    def solve(n):
        return centre_in_gap(fermi_level(full, weights, n), full, weights), k_source

    choice = resolve_fermi_level(structure, solve, e_fermi, nel_atom, data_fermi)
    warnings = list(choice.warnings)
    win = window if choice.value is not None else None
    if window is not None and win is None:
        warnings.append("no Fermi level (give nel_atom or e_fermi): errors over all bands, no window")
    lengths = np.concatenate([H.bond_lengths] + ([S.bond_lengths] if S is not None else []))
    out = {"name": name, "natoms": structure.natoms, "norb": H.norb, "nk": len(kpts), "kpoints": k_source,
           "fermi_level": choice.value, "fermi_source": choice.source, "window": win,
           "longest_bond": float(lengths.max()) if len(lengths) else 0.0, "rows": [], "warnings": warnings}
    if reference_eigenvalues is not None:
        ref = np.asarray(reference_eigenvalues, dtype=np.float64)
        nb = min(ref.shape[1], full.shape[1])
        r = band_errors(full[:, :nb], ref[:, :nb], win, choice.value if win is not None else None)
        out["blocks_vs_eigenvalues"] = {"all": {k: r[k] for k in ("mae", "max_abs", "count")},
                                        "window": r.get("window"), "nbands": nb}
    N = structure.natoms
    for r_max, cut in zip(r_maxes, cuts):
        Ht = H.truncated(r_max)
        St = S.truncated(r_max) if S is not None else None
        row = {"r_max": r_max, "label": rmax_label(r_max), "max_pair_cutoff": float(cut.max()),
               "bonds_per_atom": build_graph(structure, r_max, basis.symbols).n_edges / N,
               "data_bonds_per_atom": len(Ht.i) / N, "s_positive_definite": None, "s_min_eigenvalue": None,
               "error": None, "all": None, "window": None, "window_mean_aligned": None}
        row["neighbours_per_atom"] = 2 * row["bonds_per_atom"]
        try:
            eigs = np.empty_like(full)
            smin = np.inf
            for sl, e, Sk in iter_eigh(Ht, St, kpts):
                eigs[sl] = e
                if Sk is not None:
                    smin = min(smin, float(np.linalg.eigvalsh(Sk)[:, 0].min()))
            if St is not None:
                row["s_positive_definite"], row["s_min_eigenvalue"] = True, smin
        except SpectrumError as exc:
            row["error"] = str(exc)
            if St is not None:
                row["s_min_eigenvalue"] = _min_overlap_eigenvalue(St, kpts)
                row["s_positive_definite"] = False
                row["error"] = (f"the truncated overlap S(k) is not positive definite (smallest eigenvalue "
                                f"{row['s_min_eigenvalue']:.3e}): no bands")
        if row["error"] is None:
            fermi = choice.value if win is not None else None
            r = band_errors(eigs, full, win, fermi)
            row["all"] = {k: r[k] for k in ("mae", "max_abs", "count")}
            if win is not None:
                row["window"] = {k: r["window"][k] for k in ("mae", "max_abs", "count")}
                row["window_mean_aligned"] = band_errors(eigs, full, win, fermi, align="mean")["window"]["mae"]
        out["rows"].append(row)
        if progress is not None:
            progress.update(1)
    return out


def _combine(parts: list[dict | None]) -> dict | None:
    """Exact mean and max over frames of ``{"mae", "max_abs", "count"}`` (None when a frame has none)."""
    if not parts or any(p is None for p in parts):
        return None
    n = sum(p["count"] for p in parts)
    if n == 0:
        return {"mae": None, "max_abs": None, "count": 0}
    return {"mae": sum(p["mae"] * p["count"] for p in parts if p["count"]) / n,
            "max_abs": max(p["max_abs"] for p in parts if p["count"]), "count": n}


def summarize(frames: list[dict], target_meV: float = CUTOFF_TARGET_MEV) -> dict:
    """Combine the :func:`cutoff_floor` results of frames (same cutoffs, same order).

    Returns ``{"frames", "target_meV", "window", "measure", "rows", "recommended",
    "recommendation"}``: one row per cutoff, ordered by cost (bonds per atom, then the largest pair
    cutoff), with the combined ``all`` / ``window`` errors, the mean shift-removed window MAE
    (``window_mean_aligned``, weighted alike), the mean ``bonds_per_atom``,
    ``neighbours_per_atom`` and ``data_bonds_per_atom``, ``s_positive_definite`` (every frame),
    the smallest ``s_min_eigenvalue``, ``meets_target`` and ``relative_cost`` (bonds per atom over
    those of the cheapest candidate: training time per epoch scales about so). ``measure`` is the
    error the target applies to: the window MAE when every frame has a Fermi level, else the MAE
    over all bands. ``recommended``: the row of the cheapest candidate that meets the target
    when every costlier one does too, or None; ``recommendation``: a sentence saying so."""
    if not frames:
        raise CutoffError("no frames to summarize")
    n_rows = len(frames[0]["rows"])
    if any(len(f["rows"]) != n_rows for f in frames):
        raise CutoffError("frames were measured at different cutoffs")
    use_window = all(f["window"] is not None for f in frames)
    measure = "window" if use_window else "all"
    rows = []
    for c in range(n_rows):
        per = [f["rows"][c] for f in frames]
        row = {k: per[0][k] for k in ("r_max", "label", "max_pair_cutoff")}
        for k in ("bonds_per_atom", "neighbours_per_atom", "data_bonds_per_atom"):
            row[k] = float(np.mean([p[k] for p in per]))
        pd = [p["s_positive_definite"] for p in per]
        row["s_positive_definite"] = None if all(x is None for x in pd) else all(x is not False for x in pd)
        smin = [p["s_min_eigenvalue"] for p in per if p["s_min_eigenvalue"] is not None]
        row["s_min_eigenvalue"] = min(smin) if smin else None
        row["errors"] = [f"{f['name']}: {p['error']}" for f, p in zip(frames, per) if p["error"]]
        row["all"] = _combine([p["all"] for p in per])
        row["window"] = _combine([p["window"] for p in per]) if use_window else None
        if use_window and row["window"] is not None and row["window"]["count"]:
            row["window_mean_aligned"] = sum(p["window_mean_aligned"] * p["window"]["count"]
                                             for p in per if p["window"]["count"]) / row["window"]["count"]
        else:
            row["window_mean_aligned"] = None
        err = row[measure]["mae"] if row[measure] is not None else None
        row["meets_target"] = bool(err is not None and err <= target_meV and row["s_positive_definite"] is not False)
        rows.append(row)
    rows.sort(key=lambda r: (r["bonds_per_atom"], r["max_pair_cutoff"]))
    cheapest = rows[0]["bonds_per_atom"]
    for r in rows:
        r["relative_cost"] = r["bonds_per_atom"] / cheapest if cheapest > 0 else None
    recommended = None
    for k, r in enumerate(rows):
        if all(x["meets_target"] for x in rows[k:]):
            recommended = r
            break
    what = f"band MAE {'within E_F +- ' + format(frames[0]['window'], 'g') + ' eV' if use_window else 'over all bands'}"
    if recommended is not None:
        text = (f"recommended r_max = {recommended['label']} A: {what} {recommended[measure]['mae']:.2f} meV "
                f"<= target {target_meV:g} meV ({recommended['bonds_per_atom']:.1f} bonds per atom)")
    else:
        best = min((r for r in rows if r[measure] is not None), key=lambda r: r[measure]["mae"], default=None)
        text = (f"no candidate r_max reaches the target {target_meV:g} meV ({what}) at every larger cutoff"
                + (f"; the lowest floor is {best[measure]['mae']:.2f} meV at r_max = {best['label']} A" if best else "")
                + ": try larger cutoffs")
    return {"frames": [f["name"] for f in frames], "target_meV": float(target_meV),
            "window": frames[0]["window"] if use_window else None, "measure": measure, "rows": rows,
            "recommended": recommended["r_max"] if recommended is not None else None, "recommendation": text}


def floor_table(summary: dict) -> str:
    """Fixed-width table of :func:`summarize`'s rows and its recommendation."""
    win = summary["window"]
    lines = [f"cutoff floor: bands of the exact blocks truncated at r_max against all blocks "
             f"({len(summary['frames'])} frame(s); errors in meV"
             + (f", window E_F +- {win:g} eV)" if win is not None else ", all bands: no Fermi level)")]
    head = (f"{'r_max (A)':>12}{'MAE':>10}{'max':>10}{'MAE all':>10}{'bonds/atom':>12}"
            f"{'neigh/atom':>12}{'cost':>7}{'S PD':>6}  target")
    lines += [head, "-" * len(head)]
    fmt = lambda v, w, p=2: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    for r in summary["rows"]:
        m = r["window"] if win is not None else r["all"]
        pd = {None: "-", True: "yes", False: "NO"}[r["s_positive_definite"]]
        lines.append(f"{r['label']:>12}{fmt(m and m['mae'], 10)}{fmt(m and m['max_abs'], 10)}"
                     f"{fmt(r['all'] and r['all']['mae'], 10)}"
                     f"{r['bonds_per_atom']:>12.1f}{r['neighbours_per_atom']:>12.1f}"
                     f"{fmt(r['relative_cost'], 6, 2)}x{pd:>6}  {'ok' if r['meets_target'] else '-'}")
    lines.append("MAE all: over all bands; cost: training time per epoch relative to the first row, estimated "
                 "as proportional to bonds per atom; S PD: the truncated overlap is positive definite")
    n = len(summary["frames"])
    for r in summary["rows"]:
        if r["s_positive_definite"] is False:
            lines.append(f"r_max {r['label']}: the truncated overlap is not positive definite in {len(r['errors'])} of "
                         f"{n} frame(s) (smallest eigenvalue of S(k) {r['s_min_eigenvalue']:.3g}): no bands")
        elif r["errors"]:
            lines.append(f"r_max {r['label']}: {r['errors'][0]}")
    lines.append(summary["recommendation"])
    return "\n".join(lines)


def dataset_floor(folders: Sequence, r_maxes: Sequence, n_frames: int = CUTOFF_FRAMES, basis=None, *,
                  e_fermi: float | None = None, nel_atom: Mapping[str, float] | None = None,
                  window: float | None = CUTOFF_WINDOW, target_meV: float = CUTOFF_TARGET_MEV,
                  progress: bool | None = False) -> dict:
    """The cutoff floor of a dataset: :func:`cutoff_floor` on ``n_frames`` frames spread evenly over
    all frames of the trajectory ``folders`` (first and last included), combined by :func:`summarize`.

    Each frame uses its folder's ``kpoints.npy`` (else a mesh), ``eigenvalues.npy`` as reference
    eigenvalues when present, and ``fermi_level.json`` as the data's Fermi level; ``basis`` (None:
    each folder's ``basis.dat``). ``progress``: one step per frame and cutoff (a bar, a line every
    ~20 s when not on a terminal, or nothing; see :func:`eqtb.tb.spectrum.progress_reporter`).
    Returns ``{"summary": summarize(...), "frames": [cutoff_floor(...) per frame]}``."""
    if int(n_frames) < 1:
        raise CutoffError(f"the number of frames must be at least 1, got {n_frames}")
    if not r_maxes:
        raise CutoffError("no candidate r_max")
    tfs = [TrajectoryFolder(p, basis=basis) for p in folders]
    if not tfs:
        raise DatasetError("no trajectory folder to measure")
    index = [(tf, k) for tf in tfs for k in range(tf.nframes)]
    picks = sorted(set(np.linspace(0, len(index) - 1, min(int(n_frames), len(index))).round().astype(int).tolist()))
    bar = progress_reporter(len(picks) * len(r_maxes), "cutoff floor", progress, unit="r_max")
    frames = []
    try:
        for p in picks:
            tf, k = index[p]
            st = tf.structure(k)
            H, S = tf.operator("hamiltonian", k, st), tf.operator("overlap", k, st)
            if H is None:
                raise DatasetError(f"{tf.path}: no hamiltonians.h5: the cutoff floor needs the Hamiltonian blocks")
            kp, ev = tf.kpoints(), tf.eigenvalues()
            kpts = None if kp is None else (kp[k] if kp.ndim == 3 else kp)
            frames.append(cutoff_floor(H, S, r_maxes, kpts, e_fermi=e_fermi, nel_atom=nel_atom,
                                       data_fermi=read_fermi_level(tf.path), window=window,
                                       reference_eigenvalues=None if ev is None else ev[k],
                                       name=f"{tf.path.name}[{k}]", progress=bar))
    finally:
        if bar is not None:
            bar.close()
    return {"summary": summarize(frames, target_meV), "frames": frames}

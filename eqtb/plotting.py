"""Band-structure and DOS figures (matplotlib, Agg backend: no display needed).

Energies are in eV. A molecule (no periodic direction) has orbital energies instead of bands:
:func:`plot_levels` draws them as a level diagram. When a Fermi level is given, plotted energies are ``E - E_F`` (the Fermi level
is the dashed line at 0 and the axis reads "E − E_F (eV)"); without one they are absolute and the
axis reads "E (eV)". ``emin``/``emax`` are in the plotted frame (relative to E_F when it is given,
as in DeePTB's band task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

BAND_COLOR = "#1f4e9c"
REF_COLOR = "#d1495b"
#: default window of a level diagram: eV below and above the Fermi level (else the HOMO)
DEFAULT_LEVEL_WINDOW = (30.0, 20.0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _energy_label(e_fermi) -> str:
    return "E − E$_F$ (eV)" if e_fermi is not None else "E (eV)"


def plot_bands(kpath, eigs, e_fermi: float | None = None, emin: float | None = None,
               emax: float | None = None, path: str | Path = "band.png", title: str | None = None,
               reference: np.ndarray | None = None, label: str = "eqtb",
               reference_label: str = "reference", dpi: int = 150) -> Path:
    """Write a band-structure PNG and return its path.

    ``kpath``: a :class:`eqtb.tb.kpath.KPath` (x axis, ticks, breaks); ``eigs`` (nk, nband) eV,
    absolute; ``reference`` (nk, nband') eV absolute on the same path, drawn dashed in another
    colour with a legend. Continuous pieces of the path are drawn separately, high-symmetry points
    get ticks and vertical lines."""
    from eqtb.tb.kpath import pretty_label

    plt = _pyplot()
    eigs = np.asarray(eigs, dtype=np.float64)
    if eigs.ndim != 2 or len(eigs) != len(kpath.x):
        raise ValueError(f"band energies {eigs.shape} do not match the {len(kpath.x)} path points")
    shift = 0.0 if e_fermi is None else float(e_fermi)
    x = kpath.x
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    handles = []
    curves = [(eigs, BAND_COLOR, "-", 1.2 if eigs.shape[1] <= 40 else 0.8, label)]
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim == 3 and ref.shape[0] == 1:
            ref = ref[0]
        if ref.ndim != 2 or len(ref) != len(x):
            raise ValueError(f"reference bands {ref.shape} do not match the {len(x)} path points")
        curves.append((ref, REF_COLOR, "--", 1.0, reference_label))
    for data, color, style, lw, name in curves:
        first = True
        for seg in kpath.segments:
            lines = ax.plot(x[seg], data[seg] - shift, color=color, ls=style, lw=lw)
            if first:
                lines[0].set_label(name)
                handles.append(lines[0])
                first = False
    for t in kpath.ticks:
        ax.axvline(t, color="0.55", lw=0.7, zorder=0)
    if e_fermi is not None:
        ax.axhline(0.0, color="0.3", ls=(0, (5, 4)), lw=0.9, zorder=0)
    ax.set_xticks(kpath.ticks)
    ax.set_xticklabels([pretty_label(t) for t in kpath.tick_labels], fontsize=11)
    ax.set_xlim(x[0], x[-1] if x[-1] > x[0] else x[0] + 1)
    lo = float(eigs.min() - shift) if emin is None else float(emin)
    hi = float(eigs.max() - shift) if emax is None else float(emax)
    if lo >= hi:
        raise ValueError(f"energy window emin={emin} >= emax={emax}")
    ax.set_ylim(lo, hi)
    ax.set_ylabel(_energy_label(e_fermi), fontsize=12)
    ax.tick_params(axis="y", labelsize=10)
    if title:
        ax.set_title(title, fontsize=12)
    if len(handles) > 1:
        ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _degenerate_groups(levels: np.ndarray, tol: float) -> list[tuple[float, int, int]]:
    """(energy, multiplicity, index of the first level) of ascending ``levels`` within ``tol`` eV."""
    groups: list[tuple[float, int, int]] = []
    for n, e in enumerate(levels):
        if groups and e - groups[-1][0] <= tol:
            e0, m, i0 = groups[-1]
            groups[-1] = (e0, m + 1, i0)
        else:
            groups.append((float(e), 1, n))
    return groups


def plot_levels(levels, e_fermi: float | None = None, emin: float | None = None, emax: float | None = None,
                path: str | Path = "band.png", title: str | None = None, n_occupied: int | None = None,
                reference=None, label: str = "eqtb", reference_label: str = "reference",
                degeneracy_tol: float = 1e-3, dpi: int = 150) -> Path:
    """Write an orbital-energy diagram of a molecule (PNG) and return its path.

    ``levels`` (norb,) or (1, norb) eV, absolute; ``n_occupied``: doubly occupied orbitals (drawn
    solid, empty ones dashed; HOMO and LUMO labelled); ``reference``: levels of a reference (e.g.
    DFT), drawn in a second column. Levels within ``degeneracy_tol`` eV are drawn once with their
    multiplicity. Energies relative to ``e_fermi`` when given, ``emin``/``emax`` in that frame."""
    plt = _pyplot()
    cols = [(np.sort(np.asarray(levels, dtype=np.float64).reshape(-1)), BAND_COLOR, label)]
    if reference is not None:
        cols.append((np.sort(np.asarray(reference, dtype=np.float64).reshape(-1)), REF_COLOR, reference_label))
    shift = 0.0 if e_fermi is None else float(e_fermi)
    fig, ax = plt.subplots(figsize=(4.2 + 1.6 * (len(cols) - 1), 5.0))
    for c, (lv, color, name) in enumerate(cols):
        x0, x1 = c + 0.15, c + 0.85
        for e, mult, i0 in _degenerate_groups(lv, degeneracy_tol):
            occupied = n_occupied is not None and i0 < n_occupied
            style = "-" if occupied or n_occupied is None else (0, (4, 2))
            ax.plot([x0, x1], [e - shift] * 2, color=color, ls=style, lw=1.6)
            if mult > 1:
                ax.text(x1 + 0.02, e - shift, f"×{mult}", va="center", fontsize=7, color=color)
        if n_occupied is not None and 0 < n_occupied <= len(lv):  # HOMO just below its level, LUMO above
            ax.text(x0 - 0.02, lv[n_occupied - 1] - shift, "HOMO ", ha="right", va="top", fontsize=8)
            if n_occupied < len(lv):
                ax.text(x0 - 0.02, lv[n_occupied] - shift, "LUMO ", ha="right", va="bottom", fontsize=8)
    if e_fermi is not None:
        ax.axhline(0.0, color="0.3", ls=(0, (5, 4)), lw=0.9, zorder=0)
    ax.set_xlim(-0.35, len(cols) + 0.05)
    ax.set_xticks([c + 0.5 for c in range(len(cols))])
    ax.set_xticklabels([name for _, _, name in cols], fontsize=10)
    everything = np.concatenate([lv for lv, _, _ in cols]) - shift
    # default window: the valence region, core levels (far below) left out with a note
    own = cols[0][0] - shift
    ref = 0.0 if e_fermi is not None else float(
        own[n_occupied - 1] if n_occupied and n_occupied <= len(own) else np.median(own))
    shown = everything[(everything >= ref - DEFAULT_LEVEL_WINDOW[0]) & (everything <= ref + DEFAULT_LEVEL_WINDOW[1])]
    shown = shown if len(shown) else everything
    pad = 0.05 * max(float(np.ptp(shown)), 1.0)
    lo = float(shown.min()) - pad if emin is None else float(emin)
    hi = float(shown.max()) + pad if emax is None else float(emax)
    if lo >= hi:
        raise ValueError(f"energy window emin={emin} >= emax={emax}")
    below = int((own < lo).sum())
    if below:
        ax.text(0.5, 0.01, f"{below} lower level{'s' * (below != 1)} not shown (from {own.min():.1f} eV)",
                transform=ax.transAxes, ha="center", va="bottom", fontsize=8, color="0.35")
    ax.set_ylim(lo, hi)
    ax.set_ylabel(_energy_label(e_fermi), fontsize=12)
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_dos(energies, dos, pdos: Mapping[str, np.ndarray] | None = None, e_fermi: float | None = None,
             path: str | Path = "dos.png", title: str | None = None, emin: float | None = None,
             emax: float | None = None, dpi: int = 150, per: str = "cell") -> Path:
    """Write a DOS PNG (energy horizontal, states/eV/``per`` vertical) and return its path.

    ``energies`` (nE,) eV absolute, ``dos`` (nE,), ``pdos`` label -> (nE,) drawn as lines over the
    filled total; energies shifted by ``e_fermi`` when given (dashed line at 0)."""
    plt = _pyplot()
    e = np.asarray(energies, dtype=np.float64)
    d = np.asarray(dos, dtype=np.float64)
    if d.shape != e.shape:
        raise ValueError(f"DOS {d.shape} does not match the energy grid {e.shape}")
    shift = 0.0 if e_fermi is None else float(e_fermi)
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    ax.fill_between(e - shift, d, color="0.82", lw=0)
    ax.plot(e - shift, d, color="0.15", lw=1.0, label="total")
    if pdos:
        cmap = plt.get_cmap("tab10" if len(pdos) <= 10 else "tab20")
        for n, (name, p) in enumerate(pdos.items()):
            ax.plot(e - shift, np.asarray(p), lw=1.0, color=cmap(n % cmap.N), label=str(name))
    if e_fermi is not None:
        ax.axvline(0.0, color="0.3", ls=(0, (5, 4)), lw=0.9)
    ax.set_xlim(float(e[0] - shift) if emin is None else emin, float(e[-1] - shift) if emax is None else emax)
    ax.set_ylim(0, None)
    ax.set_xlabel(_energy_label(e_fermi), fontsize=12)
    ax.set_ylabel(f"DOS (states / eV / {per})", fontsize=12)
    if title:
        ax.set_title(title, fontsize=12)
    ax.legend(loc="upper right", fontsize=9, ncol=1 if not pdos or len(pdos) < 8 else 2, framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_trajectory(frames, summary: Mapping, path: str | Path = "trajectory.png", title: str | None = None,
                    dpi: int = 150) -> Path:
    """Write a trajectory PNG and return its path: band edges (VBM, CBM) and Fermi level against
    frame (or time, fs, when every frame has one), the gap against frame with its mean and the
    5-95 % band, and the DOS averaged over frames (relative to each frame's Fermi level) with its
    spread (mean +- std, and min..max). ``frames``: per-frame dicts of
    :func:`eqtb.tb.trajectory.frame_spectrum` with ``index`` / ``time``; ``summary``:
    :func:`eqtb.tb.trajectory.aggregate`. Energies in eV, DOS in states / eV / cell."""
    plt = _pyplot()
    ok = [f for f in frames if not f.get("error")]
    use_time = bool(ok) and all(f.get("time") is not None for f in ok)
    x = np.array([f["time"] if use_time else f["index"] for f in ok], dtype=np.float64)
    xlabel = "time (fs)" if use_time else "frame"

    def col(key):
        return np.array([np.nan if f.get(key) is None else f[key] for f in ok], dtype=np.float64)

    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.2), gridspec_kw={"width_ratios": [1.0, 1.0, 1.3]})
    ax = axes[0]
    for key, label, color in (("cbm", "CBM", "tab:red"), ("fermi_level", "$E_F$", "0.4"), ("vbm", "VBM", "tab:blue")):
        y = col(key)
        if np.isfinite(y).any():
            ax.plot(x, y, "o-" if len(x) <= 60 else "-", ms=3, lw=1.0, color=color, label=label)
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel("energy (eV)", fontsize=11)
    ax.set_title("band edges", fontsize=11)
    if ax.lines:
        ax.legend(fontsize=9, framealpha=0.9)
    ax = axes[1]
    gap = col("gap")
    st = summary.get("gap") or {}
    if np.isfinite(gap).any():
        ax.plot(x, gap, "o-" if len(x) <= 60 else "-", ms=3, lw=1.0, color="tab:purple")
        if st.get("n"):
            ax.axhline(st["mean"], color="0.2", lw=1.0, ls="--", label=f"mean {st['mean']:.3f} eV (std {st['std']:.3f})")
            ax.axhspan(st["p05"], st["p95"], color="tab:purple", alpha=0.12, lw=0, label="5-95 %")
            ax.legend(fontsize=9, framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no gap (no electron count, or metallic)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel("gap (eV)" if not (gap < 0).any() else "gap (eV; < 0: bands overlap)", fontsize=11)
    ax.set_title("gap", fontsize=11)
    ax = axes[2]
    if summary.get("dos_mean") is not None:
        e = np.asarray(summary["energies"], dtype=np.float64)
        m, s = np.asarray(summary["dos_mean"]), np.asarray(summary["dos_std"])
        ax.fill_between(e, summary["dos_min"], summary["dos_max"], color="0.88", lw=0, label="min..max")
        ax.fill_between(e, np.maximum(m - s, 0.0), m + s, color="tab:blue", alpha=0.3, lw=0, label="mean $\\pm$ std")
        ax.plot(e, m, color="0.1", lw=1.0, label=f"mean of {summary.get('n_ok', len(ok))} frames")
        has_ef = any(f.get("fermi_level") is not None for f in ok)
        if has_ef:
            ax.axvline(0.0, color="0.3", ls=(0, (5, 4)), lw=0.9)
        ax.set_xlim(e[0], e[-1])
        ax.set_ylim(0, None)
        ax.set_xlabel("$E - E_F$ (eV)" if has_ef else "energy (eV)", fontsize=11)
        ax.set_ylabel("DOS (states / eV / cell)", fontsize=11)
        ax.legend(fontsize=9, framealpha=0.9, loc="upper left")
    ax.set_title("DOS averaged over frames", fontsize=11)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_cutoff_floor(summary: Mapping, path: str | Path = "cutoff_floor.png", title: str | None = None,
                      dpi: int = 150) -> Path:
    """Write the cutoff-floor PNG of :func:`eqtb.tb.cutoff.summarize` and return its path: band MAE
    and max |error| (meV, symmetric-log axis: zero is drawn) of the exact blocks truncated at each
    candidate against its largest pair cutoff (Angstrom), the target as a dashed line, the
    recommended cutoff circled, and the bonds per atom (the cost) on a second axis. Cutoffs whose
    truncated overlap is not positive definite are marked with a cross at the top."""
    plt = _pyplot()
    rows = sorted(summary["rows"], key=lambda r: r["max_pair_cutoff"])
    measure = summary["measure"]
    x = np.array([r["max_pair_cutoff"] for r in rows])

    def col(key):
        return np.array([np.nan if r[measure] is None or r[measure][key] is None else r[measure][key] for r in rows])

    mae, mx = col("mae"), col("max_abs")
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    what = (f"within E$_F$ ± {summary['window']:g} eV" if summary["window"] is not None else "all bands")
    ax.plot(x, mae, "o-", color=BAND_COLOR, lw=1.4, ms=5, label=f"band MAE ({what})")
    ax.plot(x, mx, "s--", color=BAND_COLOR, lw=0.9, ms=4, alpha=0.55, label="max |error|")
    ax.axhline(summary["target_meV"], color=REF_COLOR, ls=(0, (5, 4)), lw=1.0,
               label=f"target {summary['target_meV']:g} meV")
    finite = np.concatenate([mae[np.isfinite(mae)], mx[np.isfinite(mx)], [summary["target_meV"]]])
    top = float(finite.max()) * 3
    bad = [r["max_pair_cutoff"] for r in rows if r["s_positive_definite"] is False]
    if bad:
        ax.plot(bad, [top] * len(bad), "x", color="black", ms=8, label="S not positive definite")
    rec = [r for r in rows if r["r_max"] == summary["recommended"]] if summary["recommended"] is not None else []
    if rec:
        r = rec[0]
        ax.plot([r["max_pair_cutoff"]], [r[measure]["mae"]], "o", ms=13, mfc="none", mec=REF_COLOR, mew=1.6,
                label=f"recommended r_max {r['label']} Å")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(0, top * 1.5)
    ax.set_xlabel("r_max (Å; largest pair cutoff)", fontsize=11)
    ax.set_ylabel("band error of the truncated blocks (meV)", fontsize=11)
    ax.grid(alpha=0.25)
    ax2 = ax.twinx()
    ax2.plot(x, [r["bonds_per_atom"] for r in rows], "^:", color="0.35", ms=4, lw=0.9, label="bonds per atom (cost)")
    ax2.set_ylabel("bonds per atom", fontsize=11, color="0.35")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8.5, framealpha=0.9, loc="upper right")
    ax.set_title(title or f"cutoff floor ({len(summary['frames'])} frame(s))", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

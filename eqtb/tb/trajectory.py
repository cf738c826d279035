"""Electronic structure along a trajectory (molecular dynamics): per frame the Fermi level, the band
edges (VBM, CBM) and gap, and the DOS on a grid common to all frames; over the frames their
averages, spreads and distributions.

:func:`frame_spectrum` does one frame from its H and S :class:`eqtb.operator.Operator` (predicted
or read from a dataset) and returns a JSON-serialisable dict; :func:`aggregate` turns a list of
those into the statistics. Running a model over the frames of a file, in worker processes, with
per-frame results on disk, is :mod:`eqtb.trajectory` (the prediction layer); this module is the
physics only.

Per frame, two routes, chosen by size as ``eqtb run`` chooses them (``method="auto"``: dense up to
``dense_max_norb`` orbitals):

* **dense**: eigenvalues on a k-mesh (``mesh``, else the mesh of k-spacing ``kspacing`` 1/Angstrom
  with 2 pi, Gamma-centred; a molecule: Gamma). Band edges and gap from the filled bands when the
  electron count fills a whole number of bands (:func:`eqtb.tb.spectrum.band_gap`: ``gap`` < 0 for
  overlapping bands, ``gap_type`` "metal"), the Fermi level by the Fermi-level rule
  (:func:`eqtb.tb.spectrum.resolve_fermi_level`) from the mesh count, moved to the middle of the gap
  for an insulator (so that the DOS of all frames is aligned on a physically fixed point), the DOS
  Gaussian-broadened by ``sigma``.
* **sparse** (one k-point, Gamma; large cells): the KPM DOS (:func:`eqtb.tb.kpm.kpm_dos`; the
  DOS broadening is then the kernel's resolution, not ``sigma``), its Fermi level
  (:meth:`eqtb.tb.kpm.KPMResult.fermi_estimate`: the middle of the KPM gap for an insulator) and
  the band edges by shift-invert Lanczos around it (:func:`eqtb.tb.lanczos.band_edges`) up to
  :data:`eqtb.tb.lanczos.MAX_NORB_3D` orbitals. Every frame uses the same random vectors
  (``seed``): for similar frames their stochastic errors are correlated, so frame-to-frame
  changes of the DOS are less noisy than the DOS itself (the band edges are exact either way).

Energies in eV. The DOS of a frame is sampled on ``reference + linspace(emin, emax, npts)``,
``reference`` the frame's Fermi level (0, i.e. absolute energies, when it has none), in states / eV
per cell (spin degeneracy 2 included): the frames' DOS are then averaged point by point relative to
their own Fermi levels. A frame's cell is the frame's whole structure, so frames of one trajectory
(same atoms) are comparable.
"""

from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import numpy as np

__all__ = ["DEFAULT_WINDOW", "SCALARS", "aggregate", "frame_spectrum"]

#: default DOS window (eV relative to each frame's Fermi level) and points: 0.025 eV steps, two
#: per default broadening sigma = 0.05 eV
DEFAULT_WINDOW = (-20.0, 10.0, 1201)

#: the per-frame scalars :func:`aggregate` summarises (eV)
SCALARS = ("gap", "vbm", "cbm", "fermi_level", "direct_gap")


def frame_spectrum(H, S=None, *, nel_atom: Mapping[str, float] | None = None, e_fermi: float | None = None,
                   task_e_fermi: float | None = None, task_nel_atom: Mapping[str, float] | None = None,
                   mesh=None, kspacing: float = 0.1, gamma_centered: bool = True,
                   window: Sequence[float] = DEFAULT_WINDOW, sigma: float = 0.05, method: str = "auto",
                   dense_max_norb: int = 6000, n_moments: int = 256, n_random: int = 8, seed: int = 0,
                   nbands: int = 16) -> dict:
    """Fermi level, band edges, gap and DOS of one frame (module docstring).

    ``H``, ``S``: Operators (S None: orthogonal basis). The Fermi-level arguments are those of
    :func:`eqtb.tb.spectrum.resolve_fermi_level`. ``window`` = (emin, emax, npts) of the DOS grid
    relative to the frame's Fermi level. ``method``: "auto", "dense" or "sparse". Sparse route:
    ``n_moments``, ``n_random``, ``seed`` of the KPM DOS and ``nbands`` eigenvalues near the Fermi
    level by shift-invert Lanczos.

    Returns a dict: ``formula``, ``natoms``, ``norb``, ``method`` ("dense" / "sparse"), ``mesh``,
    ``n_electrons``, ``fermi_level`` (eV or None) and ``fermi_level_source``,
    ``fermi_level_nel_atom`` (the level from the electron count when a given one is used),
    ``vbm``, ``cbm``, ``gap``, ``direct_gap`` (dense), ``gap_type``, ``insulating`` (None without an
    electron count), ``dos_reference`` (eV: the grid is ``dos_reference + linspace(emin, emax,
    npts)``), ``dos`` (list, states/eV/cell), ``dos_broadening`` (eV), ``kpm`` (sparse: resolution,
    gap interval, states counted below the level and its error), ``warnings`` and ``seconds``."""
    from eqtb.tb.kpath import is_periodic, mesh_for_spacing
    from eqtb.tb.spectrum import (
        ElectronicStructure,
        SpectrumError,
        band_gap,
        dos,
        occupied_bands,
        resolve_fermi_level,
    )

    t0 = time.perf_counter()
    emin, emax, npts = float(window[0]), float(window[1]), int(window[2])
    if not (emax > emin and npts >= 2):
        raise SpectrumError(f"DOS window needs emin < emax and at least 2 points, got {tuple(window)}")
    structure = H.structure
    norb = int(H.norb)
    if method not in ("auto", "dense", "sparse"):
        raise SpectrumError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    sparse = method == "sparse" or (method == "auto" and norb > dense_max_norb)
    molecule = not is_periodic(structure)
    out = {"formula": structure.formula, "natoms": int(structure.natoms), "norb": norb,
           "method": "sparse" if sparse else "dense", "mesh": None, "n_electrons": None,
           "fermi_level": None, "fermi_level_source": None, "fermi_level_nel_atom": None,
           "vbm": None, "cbm": None, "gap": None, "direct_gap": None, "gap_type": None, "insulating": None,
           "dos_reference": 0.0, "dos": None, "dos_broadening": None, "kpm": None, "warnings": []}
    grid = np.linspace(emin, emax, npts)
    if not sparse:
        mesh = (1, 1, 1) if molecule else tuple(int(m) for m in (mesh or mesh_for_spacing(structure, kspacing)))
        es = ElectronicStructure(H, S)
        _, w, e = es.mesh_eigenvalues(mesh, gamma_centered)
        solver = es.fermi_solver(mesh, gamma_centered, midgap=True,
                                 method="orbital energies" if molecule else None)
        choice = resolve_fermi_level(structure, solver, e_fermi, nel_atom, task_e_fermi, task_nel_atom)
        out["mesh"] = list(mesh)
        n_el = choice.n_electrons
        nocc = occupied_bands(n_el, e.shape[1], es.spin_degeneracy) if n_el is not None else None
        if nocc is not None:
            g = band_gap(e, nocc)
            out.update(vbm=g["vbm"], cbm=g["cbm"], gap=g["gap"], gap_type=g["gap_type"],
                       direct_gap=None if molecule else g["direct_gap"], insulating=g["gap"] > 0)
        elif n_el is not None:
            out.update(insulating=False, gap_type="metal")  # a partly filled band
        ref = choice.value if choice.value is not None else 0.0
        out["dos"] = dos(e, w, ref + grid, sigma, es.spin_degeneracy).tolist()
        out["dos_broadening"] = float(sigma)
    else:
        from eqtb.tb.kpm import kpm_dos
        from eqtb.tb.lanczos import MAX_NORB_3D, band_edges

        if H.spinful:
            raise SpectrumError("the sparse methods (KPM DOS, shift-invert band edges) do not take a spinful "
                                "Hamiltonian (spin-orbit coupling) yet; use the dense method")
        Hs, Ss = H.sparse(), (S.sparse() if S is not None else None)
        res = kpm_dos(Hs, Ss, n_moments=n_moments, n_random=n_random, seed=seed, solve_tol=1e-5, dtype="auto")
        choice = resolve_fermi_level(structure, res.fermi_solver("at Gamma"), e_fermi, nel_atom, task_e_fermi,
                                     task_nel_atom)
        out["mesh"] = [1, 1, 1]
        kf = choice.result
        out["kpm"] = {"resolution": res.resolution, "n_moments": res.n_moments, "n_random": res.n_random,
                      **({} if kf is None else kf.as_dict())}
        centre = float(kf) if kf is not None else choice.value
        if kf is not None:
            out["insulating"] = kf.gap is not None
        if centre is not None:
            if norb <= MAX_NORB_3D:
                edges = band_edges(Hs, Ss, centre, k=min(nbands, norb - 2), strict=False)
                if edges["bracketed"] and (kf is None or kf.gap is not None):
                    out.update(vbm=edges["vbm"], cbm=edges["cbm"], gap=edges["gap"],
                               gap_type="Gamma" if edges["gap_is_largest_spacing"] else "level spacing")
                    if not edges["gap_is_largest_spacing"]:
                        out["warnings"].append("the eigenvalues around the Fermi level are not separated by a gap "
                                               "larger than their spacings: no clear gap at Gamma")
            else:
                out["warnings"].append(f"band edges skipped: {norb} orbitals > {MAX_NORB_3D} (shift-invert limit)")
        ref = choice.value if choice.value is not None else 0.0
        out["dos"] = res.dos_at(ref + grid).tolist()
        out["dos_broadening"] = float(res.resolution)
    out.update(n_electrons=choice.n_electrons, fermi_level=choice.value, fermi_level_source=choice.source,
               dos_reference=float(ref))
    if choice.estimate is not None:
        out["fermi_level_nel_atom"] = float(choice.estimate)
    out["warnings"] += list(choice.warnings)
    out["seconds"] = time.perf_counter() - t0
    return out


def _stats(values: np.ndarray, bins: int) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    counts, edges = np.histogram(v, bins=bins if v.max() > v.min() else 1)
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "stderr": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None,
            "min": float(v.min()), "p05": float(np.percentile(v, 5)), "median": float(np.median(v)),
            "p95": float(np.percentile(v, 95)), "max": float(v.max()),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def aggregate(frames: Sequence[Mapping], window: Sequence[float] = DEFAULT_WINDOW, bins: int = 20) -> dict:
    """Averages and distributions over frames (results of :func:`frame_spectrum`; entries with an
    ``error`` are left out and their ``index`` listed in ``failed``). For each of :data:`SCALARS` (eV): ``n`` (frames that have
    it), ``mean``, ``std`` (spread over frames, ddof 1), ``stderr`` (std / sqrt(n): the error of the
    mean for uncorrelated frames; MD frames close in time are correlated, so it is a lower bound),
    ``min``, ``p05``, ``median``, ``p95``, ``max`` and a ``histogram`` (``bins`` bins). Also
    ``insulating_fraction`` (of frames with an electron count), and the DOS over frames on the common
    grid ``energies`` (eV relative to each frame's Fermi level): ``dos_mean``, ``dos_std``, ``dos_min``,
    ``dos_max`` (states/eV/cell)."""
    ok = [f for f in frames if not f.get("error")]
    out = {"n_frames": len(frames), "n_ok": len(ok), "failed": [f.get("index") for f in frames if f.get("error")]}
    for key in SCALARS:
        out[key] = _stats(np.array([f[key] for f in ok if f.get(key) is not None]), bins)
    ins = [bool(f["insulating"]) for f in ok if f.get("insulating") is not None]
    out["insulating_fraction"] = float(np.mean(ins)) if ins else None
    out["energies"] = np.linspace(float(window[0]), float(window[1]), int(window[2])).tolist()
    D = np.array([f["dos"] for f in ok if f.get("dos") is not None], dtype=np.float64)
    if len(D):
        out.update(dos_mean=D.mean(0).tolist(), dos_std=(D.std(0, ddof=1) if len(D) > 1 else np.zeros(D.shape[1])).tolist(),
                   dos_min=D.min(0).tolist(), dos_max=D.max(0).tolist())
    return out

"""How eqtb's built-in Slater-Koster table (``eqtb/data/esk_table.json``, used by ``eqtb esk``) is
made: every number in it is fitted here to band structures that PySCF computes. Rerun with
``OMP_NUM_THREADS=1 python -m eqtb.train.esk_fit CACHE [--only SYSTEM ...]`` (DFT results are kept in
``CACHE``; a rerun reuses them and refits).

**Reference data.** For each reference system of :data:`SYSTEMS` (elemental crystals and simple
compounds; 2-D sheets as 3-D cells with vacuum and one k-point along it) :func:`eqtb.data.generate.
generate` runs periodic Kohn-Sham DFT (:data:`DFT`: PBE, GTH pseudopotentials, the minimal
MOLOPT basis ``gth-szv-molopt-sr``; the FFT grid's cutoff generate's default but at most
``KE_CUTOFF_MAX`` Hartree, which is lower than generate's default for the first-row elements and the
semicore pseudopotentials: the cost of a frame stays at a minute or two) on ``NFRAMES`` frames: frame 0 the ideal crystal, frames
1, 2 strained (each strain component up to ``STRAIN``) and displaced (``DISPLACEMENT`` Angstrom per
coordinate). The band energies along the automatic k-path (``BAND_DENSITY``) are the reference.
Metals (``System.smearing``; fcc copper, :data:`CU_SMEARING` 0.01 Hartree): the SCF runs with
Fermi-Dirac occupations of that width (generate's ``smearing``): with integer occupations Cu's SCF
does not converge (a metal: no gap at the Fermi level, which the partly filled 4s band crosses). A
metal's "highest occupied band" (the fit window's reference, below) is band ``N_el / 2`` as for an
insulator.

**The model** (one form for the whole table): nnsk, ``powerlaw`` hopping ``p1 (r_0 / r)^(1 + |p2|)
f_0(r)`` with ``r_0`` from the covalent radii (``atomic_radius: "cov"``), cutoff radius ``rs`` per
bond type and ``w`` = :data:`W`; onsite energies constant per shell (``uniform_noref``); orthogonal
(no overlap: S is the identity, positive definite for every structure) unless the system says
``overlap`` (below). The valence shells per element are those of :data:`SYSTEMS`. ``rs`` of a bond
type: midway between its ``reach``-th and next shell of neighbours in the ideal reference crystal:
by default nearest neighbours of each bond type interact (orthogonal, with both shells in reach one
powerlaw per integral fitted diamond C's and Si's bands worse, 731 and 287 meV on the training
frames against 413 and 246); ``reach`` 2 (the next shell too) for the H2 crystal's neighbouring
molecules and bcc W's second shell, 15 % beyond the first.

**Overlap** (``System.overlap``; silicon): the model carries the overlap of PySCF's basis, its
integrals (same powerlaw form and ``rs``) fitted first by least squares to the overlap blocks PySCF
gives for the training frames (two-centre, so Slater-Koster up to the powerlaw's shape; their
mean absolute error over the bonds in reach is the system's ``overlap_mae``), then held while H is
fitted to the bands of ``H c = E S c``. The overlaps of a minimal basis reach far (Si 3s-3s 0.05 at
the second neighbours), and cut after the first shell S is not positive definite: silicon is
fitted with ``reach`` 3 (first to third neighbours). DeePTB's silicon tutorial starts from such
a model and keeps its overlap frozen throughout (``freeze: ["overlap"]``): from the orthogonal
table its first step ended at 278 meV band MAE on the tutorial's bands, from this one at 79 meV
(``"d*"`` uncoupled in both; ``benchmarks/silicon_chain_md.py``).

**Polarisation shells** (``System.polarisation``; silicon's ``"d*"``, the tutorial's third shell):
no band data holds them (the minimal basis has no d), but their overlap is PySCF's too: that of
the first d function of ``gth-dzvp`` (one Gaussian, exponent 0.275 / Bohr^2) with the minimal
basis' 3s and 3p and itself, from dimers (:func:`dimer_overlaps`, exact two-centre integrals),
fitted in the table's form by least squares at the bond lengths of the ideal crystal in reach
(each length as often as it occurs, and strained by +-``STRAIN``). Every function is taken with
the sign that makes it positive far from the nucleus (:func:`_tail_positive`), the convention of
Harrison's integrals that start the shell's hopping (:mod:`eqtb.train.esk`): PySCF's GTH s and p
contractions are negative there, and their s-d and p-d overlaps taken as they are have the sign
opposite to that convention (the s, s-p and p overlaps are the same either way). In DeePTB's
silicon tutorial (``benchmarks/silicon_chain_md.py``) step 1 ended at 217 meV band MAE with those
signs, at 68 with these. S(k) of the diamond crystal stays positive definite: smallest eigenvalue
0.08 in the table's form (PySCF's own 0.12), 0.13 at the tutorial's cutoff. Other choices leave it
about singular or indefinite there: gth-dzvp-molopt-sr's d (far-reaching, d-d sigma 0.12 at the
second neighbours) 0.03 / 0.05, 3s, 3p and d all from gth-dzvp -0.10 / 0.03, its second (diffuse)
s and p -0.97 / -0.91.

**Start**: onsite energies DeePTB's atomic term values (:func:`eqtb.data.sk_tables.onsite_reference`),
integrals Harrison's universal ones (:func:`eqtb.train.esk.harrison`); with an overlap, each
hopping integral plus its fitted overlap integral times the mean level of its two shells
(extended Hueckel, :func:`_add_overlap_start`).

**Fit.** The ``eigvals`` loss (:class:`eqtb.train.loss.EigvalsLoss`) on the frames but the last (0 and 1; a frame whose SCF did not converge is left out): the bands of
the semicore shells PySCF's pseudopotential keeps (``semicore``) dropped, the model's bands against
the lowest as many reference bands, energies aligned at the lowest, inside a window up to
``WINDOW_ABOVE`` eV above the highest occupied band (``eout_weight`` outside), plus ``DECAY_WEIGHT``
times the mean square drift of the integrals' decay powers from Harrison's (two frames hardly fix
them; unregularised, GaAs's test-frame error was 1271 meV against 1070); Adam, ``STEPS`` steps,
cosine-decayed learning rate. A system fits only what the table does not hold yet: the
elements and pairs of systems earlier in :data:`SYSTEMS` stay fixed (so GaAs fits Ga, As and Ga-As;
BP only P, P-P and B-P with boron from hBN). The eigvals loss does not see a common shift of all
energies; a system with no fixed element is shifted so that its new onsite energies lie on average
on the atomic term values, which puts all elements on one absolute scale (that of the free-atom
levels) for the combining rule of :mod:`eqtb.train.esk` (not a non-orthogonal one, where such a
shift is no common shift of the bands: its levels stay where the fit, started on that scale, ends).

**Errors** (``fit`` of each system in the table): mean absolute error (meV) of the aligned band
energies inside the window, on the training frames and on the last frame (2), which the fit did not see.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eqtb.models.sk import onsite_pairs

__all__ = ["DFT", "SYSTEMS", "System", "dimer_overlaps", "element_functions", "fit_polarisation", "fit_system", "main",
           "reference_samples"]

#: PySCF settings of every reference calculation
DFT = {"basis": "gth-szv-molopt-sr", "pseudo": "gth-pbe", "xc": "pbe,pbe"}
#: the human-readable table
MARKDOWN_PATH = Path(__file__).resolve().parents[2] / "docs" / "esk_table.md"
#: the FFT grid's kinetic-energy cutoff (Hartree): eqtb generate's default, at most this
KE_CUTOFF_MAX = 50.0
NFRAMES, STRAIN, DISPLACEMENT, SEED, BAND_DENSITY = 3, 0.03, 0.05, 0, 6.0
#: hopping form, its Fermi width w (Angstrom), radii table
FORM, W, RADIUS = "powerlaw", 0.1, "cov"
#: fit window: eV above the highest occupied band; weight of the energies outside it
WINDOW_ABOVE, EOUT_WEIGHT = 3.0, 0.01
STEPS, LR = 1500, 0.05
#: the starting integrals: Harrison's at the nearest distance, decaying as 1 / r^START_POWER (None:
#: Harrison's own powers); DECAY_WEIGHT (eV^2) times the mean square of (fitted decay - start decay)
#: is added to the loss: two frames hardly fix the decay, the test frame shows it
START_POWER, DECAY_WEIGHT = None, 0.01
#: Fermi-Dirac width (Hartree) of metallic copper's SCF occupations (module docstring)
CU_SMEARING = 0.01
@dataclass(frozen=True)
class System:
    """A reference system: ``name``, the ase.Atoms ``build``er of its ideal crystal, the fitted
    valence ``shells`` per element (DeePTB shell labels), the SCF ``kmesh`` (odd), the electrons of
    the pseudopotential's semicore shells per element (their bands are not fitted), the fit window
    (eV above the highest occupied band), the shells of neighbours that interact (``reach``), whether
    the model has the overlap of its basis (``overlap``: non-orthogonal), and per element a
    polarisation shell whose overlap integrals the table adds (``polarisation``: ``{element: (DeePTB
    label, PySCF basis of its function)}``, :func:`fit_polarisation`), and the Fermi-Dirac width of
    the SCF's occupations (``smearing``, Hartree; None: integer occupations; metals, module docstring)."""

    name: str
    build: object
    shells: dict
    kmesh: tuple = (3, 3, 3)
    semicore: dict = field(default_factory=dict)
    window: float = WINDOW_ABOVE
    reach: int = 1
    overlap: bool = False
    polarisation: dict = field(default_factory=dict)
    smearing: float | None = None


def _bulk(*args, **kw):
    from ase.build import bulk

    return lambda: bulk(*args, **kw)


def _sheet(symbols, a, z, c=14.0):
    """A hexagonal 2-D sheet with vacuum: ``symbols`` at fractional (x, y) and height z (Angstrom)."""
    def build():
        from ase import Atoms

        cell = np.array([[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, c]])
        frac = [(0, 0), (1 / 3, 2 / 3), (2 / 3, 1 / 3)]
        pos = [np.array([*frac[k], 0.0]) @ cell + [0, 0, c / 2 + dz] for k, dz in z]
        return Atoms(symbols, positions=pos, cell=cell, pbc=True)
    return build


def _h2_crystal():
    from ase import Atoms

    return Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.75]], cell=[[3.2, 0, 0], [1.6, 2.77, 0], [0, 0, 3.2]], pbc=True)


def _cu2():
    from ase.build import bulk

    return bulk("Cu", "fcc", a=3.615).repeat((1, 1, 2))  # two atoms: an even electron count


SP2 = {"2": ["2s", "2p"], "3": ["3s", "3p"], "4": ["4s", "4p"], "5": ["5s", "5p"]}
#: the reference systems, in fitting order (module docstring)
SYSTEMS = [
    # non-orthogonal (module docstring): DeePTB's silicon tutorial keeps the start's overlap
    # DeePTB's silicon tutorial basis is ["3s", "3p", "d*"]: the overlap of d* too (fit_polarisation)
    System("Si-diamond", _bulk("Si", "diamond", a=5.43), {"Si": SP2["3"]}, overlap=True, reach=3,
           polarisation={"Si": ("d*", "gth-dzvp")}),
    System("C-diamond", _bulk("C", "diamond", a=3.567), {"C": SP2["2"]}),
    System("hBN-sheet", _sheet("BN", 2.504, [(0, 0.0), (1, 0.0)]), {"B": SP2["2"], "N": SP2["2"]}, (3, 3, 1)),
    System("GaAs-zincblende", _bulk("GaAs", "zincblende", a=5.653), {"Ga": SP2["4"], "As": SP2["4"]},
           semicore={"Ga": 10}),
    System("MoS2-sheet", _sheet("MoS2", 3.18, [(0, 0.0), (1, 1.595), (1, -1.595)]),
           {"Mo": ["4d", "5s"], "S": SP2["3"]}, (3, 3, 1), semicore={"Mo": 8}),
    System("BP-zincblende", _bulk("BP", "zincblende", a=4.538), {"B": SP2["2"], "P": SP2["3"]}),
    # both bands (H-H bonding and antibonding), dispersed by the neighbouring molecules (reach 2)
    System("H2-crystal", _h2_crystal, {"H": ["1s"]}, window=20.0, reach=2),
    System("MgO-rocksalt", _bulk("MgO", "rocksalt", a=4.21), {"Mg": ["3s"], "O": SP2["2"]},
           semicore={"Mg": 8}),
    System("Sn-diamond", _bulk("Sn", "diamond", a=6.489), {"Sn": SP2["5"]}),
    # bcc: the second shell (3.17 Angstrom) is only 15 % beyond the first
    System("W-bcc", _bulk("W", "bcc", a=3.165, cubic=True), {"W": ["5d", "6s"]}, semicore={"W": 8}, reach=2),
    System("Cu-fcc", _cu2, {"Cu": ["3d", "4s"]}, smearing=CU_SMEARING),
    System("Ge-diamond", _bulk("Ge", "diamond", a=5.658), {"Ge": SP2["4"]}),
    System("AlP-zincblende", _bulk("AlP", "zincblende", a=5.463), {"Al": SP2["3"], "P": SP2["3"]}),
    System("NaCl-rocksalt", _bulk("NaCl", "rocksalt", a=5.64), {"Na": ["3s"], "Cl": SP2["3"]}, semicore={"Na": 8}),
    System("ZnSe-zincblende", _bulk("ZnSe", "zincblende", a=5.668), {"Zn": SP2["4"], "Se": SP2["4"]},
           semicore={"Zn": 10}),
    System("LiF-rocksalt", _bulk("LiF", "rocksalt", a=4.03), {"Li": ["2s"], "F": SP2["2"]}, semicore={"Li": 2}),
    System("KCl-rocksalt", _bulk("KCl", "rocksalt", a=6.29), {"K": ["4s"], "Cl": SP2["3"]}, semicore={"K": 8}),
    System("CaO-rocksalt", _bulk("CaO", "rocksalt", a=4.81), {"Ca": ["4s"], "O": SP2["2"]}, semicore={"Ca": 8}),
    System("BeO-zincblende", _bulk("BeO", "zincblende", a=3.80), {"Be": ["2s"], "O": SP2["2"]}, semicore={"Be": 2}),
]


def system_by_name(name: str) -> System:
    for s in SYSTEMS:
        if s.name == name:
            return s
    raise KeyError(f"no reference system {name!r} (there are: {', '.join(s.name for s in SYSTEMS)})")


def reference_data(system: System, cache) -> list[Path]:
    """The DFT frames of ``system`` (computed once into ``cache/<name>``, then reused, frames whose SCF
    failed left out): their folders."""
    from eqtb.data.folder import find_folders
    from pyscf.pbc.gto.cell import estimate_ke_cutoff

    from eqtb.data.generate import KE_FRACTION, build_pyscf, generate, load_structure

    out = Path(cache) / system.name
    structure = load_structure(system.build())
    if (out / "generate_report.json").exists():
        return find_folders(out, structure.formula)
    cell = build_pyscf(structure, DFT)
    ke_cutoff = min(KE_FRACTION * float(estimate_ke_cutoff(cell)), KE_CUTOFF_MAX)
    generate(structure, out, ke_cutoff=ke_cutoff, nframes=NFRAMES, displacement=DISPLACEMENT, strain=STRAIN, seed=SEED,
             kmesh=system.kmesh, kmesh_fourier=system.kmesh, smearing=system.smearing, with_dm=False,
             band_density=BAND_DENSITY,
             check=False, progress=False, verbose=True, **DFT)
    return find_folders(out, structure.formula)


def neighbour_shells(atoms, a: str, b: str, reach: int = 1) -> tuple[float, float]:
    """(nearest distance, ``rs``) (Angstrom) of bond type a-b in the crystal ``atoms``: ``rs`` midway
    between its ``reach``-th and next shell of neighbours (distances within 0.1 Angstrom are one
    shell; 1 Angstrom beyond the last when there is no next within 7 Angstrom)."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, 7.0)
    sym = np.array(atoms.get_chemical_symbols())
    d = np.sort(d[((sym[i] == a) & (sym[j] == b)) | ((sym[i] == b) & (sym[j] == a))])
    shells = [float(d[0])]
    for x in d[1:]:
        if x > shells[-1] + 0.1:
            shells.append(float(x))
    last = shells[min(reach, len(shells)) - 1]
    return shells[0], round((last + shells[reach]) / 2 if len(shells) > reach else last + 1.0, 3)


def reference_samples(folders, model, semicore: dict, window: float = WINDOW_ABOVE,
                      dtype=torch.float64) -> tuple[list, dict]:
    """Samples of the DFT frames in ``folders`` for the model, with their band windows (module
    docstring) and, for a model with overlap, PySCF's overlap blocks as targets; and the loss
    options (``diff_valence``: the semicore electrons per element)."""
    from eqtb.data.folder import BandInfo, TrajectoryFolder
    from eqtb.quantities import OVERLAP
    from eqtb.train.data import attach_bands, make_sample

    basis = model.basis
    diff_valence = {e: int(semicore.get(e, 0)) for e in basis.symbols}
    samples = []
    for path in folders:
        tf = TrajectoryFolder(path)
        st = tf.structure(0)
        n_el = json.loads((Path(path) / "generate.json").read_text())["record"]["n_electrons"]
        eig = tf.eigenvalues()[0]
        drop = sum(diff_valence[s] for s in st.symbols) // 2
        ref = eig[:, drop:]
        n_occ = n_el // 2 - drop
        n_model = int(basis.norb_of(st.numbers).sum())
        band_max = min(n_model, ref.shape[1])
        emax = float(ref[:, n_occ - 1].max() + window - ref[:, :band_max].min())
        info = BandInfo(band_min=0, band_max=band_max, emin=-1.0, emax=emax)
        targets = {OVERLAP: tf.operator(OVERLAP, 0, st)} if model.has_overlap else {}
        s = make_sample(path.name, st, targets, basis, model.r_max, dtype)
        attach_bands(s, basis, tf.kpoints(), eig, info, str(path))
        samples.append(s)
    return samples, {"method": "eigvals", "eout_weight": EOUT_WEIGHT, "diff_valence": diff_valence}


def band_errors(model, samples, loss_fn) -> list[float]:
    """Band MAE (meV, in the window) of ``model`` on each sample."""
    from eqtb.train.data import make_batch

    out = []
    with torch.no_grad():
        for s in samples:
            batch = make_batch([s])
            out.append(loss_fn.evaluate(model(batch.inputs), batch)[1]["band_mae_meV"])
    return out


def _new_model(system: System, table: dict, atoms):
    """The nnsk model of a system: parameters the table has, Harrison's start for the rest; the
    masks (1: fitted) of the hopping rows and onsite energies."""
    from eqtb.basis import Basis
    from eqtb.data.sk_tables import atomic_radius, onsite_reference
    from eqtb.models.sk import SlaterKoster
    from eqtb.train.esk import harrison, set_edge_integrals

    symbols = list(system.shells)
    rs, nearest = {}, {}
    for x, a in enumerate(symbols):
        for b in symbols[x:]:
            known = table["pairs"].get(f"{a}-{b}")
            nearest[a, b], rs[f"{a}-{b}"] = neighbour_shells(atoms, a, b, system.reach)
            nearest[b, a] = nearest[a, b]
            if known:
                rs[f"{a}-{b}"] = known["rs"]
    model = SlaterKoster(Basis(system.shells), {"method": FORM, "rs": rs, "w": W}, {"method": "uniform_noref"},
                         std=0.0, atomic_radius=RADIUS, overlap=system.overlap)
    basis = model.basis
    sym = basis.symbols
    start = {}
    for x, ex in enumerate(basis.elements):
        for y, ey in enumerate(basis.elements):
            r0 = atomic_radius(sym[x], RADIUS) + atomic_radius(sym[y], RADIUS)
            start[f"{sym[x]}-{sym[y]}"] = {f"{la}-{lb}-{m}": harrison(sa.l, sb.l, m, r0, nearest[sym[x], sym[y]],
                                                                             START_POWER)
                                           for sa, la in zip(ex.shells, ex.labels) for sb, lb in zip(ey.shells, ey.labels)
                                           for m in range(min(sa.l, sb.l) + 1)}
    pad = [0.0] * (model.form.n_params - 2)  # the higher coefficients of a poly form
    set_edge_integrals(model, {k: {n: v[:1] + pad + v[1:] for n, v in d.items()} for k, d in start.items()})
    set_edge_integrals(model, {k: v["integrals"] for k, v in table["pairs"].items()})
    if system.overlap:  # overlap integrals from zero (they are linear in V), decaying as 1 / r^2
        set_edge_integrals(model, {k: {n: [0.0] + pad + [1.0] for n in d} for k, d in start.items()}, overlap=True)
        set_edge_integrals(model, {k: v["overlap"] for k, v in table["pairs"].items() if "overlap" in v}, overlap=True)
    pairs = onsite_pairs(basis)
    onsite_mask = torch.zeros_like(model.onsite_params)
    with torch.no_grad():
        model.onsite_params.zero_()
        for t, e in enumerate(basis.elements):
            known = table["elements"].get(e.symbol)
            for shell, label in zip(e.shells, e.labels):
                k = pairs.index((shell, shell))
                model.onsite_params[t, k, 0] = known["onsite"][label] if known else onsite_reference(e.symbol, label)
                onsite_mask[t, k, 0] = 0.0 if known else 1.0
    hop_mask = torch.tensor([[0.0 if f"{sym[x]}-{sym[y]}" in table["pairs"] else 1.0]
                             for x, y, *_ in model.hopping.keys]).expand_as(model.hopping.params).clone()
    return model, hop_mask, onsite_mask


def fit_overlap(model, batch, mask: torch.Tensor, steps: int = STEPS, log=print, name: str = "") -> float:
    """Fit the overlap integrals of ``model`` (rows where ``mask`` is 1) to the overlap blocks of
    ``batch`` (PySCF's, two-centre and so exact in Slater-Koster form up to the powerlaw's shape):
    least squares over the bonds in reach, Adam with a cosine-decayed learning rate. Returns the
    mean absolute error of the overlap matrix elements of those bonds."""
    from eqtb.quantities import OVERLAP

    params = model.overlap_hopping.params
    params.register_hook(lambda g: g * mask)
    target = batch.targets[OVERLAP][1]
    opt = torch.optim.Adam([params], lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=LR / 50)
    for step in range(steps):
        err = model(batch.inputs)[OVERLAP][1] - target
        loss = (err ** 2).sum() / len(target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            log(f"{name} overlap step {step:4d} squared error per bond {float(loss.detach()):.3e}")
    with torch.no_grad():
        return float((model(batch.inputs)[OVERLAP][1] - target).abs().mean())


@torch.no_grad()
def _add_overlap_start(model, mask: torch.Tensor) -> None:
    """The start of a non-orthogonal fit: to each hopping integral still to fit (``mask`` 1) add its
    overlap integral times the mean onsite energy of its two shells (extended Hueckel's ``H = H_orth
    + (e_a + e_b) / 2 S``, to first order in S), both at ``r_0``."""
    pairs = onsite_pairs(model.basis)
    energy = {(t, a): float(model.onsite_params[t, pairs.index((a, a)), 0]) for t, e in enumerate(model.basis.elements)
              for a in e.shells}
    for row, (x, y, a, b, m) in enumerate(model.hopping.keys):
        if mask[row, 0]:
            model.hopping.params[row, 0] += (energy[x, a] + energy[y, b]) / 2 * model.overlap_hopping.params[row, 0]


#: (l, |m|) -> the index, among PySCF's real functions of l, of the one that has |m| about the z axis
#: (s; p in PySCF's x, y, z order: pz, px; d in m = -2..2 order: dz2, dxz, dx2-y2)
_Z_COMPONENT = {(0, 0): 0, (1, 0): 2, (1, 1): 0, (2, 0): 2, (2, 1): 3, (2, 2): 4}


def _tail_positive(shell: list) -> list:
    """A PySCF basis shell ``[l, [exponent, c, ...], ...]`` as its first contraction, signed so that
    the radial function is positive far from the nucleus (the coefficient of its most diffuse
    primitive positive): the convention of Slater-Koster tables, of Harrison's integrals and of
    DeePTB's ``"d*"`` (an s-d or p-d overlap of a bond has the sign of the lobes that meet). The GTH
    contractions of s and p are negative there; flipping both leaves the s and p overlaps (products
    of two of them), which the frames give, as they are."""
    prims = [(float(p[0]), float(p[1])) for p in shell[1:]]
    sign = math.copysign(1.0, min(prims)[1])
    return [int(shell[0])] + [[e, sign * c] for e, c in prims]


def element_functions(symbol: str, labels: list, polarisation: tuple | None = None) -> list:
    """``[(label, PySCF shell)]`` of an element's fitted shells (``labels``, DeePTB's: the k-th label
    of an angular momentum takes the k-th shell of it in :data:`DFT`'s basis) and its polarisation
    shell ``(label, basis)`` (the first shell of the label's angular momentum in ``basis``), each
    :func:`_tail_positive`."""
    from pyscf.pbc.gto.basis import load

    def shells_of(basis: str, l: int) -> list:
        return [sh for sh in load(basis, symbol) if sh[0] == l]

    out = []
    for k, label in enumerate(labels):
        l = "spdf".index(label.rstrip("*")[-1])
        out.append((label, _tail_positive(shells_of(DFT["basis"], l)[sum(x[-1] == label[-1] for x in labels[:k])])))
    if polarisation:
        label, basis = polarisation
        l = "spdf".index(label.rstrip("*")[-1])
        found = shells_of(basis, l)
        if not found:
            raise ValueError(f"PySCF basis {basis} has no {'spdf'[l]} shell for {symbol}")
        out.append((label, _tail_positive(found[0])))
    return out


def dimer_overlaps(a: str, b: str, functions: dict, distances) -> dict:
    """Two-centre overlap integrals of atom ``a`` at the origin and ``b`` at ``(0, 0, r)`` for each
    ``r`` of ``distances`` (Angstrom): PySCF's ``int1e_ovlp`` of the dimer between the functions
    ``{symbol: [(label, PySCF shell)]}`` (normalised by PySCF), as ``{"<shell of a>-<shell of
    b>-<|m|>": array over distances}``: the Slater-Koster integrals of the directed bond a -> b in
    the table's convention (the bond along +z)."""
    from pyscf import gto

    fa, fb = functions[a], functions[b]
    out = {f"{la}-{lb}-{m}": np.zeros(len(distances)) for la, sa in fa for lb, sb in fb
           for m in range(min(sa[0], sb[0]) + 1)}
    for n, r in enumerate(distances):
        mol = gto.M(atom=[[a, (0.0, 0.0, 0.0)], [b, (0.0, 0.0, float(r))]], unit="Angstrom", verbose=0,
                    basis={s: [sh for _, sh in functions[s]] for s in {a, b}},
                    spin=(gto.charge(a) + gto.charge(b)) % 2)
        s_ao = mol.intor("int1e_ovlp")
        start = mol.ao_loc_nr()
        for i, (la, sa) in enumerate(fa):
            for j, (lb, sb) in enumerate(fb):
                for m in range(min(sa[0], sb[0]) + 1):
                    row = start[i] + _Z_COMPONENT[sa[0], m]
                    col = start[len(fa) + j] + _Z_COMPONENT[sb[0], m]
                    out[f"{la}-{lb}-{m}"][n] = s_ao[row, col]
    return out


def _bond_lengths(atoms, a: str, b: str, cutoff: float) -> np.ndarray:
    """Lengths (Angstrom) of the a-b bonds shorter than ``cutoff`` in the crystal ``atoms``, one per
    directed bond."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, cutoff)
    sym = np.array(atoms.get_chemical_symbols())
    return d[(sym[i] == a) & (sym[j] == b)]


def fit_polarisation(system: System, table: dict, atoms) -> dict:
    """Add the overlap integrals of each polarisation shell of ``system`` (``System.polarisation``)
    to the table's bond types of the system: every integral between it and the fitted shells (or
    itself), fitted in the table's form (``r_0`` and ``rs`` of the bond type) to the dimer overlaps
    of :func:`dimer_overlaps`: least squares over the bond lengths of the crystal ``atoms`` shorter
    than ``rs - 3 w`` and the same times ``1 +- STRAIN``, each as often as it occurs (the nearest
    neighbours weigh, not the tail between the shells). No band data holds such a shell (the DFT basis lacks it), so its
    hopping integrals and level stay :mod:`eqtb.train.esk`'s. Returns ``{element: {label: {"basis",
    "overlap_mae"}}}`` (mean absolute error of the fitted integrals over those bonds)."""
    from scipy.optimize import least_squares

    from eqtb.data.sk_tables import atomic_radius
    from eqtb.models.sk import HOPPING_FORMS

    form = HOPPING_FORMS[FORM]
    functions = {e: element_functions(e, table["elements"][e]["shells"], system.polarisation.get(e))
                 for e in system.shells}
    report = {}
    for key, pair in table["pairs"].items():
        a, b = key.split("-")
        if pair["system"] != system.name or not (a in system.polarisation or b in system.polarisation):
            continue
        r = _bond_lengths(atoms, a, b, pair["rs"] - 3 * W)
        r = np.unique(np.round(np.concatenate([r * (1 - STRAIN), r, r * (1 + STRAIN)]), 4), return_counts=True)
        r, weight = r[0], np.sqrt(r[1])
        r0 = atomic_radius(a, RADIUS) + atomic_radius(b, RADIUS)
        errors = []
        for direction, (x, y) in {key: (a, b), f"{b}-{a}": (b, a)}.items():
            new = {name: v for name, v in dimer_overlaps(x, y, functions, r).items()
                   if name not in table["pairs"][direction]["overlap"]}
            for name, values in new.items():
                def residual(p, values=values):
                    return (form(torch.as_tensor(p), torch.as_tensor(r), r0, pair["rs"], W).numpy() - values) * weight
                start = [float(values[0]) * (r[0] / r0) ** 3, 2.0]
                fit = least_squares(residual, start)
                table["pairs"][direction]["overlap"][name] = [float(fit.x[0]), abs(float(fit.x[1]))]
                errors.append(np.average(np.abs(fit.fun) / weight, weights=weight ** 2))
        for e in {a, b} & set(system.polarisation):
            label, basis = system.polarisation[e]
            report.setdefault(e, {})[label] = {"basis": basis, "overlap_mae": round(float(np.mean(errors)), 6)}
    return report


def fit_system(system: System, table: dict, cache, steps: int = STEPS, log=print) -> dict:
    """Fit what ``system`` adds to ``table`` (module docstring); returns the updated table."""
    from eqtb.data.sk_tables import onsite_reference
    from eqtb.train.data import make_batch
    from eqtb.train.esk import edge_integrals
    from eqtb.train.loss import EigvalsLoss

    t0 = time.perf_counter()
    folders = reference_data(system, cache)
    atoms = system.build()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, hop_mask, onsite_mask = _new_model(system, table, atoms)
        samples, loss_opts = reference_samples(folders, model, system.semicore, system.window)
        loss_fn = EigvalsLoss(model.basis, loss_opts, overlap=system.overlap)
        train = samples[:-1]  # the last frame is the test frame
        batch = make_batch(train)
        overlap_mae = None
        if system.overlap:
            overlap_mae = fit_overlap(model, batch, hop_mask, steps, log, system.name)
            _add_overlap_start(model, hop_mask)
        model.hopping.params.register_hook(lambda g: g * hop_mask)
        model.onsite_params.register_hook(lambda g: g * onsite_mask)
        decay0 = model.hopping.params[:, -1].detach().abs().clone()
        opt = torch.optim.Adam([model.hopping.params, model.onsite_params], lr=LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=LR / 50)
        start = band_errors(model, samples, loss_fn)
        for step in range(steps):
            loss, info = loss_fn.evaluate(model(batch.inputs), batch)
            drift = (model.hopping.params[:, -1].abs() - decay0) ** 2 * hop_mask[:, -1]
            loss = loss + DECAY_WEIGHT * drift.sum() / hop_mask[:, -1].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 100 == 0 or step == steps - 1:
                log(f"{system.name} step {step:4d} loss {float(loss):.5f} eV^2, band MAE {info['band_mae_meV']:.1f} meV")
        new = [e for e in model.basis.elements if e.symbol not in table["elements"]]
        with torch.no_grad():
            # nothing fixed: put the levels on the free atoms' scale (orthogonal models only: with an
            # overlap a shift of the onsite energies is no common shift of the bands)
            if len(new) == model.basis.n_types and not model.has_overlap:
                pairs = onsite_pairs(model.basis)
                diff = [onsite_reference(e.symbol, lab) - float(model.onsite_params[t, pairs.index((s, s)), 0])
                        for t, e in enumerate(model.basis.elements) for s, lab in zip(e.shells, e.labels)]
                model.onsite_params[..., 0] += float(np.mean(diff)) * onsite_mask[..., 0]
        errors = band_errors(model, samples, loss_fn)
    finally:
        torch.set_default_dtype(default)
    pairs = onsite_pairs(model.basis)
    fitted = []
    for t, e in enumerate(model.basis.elements):
        if e.symbol in table["elements"]:
            continue
        table["elements"][e.symbol] = {
            "shells": list(e.labels), "system": system.name,
            "onsite": {lab: float(model.onsite_params[t, pairs.index((s, s)), 0]) for s, lab in zip(e.shells, e.labels)}}
        fitted.append(e.symbol)
    rs = model.hopping_options["rs"]
    for key, integrals in edge_integrals(model).items():
        if key in table["pairs"]:
            continue
        a, b = key.split("-")
        table["pairs"][key] = {"rs": rs.get(key, rs.get(f"{b}-{a}")), "system": system.name,
                               "integrals": integrals}
        if system.overlap:
            table["pairs"][key]["overlap"] = edge_integrals(model, overlap=True)[key]
        fitted.append(key)
    for e, shells in fit_polarisation(system, table, atoms).items():
        table["elements"][e]["polarisation"] = shells
    test, ideal = samples[-1], samples[0].structure
    table["systems"][system.name] = {
        "formula": test.structure.formula, "kmesh": list(system.kmesh), "semicore": dict(system.semicore),
        "crystal": {"symbols": list(ideal.symbols), "cell": np.round(ideal.cell, 6).tolist(),
                    "positions": np.round(ideal.positions, 6).tolist()},
        "fitted": fitted, "n_kpoints": len(test.kpoints), "reach": system.reach,
        **({"smearing_hartree": system.smearing} if system.smearing is not None else {}),
        **({"overlap_mae": round(overlap_mae, 6)} if system.overlap else {}),
        "band_mae_meV": {"start": round(float(np.mean(start)), 2),
                         "train": round(float(np.mean(errors[:-1])), 2), "test": round(float(errors[-1]), 2)},
        "frames": [s.name for s in samples],
        "window": {"above_vbm_eV": system.window, "band_max": test.bands.info.band_max,
                   "emax": round(test.bands.info.emax, 4),
                   "diff_valence": loss_opts["diff_valence"]},
        "fit_seconds": round(time.perf_counter() - t0, 1)}
    return table


def write_test_frame(system: System, cache, folder) -> Path:
    """``folder/<system>.npz``: the test frame of ``system`` (``numbers``, ``positions``, ``cell``,
    ``kpoints``, ``eigenvalues``), on which the tests recompute the table's test error."""
    from eqtb.data.folder import TrajectoryFolder

    tf = TrajectoryFolder(reference_data(system, cache)[-1])
    st = tf.structure(0)
    path = Path(folder) / f"{system.name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, numbers=st.numbers, positions=st.positions, cell=st.cell, kpoints=tf.kpoints(),
                        eigenvalues=tf.eigenvalues()[0])
    return path


def markdown(table: dict) -> str:
    """The human-readable table (``docs/esk_table.md``): per element its shells, onsite energies and
    reference system, per system its fit errors."""
    d = table["dft"]
    lines = ["# eqtb's built-in Slater-Koster parameters (`eqtb esk`)", "",
             "Generated by `python -m eqtb.train.esk_fit` from `eqtb/data/esk_table.json`; do not edit. "
             "Every number is eqtb's own fit to PySCF band structures "
             f"({d['code']}, {d['xc']}, {d['basis']}, {d['pseudo']} pseudopotentials; {d['nframes']} frames per "
             f"system: the ideal crystal and strained ({d['strain']:g}) and displaced ({d['displacement']:g} "
             f"Angstrom) copies). Model: nnsk `{table['model']['hopping']}` hopping, w = {table['model']['w']} "
             f"Angstrom, onsite `{table['model']['onsite']}`, orthogonal (no overlap) but for the systems marked "
             "*overlap* (overlap integrals fitted to PySCF's overlap blocks, then H to the bands with them). "
             "Band MAE: aligned band "
             "energies from the bottom of the fitted bands up to the system's window above the highest "
             "occupied band, meV; *test*: the frame the fit did not see. *+ shell: overlap only*: a polarisation "
             "shell (no band data holds it) whose overlap integrals with the fitted shells and itself are PySCF's "
             "(that basis' function, fitted to dimer overlaps; MAE over the bonds in reach); `eqtb esk` starts its "
             "hopping as Harrison's plus the mean level times the overlap. With Si's d*, DeePTB's silicon tutorial "
             "chain started from `eqtb esk` reaches 43.3 meV held-out band MAE after the mix step "
             "(`OMP_NUM_THREADS=1 python benchmarks/silicon_chain_md.py --start esk`; 80.0 without it).", "",
             "| element | shells | onsite energies (eV) | fitted on | band MAE train / test (meV) |",
             "|---|---|---|---|---|"]
    for sym, e in table["elements"].items():
        mae = table["systems"][e["system"]]["band_mae_meV"]
        levels = ", ".join(f"{k} {v:.3f}" for k, v in e["onsite"].items())
        extra = "".join(f" (+ {k}: overlap only, {v['basis']}, MAE {v['overlap_mae']:.4f})"
                        for k, v in e.get("polarisation", {}).items())
        lines.append(f"| {sym} | {' '.join(e['shells'])}{extra} | {levels} | {e['system']} | "
                     f"{mae['train']:.0f} / {mae['test']:.0f} |")
    lines += ["", "| reference system | fitted | bands fitted | window above VBM (eV) | Harrison start / train / test "
                  "MAE (meV) | overlap MAE |", "|---|---|---|---|---|---|"]
    for name, s in table["systems"].items():
        mae = s["band_mae_meV"]
        fitted = list(dict.fromkeys("-".join(sorted(k.split("-"))) if "-" in k else k for k in s["fitted"]))
        above = s["window"].get("above_vbm_eV", d["window_above_vbm_eV"])
        smeared = f"; Fermi-Dirac {s['smearing_hartree']:g} Ha" if "smearing_hartree" in s else ""
        lines.append(f"| {name} ({s['formula']}{smeared}) | {', '.join(fitted)} | {s['window']['band_max']} | {above:g} | "
                     f"{mae['start']:.0f} / {mae['train']:.0f} / {mae['test']:.0f} | "
                     + (f"{s['overlap_mae']:.4f} (reach {s['reach']}) |" if "overlap_mae" in s else "|"))
    return "\n".join(lines) + "\n"


def empty_table() -> dict:
    return {"format": "eqtb-esk-1",
            "model": {"hopping": FORM, "w": W, "atomic_radius": RADIUS, "onsite": "uniform_noref"},
            "dft": {**DFT, "code": "PySCF KRKS", "nframes": NFRAMES, "strain": STRAIN, "displacement": DISPLACEMENT,
                    "seed": SEED, "band_density": BAND_DENSITY, "window_above_vbm_eV": WINDOW_ABOVE,
                    "eout_weight": EOUT_WEIGHT, "steps": STEPS, "lr": LR},
            "elements": {}, "pairs": {}, "systems": {}}


def main(argv=None) -> None:
    from eqtb.train.esk import TABLE_PATH

    p = argparse.ArgumentParser(prog="python -m eqtb.train.esk_fit", description=__doc__.split("\n\n")[0])
    p.add_argument("cache", help="folder of the DFT reference data (computed when missing)")
    p.add_argument("--only", nargs="*", help="fit only these systems (with the others from the table at -o)")
    p.add_argument("-o", "--output", default=str(TABLE_PATH), help="table JSON to write")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--markdown", default=str(MARKDOWN_PATH), help="human-readable table to write")
    p.add_argument("--test-data", default=None, metavar="DIR", help="also write each system's test frame here")
    args = p.parse_args(argv)
    out = Path(args.output)
    table = empty_table()
    if args.only:
        old = json.loads(out.read_text()) if out.exists() else empty_table()
        keep = [s.name for s in SYSTEMS if s.name not in args.only and s.name in old["systems"]]
        for name in keep:  # earlier systems' entries as they are, later ones refitted after
            table["systems"][name] = old["systems"][name]
        table["elements"] = {k: v for k, v in old["elements"].items() if v["system"] in keep}
        table["pairs"] = {k: v for k, v in old["pairs"].items() if v["system"] in keep}
    for system in SYSTEMS:
        if args.only and system.name not in args.only:
            continue
        try:
            table = fit_system(system, table, args.cache, steps=args.steps)
        except Exception as err:  # noqa: BLE001 -- one failed system (SCF, ...) must not stop the others
            print(f"{system.name}: FAILED ({type(err).__name__}: {err})", flush=True)
            continue
        print(json.dumps({system.name: table["systems"][system.name]["band_mae_meV"]}), flush=True)
        if args.test_data:
            write_test_frame(system, args.cache, args.test_data)
        order = {s.name: k for k, s in enumerate(SYSTEMS)}
        table["systems"] = {s.name: table["systems"][s.name] for s in SYSTEMS if s.name in table["systems"]}
        for part in ("elements", "pairs"):  # in the order of the systems that fitted them
            table[part] = dict(sorted(table[part].items(), key=lambda kv: order[kv[1]["system"]]))
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(out)
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(table))


if __name__ == "__main__":
    main()

"""Real-space H(R), S(R) blocks from PySCF: molecules (R = 0 only) and periodic cells.

This is the DFT engine behind reference data: a converged PySCF mean-field object is turned into
eqtb :class:`~eqtb.operator.Operator` objects whose Bloch sums reproduce PySCF's own bands.

Conventions and units
---------------------
* Output follows eqtb (= DeePTB, shared/spec/FORMATS.md 1.6, 2.3, 8.1): lengths in Angstrom,
  H in eV, S dimensionless; ``block_ij(R)[mu, nu] = <phi_{i,mu}(r - r_i)| O |phi_{j,nu}(r - r_j - R.A)>``
  with R the integer cell of atom j; orbitals of an atom l-major, then zeta, then m = -l..l
  (p = y, z, x). Conversion Hartree -> eV uses :data:`HARTREE_EV` (DeePTB's value), Bohr -> Angstrom
  uses PySCF's own ``pyscf.lib.param.BOHR`` so that positions are exactly the ones PySCF was given.
* PySCF orders the AOs of an atom shell by shell as the shells appear in ``mol._bas`` (each shell
  with ``nctr`` contractions, contraction-major, then m). PySCF normally sorts shells by l while
  building, but nothing forces it; :func:`atom_layouts` builds the permutation to eqtb's l-major,
  zeta order for any shell order (stable in the original order within one l) and checks the result
  against ``mol.ao_labels()``. The m order inside a shell is converted by the "pyscf" table of
  :mod:`eqtb.data.conventions` (p: x, y, z -> y, z, x; l >= 2: PySCF's real spherical order is
  already m = -l..l, no sign changes).
* PySCF's Bloch sum is ``O_PySCF(k) = sum_R O(R) exp(+i k.R)`` (k in 1/Bohr, R Cartesian) for
  Bloch AOs ``sum_T exp(i k.T) phi(r - T)``; eqtb uses ``exp(-i 2 pi k.R)`` with fractional k, the
  complex conjugate (FORMATS 8.1): eqtb's ``O(k) = O_PySCF(k)*``, same eigenvalues.

Periodic systems: the Fock matrix is evaluated, with the fixed (converged) density, at the k-points
of a Gamma-centred Fourier mesh exactly as PySCF's ``get_bands`` does (``get_hcore`` +
``get_veff(..., kpts_band=...)``), Fourier transformed over the Born-von Karman supercell of that
mesh, and every ``(i, j, R mod N)`` is assigned to its shortest periodic image(s)
(Wigner-Seitz-like set of the supercell; equal weight shared among degenerate images). The result
is exact on the Fourier mesh and a (rapidly converging) interpolation elsewhere.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from ase.data import atomic_numbers as _ASE_Z

from eqtb.basis import Basis, element_symbol
from eqtb.data.conventions import atom_transform
from eqtb.structure import Structure
from eqtb.bonds import block_key
from eqtb.operator import Operator

#: Hartree -> eV (CODATA 2018, DeePTB's value; FORMATS Appendix A)
HARTREE_EV = 27.211386245988

# PySCF's m labels in ``ao_labels(fmt=False)`` per l (l >= 3: "-l" .. "+l")
_PYSCF_M_LABELS = {0: [""], 1: ["x", "y", "z"], 2: ["xy", "yz", "z^2", "xz", "x2-y2"]}


class PySCFConventionError(ValueError):
    """A PySCF object this module cannot convert (Cartesian GTOs, inconsistent basis per element,
    unrestricted spin, an AO layout that does not match PySCF's labels)."""


def _bohr() -> float:
    from pyscf.lib import param

    return float(param.BOHR)


# ---------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class AtomLayout:
    """Where one atom's orbitals sit in PySCF's AO list.

    ``shell_l``: angular momenta of the atom's radial functions in eqtb order (l-major, zeta in
    PySCF's order). ``ao``: PySCF AO indices in that order, each shell's 2l+1 AOs still in PySCF's
    m order (the m conversion is :func:`eqtb.data.conventions.atom_transform`)."""

    symbol: str
    shell_l: tuple[int, ...]
    ao: np.ndarray

    @property
    def norb(self) -> int:
        return len(self.ao)


def _m_labels(l: int) -> list[str]:
    return _PYSCF_M_LABELS.get(l, [f"{m:+d}" for m in range(-l, l + 1)])


def atom_layouts(mol) -> list[AtomLayout]:
    """Per-atom AO layout of a PySCF ``gto.Mole`` or ``pbc.gto.Cell`` (spherical GTOs only).

    Radial functions (shell x contraction) of each atom are stably sorted by l, which gives eqtb's
    l-major, zeta order whatever order PySCF lists the shells in. The resulting order is checked
    against ``mol.ao_labels(fmt=False)`` (atom index, l letter, and PySCF's m labels per shell);
    a mismatch raises :class:`PySCFConventionError`."""
    if getattr(mol, "cart", False):
        raise PySCFConventionError("Cartesian GTOs (mol.cart=True) are not supported; use spherical GTOs")
    ao_loc = mol.ao_loc_nr()
    radial: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(mol.natm)]
    for ib in range(mol.nbas):
        a, l, nctr = mol.bas_atom(ib), mol.bas_angular(ib), mol.bas_nctr(ib)
        if ao_loc[ib + 1] - ao_loc[ib] != nctr * (2 * l + 1):
            raise PySCFConventionError(f"shell {ib} has {ao_loc[ib + 1] - ao_loc[ib]} AOs, expected "
                                       f"{nctr}x{2 * l + 1} spherical functions")
        for c in range(nctr):
            start = ao_loc[ib] + c * (2 * l + 1)
            radial[a].append((l, np.arange(start, start + 2 * l + 1)))
    labels = mol.ao_labels(fmt=False)
    out = []
    for a in range(mol.natm):
        shells = sorted(radial[a], key=lambda t: t[0])  # stable: zeta order kept within l
        if not shells:
            raise PySCFConventionError(f"atom {a} ({mol.atom_symbol(a)}) has no basis functions")
        ao = np.concatenate([idx for _, idx in shells]).astype(np.int64)
        for l, idx in shells:
            for ao_index, m_label in zip(idx, _m_labels(l)):
                lab = labels[ao_index]
                if lab[0] != a or lab[2][-1] != "spdfghik"[l] or lab[3] != m_label:
                    raise PySCFConventionError(
                        f"AO {ao_index} is labelled {lab} by PySCF, expected atom {a}, l={l}, m label "
                        f"{m_label!r}: PySCF's AO layout is not the one this converter assumes")
        symbol = element_symbol(mol.atom_pure_symbol(a))
        out.append(AtomLayout(symbol, tuple(l for l, _ in shells), ao))
    if sorted(np.concatenate([x.ao for x in out]).tolist()) != list(range(mol.nao_nr())):
        raise PySCFConventionError("per-atom AO layouts do not cover every AO exactly once")
    return out


def basis_of_cell(mol) -> tuple[Basis, list[tuple[int, ...]]]:
    """eqtb :class:`Basis` of a PySCF molecule/cell and the per-atom shell angular momenta.

    The basis string of an element counts its radial functions per l (e.g. gth-dzvp Si ->
    ``"2s2p1d"``, cc-pVDZ O -> ``"3s2p1d"``). All atoms of one element must carry the same shells
    (PySCF allows per-atom bases via labels such as ``"Si1"``; eqtb does not)."""
    layouts = atom_layouts(mol)
    spec: dict[str, str] = {}
    for a, lay in enumerate(layouts):
        counts: dict[int, int] = {}
        for l in lay.shell_l:
            counts[l] = counts.get(l, 0) + 1
        if max(counts.values()) > 9:
            raise PySCFConventionError(f"{lay.symbol}: more than 9 radial functions of one l "
                                       f"({counts}) cannot be written as an eqtb basis string")
        s = "".join(f"{n}{'spdfgh'[l]}" for l, n in sorted(counts.items()))
        if spec.setdefault(lay.symbol, s) != s:
            raise PySCFConventionError(f"atoms of element {lay.symbol} carry different bases "
                                       f"({spec[lay.symbol]} and {s}, atom {a})")
    basis = Basis(spec)
    for lay in layouts:  # eqtb's element layout must be exactly the atom's l-major list
        assert basis[lay.symbol].shell_l == lay.shell_l
    return basis, [lay.shell_l for lay in layouts]


def structure_of_cell(mol) -> Structure:
    """eqtb :class:`Structure` (Angstrom) of a PySCF Mole (non-periodic) or Cell (periodic along
    its ``dimension`` first axes). Atomic numbers come from the element symbols (not from
    ``atom_charges``, which are valence charges with pseudopotentials)."""
    bohr = _bohr()
    numbers = [_ASE_Z[element_symbol(mol.atom_pure_symbol(a))] for a in range(mol.natm)]
    positions = np.asarray(mol.atom_coords(), dtype=np.float64) * bohr
    if hasattr(mol, "lattice_vectors"):
        cell = np.asarray(mol.lattice_vectors(), dtype=np.float64) * bohr
        dim = int(getattr(mol, "dimension", 3))
        pbc = [k < dim for k in range(3)]
        return Structure(numbers, positions, cell, pbc)
    return Structure(numbers, positions)


def _ao_to_eqtb(layouts: list[AtomLayout]) -> tuple[np.ndarray, np.ndarray]:
    """(T, offsets): T (nao, nao) maps a PySCF AO vector to eqtb's compact layout (atoms in order,
    each l-major with eqtb m order), so ``M_eqtb = T M_pyscf T^T``; offsets (N+1,) of each atom's
    rows in eqtb's layout."""
    nao = sum(x.norb for x in layouts)
    T = np.zeros((nao, nao))
    offsets = np.zeros(len(layouts) + 1, dtype=np.int64)
    for a, lay in enumerate(layouts):
        o = offsets[a]
        # rows: eqtb components; columns: the atom's PySCF AOs, selected and m-converted
        T[o:o + lay.norb, lay.ao] = atom_transform("pyscf", lay.shell_l)
        offsets[a + 1] = o + lay.norb
    return T, offsets


# ---------------------------------------------------------------------------------------- molecules
def operators_from_ao(mol, h_ao: np.ndarray, s_ao: np.ndarray) -> tuple[Structure, Basis, Operator, Operator]:
    """Molecule (or any R = 0 only) operators from AO matrices in PySCF's layout.

    ``h_ao`` in Hartree (e.g. a Fock matrix), ``s_ao`` dimensionless, both (nao, nao) real
    symmetric. Returns (Structure [Angstrom], Basis, H [eV], S) with only ``i_j_0_0_0`` blocks."""
    layouts = atom_layouts(mol)
    basis, _ = basis_of_cell(mol)
    structure = structure_of_cell(mol)
    if structure.pbc.any():
        raise PySCFConventionError("operators_from_ao is for molecules; use periodic_operators for cells")
    T, off = _ao_to_eqtb(layouts)
    h = T @ (np.asarray(h_ao) * HARTREE_EV) @ T.T
    s = T @ np.asarray(s_ao) @ T.T
    nat = len(layouts)
    hb, sb = {}, {}
    for i in range(nat):
        for j in range(nat):
            key = block_key(i, j, (0, 0, 0))
            hb[key] = h[off[i]:off[i + 1], off[j]:off[j + 1]]
            sb[key] = s[off[i]:off[i + 1], off[j]:off[j + 1]]
    H = Operator.from_blocks(structure, basis, hb, source="PySCF Fock")
    S = Operator.from_blocks(structure, basis, sb, source="PySCF overlap")
    return structure, basis, H, S


def molecular_operators(mf, fock: np.ndarray | None = None) -> tuple[Structure, Basis, Operator, Operator]:
    """(Structure, Basis, H, S) of a converged restricted molecular SCF (``scf.RHF``/``dft.RKS``).

    H is the Fock matrix of the final density, ``mf.get_fock(dm=mf.make_rdm1())``, unless
    ``fock`` (Hartree, PySCF AO layout) is given. Note that ``mf.mo_energy`` are the eigenvalues
    of the Fock matrix of the *previous* SCF density, so they agree with H's eigenvalues only to
    the SCF convergence."""
    mol = mf.mol
    if fock is None:
        fock = mf.get_fock(dm=mf.make_rdm1())
    fock = np.asarray(fock)
    if fock.ndim != 2:
        raise PySCFConventionError(f"expected one restricted Fock matrix, got shape {fock.shape} "
                                   f"(unrestricted SCF is not supported)")
    return operators_from_ao(mol, fock, mf.get_ovlp())


# ---------------------------------------------------------------------------------------- periodic
def gamma_mesh(kmesh) -> np.ndarray:
    """Gamma-centred Monkhorst-Pack mesh in fractional coordinates, ``n_a / N_a`` with
    ``n_a = 0..N_a-1``, C order over (n1, n2, n3): shape (N1*N2*N3, 3)."""
    kmesh = tuple(int(n) for n in kmesh)
    grids = np.meshgrid(*[np.arange(n) / n for n in kmesh], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def _is_kpoint_scf(mf) -> bool:
    from pyscf.pbc.scf import khf

    return isinstance(mf, khf.KSCF)


def band_fock(mf, kpts_abs: np.ndarray, dm=None, chunk: int = 32) -> np.ndarray:
    """Fock matrices (nk, nao, nao) in Hartree, PySCF AO layout and Bloch convention, at absolute
    k-points ``kpts_abs`` (1/Bohr) with the fixed density ``dm`` (default ``mf.make_rdm1()``).

    Mirrors PySCF's ``get_bands`` (pyscf/pbc/scf/khf.py and hf.py): ``get_hcore(cell, kpts_band)``
    + ``get_veff(cell, dm, kpts=mf.kpts (kpt=mf.kpt for Gamma-point SCF), kpts_band=kpts_band)``.
    Band k-points are processed ``chunk`` at a time to bound the memory of the AO values on the grid."""
    cell = mf.cell
    if dm is None:
        dm = mf.make_rdm1()
    kpts_abs = np.asarray(kpts_abs, dtype=np.float64).reshape(-1, 3)
    nao = cell.nao_nr()
    out = np.empty((len(kpts_abs), nao, nao), dtype=np.complex128)
    for s in range(0, len(kpts_abs), chunk):
        kb = kpts_abs[s:s + chunk]
        f = np.asarray(mf.get_hcore(cell, kb), dtype=np.complex128).reshape(len(kb), nao, nao)
        if _is_kpoint_scf(mf):
            v = mf.get_veff(cell, dm, kpts=mf.kpts, kpts_band=kb)
        else:
            v = mf.get_veff(cell, dm, kpt=mf.kpt, kpts_band=kb)
        v = np.asarray(v)
        if v.size != f.size:
            raise PySCFConventionError(f"get_veff returned shape {v.shape} for {len(kb)} band k-points; "
                                       f"only restricted (closed-shell) SCF is supported")
        out[s:s + len(kb)] = f + v.reshape(f.shape)
    return out


def band_overlap(cell, kpts_abs: np.ndarray) -> np.ndarray:
    """Overlap matrices (nk, nao, nao), PySCF AO layout and Bloch convention."""
    kpts_abs = np.asarray(kpts_abs, dtype=np.float64).reshape(-1, 3)
    s = cell.pbc_intor("int1e_ovlp", hermi=1, kpts=kpts_abs)
    return np.asarray(s, dtype=np.complex128).reshape(len(kpts_abs), cell.nao_nr(), cell.nao_nr())


def wigner_seitz_images(structure: Structure, kmesh, tol: float = 1e-6):
    """Shortest periodic images in the Born-von Karman supercell of ``kmesh``.

    For every atom pair (i, j) and every cell index ``n`` (0 <= n_a < N_a, C order as
    :func:`gamma_mesh`) returns the lattice vectors ``R = n + N*m`` minimising the bond length
    ``|r_j + R.A - r_i|`` (Angstrom), all of them when several are within ``tol``. Non-periodic
    directions need N_a = 1 and only get R_a = 0.

    Returns (i, j, n_flat, R, weight): arrays over images; ``weight`` = 1 / (number of degenerate
    images of that (i, j, n))."""
    N = np.array([int(x) for x in kmesh])
    if (~structure.pbc & (N != 1)).any():
        raise ValueError(f"Fourier mesh {N.tolist()} must be 1 along non-periodic directions {structure.pbc}")
    A, pos = structure.cell, structure.positions
    cells = np.rint(gamma_mesh(N) * N).astype(np.int64)  # integer n, (Nk, 3)
    reach = 2
    while True:
        rng = [range(-reach, reach + 1) if p else range(0, 1) for p in structure.pbc]
        shifts = np.array(list(itertools.product(*rng)), dtype=np.int64)  # (M, 3)
        on_edge = (np.abs(shifts) == reach)[:, structure.pbc].any(axis=1)
        Rc = cells[:, None, :] + shifts[None, :, :] * N  # candidates R = n + N m, (Nk, M, 3)
        RA = Rc @ A
        found, widen = [], False
        for i in range(structure.natoms):  # one row of atom pairs at a time bounds the memory
            dist = np.linalg.norm((pos - pos[i])[:, None, None, :] + RA[None], axis=-1)  # (nat, Nk, M)
            sel = dist <= dist.min(axis=-1, keepdims=True) + tol
            if (sel & on_edge).any():
                widen = True  # a shortest image on the search boundary (skewed cell): search wider
                break
            jj, nn, mm = np.nonzero(sel)
            deg = sel.sum(axis=-1)
            found.append((np.full(len(jj), i), jj, nn, Rc[nn, mm], 1.0 / deg[jj, nn]))
        if not widen:
            break
        reach += 1
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _real_space(ok: np.ndarray, kmesh) -> np.ndarray:
    """``O(n) = (1/Nk) sum_k O_PySCF(k) exp(-i 2 pi k.n)`` for n on the BvK supercell, given
    ``ok`` (Nk, nao, nao) on :func:`gamma_mesh` (C order). Returns (Nk, nao, nao) complex, n in
    the same C order."""
    N = tuple(int(x) for x in kmesh)
    nao = ok.shape[-1]
    grid = ok.reshape(*N, nao, nao)
    return (np.fft.fftn(grid, axes=(0, 1, 2)) / np.prod(N)).reshape(-1, nao, nao)


@dataclass
class FourierInfo:
    """Diagnostics of :func:`real_space_blocks`: the Fourier mesh, the largest imaginary part of
    H(R) (eV) and S(R) that was dropped, the largest Hermiticity violation of H(R) (eV) before
    the images are assigned, and the number of (i, j, R) blocks (both triangles).

    ``max_imag_h`` is round-off (~1e-15 eV) for odd meshes; for even meshes the k = -1/2 planes
    have no partner in the set and it measures PySCF's own non-periodicity O(k + G) != O(k)
    caused by an unconverged FFT grid (e.g. ~1e-6 eV for Si gth-szv on a 15^3 grid)."""

    kmesh: tuple[int, int, int]
    max_imag_h: float
    max_imag_s: float
    max_nonhermitian_h: float
    n_blocks: int


def _minus_k_partner(kfrac: np.ndarray, kmesh) -> np.ndarray:
    """Index of -k in ``kfrac`` for each k (mesh representatives in [-1/2, 1/2)), -1 when -k is
    not in the set (the k = -1/2 planes of an even mesh)."""
    N = np.array(kmesh)
    n = np.rint(kfrac * N).astype(np.int64)
    lookup = {tuple(x): a for a, x in enumerate(n)}
    return np.array([lookup.get(tuple(-x), -1) for x in n], dtype=np.int64)


def _fock_time_reversal(mf, kfrac: np.ndarray, kmesh, dm_kpts, chunk: int) -> np.ndarray:
    """:func:`band_fock` (Hartree) on the mesh points ``kfrac``, evaluated at one k of every
    (k, -k) pair only, the partner filled with ``F(-k) = F(k)*``."""
    partner = _minus_k_partner(kfrac, kmesh)
    idx = np.arange(len(kfrac))
    todo = idx[(partner < 0) | (partner >= idx)]
    f = band_fock(mf, mf.cell.get_abs_kpts(kfrac[todo]), dm=dm_kpts, chunk=chunk)
    out = np.empty((len(kfrac),) + f.shape[1:], dtype=np.complex128)
    out[todo] = f
    paired = (partner[todo] >= 0) & (partner[todo] != todo)
    out[partner[todo][paired]] = np.conj(f[paired])
    return out


def real_space_blocks(mf, kmesh_fourier=(5, 5, 5), dm_kpts=None, imag_tol: float = 1e-4,
                      time_reversal: bool = True, chunk: int = 256):
    """Real-space H(R) [eV] and S(R) blocks of a converged periodic restricted SCF, as
    ``{"i_j_Rx_Ry_Rz": block}`` dicts holding **both** triangles (every ``(i, j, R)`` image and its
    partner ``(j, i, -R)``), blocks in eqtb orbital order (the content of one frame group of
    ``hamiltonians.h5`` / ``overlaps.h5``).

    1. Fock matrices at the Gamma-centred Fourier mesh ``kmesh_fourier`` with the fixed density
       ``dm_kpts`` (default ``mf.make_rdm1()``), exactly as ``mf.get_bands`` builds them
       (:func:`band_fock`), and overlaps ``cell.pbc_intor('int1e_ovlp')``. Mesh points are
       evaluated at their representatives in [-1/2, 1/2).
    2. Inverse Bloch sum over the BvK supercell: ``O(n) = (1/Nk) sum_k O_PySCF(k) e^{-i k.R_n}``.
    3. Every ``(i, j, n)`` is placed at its shortest image(s) ``R = n + N m``
       (:func:`wigner_seitz_images`), weights shared equally among degenerate images.
    4. Imaginary parts must be below ``imag_tol`` (eV for H, absolute for S) and are dropped
       (taking the real part is the time-reversal average ``(O(k) + O(-k)*)/2``); units and
       orbital order are converted.

    ``time_reversal``: evaluate the Fock matrix only at one k of every pair (k, -k) of the mesh
    and use ``F(-k) = F(k)*`` (exact in PySCF: the potential is real), halving the cost.
    ``chunk``: band k-points per ``get_veff`` call; every call recomputes the density on the FFT
    grid (seconds for a converged grid), so large chunks are much faster (memory: PySCF blocks
    the grid by ``max_memory``; ~1 GB for 172 k-points of 2-atom Si gth-szv on a 35^3 grid).

    Returns ``(structure, basis, h_blocks, s_blocks, info)`` with a :class:`FourierInfo`.
    Accuracy: exact on the Fourier mesh; elsewhere it converges exponentially with the mesh (Si
    gth-szv: 5^3 -> 1e-2 eV, 6^3 -> 2e-4 eV, 7^3 -> 3e-6 eV, 9^3 -> 1e-9 eV), down to the floor
    set by the FFT grid (PySCF's O(k) is G-periodic only up to aliasing of the FFT grid)."""
    cell = mf.cell
    kmesh = tuple(int(n) for n in kmesh_fourier)
    if len(kmesh) != 3 or min(kmesh) < 1:
        raise ValueError(f"kmesh_fourier must be three positive integers, got {kmesh_fourier}")
    layouts = atom_layouts(cell)
    basis, _ = basis_of_cell(cell)
    structure = structure_of_cell(cell)
    # PySCF's matrices are exactly time-reversal symmetric, O(-k) = O(k)*, but G-periodic in k
    # only up to FFT-grid aliasing: with representatives in [-1/2, 1/2) (a set closed under
    # k -> -k for odd N) the imaginary part of O(R) vanishes to round-off
    kfrac = gamma_mesh(kmesh)
    kfrac = kfrac - np.floor(kfrac + 0.5)
    kabs = cell.get_abs_kpts(kfrac)
    if time_reversal:
        hk = _fock_time_reversal(mf, kfrac, kmesh, dm_kpts, chunk) * HARTREE_EV
    else:
        hk = band_fock(mf, kabs, dm=dm_kpts, chunk=chunk) * HARTREE_EV
    sk = band_overlap(cell, kabs)
    hr, sr = _real_space(hk, kmesh), _real_space(sk, kmesh)
    max_imag_h, max_imag_s = float(np.abs(hr.imag).max()), float(np.abs(sr.imag).max())
    if max_imag_h > imag_tol or max_imag_s > imag_tol:
        raise ValueError(f"H(R)/S(R) are not real: max |Im H| = {max_imag_h:.3g} eV, max |Im S| = "
                         f"{max_imag_s:.3g} (tolerance {imag_tol:g}); is the SCF density time-reversal "
                         f"symmetric (Gamma-centred symmetric SCF k-mesh, restricted SCF)?")
    T, off = _ao_to_eqtb(layouts)
    hr = np.einsum("ab,nbc,dc->nad", T, hr.real, T, optimize=True)
    sr = np.einsum("ab,nbc,dc->nad", T, sr.real, T, optimize=True)
    # Hermiticity of the supercell transform: O(-n) = O(n)^T (whole AO matrices)
    minus = np.rint((-gamma_mesh(kmesh) * np.array(kmesh)) % np.array(kmesh)).astype(np.int64)
    minus_flat = np.ravel_multi_index(minus.T, kmesh)
    nonherm = float(np.abs(hr[minus_flat] - np.swapaxes(hr, 1, 2)).max())
    ii, jj, nn, RR, ww = wigner_seitz_images(structure, kmesh)
    hb, sb = {}, {}
    for i, j, n, R, w in zip(ii, jj, nn, RR, ww):
        key = block_key(i, j, R)
        rows, cols = slice(off[i], off[i + 1]), slice(off[j], off[j + 1])
        hb[key] = w * hr[n, rows, cols]
        sb[key] = w * sr[n, rows, cols]
    info = FourierInfo(kmesh, max_imag_h, max_imag_s, nonherm, len(hb))
    return structure, basis, hb, sb, info


def periodic_operators(mf, kmesh_fourier=(5, 5, 5), dm_kpts=None, imag_tol: float = 1e-4,
                       return_info: bool = False):
    """(structure, basis, H, S) of a converged periodic restricted SCF (``pbc.dft.KRKS`` with a
    pure functional is the tested case; ``pbc.dft.RKS`` Gamma-point SCF goes the same way), H in
    eV, as eqtb :class:`Operator` objects built from :func:`real_space_blocks` (see there for the
    method, the accuracy and the arguments). With ``return_info`` a :class:`FourierInfo` is
    appended. ``H.dense(k)`` (fractional k) is the complex conjugate of PySCF's Fock matrix at k
    in eqtb's orbital order: ``eigh(H.dense(k), S.dense(k))`` gives PySCF's band energies."""
    structure, basis, hb, sb, info = real_space_blocks(mf, kmesh_fourier, dm_kpts, imag_tol)
    H = Operator.from_blocks(structure, basis, hb, source="PySCF Fock (Fourier)")
    S = Operator.from_blocks(structure, basis, sb, source="PySCF overlap (Fourier)")
    if return_info:
        return structure, basis, H, S, info
    return structure, basis, H, S


def reference_bands(mf, kpts_frac, dm_kpts=None) -> np.ndarray:
    """PySCF's own band energies (nk, nmo) in eV at fractional k-points (``mf.get_bands``).

    Bands removed by PySCF's canonical orthogonalisation (near-singular S) come back as PySCF's
    ``INVALID_ORBITAL_ENERGY`` padding (times HARTREE_EV)."""
    cell = mf.cell
    kabs = cell.get_abs_kpts(np.atleast_2d(np.asarray(kpts_frac, dtype=np.float64)))
    if dm_kpts is None:
        e, _ = mf.get_bands(kabs)
    else:
        e, _ = mf.get_bands(kabs, dm_kpts=dm_kpts) if _is_kpoint_scf(mf) else mf.get_bands(kabs, dm=dm_kpts)
    return np.asarray(e).reshape(len(kabs), -1) * HARTREE_EV


# ---------------------------------------------------------------------------------------- density
def molecular_density_blocks(mf, dm=None) -> dict[str, np.ndarray]:
    """Density-matrix blocks ``{"i_j_0_0_0": block}`` (both triangles, eqtb orbital order) of a
    restricted molecular SCF: ``dm`` (default ``mf.make_rdm1()``), dimensionless, both spins
    included (occupations 2), so that ``Tr(D S)`` is the number of electrons (valence electrons
    with a pseudopotential) and the electron density is ``rho(r) = sum D_{mu nu} phi_mu phi_nu``."""
    mol = mf.mol
    dm = np.asarray(mf.make_rdm1() if dm is None else dm)
    if dm.ndim != 2:
        raise PySCFConventionError(f"expected one restricted density matrix, got shape {dm.shape}")
    T, off = _ao_to_eqtb(atom_layouts(mol))
    d = T @ dm @ T.T
    n = mol.natm
    return {block_key(i, j, (0, 0, 0)): d[off[i]:off[i + 1], off[j]:off[j + 1]]
            for i in range(n) for j in range(n)}


def periodic_density_blocks(mf, keys, dm_kpts=None, imag_tol: float = 1e-4):
    """Real-space density-matrix blocks of a periodic restricted k-point SCF at the given block keys
    ``"i_j_Rx_Ry_Rz"`` (typically the keys of :func:`real_space_blocks`, so that D, H and S share
    one set of bonds). Returns ``(blocks, max_imag)``.

    ``D(R) = (1/Nk) sum_k D_PySCF(k) exp(-i 2 pi k.R)`` over the SCF k-points (fractional k, R the
    integer cell of atom j), ``D_PySCF(k) = C_k f_k C_k^dagger`` from ``dm_kpts`` (default
    ``mf.make_rdm1()``), dimensionless, both spins included. This is the density matrix of the
    Born-von Karman supercell of the SCF mesh evaluated at **every** requested R (D is periodic
    over that supercell; no splitting over images, the convention of ABACUS's ``DMR``). With it
    ``rho(r) = sum_R sum_{i mu, j nu} D_{i mu, j nu}(R) phi_{i mu}(r - r_i) phi_{j nu}(r - r_j - R.A)``
    (summed over the lattice) is PySCF's SCF density exactly whenever the keys hold every pair of
    overlapping orbitals, and ``N_el = sum_{(i, j, R)} sum_{mu nu} D_ij(R)[mu, nu] S_ij(R)[mu, nu]``
    (= sum_R Tr D(R) S(-R)) is the electron count per cell (valence electrons with GTH
    pseudopotentials). ``max_imag``: the largest imaginary part dropped (taking the real part is
    the time-reversal average); it is not round-off because PySCF's F(k) at k = -k mod G (the
    k = 1/2 points of even meshes) is real only up to FFT-grid aliasing (~4e-6 for Si gth-szv on
    a 15^3 grid) and to the SCF convergence; above ``imag_tol`` a ValueError is raised."""
    from eqtb.bonds import parse_block_keys

    cell = mf.cell
    if not _is_kpoint_scf(mf):
        raise PySCFConventionError("periodic_density_blocks needs a k-point SCF (pbc.dft.KRKS / pbc.scf.KRHF)")
    keys = list(keys)
    idx = parse_block_keys(keys)
    dm = np.asarray(mf.make_rdm1() if dm_kpts is None else dm_kpts)
    kfrac = np.asarray(cell.get_scaled_kpts(mf.kpts), dtype=np.float64).reshape(-1, 3)
    if dm.ndim != 3 or dm.shape[0] != len(kfrac):
        raise PySCFConventionError(f"expected restricted density matrices (nk={len(kfrac)}, nao, nao), "
                                   f"got shape {dm.shape}")
    Rs, inverse = np.unique(idx[:, 2:], axis=0, return_inverse=True)
    phase = np.exp(-2j * np.pi * (Rs @ kfrac.T)) / len(kfrac)  # (nR, nk)
    dr = np.einsum("rk,kab->rab", phase, dm)
    max_imag = float(np.abs(dr.imag).max())
    if max_imag > imag_tol:
        raise ValueError(f"D(R) is not real: max |Im D| = {max_imag:.3g} (tolerance {imag_tol:g}); is the "
                         f"SCF k-mesh closed under k -> -k and the SCF restricted?")
    T, off = _ao_to_eqtb(atom_layouts(cell))
    dr = np.einsum("ab,nbc,dc->nad", T, dr.real, T, optimize=True)
    out = {}
    for key, (i, j, *_), r in zip(keys, idx, inverse.reshape(-1)):
        out[key] = dr[r, off[i]:off[i + 1], off[j]:off[j + 1]]
    return out, max_imag

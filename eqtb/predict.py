"""Predicting operators of new structures with a trained model: the Python API.

>>> import eqtb
>>> model = eqtb.load("run/checkpoint/slem.latest.pth")      # eqtb.predict.Predictor
>>> pred = model.predict("POSCAR")                            # or an ase.Atoms / eqtb.Structure
>>> kpath, bands = pred.bands()                               # automatic k-path, eV
>>> Hk, Sk = pred.hk([[0, 0, 0]]), pred.sk([[0, 0, 0]])       # (nk, norb, norb) complex
>>> H = pred.sparse("hamiltonian")                            # scipy CSR at Gamma

A :class:`Prediction` holds one :class:`eqtb.operator.Operator` per predicted quantity
(``hamiltonian`` in eV or ``density_matrix``, and ``overlap`` when the model has the overlap head), in
the same form as operators read from a dataset, so everything that works on DFT data (bands, DOS,
PDOS, Fermi level, export, error metrics) works on predictions.

Large structures: a model whose locality allows it (:class:`eqtb.models.base.Locality`: two-centre
or strictly local) runs in chunks of bonds (``chunk`` directed edges at a time, default
:data:`DEFAULT_CHUNK`), so memory is bounded by the chunk plus the outputs (~40 floats of geometry and
2 F^2 block entries per bond) and time is linear in the number of atoms. Inference is
``torch.no_grad`` in the model's dtype (float32 unless trained in float64); the blocks are returned as
float64 operators.

Across processes (under ``torchrun``): :meth:`Predictor.predict_domain` predicts, by the same path as
:meth:`Predictor.predict`, the cluster of one domain of the structure (:mod:`eqtb.domains`: a slab
of atoms and the halo the model's locality needs), and :class:`DomainPrediction` gives that
domain's rows of H and S, as scipy rows or as a :class:`eqtb.tb.dmatrix.DistributedMatrix`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping

import numpy as np
import torch

from eqtb.basis import Basis
from eqtb.structure import Structure, StructureError, build_graph
from eqtb.operator import Operator

#: directed edges per chunk when predicting large structures (a few MB of activations per layer)
DEFAULT_CHUNK = 8192


class PredictionError(ValueError):
    """A structure the model cannot be applied to (unknown element, atoms on top of each other)."""


class SpinfulModelError(PredictionError):
    """A spinful model (spin-orbit coupling) asked for spinless matrices (:meth:`Predictor.predict_sparse`)."""


def as_structure(structure) -> Structure:
    """An eqtb :class:`Structure` from a Structure, an ``ase.Atoms`` or a structure file path."""
    if isinstance(structure, Structure):
        return structure
    if isinstance(structure, (str, Path)):
        return Structure.read(structure)
    if hasattr(structure, "get_atomic_numbers") and hasattr(structure, "get_cell"):
        return Structure.from_ase(structure)
    raise PredictionError(f"expected a Structure, an ase.Atoms or a structure file, got {type(structure).__name__}")


@dataclass
class Prediction:
    """Predicted operators of one structure (see the module docstring)."""

    structure: Structure
    operators: dict[str, Operator]
    timings: dict[str, float] = field(default_factory=dict)
    _es: object = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ operators
    @property
    def hamiltonian(self) -> Operator | None:
        return self.operators.get("hamiltonian")

    @property
    def overlap(self) -> Operator | None:
        return self.operators.get("overlap")

    @property
    def density_matrix(self) -> Operator | None:
        return self.operators.get("density_matrix")

    def _op(self, quantity: str) -> Operator:
        if quantity not in self.operators:
            raise PredictionError(f"the model predicts {sorted(self.operators)}, not {quantity!r}")
        return self.operators[quantity]

    def blocks(self, quantity: str = "hamiltonian", both_triangles: bool = False) -> dict[str, np.ndarray]:
        """``{"i_j_Rx_Ry_Rz": block}`` (0-based, each element's own orbitals), as in hamiltonians.h5."""
        return self._op(quantity).to_blocks(both_triangles=both_triangles)

    def hk(self, kpts) -> np.ndarray:
        """H(k) (nk, norb, norb) complex, eV, at fractional k-points (nk, 3); (nk, 2 norb, 2 norb) for a
        spinful model (spin-orbit coupling, spin-major: :class:`eqtb.operator.Operator`), whose S(k) of
        :meth:`sk` then enters on both spins (``Operator.dense(k, spinful=True)``)."""
        return self._op("hamiltonian").dense(kpts)

    def sk(self, kpts) -> np.ndarray:
        """S(k) (nk, norb, norb) complex at fractional k-points (nk, 3)."""
        return self._op("overlap").dense(kpts)

    def sparse(self, quantity: str = "hamiltonian", k=None):
        """The operator at one k-point (default Gamma) as a scipy CSR matrix (norb x norb)."""
        return self._op(quantity).sparse(k)

    # ------------------------------------------------------------------ spectra
    @property
    def electronic_structure(self):
        """:class:`eqtb.tb.spectrum.ElectronicStructure` of the predicted H and S (bands, DOS,
        PDOS, Fermi level on k-meshes)."""
        from eqtb.tb.spectrum import ElectronicStructure

        if self._es is None:
            self._es = ElectronicStructure(self._op("hamiltonian"), self.overlap)
        return self._es

    def bands(self, kpath=None, npoints: int | None = None, progress: bool | None = False):
        """(KPath, eigenvalues (nk, norb) eV -- (nk, 2 norb) for a spinful model) along ``kpath``: a :class:`eqtb.tb.kpath.KPath`, an
        ASE path string such as ``"GXWKGL"``, an (nk, 3) array of fractional k-points, or None for the
        automatic path of the cell."""
        from eqtb.tb.kpath import KPath

        cell = self.structure.cell
        if kpath is None:
            kpath = KPath.automatic(self.structure, npoints=npoints)
        elif isinstance(kpath, str):
            kpath = KPath.from_ase_string(kpath, cell, npoints=npoints, pbc=self.structure.pbc)
        elif not isinstance(kpath, KPath):
            kpath = KPath.from_array(np.asarray(kpath, dtype=np.float64), cell)
        return kpath, self.electronic_structure.bands(kpath, progress=progress)

    def fermi(self, nel_atom: Mapping[str, float] | float, mesh=None, **kw):
        """:class:`eqtb.tb.spectrum.FermiLevel` from valence electrons per element (e.g. ``{"Si":
        4}``) or per cell, on a k-mesh (default: automatic, ~0.15 / Angstrom spacing)."""
        from eqtb.tb.kpath import mesh_for_spacing

        return self.electronic_structure.fermi(nel_atom, mesh or mesh_for_spacing(self.structure, 0.15), **kw)

    def dos(self, energies, mesh=None, sigma: float = 0.05) -> np.ndarray:
        """DOS (states / eV / cell, spin included) on ``energies`` (eV) from a k-mesh."""
        from eqtb.tb.kpath import mesh_for_spacing

        return self.electronic_structure.dos(mesh or mesh_for_spacing(self.structure, 0.1), energies, sigma)

    def export(self, out, fmt: str = "dataset", fermi_level: float | None = None, overwrite: bool = False,
               **options) -> Path:
        """Write the predicted operators as a dataset frame, a DeepH folder, scipy ``.npz``, a sisl /
        TBtrans folder or a Wannier90 ``_hr.dat`` folder (:func:`eqtb.data.export.export_operators`;
        ``options``: ``orthogonalize=True`` and ``mesh`` for ``"wannier90"`` with an overlap)."""
        from eqtb.data.export import export_operators

        return export_operators(self.structure, self.operators, out, fmt, fermi_level=fermi_level,
                                overwrite=overwrite, **options)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """The trained model of an eqtb checkpoint file (``eqtb train`` output), any registered family,
    or of a DeePTB nnsk model (checkpoint ``.pth`` or JSON model, converted by
    :func:`eqtb.train.checkpoint.load_checkpoint`), in eval mode (:func:`eqtb.models.from_checkpoint`)."""
    from eqtb.models import from_checkpoint
    from eqtb.train.checkpoint import load_checkpoint

    return from_checkpoint(load_checkpoint(path), device)


class Predictor:
    """A trained model (:class:`eqtb.models.base.OperatorModel`) ready to predict the operators of
    any structure of its elements."""

    def __init__(self, model: torch.nn.Module, source: str = ""):
        self.model = model.eval()
        self.source = source

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """From an eqtb checkpoint (``eqtb train`` output: ``run/checkpoint/slem.latest.pth``) or a
        DeePTB nnsk model (:func:`load_model`)."""
        return cls(load_model(path, device), source=str(path))

    def __repr__(self) -> str:
        return (f"Predictor({self.model.family}, basis {self.basis.spec}, predicts "
                f"{', '.join(self.quantities)}{', ' + self.source if self.source else ''})")

    @property
    def basis(self) -> Basis:
        return self.model.basis

    @property
    def quantities(self) -> list[str]:
        return list(self.model.quantities)

    @property
    def device(self) -> torch.device:
        return self._tensor().device

    @property
    def dtype(self) -> torch.dtype:
        return self._tensor().dtype

    def _tensor(self) -> torch.Tensor:
        """A floating parameter or buffer of the model (models with fixed tables have no parameters)."""
        for x in [*self.model.parameters(), *self.model.buffers()]:
            if x.is_floating_point():
                return x
        return torch.zeros(())

    def predict(self, structure, chunk: int | None = DEFAULT_CHUNK, progress: bool | None = False) -> Prediction:
        """Operators of ``structure`` (Structure, ase.Atoms or file path). ``chunk``: directed
        edges per chunk (None: all at once, fastest for small cells, memory grows with the
        structure; ignored by models that are not strictly local); ``progress``: a tqdm bar (None:
        only on a terminal)."""
        return self._predict(self._checked(structure), chunk, progress)

    def predict_domain(self, structure, n_domains: int | None = None, index: int | None = None,
                       chunk: int | None = DEFAULT_CHUNK, progress: bool | None = False) -> DomainPrediction:
        """The rows of the domain ``index`` of ``n_domains`` (default: this process's rank and the
        number of processes, :mod:`eqtb.distributed`) of ``structure``: the model runs, as in
        :meth:`predict` (same chunks), on the domain's atoms and the halo its locality needs
        (:meth:`eqtb.models.base.Locality.domain_halo`, :func:`eqtb.domains.decompose`), so the
        owned atoms' rows of H and S equal those of :meth:`predict` on the whole structure."""
        from eqtb import distributed
        from eqtb.domains import decompose

        s = self._checked(structure)
        n_domains = distributed.world_size() if n_domains is None else int(n_domains)
        index = distributed.rank() if index is None else int(index)
        halo = self.model.locality.domain_halo(self.model.max_cutoff)
        try:
            domain = decompose(s, n_domains, index, halo)
        except ValueError as exc:
            raise PredictionError(f"{exc}{f' ({s.source})' if s.source else ''}") from None
        return DomainPrediction(domain, self._predict(domain.cluster, chunk, progress))

    def predict_sparse(self, structure, chunk: int | None = DEFAULT_CHUNK, progress: bool | None = False,
                       dtype=np.float32) -> SparsePrediction:
        """The operators of ``structure`` at Gamma as sparse matrices, the blocks streamed into
        them as the model produces them, part by part (:meth:`eqtb.models.base.OperatorModel.block_parts`):
        no Operator, and for strictly local models no more than one chunk of activations and
        geometry, is held besides the matrices, the bond list and the atoms' features. Matrices
        (:class:`SparsePrediction`): block-sparse (scipy BSR, F x F blocks of the full basis) when every
        atom has all F orbitals of the basis, else CSR in the compact layout; entries in ``dtype``
        (float32: 4.25 bytes per stored entry in BSR). Equal to ``predict(structure).sparse(q)``
        to the rounding of ``dtype``. Spinful models (spin-orbit coupling): use :meth:`predict`."""
        import time

        from eqtb.operator import BlockPattern, compact_orbitals

        s = self._checked(structure)
        t0 = time.perf_counter()
        graph, inputs = self._inputs(s)
        if self.model.spin_orbit(inputs) is not None:
            raise SpinfulModelError("predict_sparse does not take a spinful model (spin-orbit coupling); use predict()")
        # no Bloch phases at Gamma, and the models read bond vectors only: 24 B a bond freed (a new
        # empty tensor: R shares the graph's array, which a slice of it would keep alive)
        inputs.R = inputs.R.new_zeros((0, 3))
        pattern = BlockPattern(s.natoms, graph.i, graph.j)
        n_bonds = graph.n_edges
        del graph
        F = self.basis.full_norb
        data = {q: pattern.zeros(F, dtype) for q in self.quantities}
        t1 = time.perf_counter()
        chunk, bar = self._chunks(s, inputs, chunk, progress)
        with torch.no_grad(), bar:
            for q, bonds, blocks in self.model.block_parts(inputs, edge_chunk=chunk, progress=bar):
                pattern.add(data[q], blocks.cpu().numpy().astype(dtype, copy=False), bonds)
        t2 = time.perf_counter()
        keep = compact_orbitals(self.basis, s.numbers)
        mats = {}
        for q in list(data):
            A = pattern.bsr(data.pop(q))
            mats[q] = A if keep is None else A.tocsr()[keep][:, keep]
        timings = {"graph": t1 - t0, "model": t2 - t1, "matrices": time.perf_counter() - t2,
                   "n_atoms": s.natoms, "n_bonds": n_bonds}
        return SparsePrediction(s, mats, timings)

    def _inputs(self, s: Structure):
        """(graph, model inputs) of ``s`` at the model's cutoff."""
        from eqtb.models.inputs import ModelInputs

        graph = build_graph(s, self.model.r_max, self.basis.symbols)
        return graph, ModelInputs.from_graph(graph, self.basis, self.dtype).to(self.device)

    def _chunks(self, s: Structure, inputs, chunk: int | None, progress: bool | None):
        """(the chunk the model's locality allows, a tqdm bar over its steps; ``progress`` None:
        drawn only for 20 steps or more, on a terminal)."""
        from tqdm.auto import tqdm

        if not self.model.locality.strictly_local:
            chunk = None
        steps = self.model.chunk_steps(inputs, chunk)
        disable = (True if steps < 20 else None) if progress is None else not progress
        return chunk, tqdm(total=steps, desc=f"predict {s.natoms} atoms", unit="chunk", disable=disable, leave=False)

    def _checked(self, structure) -> Structure:
        s = as_structure(structure)
        where = f" ({s.source})" if s.source else ""
        try:
            self.basis.types_of(s.numbers)
        except ValueError as exc:
            raise PredictionError(f"{exc}{where}") from None
        try:
            s.check_distances()
        except StructureError as exc:
            raise PredictionError(str(exc)) from None
        return s

    def _predict(self, s: Structure, chunk: int | None, progress: bool | None) -> Prediction:
        """The one path of :meth:`predict` and :meth:`predict_domain`: graph, model (in chunks of
        bonds where the locality allows), blocks -> Operators."""
        import time

        from eqtb.models.assembly import to_operators

        t0 = time.perf_counter()
        graph, inputs = self._inputs(s)
        t1 = time.perf_counter()
        chunk, bar = self._chunks(s, inputs, chunk, progress)
        with torch.no_grad(), bar:
            out = self.model(inputs, edge_chunk=chunk, progress=bar)
        t2 = time.perf_counter()
        ops = to_operators(s, self.basis, graph.i, graph.j, graph.R, out)
        del out
        timings = {"graph": t1 - t0, "model": t2 - t1, "operators": time.perf_counter() - t2,
                   "n_atoms": s.natoms, "n_bonds": graph.n_edges}
        return Prediction(s, ops, timings)


@dataclass
class SparsePrediction:
    """Predicted operators of one structure at Gamma as sparse matrices
    (:meth:`Predictor.predict_sparse`): ``matrices`` quantity -> scipy BSR (F x F blocks, atoms in
    structure order) or CSR (compact layout), H in eV."""

    structure: Structure
    matrices: dict
    timings: dict[str, float] = field(default_factory=dict)

    def sparse(self, quantity: str = "hamiltonian"):
        """The matrix of ``quantity`` at Gamma."""
        if quantity not in self.matrices:
            raise PredictionError(f"the model predicts {sorted(self.matrices)}, not {quantity!r}")
        return self.matrices[quantity]


@dataclass
class DomainPrediction:
    """The rows of one domain of a structure predicted across processes
    (:meth:`Predictor.predict_domain`): ``domain`` (:class:`eqtb.domains.Domain`: owned atoms,
    cluster, images) and ``cluster``, the :class:`Prediction` of the domain's cluster, whose blocks
    are exact for every bond with an end on an owned atom (the halo's other blocks are not)."""

    domain: object  # eqtb.domains.Domain
    cluster: Prediction

    @property
    def structure(self) -> Structure:
        return self.domain.structure

    @property
    def operators(self) -> list[str]:
        return list(self.cluster.operators)

    @property
    def timings(self) -> dict:
        return {**self.cluster.timings, "n_owned": self.domain.n_owned}

    @property
    def basis(self) -> Basis:
        return next(iter(self.cluster.operators.values())).basis

    @property
    def orbital_offsets(self) -> np.ndarray:
        """(N + 1,) offsets of the whole structure's atoms' rows (compact layout, as
        :attr:`eqtb.operator.Operator.atom_orbital_offsets`)."""
        return np.concatenate([[0], np.cumsum(self.basis.norb_of(self.structure.numbers))])

    @property
    def norb(self) -> int:
        return int(self.orbital_offsets[-1])

    @property
    def owned_orbitals(self) -> np.ndarray:
        """Global indices (ascending) of the rows this domain holds: the orbitals of its atoms."""
        off = self.orbital_offsets
        return np.concatenate([np.arange(off[a], off[a + 1]) for a in self.domain.owned]).astype(np.int64)

    def rows(self, quantity: str = "hamiltonian", k=None):
        """The owned rows of the operator at k (fractional; default Gamma) as scipy CSR
        (n_owned_orbitals x norb, global column indices): the rows of :meth:`Prediction.sparse` of
        the whole structure for these atoms. Images of one atom in the cluster add up, each with
        its Bloch phase ``exp(-i 2 pi k.R)`` of the structure's lattice vector R."""
        import scipy.sparse as sp

        if quantity not in self.cluster.operators:
            raise PredictionError(f"the model predicts {sorted(self.cluster.operators)}, not {quantity!r}")
        op = self.cluster.operators[quantity]
        if op.spinful:
            raise PredictionError(f"the rows of a domain are spinless: the model's {quantity} has spin-orbit coupling "
                                  f"({op.dim} states); predict the whole structure in one process")
        d = self.domain
        coff = op.atom_orbital_offsets
        n_rows = int(coff[d.n_owned])
        A = op.sparse(k)
        if d.n_domains == 1:  # the cluster is the structure
            return A
        A = A[:n_rows].tocsr()
        norb_c = np.diff(coff)
        atom_of = np.repeat(np.arange(len(norb_c)), norb_c)
        goff = self.orbital_offsets
        col = goff[d.atoms[atom_of]] + np.arange(len(atom_of)) - coff[atom_of]
        data = A.data
        if k is not None and np.any(k):  # phase of the image shifts: exp(-i2pi k.(s_q - s_p))
            ph = np.exp(-2j * np.pi * (d.shifts @ np.asarray(k, dtype=np.float64)))
            row_atom = np.repeat(atom_of[:n_rows], np.diff(A.indptr))
            data = data * ph[atom_of[A.indices]] * np.conj(ph[row_atom])
        out = sp.csr_matrix((data, col[A.indices], A.indptr), shape=(n_rows, self.norb))
        out.sum_duplicates()
        return out

    def sparse(self, quantity: str = "hamiltonian", k=None):
        """The operator at k as a :class:`eqtb.tb.dmatrix.DistributedMatrix` of the domains'
        rows (collective: every process of the decomposition calls it)."""
        from eqtb.tb.dmatrix import DistributedMatrix

        return DistributedMatrix.from_rows(self.rows(quantity, k), self.owned_orbitals, self.norb)


"""The model layer's contract: what every family declares, what it returns, and the registry.

A *family* (``slem``, ``nnsk``, later ``lem``, ``mix``, ``dftbsk``, ...) is one module holding a
subclass of :class:`OperatorModel` decorated with :func:`register`. It declares

* ``family`` -- its registry name, the one DeePTB's configs select it by (:func:`family_name`);
* :meth:`OperatorModel.cutoff_of` -- the graph cutoff in Angstrom its options imply (one radius, or
  per element / per bond type, as :func:`eqtb.structure.pair_cutoffs` reads it), known before the
  model is built so that datasets can be read at the right cutoff;
* :attr:`OperatorModel.locality` -- how far a predicted block looks (:class:`Locality`): two-centre,
  strictly local (atoms within r_max of either end of the bond), or a receptive field of
  n x r_max. It decides whether chunked inference is exact and how wide a halo must be;
* :attr:`OperatorModel.quantities` -- the operators it predicts (:mod:`eqtb.quantities`);
* :meth:`OperatorModel.heads` -- one assembler per quantity, whose ``kind`` says whether the
  family emits irreps features or two-centre integrals (:mod:`eqtb.models.assembly`);
* :meth:`OperatorModel.example_options` -- a small configuration, on which ``tests/test_families.py``
  runs the physics every family must have (:mod:`eqtb.models.testing`), on the bases
  :meth:`OperatorModel.example_basis` allows.

It is built by one :meth:`OperatorModel.from_options` from the validated, default-filled
``model_options`` (defaults live in the schema, :mod:`eqtb.config`, and nowhere else), and it
implements :meth:`OperatorModel.features`: the raw outputs for the bonds of a graph, possibly in
parts (chunks of bonds). :meth:`OperatorModel.forward`, shared by every family, turns the parts into
Hermitian blocks with the assemblers; :func:`eqtb.models.assembly.to_operators` turns blocks into
Operators. Checkpoints record the family name and rebuild it (:func:`eqtb.models.from_checkpoint`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from e3nn import o3
from torch import nn

from eqtb.basis import Basis
from eqtb.models.inputs import ModelInputs
from eqtb.quantities import MAIN_QUANTITIES, OVERLAP, SPIN_ORBIT
from eqtb.structure import pair_cutoffs

__all__ = ["FAMILIES", "BondGeometry", "Features", "Locality", "ModelError", "OperatorModel", "bond_chunks", "check_hidden_irreps",
           "family_class", "family_name", "register"]


class ModelError(ValueError):
    """Model options that cannot describe this basis, or a family that eqtb does not have."""


@dataclass(frozen=True)
class Locality:
    """How far the block of a bond (i, j) looks. ``hops``: 0 -- two-centre (the positions and
    elements of i and j only); 1 -- strictly local (every atom within r_max of i or of j, at any
    depth); n > 1 -- semi-local (atoms within n x r_max)."""

    hops: int

    @property
    def strictly_local(self) -> bool:
        return self.hops <= 1

    def halo(self, r_max: float) -> float:
        """Width (Angstrom) of the region around a set of atoms that must be present for their
        blocks to be exact: ``max(hops, 1) x r_max`` (a two-centre block still needs its bond)."""
        return max(self.hops, 1) * float(r_max)

    def domain_halo(self, r_max: float) -> float:
        """Width (Angstrom) of the shell around a domain of atoms that must be present for the
        blocks of every bond with an end in the domain to be exact (prediction across processes,
        :mod:`eqtb.domains`): the bond itself (r_max) plus what the block of a bond looks at around
        its far end (hops x r_max), ``(hops + 1) x r_max``. A strictly local model needs two r_max
        shells, not one: the block of a bond (i, j) leaving the domain depends on the atoms within
        r_max of j."""
        return (self.hops + 1) * float(r_max)

    def describe(self) -> str:
        return {0: "two-centre", 1: "strictly local"}.get(self.hops, f"semi-local ({self.hops} x r_max)")


@dataclass
class Features:
    """One part of a model's raw outputs.

    ``bonds``: the canonical bonds this part covers (a slice of the graph's bonds); ``ti``, ``tj``:
    (2e,) element types of the source and destination of its directed edges ``[fwd; rev]``;
    ``offsite``: quantity -> (2e, dim) features of those edges (irreps features in the lab frame, or
    two-centre integrals, as the quantity's head expects); ``frames``: the edges' Wigner-D matrices
    per l (:func:`eqtb.nn.so2.directed_frames`; needed by two-centre heads); ``onsite``: quantity ->
    (N, onsite_dim) normalised onsite features of every atom (in exactly one part)."""

    bonds: slice
    ti: torch.Tensor
    tj: torch.Tensor
    offsite: dict[str, torch.Tensor]
    frames: list[torch.Tensor] | None = None
    onsite: dict[str, torch.Tensor] = field(default_factory=dict)


#: chunked prediction keeps the geometry of its chunks (radial basis and Wigner-D frames, ~40 floats
#: per directed edge) for all its passes up to this many directed edges (~3 GB); beyond, each pass
#: recomputes it (10^6 Si atoms at 7.4 Angstrom have 8.6e7 directed edges: 14 GB if kept).
GEOMETRY_CACHE_MAX_EDGES = 2e7


_GEOMETRY_TOKENS = itertools.count()


class _Recomputed(Sequence):
    """The geometry of every chunk, computed again on each access."""

    def __init__(self, compute, chunks):
        self.compute, self.chunks = compute, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k):
        return self.compute(self.chunks[k])


def chunk_geometry(model: "OperatorModel", inputs: ModelInputs, key, chunks: list[slice], compute) -> Sequence:
    """``compute(chunk)`` of every chunk of bonds, as a sequence the chunked passes of ``model``
    iterate over: kept in ``model.geometry_cache(inputs)[key]`` for at most
    :data:`GEOMETRY_CACHE_MAX_EDGES` directed edges, recomputed on access beyond (memory bounded by
    one chunk)."""
    if 2 * inputs.n_edges > GEOMETRY_CACHE_MAX_EDGES:
        return _Recomputed(compute, chunks)
    cache = model.geometry_cache(inputs)
    if key not in cache:
        cache[key] = [compute(sl) for sl in chunks]
    return cache[key]


def bond_chunks(n_bonds: int, edge_chunk: int | None) -> list[slice]:
    """Slices of the canonical bonds holding about ``edge_chunk`` directed edges each (both
    directions of every bond in one chunk); one slice of all bonds when ``edge_chunk`` is None or
    covers them."""
    size = max(1, edge_chunk // 2) if edge_chunk else 0
    if not size or size >= n_bonds:
        return [slice(0, n_bonds)]
    return [slice(a, min(a + size, n_bonds)) for a in range(0, n_bonds, size)]


def by_rows(fn, n_rows: int, step: int, *parts):
    """``fn(*parts)`` computed on ``step`` rows (atoms) at a time and written into one result: for
    row-wise maps (node updates, readouts) whose temporaries would otherwise be several copies of
    all ``n_rows`` rows. ``parts``: lists of tensors with ``n_rows`` rows (None entries pass
    through); ``fn`` returns a tensor or such a list, which is returned whole."""
    if n_rows <= step:
        return fn(*parts)
    out = None
    for a in range(0, n_rows, step):
        sl = slice(a, min(a + step, n_rows))
        got = fn(*[[None if x is None else x[sl] for x in p] for p in parts])
        single = isinstance(got, torch.Tensor)
        got = [got] if single else got
        if out is None:
            out = [None if y is None else y.new_empty((n_rows, *y.shape[1:])) for y in got]
        for o, y in zip(out, got):
            if o is not None:
                o[sl] = y
    return out[0] if single else out


def check_hidden_irreps(hidden: str, basis: Basis) -> o3.Irreps:
    """``hidden`` as sorted, simplified irreps; :class:`ModelError` unless it holds every irrep the
    basis needs (:attr:`eqtb.basis.Basis.essential_irreps`)."""
    try:
        irreps = o3.Irreps(hidden).sort().irreps.simplify()
    except (ValueError, AssertionError) as err:
        raise ModelError(f"irreps_hidden {hidden!r} is not an irreps string: {err}") from None
    have = {(ir.l, ir.p) for _, ir in irreps}
    need = o3.Irreps(basis.essential_irreps)
    missing = [str(ir) for _, ir in need if (ir.l, ir.p) not in have]
    if missing:
        raise ModelError(f"irreps_hidden {hidden!r} lacks {', '.join(missing)}, needed by the basis "
                         f"{basis.spec} (essential irreps {basis.essential_irreps})")
    return irreps


def state_mismatch(model: nn.Module, saved: dict) -> list[str]:
    """What keeps ``saved`` (a state dict) from loading into ``model``: missing, unexpected and
    differently shaped entries. Entries a submodule lists in ``optional_state`` may be missing (it
    fills them when loading: e.g. a term added to a family after the checkpoint was written)."""
    own = model.state_dict()
    optional = {f"{name}.{k}" if name else k for name, m in model.named_modules()
                for k in getattr(m, "optional_state", ())}  # modules that start themselves when absent
    out = [f"{k} is missing" for k in own if k not in saved and k not in optional]
    out += [f"{k} is not in the configured model" for k in saved if k not in own]
    out += [f"{k} has shape {tuple(saved[k].shape)}, the configured model {tuple(v.shape)}"
            for k, v in own.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    return out


def check_revision(cls: type["OperatorModel"], state: dict) -> None:
    """:class:`ModelError` unless the checkpoint dict ``state`` was written for ``cls``'s current
    :attr:`~OperatorModel.revision` (a checkpoint without ``model_revision`` is revision 1): the
    weights of an earlier revision would give other blocks, silently."""
    saved = int(state.get("model_revision", 1))
    if saved != cls.revision:
        why = cls.revisions.get(max(saved, cls.revision), "")
        raise ModelError(f"the checkpoint holds a {cls.family} model of revision {saved}, this eqtb's {cls.family} is "
                         f"revision {cls.revision}{f' ({why})' if why else ''}: its weights would give other blocks "
                         f"here; retrain it (or use the eqtb that wrote it)")


#: registry name -> family class
FAMILIES: dict[str, type["OperatorModel"]] = {}


def register(cls: type["OperatorModel"]) -> type["OperatorModel"]:
    """Class decorator: make a family available to :func:`family_class` under ``cls.family``."""
    if not cls.family:
        raise TypeError(f"{cls.__name__} has no family name")
    if cls.family in FAMILIES and FAMILIES[cls.family] is not cls:
        raise TypeError(f"family {cls.family!r} is registered twice ({FAMILIES[cls.family].__name__}, {cls.__name__})")
    FAMILIES[cls.family] = cls
    return cls


def family_name(model_options: dict) -> str:
    """The family DeePTB's ``model_options`` select: ``"mix"`` (nnsk or dftbsk with an embedding),
    ``"nnsk"``, ``"dftbsk"``, else the embedding's ``method`` (``"slem"``, ``"lem"``, ...)."""
    sk = "nnsk" if model_options.get("nnsk") else "dftbsk" if model_options.get("dftbsk") else None
    emb = model_options.get("embedding")
    if sk:
        return "mix" if emb else sk
    if not emb:
        raise ModelError("model_options name no model (no embedding, nnsk or dftbsk)")
    return emb.get("method", "se2")


def family_class(model_options: dict) -> type["OperatorModel"]:
    """The registered family of ``model_options``; :class:`ModelError` when eqtb does not have it."""
    name = family_name(model_options)
    if name not in FAMILIES:
        raise ModelError(f"model family {name!r} is not supported yet (supported: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]


class BondGeometry:
    """Parameter-free geometry of every directed edge for the E3 families (SLEM, LEM, ELCT), computed
    once per :class:`ModelInputs` and kept in the model's :meth:`OperatorModel.geometry_cache`:
    ``"radial"`` (2E, n_radial) the radial basis, ``"D"`` the bond frames
    (:func:`eqtb.nn.so2.directed_frames`), and ``"envelope"`` (2E, 1) the radial basis' smooth
    cutoff (1 at r = 0, 0 at the pair's cutoff). Edges ``[fwd; rev]`` of the canonical bonds. Evaluated in float64
    and returned in the dtype of the bond vectors (the polynomial envelope near the cutoff is a
    difference of terms ~50x larger than itself: float32 would lose ~5 bits there). The class using
    it provides ``radial`` (:class:`eqtb.nn.radial.BesselBasis`), ``cutoffs`` (T, T) Angstrom and
    ``lmax``."""

    def geometry(self, inputs: ModelInputs) -> dict:
        cache = self.geometry_cache(inputs)
        if "radial" not in cache:
            cache.update(self._bond_geometry(inputs, slice(None)))
        return cache

    def _bond_geometry(self, inputs: ModelInputs, bonds: slice) -> dict:
        """The geometry (class docstring) of the directed edges of the canonical bonds ``bonds``."""
        from eqtb.nn.radial import cosine_cutoff, polynomial_cutoff
        from eqtb.nn.so2 import directed_frames

        vec = inputs.vectors[bonds]
        rc = self.cutoffs.double()[inputs.types[inputs.i[bonds]], inputs.types[inputs.j[bonds]]]
        r = vec.double().norm(dim=1)
        x = r / rc
        env = polynomial_cutoff(x, self.radial.p) if self.radial.cutoff == "polynomial" else cosine_cutoff(x)
        return {"radial": self.radial(r, rc).repeat(2, 1).to(vec.dtype), "D": directed_frames(vec, self.lmax),
                "envelope": env.repeat(2).unsqueeze(1).to(vec.dtype)}


class OperatorModel(nn.Module):
    """Base of every family: the declarations of the module docstring and the shared forward.

    Attributes every subclass sets in ``__init__``: ``basis`` (:class:`eqtb.basis.Basis`),
    ``r_max`` (graph cutoff, Angstrom, as :meth:`cutoff_of` returns it), ``quantity`` (the main
    target, ``"hamiltonian"`` or ``"density_matrix"``) and ``has_overlap``."""

    family: ClassVar[str] = ""
    #: what the family computes from its weights; raised when that changes (checkpoints carry it as
    #: ``model_revision``, :func:`check_revision`), with the reason in :attr:`revisions`
    revision: ClassVar[int] = 1
    revisions: ClassVar[dict[int, str]] = {}
    basis: Basis
    r_max: float | dict
    quantity: str
    has_overlap: bool

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_options(cls, options: dict, basis: Basis, stats: dict | None = None, *,
                     quantity: str = "hamiltonian", overlap: bool = False) -> "OperatorModel":
        """The model of validated, default-filled ``options`` (``model_options`` of a config) for
        ``basis``; ``stats``: quantity -> :class:`eqtb.data.stats.OperatorStats` of the training
        targets (output normalisation; None for a model whose weights will be loaded)."""
        raise NotImplementedError

    @classmethod
    def cutoff_of(cls, options: dict) -> float | dict:
        """Graph cutoff (Angstrom) of a model with these ``model_options``."""
        raise NotImplementedError

    @classmethod
    def example_options(cls, basis: Basis) -> dict:
        """Small ``model_options`` (DeePTB JSON form, before validation) of this family for
        ``basis``: what the inherited physics tests (:mod:`eqtb.models.testing`) build."""
        raise NotImplementedError

    @classmethod
    def example_basis(cls, basis: Basis) -> Basis:
        """The basis the inherited physics tests use where they would use ``basis``: ``basis``
        itself, or the nearest basis a family restricted to some bases can take (``dftbsk``: one
        shell per angular momentum)."""
        return basis

    def _declare(self, basis: Basis, r_max, quantity: str, overlap: bool) -> None:
        """Set the declared attributes every family has (``basis``, ``r_max``, ``quantity``,
        ``has_overlap``) and the (T, T) buffer ``cutoffs`` of pair cutoffs in Angstrom."""
        self.check_quantity(quantity)
        self.basis, self.r_max, self.quantity, self.has_overlap = Basis(basis), r_max, quantity, overlap
        self.register_buffer("cutoffs", torch.as_tensor(pair_cutoffs(r_max, self.basis.symbols),
                                                        dtype=torch.get_default_dtype()), persistent=False)

    @staticmethod
    def check_quantity(quantity: str) -> None:
        if quantity not in MAIN_QUANTITIES:
            raise ModelError(f"a model predicts one of {', '.join(MAIN_QUANTITIES)} (plus the overlap), "
                             f"not {quantity!r}")

    def geometry_cache(self, inputs: ModelInputs) -> dict:
        """This model's part of ``inputs.cache`` (parameter-free per-edge geometry: radial basis,
        frames, envelopes), keyed by a token each model instance draws once (a copy keeps it: same
        radial basis, cutoffs and l_max), so two models given the same inputs never read each
        other's geometry."""
        token = self.__dict__.get("_geometry_token")
        if token is None:
            token = self.__dict__["_geometry_token"] = next(_GEOMETRY_TOKENS)
        return inputs.cache.setdefault(token, {})

    # ------------------------------------------------------------------ declarations
    @property
    def locality(self) -> Locality:
        raise NotImplementedError

    @property
    def quantities(self) -> tuple[str, ...]:
        return (self.quantity, OVERLAP) if self.has_overlap else (self.quantity,)

    def heads(self) -> dict[str, nn.Module]:
        """quantity -> its assembler (:mod:`eqtb.models.assembly`)."""
        raise NotImplementedError

    @property
    def output_kinds(self) -> dict[str, str]:
        """quantity -> ``"irreps"`` or ``"sk"``."""
        return {q: h.kind for q, h in self.heads().items()}

    def bond_cutoffs(self) -> dict[str, float]:
        """Cutoff (Angstrom) of every bond type ``"A-B"`` of the basis."""
        sym = self.basis.symbols
        rc = pair_cutoffs(self.r_max, sym)
        return {f"{a}-{b}": float(rc[x, y]) for x, a in enumerate(sym) for y, b in enumerate(sym) if x <= y}

    @property
    def max_cutoff(self) -> float:
        return float(np.max(pair_cutoffs(self.r_max, self.basis.symbols)))

    def describe(self) -> dict:
        """What the model declares, JSON-able."""
        return {"family": self.family, "basis": self.basis.spec, "quantities": list(self.quantities),
                "outputs": self.output_kinds, "locality": self.locality.describe(), "cutoffs": self.bond_cutoffs(),
                "halo": self.locality.halo(self.max_cutoff)}

    # ------------------------------------------------------------------ evaluation
    def features(self, inputs: ModelInputs, edge_chunk: int | None = None, progress=None) -> Iterator[Features]:
        """Raw outputs for every bond of ``inputs``, as one or more :class:`Features` parts.
        ``edge_chunk``: about this many directed edges per part (honoured by families whose
        locality allows it, ignored by others); ``progress``: told ``update(n)`` for
        :meth:`chunk_steps` steps in all."""
        raise NotImplementedError

    def chunk_steps(self, inputs: ModelInputs, edge_chunk: int | None) -> int:
        """Number of progress updates :meth:`features` makes with this ``edge_chunk``."""
        return 1

    def spin_orbit(self, inputs: ModelInputs) -> torch.Tensor | None:
        """(N, 2F, 2F) complex onsite spin-orbit blocks (eV, spin-major: :class:`eqtb.operator.Operator`
        ``soc``) of the atoms of ``inputs`` for a spinful model; None (the default) for a spinless one."""
        return None

    @torch.no_grad()
    def calibrate(self, inputs: list[ModelInputs]) -> None:
        """Data-dependent initialisation from training structures (default: nothing)."""

    def after_iteration(self, iteration: int) -> None:
        """Called by the trainer after optimizer step ``iteration`` (counted from 1), for families
        whose options change during training (e.g. nnsk ``push``). Default: nothing."""

    def init_from(self, family: str, state_dict: dict, config: dict | None = None) -> None:
        """Start from the weights ``state_dict`` of a trained model of family ``family`` (``eqtb
        train -i``); ``config``: the trained model's ``common_options`` and ``model_options``.
        Default: a model of this family, basis and parameter shapes, loaded as saved, else
        :class:`ModelError`; families override it to start from another family (``mix`` from
        ``nnsk``) or from other options (``nnsk``: another basis or onsite mode, as DeePTB)."""
        if family != self.family:
            raise ModelError(f"eqtb initialises a {self.family} model only from one of its own family, "
                             f"not from a {family!r} model")
        if config is not None and Basis(config["common_options"]["basis"]) != self.basis:
            raise ModelError(f"the model's basis {Basis(config['common_options']['basis']).spec} differs from "
                             f"the config's {self.basis.spec}")
        problems = state_mismatch(self, state_dict)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ModelError(f"the checkpoint's weights do not fit the configured {self.family} model: "
                             f"{'; '.join(problems[:5])}{more}")
        self.load_state_dict(state_dict)

    def block_parts(self, inputs: ModelInputs, edge_chunk: int | None = None,
                    progress=None) -> Iterator[tuple[str, slice | None, torch.Tensor]]:
        """The blocks of :meth:`forward` part by part, as the heads produce them: ``(quantity,
        bonds, offsite (e, F, F))`` for the canonical bonds ``bonds`` (a slice, in order), then
        ``(quantity, None, onsite (N, F, F))`` of every quantity at the end. Consumed by
        :meth:`forward`, and by a prediction that streams blocks into sparse matrices (memory
        bounded by a part)."""
        heads = self.heads()
        onsite: dict[str, torch.Tensor] = {}
        for part in self.features(inputs, edge_chunk, progress):
            for q, f in part.offsite.items():
                yield q, part.bonds, heads[q].offsite(f, part.ti, part.tj, part.frames)
            onsite.update(part.onsite)
        for q in heads:
            yield q, None, heads[q].onsite(onsite[q], inputs.types)

    def forward(self, inputs: ModelInputs, edge_chunk: int | None = None,
                progress=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Blocks ``{quantity: (onsite (N, F, F), offsite (E, F, F))}`` of the atoms and canonical
        bonds of ``inputs``, assembled part by part (memory bounded by a part); a spinful model adds
        its onsite spin-orbit blocks under :data:`eqtb.quantities.SPIN_ORBIT` (:meth:`spin_orbit`)."""
        onsite: dict[str, torch.Tensor] = {}
        offsite: dict[str, list[torch.Tensor]] = {q: [] for q in self.heads()}
        for q, bonds, blocks in self.block_parts(inputs, edge_chunk, progress):
            if bonds is None:
                onsite[q] = blocks
            else:
                offsite[q].append(blocks)
        out = {q: (onsite[q], b[0] if len(b) == 1 else torch.cat(b)) for q, b in offsite.items()}
        soc = self.spin_orbit(inputs)
        if soc is not None:
            out[SPIN_ORBIT] = soc
        return out

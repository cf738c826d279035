"""``mix``: DeePTB's Slater-Koster model corrected by each bond's and atom's environment -- an
:mod:`nnsk <eqtb.models.sk>` model, or the fixed tables of a :mod:`dftbsk <eqtb.models.dftbsk>`
model, whose integrals are multiplied by factors that networks read off the se2 descriptors of the
atoms (DeePTB 2.2.1's ``MIX`` of ``dptb/nn/deeptb.py``: an ``nnsk`` or ``dftbsk`` with an ``se2``
embedding and an ``sktb`` prediction). A DeePTB nnsk mix checkpoint gives DeePTB's numbers here
(:mod:`eqtb.models.deeptb`).

Units: Angstrom, eV; the factors are dimensionless.

**Descriptors** (:mod:`eqtb.nn.se2`): ``d_i`` of every atom from its neighbours within the embedding's
``rc`` (smooth from ``rs``; ``radial_net.neurons``, ``n_axis``), and ``[d_i + d_j, 1 / r]`` of a
bond i-j of length r.

**Corrections** (``prediction.neurons``, ``activation``; DeePTB's residual heads, whose last layer
starts near zero, so that a new mix model starts as its nnsk model):

* every two-centre integral ``V_{ab,m}`` of the Hamiltonian (or density matrix) of bond i-j becomes
  ``V_{ab,m} (1 + c^{ij}_{ab,m})``, ``c^{ij} = bond_head([d_i + d_j, 1 / r])`` -- one factor per
  full-basis shell pair a at or before b and |m| (:func:`correction_slots`); the pair (b, a) takes the
  factor of (a, b), and since the bond descriptor is symmetric both directions of a bond take the
  same factors (Hermitian blocks by construction);
* every onsite energy ``E_i`` of a same-l shell pair (the nnsk mode's energy, before strain blocks
  are added; :func:`eqtb.models.sk.onsite_pairs`) becomes ``E_i (1 + c^i)``, ``c^i = onsite_head(d_i)``.

Strain blocks and the overlap are nnsk's (dftbsk's), uncorrected: DeePTB 2.2.1's mix builds an
overlap head too (``edge_prediction_s``) but discards its output, and eqtb does not build it.

**Locality.** A bond's factors read the atoms within rc of either end, an onsite block those within
rc of the atom: strictly local (:class:`eqtb.models.base.Locality` 1) with the graph cutoff the
larger of the nnsk cutoff and rc (DeePTB's ``er_max``). Bonds beyond the nnsk cutoff have no
integrals, so those the graph holds only for the environment give zero blocks. :meth:`Mix.features`
accumulates the descriptors over all bond chunks first, then corrects the nnsk integrals chunk by
chunk: any chunking is exact.

**Options.** ``model_options`` ``{"nnsk": {...}, "embedding": {"method": "se2", "rs", "rc",
"radial_net": {"neurons", "activation"}, "n_axis"}, "prediction": {"method": "sktb", "neurons",
"activation"}}``, or ``"dftbsk": {"skdata", "r_max"}`` in place of ``"nnsk"`` (the tables are read
from ``skdata`` whenever the model is built, a checkpoint included: a relative path is taken from the
working folder, as DeePTB does; only the networks are trained). As in DeePTB, nnsk's ``push`` cannot
be used in a mix model; its ``freeze`` (DeePTB's tutorials freeze the whole nnsk part) acts as in
nnsk. Refused with a :class:`ModelError`: batch normalisation (``if_batch_normalized``). A mix model
can start from a trained nnsk model (:meth:`Mix.init_from`), as DeePTB's tutorials do.
"""

from __future__ import annotations

import torch

from eqtb.basis import Basis
from eqtb.models.base import Locality, ModelError, OperatorModel, bond_chunks, register
from eqtb.models.dftbsk import DftbSlaterKoster
from eqtb.models.inputs import ModelInputs
from eqtb.models.sk import SlaterKoster, onsite_pairs
from eqtb.nn.se2 import ACTIVATIONS, ResNet, Se2Descriptor

__all__ = ["Mix", "correction_slots"]


def correction_slots(basis: Basis) -> tuple[list[tuple], list[int]]:
    """``(slots, index)``: the bond factors' slots -- ``(a, b, m)`` for full-basis shells a at or
    before b and |m| <= min(l_a, l_b), in the order of the 'all' pair layout -- and, for every
    sk-convention integral of that layout (:func:`eqtb.models.assembly.sk_integral_names`), the slot
    whose factor it takes ((b, a, m) takes that of (a, b, m))."""
    pos = {s: k for k, s in enumerate(basis.full_shells)}
    entries = [(p.a, p.b, m) for p in basis.all_pairs for m in range(min(p.a.l, p.b.l) + 1)]
    slots = [e for e in entries if pos[e[0]] <= pos[e[1]]]
    where = {e: k for k, e in enumerate(slots)}
    index = [where[(a, b, m) if pos[a] <= pos[b] else (b, a, m)] for a, b, m in entries]
    return slots, index


def _raise_to(cut, rc: float):
    """A cutoff (one radius or ``{"A-B": radius}``) raised to at least ``rc``."""
    if isinstance(cut, dict):
        return {k: max(float(v), rc) for k, v in cut.items()}
    return max(float(cut), rc)


@register
class Mix(OperatorModel):
    """The ``mix`` family; see the module docstring. ``nnsk``: the Slater-Koster model it corrects
    (a :class:`~eqtb.models.sk.SlaterKoster`, held as ``nnsk``, or a
    :class:`~eqtb.models.dftbsk.DftbSlaterKoster`, held as ``dftbsk``);
    ``rs``, ``rc`` (Angstrom), ``radial_neurons``, ``radial_activation``, ``n_axis``: the se2
    descriptor (:class:`eqtb.nn.se2.Se2Descriptor`); ``neurons``, ``activation``: the hidden widths
    and activation of the two correction heads (DeePTB's ``prediction``)."""

    family = "mix"

    def __init__(self, nnsk: SlaterKoster | DftbSlaterKoster, *, rs: float, rc: float, radial_neurons: list[int],
                 radial_activation: str = "tanh", n_axis: int | None = None, neurons: list[int],
                 activation: str = "tanh"):
        super().__init__()
        for key, name in (("embedding.radial_net.activation", radial_activation),
                          ("prediction.activation", activation)):
            if name not in ACTIVATIONS:
                raise ModelError(f"model_options.{key} {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        if getattr(nnsk, "push", None) is not None:
            raise ModelError("model_options.nnsk.push cannot be used in a mix model (nor can it in DeePTB): "
                             "push the nnsk model alone, then start the mix model from it")
        if isinstance(nnsk, DftbSlaterKoster):
            self.dftbsk = nnsk
        else:
            self.nnsk = nnsk
        self.basis, self.quantity, self.has_overlap = nnsk.basis, nnsk.quantity, nnsk.has_overlap
        try:
            self.descriptor = Se2Descriptor(self.basis.n_types, rs, rc, list(radial_neurons), n_axis, radial_activation)
        except ValueError as err:
            raise ModelError(f"model_options.embedding: {err}") from None
        self.slots, index = correction_slots(self.basis)
        self.register_buffer("slot_index", torch.tensor(index), persistent=False)
        hidden = list(neurons)
        self.onsite_head = ResNet([self.descriptor.dim, *hidden, len(onsite_pairs(self.basis))], activation, head=True)
        self.bond_head = ResNet([self.descriptor.dim + 1, *hidden, len(self.slots)], activation, head=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_options(cls, options: dict, basis: Basis, stats: dict | None = None, *,
                     quantity: str = "hamiltonian", overlap: bool = False) -> "Mix":
        """From DeePTB's ``{"nnsk": {...}, "embedding": {"method": "se2", ...}, "prediction":
        {"method": "sktb", ...}}`` (validated, defaults filled)."""
        _check_options(options)
        emb, pred = options["embedding"], options["prediction"]
        radial = emb["radial_net"]
        base = DftbSlaterKoster if options.get("dftbsk") else SlaterKoster
        nnsk = base.from_options(options, basis, stats, quantity=quantity, overlap=overlap)
        return cls(nnsk, rs=float(emb["rs"]), rc=float(emb["rc"]), radial_neurons=radial["neurons"],
                   radial_activation=radial["activation"], n_axis=emb.get("n_axis"), neurons=pred["neurons"],
                   activation=pred["activation"])

    @classmethod
    def cutoff_of(cls, options: dict):
        _check_options(options)
        base = DftbSlaterKoster if options.get("dftbsk") else SlaterKoster
        return _raise_to(base.cutoff_of(options), float(options["embedding"]["rc"]))

    @classmethod
    def example_options(cls, basis: Basis) -> dict:
        """nnsk's example (strain onsite, poly2pow hopping) with a small se2 environment reaching past
        the hopping cutoff."""
        return {**SlaterKoster.example_options(basis),
                "embedding": {"method": "se2", "rs": 2.0, "rc": 3.4, "radial_net": {"neurons": [6, 8, 10]},
                              "n_axis": 4},
                "prediction": {"method": "sktb", "neurons": [8, 8, 8]}}

    def init_from(self, family: str, state_dict: dict, config: dict | None = None) -> None:
        """Start from a trained mix model (loaded as saved) or nnsk model (``family`` ``"nnsk"``: its
        weights fill the nnsk part, which must have the same shape, as in DeePTB's ``MIX.from_reference``;
        the correction networks keep their initial, near-zero outputs); :class:`ModelError` for
        another family or weights that do not fit."""
        if family == "mix":
            return super().init_from(family, state_dict, config)
        if family != "nnsk":
            raise ModelError(f"a mix model starts from a mix or an nnsk model, not from a {family!r} model")
        if not hasattr(self, "nnsk"):
            raise ModelError("this mix model corrects dftbsk tables: it starts from a mix model of the same "
                             "tables, not from an nnsk model")
        try:
            self.nnsk.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ModelError(f"the nnsk weights do not fit the mix model's nnsk part: {err}") from None

    # ------------------------------------------------------------------ declarations
    @property
    def sk(self) -> SlaterKoster | DftbSlaterKoster:
        """The Slater-Koster model the networks correct (nnsk or dftbsk)."""
        return self.nnsk if hasattr(self, "nnsk") else self.dftbsk

    @property
    def locality(self) -> Locality:
        return Locality(1)

    @property
    def r_max(self):
        """Graph cutoff (Angstrom): the nnsk (dftbsk) cutoff raised to the environment radius rc."""
        return _raise_to(self.sk.r_max, self.descriptor.rc)

    def heads(self) -> dict:
        return self.sk.heads()

    # ------------------------------------------------------------------ evaluation
    def descriptors(self, inputs: ModelInputs, chunks: list[slice], progress=None) -> torch.Tensor:
        """(N, dim) se2 descriptors of every atom, accumulated over the bond ``chunks``."""
        sums = counts = None
        for sl in chunks:
            i, j, vec = inputs.i[sl], inputs.j[sl], inputs.vectors[sl]
            s, c = self.descriptor.moments(inputs.types, torch.cat([i, j]), torch.cat([j, i]), torch.cat([vec, -vec]))
            sums, counts = (s, c) if sums is None else (sums + s, counts + c)
            if progress is not None:
                progress.update(1)
        if sums is None:  # no bonds at all
            sums = inputs.vectors.new_zeros(inputs.n_atoms, self.descriptor.width, 4)
            counts = inputs.vectors.new_zeros(inputs.n_atoms)
        return self.descriptor.finish(sums, counts)

    def features(self, inputs: ModelInputs, edge_chunk: int | None = None, progress=None):
        """nnsk's parts (:meth:`eqtb.models.sk.SlaterKoster.features`) with the main quantity's
        integrals and onsite energies corrected (module docstring)."""
        chunks = bond_chunks(inputs.n_edges, edge_chunk)
        desc = self.descriptors(inputs, chunks, progress)
        onsite_factor = 1.0 + self.onsite_head(desc)
        for part in self.sk.features(inputs, edge_chunk, progress, onsite_factor=onsite_factor):
            i, j = inputs.i[part.bonds], inputs.j[part.bonds]
            r = inputs.vectors[part.bonds].norm(dim=1, keepdim=True)
            factor = 1.0 + self.bond_head(torch.cat([desc[i] + desc[j], 1.0 / r], 1))[:, self.slot_index]
            part.offsite[self.quantity] = part.offsite[self.quantity] * factor.repeat(2, 1)
            yield part

    def chunk_steps(self, inputs: ModelInputs, edge_chunk: int | None) -> int:
        return len(bond_chunks(inputs.n_edges, edge_chunk)) + self.sk.chunk_steps(inputs, edge_chunk)

    def spin_orbit(self, inputs: ModelInputs):
        """The nnsk part's onsite spin-orbit blocks, uncorrected (None without ``soc``)."""
        return self.sk.spin_orbit(inputs)


def _check_options(options: dict) -> None:
    """:class:`ModelError` for mix options eqtb does not implement."""
    for key, value in (("embedding.radial_net", options["embedding"]["radial_net"]),
                       ("prediction", options["prediction"])):
        if value.get("if_batch_normalized"):
            raise ModelError(f"model_options.{key}.if_batch_normalized: eqtb's mix networks have no batch "
                             "normalisation")

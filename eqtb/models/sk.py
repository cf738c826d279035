"""``nnsk``: a Slater-Koster tight-binding model with analytic bond-length dependence.

Blocks are two-centre: the block of bond (i, j) depends on the elements of i and j and on the bond
vector only (:class:`eqtb.models.base.Locality` 0). In the frame of the bond (i -> j along +z) the
block between a shell a of atom i and a shell b of atom j is diagonal in m with one Slater-Koster
integral per |m| (``V_sigma``, ``V_pi``, ``V_delta``, ...); :class:`eqtb.models.assembly.SKAssembler`
rotates it onto the bond. Integrals of the reverse direction are not free parameters:
``V^{ba}_{|m|} = (-1)^(l_a + l_b) V^{ab}_{|m|}`` (a rotation by pi about an axis normal to the bond),
so each unordered (element pair, shell pair, |m|) has one set of parameters.

Bond-length dependence (``hopping.method``):

* ``powerlaw`` -- ``V(r) = V_0 (r_0 / r)^(1 + alpha) / (1 + exp((r - rs) / w))`` with ``r_0`` the sum
  of the two atoms' covalent radii (Angstrom, ASE's table), ``rs`` and ``w`` in Angstrom
  (``rs`` one radius or per element / per bond type). The graph cutoff is ``rs + 8 w`` as in DeePTB.

Onsite blocks (``onsite.method``): ``uniform`` -- one energy (eV) per element and shell, the block
``diag(e_shell)``. With ``common_options.overlap`` the overlap has its own integrals of the same
form and learnable onsite overlap blocks (per element, any symmetric block).

Parameters start from the training data when statistics are given (onsite energies and onsite
overlaps at their dataset means) and hopping prefactors from ``N(0, std)``; ``alpha`` starts at 0.
Not yet implemented (a clear :class:`ModelError`): other hopping forms and onsite modes, ``freeze``,
``push``, ``soc``.
"""

from __future__ import annotations

import numpy as np
import torch
from ase.data import atomic_numbers, covalent_radii
from torch import nn

from eqtb.basis import Basis
from eqtb.models.assembly import IrrepsAssembler, SKAssembler
from eqtb.models.base import Features, Locality, ModelError, OperatorModel, bond_chunks, register
from eqtb.models.inputs import ModelInputs
from eqtb.nn.so2 import directed_frames
from eqtb.quantities import OVERLAP
from eqtb.structure import pair_cutoffs

#: bond-length forms implemented, with the number of parameters per integral
HOPPING_FORMS = {"powerlaw": 2}
ONSITE_MODES = ("uniform",)
#: DeePTB's graph cutoff of each form: rs + this many w
CUTOFF_WIDTHS = {"powerlaw": 8}


def _shift_cutoff(rs, extra: float):
    if isinstance(rs, dict):
        return {k: float(v) + extra for k, v in rs.items()}
    return float(rs) + extra


class IntegralTable(nn.Module):
    """Parameters of the Slater-Koster integrals of every ordered element pair, tied by the
    reversal rule of the module docstring. ``index``/``sign`` (T*T, n_integrals) map the integrals
    of an ordered type pair onto the rows of ``params`` (the last row is zero: shells an element
    does not have)."""

    def __init__(self, basis: Basis, n_params: int, std: float):
        super().__init__()
        T = basis.n_types
        full = basis.full_shells
        pos = {s: k for k, s in enumerate(full)}
        has = [set(e.shells) for e in basis.elements]
        entries = [(p, m) for p in basis.all_pairs for m in range(min(p.a.l, p.b.l) + 1)]
        canonical: dict[tuple, int] = {}
        index = np.zeros((T * T, len(entries)), dtype=np.int64)
        sign = np.zeros((T * T, len(entries)))
        for x in range(T):
            for y in range(T):
                for n, (p, m) in enumerate(entries):
                    if p.a not in has[x] or p.b not in has[y]:
                        index[x * T + y, n] = -1
                        continue
                    key, s = (x, y, p.a, p.b, m), 1.0
                    if x > y or (x == y and pos[p.a] > pos[p.b]):
                        key, s = (y, x, p.b, p.a, m), (-1.0) ** (p.a.l + p.b.l)
                    index[x * T + y, n] = canonical.setdefault(key, len(canonical))
                    sign[x * T + y, n] = s
        index[index < 0] = len(canonical)
        self.n_free = len(canonical)
        self.params = nn.Parameter(torch.zeros(len(canonical), n_params))
        with torch.no_grad():
            self.params[:, 0].normal_(0.0, std)
        self.register_buffer("index", torch.as_tensor(index), persistent=False)
        self.register_buffer("sign", torch.as_tensor(sign, dtype=torch.get_default_dtype()), persistent=False)

    def gather(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(params (2E, n_integrals, n_params), sign (2E, n_integrals)) for ordered type pairs
        ``pair = t_src * T + t_dst``."""
        padded = torch.cat([self.params, self.params.new_zeros(1, self.params.shape[1])])
        return padded[self.index[pair]], self.sign.to(self.params)[pair]


@register
class SlaterKoster(OperatorModel):
    """The ``nnsk`` family; see the module docstring. ``rs``, ``w`` in Angstrom; ``std`` the
    spread of the initial hopping prefactors (eV)."""

    family = "nnsk"

    def __init__(self, basis: Basis, rs, w: float, hopping: str = "powerlaw", onsite: str = "uniform",
                 std: float = 0.01, quantity: str = "hamiltonian", overlap: bool = False, stats: dict | None = None):
        super().__init__()
        self.check_quantity(quantity)
        if hopping not in HOPPING_FORMS:
            raise ModelError(f"nnsk hopping method {hopping!r} is not supported yet (supported: "
                             f"{', '.join(HOPPING_FORMS)})")
        if onsite not in ONSITE_MODES:
            raise ModelError(f"nnsk onsite method {onsite!r} is not supported yet (supported: {', '.join(ONSITE_MODES)})")
        self.basis = Basis(basis)
        self.quantity, self.has_overlap = quantity, overlap
        self.hopping_form, self.onsite_mode, self.w = hopping, onsite, float(w)
        self.r_max = _shift_cutoff(rs, CUTOFF_WIDTHS[hopping] * self.w)
        sym = self.basis.symbols
        T = self.basis.n_types
        f32 = torch.get_default_dtype()
        radii = np.array([covalent_radii[atomic_numbers[s]] for s in sym])
        self.register_buffer("rs", torch.as_tensor(pair_cutoffs(rs, sym).reshape(-1), dtype=f32), persistent=False)
        self.register_buffer("r0", torch.as_tensor((radii[:, None] + radii[None, :]).reshape(-1), dtype=f32),
                             persistent=False)
        stats = stats or {}
        self.assembler = SKAssembler(self.basis, None, convention="sk")
        self.hopping = IntegralTable(self.basis, HOPPING_FORMS[hopping], std)
        # onsite energies: one per element and full-basis shell, placed by the onsite transform
        shells = self.basis.full_shells
        F = self.basis.full_norb
        place = np.zeros((len(shells), F, F))
        for k, s in enumerate(shells):
            o = self.basis.shell_offset[s]
            place[k, o:o + s.dim, o:o + s.dim] = np.eye(s.dim)
        tr = self.assembler.onsite_transform
        self.register_buffer("shell_features", tr.to_features(torch.as_tensor(place)).to(f32), persistent=False)
        self.onsite_energies = nn.Parameter(torch.zeros(T, len(shells)))
        if stats.get(quantity) is not None:
            mean = self._mean_onsite(stats[quantity])  # (T, F, F)
            with torch.no_grad():
                for k, s in enumerate(shells):
                    o = self.basis.shell_offset[s]
                    self.onsite_energies[:, k] = torch.as_tensor(
                        np.einsum("tmm->t", mean[:, o:o + s.dim, o:o + s.dim]) / s.dim, dtype=f32)
        if overlap:
            self.overlap_assembler = SKAssembler(self.basis, None, convention="sk")
            self.overlap_hopping = IntegralTable(self.basis, HOPPING_FORMS[hopping], std)
            self.overlap_onsite = nn.Parameter(torch.zeros(T, tr.dim))
            if stats.get(OVERLAP) is not None:
                with torch.no_grad():
                    self.overlap_onsite.copy_(IrrepsAssembler(self.basis, stats[OVERLAP]).onsite_shift)
        self.lmax = self.assembler.lmax

    def _mean_onsite(self, stats) -> np.ndarray:
        a = IrrepsAssembler(self.basis, stats)
        T = self.basis.n_types
        with torch.no_grad():
            return a.onsite(torch.zeros(T, a.onsite_dim), torch.arange(T)).double().numpy()

    # ------------------------------------------------------------------ declarations
    @classmethod
    def from_options(cls, options: dict, basis: Basis, stats: dict | None = None, *,
                     quantity: str = "hamiltonian", overlap: bool = False) -> "SlaterKoster":
        """From DeePTB's ``{"nnsk": {"onsite": {...}, "hopping": {...}, ...}}`` (validated)."""
        nnsk = options["nnsk"]
        hop, ons = nnsk["hopping"], nnsk["onsite"]
        for key, off in (("freeze", False), ("push", False), ("soc", {})):
            if nnsk.get(key) not in (off, None):
                raise ModelError(f"model_options.nnsk.{key} is not supported yet")
        extra = sorted(set(hop) - {"method", "rs", "w"}) + sorted(set(ons) - {"method"})
        if extra:
            raise ModelError(f"model_options.nnsk: keys {', '.join(extra)} are not supported with "
                             f"hopping {hop['method']!r} / onsite {ons['method']!r} yet")
        for key in ("rs", "w"):
            if key not in hop:
                raise ModelError(f"model_options.nnsk.hopping.{key} is required (Angstrom)")
        return cls(basis, hop["rs"], hop["w"], hop["method"], ons["method"], float(nnsk["std"]), quantity, overlap,
                   stats)

    @classmethod
    def cutoff_of(cls, options: dict):
        hop = options["nnsk"]["hopping"]
        if hop["method"] not in CUTOFF_WIDTHS or "rs" not in hop or "w" not in hop:
            raise ModelError(f"model_options.nnsk.hopping: method {hop['method']!r} with rs and w is required")
        return _shift_cutoff(hop["rs"], CUTOFF_WIDTHS[hop["method"]] * float(hop["w"]))

    @classmethod
    def example_options(cls, basis: Basis) -> dict:
        return {"nnsk": {"onsite": {"method": "uniform"}, "hopping": {"method": "powerlaw", "rs": 3.0, "w": 0.1},
                         "std": 0.5}}

    @property
    def locality(self) -> Locality:
        return Locality(0)

    def heads(self) -> dict:
        out = {self.quantity: self.assembler}
        if self.has_overlap:
            out[OVERLAP] = self.overlap_assembler
        return out

    # ------------------------------------------------------------------ integrals
    def integrals(self, table: IntegralTable, r: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """(2E, n_integrals) integrals (eV for H) at bond lengths ``r`` (Angstrom) of ordered type
        pairs ``pair``."""
        p, sign = table.gather(pair)
        ratio = (self.r0.to(r)[pair] / r)[:, None]
        cut = torch.sigmoid(-(r - self.rs.to(r)[pair]) / self.w)[:, None]
        return sign * p[..., 0] * ratio.pow(1.0 + p[..., 1]) * cut

    def features(self, inputs: ModelInputs, edge_chunk: int | None = None, progress=None):
        """Two-centre integrals of every directed edge, chunk by chunk (any chunking is exact)."""
        T = self.basis.n_types
        types = inputs.types
        chunks = bond_chunks(inputs.n_edges, edge_chunk)
        for n, sl in enumerate(chunks):
            vec = inputs.vectors[sl]
            ti = torch.cat([types[inputs.i[sl]], types[inputs.j[sl]]])
            tj = torch.cat([types[inputs.j[sl]], types[inputs.i[sl]]])
            pair = ti * T + tj
            r = vec.norm(dim=1).repeat(2)
            part = Features(sl, ti, tj, {self.quantity: self.integrals(self.hopping, r, pair)},
                            directed_frames(vec, self.lmax))
            if self.has_overlap:
                part.offsite[OVERLAP] = self.integrals(self.overlap_hopping, r, pair)
            if n == len(chunks) - 1:
                part.onsite[self.quantity] = self.onsite_energies[types] @ self.shell_features.to(vec)
                if self.has_overlap:
                    part.onsite[OVERLAP] = self.overlap_onsite[types]
            if progress is not None:
                progress.update(1)
            yield part

    def chunk_steps(self, inputs: ModelInputs, edge_chunk: int | None) -> int:
        return len(bond_chunks(inputs.n_edges, edge_chunk))

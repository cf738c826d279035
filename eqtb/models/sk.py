"""``nnsk``: DeePTB's Slater-Koster tight-binding model, with DeePTB 2.2.1's formulas and conventions
(a DeePTB nnsk checkpoint gives the same numbers here, :mod:`eqtb.models.deeptb`).

Units: lengths (``r``, ``r_0``, ``rs``, ``w``) in Angstrom, energies in eV.

**Two-centre integrals.** In the frame of a directed edge i -> j (the m = 0 axis along the bond) the
block between shell a of atom i and shell b of atom j is diagonal in m with one integral per |m|
(``sigma``, ``pi``, ``delta``, named by :func:`eqtb.models.assembly.sk_integral_names`);
:class:`eqtb.models.assembly.SKAssembler` rotates it onto the bond. The parameters are DeePTB's:

* one parameter set per ordered element pair (x, y), shell pair (a, b) with a at or before b in the
  full basis (``1s, 2s, 1p, 2p, 1d``) and |m|, giving ``V^{xy}_{ab,m}(r)``; a shell with itself
  (a = b) shares its set between (x, y) and (y, x) (DeePTB averages the two before every use);
* the integral of the edge is ``(-1)^(l_a + l_b) V`` (DeePTB's sign; the full basis is l-major, so
  l_a <= l_b);
* a pair with a after b takes the reverse bond's integral, ``W^{xy}_{ab} = (-1)^(l_a + l_b)
  W^{yx}_{ba} = V^{yx}_{ba}`` (a rotation by pi about an axis normal to the bond), so the blocks
  are Hermitian by construction.

**Bond-length forms** (``hopping.method``; number of parameters p1, p2, ... in brackets), with
``f_s(r) = 1 / (1 + exp((r - rs + s w) / w))``:

* ``powerlaw`` (2): ``p1 (r_0 / r)^(1 + |p2|) f_0``;
* ``varTang96`` (4): ``p1 r^(-|p2|) exp(-|p3| r^|p4|) f_0``;
* ``poly{N}pow``, N = 1..4 (N + 2): ``P_N(r - r_0) (r_0 / r)^(1 + |p_{N+2}|) f_5``;
* ``poly{N}exp``, N = 2..4 (N + 2): ``P_N(r - r_0) exp(-|p_{N+2}| r) f_5``;
* ``NRL0``, ``NRL1`` (4): ``(p1 + p2 r + p3 r^2) exp(-p4^2 r) f_5``;

with ``P_N(x) = sum_k c_k p_{k+1} x^k`` and DeePTB's coefficients :data:`POLY_COEFFS` (N = 2:
1, 1, 1; N = 3, 4: 1, 1, 1/2, 1/6, 1/8 -- not Taylor's 1/24). ``r_0`` is the sum of the two atoms'
radii from DeePTB's table ``atomic_radius`` (``"v1"`` or ``"cov"``, :mod:`eqtb.data.sk_tables`);
``rs`` one radius, per element (a bond takes ``(rs_x + rs_y) / 2``) or per bond type ``"A-B"``.
The graph cutoff is DeePTB's: ``rs + 8 w`` for powerlaw and varTang96, ``rs + 3 w`` for the others
(:attr:`BondForm.widths`); longer bonds have no integrals.

**Onsite blocks** (``onsite.method``): one energy E per element and pair of shells (a, b) of the same
l with a at or before b, placed as ``E 1`` on (a, b) and (b, a) (a = b: the shell's level; a != b: a
coupling such as 1s-2s); ``E^0`` is DeePTB's reference energy of the shell
(:func:`eqtb.data.sk_tables.onsite_reference`, on the diagonal; it needs the shell labels of a
basis list such as ``["3s", "3p", "d*"]`` -- with a basis string such as ``"1s1p"`` it is 0):

* ``none``: ``E^0``; ``uniform``: ``E^0 + p``; ``uniform_noref``: ``p``;
* ``strain``: ``E^0`` plus, from every neighbour j within the onsite cutoff, a two-centre block
  ``R(r_ij) diag(V) R^T`` of the hopping form with the onsite ``rs``, ``w`` and parameters of its
  own per ordered element pair (x_i, x_j), shell pair a <= b of atom i and |m| (no sign), summed
  over j and symmetrised;
* ``NRL``: ``p1 + p2 rho^(2/3) + p3 rho^(4/3) + p4 rho^2``, ``rho_i = sum_j exp(-lda^2 r_ij)
  f_5(r_ij)`` over neighbours with ``r_ij < rs``.

``strain`` and ``NRL`` make the onsite blocks depend on the neighbours: the model is then strictly
local (:class:`eqtb.models.base.Locality` 1) and its graph cutoff the larger of the hopping cutoff
and the onsite one (``rs + 8 w`` for strain with powerlaw/varTang96 hopping, ``rs + 3 w``
otherwise); with the other modes it is two-centre (Locality 0).

**Overlap** (``common_options.overlap``): integrals of its own of the hopping form (``NRL1``:
``(delta + p1 r + p2 r^2 + p3 r^3) exp(-p4^2 r) f_5``, delta = 1 between a shell and itself on two
atoms of one element), times ``ovp_factor`` (1 unless ``push`` lowers it); onsite overlap 1 on
each shell, one learnable value per pair of different shells of the same l.

**Options.** ``std``: every parameter starts from N(0, std) as in DeePTB (onsite overlaps from 1),
except that with training statistics onsite energies and overlaps start at the dataset means.
``freeze``: true (all parameters) or group names ``"hopping"``, ``"onsite"`` (onsite energies or
strain parameters), ``"overlap"`` (overlap integrals and onsite overlaps), which then keep
``requires_grad`` False. ``push`` (:meth:`SlaterKoster.after_iteration`): every ``period``
optimizer steps ``rs += rs_thr``, ``w += w_thr`` and ``ovp_factor += ovp_thr`` (while it is at
least |ovp_thr|); the number of pushes and the overlap factor are buffers of the state dict, so
checkpoints keep them. (DeePTB counts forward calls, validation included; eqtb counts optimizer
steps.) Unlike DeePTB, a freeze name freezes every parameter of its group (DeePTB freezes the
first parameter whose name contains it, so ``"onsite"`` can catch the onsite overlaps).

**Spin-orbit coupling** (``soc``, DeePTB's options; ``{}``: none, a spinless model). ``{"method":
"uniform"}``: one strength ``lambda = |p|`` (eV, DeePTB's ``abs``) per element and shell of the full
basis, trainable, starting from N(0, std) as DeePTB; ``"uniform_noref"`` the same (DeePTB's reference
strengths, which ``uniform`` adds, are all zero); ``"none"``: the reference strengths, zero -- a
spinful model without coupling. The Hamiltonian becomes spinful (:class:`eqtb.operator.Operator`
``soc``): every atom gets the onsite block ``lambda_{shell} L.S`` on each shell
(:func:`eqtb.so3.spin_orbit_matrix`, spin-major as in DeePTB; s shells have none), while hoppings,
onsite energies and the overlap are the same for both spins. H(k) is then ``2 norb`` square,
``[[H(k) + L_uu, L_ud], [L_du, H(k) + L_dd]]`` with all orbitals spin up first (DeePTB's order),
and ``S(k)`` enters as ``S(k) (x) 1_2``. The shells with j = l +- 1/2 split by ``lambda (2l + 1) / 2``
(3 lambda / 2 for p). ``freeze: ["soc"]`` keeps the strengths fixed. Band losses compare the
``2 norb`` spinful eigenvalues with the reference ones band by band, as DeePTB does: each band is one
spin state, so the reference must come from a spinful (noncollinear, SOC) calculation; spinless
eigenvalues -- each band holding both spins -- describe a spinful model only after every band is
repeated twice, which eqtb does not do for you. DeePTB's ``custom`` hopping is not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from eqtb.basis import Basis
from eqtb.data.sk_tables import atomic_radius as table_radius
from eqtb.data.sk_tables import onsite_reference
from eqtb.models.assembly import IrrepsAssembler, SKAssembler
from eqtb.models.base import Features, Locality, ModelError, OperatorModel, bond_chunks, register
from eqtb.models.inputs import ModelInputs
from eqtb.nn.so2 import directed_frames
from eqtb.quantities import HAMILTONIAN, OVERLAP
from eqtb.so3 import spin_orbit_matrix
from eqtb.structure import pair_cutoffs

__all__ = ["HOPPING_FORMS", "ONSITE_MODES", "POLY_COEFFS", "BondForm", "IntegralTable",
           "SlaterKoster", "onsite_pairs"]


# ===================================================================== bond-length forms
def _fermi(r: torch.Tensor, rs, w, shift: float) -> torch.Tensor:
    """``1 / (1 + exp((r - rs + shift w) / w))``."""
    return torch.sigmoid((rs - shift * w - r) / w)


#: DeePTB's coefficients c_k of the polynomial P_N(x) = sum_k c_k p_{k+1} x^k of the poly forms
POLY_COEFFS = {1: (1.0, 1.0), 2: (1.0, 1.0, 1.0), 3: (1.0, 1.0, 0.5, 1 / 6), 4: (1.0, 1.0, 0.5, 1 / 6, 1 / 8)}


def _powerlaw(p, r, r0, rs, w, delta=None):
    return p[..., 0] * (r0 / r) ** (1 + p[..., 1].abs()) * _fermi(r, rs, w, 0)


def _vartang96(p, r, r0, rs, w, delta=None):
    return p[..., 0] * r ** (-p[..., 1].abs()) * torch.exp(-p[..., 2].abs() * r ** p[..., 3].abs()) * _fermi(r, rs, w, 0)


def _poly(p, r, r0, rs, w, delta=None, *, degree: int, envelope: str):
    x = r - r0
    value = sum(c * p[..., k] * x ** k for k, c in enumerate(POLY_COEFFS[degree]))
    decay = p[..., degree + 1].abs()
    env = (r0 / r) ** (1 + decay) if envelope == "pow" else torch.exp(-r * decay)
    return value * env * _fermi(r, rs, w, 5)


def _nrl(p, r, r0, rs, w, delta=None):
    """NRL-TB: (p1 + p2 r + p3 r^2) exp(-p4^2 r) f_5, or with ``delta`` (NRL1 overlap)
    (delta + p1 r + p2 r^2 + p3 r^3) exp(-p4^2 r) f_5."""
    if delta is None:
        value = p[..., 0] + p[..., 1] * r + p[..., 2] * r ** 2
    else:
        value = delta + p[..., 0] * r + p[..., 1] * r ** 2 + p[..., 2] * r ** 3
    return value * torch.exp(-p[..., 3] ** 2 * r) * _fermi(r, rs, w, 5)


@dataclass(frozen=True)
class BondForm:
    """A bond-length form: ``n_params`` parameters per integral, graph cutoff ``rs + widths w``,
    ``fn(p (n, K, n_params), r, r0, rs (n, 1), w, delta=None) -> (n, K)`` (eV for H)."""

    name: str
    n_params: int
    widths: int
    fn: Callable

    def __call__(self, p, r, r0, rs, w, delta=None) -> torch.Tensor:
        return self.fn(p, r, r0, rs, w, delta)


#: ``hopping.method`` -> its form (DeePTB 2.2.1's formulas and parameter counts)
HOPPING_FORMS: dict[str, BondForm] = {
    "powerlaw": BondForm("powerlaw", 2, 8, _powerlaw),
    "varTang96": BondForm("varTang96", 4, 8, _vartang96),
    **{f"poly{n}pow": BondForm(f"poly{n}pow", n + 2, 3, partial(_poly, degree=n, envelope="pow")) for n in (1, 2, 3, 4)},
    **{f"poly{n}exp": BondForm(f"poly{n}exp", n + 2, 3, partial(_poly, degree=n, envelope="exp")) for n in (2, 3, 4)},
    "NRL0": BondForm("NRL0", 4, 3, _nrl),
    "NRL1": BondForm("NRL1", 4, 3, _nrl),
}
ONSITE_MODES = ("none", "uniform", "uniform_noref", "strain", "NRL")
#: ``soc.method`` values: trainable strengths, or none (the zero reference strengths)
SOC_METHODS = ("none", "uniform", "uniform_noref")
#: onsite modes whose blocks depend on the neighbours, with their option keys
ENV_ONSITE_KEYS = {"strain": ("rs", "w"), "NRL": ("rs", "w", "lda")}


# ===================================================================== parameter tables
class IntegralTable(nn.Module):
    """Parameters (``params``, (n_free, n_params)) of the two-centre integrals of every ordered
    element pair, in DeePTB's layout (module docstring); :attr:`keys` names the row of each: a tuple
    ``(x, y, a, b, m)`` of element types, full-basis shells (a at or before b) and |m|.

    ``onsite=False``: bond integrals, tied and signed as the module docstring says. ``onsite=True``:
    strain integrals of the onsite block of an atom of type x seen from a neighbour of type y --
    shells a, b both of x, no ties and no sign, and the pairs with a after b zero (the block is
    symmetrised after the rotation; a shell with itself is halved for that).

    ``index``/``sign`` (T*T, n_integrals) map the sk-convention integrals of the 'all' pair layout of
    an ordered type pair onto rows (the last, zero row: shells an element does not have)."""

    def __init__(self, basis: Basis, n_params: int, std: float, onsite: bool = False):
        super().__init__()
        T = basis.n_types
        pos = {s: k for k, s in enumerate(basis.full_shells)}
        has = [set(e.shells) for e in basis.elements]
        entries = [(p.a, p.b, m) for p in basis.all_pairs for m in range(min(p.a.l, p.b.l) + 1)]
        rows: dict[tuple, int] = {}
        index = np.full((T * T, len(entries)), -1, dtype=np.int64)
        sign = np.zeros((T * T, len(entries)))
        for x in range(T):
            for y in range(T):
                for n, (a, b, m) in enumerate(entries):
                    if onsite:
                        if a not in has[x] or b not in has[x] or pos[a] > pos[b]:
                            continue
                        key, s = (x, y, a, b, m), 0.5 if a == b else 1.0
                    elif a not in has[x] or b not in has[y]:
                        continue
                    elif pos[a] <= pos[b]:
                        pair = (min(x, y), max(x, y)) if a == b else (x, y)
                        key, s = (*pair, a, b, m), (-1) ** (a.l + b.l)
                    else:
                        key, s = (y, x, b, a, m), 1.0
                    index[x * T + y, n] = rows.setdefault(key, len(rows))
                    sign[x * T + y, n] = s
        index[index < 0] = len(rows)
        self.keys: list[tuple] = list(rows)
        self.entries: list[tuple] = entries  # the sk integrals (a, b, m) of the 'all' pair layout
        self.params = nn.Parameter(torch.empty(len(rows), n_params).normal_(0.0, std))
        self.register_buffer("index", torch.as_tensor(index), persistent=False)
        self.register_buffer("sign", torch.as_tensor(sign, dtype=torch.get_default_dtype()), persistent=False)

    def gather(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(params (n, n_integrals, n_params), sign (n, n_integrals)) for ordered type pairs
        ``pair = t_src * T + t_dst``."""
        padded = torch.cat([self.params, self.params.new_zeros(1, self.params.shape[1])])
        return padded[self.index[pair]], self.sign.to(self.params)[pair]


def onsite_pairs(basis: Basis) -> list[tuple]:
    """The shell pairs (a, b) of the full basis with the same l and a at or before b, in DeePTB's
    order of onsite energies (by l, then row-major over the upper triangle)."""
    shells = basis.full_shells
    return [(a, b) for k, a in enumerate(shells) for b in shells[k:] if a.l == b.l]


def _shell_map(new: Basis, old: Basis) -> dict[tuple[str, object], object]:
    """``(symbol, shell of new) -> shell of old`` for the elements both bases have: shells matched by
    label when both elements have labels (``"3s"`` of ``["3s", "3p"]`` is ``"3s"`` of ``["3s", "3p",
    "d*"]``), else -- a basis string, or bare letters ``["s", "p", "d"]`` as in DeePTB's parameter
    sets fitted to DFTB tables -- the k-th shell of each l to the k-th of the same l."""
    out = {}
    old_elements = {e.symbol: e for e in old.elements}
    for e in new.elements:
        o = old_elements.get(e.symbol)
        if o is None:
            continue
        bare = o.labels is not None and all(len(lab) == 1 for lab in o.labels)
        if e.labels is not None and o.labels is not None and not bare:
            by_label = dict(zip(o.labels, o.shells))
            out.update({(e.symbol, s): by_label[lab] for lab, s in zip(e.labels, e.shells) if lab in by_label})
        else:
            have = set(o.shells)
            out.update({(e.symbol, s): s for s in e.shells if s in have})
    return out


# ===================================================================== options
def _check_number(value, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(f"model_options.nnsk.{key} must be a number, got {value!r}")


def _check_options(hopping: dict, onsite: dict) -> None:
    method = hopping.get("method")
    if method not in HOPPING_FORMS:
        raise ModelError(f"model_options.nnsk.hopping.method {method!r} is not supported (supported: "
                         f"{', '.join(HOPPING_FORMS)})")
    extra = sorted(set(hopping) - {"method", "rs", "w"})
    if extra:
        raise ModelError(f"model_options.nnsk.hopping: unknown key(s) {', '.join(extra)} (allowed: method, rs, w)")
    for key in ("rs", "w"):
        if key not in hopping:
            raise ModelError(f"model_options.nnsk.hopping.{key} is required (Angstrom)")
    if not isinstance(hopping["rs"], dict):
        _check_number(hopping["rs"], "hopping.rs")
    _check_number(hopping["w"], "hopping.w")
    mode = onsite.get("method")
    if mode not in ONSITE_MODES:
        raise ModelError(f"model_options.nnsk.onsite.method {mode!r} is not supported (supported: "
                         f"{', '.join(ONSITE_MODES)})")
    allowed = ENV_ONSITE_KEYS.get(mode, ())
    extra = sorted(set(onsite) - {"method", *allowed})
    if extra:
        raise ModelError(f"model_options.nnsk.onsite: key(s) {', '.join(extra)} not used by onsite method "
                         f"{mode!r} (it takes: {', '.join(allowed) or 'no other key'})")
    for key in allowed:
        if key not in onsite:
            raise ModelError(f"model_options.nnsk.onsite.{key} is required with onsite method {mode!r}")
        _check_number(onsite[key], f"onsite.{key}")


def _check_soc(soc, quantity: str) -> str | None:
    """The ``soc.method`` of DeePTB's ``soc`` options (None for ``{}``: no spin-orbit coupling)."""
    if soc is None or soc == {}:
        return None
    if not isinstance(soc, dict):
        raise ModelError(f"model_options.nnsk.soc must be an object such as {{\"method\": \"uniform\"}} or {{}}, "
                         f"got {soc!r}")
    extra = sorted(set(soc) - {"method"})
    if extra:
        raise ModelError(f"model_options.nnsk.soc: unknown key(s) {', '.join(extra)} (allowed: method)")
    method = soc.get("method")
    if method not in SOC_METHODS:
        raise ModelError(f"model_options.nnsk.soc.method {method!r} is not supported (supported: "
                         f"{', '.join(SOC_METHODS)})")
    if quantity != HAMILTONIAN:
        raise ModelError(f"model_options.nnsk.soc: spin-orbit coupling is a term of the Hamiltonian, but the model "
                         f"predicts the {quantity}")
    return method


def _shift(rs, extra: float):
    if isinstance(rs, dict):
        return {k: float(v) + extra for k, v in rs.items()}
    return float(rs) + extra


def _cutoff(hopping: dict, onsite: dict):
    """Graph cutoff of these options: the hopping cutoff (one radius or a dict like ``rs``), raised
    to the onsite environment cutoff where that is larger."""
    form = HOPPING_FORMS[hopping["method"]]
    cut = _shift(hopping["rs"], form.widths * float(hopping["w"]))
    if onsite["method"] not in ENV_ONSITE_KEYS:
        return cut
    widths = form.widths if onsite["method"] == "strain" else 3
    env = float(onsite["rs"]) + widths * float(onsite["w"])
    return {k: max(v, env) for k, v in cut.items()} if isinstance(cut, dict) else max(cut, env)


# ===================================================================== the family
@register
class SlaterKoster(OperatorModel):
    """The ``nnsk`` family; see the module docstring. ``hopping``, ``onsite``: DeePTB's option dicts
    (``{"method": "powerlaw", "rs": 2.6, "w": 0.3}``, ``{"method": "strain", "rs": 2.5, "w": 0.3}``);
    ``std`` the spread of the initial parameters; ``atomic_radius`` ``"v1"`` or ``"cov"``;
    ``freeze``, ``push``, ``soc`` as in ``model_options.nnsk``; ``stats``: quantity -> OperatorStats of
    the training targets (initial onsite energies and overlaps)."""

    family = "nnsk"

    def __init__(self, basis: Basis, hopping: dict, onsite: dict, *, std: float = 0.01, atomic_radius: str = "v1",
                 freeze: bool | str | list[str] = False, push: bool | dict = False, quantity: str = "hamiltonian",
                 overlap: bool = False, stats: dict | None = None, soc: dict | None = None):
        super().__init__()
        self.check_quantity(quantity)
        _check_options(hopping, onsite)
        self.soc_mode = _check_soc(soc, quantity)
        self.soc_options = dict(soc or {})
        self.basis = Basis(basis)
        self.quantity, self.has_overlap = quantity, overlap
        self.onsite_options = dict(onsite)
        self.hopping_options = dict(hopping)
        self.atomic_radius = atomic_radius
        self.form = HOPPING_FORMS[hopping["method"]]
        self.onsite_mode = onsite["method"]
        self.push = self._check_push(push, hopping)
        sym = self.basis.symbols
        f32 = torch.get_default_dtype()
        try:
            radii = np.array([table_radius(s, atomic_radius) for s in sym])
        except (KeyError, ValueError) as err:
            raise ModelError(f"model_options.nnsk.atomic_radius: {err.args[0]}") from None
        self.register_buffer("r0", torch.as_tensor((radii[:, None] + radii[None, :]).reshape(-1), dtype=f32),
                             persistent=False)
        # rs and w as given (Angstrom, float64); push shifts them by the number of pushes so far, a
        # persistent (integer) buffer, so that checkpoints keep it
        self._rs_given = pair_cutoffs(hopping["rs"], sym).reshape(-1)
        self._w_given = float(hopping["w"])
        self.register_buffer("pushes", torch.zeros((), dtype=torch.long))
        stats = stats or {}
        self.assembler = SKAssembler(self.basis, None, convention="sk")
        self.lmax = self.assembler.lmax
        self.hopping = IntegralTable(self.basis, self.form.n_params, std)
        self._init_onsite(std, stats)
        if self.onsite_mode == "strain":
            self.strain = IntegralTable(self.basis, self.form.n_params, std, onsite=True)
        if overlap:
            self.overlap_assembler = SKAssembler(self.basis, None, convention="sk")
            self.overlap_hopping = IntegralTable(self.basis, self.form.n_params, std)
            self._init_overlap_onsite(stats.get(OVERLAP))
            # the overlap factor (1; push lowers it), a persistent buffer as in DeePTB
            self.register_buffer("ovp_factor", torch.tensor(1.0, dtype=f32))
            same = [p.a == p.b for p in self.basis.all_pairs for _ in range(min(p.a.l, p.b.l) + 1)]
            self.register_buffer("same_shell", torch.tensor(same), persistent=False)
        self._init_soc(std)
        if freeze:
            self._freeze(freeze)

    # ------------------------------------------------------------------ construction helpers
    def _init_onsite(self, std: float, stats: dict) -> None:
        """Onsite energies: placement of each same-l shell pair (``pair_features``), DeePTB's
        reference energies (``onsite_ref``, (T, K)) and the parameters of the mode."""
        pairs = onsite_pairs(self.basis)
        T, K, F = self.basis.n_types, len(pairs), self.basis.full_norb
        f32 = torch.get_default_dtype()
        place = np.zeros((K, F, F))
        for k, (a, b) in enumerate(pairs):
            oa, ob = self.basis.shell_offset[a], self.basis.shell_offset[b]
            place[k, oa:oa + a.dim, ob:ob + b.dim] = np.eye(a.dim)
            place[k, ob:ob + b.dim, oa:oa + a.dim] = np.eye(a.dim)
        tr = self.assembler.onsite_transform
        self.register_buffer("pair_features", tr.to_features(torch.as_tensor(place)).to(f32), persistent=False)
        ref = np.zeros((T, K))
        labelled = [(t, e) for t, e in enumerate(self.basis.elements) if e.labels is not None]
        for t, element in labelled if self.onsite_mode in ("none", "uniform", "strain") else ():
            for shell, label in zip(element.shells, element.labels):
                try:
                    ref[t, pairs.index((shell, shell))] = onsite_reference(element.symbol, label)
                except KeyError as err:
                    raise ModelError(f"nnsk onsite {self.onsite_mode!r}: {err.args[0]}") from None
        self.register_buffer("onsite_ref", torch.as_tensor(ref, dtype=f32), persistent=False)
        n = {"uniform": 1, "uniform_noref": 1, "NRL": 4}.get(self.onsite_mode)
        self.onsite_params = None if n is None else nn.Parameter(torch.empty(T, K, n).normal_(0.0, std))
        if n is not None and stats.get(self.quantity) is not None:
            mean = torch.as_tensor(self._mean_pairs(stats[self.quantity], pairs), dtype=f32)
            with torch.no_grad():
                self.onsite_params[..., 0] = mean - (self.onsite_ref if self.onsite_mode == "uniform" else 0.0)

    def _init_soc(self, std: float) -> None:
        """Spin-orbit coupling: the L.S matrix of every full-basis shell placed in the spinful onsite
        block (``soc_re``, ``soc_im``: (n_shells, 2F, 2F), real and imaginary parts, so that a dtype
        cast of the module keeps them), the shells each element has (``soc_mask``, (T, n_shells)) and
        the strengths' parameters (``soc_params``, (T, n_shells, 1), DeePTB's layout; None unless
        ``uniform``/``uniform_noref``)."""
        self.soc_params = None
        if self.soc_mode is None:
            return
        shells, F = self.basis.full_shells, self.basis.full_norb
        place = np.zeros((len(shells), 2 * F, 2 * F), dtype=np.complex128)
        for k, shell in enumerate(shells):
            o, d, M = self.basis.shell_offset[shell], shell.dim, spin_orbit_matrix(shell.l)
            rows = np.concatenate([np.arange(o, o + d), F + np.arange(o, o + d)])
            place[k][np.ix_(rows, rows)] = M
        f32 = torch.get_default_dtype()
        self.register_buffer("soc_re", torch.as_tensor(place.real, dtype=f32), persistent=False)
        self.register_buffer("soc_im", torch.as_tensor(place.imag, dtype=f32), persistent=False)
        mask = [[shell in set(e.shells) for shell in shells] for e in self.basis.elements]
        self.register_buffer("soc_mask", torch.tensor(mask), persistent=False)
        if self.soc_mode != "none":
            self.soc_params = nn.Parameter(torch.empty(self.basis.n_types, len(shells), 1).normal_(0.0, std))

    def soc_strengths(self) -> torch.Tensor | None:
        """(T, n_shells) spin-orbit strengths lambda (eV) of every element and full-basis shell
        (zero for shells an element lacks); None for a spinless model."""
        if self.soc_mode is None:
            return None
        if self.soc_params is None:
            return torch.zeros(self.soc_mask.shape, dtype=self.soc_re.dtype, device=self.soc_re.device)
        return self.soc_params[..., 0].abs() * self.soc_mask

    def spin_orbit(self, inputs: ModelInputs) -> torch.Tensor | None:
        """(N, 2F, 2F) complex onsite spin-orbit blocks ``sum_shell lambda L.S`` of the atoms of
        ``inputs`` (spin-major, eV); None for a spinless model."""
        lam = self.soc_strengths()
        if lam is None:
            return None
        lam = lam[inputs.types]
        n, F2 = lam.shape[0], self.soc_re.shape[-1]
        re = (lam @ self.soc_re.reshape(len(self.soc_re), -1)).view(n, F2, F2)
        im = (lam @ self.soc_im.reshape(len(self.soc_im), -1)).view(n, F2, F2)
        return torch.complex(re, im)

    def _init_overlap_onsite(self, stats) -> None:
        pairs = onsite_pairs(self.basis)
        f32 = torch.get_default_dtype()
        diag = torch.tensor([a == b for a, b in pairs])
        self.register_buffer("overlap_diagonal", diag, persistent=False)
        start = torch.ones(self.basis.n_types, len(pairs))
        if stats is not None:
            start = torch.as_tensor(self._mean_pairs(stats, pairs), dtype=f32)
        self.overlap_onsite = nn.Parameter(start.to(f32))

    def _mean_pairs(self, stats, pairs) -> np.ndarray:
        """(T, K) dataset means of the onsite blocks, per same-l shell pair: trace / dim of the
        (a, b) sub-block of the mean onsite block."""
        a = IrrepsAssembler(self.basis, stats)
        T = self.basis.n_types
        with torch.no_grad():
            mean = a.onsite(torch.zeros(T, a.onsite_dim), torch.arange(T)).double().numpy()
        off = self.basis.shell_offset
        return np.stack([np.einsum("tmm->t", mean[:, off[s]:off[s] + s.dim, off[u]:off[u] + u.dim]) / s.dim
                         for s, u in pairs], axis=1)

    @staticmethod
    def _check_push(push, hopping: dict) -> dict | None:
        if push is False or push is None:
            return None
        if not isinstance(push, dict):
            raise ModelError("model_options.nnsk.push must be false or an object with rs_thr, w_thr, ovp_thr, period")
        push = {"rs_thr": 0.0, "rc_thr": 0.0, "w_thr": 0.0, "ovp_thr": 0.0, "period": 100, **push}
        if push["rc_thr"]:
            raise ModelError("model_options.nnsk.push.rc_thr: DeePTB 2.2's hopping forms have no rc; use rs_thr")
        if push["rs_thr"] and isinstance(hopping["rs"], dict):
            raise ModelError("model_options.nnsk.push.rs_thr needs one number for hopping.rs, not a dict")
        if push["ovp_thr"] > 0:
            raise ModelError("model_options.nnsk.push.ovp_thr must be negative or zero (push only lowers the overlap)")
        if int(push["period"]) < 1:
            raise ModelError("model_options.nnsk.push.period must be a positive number of iterations")
        if not (push["rs_thr"] or push["w_thr"] or push["ovp_thr"]):
            return None
        return push

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of each ``freeze`` group (empty lists for groups this model lacks)."""
        onsite = [self.onsite_params] if self.onsite_params is not None else []
        if self.onsite_mode == "strain":
            onsite.append(self.strain.params)
        overlap = [self.overlap_hopping.params, self.overlap_onsite] if self.has_overlap else []
        soc = [self.soc_params] if self.soc_params is not None else []
        return {"hopping": [self.hopping.params], "onsite": onsite, "overlap": overlap, "soc": soc}

    def _freeze(self, freeze) -> None:
        groups = self.parameter_groups()
        if freeze is True:
            names = list(groups)
        else:
            names = [freeze] if isinstance(freeze, str) else list(freeze)
        for name in names:
            if name not in groups:
                raise ModelError(f"model_options.nnsk.freeze: unknown group {name!r} (groups: {', '.join(groups)})")
            if not groups[name] and freeze is not True:
                raise ModelError(f"model_options.nnsk.freeze: this model has no {name!r} parameters "
                                 f"(onsite {self.onsite_mode!r}, overlap {self.has_overlap}, soc {self.soc_mode!r})")
            for p in groups[name]:
                p.requires_grad_(False)

    # ------------------------------------------------------------------ declarations
    @classmethod
    def from_options(cls, options: dict, basis: Basis, stats: dict | None = None, *,
                     quantity: str = "hamiltonian", overlap: bool = False) -> "SlaterKoster":
        """From DeePTB's ``{"nnsk": {"onsite": {...}, "hopping": {...}, ...}}`` (validated)."""
        nnsk = options["nnsk"]
        return cls(basis, nnsk["hopping"], nnsk["onsite"], std=float(nnsk["std"]), atomic_radius=nnsk["atomic_radius"],
                   freeze=nnsk["freeze"], push=nnsk["push"], quantity=quantity, overlap=overlap, stats=stats,
                   soc=nnsk.get("soc"))

    @classmethod
    def cutoff_of(cls, options: dict):
        nnsk = options["nnsk"]
        _check_options(nnsk["hopping"], nnsk["onsite"])
        return _cutoff(nnsk["hopping"], nnsk["onsite"])

    @classmethod
    def example_options(cls, basis: Basis) -> dict:
        """Strain onsite blocks (environment-dependent) over a poly2pow hopping: the richest case."""
        return {"nnsk": {"onsite": {"method": "strain", "rs": 2.8, "w": 0.1},
                         "hopping": {"method": "poly2pow", "rs": 3.0, "w": 0.1}, "std": 0.5}}

    @property
    def env_onsite(self) -> bool:
        """True when the onsite blocks depend on the neighbours (``strain``, ``NRL``)."""
        return self.onsite_mode in ENV_ONSITE_KEYS

    @property
    def locality(self) -> Locality:
        return Locality(1 if self.env_onsite else 0)

    @property
    def rs(self) -> np.ndarray:
        """(T*T,) current hopping rs (Angstrom) of each ordered type pair (after push)."""
        return self._rs_given + (int(self.pushes) * self.push["rs_thr"] if self.push else 0.0)

    @property
    def w(self) -> float:
        """Current hopping w (Angstrom, after push)."""
        return self._w_given + (int(self.pushes) * self.push["w_thr"] if self.push else 0.0)

    def _hopping_cutoffs(self) -> np.ndarray:
        """(T*T,) cutoff (Angstrom) of the integrals of each ordered type pair: rs + widths w."""
        return self.rs + self.form.widths * self.w

    def _onsite_cutoff(self) -> float:
        """Cutoff of the onsite environment (strain, NRL)."""
        widths = self.form.widths if self.onsite_mode == "strain" else 3
        return float(self.onsite_options["rs"]) + widths * float(self.onsite_options["w"])

    @property
    def r_max(self):
        """Graph cutoff (Angstrom) with the current (pushed) rs and w: one radius when every bond type
        has the same, else ``{"A-B": radius}``."""
        cut = self._hopping_cutoffs().reshape(self.basis.n_types, -1)
        if self.env_onsite:
            cut = np.maximum(cut, self._onsite_cutoff())
        if np.allclose(cut, cut.flat[0], rtol=0, atol=1e-9):
            return float(cut.flat[0])
        sym = self.basis.symbols
        return {f"{a}-{b}": float(cut[x, y]) for x, a in enumerate(sym) for y, b in enumerate(sym) if x <= y}

    def heads(self) -> dict:
        out = {self.quantity: self.assembler}
        if self.has_overlap:
            out[OVERLAP] = self.overlap_assembler
        return out

    # ------------------------------------------------------------------ training hooks
    @torch.no_grad()
    def after_iteration(self, iteration: int) -> None:
        """``push``: every ``period`` iterations shift rs, w and the overlap factor (module docstring)."""
        if self.push is None or iteration % int(self.push["period"]):
            return
        self.pushes += 1
        thr = self.push["ovp_thr"]
        if thr and self.has_overlap and self.ovp_factor >= abs(thr):
            self.ovp_factor += thr

    # ------------------------------------------------------------------ starting from a trained model
    def init_from(self, family: str, state_dict: dict, config: dict | None = None) -> None:
        """Start from a trained nnsk model (``eqtb train -i``) as DeePTB's ``NNSK.from_reference``
        does: with the same basis, hopping and onsite options (and overlap switch) the weights load as
        saved; otherwise (DeePTB's tutorials extend an sp model to sp + d*, change the onsite mode or
        the cutoff) every parameter of the new model whose element(s) and shells the saved model has
        takes the saved value -- hopping and overlap integrals, onsite energies (both ``uniform`` or
        ``uniform_noref``: the same energies, converted between the two as DeePTB's ``dptb esk`` does;
        DeePTB's ``-i`` copies the raw parameter; both ``NRL``), strain parameters (both strain),
        onsite overlaps of different shells, spin-orbit strengths (both with ``soc`` parameters) --
        and the rest keep their initial values (so a spinless model starts a spinful one). Shells are
        matched by their labels (``"3s"``) when both bases have labels, else by angular momentum and
        order. ``config``: the saved model's
        ``common_options`` and ``model_options``. Either way the push counter starts at zero: the
        config's ``rs`` and ``w`` are the starting ones (DeePTB writes the pushed values into its
        checkpoint's config); the overlap factor is kept (DeePTB resets it to 1 when the options
        differ). :class:`ModelError` for another family, or integrals of a different number of
        parameters (another hopping form)."""
        if family != "nnsk":
            raise ModelError(f"an nnsk model starts from an nnsk model, not from a {family!r} model")
        if config is None:
            raise ModelError("the checkpoint has no config")
        saved_basis = Basis(config["common_options"]["basis"])
        nnsk = config["model_options"]["nnsk"]
        saved_overlap = bool(config["common_options"].get("overlap", False))
        keys = ("method", "rs", "w")
        same = (saved_basis == self.basis and saved_overlap == self.has_overlap
                and all(nnsk["hopping"].get(k) == self.hopping_options.get(k) for k in keys)
                and dict(nnsk["onsite"]) == self.onsite_options and dict(nnsk.get("soc") or {}) == self.soc_options)
        if same:
            try:
                self.load_state_dict(state_dict)
            except RuntimeError as err:
                raise ModelError(f"the checkpoint's weights do not fit the configured nnsk model: {err}") from None
        else:
            self._map_from(saved_basis, nnsk, saved_overlap, state_dict)
        self.pushes.zero_()

    def _map_from(self, basis: Basis, nnsk: dict, overlap: bool, state_dict: dict) -> None:
        """Fill the parameters the saved model (``basis``, ``nnsk`` options, ``overlap``, weights
        ``state_dict``) shares with this one (:meth:`init_from`)."""
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            old = SlaterKoster(basis, nnsk["hopping"], nnsk["onsite"], atomic_radius=nnsk.get("atomic_radius", "v1"),
                               quantity=self.quantity, overlap=overlap, soc=nnsk.get("soc"))
        finally:
            torch.set_default_dtype(default)
        try:
            old.load_state_dict({k: torch.as_tensor(v).double() if torch.is_floating_point(torch.as_tensor(v))
                                 else v for k, v in state_dict.items()})
        except RuntimeError as err:
            raise ModelError(f"the checkpoint's weights do not fit its own nnsk options: {err}") from None
        shells = _shell_map(self.basis, basis)
        with torch.no_grad():
            self._map_table(self.hopping, old.hopping, basis, shells, "hopping")
            if self.onsite_mode == "strain" and old.onsite_mode == "strain":
                self._map_table(self.strain, old.strain, basis, shells, "strain")
            uniform = ("uniform", "uniform_noref")
            if self.onsite_mode in uniform and old.onsite_mode in uniform:  # the energies, whatever the reference
                absolute = old.onsite_params[..., 0] + (old.onsite_ref if old.onsite_mode == "uniform" else 0.0)
                ref = self.onsite_ref.to(absolute) if self.onsite_mode == "uniform" else torch.zeros_like(self.onsite_ref)
                for t, k in self._map_onsite(self.onsite_params[..., 0], absolute, basis, shells, diagonal=True):
                    self.onsite_params[t, k, 0] -= ref[t, k]
            elif self.onsite_mode == old.onsite_mode == "NRL":
                self._map_onsite(self.onsite_params, old.onsite_params, basis, shells, diagonal=True)
            if self.soc_params is not None and old.soc_params is not None:
                old_shells = {s: k for k, s in enumerate(basis.full_shells)}
                for t, element in enumerate(self.basis.elements):
                    for k, shell in enumerate(self.basis.full_shells):
                        s0 = shells.get((element.symbol, shell))
                        if s0 is not None and element.symbol in basis.symbols:
                            self.soc_params[t, k] = old.soc_params[basis.symbols.index(element.symbol), old_shells[s0]]
            if self.has_overlap and old.has_overlap:
                self._map_table(self.overlap_hopping, old.overlap_hopping, basis, shells, "overlap")
                self._map_onsite(self.overlap_onsite, old.overlap_onsite, basis, shells, diagonal=False)
                self.ovp_factor.copy_(old.ovp_factor)

    def _map_table(self, new: IntegralTable, old: IntegralTable, basis: Basis, shells: dict, what: str) -> None:
        """Copy into ``new`` the integrals ``old`` (a table of the saved ``basis``) has, as the
        integral of the directed edge (value with its sign), not as the raw row."""
        if new.params.shape[1] != old.params.shape[1]:
            raise ModelError(f"the checkpoint's {what} integrals have {old.params.shape[1]} parameters each, the "
                             f"config's hopping method {self.form.name!r} takes {new.params.shape[1]}")
        sym, old_sym = self.basis.symbols, basis.symbols
        T, To = len(sym), len(old_sym)
        new_entry = {e: n for n, e in enumerate(new.entries)}
        old_entry = {e: n for n, e in enumerate(old.entries)}
        strain = what == "strain"
        for row, (x, y, a, b, m) in enumerate(new.keys):
            if sym[x] not in old_sym or sym[y] not in old_sym:
                continue
            a0, b0 = shells.get((sym[x], a)), shells.get((sym[x] if strain else sym[y], b))
            if a0 is None or b0 is None or (a0, b0, m) not in old_entry:
                continue
            ox, oy = old_sym.index(sym[x]), old_sym.index(sym[y])
            k = int(old.index[ox * To + oy, old_entry[a0, b0, m]])
            s_old = float(old.sign[ox * To + oy, old_entry[a0, b0, m]])
            s_new = float(new.sign[x * T + y, new_entry[a, b, m]])
            if k >= len(old.keys) or s_old == 0 or s_new == 0:
                continue
            new.params[row] = old.params[k].to(new.params) * (s_old / s_new)

    def _map_onsite(self, new: torch.Tensor, old: torch.Tensor, basis: Basis, shells: dict,
                    diagonal: bool) -> list[tuple[int, int]]:
        """Copy per-element values of same-l shell pairs ((T, K, ...) onsite energies, (T, K)
        onsite overlaps: ``diagonal`` False copies pairs of different shells only); returns the
        (type, pair) entries written."""
        pairs, old_pairs = onsite_pairs(self.basis), onsite_pairs(basis)
        old_sym = basis.symbols
        written = []
        for t, element in enumerate(self.basis.elements):
            if element.symbol not in old_sym:
                continue
            own = set(element.shells)
            for k, (a, b) in enumerate(pairs):
                if a not in own or b not in own or (a == b and not diagonal):
                    continue
                a0, b0 = shells.get((element.symbol, a)), shells.get((element.symbol, b))
                if a0 is None or b0 is None:
                    continue
                k0 = old_pairs.index((a0, b0)) if (a0, b0) in old_pairs else old_pairs.index((b0, a0))
                new[t, k] = old[old_sym.index(element.symbol), k0].to(new)
                written.append((t, k))
        return written

    # ------------------------------------------------------------------ integrals
    def bond_integrals(self, table: IntegralTable, r: torch.Tensor, pair: torch.Tensor,
                       overlap: bool = False) -> torch.Tensor:
        """(n, n_integrals) integrals of ``table`` (eV for H) at bond lengths ``r`` (n,) (Angstrom) of
        ordered type pairs ``pair``; zero beyond the hopping cutoff."""
        p, sign = table.gather(pair)
        delta = None
        if overlap and self.form.name == "NRL1":
            T = self.basis.n_types
            delta = ((pair // T == pair % T)[:, None] & self.same_shell[None, :]).to(r)
        rs = torch.as_tensor(self.rs, dtype=r.dtype, device=r.device)[pair][:, None]
        value = self.form(p, r[:, None], self.r0.to(r)[pair][:, None], rs, self.w, delta)
        inside = r <= torch.as_tensor(self._hopping_cutoffs(), dtype=r.dtype, device=r.device)[pair]
        return sign * value * inside[:, None]

    def _env_part(self, pair, src, r, frames, n_atoms: int) -> torch.Tensor:
        """The contribution of directed edges (ordered type pairs ``pair``, source atoms ``src``,
        lengths ``r``) to the onsite environment of their source atoms: (N, F, F) strain blocks, or
        (N,) NRL densities rho."""
        opts = self.onsite_options
        rs, w = float(opts["rs"]), float(opts["w"])
        if self.onsite_mode == "NRL":
            rho = torch.exp(-float(opts["lda"]) ** 2 * r) * _fermi(r, rs, w, 5) * (r < rs)
            return r.new_zeros(n_atoms).index_add_(0, src, rho)
        p, sign = self.strain.gather(pair)
        value = self.form(p, r[:, None], self.r0.to(r)[pair][:, None], rs, w)
        near = (r <= self._onsite_cutoff())[:, None]
        B = self.assembler.offsite_transform.to_blocks(self.assembler.lab_features(sign * value * near, frames))
        F = B.shape[1]
        return r.new_zeros(n_atoms, F, F).index_add_(0, src, B + B.transpose(1, 2))

    def _onsite_features(self, types: torch.Tensor, env, factor: torch.Tensor | None = None) -> torch.Tensor:
        """(N, onsite_dim) onsite features of the main quantity from the energies of the mode and the
        accumulated environment ``env`` (strain blocks / NRL densities; None otherwise); ``factor``:
        (N, K) factors of the energies (K: :func:`onsite_pairs`), applied before strain blocks are added."""
        ref = self.onsite_ref.to(self.pair_features)
        if self.onsite_mode in ("none", "strain"):
            energies = ref[types]
        elif self.onsite_mode == "uniform":
            energies = (ref + self.onsite_params[..., 0])[types]
        elif self.onsite_mode == "uniform_noref":
            energies = self.onsite_params[types, :, 0]
        else:  # NRL
            p = self.onsite_params[types]
            rho = env[:, None]
            energies = p[..., 0] + p[..., 1] * rho ** (2 / 3) + p[..., 2] * rho ** (4 / 3) + p[..., 3] * rho ** 2
        if factor is not None:
            energies = energies * factor
        out = energies @ self.pair_features
        if self.onsite_mode == "strain":
            out = out + self.assembler.onsite_transform.to_features(env)
        return out

    def features(self, inputs: ModelInputs, edge_chunk: int | None = None, progress=None,
                 onsite_factor: torch.Tensor | None = None):
        """Two-centre integrals of every directed edge, chunk by chunk; onsite features in the last
        part, with the environment (strain, NRL) accumulated over all chunks (any chunking is exact).
        ``onsite_factor``: (N, K) factors of every atom's onsite energies (K: :func:`onsite_pairs`;
        the environment correction of :mod:`eqtb.models.mix`), None for none."""
        T = self.basis.n_types
        types = inputs.types
        chunks = bond_chunks(inputs.n_edges, edge_chunk)
        env = None
        for n, sl in enumerate(chunks):
            vec = inputs.vectors[sl]
            src = torch.cat([inputs.i[sl], inputs.j[sl]])
            ti = types[src]
            tj = torch.cat([types[inputs.j[sl]], types[inputs.i[sl]]])
            pair = ti * T + tj
            r = vec.norm(dim=1).repeat(2)
            frames = directed_frames(vec, self.lmax)
            part = Features(sl, ti, tj, {self.quantity: self.bond_integrals(self.hopping, r, pair)}, frames)
            if self.has_overlap:
                part.offsite[OVERLAP] = self.ovp_factor.to(r) * self.bond_integrals(self.overlap_hopping, r, pair,
                                                                                   overlap=True)
            if self.env_onsite:
                contrib = self._env_part(pair, src, r, frames, inputs.n_atoms)
                env = contrib if env is None else env + contrib
            if n == len(chunks) - 1:
                part.onsite[self.quantity] = self._onsite_features(types, env, onsite_factor)
                if self.has_overlap:
                    values = torch.where(self.overlap_diagonal, torch.ones_like(self.overlap_onsite), self.overlap_onsite)
                    part.onsite[OVERLAP] = values[types] @ self.pair_features.to(values)
            if progress is not None:
                progress.update(1)
            yield part

    def chunk_steps(self, inputs: ModelInputs, edge_chunk: int | None) -> int:
        return len(bond_chunks(inputs.n_edges, edge_chunk))

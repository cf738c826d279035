"""``eqtb esk``: a starting nnsk model for any basis from eqtb's built-in Slater-Koster table
(DeePTB's ``dptb esk``, with eqtb's own parameters).

**The table** (``eqtb/data/esk_table.json``, made by :mod:`eqtb.train.esk_fit`, which says how
every number was fitted to PySCF band structures): one model form for all entries (``model``:
``powerlaw`` hopping, ``w``, ``atomic_radius``, onsite ``uniform_noref``); per element
its fitted valence shells (DeePTB labels such as ``"3s"``) and onsite energies (eV, on the common
scale of the free atoms' levels); per bond type ``"A-B"`` its cutoff radius ``rs`` (Angstrom) and
the parameters ``[V, p2]`` of every two-centre integral of the directed bond A -> B,
``"<shell of A>-<shell of B>-<|m|>"``, ``V`` the integral at ``r_0`` with the sign it has in the
bond frame (DFTB+'s convention, :mod:`eqtb.models.dftbsk`), and for the bond types fitted with an
overlap (silicon) their overlap integrals ``overlap`` alike (dimensionless; the other entries are
orthogonal); per reference system the fit errors.

**The starting model of a basis** (:func:`starting_model`): an nnsk model with the table's form.
Shells of the basis are matched to the table's by label (``"3p"``); a bare letter (``"p"``, DeePTB's
base-model inputs) takes the table's shell of that angular momentum. Shells the table does not
have (polarisation shells such as ``"d*"`` or Si ``"d"``, Mo ``"5p"``) are added with Harrison's
universal integrals (:func:`harrison`, at ``r_0``) to every shell, and the onsite energy
:data:`EXTRA_SHELL_ABOVE` eV above the highest fitted level of the basis' elements; no overlap, but
for a polarisation shell whose overlap the table holds (the element's ``polarisation``: Si
``"d*"``, matched by that label; :func:`eqtb.train.esk_fit.fit_polarisation`), whose hopping
integrals then start as the fitted shells' fits did: Harrison's plus the mean level of the two
shells times the overlap integral (extended Hueckel, H = H_orth + (e_a + e_b) / 2 S at ``r_0``;
Harrison's alone, with the overlap, left the s-d* coupling of Si near zero, of the wrong sign
after Loewdin orthogonalisation). (Uncoupled, zero
integrals, they hardly train: the band energies depend on a coupling between two shells to second
order only, so its gradient at zero vanishes. In DeePTB's silicon tutorial chain,
``benchmarks/silicon_chain_md.py``, ``"d*"`` started uncoupled left the MD training frames at 192 meV
band MAE after 10 epochs of the second step, with Harrison's integrals at 110.) Bond types the
table has not fitted take the *combining rule*: each integral the geometric mean ``sign(V_AA + V_BB) sqrt(|V_AA V_BB|)`` of the
two elements' own integrals of the same shells (the mean of their exponents, ``rs`` the mean of
theirs); where an element lacks the shell, Harrison's universal value at ``r_0``
(:func:`harrison`). Elements not in the table are an error naming those it has. **Overlap**: the
model has one (``common_options.overlap`` true) when an element of the basis was fitted with it;
its overlap integrals are the table's, combined alike, and zero for the shells and elements fitted
without (which stay orthogonal to everything), so that an element keeps the H and S it was fitted
with.

**Output** (:func:`write_esk`): ``OUT/esk.pth``, an eqtb nnsk checkpoint (hopping form poly4pow by
default, as DeePTB's base models, so that DeePTB's inputs that follow ``dptb esk`` start from it;
the same bands in any of :data:`METHODS`, :func:`starting_model`), which ``eqtb train -i``,
``init_model``, ``eqtb run -i`` and ``eqtb.load`` read, and ``OUT/esk.json``: which table entry
each shell and bond type came from (``fitted``, ``combined``, ``not in the table``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from eqtb import __version__
from eqtb.basis import Basis, BasisError
from eqtb.models.base import ModelError
from eqtb.models.sk import HOPPING_FORMS, SlaterKoster, onsite_pairs

__all__ = ["EXTRA_SHELL_ABOVE", "METHODS", "EskError", "TABLE_PATH", "edge_integrals", "load_table", "set_edge_integrals",
           "starting_model", "write_esk"]

#: the shipped table
TABLE_PATH = Path(__file__).resolve().parents[1] / "data" / "esk_table.json"
#: onsite energy of a shell the table does not have, above the highest fitted level of the basis' elements (eV)
EXTRA_SHELL_ABOVE = 5.0
_LETTERS = "spdf"
#: Harrison's d radius (Angstrom) in the universal d integrals
R_D = 0.9
#: hbar^2 / m in eV Angstrom^2
HBAR2_M = 7.62
#: (l_a, l_b, m) -> (eta, power n of 1 / r) of Harrison's universal integrals (:func:`harrison`)
HARRISON = {(0, 0, 0): (-1.40, 2), (0, 1, 0): (1.84, 2), (1, 1, 0): (3.24, 2), (1, 1, 1): (-0.81, 2),
            (0, 2, 0): (-3.16, 3.5), (1, 2, 0): (-2.95, 3.5), (1, 2, 1): (1.36, 3.5),
            (2, 2, 0): (-16.2, 5), (2, 2, 1): (8.75, 5), (2, 2, 2): (-2.0, 5)}


class EskError(ValueError):
    """A basis or input the built-in table cannot serve; the message says what it has."""


def harrison(la: int, lb: int, m: int, r0: float, d: float | None = None, power: float | None = None) -> list[float]:
    """Harrison's universal integral of shells of angular momenta ``la``, ``lb`` (sigma, pi, delta:
    ``m``) at the bond length ``d`` (Angstrom; default ``r0``), as ``[V, p2]`` of the powerlaw form
    ``V (r0 / r)^(1 + p2)`` that equals it at ``d`` and decays as ``1 / r^power`` (default Harrison's
    own power): ``eta hbar^2 / (m d^2)`` between s and p shells (Froyen and Harrison's eta: ss sigma
    -1.40, sp sigma 1.84, pp sigma 3.24, pp pi -0.81), ``eta hbar^2 r_d^(3/2) / (m d^(7/2))`` between
    an s or p and a d shell (sd sigma -3.16, pd sigma -2.95, pd pi 1.36), ``eta hbar^2 r_d^3 / (m d^5)``
    between d shells (dd sigma -16.2, dd pi 8.75, dd delta -2.0), ``r_d`` = :data:`R_D`. ``V`` is the
    integral of the directed bond from the shell of ``la`` to that of ``lb``: a p shell before an s
    shell changes its sign. f shells (none in the table): zero."""
    lo, hi = min(la, lb), max(la, lb)
    if (lo, hi, m) not in HARRISON:
        return [0.0, 1.0]
    eta, n = HARRISON[lo, hi, m]
    d = r0 if d is None else d
    power = n if power is None else power
    v = eta * HBAR2_M * R_D ** (1.5 * ((lo == 2) + (hi == 2))) / d ** n * (d / r0) ** power
    return [v * (-1) ** ((la + lb) % 2 if la > lb else 0), power - 1.0]


def load_table(path=None) -> dict:
    """The built-in table (or the table JSON at ``path``)."""
    path = Path(path) if path is not None else TABLE_PATH
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise EskError(f"{path}: cannot read the Slater-Koster table ({err})") from None


def _labels(element) -> list[str]:
    """Shell names of a basis element: its labels, or ``"<l letter>"`` per shell."""
    return list(element.labels) if element.labels is not None else [_LETTERS[s.l] for s in element.shells]


def edge_integrals(model: SlaterKoster, overlap: bool = False) -> dict:
    """``{"A-B": {"<shell of A>-<shell of B>-<m>": [V, p2]}}`` of every ordered element pair and every
    shell pair of a powerlaw nnsk model: ``V`` the signed integral of the directed bond at ``r_0``
    (``overlap``: of its overlap integrals, dimensionless, instead of the hopping integrals, eV)."""
    basis, table = model.basis, (model.overlap_hopping if overlap else model.hopping)
    T, sym = basis.n_types, basis.symbols
    out = {}
    for x, ex in enumerate(basis.elements):
        for y, ey in enumerate(basis.elements):
            lx, ly = dict(zip(ex.shells, _labels(ex))), dict(zip(ey.shells, _labels(ey)))
            entry = {}
            for n, (a, b, m) in enumerate(table.entries):
                if a not in lx or b not in ly:
                    continue
                row, s = int(table.index[x * T + y, n]), float(table.sign[x * T + y, n])
                p = table.params[row].detach().double().tolist()
                entry[f"{lx[a]}-{ly[b]}-{m}"] = [s * v for v in p[:-1]] + [abs(p[-1])]
            out[f"{sym[x]}-{sym[y]}"] = entry
    return out


@torch.no_grad()
def set_edge_integrals(model: SlaterKoster, integrals: dict, overlap: bool = False) -> None:
    """Set the hopping parameters (``overlap``: the overlap integrals) of ``model`` from
    :func:`edge_integrals`-style values (bond types and shell pairs missing from ``integrals`` are
    left as they are)."""
    basis, table = model.basis, (model.overlap_hopping if overlap else model.hopping)
    T, sym = basis.n_types, basis.symbols
    entry_of = {e: n for n, e in enumerate(table.entries)}
    for row, (x, y, a, b, m) in enumerate(table.keys):
        ex, ey = basis.elements[x], basis.elements[y]
        key = f"{dict(zip(ex.shells, _labels(ex)))[a]}-{dict(zip(ey.shells, _labels(ey)))[b]}-{m}"
        value = integrals.get(f"{sym[x]}-{sym[y]}", {}).get(key)
        if value is None:
            continue
        s = float(table.sign[x * T + y, entry_of[a, b, m]])
        table.params[row] = torch.as_tensor([v / s for v in value[:-1]] + [value[-1]])


#: the power of 1 / r of Harrison's integrals in the combining rule, where an element lacks a shell
COMBINE_POWER = 4.0


def _shell_sources(element, entry: dict | None) -> dict[str, str | None]:
    """Shell name of the basis element -> the table's shell it takes (None: not in the table)."""
    have = entry["shells"] if entry else []
    out, used = {}, set()
    for shell, name in zip(element.shells, _labels(element)):
        if name in have:
            match = name
        elif len(name) == 1:  # a bare letter: the table's one shell of that angular momentum
            same = [t for t in have if t[-1] == name and t not in used]
            match = same[0] if len(same) == 1 else None
        else:
            match = None
        out[name] = match
        if match:
            used.add(match)
    return out


def _combined(table: dict, x: str, y: str, ta: str, tb: str, m: int, la: int, lb: int, r0: float,
              overlap: bool = False) -> list[float]:
    """The combining rule (module docstring) for the integral (shell ``ta`` of x, ``tb`` of y, ``m``);
    ``overlap``: for the overlap integral (zero where an element has no overlap integrals)."""
    def own(sym: str, first: str, second: str) -> list[float] | None:
        shells = table["elements"][sym]["shells"]
        a = first if first in shells else next((s for s in shells if s[-1] == first[-1]), None)
        b = second if second in shells else next((s for s in shells if s[-1] == second[-1]), None)
        pair = table["pairs"].get(f"{sym}-{sym}")
        if a is None or b is None or pair is None:
            return None
        return pair.get("overlap" if overlap else "integrals", {}).get(f"{a}-{b}-{m}")

    vx, vy = own(x, ta, tb), own(y, ta, tb)
    if vx is None or vy is None:
        return [0.0, 1.0] if overlap else harrison(la, lb, m, r0, power=COMBINE_POWER)
    return [math.copysign(math.sqrt(abs(vx[0] * vy[0])), vx[0] + vy[0]), (vx[1] + vy[1]) / 2]


#: hopping forms a starting model can take: the table's powerlaw, or the same integrals as polyNpow
METHODS = ("powerlaw", "poly1pow", "poly2pow", "poly3pow", "poly4pow")


def starting_model(basis, table: dict | None = None, method: str = "powerlaw") -> tuple[SlaterKoster, dict, dict]:
    """(model, config, sources): the starting nnsk model of ``basis`` (a :class:`Basis` or its spec)
    from ``table`` (default the built-in one; module docstring), its ``common_options`` and
    ``model_options``, and where each shell and bond type came from. :class:`EskError` for an element
    the table does not have.

    ``method``: the hopping form of the model, one of :data:`METHODS`. The table's powerlaw integral
    ``V (r0 / r)^(1 + p) f_0(r; rs, w)`` is exactly a polyNpow integral with the polynomial ``V``
    (higher coefficients 0), the same decay and ``rs + 5 w`` (their envelope is ``f_5``; both cut off
    at the same ``rs + 8 w``): the bands do not depend on the choice. DeePTB's base models, and so the
    inputs its ``dptb esk`` tutorials start from them (``eqtb train -i``), use poly4pow."""
    from eqtb.data.sk_tables import atomic_radius

    if method not in METHODS:
        raise EskError(f"hopping method {method!r}: the built-in table gives one of {', '.join(METHODS)}")
    table = table if table is not None else load_table()
    try:
        basis = Basis(basis)
    except (BasisError, ValueError, TypeError) as err:
        raise EskError(f"common_options.basis: {err}") from None
    have = table["elements"]
    missing = [s for s in basis.symbols if s not in have]
    if missing:
        raise EskError(f"the built-in Slater-Koster table has no parameters for {', '.join(missing)}; it has "
                       f"{', '.join(sorted(have, key=lambda s: Basis({s: '1s'}).elements[0].Z))}")
    form = table["model"]
    sym = basis.symbols
    shells = {e.symbol: _shell_sources(e, have[e.symbol]) for e in basis.elements}
    rs = {}
    for x, a in enumerate(sym):
        for b in sym[x:]:
            pair = table["pairs"].get(f"{a}-{b}")
            rs[f"{a}-{b}"] = pair["rs"] if pair else (table["pairs"][f"{a}-{a}"]["rs"] + table["pairs"][f"{b}-{b}"]["rs"]) / 2
    if form["hopping"] != "powerlaw":
        raise EskError(f"the table's hopping form {form['hopping']!r} is not powerlaw")
    pad = HOPPING_FORMS[method].n_params - 2  # the higher polynomial coefficients (zero)
    if method != "powerlaw":
        rs = {k: round(v + 5 * form["w"], 6) for k, v in rs.items()}
    hopping = {"method": method, "rs": rs, "w": form["w"]}
    onsite = {"method": form["onsite"]}
    overlap = any("overlap" in table["pairs"].get(f"{x}-{x}", {}) for x in sym)
    try:
        model = SlaterKoster(basis, hopping, onsite, std=0.0, atomic_radius=form["atomic_radius"], overlap=overlap)
    except ModelError as err:
        raise EskError(str(err)) from None
    sources = {"shells": {}, "bonds": {}}
    top = max(max(have[e.symbol]["onsite"].values()) for e in basis.elements)
    level = {(e.symbol, name): have[e.symbol]["onsite"][shells[e.symbol][name]] if shells[e.symbol][name]
             else top + EXTRA_SHELL_ABOVE for e in basis.elements for name in _labels(e)}
    integrals, overlaps = {}, {}
    for ex in basis.elements:
        x = ex.symbol
        for ey in basis.elements:
            y = ey.symbol
            fitted = table["pairs"].get(f"{x}-{y}")
            r0 = atomic_radius(x, form["atomic_radius"]) + atomic_radius(y, form["atomic_radius"])
            entry, s_entry = {}, {}
            for sa, na in zip(ex.shells, _labels(ex)):
                for sb, nb in zip(ey.shells, _labels(ey)):
                    ta, tb = shells[x][na], shells[y][nb]
                    for m in range(min(sa.l, sb.l) + 1):
                        key = f"{na}-{nb}-{m}"
                        if ta is None or tb is None:  # a shell the table lacks: Harrison's; no overlap
                            # but a polarisation shell's the element was fitted with (Si "d*"), and
                            # then Harrison's plus the mean level times it (extended Hueckel)
                            s_entry[key] = (fitted or {}).get("overlap", {}).get(f"{ta or na}-{tb or nb}-{m}",
                                                                                 [0.0, 1.0])
                            v, power = harrison(sa.l, sb.l, m, r0)
                            entry[key] = [v + (level[x, na] + level[y, nb]) / 2 * s_entry[key][0], power]
                        elif fitted:
                            entry[key] = fitted["integrals"][f"{ta}-{tb}-{m}"]
                            s_entry[key] = fitted.get("overlap", {}).get(f"{ta}-{tb}-{m}", [0.0, 1.0])
                        else:
                            entry[key] = _combined(table, x, y, ta, tb, m, sa.l, sb.l, r0)
                            s_entry[key] = _combined(table, x, y, ta, tb, m, sa.l, sb.l, r0, overlap=True)
            integrals[f"{x}-{y}"] = {k: v[:1] + [0.0] * pad + v[1:] for k, v in entry.items()}
            overlaps[f"{x}-{y}"] = {k: v[:1] + [0.0] * pad + v[1:] for k, v in s_entry.items()}
            if sym.index(x) <= sym.index(y):
                sources["bonds"][f"{x}-{y}"] = (f"fitted ({fitted['system']})" if fitted else
                                                "combined (geometric mean of the elements' own integrals)")
    set_edge_integrals(model, integrals)
    if overlap:
        set_edge_integrals(model, overlaps, overlap=True)
    pairs = onsite_pairs(basis)
    with torch.no_grad():
        model.onsite_params.zero_()
        for t, e in enumerate(basis.elements):
            entry = have[e.symbol]
            for shell, name in zip(e.shells, _labels(e)):
                source = shells[e.symbol][name]
                energy = level[e.symbol, name]
                model.onsite_params[t, pairs.index((shell, shell)), 0] = energy
                polarisation = entry.get("polarisation", {}).get(name)
                sources["shells"][f"{e.symbol} {name}"] = (
                    f"fitted {source} ({entry['system']})" if source else
                    f"not in the table: Harrison's integrals, at {energy:.3f} eV ({EXTRA_SHELL_ABOVE:g} eV above "
                    f"the highest level of the basis' elements)" + (
                        f"; overlap fitted to PySCF's ({polarisation['basis']} function), hopping Harrison's plus "
                        f"the mean level times it" if polarisation else ""))
    common = {"basis": basis.spec, "overlap": overlap}
    options = {"nnsk": {"onsite": onsite, "hopping": hopping, "std": 0.01, "atomic_radius": form["atomic_radius"],
                        "freeze": False, "push": False}}
    return model, {"common_options": common, "model_options": options}, sources


def write_esk(path, out, method: str = "poly4pow", table_path=None) -> dict:
    """Run DeePTB's esk input ``path`` (``common_options.basis``; other keys are named and ignored)
    into the folder ``out``: ``esk.pth`` and ``esk.json`` (module docstring), the model's hopping
    form ``method`` (:func:`starting_model`; DeePTB's poly4pow by default). Returns the summary."""
    import warnings

    from eqtb.config import CommonOptions, ModelOptions
    from eqtb.train.checkpoint import save_atomic

    path, out = Path(path), Path(out)
    try:
        obj = json.loads(path.read_text())
    except OSError as err:
        raise EskError(f"{path}: cannot read ({err.strerror})") from None
    except ValueError as err:
        raise EskError(f"{path}: not valid JSON ({err})") from None
    basis = (obj.get("common_options") or {}).get("basis") if isinstance(obj, dict) else None
    if basis is None:
        raise EskError(f"{path}: common_options.basis is required (e.g. {{\"Si\": [\"3s\", \"3p\"]}})")
    ignored = sorted(f"common_options.{k}" for k in obj["common_options"] if k != "basis")
    ignored += sorted(k for k in obj if k != "common_options")
    if ignored:
        warnings.warn(f"{path}: esk reads only common_options.basis; ignored: {', '.join(ignored)}", stacklevel=2)
    table = load_table(table_path)
    try:
        model, config, sources = starting_model(basis, table, method)
    except EskError as err:
        raise EskError(f"{path}: {err}") from None
    config = {"common_options": CommonOptions.model_validate(config["common_options"]).model_dump(),
              "model_options": ModelOptions.model_validate(config["model_options"]).model_dump()}
    state = {"config": config, "model_state_dict": model.state_dict(), "eqtb_version": __version__,
             "model_family": "nnsk", "quantity": "hamiltonian", "epoch": 0, "iteration": 0, "task": "esk"}
    out.mkdir(parents=True, exist_ok=True)
    save_atomic(state, out / "esk.pth")
    systems = sorted({v["system"] for k, v in table["elements"].items() if k in model.basis.symbols})
    summary = {"input": str(path), "checkpoint": str(out / "esk.pth"), "basis": model.basis.spec,
               "hopping": model.hopping_options, **sources,
               "fit_band_mae_meV": {s: table["systems"][s]["band_mae_meV"] for s in systems}}
    tmp = out / ".esk.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "esk.json")
    return summary

"""DeePTB's trained Slater-Koster models in eqtb: an nnsk checkpoint (``.pth``) or JSON model
becomes a :class:`eqtb.models.sk.SlaterKoster` with the same parameters, a mix checkpoint a
:class:`eqtb.models.mix.Mix`, so either gives DeePTB's Hamiltonian and overlap (and bands) for any
structure.

Formats (DeePTB 2.2):

* checkpoint: a torch pickle ``{"config": {"common_options", "model_options", ...},
  "model_state_dict": {...}, ...}``; an nnsk model's state holds ``hopping_param`` (T*T, R, P),
  ``overlap_param`` (same), ``onsite_param`` (T, K, 1 or 4), ``strain_param`` (T*T, R, P),
  ``overlaponsite_param`` (T, K, 1), ``soc_param`` (T, shells of the full basis, 1: spin-orbit
  strengths, :mod:`eqtb.models.sk`) and ``ovp_factor``, with T element types sorted by atomic number,
  ordered pairs of them at ``x * T + y``, R the Slater-Koster integrals of the full-basis shell pairs
  a <= b (:class:`DeePTBLayout`) and K the same-l shell pairs of the onsite energies;
* JSON model (``to_json``, version 2, eV): ``{"version": 2, "unit": "eV", "common_options",
  "model_options", "model_params": {"hopping", "onsite", "overlap", "overlaponsite"}}`` with keys
  ``"A-B-3s-3p-0"`` (elements, shells by their basis labels, index of the integral), ``"A-3s-0"`` /
  ``"A-3s-4s-0"`` (onsite energies) and ``"A-B-3s-3p-0"`` for strain parameters;
* mix checkpoint: ``model_options`` with ``nnsk`` (or ``dftbsk``), ``embedding`` (se2) and
  ``prediction`` (sktb); a dftbsk mix reads its tables from its ``skdata`` (relative to the working
  folder, as DeePTB), not from the ``dftbsk.*`` entries of its state; the
  state holds the nnsk state under ``nnsk.`` and the networks under ``nnenv.``: the radial network
  ``embedding.descriptor.embedding_net``, the onsite head ``node_prediction_h`` and the bond head
  ``edge_prediction_h`` (residual blocks ``layers.K.layer.{in,out}_layer``, final ``out_layer``), whose
  bond factors are in DeePTB's column order of the sk integrals (:class:`DeePTBLayout`; eqtb's order
  is :func:`eqtb.models.mix.correction_slots`). DeePTB's overlap head ``edge_prediction_s`` and
  ``overlaponsite_param`` of ``nnenv`` are not read: DeePTB 2.2.1 discards their output.

:func:`from_deeptb` reads either into ``(options, state_dict)`` of eqtb -- validated
``common_options`` and ``model_options`` and the state of the eqtb model --, which is what an eqtb
checkpoint holds (:func:`eqtb.train.checkpoint.load_checkpoint` calls it). DeePTB's dftbsk models
alone (nothing trained in them: use eqtb's dftbsk) and E3 models are refused with a :class:`ModelError`
saying so.
"""

from __future__ import annotations

import re

import torch

from eqtb.basis import Basis, Shell
from eqtb.models.base import ModelError, family_class
from eqtb.models.mix import Mix
from eqtb.models.sk import SlaterKoster, onsite_pairs

__all__ = ["DeePTBLayout", "deeptb_kind", "from_deeptb", "is_deeptb_json", "load_nnsk_state", "model_from_deeptb"]


class DeePTBLayout:
    """Where DeePTB's sktb parameter tensors keep the integral of a full-basis shell pair.

    DeePTB orders the shell-pair *types* (s-s, s-p, s-d, p-p, p-d, d-d, ...; l_a <= l_b, only l
    present) and inside a type the pairs of shells (zeta_a, zeta_b) row-major -- over the upper
    triangle for the same l --, each with min(l_a, l_b) + 1 integrals."""

    def __init__(self, basis: Basis):
        self.basis = basis
        count = basis.max_count
        ls = sorted(count)
        self.start: dict[tuple[Shell, Shell], int] = {}
        offset = 0
        for i, la in enumerate(ls):
            for lb in ls[i:]:
                n = min(la, lb) + 1
                for za in range(1, count[la] + 1):
                    for zb in range(za if la == lb else 1, count[lb] + 1):
                        self.start[Shell(la, za), Shell(lb, zb)] = offset
                        offset += n
        self.n_integrals = offset
        self.onsite = {pair: k for k, pair in enumerate(onsite_pairs(basis))}

    def integral(self, a: Shell, b: Shell, m: int) -> int:
        """Column of integral |m| of the shell pair (a, b), a at or before b."""
        return self.start[a, b] + m


def deeptb_kind(obj: dict) -> str:
    """The model family of a DeePTB checkpoint dict: ``"nnsk"``, ``"mix"``, ``"dftbsk"``,
    ``"dftb2nnsk"`` (a fit of Slater-Koster tables, ``dptb skf2nnsk``), the embedding method
    (``"slem"``, ``"lem"``, ...) or ``"unknown"``."""
    if "hopping_params" in (obj.get("model_state_dict") or {}):
        return "dftb2nnsk"
    options = (obj.get("config") or obj).get("model_options") or {}
    sk = "nnsk" if options.get("nnsk") else "dftbsk" if options.get("dftbsk") else None
    embedding = options.get("embedding") or {}
    if sk:
        return "mix" if embedding else sk
    return embedding.get("method", "unknown")


def _refuse(kind: str) -> None:
    """ModelError saying why a DeePTB model of this kind is not converted (nothing for nnsk, mix)."""
    if kind in ("nnsk", "mix"):
        return
    if kind == "unknown":
        raise ModelError("its model_options name no model")
    if kind == "dftb2nnsk":
        raise ModelError("this is DeePTB's fit of Slater-Koster tables (skf2nnsk), not an nnsk model: load the "
                         "nnsk model it writes (nnsk_from_skf.pth, its to_pth)")
    raise ModelError(f"this is a DeePTB {kind} model: eqtb reads DeePTB's nnsk and mix models only "
                     "(its own families have other networks)")


def _dtype_name(dtype) -> str:
    name = str(dtype).split(".")[-1]
    if name not in ("float32", "float64"):
        raise ModelError(f"DeePTB model dtype {dtype!r} is not float32 or float64")
    return name


def _options(config: dict) -> dict:
    """eqtb ``{"common_options", "model_options"}`` (validated, defaults filled) of a DeePTB config."""
    common, model = config["common_options"], config["model_options"]
    if model.get("dftbsk"):  # dftbsk tables with an environment correction (a mix model)
        dftbsk = {k: v for k, v in model["dftbsk"].items() if k in ("skdata", "r_max")}
        options = {"dftbsk": dftbsk, "embedding": model["embedding"], "prediction": model["prediction"]}
        return _validated(common, options)
    nnsk = dict(model["nnsk"])
    nnsk["push"] = nnsk.get("push") or False  # DeePTB writes null when loading for prediction
    nnsk.setdefault("atomic_radius", "v1")  # DeePTB's default, absent from older checkpoints
    options = {"nnsk": nnsk}
    if model.get("embedding"):  # mix
        options.update(embedding=model["embedding"], prediction=model["prediction"])
    return _validated(common, options)


def _validated(common: dict, options: dict) -> dict:
    from eqtb.config import CommonOptions, ModelOptions

    try:
        return {"common_options": CommonOptions.model_validate({
                    "basis": common["basis"], "overlap": bool(common.get("overlap", False)),
                    "dtype": _dtype_name(common.get("dtype", "float32"))}).model_dump(),
                "model_options": ModelOptions.model_validate(options).model_dump()}
    except ValueError as err:
        raise ModelError(f"the DeePTB model's options do not validate: {err}") from None


def _empty_model(options: dict) -> SlaterKoster | Mix:
    """The float64 eqtb model of validated options (:func:`_options`), parameters to be filled."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return family_class(options["model_options"]).from_options(
            options["model_options"], Basis(options["common_options"]["basis"]),
            overlap=options["common_options"]["overlap"])
    finally:
        torch.set_default_dtype(default)


def _load_state(model: SlaterKoster, state: dict) -> SlaterKoster:
    """Fill ``model`` from a DeePTB nnsk ``model_state_dict`` (module docstring); eval mode."""
    basis = model.basis
    layout = DeePTBLayout(basis)
    T = basis.n_types

    def tensor(key, shape):
        if key not in state:
            raise ModelError(f"the DeePTB state has no {key!r}")
        value = torch.as_tensor(state[key], dtype=torch.float64).detach().cpu()
        if tuple(value.shape) != shape:
            raise ModelError(f"DeePTB state {key!r} has shape {tuple(value.shape)}, expected {shape} for the basis "
                             f"{basis.spec} and {model.form.name}")
        return value

    def fill(table, key, tie: bool):
        src = tensor(key, (T * T, layout.n_integrals, table.params.shape[1]))
        rows = []
        for x, y, a, b, m in table.keys:
            col = layout.integral(a, b, m)
            if tie and a == b and x != y:  # DeePTB averages the two directions before every use
                rows.append(0.5 * (src[x * T + y, col] + src[y * T + x, col]))
            else:
                rows.append(src[x * T + y, col])
        with torch.no_grad():
            table.params.copy_(torch.stack(rows))

    fill(model.hopping, "hopping_param", tie=True)
    if model.onsite_mode == "strain":
        fill(model.strain, "strain_param", tie=False)
    if model.onsite_params is not None:
        with torch.no_grad():
            model.onsite_params.copy_(tensor("onsite_param", tuple(model.onsite_params.shape)))
    if model.soc_params is not None:  # (T, full-basis shells, 1), DeePTB's layout and order
        with torch.no_grad():
            model.soc_params.copy_(tensor("soc_param", tuple(model.soc_params.shape)))
    if model.has_overlap:
        fill(model.overlap_hopping, "overlap_param", tie=True)
        with torch.no_grad():
            if "overlaponsite_param" in state:  # absent when every shell is alone of its l
                model.overlap_onsite.copy_(tensor("overlaponsite_param", (T, len(layout.onsite), 1))[..., 0])
            if "ovp_factor" in state:  # absent from checkpoints older than the overlap factor: 1
                model.ovp_factor.fill_(float(state["ovp_factor"]))
    return model.eval()


def load_nnsk_state(model: SlaterKoster, state: dict) -> SlaterKoster:
    """Fill an eqtb nnsk ``model`` from DeePTB's nnsk parameter tensors ``state`` (``hopping_param``,
    ``onsite_param``, ``strain_param``, ``overlap_param``, ... in DeePTB's layout, module docstring)
    -- also those of DeePTB's fits of DFTB tables (``dptb skf2nnsk``), whose basis and layout are an
    nnsk model's. Returns the model in eval mode; :class:`ModelError` for tensors that do not fit."""
    return _load_state(model, state)


def _json_state(model_json: dict, model: SlaterKoster) -> dict:
    """A DeePTB-layout state dict for ``model`` from the ``model_params`` of a JSON model (version 2,
    eV); entries the file does not hold are zero."""
    basis = model.basis
    layout = DeePTBLayout(basis)
    T = basis.n_types
    n_params = model.form.n_params
    types = {e.symbol: t for t, e in enumerate(basis.elements)}
    pos = {s: k for k, s in enumerate(basis.full_shells)}
    shell_of = {e.symbol: dict(zip(e.labels or (), e.shells)) for e in basis.elements}
    params = model_json["model_params"]

    def shell(element: str, label: str) -> Shell:
        if element not in shell_of or label not in shell_of[element]:
            raise ModelError(f"JSON model key names shell {label!r} of {element}, not in the basis {basis.spec}")
        return shell_of[element][label]

    def bond_table(entries: dict, strain: bool) -> torch.Tensor:
        out = torch.zeros(T * T, layout.n_integrals, n_params, dtype=torch.float64)
        for key, value in entries.items():
            parts = key.split("-")
            if len(parts) != 5:
                continue  # onsite energies written next to strain parameters
            x, y, la, lb, m = parts
            a, b = shell(x, la), shell(x if strain else y, lb)
            if pos[a] > pos[b]:  # stored with the reverse bond (strain: the transposed pair)
                a, b = b, a
                if not strain:
                    x, y = y, x
            col = layout.integral(a, b, int(m))
            out[types[x] * T + types[y], col] = torch.as_tensor(value, dtype=torch.float64)
            if not strain and a == b:  # one entry for both directions
                out[types[y] * T + types[x], col] = out[types[x] * T + types[y], col]
        return out

    def onsite_table(entries: dict, width: int) -> torch.Tensor:
        out = torch.zeros(T, len(layout.onsite), width, dtype=torch.float64)
        for key, value in entries.items():
            parts = key.split("-")
            if len(parts) not in (3, 4):
                continue
            element, la, lb, n = parts if len(parts) == 4 else (parts[0], parts[1], parts[1], parts[2])
            a, b = sorted((shell(element, la), shell(element, lb)), key=pos.get)
            out[types[element], layout.onsite[a, b] + int(n)] = torch.as_tensor(value, dtype=torch.float64)
        return out

    state = {"hopping_param": bond_table(params["hopping"], strain=False)}
    if model.onsite_mode == "strain":
        state["strain_param"] = bond_table(params.get("onsite", {}), strain=True)
    elif model.onsite_params is not None:
        state["onsite_param"] = onsite_table(params.get("onsite", {}), model.onsite_params.shape[-1])
    if model.has_overlap:
        if params.get("overlap") is None:
            raise ModelError("the JSON model has common_options.overlap but no overlap parameters")
        state["overlap_param"] = bond_table(params["overlap"], strain=False)
        state["overlaponsite_param"] = onsite_table(params.get("overlaponsite") or {}, 1)
    return state


#: DeePTB's names of the mix networks -> eqtb's (:class:`eqtb.models.mix.Mix`, :mod:`eqtb.nn.se2`)
_MIX_NETWORKS = {"nnenv.embedding.descriptor.embedding_net.": "descriptor.radial.",
                 "nnenv.node_prediction_h.": "onsite_head.", "nnenv.edge_prediction_h.": "bond_head."}
_MIX_LAYERS = [(r"layers\.(\d+)\.layer\.in_layer\.", r"blocks.\1.fc1."),
               (r"layers\.(\d+)\.layer\.out_layer\.", r"blocks.\1.fc2."),
               (r"out_layer\.linear\.", "out."), (r"out_layer\.in_layer\.", "out.fc1."),
               (r"out_layer\.out_layer\.", "out.fc2."), (r"out_layer\.", "out.")]
#: DeePTB mix state entries that DeePTB 2.2.1 computes with but discards (module docstring), and the
#: tables of a dftbsk mix, which eqtb reads from its skdata
_MIX_UNUSED = ("nnenv.edge_prediction_s.", "nnenv.overlaponsite_param", "dftbsk.")


def _load_mix_state(model: Mix, state: dict) -> Mix:
    """Fill ``model`` from a DeePTB mix ``model_state_dict`` (module docstring); eval mode."""
    if isinstance(model.sk, SlaterKoster):
        _load_state(model.nnsk, {k[len("nnsk."):]: v for k, v in state.items() if k.startswith("nnsk.")})
    base = "nnsk." if isinstance(model.sk, SlaterKoster) else "dftbsk."
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(base)}
    mapped = {}
    for key, value in state.items():
        prefix = next((p for p in _MIX_NETWORKS if key.startswith(p)), None)
        if prefix is None:
            if not key.startswith(("nnsk.", *_MIX_UNUSED)):
                raise ModelError(f"the DeePTB mix state has an entry eqtb does not know: {key!r}")
            continue
        rest = key[len(prefix):]
        for pattern, repl in _MIX_LAYERS:
            rest, n = re.subn(f"^{pattern}", repl, rest)
            if n:
                break
        mapped[_MIX_NETWORKS[prefix] + rest] = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if set(mapped) != set(own):
        raise ModelError(f"the DeePTB mix networks do not fit the model of its options: missing "
                         f"{sorted(set(own) - set(mapped))}, unexpected {sorted(set(mapped) - set(own))}")
    for key, value in mapped.items():
        if value.shape != own[key].shape:
            raise ModelError(f"DeePTB mix weight {key!r} has shape {tuple(value.shape)}, expected "
                             f"{tuple(own[key].shape)}")
    layout = DeePTBLayout(model.basis)
    columns = [layout.integral(a, b, m) for a, b, m in model.slots]
    for key in ("bond_head.out.weight", "bond_head.out.bias"):
        mapped[key] = mapped[key][columns]
    model.load_state_dict({**model.sk.state_dict(prefix=base), **mapped})
    return model.eval()


def is_deeptb_json(obj) -> bool:
    """True for the dict of a DeePTB JSON model (``version`` and ``model_params`` or v1 ``hopping``)."""
    return isinstance(obj, dict) and "version" in obj and ("model_params" in obj or "hopping" in obj)


def _from_json(model_json: dict) -> tuple[dict, SlaterKoster]:
    """(eqtb options, model) of a DeePTB JSON model."""
    version = model_json.get("version")
    if version != 2:
        raise ModelError(f"DeePTB JSON model version {version!r}: eqtb reads version 2 (version 1 files carry no "
                         "basis or model options)")
    if model_json.get("unit") != "eV":
        raise ModelError(f"DeePTB JSON model unit {model_json.get('unit')!r}: DeePTB 2.2 writes and reads eV only")
    kind = deeptb_kind(model_json)
    _refuse(kind)
    if kind != "nnsk":
        raise ModelError(f"a DeePTB JSON model of a {kind} model: DeePTB writes JSON models of nnsk only")
    options = _options(model_json)
    if options["model_options"]["nnsk"].get("soc"):
        raise ModelError("a DeePTB JSON model with spin-orbit coupling (soc): eqtb reads the soc strengths from "
                         "DeePTB checkpoints (.pth) only")
    if any(e.labels is None for e in Basis(options["common_options"]["basis"]).elements):
        raise ModelError("a DeePTB JSON model needs a basis of shell lists such as [\"3s\", \"3p\"]")
    model = _empty_model(options)
    return options, _load_state(model, _json_state(model_json, model))


def from_deeptb(obj: dict) -> tuple[dict, dict]:
    """``(config, state_dict)`` of the eqtb model of a DeePTB checkpoint dict or JSON model dict:
    ``config`` holds validated eqtb ``common_options`` and ``model_options``; ``state_dict`` is the
    eqtb model's (float64). :class:`ModelError` saying why for models eqtb cannot convert."""
    if is_deeptb_json(obj):
        options, model = _from_json(obj)
    else:
        options, model = model_from_deeptb(obj)
    return options, model.state_dict()


def model_from_deeptb(checkpoint: dict) -> tuple[dict, SlaterKoster | Mix]:
    """(eqtb options, model in float64 and eval mode) of a DeePTB nnsk or mix checkpoint dict
    (``config`` with ``common_options`` and ``model_options``, ``model_state_dict``)."""
    _refuse(deeptb_kind(checkpoint))
    options = _options(checkpoint["config"])
    model = _empty_model(options)
    load = _load_mix_state if isinstance(model, Mix) else _load_state
    return options, load(model, checkpoint["model_state_dict"])

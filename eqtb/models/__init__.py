"""Models of the operators, one family per module behind one interface (:mod:`eqtb.models.base`).

:func:`build_model` builds the family a validated configuration selects; :func:`from_checkpoint`
rebuilds a trained model from a checkpoint's contents (reading the file is
:func:`eqtb.predict.load_model`'s job). Importing this package registers every family:

* ``slem`` -- :mod:`eqtb.models.slem`, strictly local E(3)-equivariant message passing;
* ``lem`` -- :mod:`eqtb.models.lem`, semi-local E(3)-equivariant message passing (messages read
  the neighbours' features; receptive field (n_layers + 1) x r_max);
* ``nnsk`` -- :mod:`eqtb.models.sk`, Slater-Koster two-centre integrals;
* ``mix`` -- :mod:`eqtb.models.mix`, nnsk integrals corrected by the se2 environment of bonds and atoms;
* ``dftbsk`` -- :mod:`eqtb.models.dftbsk`, the Slater-Koster tables of DFTB ``.skf`` files.
* ``elct`` -- :mod:`eqtb.models.elct`, the equivariant local-coordinate transformer (DeepH-2's
  architecture: SO(2) convolutions in bond frames, multi-head vertex attention; semi-local, or
  strictly local with ``strictly_local``).
"""

from __future__ import annotations

import torch

from eqtb.basis import Basis
from eqtb.models import dftbsk, elct, lem, mix, sk, slem  # noqa: F401  (registers the families)
from eqtb.models.base import FAMILIES, ModelError, OperatorModel, check_revision, family_class, family_name

__all__ = ["FAMILIES", "ModelError", "OperatorModel", "build_model", "check_revision", "family_name",
           "from_checkpoint", "model_from_options"]


def build_model(config: dict, stats: dict | None = None, quantity: str = "hamiltonian") -> OperatorModel:
    """The model of a validated, default-filled configuration dict (:func:`eqtb.config.config_to_dict`:
    ``common_options`` give the basis, the overlap switch and the dtype the model is built in,
    ``model_options`` the family and its options); ``stats``: quantity -> OperatorStats for the
    output normalisation; ``quantity``: the main target."""
    common, options = config["common_options"], config["model_options"]
    cls = family_class(options)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if common["dtype"] == "float64" else torch.float32)
    try:  # in the config's dtype, so that constant tables are not rounded through float32
        return cls.from_options(options, Basis(common["basis"]), stats, quantity=quantity,
                                overlap=bool(common["overlap"]))
    finally:
        torch.set_default_dtype(default)


def model_from_options(model_options: dict, basis, stats: dict | None = None, quantity: str = "hamiltonian",
                       overlap: bool = False) -> OperatorModel:
    """The model of DeePTB-style ``model_options`` as a user writes them (validated and completed with
    the schema's defaults, :class:`eqtb.config.ModelOptions`) for ``basis``."""
    from eqtb.config import ModelOptions

    options = ModelOptions.model_validate(model_options).model_dump()
    return family_class(options).from_options(options, Basis(basis), stats, quantity=quantity, overlap=overlap)


def from_checkpoint(state: dict, device: str | torch.device = "cpu") -> OperatorModel:
    """The trained model held by a checkpoint dict (``config``, ``model_state_dict``, and the
    ``model_family`` and ``quantity`` it was trained for), in eval mode, in the config's dtype (built
    in that dtype, so that its constant tables are not rounded through float32)."""
    cfg = state["config"]
    name = state.get("model_family") or family_name(cfg["model_options"])
    if name not in FAMILIES:
        raise ModelError(f"the checkpoint holds a {name!r} model, which this eqtb does not have "
                         f"(it has {', '.join(sorted(FAMILIES))})")
    check_revision(FAMILIES[name], state)
    dtype = torch.float64 if cfg["common_options"]["dtype"] == "float64" else torch.float32
    model = build_model(cfg, None, state.get("quantity", "hamiltonian"))
    model.load_state_dict(state["model_state_dict"])
    return model.to(device=device, dtype=dtype).eval()

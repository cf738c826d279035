"""Models of the operators: config -> model in one place (:func:`build_model`), and loading a
trained model from a checkpoint (:func:`load_model`)."""

from __future__ import annotations

from pathlib import Path

import torch

from eqtb.basis import Basis
from eqtb.models.slem import SLEM, ModelError

SUPPORTED_EMBEDDINGS = ("slem",)


def build_model(model_options: dict, basis: Basis, overlap: bool = False, quantity: str = "hamiltonian",
                stats: dict | None = None) -> SLEM:
    """The model described by DeePTB-style ``model_options`` ({"embedding": {...}, "prediction":
    {...}}) for ``basis``; ``stats`` (quantity -> OperatorStats) sets the output normalisation."""
    emb = dict(model_options.get("embedding") or {})
    pred = dict(model_options.get("prediction") or {})
    method = emb.get("method", "se2")
    if method not in SUPPORTED_EMBEDDINGS or model_options.get("nnsk") or model_options.get("dftbsk"):
        raise ModelError(f"embedding method {method!r} is not supported yet (supported: {', '.join(SUPPORTED_EMBEDDINGS)})")
    if pred.get("method", "e3tb") != "e3tb":
        raise ModelError(f"prediction method {pred.get('method')!r} is not supported with {method} (use e3tb)")
    ratio = emb.get("res_update_ratios", 0.5)
    return SLEM(basis, emb["r_max"], emb["irreps_hidden"], int(emb["n_layers"]), float(emb["avg_num_neighbors"]),
                n_radial_basis=int(emb.get("n_radial_basis", 10)), cutoff_type=emb.get("cutoff_type", "polynomial"),
                cutoff_p=float(emb.get("PolynomialCutoff_p", 6)), latent_dim=int(emb.get("latent_dim", 64)),
                res_update_ratio=float(ratio), overlap=overlap,
                overlap_neurons=pred.get("neurons") or [64, 64], quantity=quantity, stats=stats)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SLEM:
    """A trained model from an eqtb checkpoint (``eqtb train`` output), in eval mode."""
    from eqtb.train.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    cfg = ck["config"]
    common = cfg["common_options"]
    dtype = torch.float64 if common.get("dtype") == "float64" else torch.float32
    model = build_model(cfg["model_options"], Basis(common["basis"]), bool(common.get("overlap")),
                        ck.get("quantity", "hamiltonian"))
    model.load_state_dict(ck["model_state_dict"])
    return model.to(device=device, dtype=dtype).eval()

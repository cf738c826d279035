"""DeePTB's own numbers for its mix models (nnsk + se2 environment correction): the references of
``tests/test_mix.py``.

Runs in DeePTB 2.2.1's environment (``bash ../shared/tools/reference-dptb/setup.sh``), not eqtb's,
and imports nothing from eqtb:

    OMP_NUM_THREADS=1 ~/.cache/eqtb-reference/dptb-venv/bin/python benchmarks/deeptb_mix_reference.py \
        ../shared/data/deeptb_examples tests/data/deeptb_reference

Writes to the output folder (README.md there describes the files):

* ``mix_<case>.npz`` for the trained mix checkpoints of :data:`CHECKPOINTS`: ``kpoints``
  (fractional) and ``eigenvalues`` (nk, nbands) in eV of an 8-atom MD frame of the silicon tutorials,
  as ``dptb run`` computes them (``build_model`` of the checkpoint, cutoffs r_max, er_max, oer_max from
  its model options, ``ElecStruCal.get_eigs``) with the model in float64;
* ``random_mix_<case>.pth`` / ``.npz``: DeePTB mix models with random nnsk parameters and random
  networks (the default initialisation, then every network weight moved by N(0, 0.3^2) so that the
  corrections are of order one) on a two-element basis with two shells of one l, and their H(k),
  S(k) (``hk``, ``sk``) at one generic k-point of ``random_struct.vasp`` (the displaced 4-atom BN cell
  of ``deeptb_nnsk_reference.py``, which must have been written first);
* ``mix_cases.json``: case -> model file, structure and frame.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from dptb.data import AtomicDataDict
from dptb.nn.build import build_model
from dptb.nn.deeptb import MIX
from dptb.nn.hr2hk import HR2HK
from dptb.postprocess.common import load_data_for_model
from dptb.postprocess.elec_struc_cal import ElecStruCal

SI_MD = "silicon/data/kpathmd100.0/xdat.traj"

#: case -> (checkpoint, structure, frame); k-points: every eighth of the dataset's kpoints.npy
CHECKPOINTS = {
    "mix_v22_md100": ("silicon/tutorial_v2.2/ref_ckpt/mix.md100.pth", SI_MD, 3),
    "mix_v21": ("silicon/tutorial_v2.1/ref_ckpts/mix/checkpoint/mix.iter200.pth", SI_MD, 7),
}

RANDOM_BASIS = {"B": ["2s", "2p", "d*"], "N": ["2s", "s*", "2p", "p*"]}
#: networks of every shape DeePTB's width lists make: radial [4, 8] ends in an MLP, [6, 12, 16] in a
#: linear layer after a widening block; prediction [6] is a single linear layer, [8, 8, 8, 8] two
#: blocks (narrowing, equal widths) and a linear layer
RANDOM_MODELS = {
    "poly2pow_uniform": {
        "nnsk": {"hopping": {"method": "poly2pow", "rs": 2.9, "w": 0.2}, "onsite": {"method": "uniform"},
                 "std": 0.5, "push": None},
        "embedding": {"method": "se2", "rs": 1.8, "rc": 3.3, "n_axis": 3,
                      "radial_net": {"neurons": [4, 8], "activation": "tanh", "if_batch_normalized": False}},
        "prediction": {"method": "sktb", "neurons": [6], "activation": "relu", "if_batch_normalized": False}},
    "powerlaw_strain": {
        "nnsk": {"hopping": {"method": "powerlaw", "rs": 2.6, "w": 0.1},
                 "onsite": {"method": "strain", "rs": 2.4, "w": 0.1}, "std": 0.5, "push": None},
        "embedding": {"method": "se2", "rs": 2.0, "rc": 3.6, "n_axis": None,
                      "radial_net": {"neurons": [6, 12, 16], "activation": "silu", "if_batch_normalized": False}},
        "prediction": {"method": "sktb", "neurons": [8, 8, 8, 8], "activation": "tanh",
                       "if_batch_normalized": False}},
}
RANDOM_K = [[0.1, 0.2, -0.3]]


def load(path: Path):
    """The DeePTB model of a checkpoint in float64, as ``dptb run`` builds it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    common = {**ckpt["config"]["common_options"], "dtype": "float64", "device": "cpu"}
    return build_model(str(path), common_options=common)


def random_models(out: Path) -> dict:
    atoms = read(out / "random_struct.vasp")
    cases = {}
    for name, options in RANDOM_MODELS.items():
        torch.manual_seed(11)
        model = MIX(**options, basis=RANDOM_BASIS, overlap=True, dtype=torch.float64, device="cpu").eval()
        with torch.no_grad():
            for p in model.nnenv.parameters():
                p.add_(0.3 * torch.randn_like(p))
        data = load_data_for_model(atoms, model)
        data[AtomicDataDict.KPOINT_KEY] = torch.nested.as_nested_tensor([torch.tensor(RANDOM_K)])
        data = model(data)
        hk = HR2HK(idp=model.idp, dtype=torch.float64)(dict(data))[AtomicDataDict.HAMILTONIAN_KEY]
        sk = HR2HK(idp=model.idp, dtype=torch.float64, edge_field=AtomicDataDict.EDGE_OVERLAP_KEY,
                   node_field=AtomicDataDict.NODE_OVERLAP_KEY, out_field=AtomicDataDict.OVERLAP_KEY,
                   overlap=True)(dict(data))[AtomicDataDict.OVERLAP_KEY]
        config = {"common_options": {"basis": RANDOM_BASIS, "overlap": True, "dtype": "float64", "device": "cpu"},
                  "model_options": options}
        torch.save({"config": config, "model_state_dict": model.state_dict()}, out / f"random_mix_{name}.pth")
        np.savez(out / f"random_mix_{name}.npz", kpoints=np.array(RANDOM_K), hk=hk.detach().numpy(),
                 sk=sk.detach().numpy())
        cases[f"random_mix_{name}"] = {"model": f"random_mix_{name}.pth", "structure": "random_struct.vasp",
                                       "frame": 0}
        print(f"random_mix_{name}: |H| max {hk.abs().max():.3f}", flush=True)
    return cases


def main(root: str, out: str) -> None:
    torch.set_default_dtype(torch.float64)  # DeePTB's mix networks follow the default dtype
    root, out = Path(root), Path(out)
    cases = {}
    for name, (ckpt, st, frame) in CHECKPOINTS.items():
        atoms = read(root / st, index=frame)
        kpoints = np.load(root / Path(st).parent / "kpoints.npy")[::8]
        _, eigs = ElecStruCal(load(root / ckpt), device="cpu").get_eigs(atoms, kpoints)
        np.savez(out / f"{name}.npz", kpoints=kpoints, eigenvalues=eigs)
        cases[name] = {"model": ckpt, "structure": st, "frame": frame}
        print(f"{name}: {eigs.shape} eV range {eigs.min():.3f} .. {eigs.max():.3f}", flush=True)
    cases.update(random_models(out))
    (out / "mix_cases.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])

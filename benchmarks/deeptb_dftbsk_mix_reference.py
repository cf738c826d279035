"""DeePTB's own numbers for a ``dftbsk`` + environment-correction (mix) model on the ``hBN_dftb``
tables: the reference of ``tests/test_deeptb_examples.py::test_deeptb_dftbsk_mix_checkpoint``.

Runs in DeePTB 2.2.1's environment (``bash ../shared/tools/reference-dptb/setup.sh``), not eqtb's,
and imports nothing from eqtb:

    OMP_NUM_THREADS=1 ~/.cache/eqtb-reference/dptb-venv/bin/python benchmarks/deeptb_dftbsk_mix_reference.py \
        ../shared/data/deeptb_examples tests/data/deeptb_reference

Writes to the output folder:

* ``dftbsk_mix_hbn.pth``: a DeePTB mix checkpoint (``config`` with ``common_options`` and
  ``model_options``, ``model_state_dict``) of ``hBN_dftb/input_dftb_env.json``'s model (basis
  ``["2s", "2p", "d*"]``, overlap, se2 ``rs`` 2.5 ``rc`` 5.0, DeePTB's default networks of that
  input) with ``dftbsk.r_max`` 5.0 (DeePTB requires it) and ``skdata`` ``"./slakos"`` (relative to
  the ``hBN_dftb`` folder, as the input gives it); the networks as DeePTB initialises them (seed 7),
  then every weight moved by N(0, 0.3^2) so that the corrections are of order one;
* ``dftbsk_mix_hbn.npz``: ``kpoints`` (fractional) and ``eigenvalues`` (nk, nbands) eV of the hBN
  cell of ``hBN_dftb/data/struct.vasp`` with every atom displaced by ~0.1 A (``positions``,
  ``cell``, ``numbers``, Angstrom), as ``dptb run`` computes them (r_max 5.0, er_max = rc).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from dptb.nn.deeptb import MIX
from dptb.postprocess.elec_struc_cal import ElecStruCal

BASIS = {"B": ["2s", "2p", "d*"], "N": ["2s", "2p", "d*"]}
OPTIONS = {"dftbsk": {"skdata": "./slakos", "r_max": 5.0},
           "embedding": {"method": "se2", "rs": 2.5, "rc": 5.0,
                         "radial_net": {"neurons": [40, 20, 10], "activation": "tanh", "if_batch_normalized": False},
                         "n_axis": None},
           "prediction": {"method": "sktb", "neurons": [50, 50, 50], "activation": "tanh",
                          "if_batch_normalized": False}}
KPOINTS = [[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0], [1 / 3, 1 / 3, 0], [0.1, 0.2, 0.3], [0.4, -0.2, 0.1]]


def main(root: str, out: str) -> None:
    torch.set_default_dtype(torch.float64)
    root, out = Path(root).resolve() / "hBN_dftb", Path(out).resolve()
    os.chdir(root)  # skdata "./slakos", as the input names it
    torch.manual_seed(7)
    model = MIX(**OPTIONS, basis=BASIS, overlap=True, dtype=torch.float64, device="cpu").eval()
    with torch.no_grad():
        for p in model.nnenv.parameters():
            p.add_(0.3 * torch.randn_like(p))
    atoms = read(root / "data" / "struct.vasp")
    atoms.positions += np.random.default_rng(3).normal(scale=0.1, size=atoms.positions.shape)
    kpoints = np.array(KPOINTS)
    _, eigs = ElecStruCal(model, device="cpu").get_eigs(atoms, kpoints, AtomicData_options={
        "r_max": 5.0, "er_max": 5.0, "pbc": True})
    config = {"common_options": {"basis": BASIS, "overlap": True, "dtype": "float64", "device": "cpu"},
              "model_options": OPTIONS}
    torch.save({"config": config, "model_state_dict": model.state_dict()}, out / "dftbsk_mix_hbn.pth")
    np.savez(out / "dftbsk_mix_hbn.npz", kpoints=kpoints, eigenvalues=eigs, positions=atoms.positions,
             cell=np.array(atoms.cell), numbers=atoms.numbers)
    print(f"bands {eigs.shape}: {eigs.min():.3f} .. {eigs.max():.3f} eV")


if __name__ == "__main__":
    main(*sys.argv[1:3])

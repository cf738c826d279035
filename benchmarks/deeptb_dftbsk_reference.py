"""DeePTB's own numbers for its ``dftbsk`` model on the ``hBN_dftb`` tables: the references of
``tests/test_dftbsk.py``.

Runs in DeePTB 2.2.1's environment (``bash ../shared/tools/reference-dptb/setup.sh``), not eqtb's,
and imports nothing from eqtb:

    OMP_NUM_THREADS=1 ~/.cache/eqtb-reference/dptb-venv/bin/python benchmarks/deeptb_dftbsk_reference.py \
        ../shared/data/deeptb_examples tests/data/deeptb_reference

Writes ``dftbsk_hbn.npz`` to the output folder (README.md there describes it), every model in
float64 with the overlap, built as ``dptb run`` builds a dftbsk model (``build_model`` with
``model_options.dftbsk`` = the ``slakos`` folder of ``hBN_dftb``), graphs at r_max = 5 A (the
``AtomicData_options`` of ``hBN_dftb/run/band.json``):

* ``kpoints`` (nk, 3) fractional and ``eigenvalues`` (nk, 8) eV: the bands of
  ``hBN_dftb/data/struct.vasp``, basis B, N ``["2s", "2p"]``, on band.json's path G M K G with
  10 points per segment;
* ``k_generic`` (1, 3) and, for two displaced cells, DeePTB's H(k), S(k) there (complex):
  ``hk_bn``, ``sk_bn`` -- the hBN cell, atoms displaced by ~0.1 A in all three directions,
  basis ``["2s", "2p", "d*"]`` (``input_dftb_env.json``'s; B and N have no d integrals);
  ``hk_si``, ``sk_si`` -- the 2-atom diamond Si cell displaced likewise, basis
  ``["3s", "3p", "3d"]`` with the ``Si-Si.skf`` d integrals. Matrices fix the sign conventions
  eigenvalues hide. The displaced structures are stored as ``positions_*``, ``cell_*``,
  ``numbers_*`` (Angstrom).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import read

from dptb.data import AtomicDataDict
from dptb.nn.build import build_model
from dptb.nn.hr2hk import HR2HK
from dptb.postprocess.common import load_data_for_model
from dptb.postprocess.elec_struc_cal import ElecStruCal

HBN_PATH = [[0, 0, 0], [0.5, 0, 0], [1 / 3, 1 / 3, 0], [0, 0, 0]]  # hBN_dftb/run/band.json (G M K G)
R_MAX = 5.0  # hBN_dftb/run/band.json, AtomicData_options.r_max
K_GENERIC = [[0.1, 0.2, -0.3]]


def path_kpoints(corners, per_segment: int) -> np.ndarray:
    """``per_segment`` points per segment of the corner list, the last corner included."""
    corners = np.asarray(corners, dtype=float)
    out = [a + (b - a) * t for a, b in zip(corners[:-1], corners[1:]) for t in np.arange(per_segment) / per_segment]
    return np.array(out + [corners[-1]])


def dftbsk(slakos: Path, basis: dict):
    common = {"basis": basis, "overlap": True, "dtype": "float64", "device": "cpu"}
    return build_model(None, model_options={"dftbsk": {"skdata": str(slakos), "r_max": R_MAX}}, common_options=common)


def matrices(model, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """DeePTB's H(k), S(k) of ``atoms`` at :data:`K_GENERIC`."""
    data = load_data_for_model(atoms, model, AtomicData_options={"r_max": R_MAX, "pbc": True})
    data[AtomicDataDict.KPOINT_KEY] = torch.nested.as_nested_tensor([torch.tensor(K_GENERIC)])
    data = model(data)
    hk = HR2HK(idp=model.idp, dtype=torch.float64)(dict(data))[AtomicDataDict.HAMILTONIAN_KEY]
    sk = HR2HK(idp=model.idp, dtype=torch.float64, edge_field=AtomicDataDict.EDGE_OVERLAP_KEY,
               node_field=AtomicDataDict.NODE_OVERLAP_KEY, out_field=AtomicDataDict.OVERLAP_KEY,
               overlap=True)(dict(data))[AtomicDataDict.OVERLAP_KEY]
    return hk.detach().numpy(), sk.detach().numpy()


def displaced(atoms: Atoms, seed: int) -> Atoms:
    out = atoms.copy()
    out.positions += np.random.default_rng(seed).normal(scale=0.1, size=out.positions.shape)
    return out


def main(root: str, out: str) -> None:
    torch.set_default_dtype(torch.float64)
    root, out = Path(root) / "hBN_dftb", Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slakos = root / "slakos"
    hbn = read(root / "data" / "struct.vasp")
    kpoints = path_kpoints(HBN_PATH, 10)
    sp = dftbsk(slakos, {"B": ["2s", "2p"], "N": ["2s", "2p"]})
    _, eigenvalues = ElecStruCal(sp, device="cpu").get_eigs(hbn, kpoints,
                                                            AtomicData_options={"r_max": R_MAX, "pbc": True})
    result = {"kpoints": kpoints, "eigenvalues": eigenvalues, "k_generic": np.array(K_GENERIC)}
    cells = {"bn": (displaced(hbn, 5), {"B": ["2s", "2p", "d*"], "N": ["2s", "2p", "d*"]}),
             "si": (displaced(bulk("Si", "diamond", a=5.43), 6), {"Si": ["3s", "3p", "3d"]})}
    for name, (atoms, basis) in cells.items():
        hk, sk = matrices(dftbsk(slakos, basis), atoms)
        result.update({f"hk_{name}": hk, f"sk_{name}": sk, f"positions_{name}": atoms.positions,
                       f"cell_{name}": np.array(atoms.cell), f"numbers_{name}": atoms.numbers})
        print(f"{name}: H(k) {hk.shape}, |H| max {np.abs(hk).max():.3f} eV", flush=True)
    np.savez(out / "dftbsk_hbn.npz", **result)
    print(f"bands {eigenvalues.shape}: {eigenvalues.min():.3f} .. {eigenvalues.max():.3f} eV")


if __name__ == "__main__":
    main(*sys.argv[1:3])

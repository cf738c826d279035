"""DeePTB's own numbers for its nnsk models: the references of ``tests/test_deeptb_checkpoints.py``.

Runs in DeePTB 2.2.1's environment (``bash ../shared/tools/reference-dptb/setup.sh``), not eqtb's,
and imports nothing from eqtb:

    OMP_NUM_THREADS=1 ~/.cache/eqtb-reference/dptb-venv/bin/python benchmarks/deeptb_nnsk_reference.py \
        ../shared/data/deeptb_examples tests/data/deeptb_reference

Writes to the output folder (README.md there describes the files):

* ``<case>.npz`` for every trained checkpoint of :data:`CHECKPOINTS` (and the JSON models of
  :data:`JSON_MODELS`, which DeePTB's ``to_json`` writes here first as ``<case>.json``):
  ``kpoints`` (fractional) and ``eigenvalues`` (nk, nbands) in eV, DeePTB's band energies of the
  case's structure, computed as ``dptb run`` does (``build_model`` of the file, graph cutoffs from
  the model options, ``ElecStruCal.get_eigs``) but in float64;
* ``random_<case>.pth`` / ``random_<case>.npz``: DeePTB nnsk models with random parameters for the
  forms and onsite modes no example checkpoint uses, and their H(k), S(k) (``hk``, ``sk``) at one
  generic k-point of a displaced 4-atom BN cell (``random_struct.vasp``) -- matrices, not
  eigenvalues, so that sign conventions are checked too;
* ``cases.json``: case -> model file, structure and frame.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.io import read

from dptb.data import AtomicDataDict
from dptb.nn.build import build_model
from dptb.nn.hr2hk import HR2HK
from dptb.nn.nnsk import NNSK
from dptb.postprocess.common import load_data_for_model
from dptb.postprocess.elec_struc_cal import ElecStruCal

SI_PATH = [[0, 0, 0], [0.5, 0, 0.5], [0.625, 0.25, 0.625], [0.375, 0.375, 0.75], [0, 0, 0], [0.5, 0.5, 0.5],
           [0.5, 0.25, 0.75], [0.5, 0, 0.5]]  # band.json of the silicon tutorials (G X U|K G L W X)
HBN_PATH = [[0, 0, 0], [0.5, 0, 0], [1 / 3, 1 / 3, 0], [0, 0, 0]]  # hBN/run/band.json (G M K G)
SI_PRIM = "silicon/data/silicon.vasp"
SI_MD = "silicon/data/kpathmd100.0/xdat.traj"
HBN = "hBN/data/struct.vasp"

#: case -> (checkpoint, structure, frame, k-path or "dataset" for the kpoints.npy next to the frames)
CHECKPOINTS = {
    "si_v22_tr1": ("silicon/tutorial_v2.2/ref_ckpt/nnsk_tr1.pth", SI_PRIM, 0, SI_PATH),
    "si_v22_md100": ("silicon/tutorial_v2.2/ref_ckpt/nnsk.md100.pth", SI_MD, 3, "dataset"),
    "si_v21_powerlaw": ("silicon/tutorial_v2.1/ref_ckpts/nnsk/checkpoint/nnsk.iter500.pth", SI_PRIM, 0, SI_PATH),
    "si_v21_strain": ("silicon/tutorial_v2.1/ref_ckpts/nnsk_2/checkpoint/nnsk.ep500.pth", SI_PRIM, 0, SI_PATH),
    "si_v21_push_rs": ("silicon/tutorial_v2.1/ref_ckpts/nnsk_3/checkpoint/nnsk.iter_rs5.000_w0.300.pth", SI_PRIM, 0,
                       SI_PATH),
    "si_v21_push_w": ("silicon/tutorial_v2.1/ref_ckpts/nnsk_4/checkpoint/nnsk.iter_rs5.000_w0.100.pth", SI_PRIM, 0,
                      SI_PATH),
    "si_v21_md100": ("silicon/tutorial_v2.1/ref_ckpts/nnsk_md100/checkpoint/nnsk.ep20.pth", SI_MD, 7, "dataset"),
    "hbn_first": ("hBN/ref_ckpts/first/checkpoint/nnsk.iter500.pth", HBN, 0, HBN_PATH),
    "hbn_condband": ("hBN/ref_ckpts/condband/checkpoint/nnsk.iter500.pth", HBN, 0, HBN_PATH),
    "hbn_strain": ("hBN/ref_ckpts/strain/checkpoint/nnsk.iter500.pth", HBN, 0, HBN_PATH),
    "hbn_final": ("hBN/ref_ckpts/final/checkpoint/nnsk.iter1000.pth", HBN, 0, HBN_PATH),
    "hbn_push_rs": ("hBN/ref_ckpts/push_rs/checkpoint/nnsk.iter_rs3.400_w0.300.pth", HBN, 0, HBN_PATH),
    "hbn_push_w": ("hBN/ref_ckpts/push_w/checkpoint/nnsk.iter_rs3.400_w0.210.pth", HBN, 0, HBN_PATH),
    "hbn_dftb_uniform": ("hBN_dftb/nnsk/checkpoint/nnsk.iter500.pth", HBN, 0, HBN_PATH),
    "hbn_dftb_overlap": ("hBN_dftb/nnskint_overlap/checkpoint/nnsk.iter500.pth", HBN, 0, HBN_PATH),
}
#: JSON models written by DeePTB's ``to_json`` from these checkpoint cases (complete: one shell per
#: l and no multi-element strain, which to_json does not write exactly)
JSON_MODELS = {"json_si_tr1": "si_v22_tr1", "json_si_strain": "si_v21_strain", "json_hbn_overlap": "hbn_dftb_overlap"}

#: forms and onsite modes no example checkpoint covers (random parameters), on a basis with two
#: shells of one l (N: s*, 2s and 2p, p*)
RANDOM_BASIS = {"B": ["2s", "2p", "d*"], "N": ["2s", "s*", "2p", "p*"]}
RANDOM_MODELS = {
    "poly2pow_strain": {"hopping": {"method": "poly2pow", "rs": 2.9, "w": 0.2},
                        "onsite": {"method": "strain", "rs": 2.6, "w": 0.1}},
    "nrl1_nrl": {"hopping": {"method": "NRL1", "rs": 3.0, "w": 0.2},
                 "onsite": {"method": "NRL", "rs": 3.2, "w": 0.2, "lda": 1.3}},
    "vartang96_uniform_cov": {"hopping": {"method": "varTang96", "rs": {"B": 2.7, "N": 3.1}, "w": 0.1},
                              "onsite": {"method": "uniform"}, "atomic_radius": "cov"},
    "poly4exp_noref": {"hopping": {"method": "poly4exp", "rs": {"B-B": 2.8, "B-N": 2.9, "N-N": 3.0}, "w": 0.15},
                       "onsite": {"method": "uniform_noref"}},
}
RANDOM_K = [[0.1, 0.2, -0.3]]


def path_kpoints(corners, per_segment: int = 6) -> np.ndarray:
    """``per_segment`` points per segment of the corner list, the last corner included."""
    corners = np.asarray(corners, dtype=float)
    out = [a + (b - a) * t for a, b in zip(corners[:-1], corners[1:]) for t in np.arange(per_segment) / per_segment]
    return np.array(out + [corners[-1]])


def structure(root: Path, name: str, frame: int):
    return read(root / name, index=frame) if name.endswith(".traj") else read(root / name)


def load(model_file: Path):
    """The DeePTB model of a checkpoint or JSON model, in float64, as ``dptb run`` builds it. A
    checkpoint older than the overlap factor (no ``ovp_factor``, which DeePTB 2.2.1 itself refuses)
    is loaded non-strictly, with the factor at its initial 1."""
    if model_file.suffix == ".json":
        common = json.loads(model_file.read_text())["common_options"]
        return build_model(str(model_file), common_options={**common, "dtype": "float64", "device": "cpu"})
    ckpt = torch.load(model_file, map_location="cpu", weights_only=False)
    common = {**ckpt["config"]["common_options"], "dtype": "float64", "device": "cpu"}
    if ckpt["config"]["common_options"].get("overlap") and "ovp_factor" not in ckpt["model_state_dict"]:
        nnsk = {k: v for k, v in ckpt["config"]["model_options"]["nnsk"].items() if k != "push"}
        model = NNSK(**nnsk, **common)
        model.load_state_dict(ckpt["model_state_dict"], strict=False)
        return model
    return build_model(str(model_file), common_options=common)


def eigenvalues(model_file: Path, atoms, kpoints: np.ndarray) -> np.ndarray:
    """DeePTB's band energies (eV) of ``atoms`` at ``kpoints``, as ``dptb run`` computes them, in float64."""
    _, eigs = ElecStruCal(load(model_file), device="cpu").get_eigs(atoms, kpoints)
    return eigs


def random_models(out: Path) -> dict:
    atoms = bulk("BN", "zincblende", a=3.62).repeat((1, 1, 2))
    atoms.positions += np.random.default_rng(1).normal(scale=0.08, size=atoms.positions.shape)
    atoms.write(out / "random_struct.vasp", format="vasp", direct=True)
    cases = {}
    for name, options in RANDOM_MODELS.items():
        torch.manual_seed(7)
        model = NNSK(basis=RANDOM_BASIS, overlap=True, std=0.5, dtype=torch.float64, **options).eval()
        data = load_data_for_model(atoms, model)
        data[AtomicDataDict.KPOINT_KEY] = torch.nested.as_nested_tensor([torch.tensor(RANDOM_K)])
        data = model(data)
        hk = HR2HK(idp=model.idp, dtype=torch.float64)(dict(data))[AtomicDataDict.HAMILTONIAN_KEY]
        sk = HR2HK(idp=model.idp, dtype=torch.float64, edge_field=AtomicDataDict.EDGE_OVERLAP_KEY,
                   node_field=AtomicDataDict.NODE_OVERLAP_KEY, out_field=AtomicDataDict.OVERLAP_KEY,
                   overlap=True)(dict(data))[AtomicDataDict.OVERLAP_KEY]
        model.save(str(out / f"random_{name}.pth"))
        np.savez(out / f"random_{name}.npz", kpoints=np.array(RANDOM_K), hk=hk.detach().numpy(),
                 sk=sk.detach().numpy())
        cases[f"random_{name}"] = {"model": f"random_{name}.pth", "structure": "random_struct.vasp", "frame": 0}
        print(f"random_{name}: |H| max {hk.abs().max():.3f}", flush=True)
    return cases


def main(root: str, out: str) -> None:
    torch.set_default_dtype(torch.float64)
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = {}
    models = {name: (root / ckpt, st, frame, path) for name, (ckpt, st, frame, path) in CHECKPOINTS.items()}
    for name, source in JSON_MODELS.items():
        ckpt, st, frame, path = models[source]
        (out / f"{name}.json").write_text(json.dumps(load(ckpt).to_json(), indent=1))
        models[name] = (out / f"{name}.json", st, frame, path)
    for name, (model_file, st, frame, path) in models.items():
        atoms = structure(root, st, frame)
        if isinstance(path, str):  # the dataset's own k-points, every eighth
            kpoints = np.load(root / Path(st).parent / "kpoints.npy")[::8]
        else:
            kpoints = path_kpoints(path)
        eigs = eigenvalues(model_file, atoms, kpoints)
        np.savez(out / f"{name}.npz", kpoints=kpoints, eigenvalues=eigs)
        shown = model_file.name if model_file.parent == out else str(model_file.relative_to(root))
        cases[name] = {"model": shown, "structure": st, "frame": frame}
        print(f"{name}: {eigs.shape} eV range {eigs.min():.3f} .. {eigs.max():.3f}", flush=True)
    cases.update(random_models(out))
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Training samples: dataset frames turned into model inputs and aligned target blocks.

A :class:`Sample` is one frame: its :class:`~eqtb.models.inputs.ModelInputs` (the bond graph at
the model's cutoff) and, for each quantity, the target onsite blocks (N, F, F) and the target
blocks of exactly the graph's bonds (E, F, F), in eV (H) or dimensionless (S, D). Bonds of the
graph that the dataset does not store (e.g. overlap blocks beyond the orbitals' range) get zero
targets; bonds the dataset stores beyond the cutoff are not modelled and are counted in
``Sample.dropped``. Geometry that depends only on the structure is cached on the inputs by the
model on first use, so each epoch after the first reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eqtb.basis import Basis
from eqtb.bonds import match_bonds
from eqtb.data.folder import DatasetError, TrajectoryFolder, find_folders
from eqtb.models.inputs import ModelInputs
from eqtb.structure import Structure, build_graph
from eqtb.operator import Operator

@dataclass
class Sample:
    name: str
    structure: Structure
    inputs: ModelInputs
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    missing: dict[str, int] = field(default_factory=dict)  # graph bonds absent from the data
    dropped: dict[str, int] = field(default_factory=dict)  # data bonds beyond the cutoff
    kpoints: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None


def make_sample(name: str, structure: Structure, operators: dict[str, Operator], basis: Basis, r_max,
                dtype: torch.dtype = torch.float32) -> Sample:
    """Graph at ``r_max`` plus targets aligned to its bonds."""
    structure.check_distances()
    graph = build_graph(structure, r_max, basis.symbols)
    inputs = ModelInputs.from_graph(graph, basis, dtype)
    targets, missing, dropped = {}, {}, {}
    for q, op in operators.items():
        if op is None:
            continue
        idx = match_bonds((op.i, op.j, op.R), (graph.i, graph.j, graph.R), structure.natoms)
        blocks = np.zeros((graph.n_edges, basis.full_norb, basis.full_norb))
        ok = idx >= 0
        blocks[ok] = op.offsite[idx[ok]].real
        onsite = op.onsite.real
        if not (np.isfinite(onsite).all() and np.isfinite(blocks).all()):
            raise DatasetError(f"{name}: the {q} blocks contain NaN or infinite values")
        targets[q] = (torch.as_tensor(onsite, dtype=dtype), torch.as_tensor(blocks, dtype=dtype))
        missing[q] = int((~ok).sum())
        dropped[q] = int(len(op.i) - ok.sum())
    return Sample(name, structure, inputs, targets, missing, dropped)


def load_samples(root: str | Path, prefix: str, basis: Basis, r_max, quantities: list[str],
                 separator: str = ".", kind: str = "DefaultDataset", eigenvalues: bool = False,
                 dtype: torch.dtype = torch.float32, progress: bool = False) -> list[Sample]:
    """Every frame of a dataset (folders ``root/prefix<sep>*`` or an LMDB) as samples."""
    from tqdm import tqdm

    samples: list[Sample] = []
    if kind == "LMDBDataset":
        from eqtb.data.lmdb import LMDBDataset

        ds = LMDBDataset.from_root(root, prefix or "data", separator, basis=basis)
        for k in tqdm(range(len(ds)), desc=f"reading {root}", disable=not progress, leave=False):
            fr = ds[k]
            ops = {q: getattr(fr, q) for q in quantities}
            for q, op in ops.items():
                if op is None:
                    raise DatasetError(f"{root}: frame {k} has no {q} blocks")
            samples.append(make_sample(f"{Path(root).name}[{k}]", fr.structure, ops, basis, r_max, dtype))
        return samples
    if kind != "DefaultDataset":
        raise DatasetError(f"data type {kind!r} is not supported yet (use DefaultDataset or LMDBDataset)")
    folders = find_folders(root, prefix, separator)
    for path in tqdm(folders, desc=f"reading {root}", disable=not progress, leave=False):
        tf = TrajectoryFolder(path, basis=basis)
        for q in quantities:
            if tf.block_file(q) is None:
                raise DatasetError(f"{path}: no {q} file, but the config asks for it")
        kpts = tf.kpoints() if eigenvalues else None
        eigs = tf.eigenvalues() if eigenvalues else None
        if eigenvalues and eigs is None:
            raise DatasetError(f"{path}: get_eigenvalues is true but there is no eigenvalues.npy")
        for k in range(tf.nframes):
            st = tf.structure(k)
            ops = {q: tf.operator(q, k, structure=st) for q in quantities}
            s = make_sample(f"{path.name}[{k}]", st, ops, basis, r_max, dtype)
            if eigenvalues:
                s.kpoints = kpts if kpts is None or kpts.ndim == 2 else kpts[k]
                s.eigenvalues = eigs[k] if eigs.ndim == 3 else eigs
            samples.append(s)
    return samples

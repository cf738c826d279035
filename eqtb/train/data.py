"""Training samples: dataset frames turned into model inputs, aligned target blocks and band data.

A :class:`Sample` is one frame: its :class:`~eqtb.models.inputs.ModelInputs` (the bond graph at
the model's cutoff) and, for each quantity loaded, the target onsite blocks (N, F, F) and the
target blocks of exactly the graph's bonds (E, F, F), in eV (H) or dimensionless (S, D). Bonds of
the graph that the dataset does not store (e.g. overlap blocks beyond the orbitals' range) get zero
targets; bonds the dataset stores beyond the cutoff are not modelled and are counted in
``Sample.dropped``. Geometry that depends only on the structure is cached on the inputs by the
model on first use, so each epoch after the first reuses it.

With eigenvalues (``get_eigenvalues``), a sample also holds the reference band energies of its
frame (``kpoints`` (nk, 3) fractional, ``eigenvalues`` (nk, nb) eV, absolute as stored) and a
:class:`BandTarget`: what an eigenvalue loss needs on the device (the Bloch layout of the graph,
the phases of the k-points, the reference energies as a tensor, the folder's ``bandinfo``). A
dataset holding only structures and eigenvalues loads with no target blocks at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eqtb.basis import Basis
from eqtb.bonds import match_bonds
from eqtb.data.folder import BandInfo, DatasetError, TrajectoryFolder, find_folders
from eqtb.models.inputs import ModelInputs, collate
from eqtb.operator import Operator
from eqtb.structure import Structure, build_graph
from eqtb.tb.bloch import BlochLayout


@dataclass
class BandTarget:
    """Reference bands of one sample on the device. ``eigenvalues`` (nk, nb): eV, absolute (the
    loss aligns them); ``kweights`` (nk,): the ``bandinfo.weight`` of each k-point; ``phases``:
    :meth:`eqtb.tb.bloch.BlochLayout.phases` of the k-points; ``source``: the file the reference
    and its ``bandinfo`` come from (for error messages)."""

    info: BandInfo
    layout: BlochLayout
    eigenvalues: torch.Tensor
    kweights: torch.Tensor
    phases: tuple[torch.Tensor, torch.Tensor]
    source: str

    def to(self, device, dtype: torch.dtype) -> "BandTarget":
        """Copy on ``device`` with floating tensors in ``dtype`` (the model's)."""
        return BandTarget(self.info, self.layout.to(device), self.eigenvalues.to(device, dtype),
                          self.kweights.to(device, dtype), tuple(p.to(device, dtype) for p in self.phases),
                          self.source)


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
    bands: BandTarget | None = None
    bandinfo: BandInfo | None = None  # of the folder the eigenvalues come from (eqtb test's band window)


@dataclass
class Batch:
    """Samples trained together: their inputs collated into one graph, their target blocks
    concatenated in the same order (quantity -> (onsite, offsite))."""

    samples: list[Sample]
    inputs: ModelInputs
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]]


def make_batch(samples: list[Sample]) -> Batch:
    """One :class:`Batch` of ``samples`` (which share their loaded quantities)."""
    inputs = collate([s.inputs for s in samples])
    targets = {q: tuple(torch.cat([s.targets[q][k] for s in samples]) for k in range(2)) for q in samples[0].targets}
    return Batch(samples, inputs, targets)


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


def attach_bands(sample: Sample, basis: Basis, kpoints: np.ndarray, eigenvalues: np.ndarray, info: BandInfo | None,
                 source: str) -> None:
    """Give ``sample`` its reference bands: ``kpoints`` (nk, 3) fractional, ``eigenvalues`` (nk, nb)
    eV, the ``bandinfo`` of its folder (None: the whole band range, no energy window) read from
    ``source``. Checks ``bandinfo.weight`` against the number of k-points."""
    kpoints = np.asarray(kpoints, dtype=np.float64).reshape(-1, 3)
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    if eigenvalues.ndim != 2 or eigenvalues.shape[0] != len(kpoints):
        raise DatasetError(f"{source}: eigenvalues of shape {eigenvalues.shape} do not match {len(kpoints)} k-points")
    if not np.isfinite(eigenvalues).all():
        raise DatasetError(f"{source}: the eigenvalues contain NaN or infinite values")
    info = info if info is not None else BandInfo()
    w = np.broadcast_to(np.asarray(info.weight, dtype=np.float64), (len(kpoints),)) \
        if np.ndim(info.weight) == 0 or len(info.weight) == len(kpoints) else None
    if w is None:
        raise DatasetError(f"{source}: bandinfo.weight has {len(info.weight)} values but there are "
                           f"{len(kpoints)} k-points")
    inp = sample.inputs
    layout = BlochLayout(basis, inp.types, inp.i, inp.j, inp.R)
    sample.kpoints, sample.eigenvalues = kpoints, eigenvalues
    sample.bands = BandTarget(info, layout, torch.as_tensor(eigenvalues), torch.as_tensor(w.copy()),
                              layout.phases(kpoints), source)


def load_samples(root: str | Path, prefix: str, basis: Basis, r_max, quantities: list[str],
                 separator: str = ".", kind: str = "DefaultDataset", eigenvalues: bool = False,
                 dtype: torch.dtype = torch.float32, progress: bool = False) -> list[Sample]:
    """Every frame of a dataset (folders ``root/prefix<sep>*`` or an LMDB) as samples, with the
    target blocks of ``quantities`` (possibly none) and, when ``eigenvalues``, the reference bands
    (:func:`attach_bands`): ``eigenvalues.npy`` and ``kpoints.npy`` of each folder with its
    ``info.json`` ``bandinfo``, or the ``eigenvalue``/``kpoint`` arrays of each LMDB entry (an LMDB
    stores no ``bandinfo``: the whole band range is fitted, no energy window)."""
    from tqdm import tqdm

    samples: list[Sample] = []
    if kind == "LMDBDataset":
        from eqtb.data.lmdb import LMDBDataset

        ds = LMDBDataset.from_root(root, prefix or "data", separator, basis=basis, eigenvalues=eigenvalues)
        for k in tqdm(range(len(ds)), desc=f"reading {root}", disable=not progress, leave=False):
            fr = ds[k]
            ops = {q: getattr(fr, q) for q in quantities}
            for q, op in ops.items():
                if op is None:
                    raise DatasetError(f"{fr.source}: no {q} blocks")
            s = make_sample(f"{Path(root).name}[{k}]", fr.structure, ops, basis, r_max, dtype)
            if eigenvalues:
                if fr.eigenvalues is None:
                    raise DatasetError(f"{fr.source}: get_eigenvalues is true but the entry has no 'eigenvalue' "
                                       f"and 'kpoint' arrays")
                attach_bands(s, basis, fr.kpoints, fr.eigenvalues, None, fr.source)
            samples.append(s)
        return samples
    if kind != "DefaultDataset":
        raise DatasetError(f"data type {kind!r} is not supported yet (use DefaultDataset or LMDBDataset)")
    folders = find_folders(root, prefix, separator)
    for path in tqdm(folders, desc=f"reading {root}", disable=not progress, leave=False):
        tf = TrajectoryFolder(path, basis=basis)
        for q in quantities:
            if tf.block_file(q) is None:
                raise DatasetError(f"{path}: no {q} file, but the config asks for it")
        eigs = tf.eigenvalues() if eigenvalues else None
        if eigenvalues and eigs is None:
            raise DatasetError(f"{path / 'eigenvalues.npy'}: missing, but get_eigenvalues is true")
        kpts = tf.kpoints() if eigenvalues else None
        for k in range(tf.nframes):
            st = tf.structure(k)
            ops = {q: tf.operator(q, k, structure=st) for q in quantities}
            s = make_sample(f"{path.name}[{k}]", st, ops, basis, r_max, dtype)
            if eigenvalues:
                attach_bands(s, basis, kpts if kpts.ndim == 2 else kpts[k], eigs[k], tf.info.bandinfo,
                             f"{path / 'eigenvalues.npy'} frame {k} (bandinfo: {tf.info_source})")
            samples.append(s)
    return samples

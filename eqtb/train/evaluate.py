"""Errors of a trained model on a dataset: the engine of ``eqtb test``.

:func:`evaluate` predicts every sample (:class:`eqtb.train.data.Sample`) under ``torch.no_grad``
and accumulates exact block errors with :class:`eqtb.metrics.BlockErrors` for the model's quantity
(H or D) and, when the model has the overlap head, for S: onsite blocks of every atom and off-site
blocks of the bonds of the model's graph (the canonical half, each bond once; dataset bonds beyond
the model's cutoff are not predicted and not counted). With ``bands=True`` it also compares the
eigenvalues of the predicted operators at the dataset's k-points with the dataset's eigenvalues
(:func:`eqtb.metrics.band_errors`, with no shift and with the mean shift removed), and the same
errors for the bands of the samples' exact target blocks on the model's graph: the cutoff floor at
the model's r_max (:mod:`eqtb.tb.cutoff` measures it at other cutoffs before training).

:func:`load_test_samples` reads trajectory folders as samples for a model: the model defines the
basis and the cutoff, and a folder whose ``basis.dat`` disagrees with the model's basis is an
:class:`EvaluationError` naming that file.

Units: block errors as in :mod:`eqtb.metrics` (H in meV, S and D in units of 1e-3), band errors in
meV, energies and windows in eV.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from eqtb.basis import Basis
from eqtb.data.folder import DATA_SUFFIXES, DatasetError, TrajectoryFolder, data_folders, read_fermi_level
from eqtb.metrics import BlockErrors, band_errors
from eqtb.models.assembly import to_operators
from eqtb.quantities import DATA_FLAGS
from eqtb.tb.spectrum import SpectrumError, band_energies, fermi_level, n_electrons
from eqtb.train.data import Sample, make_sample

__all__ = ["ATTRIBUTIONS", "BAND_ALIGNS", "EvaluationError", "TestSet", "basis_mismatch", "evaluate", "load_test_samples",
           "load_test_set", "read_test_config", "reference_fermi"]

#: the band alignments reported by :func:`evaluate` (see :func:`eqtb.metrics.band_errors`)
BAND_ALIGNS = ("none", "mean")


class EvaluationError(ValueError):
    """A model and a dataset that cannot be compared (different basis, missing labels)."""


# ------------------------------------------------------------------------------------ loading
def basis_mismatch(data: Basis, model: Basis) -> str | None:
    """Why a dataset basis does not fit the model's basis, or None when every element of the
    dataset has exactly the model's shells (the model may know more elements)."""
    for e in data.elements:
        if e.symbol not in model.symbols:
            return f"element {e.symbol} is not in the model's basis {model.spec}"
        if model[e.symbol].shell_l != e.shell_l:
            return (f"{e.symbol} has the basis {e.string!r} here but {model[e.symbol].string!r} in the model "
                    f"(model basis {model.spec})")
    return None


def load_test_samples(folders: Sequence[str | Path], basis: Basis, r_max, quantities: Sequence[str],
                      optional: Sequence[str] = (), eigenvalues: bool = False,
                      dtype: torch.dtype = torch.float32, progress: bool | None = False,
                      model_source: str = "the model") -> tuple[list[Sample], list[float | None]]:
    """Every frame of the trajectory ``folders`` as samples on the graph at ``r_max`` in ``basis``
    (the model's), plus the Fermi level of each sample (``fermi_level.json`` of its folder, else None).

    ``quantities`` must have a block file in every folder, except band-energy folders (no blocks,
    ``eigenvalues.npy``) when ``eigenvalues`` is set; ``optional`` ones are loaded where present.
    ``eigenvalues``: also load ``kpoints.npy`` / ``eigenvalues.npy`` (required then). ``progress``:
    a tqdm bar (None: only on a terminal). Raises
    :class:`EvaluationError` naming ``basis.dat`` when a folder's basis differs from ``basis``."""
    from tqdm import tqdm

    basis = Basis(basis)
    samples: list[Sample] = []
    fermis: list[float | None] = []
    bar = tqdm([Path(f) for f in folders], desc="reading", leave=False,
               disable=None if progress is None else not progress)
    for path in bar:
        tf = TrajectoryFolder(path)
        if tf.basis is not None:
            why = basis_mismatch(tf.basis, basis)
            if why:
                raise EvaluationError(f"{path / 'basis.dat'}: the dataset's basis does not fit {model_source}: {why}")
        tf.basis = basis
        missing = [q for q in quantities if tf.block_file(q) is None]
        if missing and not (eigenvalues and (path / "eigenvalues.npy").is_file()):
            raise DatasetError(f"{path}: no {missing[0]} file to test the model against"
                               + (" (a band-energy folder: test its bands with --bands)"
                                  if (path / "eigenvalues.npy").is_file() else ""))
        wanted = [q for q in list(quantities) + [q for q in optional if q not in quantities]
                  if tf.block_file(q) is not None]
        kpts = eigs = None
        if eigenvalues:
            eigs = tf.eigenvalues()
            if eigs is None:
                raise DatasetError(f"{path}: no eigenvalues.npy (needed for band errors)")
            kpts = tf.kpoints()
        fermi = read_fermi_level(path)
        for k in range(tf.nframes):
            st = tf.structure(k)
            ops = {q: tf.operator(q, k, structure=st) for q in wanted}
            s = make_sample(f"{path.name}[{k}]", st, ops, basis, r_max, dtype)
            if eigenvalues:
                s.kpoints = kpts if kpts.ndim == 2 else kpts[k]
                s.eigenvalues = eigs[k]
                s.bandinfo = tf.info.bandinfo
            samples.append(s)
            fermis.append(fermi)
    return samples, fermis


def read_test_config(path: str | Path):
    """A ``dptb test`` config (:class:`eqtb.config.TestConfig`), or failing that a training config
    (:class:`eqtb.config.TrainConfig`). When neither validates, the problems of the kind the file
    looks like are raised: the training kind when the test reading found keys only a training
    config has (``model_options``, ``train_options``, ``data_options.train`` ...), else the test kind."""
    from eqtb.config import ConfigError, load_config

    try:
        return load_config(path, kind="test")
    except ConfigError as err:
        test_err = err
    try:
        return load_config(path, kind="train")
    except ConfigError as train_err:
        train_only = ("model_options", "train_options", "data_options.train", "data_options.validation",
                      "data_options.reference")
        looks_train = any(k in train_only and p.startswith("unknown key") for k, p in test_err.problems)
        raise (train_err if looks_train else test_err) from None


class TestSet:
    """The samples of an ``eqtb test`` input, with where they came from."""

    __test__ = False  # not a pytest class

    def __init__(self, samples: list[Sample], fermi_levels: list[float | None], source: str,
                 dataset: str | None, folders: list[str], quantities: list[str]):
        self.samples, self.fermi_levels = samples, fermi_levels
        self.source, self.dataset, self.folders, self.quantities = source, dataset, folders, quantities

    def describe(self) -> dict:
        """JSON-able description (source, data set key, folders, quantities, bonds beyond the cutoff)."""
        dropped: dict[str, int] = {}
        for s in self.samples:
            for q, n in s.dropped.items():
                dropped[q] = dropped.get(q, 0) + n
        return {"source": self.source, "set": self.dataset, "folders": self.folders,
                "quantities": self.quantities, "bonds_beyond_cutoff": dropped}




def load_test_set(path: str | Path, model, prefix: str | None = None, bands: bool = False,
                  progress: bool | None = False, model_source: str = "the model") -> TestSet:
    """The samples ``eqtb test`` compares ``model`` with. ``path``: a configuration file (test
    config: ``data_options.test``; training config: ``data_options.validation``, else
    ``data_options.train``), a trajectory folder, a dataset root holding one trajectory folder, or a
    dataset root with ``prefix`` (folders ``<prefix>.*``). The model defines basis and cutoff; a
    config whose ``common_options.basis`` or a folder whose ``basis.dat`` differs is an
    :class:`EvaluationError`. Loaded: the model's quantity (required), the overlap where present when
    the model predicts it or ``bands`` needs it, eigenvalues when ``bands`` (or a config's
    ``get_eigenvalues``)."""
    from eqtb.config import TestConfig, resolve_root

    path = Path(path)
    basis = Basis(model.basis)
    main = model.quantity
    overlap_wanted = bool(getattr(model, "has_overlap", False)) or bands
    dtype = _model_device_dtype(model)[1] or torch.float32
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such configuration file or dataset folder")
    if path.is_file():
        if prefix is not None:
            raise EvaluationError(f"{path}: --prefix applies to a dataset root, not to a configuration file")
        cfg = read_test_config(path)
        cfg_basis = Basis(cfg.common_options.basis)
        if cfg_basis != basis:
            raise EvaluationError(f"{path}: common_options.basis {cfg_basis.spec} differs from the basis of "
                                  f"{model_source} {basis.spec}")
        do = cfg.data_options
        which = "test" if isinstance(cfg, TestConfig) else ("validation" if do.validation is not None else "train")
        ds = getattr(do, which)
        key = f"data_options.{which}"
        if not getattr(ds, DATA_FLAGS[main]):
            raise EvaluationError(f"{path}: {key}.{DATA_FLAGS[main]} is false, but the model predicts the {main}")
        bands = bands or ds.get_eigenvalues
        optional = ["overlap"] if ds.get_overlap and (overlap_wanted or bands) else []
        root = resolve_root(ds.root, cfg.path, f"{key}.root")
        if ds.type == "LMDBDataset":
            from eqtb.train.data import load_samples

            samples = load_samples(root, ds.prefix, basis, model.r_max, [main] + optional, ds.separator, ds.type,
                                   eigenvalues=bands, dtype=dtype, progress=progress)
            return TestSet(samples, [None] * len(samples), str(path), key, [str(root)], [main] + optional)
        if ds.type != "DefaultDataset":
            raise DatasetError(f"{path}: {key}.type {ds.type!r} is not supported yet (use DefaultDataset or "
                               f"LMDBDataset)")
        if ds.prefix is None:
            folders = data_folders(root)
            if not folders:
                raise DatasetError(f"{root}: no trajectory folder here ({key}.root)")
        else:
            from eqtb.data.folder import find_folders

            folders = find_folders(root, ds.prefix, ds.separator)
        samples, fermis = load_test_samples(folders, basis, model.r_max, [main] + optional, eigenvalues=bands,
                                            dtype=dtype, progress=progress, model_source=model_source)
        return TestSet(samples, fermis, str(path), key, [str(f) for f in folders], [main] + optional)
    # a dataset folder
    if prefix is not None:
        from eqtb.data.folder import find_folders

        folders = find_folders(path, prefix)
    elif any(f.is_file() and f.name.endswith(DATA_SUFFIXES) for f in path.iterdir()):
        folders = [path]
    else:
        folders = data_folders(path)
        if not folders:
            raise DatasetError(f"{path}: no trajectory folder here (none holds .dat/.traj/.h5 files)")
        if len(folders) > 1:
            names = ", ".join(f.name for f in folders[:5]) + (" ..." if len(folders) > 5 else "")
            raise EvaluationError(f"{path}: dataset root holds {len(folders)} trajectory folders ({names}); "
                                  f"give one of them or --prefix")
    optional = ["overlap"] if overlap_wanted else []
    samples, fermis = load_test_samples(folders, basis, model.r_max, [main], optional, eigenvalues=bands,
                                        dtype=dtype, progress=progress, model_source=model_source)
    loaded = [main] + [q for q in optional if any(q in s.targets for s in samples)]
    return TestSet(samples, fermis, str(path), None, [str(f) for f in folders], loaded)


# ------------------------------------------------------------------------------------ bands
def reference_fermi(structure, eigenvalues, nel_atom: Mapping[str, float]) -> float:
    """Fermi level (eV) of reference eigenvalues (nk, nb) from the valence electron count: the
    middle of the gap when the bands are filled up to a gap on these k-points, else the chemical
    potential with equal k-point weights (spin degeneracy 2)."""
    eigs = np.asarray(eigenvalues, dtype=np.float64)
    res = fermi_level(eigs, np.full(len(eigs), 1.0 / len(eigs)), n_electrons(structure, nel_atom))
    return float(res.midgap if res.midgap is not None else res.mu)


def band_window(sample, n_reference: int, n_predicted: int) -> tuple[int, int]:
    """Bands ``[lo, hi)`` of a sample that ``eqtb test`` compares: its folder's ``bandinfo``
    ``[band_min, band_max)`` (the bands an eigenvalue loss fits; DeePTB's band datasets hold many
    more conduction bands than a minimal basis describes), clipped to the bands both sides have;
    the lowest ``min(n_reference, n_predicted)`` when the folder has no ``bandinfo``."""
    hi = min(n_reference, n_predicted)
    info = getattr(sample, "bandinfo", None)
    if info is None:
        return 0, hi
    if info.band_max is not None:
        hi = min(hi, info.band_max)
    return min(info.band_min, hi), hi


class _BandAccumulator:
    """Sums of band errors over frames (exact means over all (frame, k, band) entries)."""

    def __init__(self):
        self.abs_sum = 0.0
        self.count = 0
        self.max_abs = 0.0
        self.band_sum = np.zeros(0)
        self.band_count = np.zeros(0, dtype=np.int64)
        self.win = [0.0, 0, 0.0]  # abs sum, count, max
        self.shifts: list[float] = []

    def add(self, r: dict) -> None:
        nk, nb = r["count"] // len(r["per_band_mae"]), len(r["per_band_mae"])
        self.abs_sum += r["mae"] * r["count"]
        self.count += r["count"]
        self.max_abs = max(self.max_abs, r["max_abs"])
        if nb > len(self.band_sum):
            self.band_sum = np.pad(self.band_sum, (0, nb - len(self.band_sum)))
            self.band_count = np.pad(self.band_count, (0, nb - len(self.band_count)))
        self.band_sum[:nb] += np.asarray(r["per_band_mae"]) * nk
        self.band_count[:nb] += nk
        self.shifts.append(r["shift"])
        w = r.get("window")
        if w and w["count"]:
            self.win[0] += w["mae"] * w["count"]
            self.win[1] += w["count"]
            self.win[2] = max(self.win[2], w["max_abs"])

    def result(self, window: float | None) -> dict | None:
        if not self.count:
            return None
        out = {"mae": self.abs_sum / self.count, "max_abs": self.max_abs, "count": self.count,
               "per_band_mae": [float(x) for x in self.band_sum / np.maximum(self.band_count, 1)],
               "shift_mean": float(np.mean(self.shifts))}
        if window is not None:
            n = self.win[1]
            out["window"] = {"window": window, "count": n, "mae": self.win[0] / n if n else None,
                             "max_abs": self.win[2] if n else None}
        return out


def _align_rows(results: dict, prefix: str = "") -> list[str]:
    """One table row per alignment of :data:`BAND_ALIGNS`: MAE, max |err| and window MAE (meV)."""
    rows = []
    for align in BAND_ALIGNS:
        r = results[align]
        if r is None:
            rows.append(f"{prefix + align:<22}{'-':>15}{'-':>16}{'-':>15}")
            continue
        w = r.get("window")
        win = f"{w['mae']:>15.4f}" if w and w["mae"] is not None else f"{'-':>15}"
        rows.append(f"{prefix + align:<22}{r['mae']:>15.4f}{r['max_abs']:>16.4f}{win}")
    return rows


def _band_table(b: dict) -> str:
    title = (f"bands: errors in meV ({b['frames']} frame(s), up to {b['nbands']} bands, overlap from "
             f"{b['overlap']})")
    lines = [title]
    head = f"{'alignment':<22}{'MAE (all)':>15}{'max |err|':>16}{'MAE (window)':>15}"
    lines += [head, "-" * len(head)]
    lines += _align_rows(b["align"])
    if b["window"] is None:
        lines.append("(no window: no Fermi level known; give nel_atom or a fermi_level.json)")
    else:
        lines.append(f"window: reference energies within E_F +- {b['window']:g} eV "
                     f"({b['frames_with_fermi']} frame(s) with a Fermi level)")
    floor = b.get("floor")
    if floor is not None:
        lines.append(f"cutoff floor: the dataset's exact blocks on the model's bonds (r_max {floor['r_max']}), the "
                     f"least error of any model at this cutoff:")
        lines += _align_rows(floor["align"], "floor ")
        for f in floor["failed"]:
            lines.append(f"floor failed: {f['frame']}: {f['error']}")
    attribution = b.get("attribution")
    if attribution is not None:
        lines.append("attribution: the predicted bands with the exact onsite (off-site) blocks of the model's "
                     "quantity put in, the rest predicted:")
        for kind in ATTRIBUTIONS:
            lines += _align_rows(attribution[kind], kind.replace("exact_", "exact ") + " ")
    for f in b["failed"]:
        lines.append(f"failed: {f['frame']}: {f['error']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ evaluate
def _model_device_dtype(model) -> tuple[torch.device, torch.dtype | None]:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), None)


#: the hybrid operators of ``evaluate(..., attribute=True)``: the predicted ones with the exact
#: blocks of one kind of the model's quantity put in
ATTRIBUTIONS = ("exact_onsite", "exact_offsite")


def evaluate(model, samples: Sequence[Sample], progress: bool | None = False, bands: bool = False,
             window: float | None = 1.0, fermi_levels: Sequence[float | None] | None = None,
             nel_atom: Mapping[str, float] | None = None, attribute: bool = False) -> dict:
    """Errors of ``model`` on ``samples``.

    ``model``: a trained model (:func:`eqtb.predict.load_model`) with ``basis``, ``quantity``,
    ``has_overlap`` and ``model(inputs) -> {quantity: (onsite, offsite), "overlap": ...}``; the
    samples must be built in its basis at its cutoff (:func:`load_test_samples`). Blocks of a quantity
    a sample has no targets for are skipped.

    ``bands``: also compare eigenvalues on samples with ``kpoints`` and ``eigenvalues``: the bands
    :func:`band_window` chooses (the folder's ``bandinfo`` window, else the lowest
    ``min(nb_reference, norb)``) of the predicted H with the predicted S (the model's overlap
    head; else the sample's overlap targets; else S = 1) against the reference, aligned with
    ``"none"`` and ``"mean"`` (:data:`BAND_ALIGNS`). ``window`` (eV): errors also over the entries
    whose reference energy is within E_F +- window, E_F from ``fermi_levels`` (one per sample, None
    where unknown) or, failing that, from ``nel_atom`` (:func:`reference_fermi`). A frame whose
    eigenproblem fails (predicted S not positive definite) is listed under ``"failed"``.

    Returns ``{"frames": n, "blocks": BlockErrors.result(), "table": text, "bands": {...}}`` (no
    ``"bands"`` unless requested); ``bands`` holds ``unit``, ``frames`` (compared), ``nbands`` (most
    bands compared in a frame; ``per_band_mae`` averages each band over the frames that have it),
    ``overlap`` (``"model"``, ``"dataset"``, ``"identity"``), ``window``, ``frames_with_fermi``,
    ``failed`` and ``align`` -> {``"none"``, ``"mean"``} -> ``{"mae", "max_abs", "count",
    "per_band_mae", "shift_mean", "window": {"mae", "max_abs", "count"}}`` (meV; None when no frame
    was compared), and ``floor``: the cutoff floor, ``{"r_max", "failed", "align"}`` with ``align`` as
    above for the bands of the samples' exact target blocks (the model's quantity, and the dataset's
    overlap when loaded, else S = 1) on the model's bonds: the dataset's blocks truncated at the
    model's cutoff, the least band error any model with this cutoff can reach (the bonds beyond it
    are not predicted). ``attribute``: also ``bands["attribution"]`` -> {``"exact_onsite"``,
    ``"exact_offsite"``} -> ``align`` as above, the errors of the bands with the predicted blocks of
    one kind (onsite, off-site) of the model's quantity replaced by the exact ones, everything else
    (the other kind, S) predicted: how much of the band error each kind of block costs (two more
    eigenproblems per frame). ``progress``: a tqdm bar (None: only on a terminal)."""
    from tqdm import tqdm

    if fermi_levels is not None and len(fermi_levels) != len(samples):
        raise ValueError(f"fermi_levels has {len(fermi_levels)} entries for {len(samples)} samples")
    basis = Basis(model.basis)
    quantities = list(model.quantities)
    device, dtype = _model_device_dtype(model)
    errors = BlockErrors(basis)
    acc = {a: _BandAccumulator() for a in BAND_ALIGNS}
    floor_acc = {a: _BandAccumulator() for a in BAND_ALIGNS}
    attr_acc = {kind: {a: _BandAccumulator() for a in BAND_ALIGNS} for kind in ATTRIBUTIONS}
    failed, floor_failed, compared, with_fermi, nbands, s_from = [], [], 0, 0, None, set()
    if hasattr(model, "eval"):
        model.eval()
    with torch.no_grad():
        bar = tqdm(samples, desc="testing", leave=False, disable=None if progress is None else not progress)
        for n, s in enumerate(bar):
            inputs = s.inputs
            if inputs.vectors.device != device or (dtype is not None and inputs.vectors.dtype != dtype):
                inputs = inputs.to(device, dtype)
            pred = model(inputs)
            types = inputs.types
            for q in quantities:
                if q not in s.targets:
                    continue
                (p_on, p_off), (t_on, t_off) = pred[q], s.targets[q]
                errors.add(q, p_on, t_on, types)
                errors.add(q, p_off, t_off, types[inputs.i], types[inputs.j])
            if not (bands and s.kpoints is not None and s.eigenvalues is not None):
                continue
            ops = to_operators(s.structure, basis, inputs.i, inputs.j, inputs.R, pred)
            H = ops[model.quantity]
            if "overlap" in ops:
                S, src = ops["overlap"], "model"
            elif "overlap" in s.targets:
                S, src = to_operators(s.structure, basis, inputs.i, inputs.j, inputs.R,
                                      {"overlap": s.targets["overlap"]})["overlap"], "dataset"
            else:
                S, src = None, "identity"
            ref = np.asarray(s.eigenvalues, dtype=np.float64)
            try:
                eigs = band_energies(H, S, s.kpoints)
            except SpectrumError as exc:
                failed.append({"frame": s.name, "error": str(exc)})
                continue
            lo, nb = band_window(s, ref.shape[1], eigs.shape[1])
            ref, eigs = ref[:, lo:], eigs[:, lo:]
            nb -= lo
            nbands = nb if nbands is None else max(nbands, nb)
            fermi = fermi_levels[n] if fermi_levels is not None else None
            if fermi is None and nel_atom:
                fermi = reference_fermi(s.structure, ref, nel_atom)
            use_window = window is not None and fermi is not None
            with_fermi += use_window
            for a in BAND_ALIGNS:
                acc[a].add(band_errors(eigs[:, :nb], ref[:, :nb], window if use_window else None,
                                       fermi if use_window else None, align=a))
            compared += 1
            s_from.add(src)
            if attribute and model.quantity in s.targets:
                (p_on, p_off), (t_on, t_off) = pred[model.quantity], s.targets[model.quantity]
                for kind, blocks in zip(ATTRIBUTIONS, ((t_on, p_off), (p_on, t_off))):
                    hybrid = to_operators(s.structure, basis, inputs.i, inputs.j, inputs.R, {model.quantity: blocks})
                    hybrid_eigs = band_energies(hybrid[model.quantity], S, s.kpoints)  # S solved for the model
                    for a in BAND_ALIGNS:
                        attr_acc[kind][a].add(band_errors(hybrid_eigs[:, :nb], ref[:, :nb], window if use_window
                                                          else None, fermi if use_window else None, align=a))
            if model.quantity in s.targets:  # the cutoff floor: the exact blocks of the model's bonds
                exact = to_operators(s.structure, basis, inputs.i, inputs.j, inputs.R,
                                     {q: s.targets[q] for q in (model.quantity, "overlap") if q in s.targets})
                try:
                    floor_eigs = band_energies(exact[model.quantity], exact.get("overlap"), s.kpoints)
                except SpectrumError as exc:
                    floor_failed.append({"frame": s.name, "error": str(exc)})
                    continue
                for a in BAND_ALIGNS:
                    floor_acc[a].add(band_errors(floor_eigs[:, :nb], ref[:, :nb], window if use_window else None,
                                                 fermi if use_window else None, align=a))
    out = {"frames": len(samples), "blocks": errors.result()}
    table = errors.table()
    if bands:
        win = window if with_fermi else None
        out["bands"] = {"unit": "meV", "frames": compared, "nbands": nbands,
                        "overlap": "/".join(sorted(s_from)) or None, "window": win,
                        "frames_with_fermi": with_fermi, "failed": failed,
                        "align": {a: acc[a].result(win) for a in BAND_ALIGNS},
                        "floor": {"r_max": getattr(model, "r_max", None), "failed": floor_failed,
                                  "align": {a: floor_acc[a].result(win) for a in BAND_ALIGNS}}}
        if attribute:
            out["bands"]["attribution"] = {kind: {a: attr_acc[kind][a].result(win) for a in BAND_ALIGNS}
                                           for kind in ATTRIBUTIONS}
        table += "\n\n" + _band_table(out["bands"])
    out["table"] = table
    return out

"""Training and test configurations: DeePTB's input JSON, read unchanged, validated, defaults filled.

The schema follows DeePTB v2.2 (``dptb/utils/argcheck.py``, shared/spec/FORMATS.md section 5):
unknown keys at any level are errors, missing optional keys get DeePTB's defaults, and keys
whose value selects a variant (``embedding.method``, ``prediction.method``, ``optimizer.type``,
``lr_scheduler.type``, ``loss_options.*.method``) decide which other keys are allowed.

Units: lengths (``r_max``, ``rs``, ``rc``, ``er_max``, ``oer_max``) in Angstrom; learning rates
and loss weights are plain numbers; ``max_time`` and ``max_cpu_time`` in seconds.

eqtb-only additions (DeePTB would reject them; eqtb's own files may use them):

* ``train_options.max_time``: wall-time limit in seconds (``null`` = none); training stops
  cleanly, with a checkpoint, once it is exceeded.
* ``train_options.max_cpu_time``: the same limit on the CPU time of the training process (seconds
  of ``time.process_time``, all its threads; one thread's time with ``OMP_NUM_THREADS=1``): a
  budget that does not depend on how busy a shared machine is.
* ``train_options.lr_scheduler.warmup_epochs`` (any scheduler type): epochs of linear
  learning-rate warm-up before the scheduler takes over (0 = none).

Deliberate differences from DeePTB v2.2 (all accept more, none reject a DeePTB file):

* ``AdamW`` defaults to ``weight_decay`` 0.01 (PyTorch's default; DeePTB reuses Adam's 0).
* ``data_options.r_max``/``er_max``/``oer_max`` may also be per-element dicts.
* In a test config, ``test_options`` and its ``loss_options`` may be omitted.

Every problem is reported as a :class:`ConfigError` (a ``ValueError``) whose lines read
``<file>: <dotted.key.path>: <problem>``, e.g.
``input.json: train_options.optimizer.lrr: unknown key; did you mean 'lr'?``.

No key acts silently: :func:`load_config` emits one :class:`ConfigWarning` per key the file sets
that has no effect in eqtb (see :func:`ignored_keys`), e.g.
``input.json: model_options.embedding.res_update: ignored by eqtb (eqtb always uses residual
updates, weighted by res_update_ratios)``.

Entry points: :func:`load_config` (file -> :class:`TrainConfig` or :class:`TestConfig`),
:func:`config_to_dict` / :func:`config_from_dict` (plain dicts, e.g. for checkpoints),
:func:`ignored_keys`, :func:`resolve_root`, :func:`basis_from_config`.
"""

import copy
import functools
import json
import operator
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from eqtb.basis import Basis, BasisError
from eqtb.hints import did_you_mean

__all__ = [
    "CommonOptions", "ConfigError", "ConfigWarning", "DataOptions", "DataSetOptions", "LossOptions",
    "ModelOptions", "TestConfig", "TestDataOptions", "TestOptions", "TrainConfig", "TrainOptions",
    "apply_overrides", "basis_from_config", "config_from_dict", "config_to_dict", "ignored_keys",
    "load_config", "resolve_root",
]


# ====================================================================================== errors
class ConfigError(ValueError):
    """A configuration that cannot be used. ``problems`` lists ``(dotted key path, problem)``
    pairs (the path may be empty); the message has one line ``<source>: <path>: <problem>``
    per problem."""

    def __init__(self, source: str, key: str = "", problem: str = "", *,
                 problems: list[tuple[str, str]] | None = None):
        self.source = str(source)
        self.problems = list(problems) if problems is not None else [(key, problem)]
        lines = [": ".join(p for p in (self.source, k, msg) if p) for k, msg in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return _rebuild_config_error, (self.source, self.problems)


def _rebuild_config_error(source: str, problems: list[tuple[str, str]]) -> ConfigError:
    return ConfigError(source, problems=problems)


class ConfigWarning(UserWarning):
    """A key of a configuration file that eqtb accepts but that has no effect (see
    :func:`ignored_keys`)."""


def _fail(*items: tuple[str, str]) -> PydanticCustomError:
    """A validation error carrying eqtb's own problem texts: ``(key relative to the object being
    validated, problem)`` pairs, translated by :func:`_problems`."""
    return PydanticCustomError("eqtb", "{summary}", {"summary": items[0][1], "items": list(items)})


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ===================================================================================== helpers
class _Options(BaseModel):
    """Base of every options object: strict types (JSON types, an int is accepted for a float),
    and an unknown key is an error with a suggestion. When dumped, the variant key (``method`` /
    ``type``) comes first and the optional sections named in ``_absent_if_none`` are left out
    when not given (DeePTB rejects them as null)."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())
    _absent_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict:
        out = handler(self)
        for name in self._absent_if_none:
            if name in out and out[name] is None:
                del out[name]
        for tag in ("type", "method"):
            if tag in out:
                out = {tag: out.pop(tag), **out}
        return out

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                raise _fail(*[(k, "unknown key" + (did_you_mean(k, allowed)
                                                    or f"; allowed keys: {', '.join(allowed)}"))
                              for k in unknown])
        return data


def _variant(key: str, *models: type[BaseModel], default: str | None = None):
    """A union of option models selected by the value of ``key`` (``method`` or ``type``), each
    model's own default for ``key`` being its tag; ``default`` is used when the key is absent."""
    tags = [m.model_fields[key].default for m in models]

    def pick(value: Any) -> Any:
        if isinstance(value, dict):
            return value.get(key, default)
        return getattr(value, key, None)

    members = functools.reduce(operator.or_, (Annotated[m, Tag(t)] for m, t in zip(models, tags)))
    return Annotated[members, Discriminator(
        pick, custom_error_type="eqtb_variant", custom_error_message=f"{key}:{','.join(tags)}")]


_IRREP_TERM = re.compile(r"\s*(\d+\s*x\s*)?\d+[eoy]\s*")


def _irreps(value: str) -> str:
    """e3nn irreps string such as ``"32x0e+32x1o+16x2e"`` (syntax only)."""
    if not value.strip() or not all(_IRREP_TERM.fullmatch(t) for t in value.split("+")):
        raise _fail(("", f'expected an e3nn irreps string like "32x0e+32x1o+16x2e", got {_show(value)}'))
    return value


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Irreps = Annotated[str, AfterValidator(_irreps)]
#: a cutoff in Angstrom: one radius, or a dict element -> radius (pair cutoff (rA + rB) / 2) or
#: ``"A-B"`` -> radius (see :func:`eqtb.structure.pair_cutoffs`)
Cutoff = PosFloat | dict[str, PosFloat]
FloatOrList = float | list[float]

#: defaults of the cutoff-floor report (``eqtb cutoff``, :mod:`eqtb.tb.cutoff`): candidate cutoffs
#: (Angstrom), target band MAE (meV), half width of the energy window around E_F (eV), frames
CUTOFF_RMAX = (5.0, 6.0, 7.0, 8.0, 10.0, 12.0)
CUTOFF_TARGET_MEV = 20.0
CUTOFF_WINDOW = 5.0
CUTOFF_FRAMES = 3


# ============================================================================== common_options
class CommonOptions(_Options):
    """``common_options``. ``basis``: element -> basis string (``"2s2p1d"``) or shell list
    (``["3s", "3p", "d*"]``), parsed by :class:`eqtb.basis.Basis`; ``overlap``: also model S;
    ``device``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``dtype`` of the networks; ``seed``."""

    basis: dict[str, str | list[str]]
    overlap: bool = False
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    seed: NonNegInt = 3982377700

    @field_validator("basis")
    @classmethod
    def _basis(cls, value: dict) -> dict:
        try:
            Basis(value)
        except BasisError as exc:
            raise _fail(("", str(exc))) from None
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise _fail(("", f"expected \"cpu\", \"cuda\" or \"cuda:N\", got {_show(value)}"))
        return value


# =============================================================================== model_options
class RadialNet(_Options):
    """The radial MLP of ``se2``."""

    neurons: list[PosInt]
    activation: str = "tanh"
    if_batch_normalized: bool = False


class Se2Embedding(_Options):
    """DeePMD-style ``se2`` descriptor (for ``sktb`` predictions): smooth cutoff from ``rs`` to
    ``rc`` (Angstrom; ``rc`` is the environment radius ``er_max``)."""

    method: Literal["se2"] = "se2"
    rs: PosFloat
    rc: PosFloat
    radial_net: RadialNet
    n_axis: PosInt | None = None


class SlemEmbedding(_Options):
    """Strictly local equivariant message passing. ``r_max`` (Angstrom, one radius or per
    element) is both the model's cutoff and the data cutoff; ``avg_num_neighbors`` normalises the
    neighbour sums; ``n_radial_basis`` radial functions cut off smoothly (``cutoff_type``,
    polynomial order ``PolynomialCutoff_p``)."""

    method: Literal["slem"] = "slem"
    irreps_hidden: Irreps
    avg_num_neighbors: PosFloat
    r_max: Cutoff
    n_layers: PosInt
    n_radial_basis: PosInt = 10
    PolynomialCutoff_p: PosInt = 6
    cutoff_type: Literal["polynomial", "cosine"] = "polynomial"
    env_embed_multiplicity: PosInt = 10
    tp_radial_emb: bool = False
    tp_radial_channels: list[PosInt] = [32]
    latent_channels: list[PosInt] = [32]
    latent_dim: PosInt = 64
    res_update: bool = True
    res_update_ratios: Annotated[float, Field(ge=0, le=1)] = 0.5
    res_update_ratios_learnable: bool = False
    universal: bool = False


class LemEmbedding(SlemEmbedding):
    """Local equivariant message passing (semi-local node update); the keys of ``slem``."""

    method: Literal["lem"] = "lem"


class TrinityEmbedding(SlemEmbedding):
    """``slem`` plus a Slater-Koster-type two-body head (``only2b``: train that head alone)."""

    method: Literal["trinity"] = "trinity"
    only2b: bool = False


class DeephE3Embedding(_Options):
    """DeepH-E3 (schema only: DeePTB v2.2 cannot train it). ``rc`` in Angstrom."""

    method: Literal["deeph-e3"] = "deeph-e3"
    irreps_embed: Irreps = "64x0e"
    irreps_mid: Irreps = "64x0e+32x1o+16x2e+8x3o+8x4e+4x5o"
    lmax: NonNegInt = 3
    n_basis: PosInt = 128
    rc: PosFloat
    n_layer: PosInt = 3


class ElctEmbedding(_Options):
    """ELCT, eqtb's equivariant local-coordinate transformer (DeepH-2's architecture,
    :mod:`eqtb.models.elct`). ``r_max`` (Angstrom, one radius or per element / bond type) is the
    model's and the data's cutoff; ``n_layers`` ELCT blocks of ``n_heads`` attention heads with
    ``head_dim`` invariant features each; ``latent_dim`` edge scalars from ``n_radial_basis`` radial
    functions cut off smoothly (``cutoff_type``, polynomial order ``PolynomialCutoff_p``).
    ``strictly_local``: vertex attention reads no neighbour's hidden features (receptive field r_max,
    chunked inference); default: semi-local, ``n_layers`` x r_max."""

    method: Literal["elct"] = "elct"
    irreps_hidden: Irreps
    r_max: Cutoff
    n_layers: PosInt = 3
    n_heads: PosInt = 4
    head_dim: PosInt = 16
    strictly_local: bool = False
    latent_dim: PosInt = 64
    n_radial_basis: PosInt = 10
    cutoff_type: Literal["polynomial", "cosine"] = "polynomial"
    PolynomialCutoff_p: PosInt = 6


Embedding = _variant("method", Se2Embedding, SlemEmbedding, LemEmbedding, TrinityEmbedding,
                     DeephE3Embedding, ElctEmbedding, default="se2")


class SktbPrediction(_Options):
    """Slater-Koster integrals from an MLP (``neurons``: hidden layer widths)."""

    method: Literal["sktb"] = "sktb"
    neurons: list[PosInt]
    activation: str = "tanh"
    if_batch_normalized: bool = False


class E3tbPrediction(_Options):
    """Equivariant blocks from the embedding's features, scaled and shifted by dataset
    statistics. ``neurons``: the MLP of the SK-style overlap head (filled with [64, 64] when
    ``common_options.overlap`` is true and it is null)."""

    method: Literal["e3tb"] = "e3tb"
    scales_trainable: bool = False
    shifts_trainable: bool = False
    neurons: list[PosInt] | None = None
    activation: str = "tanh"
    if_batch_normalized: bool = False


Prediction = _variant("method", SktbPrediction, E3tbPrediction)

_ONSITE_METHODS = ("none", "uniform", "uniform_noref", "strain", "NRL")
_HOPPING_METHODS = ("powerlaw", "varTang96", "custom", "poly1pow", "poly2pow", "poly3pow",
                    "poly4pow", "poly2exp", "poly3exp", "poly4exp", "NRL0", "NRL1")


def _method_dict(choices: tuple[str, ...]):
    """A dict whose ``method`` must be one of ``choices``; its other keys are not checked."""
    listed = ", ".join(repr(c) for c in choices)

    def check(value: dict) -> dict:
        if "method" not in value:
            raise _fail(("method", f"required key missing; one of {listed}"))
        if value["method"] not in choices:
            raise _fail(("method", f"unknown method {_show(value['method'])}; expected one of "
                                   f"{listed}" + did_you_mean(value["method"], choices)))
        return value

    return Annotated[dict[str, Any], AfterValidator(check)]


class PushOptions(_Options):
    """nnsk ``push``: every ``period`` iterations shift ``rs``/``rc``/``w`` (Angstrom) and the
    overlap factor by these steps."""

    rs_thr: float = 0.0
    rc_thr: float = 0.0
    w_thr: float = 0.0
    ovp_thr: float = 0.0
    period: PosInt = 100


#: DeePTB's defaults of the nnsk hopping and environment-dependent onsite keys (Angstrom; ``lda`` 1/A)
_NNSK_HOPPING_DEFAULTS = {"rs": 6.0, "w": 0.1}
_NNSK_ONSITE_DEFAULTS = {"strain": {"rs": 6.0, "w": 0.1}, "NRL": {"rs": 6.0, "w": 0.1, "lda": 1.0}}


class NnskOptions(_Options):
    """Slater-Koster model with analytic bond-length dependence (:mod:`eqtb.models.sk`). ``onsite``
    and ``hopping`` are checked for a known ``method`` here, completed with DeePTB's defaults
    (hopping ``rs`` 6.0, ``w`` 0.1; strain/NRL onsite ``rs`` 6.0, ``w`` 0.1, NRL ``lda`` 1.0) and
    checked further by the model, as is ``soc`` (DeePTB's spin-orbit options: ``{}`` off, or
    ``{"method": "uniform" | "uniform_noref" | "none"}``, :mod:`eqtb.models.sk`)."""

    onsite: _method_dict(_ONSITE_METHODS)
    hopping: _method_dict(_HOPPING_METHODS)
    soc: dict[str, Any] = {}
    freeze: bool | str | list[str] = False
    std: NonNegFloat = 0.01
    atomic_radius: Literal["v1", "cov"] = "v1"
    push: bool | PushOptions = False

    @model_validator(mode="after")
    def _defaults(self) -> "NnskOptions":
        self.hopping = {**_NNSK_HOPPING_DEFAULTS, **self.hopping}
        self.onsite = {**_NNSK_ONSITE_DEFAULTS.get(self.onsite["method"], {}), **self.onsite}
        return self


class DftbskOptions(_Options):
    """Slater-Koster tables from DFTB ``.skf`` files (``skdata``: a folder of ``A-B.skf`` files or
    DeePTB's ``.pth``), used out to ``r_max`` (Angstrom). DeePTB 2.2.1 requires ``r_max``, yet its
    own example (``hBN_dftb/input_dftb_env.json``) gives only ``skdata``: here it is optional, and
    without it the tables' range is the cutoff (:mod:`eqtb.models.dftbsk`)."""

    _absent_if_none = ("r_max",)
    skdata: str
    r_max: Cutoff | None = None


class ModelOptions(_Options):
    """``model_options``. The keys present choose the model family (see :attr:`family`):
    ``nnsk`` or ``dftbsk`` alone; ``embedding`` + ``prediction`` (``nnenv``); or one of nnsk/dftbsk
    with an ``se2`` embedding and an ``sktb`` prediction (``mix``). Empty: taken from a
    checkpoint."""

    _absent_if_none = ("embedding", "prediction", "nnsk", "dftbsk")
    embedding: Embedding | None = None
    prediction: Prediction | None = None
    nnsk: NnskOptions | None = None
    dftbsk: DftbskOptions | None = None

    @property
    def family(self) -> str | None:
        """``"nnsk"``, ``"dftbsk"``, ``"nnenv"``, ``"mix"``, or None when no model is given."""
        sk = "nnsk" if self.nnsk is not None else "dftbsk" if self.dftbsk is not None else None
        if self.embedding is None:
            return sk
        return "mix" if sk else "nnenv"

    @model_validator(mode="after")
    def _family(self) -> "ModelOptions":
        if self.nnsk is not None and self.dftbsk is not None:
            raise _fail(("dftbsk", "nnsk and dftbsk cannot be used together"))
        if (self.embedding is None) != (self.prediction is None):
            given, missing = ("embedding", "prediction") if self.prediction is None else ("prediction", "embedding")
            raise _fail((missing, f"required key missing ({given} is given; they go together)"))
        if self.embedding is None:
            return self
        emb, pred = self.embedding.method, self.prediction.method
        if self.family == "mix":
            if pred != "sktb":
                raise _fail(("prediction.method", "with nnsk/dftbsk the prediction must be \"sktb\""))
            if emb != "se2":
                raise _fail(("embedding.method", "with nnsk/dftbsk the embedding must be \"se2\""))
        elif pred == "e3tb" and emb == "se2":
            raise _fail(("embedding.method",
                         "an e3tb prediction cannot use the se2 embedding (use slem, lem or elct)"))
        elif pred == "sktb" and emb != "se2":
            raise _fail(("embedding.method", f"an sktb prediction needs the se2 embedding, got {emb!r}"))
        return self


# =============================================================================== train_options
class AdamOptions(_Options):
    """``torch.optim.Adam``."""

    type: Literal["Adam"] = "Adam"
    lr: PosFloat = 1e-3
    betas: Annotated[list[NonNegFloat], Field(min_length=2, max_length=2)] = [0.9, 0.999]
    eps: PosFloat = 1e-8
    weight_decay: NonNegFloat = 0.0
    amsgrad: bool = False


class AdamWOptions(AdamOptions):
    """``torch.optim.AdamW`` (decoupled weight decay; default 0.01 as in PyTorch)."""

    type: Literal["AdamW"] = "AdamW"
    weight_decay: NonNegFloat = 0.01


class SGDOptions(_Options):
    """``torch.optim.SGD``."""

    type: Literal["SGD"] = "SGD"
    lr: PosFloat = 1e-3
    momentum: NonNegFloat = 0.0
    weight_decay: NonNegFloat = 0.0
    dampening: NonNegFloat = 0.0
    nesterov: bool = False


class RMSpropOptions(_Options):
    """``torch.optim.RMSprop``."""

    type: Literal["RMSprop"] = "RMSprop"
    lr: PosFloat = 1e-2
    alpha: NonNegFloat = 0.99
    eps: PosFloat = 1e-8
    weight_decay: NonNegFloat = 0.0
    momentum: NonNegFloat = 0.0
    centered: bool = False


class LBFGSOptions(_Options):
    """``torch.optim.LBFGS`` (``max_eval`` null: 1.25 ``max_iter``)."""

    type: Literal["LBFGS"] = "LBFGS"
    lr: PosFloat = 1.0
    max_iter: PosInt = 20
    max_eval: PosInt | None = None


Optimizer = _variant("type", AdamOptions, AdamWOptions, SGDOptions, RMSpropOptions, LBFGSOptions,
                     default="Adam")


class _Scheduler(_Options):
    """Base of the learning-rate schedulers. ``warmup_epochs`` is an eqtb extension: epochs of
    linear warm-up of the learning rate before the scheduler takes over (0 = none)."""

    warmup_epochs: NonNegInt = 0


class ExpLR(_Scheduler):
    """``ExponentialLR``: lr *= ``gamma`` per step."""

    type: Literal["exp"] = "exp"
    gamma: PosFloat = 0.999


class LinearLR(_Scheduler):
    """``LinearLR``: factor from ``start_factor`` to ``end_factor`` over ``total_iters`` steps."""

    type: Literal["linear"] = "linear"
    start_factor: PosFloat = 0.3333333
    end_factor: NonNegFloat = 0.3333333
    total_iters: PosInt = 5


class ReduceOnPlateauLR(_Scheduler):
    """``ReduceLROnPlateau`` on the epoch loss (validation if any, else the epoch-mean training
    loss), or with ``train_options.update_lr_per_iter`` on the mean of the last
    ``sliding_win_size`` iteration losses."""

    type: Literal["rop"] = "rop"
    mode: Literal["min", "max"] = "min"
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    patience: NonNegInt = 10
    threshold: NonNegFloat = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: NonNegInt = 0
    min_lr: FloatOrList = 0.0
    eps: NonNegFloat = 1e-8


class CosineLR(_Scheduler):
    """``CosineAnnealingLR`` with period ``T_max`` steps down to ``eta_min``."""

    type: Literal["cos"] = "cos"
    T_max: PosInt = 100
    eta_min: NonNegFloat = 0.0


class CyclicLR(_Scheduler):
    """``CyclicLR`` between ``base_lr`` and ``max_lr``."""

    type: Literal["cyclic"] = "cyclic"
    base_lr: FloatOrList
    max_lr: FloatOrList
    step_size_up: PosInt = 10
    step_size_down: PosInt | None = 40
    mode: Literal["triangular", "triangular2", "exp_range"] = "exp_range"
    gamma: PosFloat = 1.0
    scale_fn: str | None = None
    scale_mode: Literal["cycle", "iterations"] = "cycle"
    cycle_momentum: bool = False
    base_momentum: FloatOrList = 0.8
    max_momentum: FloatOrList = 0.9
    last_epoch: int = -1
    verbose: bool | str = "deprecated"


LRScheduler = _variant("type", ExpLR, LinearLR, ReduceOnPlateauLR, CosineLR, CyclicLR, default="exp")


class _HamilKeys(_Options):
    """``onsite_shift``: shift the label H by mu S (mu fitted per structure; needs overlaps)."""

    onsite_shift: bool = False


class _EigvalsKeys(_Options):
    """Eigenvalue loss keys: ``eout_weight`` for bands outside the window, ``diff_on`` /
    ``diff_weight`` for random k-pair differences, ``diff_valence`` (element -> number of DFT
    valence electrons missing from the TB model), ``spin_deg`` (2 = spin-degenerate bands),
    ``align`` (eqtb's: ``"min"``, DeePTB's, compares the band energies each relative to its own
    lowest kept one; ``"none"`` compares them as they are, for models of a DFT code's own H and S
    whose eigenvalues share the reference's energy zero)."""

    align: Literal["min", "none"] = "min"
    diff_on: bool = False
    eout_weight: NonNegFloat = 0.001
    diff_weight: NonNegFloat = 0.01
    diff_valence: dict[str, NonNegInt] | None = None
    spin_deg: Literal[1, 2] = 2


class EigvalsLoss(_EigvalsKeys):
    """MSE of band energies (eV) inside the energy window, each set shifted by its minimum
    (``align: "min"``) or not (``"none"``)."""

    method: Literal["eigvals"] = "eigvals"


class HamilAbsLoss(_HamilKeys):
    """(MAE + RMSE) / 2 of onsite, hopping (and overlap) block features."""

    method: Literal["hamil_abs"] = "hamil_abs"


class HamilBlasLoss(_HamilKeys):
    """Like ``hamil_abs`` but balanced: errors averaged per atom type / bond type first."""

    method: Literal["hamil_blas"] = "hamil_blas"


class HamilWtLoss(_HamilKeys):
    """Weighted ``hamil_blas``: ``onsite_weight`` (number or element -> weight),
    ``hopping_weight`` (number or ``"A-B"`` -> weight)."""

    method: Literal["hamil_wt"] = "hamil_wt"
    onsite_weight: NonNegFloat | dict[str, NonNegFloat] = 1.0
    hopping_weight: NonNegFloat | dict[str, NonNegFloat] = 1.0


class EigHamLoss(_HamilKeys, _EigvalsKeys):
    """``coeff_ham`` * Hamiltonian loss + (1 - ``coeff_ham``) * eigenvalue loss; ``coeff_ovp``
    weighs the overlap terms."""

    method: Literal["eig_ham"] = "eig_ham"
    coeff_ham: Annotated[float, Field(ge=0, le=1)] = 1.0
    coeff_ovp: NonNegFloat = 1.0


class SkintsLoss(_Options):
    """MSE between nnsk Slater-Koster integrals and a DFTB ``.skf`` set (``skdata``)."""

    method: Literal["skints"] = "skints"
    skdata: str


LossSpec = _variant("method", EigvalsLoss, HamilAbsLoss, HamilBlasLoss, HamilWtLoss, EigHamLoss,
                    SkintsLoss)


class LossOptions(_Options):
    """``loss_options``: the loss on training batches, and optionally on validation and on
    reference batches (each a ``method`` variant)."""

    _absent_if_none = ("validation", "reference")
    train: LossSpec
    validation: LossSpec | None = None
    reference: LossSpec | None = None


class TrainOptions(_Options):
    """``train_options``. ``save_freq`` counts iterations (batches); eqtb's trainer counts
    ``validation_freq`` and ``display_freq`` in epochs. The learning-rate scheduler steps once per
    epoch unless ``update_lr_per_iter`` (then once per iteration, ``rop`` on the mean of the last
    ``sliding_win_size`` iteration losses; see :class:`eqtb.train.optim.Scheduler`). ``max_time``
    and ``max_cpu_time`` (seconds or null) are eqtb extensions: stop training cleanly once this
    wall time, or this CPU time of the training process (all threads), is exceeded.
    ``batch_size``, ``ref_batch_size`` and ``val_batch_size`` count frames of the whole step: with
    several processes (``torchrun``) they are global batches, shared among the processes
    (:mod:`eqtb.train.trainer`), so the steps are those of one process."""

    num_epoch: PosInt
    batch_size: PosInt = 1
    ref_batch_size: PosInt = 1
    val_batch_size: PosInt = 1
    optimizer: Optimizer = Field(default_factory=AdamOptions)
    lr_scheduler: LRScheduler = Field(default_factory=ExpLR)
    save_freq: PosInt = 10
    validation_freq: PosInt = 10
    display_freq: PosInt = 1
    use_tensorboard: bool = False
    update_lr_per_iter: bool = False
    sliding_win_size: PosInt = 50
    max_ckpt: PosInt = 4
    valid_fast: bool = True
    loss_options: LossOptions
    max_time: PosFloat | None = None
    max_cpu_time: PosFloat | None = None


# ================================================================================ data_options
class DataSetOptions(_Options):
    """One dataset: folders ``<root>/<prefix><separator>*`` (or an LMDB / HDF5 / DeePH root) and
    which labels to load. ``root`` is resolved with :func:`resolve_root`."""

    type: Literal["DefaultDataset", "LMDBDataset", "HDF5Dataset", "DeePHDataset"] = "DefaultDataset"
    root: str
    prefix: str | None = None
    separator: str = "."
    get_Hamiltonian: bool = False
    get_overlap: bool = False
    get_DM: bool = False
    get_eigenvalues: bool = False


class DataOptions(_Options):
    """``data_options``: the training set and optional validation / reference sets. ``r_max``
    (Angstrom): nnsk only, the training graphs hold the bonds up to the larger of it and the model's
    cutoff (so that a ``push`` that grows ``rs`` or ``w`` finds the longer bonds; DeePTB builds its
    graphs at ``r_max``); ``er_max``, ``oer_max`` are ignored (eqtb takes cutoffs from model_options)."""

    r_max: Cutoff | None = None
    er_max: Cutoff | None = None
    oer_max: Cutoff | None = None
    _absent_if_none = ("validation", "reference")
    train: DataSetOptions
    validation: DataSetOptions | None = None
    reference: DataSetOptions | None = None


# =============================================================================== whole configs
class _Config(_Options):
    """A whole configuration; remembers the file it came from (for messages and data roots).
    Equality compares the options only."""

    _source: str = PrivateAttr(default="config")
    _path: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        """Name used in error messages: the file as given to :func:`load_config`, or the
        ``source`` given to :func:`config_from_dict`."""
        return self._source

    @property
    def path(self) -> Path | None:
        """The configuration file, or None when built from a dict."""
        return self._path

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.model_dump() == other.model_dump()

    __hash__ = None


class TrainConfig(_Config):
    """``dptb train`` input. ``model_options`` / ``train_options`` may be omitted when a
    checkpoint supplies them (None here)."""

    _absent_if_none = ("model_options", "train_options")
    common_options: CommonOptions
    model_options: ModelOptions | None = None
    train_options: TrainOptions | None = None
    data_options: DataOptions

    @model_validator(mode="after")
    def _cross_checks(self) -> "TrainConfig":
        mo = self.model_options
        if mo is None:
            return self
        pred = mo.prediction
        if self.common_options.overlap and isinstance(pred, E3tbPrediction) and pred.neurons is None:
            pred.neurons = [64, 64]  # the SK-style overlap head needs an MLP
        emb = mo.embedding
        if isinstance(emb, (SlemEmbedding, ElctEmbedding)) and isinstance(emb.r_max, dict) \
                and not any("-" in k for k in emb.r_max):
            missing = [e for e in Basis(self.common_options.basis).symbols if e not in emb.r_max]
            if missing:
                raise _fail(("model_options.embedding.r_max",
                             f"no cutoff for basis element(s) {', '.join(missing)}"))
        return self


class TestOptions(_Options):
    """``test_options`` of a ``dptb test`` input."""

    __test__ = False  # not a pytest class
    batch_size: PosInt = 1
    _absent_if_none = ("loss_options",)
    display_freq: PosInt = 1
    loss_options: LossOptions | None = None


class TestDataOptions(_Options):
    """``data_options`` of a test input: one ``test`` set."""

    __test__ = False
    test: DataSetOptions


class TestConfig(_Config):
    """``dptb test`` input (the model comes from a checkpoint)."""

    __test__ = False
    common_options: CommonOptions
    test_options: TestOptions = Field(default_factory=TestOptions)
    data_options: TestDataOptions


_KINDS = {"train": TrainConfig, "test": TestConfig}


# ================================================================================ ignored keys
_NO_REFERENCE = "there is no data_options.reference set"
_OVERLAP_HEAD_ONLY = "used only by the overlap head, and common_options.overlap is false"


def _given(obj: BaseModel | None, key: str) -> bool:
    """True when the file set ``key`` of ``obj`` explicitly (whatever its value)."""
    return obj is not None and key in obj.model_fields_set


def _ignored_slem(mo: ModelOptions, overlap: bool) -> list[tuple[str, str]]:
    emb, pred = mo.embedding, mo.prediction
    checks = [  # (key, ignored when given with this value?, reason)
        ("env_embed_multiplicity", lambda v: True,
         "eqtb's SLEM has no environment-embedding multiplicity; its widths come from irreps_hidden"),
        ("tp_radial_emb", lambda v: v,
         "eqtb embeds the radial basis and the element types with one MLP, without a tensor product"),
        ("tp_radial_channels", lambda v: True,
         "used only by DeePTB's tensor-product radial embedding, which eqtb does not have"),
        ("latent_channels", lambda v: True,
         "eqtb's edge MLP has one hidden layer of latent_dim neurons"),
        ("res_update", lambda v: not v, "eqtb always uses residual updates, weighted by res_update_ratios"),
        ("res_update_ratios_learnable", lambda v: v, "eqtb's res_update_ratios is fixed, not learned"),
        ("universal", lambda v: v, "eqtb's element one-hot encodings cover the basis elements only"),
        ("PolynomialCutoff_p", lambda v: emb.cutoff_type != "polynomial",
         "used only with cutoff_type \"polynomial\""),
    ]
    out = [(f"model_options.embedding.{key}", why) for key, ignored, why in checks
           if _given(emb, key) and ignored(getattr(emb, key))]
    if _given(pred, "neurons") and not overlap:
        out.append(("model_options.prediction.neurons", _OVERLAP_HEAD_ONLY))
    if _given(pred, "activation") and (not overlap or pred.activation.lower() != "silu"):
        out.append(("model_options.prediction.activation",
                    _OVERLAP_HEAD_ONLY if not overlap else "eqtb's overlap-head MLP always uses SiLU"))
    checks = [("scales_trainable", "eqtb's output scales are fixed dataset statistics"),
              ("shifts_trainable", "eqtb's output shifts are fixed dataset statistics"),
              ("if_batch_normalized", "eqtb's MLPs have no batch normalisation")]
    out += [(f"model_options.prediction.{key}", why) for key, why in checks
            if _given(pred, key) and getattr(pred, key)]
    return out


def _ignored_train(to: TrainOptions, validation: bool, reference: bool = False) -> list[tuple[str, str]]:
    out = []
    opt, sched, losses = to.optimizer, to.lr_scheduler, to.loss_options
    if _given(to, "ref_batch_size") and not reference:
        out.append(("train_options.ref_batch_size", _NO_REFERENCE))
    if not validation:
        out += [(f"train_options.{key}", "there is no data_options.validation set")
                for key in ("val_batch_size", "valid_fast") if _given(to, key)]
    if _given(losses, "validation"):
        if not validation:
            out.append(("train_options.loss_options.validation", "there is no data_options.validation set"))
        elif losses.validation.model_dump() != losses.train.model_dump():
            out.append(("train_options.loss_options.validation",
                        "eqtb computes validation losses with loss_options.train"))
    if _given(losses, "reference") and not reference:
        out.append(("train_options.loss_options.reference", _NO_REFERENCE))
    if _given(to, "sliding_win_size") and not (to.update_lr_per_iter and isinstance(sched, ReduceOnPlateauLR)):
        out.append(("train_options.sliding_win_size",
                    "used only by the rop scheduler with update_lr_per_iter true"))
    if isinstance(opt, SGDOptions) and _given(opt, "dampening") and opt.momentum == 0:
        out.append(("train_options.optimizer.dampening", "used only with a nonzero momentum"))
    if isinstance(sched, CyclicLR):
        lr_path = "train_options.lr_scheduler"
        if _given(opt, "lr"):
            out.append(("train_options.optimizer.lr", "the cyclic scheduler sets the learning rate, "
                                                      "starting at base_lr"))
        if _given(sched, "scale_mode"):
            out.append((f"{lr_path}.scale_mode", "without a scale_fn, PyTorch takes it from mode "
                                                 "(\"iterations\" for exp_range, else \"cycle\")"))
        if _given(sched, "gamma") and sched.mode != "exp_range":
            out.append((f"{lr_path}.gamma", "used only with mode \"exp_range\""))
        out += [(f"{lr_path}.{key}", "used only with cycle_momentum true")
                for key in ("base_momentum", "max_momentum")
                if _given(sched, key) and not sched.cycle_momentum]
        if _given(sched, "verbose") and sched.verbose not in (False, "deprecated"):
            out.append((f"{lr_path}.verbose", "eqtb logs the learning rate with every displayed epoch"))
    return out


def _ignored_data(do: DataOptions, overlap: bool, loss: str | None, family: str | None) -> list[tuple[str, str]]:
    acting = ("r_max",) if family == "nnsk" else ()  # nnsk: builds the graphs out to it (a growing push)
    out = [(f"data_options.{key}", "eqtb takes the cutoff from model_options")
           for key in ("r_max", "er_max", "oer_max") if getattr(do, key) is not None and key not in acting]
    train = do.train
    if train.get_overlap and not overlap and _given(train, "get_overlap"):
        out.append(("data_options.train.get_overlap",
                    "the overlap is loaded only when common_options.overlap is true"))
    if train.get_DM and train.get_Hamiltonian and _given(train, "get_DM"):
        out.append(("data_options.train.get_DM",
                    "eqtb trains one operator: the Hamiltonian, as get_Hamiltonian is true"))
    if train.get_eigenvalues and _given(train, "get_eigenvalues") and loss not in (None, "eigvals", "eig_ham"):
        out.append(("data_options.train.get_eigenvalues",
                    f"band energies are fitted only by the eigvals and eig_ham losses, not by {loss}"))
    if do.validation is not None:
        out += [(f"data_options.validation.{key}",
                 "the training set's get_* flags decide what is loaded for validation")
                for key in ("get_Hamiltonian", "get_overlap", "get_DM", "get_eigenvalues")
                if _given(do.validation, key) and getattr(do.validation, key) != getattr(train, key)]
    return out


def _ignored_test(cfg: TestConfig) -> list[tuple[str, str]]:
    common, test = cfg.common_options, cfg.test_options
    reasons = {"overlap": "the model decides whether it predicts the overlap",
               "device": "eqtb test runs on its --device option",
               "dtype": "eqtb test uses the model's dtype",
               "seed": "eqtb test draws no random numbers"}
    out = [(f"common_options.{key}", why) for key, why in reasons.items() if _given(common, key)]
    reasons = {"batch_size": "eqtb test evaluates one structure at a time",
               "display_freq": "eqtb test reports once, at the end",
               "loss_options": "eqtb test reports block errors (MAE, RMSE), not a training loss"}
    return out + [(f"test_options.{key}", why) for key, why in reasons.items() if _given(test, key)]


def _ignored_lem(mo: ModelOptions, overlap: bool) -> list[tuple[str, str]]:
    """LEM is built from SLEM's stages: the same keys act, for the same reasons."""
    return [(key, why.replace("eqtb's SLEM", "eqtb's LEM")) for key, why in _ignored_slem(mo, overlap)]


def _ignored_elct(mo: ModelOptions, overlap: bool) -> list[tuple[str, str]]:
    """Every elct embedding key acts (PolynomialCutoff_p with a polynomial cutoff); the e3tb
    prediction keys as for slem."""
    return [(key, why) for key, why in _ignored_slem(mo, overlap)
            if not key.startswith("model_options.embedding.") or key.endswith(".PolynomialCutoff_p")]


#: model family -> the ignored keys of its model_options (families eqtb can build)
_MODEL_CHECKS = {"slem": _ignored_slem, "lem": _ignored_lem, "elct": _ignored_elct,
                 "nnsk": lambda mo, overlap: [], "dftbsk": lambda mo, overlap: [],  # every key of these acts
                 "mix": lambda mo, overlap: []}


def ignored_keys(cfg: TrainConfig | TestConfig) -> list[tuple[str, str]]:
    """``(dotted key path, reason)`` for every key that ``cfg``'s source set explicitly (pydantic's
    ``model_fields_set``) and that has no effect in eqtb: model_options, train_options, then
    data_options keys (test config: common_options, then test_options).

    A key with no effect at all is listed whenever it is given; a switch of which eqtb implements
    one value only (e.g. ``res_update``: eqtb always updates residually) is listed only when given
    the other value; a key that acts only together with another (e.g. ``PolynomialCutoff_p`` with
    ``cutoff_type`` "polynomial", ``valid_fast`` with a validation set) is listed when that other
    condition fails. Model keys are checked for the families whose keys this function knows
    (:data:`_MODEL_CHECKS`: ``slem`` and ``lem`` with an ``e3tb`` prediction, ``nnsk``, ``dftbsk``, ``mix``);
    a model from a checkpoint has no model keys here. A training config of any other family
    (``trinity``, ``se2`` alone, ...) lists nothing: eqtb refuses it
    when training starts ("not supported yet"). A test config lists the options ``eqtb test``
    takes from the model or its command line instead. Keys that eqtb refuses when they would
    act (e.g. ``onsite_shift`` true) are not listed here."""
    if isinstance(cfg, TestConfig):
        return _ignored_test(cfg)
    mo, overlap = cfg.model_options, cfg.common_options.overlap
    out, family = [], None
    if mo is not None:
        family = mo.embedding.method if mo.family == "nnenv" else mo.family
        if family not in _MODEL_CHECKS:
            return []
        out = _MODEL_CHECKS[family](mo, overlap)
    if cfg.train_options is not None:
        out += _ignored_train(cfg.train_options, cfg.data_options.validation is not None,
                              cfg.data_options.reference is not None)
    loss = cfg.train_options.loss_options.train.method if cfg.train_options is not None else None
    return out + _ignored_data(cfg.data_options, overlap, loss, family)


# ============================================================================ error translation
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "an object",
    "model_type": "an object", "model_attributes_type": "an object", "none_required": "null",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _loc_path(loc: tuple, data: Any, keep_last: bool) -> list[str]:
    """The user's key path of a pydantic error location: follow the input data and drop the
    entries pydantic inserts itself (variant tags, union member names)."""
    out, cur = [], data
    for i, item in enumerate(loc):
        if isinstance(cur, dict) and item in cur:
            out.append(str(item))
            cur = cur[item]
        elif isinstance(cur, list) and isinstance(item, int) and 0 <= item < len(cur):
            out.append(f"[{item}]")
            cur = cur[item]
        elif keep_last and i == len(loc) - 1:
            out.append(str(item))
    return out


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p).replace(".[", "[")


def _describe(err: dict) -> list[tuple[str, str, str | None]]:
    """``(relative key, problem, expected-type phrase or None)`` for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "eqtb":
        return [(k, p, None) for k, p in ctx["items"]]
    if kind == "missing":
        return [("", "required key missing", None)]
    if kind == "eqtb_variant":  # message "<key>:<choice>,<choice>,..." (see _variant)
        key, _, listed = err["msg"].partition(":")
        choices = listed.split(",")
        listed = ", ".join(repr(c) for c in choices)
        if not isinstance(value, dict):
            return [("", f"expected an object, got {_show(value)}", None)]
        if key not in value:
            return [(key, f"required key missing; one of {listed}", None)]
        return [(key, f"unknown {key} {_show(value[key])}; expected one of {listed}"
                 + did_you_mean(value[key], choices), None)]
    if kind in _EXPECTED:
        return [("", f"expected {_EXPECTED[kind]}, got {_show(value)}", _EXPECTED[kind])]
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", "")) or [ctx.get("expected", "")]
        expected = ctx.get("expected", "")
        return [("", f"expected {expected}, got {_show(value)}" + did_you_mean(value, choices), expected)]
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        return [("", f"must be {op} {ctx.get(name):g}, got {_show(value)}", None)]
    if kind in ("too_short", "too_long"):
        bound = f"at least {ctx.get('min_length')}" if kind == "too_short" else f"at most {ctx.get('max_length')}"
        return [("", f"expected {bound} items, got {ctx.get('actual_length')}", None)]
    if kind == "value_error":
        return [("", str(ctx.get("error", err["msg"])), None)]
    return [("", f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {_show(value)}", None)]


def _problems(exc: ValidationError, data: Any) -> list[tuple[str, str]]:
    """Translate a pydantic ValidationError into ``(dotted path, problem)`` pairs: errors of the
    alternatives of one union at one path are merged ("expected a number or an object"), and a
    type mismatch is dropped when another error at that path or deeper shows which alternative
    was meant."""
    raw: list[tuple[str, str, str | None, Any]] = []
    for err in exc.errors(include_url=False):
        base = _loc_path(err["loc"], data, keep_last=err["type"] == "missing")
        for rel, problem, expected in _describe(err):
            raw.append((_join(*base, rel), problem, expected, err.get("input")))
    specific = [path for path, _, expected, _ in raw if expected is None]
    paths = [r[0] for r in raw]
    kept = [r for r in raw if r[2] is None or not (r[0] in specific or any(
        p != r[0] and (r[0] == "" or p.startswith((r[0] + ".", r[0] + "[")))
        for p in paths))]
    out: list[tuple[str, str]] = []
    merged: dict[str, list] = {}
    for path, problem, expected, value in kept:
        if expected is None:
            if (path, problem) not in out:
                out.append((path, problem))
            continue
        if path not in merged:
            merged[path] = [len(out), [], value]
            out.append((path, ""))
        if expected not in merged[path][1]:
            merged[path][1].append(expected)
    for path, (i, expected, value) in merged.items():
        out[i] = (path, f"expected {' or '.join(expected)}, got {_show(value)}")
    return out


# ================================================================================== public API
def _read(path: Path) -> Any:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a configuration file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot be read ({exc.strerror})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(source, "", "reading YAML needs PyYAML (pip install pyyaml); "
                                          "or give the configuration as JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ConfigError(source, "", f"not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, "", f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def apply_overrides(data: dict, overrides: dict[str, Any] | None, source: str = "overrides") -> dict:
    """A deep copy of ``data`` with dotted-path overrides applied, e.g.
    ``{"train_options.num_epoch": 5, "train_options.max_time": 60}``. Values are Python/JSON
    values (parse command-line strings first). Missing intermediate objects are created; a path
    through a non-object value is a :class:`ConfigError`. Unknown keys are caught later, by
    validation."""
    out = copy.deepcopy(data)
    for dotted, value in (overrides or {}).items():
        keys = str(dotted).split(".")
        if not all(keys):
            raise ConfigError(source, str(dotted), "malformed override key (expected a.b.c)")
        cur = out
        for i, key in enumerate(keys[:-1]):
            if cur.get(key) is None:
                cur[key] = {}
            elif not isinstance(cur[key], dict):
                raise ConfigError(source, ".".join(keys[:i + 1]),
                                  f"cannot apply override {dotted!r}: {_show(cur[key])} is not an object")
            cur = cur[key]
        cur[keys[-1]] = copy.deepcopy(value)
    return out


def _validate(data: Any, source: str, kind: str, overridden: tuple[str, ...] = ()) -> TrainConfig | TestConfig:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected an object at the top level, got {_show(data)}")
    try:
        cfg = _KINDS[kind].model_validate(data)
    except ValidationError as exc:
        problems = []
        for path, problem in _problems(exc, data):
            if any(path == o or path.startswith(o + ".") or o.startswith(path + ".") for o in overridden if path):
                problem += " (from an override)"
            problems.append((path, problem))
        raise ConfigError(source, problems=problems) from None
    cfg._source = source
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                kind: str = "train") -> TrainConfig | TestConfig:
    """Read a DeePTB configuration (JSON; YAML by suffix ``.yaml``/``.yml`` when PyYAML is
    installed), apply dotted ``overrides`` (see :func:`apply_overrides`) before validation,
    validate with defaults filled and return a :class:`TrainConfig` (``kind="train"``) or
    :class:`TestConfig` (``kind="test"``). Every problem raises :class:`ConfigError`; every key
    set that has no effect in eqtb (:func:`ignored_keys`) emits one :class:`ConfigWarning`
    ``<file>: <dotted.key.path>: ignored by eqtb (<reason>)``."""
    path = Path(path)
    source = str(path)
    data = _read(path)
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(source, "", f"expected an object at the top level, got {_show(data)}")
        data = apply_overrides(data, overrides, source)
    overridden = tuple(str(k) for k in (overrides or {}))
    cfg = _validate(data, source, kind, overridden)
    cfg._path = path
    for key, reason in ignored_keys(cfg):
        note = " (from an override)" if any(key == o or key.startswith(o + ".") for o in overridden) else ""
        warnings.warn(f"{source}: {key}: ignored by eqtb ({reason}){note}", ConfigWarning, stacklevel=2)
    return cfg


def config_to_dict(cfg: TrainConfig | TestConfig) -> dict:
    """Plain JSON-able dict with every default filled (for ``train_config.json`` and
    checkpoints); sections not given are left out. Inverse: :func:`config_from_dict`."""
    return cfg.model_dump(mode="json")


def config_from_dict(data: dict, source: str = "checkpoint", kind: str | None = None) -> TrainConfig | TestConfig:
    """Validate a configuration dict (e.g. from a checkpoint); ``source`` names it in errors.
    Emits no :class:`ConfigWarning` (a checkpoint's config was checked when its file was read).
    ``kind`` ``"train"`` / ``"test"``; None: ``"test"`` when it has ``test_options`` or a
    ``data_options.test`` set, else ``"train"``."""
    if kind is None:
        is_test = isinstance(data, dict) and ("test_options" in data or (
            isinstance(data.get("data_options"), dict) and "test" in data["data_options"]))
        kind = "test" if is_test else "train"
    return _validate(data, source, kind)


def resolve_root(root: str, config_path: str | Path | None = None, key: str = "") -> Path:
    """Absolute path of a dataset ``root``. DeePTB resolves relative roots against the current
    directory; eqtb tries that first, then the configuration file's folder. ``key`` (e.g.
    ``"data_options.train.root"``) names the entry in the error raised when neither exists."""
    source = str(config_path) if config_path is not None else "config"
    given = Path(root).expanduser()
    tried = [given] if given.is_absolute() else [Path.cwd() / given]
    if not given.is_absolute() and config_path is not None:
        beside = Path(config_path).resolve().parent / given
        if beside.resolve() != tried[0].resolve():
            tried.append(beside)
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    listed = " and ".join(str(t) for t in tried)
    raise ConfigError(source, key, f"data root {root!r} not found (tried {listed})")


def basis_from_config(cfg: TrainConfig | TestConfig) -> Basis:
    """The :class:`eqtb.basis.Basis` of ``common_options.basis``."""
    try:
        return Basis(cfg.common_options.basis)
    except BasisError as exc:
        raise ConfigError(cfg.source, "common_options.basis", str(exc)) from None

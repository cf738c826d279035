import json
import pickle

import pytest

from eqtb.basis import Basis
from eqtb.config import (
    AdamWOptions,
    ConfigError,
    E3tbPrediction,
    ReduceOnPlateauLR,
    SlemEmbedding,
    TestConfig,
    TrainConfig,
    apply_overrides,
    basis_from_config,
    config_from_dict,
    config_to_dict,
    load_config,
    resolve_root,
)

# the shared DeePTB inputs set keys eqtb ignores; tests/test_ignored_keys.py checks those warnings
pytestmark = pytest.mark.filterwarnings("ignore::eqtb.config.ConfigWarning")


@pytest.fixture()
def si64_config(data_dir):
    return data_dir / "si64_abacus" / "input_short_cpu.json"


@pytest.fixture()
def si64_dict(si64_config):
    return json.loads(si64_config.read_text())


def problem(data, overrides=None, kind="train"):
    """The message of the ConfigError raised by validating ``data`` as ``input.json``."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(apply_overrides(data, overrides), source="input.json", kind=kind)
    return str(info.value)


# ----------------------------------------------------------------------- the shared DeePTB files
@pytest.mark.parametrize("name", ["input_short_cpu.json", "input_short.json"])
def test_shared_si64_configs_load_unchanged(data_dir, name):
    cfg = load_config(data_dir / "si64_abacus" / name)
    assert isinstance(cfg, TrainConfig)
    assert cfg.source.endswith(name) and cfg.path.name == name
    assert cfg.common_options.device == ("cpu" if "cpu" in name else "cuda")
    assert cfg.common_options.overlap is True
    assert cfg.common_options.dtype == "float32" and cfg.common_options.seed == 3982377700
    emb = cfg.model_options.embedding
    assert isinstance(emb, SlemEmbedding) and emb.method == "slem"
    assert emb.r_max == {"Si": 7.4} and emb.n_layers == 3 and emb.avg_num_neighbors == 86
    assert emb.n_radial_basis == 10 and emb.PolynomialCutoff_p == 6 and emb.cutoff_type == "polynomial"
    assert emb.tp_radial_emb is True and emb.latent_dim == 64 and emb.res_update_ratios == 0.5
    assert isinstance(cfg.model_options.prediction, E3tbPrediction)
    assert cfg.model_options.prediction.neurons == [64, 64]
    assert cfg.model_options.family == "nnenv"
    tr = cfg.train_options
    assert tr.num_epoch == 1500 and tr.save_freq == 100 and tr.max_ckpt == 4 and tr.valid_fast
    assert tr.optimizer.type == "Adam" and tr.optimizer.lr == 0.005
    assert tr.optimizer.betas == [0.9, 0.999] and tr.optimizer.eps == 1e-8
    sched = tr.lr_scheduler
    assert isinstance(sched, ReduceOnPlateauLR)
    assert (sched.factor, sched.patience, sched.min_lr) == (0.8, 50, 1e-6)
    assert sched.threshold == 1e-4 and sched.threshold_mode == "rel" and sched.warmup_epochs == 0
    assert tr.loss_options.train.method == "hamil_abs" and tr.loss_options.train.onsite_shift is False
    assert tr.loss_options.validation is None and tr.max_time is None
    train = cfg.data_options.train
    assert (train.type, train.root, train.prefix, train.separator) == ("DefaultDataset", "./data", "Si64", ".")
    assert train.get_Hamiltonian and train.get_overlap and not train.get_eigenvalues
    assert cfg.data_options.r_max is None
    assert cfg.model_options.embedding.r_max == {"Si": 7.4}
    assert basis_from_config(cfg) == Basis({"Si": "1s1p"})


def test_variant_defaults(si64_dict):
    d = apply_overrides(si64_dict, {"train_options.optimizer": {"type": "AdamW"},
                                    "train_options.lr_scheduler": {},
                                    "train_options.loss_options.train": {"method": "eig_ham"}})
    tr = config_from_dict(d).train_options
    assert isinstance(tr.optimizer, AdamWOptions) and tr.optimizer.weight_decay == 0.01
    assert tr.lr_scheduler.type == "exp" and tr.lr_scheduler.gamma == 0.999
    loss = tr.loss_options.train
    assert (loss.coeff_ham, loss.coeff_ovp, loss.spin_deg, loss.diff_weight) == (1.0, 1.0, 2, 0.01)
    del d["train_options"]["optimizer"], d["train_options"]["lr_scheduler"]
    tr = config_from_dict(d).train_options
    assert tr.optimizer.type == "Adam" and tr.optimizer.lr == 1e-3 and tr.lr_scheduler.type == "exp"


def test_e3tb_overlap_head_gets_default_neurons(si64_dict):
    del si64_dict["model_options"]["prediction"]["neurons"]
    assert config_from_dict(si64_dict).model_options.prediction.neurons == [64, 64]
    si64_dict["common_options"]["overlap"] = False
    assert config_from_dict(si64_dict).model_options.prediction.neurons is None


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("key, expected", [
    ("train_options.optimizer.lrr", "input.json: train_options.optimizer.lrr: unknown key; did you mean 'lr'?"),
    ("train_option", "input.json: train_option: unknown key; did you mean 'train_options'?"),
    ("common_options.overlapp", "common_options.overlapp: unknown key; did you mean 'overlap'?"),
    ("model_options.embedding.n_layer", "model_options.embedding.n_layer: unknown key; did you mean 'n_layers'?"),
    ("train_options.lr_scheduler.pattience", "train_options.lr_scheduler.pattience: unknown key; did you mean 'patience'?"),
    ("train_options.loss_options.train.onsite_shif", "did you mean 'onsite_shift'?"),
    ("data_options.train.get_hamiltonian", "data_options.train.get_hamiltonian: unknown key; did you mean 'get_Hamiltonian'?"),
])
def test_misspelled_key_gets_a_suggestion(si64_dict, key, expected):
    msg = problem(si64_dict, {key: 1})
    assert msg.startswith("input.json: ") and expected in msg
    assert "\n" not in msg and "pydantic" not in msg


def test_key_of_another_variant_is_unknown(si64_dict):
    msg = problem(si64_dict, {"train_options.optimizer.momentum": 0.9})
    assert msg.startswith("input.json: train_options.optimizer.momentum: unknown key; allowed keys: type, lr")


def test_unknown_variant_and_missing_keys(si64_dict):
    assert problem(si64_dict, {"train_options.optimizer.type": "Adamm"}) == (
        "input.json: train_options.optimizer.type: unknown type \"Adamm\"; expected one of 'Adam', "
        "'AdamW', 'SGD', 'RMSprop', 'LBFGS'; did you mean 'Adam'?")
    assert "loss_options.train.method: required key missing" in problem(
        si64_dict, {"train_options.loss_options.train": {}})
    del si64_dict["train_options"]["num_epoch"]
    assert problem(si64_dict) == "input.json: train_options.num_epoch: required key missing"


def test_several_problems_one_line_each(si64_dict):
    del si64_dict["data_options"]
    msg = problem(si64_dict, {"train_options.batch_size": 0, "common_options.dtype": "float16"})
    assert msg.splitlines() == [
        "input.json: common_options.dtype: expected 'float32' or 'float64', got \"float16\"",
        "input.json: train_options.batch_size: must be >= 1, got 0",
        "input.json: data_options: required key missing"]


@pytest.mark.parametrize("key, value, expected", [
    ("model_options.embedding.n_layers", "three", 'model_options.embedding.n_layers: expected an integer, got "three"'),
    ("model_options.embedding.n_layers", 2.5, "expected an integer, got 2.5"),
    ("common_options.overlap", "yes", 'common_options.overlap: expected true or false, got "yes"'),
    ("model_options.embedding.r_max", "x", 'embedding.r_max: expected a number or an object, got "x"'),
    ("model_options.embedding.r_max", {"Si": "x"}, 'embedding.r_max.Si: expected a number, got "x"'),
    ("model_options.embedding.r_max", -1, "embedding.r_max: must be > 0, got -1"),
    ("model_options.embedding.latent_channels", [32, "a"], 'latent_channels[1]: expected an integer, got "a"'),
    ("common_options.basis", {"Si": 5}, "common_options.basis.Si: expected a string or a list, got 5"),
    ("common_options.basis", {"Si": "1s1q"}, "common_options.basis: basis of Si: malformed basis string"),
    ("common_options.device", "gpu", "common_options.device: expected"),
    ("train_options.optimizer.betas", [0.9], "betas: expected at least 2 items, got 1"),
    ("model_options.embedding.irreps_hidden", "32x0e+x", "irreps_hidden: expected an e3nn irreps string"),
])
def test_wrong_type_or_value(si64_dict, key, value, expected):
    msg = problem(si64_dict, {key: value})
    assert msg.startswith("input.json: ") and expected in msg and "\n" not in msg


def test_cross_field_checks(si64_dict):
    msg = problem(si64_dict, {"model_options.prediction": None})
    assert "model_options.prediction: required key missing" in msg
    se2 = {"method": "se2", "rs": 3.0, "rc": 4.0, "radial_net": {"neurons": [8]}}
    msg = problem(si64_dict, {"model_options.embedding": se2})
    assert "model_options.embedding.method: an e3tb prediction cannot use the se2 embedding" in msg
    sktb = {"method": "sktb", "neurons": [8]}
    assert config_from_dict(apply_overrides(si64_dict, {"model_options.embedding": se2,
                                                        "model_options.prediction": sktb}))
    assert "needs the se2 embedding" in problem(si64_dict, {"model_options.prediction": sktb})
    nnsk = {"onsite": {"method": "none"}, "hopping": {"method": "powerlaw"}}
    assert "prediction must be \"sktb\"" in problem(si64_dict, {"model_options.nnsk": nnsk})
    both = {"model_options": {"nnsk": nnsk, "dftbsk": {"skdata": "sk", "r_max": 5}}}
    assert "nnsk and dftbsk cannot be used together" in problem(si64_dict, both)
    assert "no cutoff for basis element(s) Si" in problem(si64_dict, {"model_options.embedding.r_max": {"C": 4}})


def test_sk_models_and_their_cutoff(si64_dict):
    nnsk = {"onsite": {"method": "strain", "rs": 5.0}, "hopping": {"method": "powerlaw", "rs": 6.0}}
    cfg = config_from_dict(apply_overrides(si64_dict, {"model_options": {"nnsk": nnsk}}))
    assert cfg.model_options.family == "nnsk" and cfg.model_options.nnsk.std == 0.01
    assert cfg.model_options.nnsk.push is False and cfg.model_options.nnsk.atomic_radius == "v1"
    # DeePTB's defaults of the hopping and strain-onsite keys are filled in
    assert cfg.model_options.nnsk.hopping == {"method": "powerlaw", "rs": 6.0, "w": 0.1}
    assert cfg.model_options.nnsk.onsite == {"method": "strain", "rs": 5.0, "w": 0.1}
    msg = problem(si64_dict, {"model_options": {"nnsk": {**nnsk, "hopping": {"method": "powrlaw"}}}})
    assert "model_options.nnsk.hopping.method: unknown method \"powrlaw\"" in msg and "did you mean 'powerlaw'?" in msg


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "input.json"
    path.write_text('{\n  "common_options": {\n    "basis": {"Si": "1s1p"}\n    "overlap": true}\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not valid JSON (line 4, column 5: Expecting ',' delimiter)"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected an object at the top level"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: no such file"):
        load_config(tmp_path / "nope.json")


def test_yaml(tmp_path, si64_dict):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(si64_dict))
    assert config_to_dict(load_config(path)) == config_to_dict(config_from_dict(si64_dict))
    path.write_text("common_options: [\n")
    with pytest.raises(ConfigError, match=r"input.yaml: not valid YAML \(line"):
        load_config(path)


# ---------------------------------------------------------------------------------- overrides
def test_overrides(si64_config):
    cfg = load_config(si64_config, {"train_options.num_epoch": 5, "train_options.max_time": 60,
                                    "model_options.embedding.r_max.Si": 6.0,
                                    "train_options.lr_scheduler.warmup_epochs": 2})
    assert cfg.train_options.num_epoch == 5 and cfg.train_options.max_time == 60.0
    assert cfg.train_options.lr_scheduler.warmup_epochs == 2
    assert cfg.model_options.embedding.r_max == {"Si": 6.0}
    assert load_config(si64_config).train_options.num_epoch == 1500  # the file is untouched


def test_unknown_override_path_is_an_error(si64_config):
    with pytest.raises(ConfigError) as info:
        load_config(si64_config, {"train_options.num_epochs": 5})
    msg = str(info.value)
    assert msg.startswith(f"{si64_config}: train_options.num_epochs: unknown key; did you mean 'num_epoch'?")
    assert "override" in msg
    with pytest.raises(ConfigError, match="train_options.num_epoch: cannot apply override"):
        load_config(si64_config, {"train_options.num_epoch.x": 5})
    with pytest.raises(ConfigError, match="malformed override key"):
        load_config(si64_config, {"train_options..x": 5})


# -------------------------------------------------------------------------------- round trips
def test_round_trip(si64_config):
    cfg = load_config(si64_config)
    d = config_to_dict(cfg)
    assert json.loads(json.dumps(d)) == d
    back = config_from_dict(d)
    assert back == cfg and back.source == "checkpoint" and back.path is None
    assert config_to_dict(back) == d
    # the dict is itself a valid DeePTB-style input: sections not given are left out, not null
    assert "nnsk" not in d["model_options"] and "validation" not in d["data_options"]
    assert d["train_options"]["lr_scheduler"]["type"] == "rop"


def test_config_error_pickles():
    err = ConfigError("input.json", "a.b", "bad")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "input.json: a.b: bad" and back.problems == [("a.b", "bad")]


# ----------------------------------------------------------------------------- data roots
def test_resolve_root(tmp_path, monkeypatch):
    config_dir = tmp_path / "configs"
    (config_dir / "data").mkdir(parents=True)
    config = config_dir / "input.json"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # not in the current directory: found beside the config file
    assert resolve_root("./data", config) == (config_dir / "data").resolve()
    # the current directory wins, as in DeePTB
    (work / "data").mkdir()
    assert resolve_root("./data", config) == (work / "data").resolve()
    assert resolve_root(str(config_dir / "data"), config) == (config_dir / "data").resolve()
    with pytest.raises(ConfigError) as info:
        resolve_root("missing", config, key="data_options.train.root")
    msg = str(info.value)
    assert msg.startswith(f"{config}: data_options.train.root: data root 'missing' not found")
    assert str(work / "missing") in msg and str(config_dir / "missing") in msg


# ------------------------------------------------------------------------------------ tests
def test_test_config_minimal(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"common_options": {"basis": {"Si": "1s1p"}},
                                "test_options": {"loss_options": {"train": {"method": "hamil_abs"}}},
                                "data_options": {"test": {"root": "./data", "prefix": "Si64",
                                                          "get_Hamiltonian": True}}}))
    cfg = load_config(path, kind="test")
    assert isinstance(cfg, TestConfig)
    assert cfg.test_options.batch_size == 1 and cfg.test_options.display_freq == 1
    assert cfg.test_options.loss_options.train.method == "hamil_abs"
    assert cfg.data_options.test.type == "DefaultDataset" and cfg.data_options.test.get_Hamiltonian
    assert config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="test.json: model_options: unknown key"):
        load_config(path, {"model_options": {}}, kind="test")
    with pytest.raises(ConfigError, match="data_options.test: required key missing"):
        config_from_dict({"common_options": {"basis": {"Si": "1s1p"}}, "data_options": {}}, kind="test")

"""Keys that eqtb accepts but that have no effect: listed by ignored_keys, one ConfigWarning each
when a user's file is read."""

import json
import warnings

import pytest

from eqtb.config import ConfigWarning, apply_overrides, config_from_dict, ignored_keys, load_config


@pytest.fixture()
def si64_config(data_dir):
    return data_dir / "si64_abacus" / "input_short_cpu.json"


@pytest.fixture()
def base(si64_config):
    """DeePTB's Si64 input without its one ignored key (tp_radial_emb)."""
    data = json.loads(si64_config.read_text())
    del data["model_options"]["embedding"]["tp_radial_emb"]
    return data


def keys(data, overrides=None, kind="train"):
    return [k for k, _ in ignored_keys(config_from_dict(apply_overrides(data, overrides), kind=kind))]


def _write(tmp_path, data):
    path = tmp_path / "input.json"
    path.write_text(json.dumps(data))
    return path


def test_si64_input_warns_exactly_for_tp_radial_emb(si64_config):
    with pytest.warns(ConfigWarning) as record:
        load_config(si64_config)
    assert [str(w.message) for w in record] == [
        f"{si64_config}: model_options.embedding.tp_radial_emb: ignored by eqtb (eqtb embeds the radial "
        f"basis and the element types with one MLP, without a tensor product)"]


def test_res_update_false_warns_once_naming_the_key(base, tmp_path):
    base["model_options"]["embedding"]["res_update"] = False
    path = _write(tmp_path, base)
    with pytest.warns(ConfigWarning) as record:
        load_config(path)
    assert len(record) == 1
    assert str(record[0].message) == (f"{path}: model_options.embedding.res_update: ignored by eqtb "
                                      f"(eqtb always uses residual updates, weighted by res_update_ratios)")
    base["model_options"]["embedding"]["res_update"] = True  # what eqtb does: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        load_config(_write(tmp_path, base))


def test_overrides_are_named_and_dicts_never_warn(base, tmp_path):
    path = _write(tmp_path, base)
    with pytest.warns(ConfigWarning, match=r"model_options\.embedding\.universal: ignored by eqtb \(.*\) "
                                           r"\(from an override\)$"):
        load_config(path, {"model_options.embedding.universal": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        config_from_dict(apply_overrides(base, {"model_options.embedding.universal": True}))  # checkpoints


E = "model_options.embedding."
P = "model_options.prediction."
T = "train_options."
VALIDATION = {"data_options.validation": {"root": "./data", "prefix": "Si64", "get_Hamiltonian": True,
                                          "get_overlap": True}}
CYCLIC = {"type": "cyclic", "base_lr": 1e-4, "max_lr": 1e-2}


@pytest.mark.parametrize("overrides, expected", [
    ({}, []),
    # slem embedding: no effect at all, or a switch given the value eqtb does not implement
    ({E + "env_embed_multiplicity": 10}, [E + "env_embed_multiplicity"]),
    ({E + "tp_radial_channels": [32], E + "latent_channels": [32]}, [E + "tp_radial_channels", E + "latent_channels"]),
    ({E + "tp_radial_emb": False, E + "universal": False, E + "res_update_ratios_learnable": False}, []),
    ({E + "universal": True, E + "res_update_ratios_learnable": True},
     [E + "res_update_ratios_learnable", E + "universal"]),
    ({E + "PolynomialCutoff_p": 8}, []),
    ({E + "PolynomialCutoff_p": 8, E + "cutoff_type": "cosine"}, [E + "PolynomialCutoff_p"]),
    ({E + "n_radial_basis": 8, E + "latent_dim": 16, E + "res_update_ratios": 0.3}, []),
    # e3tb prediction
    ({P + "scales_trainable": True, P + "shifts_trainable": True, P + "if_batch_normalized": True},
     [P + "scales_trainable", P + "shifts_trainable", P + "if_batch_normalized"]),
    ({P + "scales_trainable": False, P + "activation": "silu"}, []),
    ({P + "activation": "tanh"}, [P + "activation"]),
    ({"common_options.overlap": False},
     [P + "neurons", "data_options.train.get_overlap"]),
    # train_options
    ({T + "ref_batch_size": 1}, [T + "ref_batch_size"]),
    ({T + "val_batch_size": 2, T + "valid_fast": False}, [T + "val_batch_size", T + "valid_fast"]),
    ({T + "val_batch_size": 2, T + "valid_fast": False, **VALIDATION}, []),
    ({T + "loss_options.validation": {"method": "hamil_abs"}}, [T + "loss_options.validation"]),
    ({T + "loss_options.validation": {"method": "hamil_abs"}, **VALIDATION}, []),
    ({T + "loss_options.validation": {"method": "hamil_blas"}, **VALIDATION}, [T + "loss_options.validation"]),
    ({T + "loss_options.reference": {"method": "hamil_abs"}}, [T + "loss_options.reference"]),
    ({T + "sliding_win_size": 20}, [T + "sliding_win_size"]),
    ({T + "sliding_win_size": 20, T + "update_lr_per_iter": True}, []),  # rop per iteration
    ({T + "sliding_win_size": 20, T + "update_lr_per_iter": True, T + "lr_scheduler": {"type": "exp"}},
     [T + "sliding_win_size"]),
    ({T + "optimizer": {"type": "SGD", "dampening": 0.1}}, [T + "optimizer.dampening"]),
    ({T + "optimizer": {"type": "SGD", "dampening": 0.1, "momentum": 0.9}}, []),
    ({T + "lr_scheduler": CYCLIC}, [T + "optimizer.lr"]),
    ({T + "optimizer": {"type": "Adam"}, T + "lr_scheduler": {**CYCLIC, "scale_mode": "cycle",
                                                              "mode": "triangular", "gamma": 0.9,
                                                              "base_momentum": 0.7, "verbose": True}},
     [T + "lr_scheduler.scale_mode", T + "lr_scheduler.gamma", T + "lr_scheduler.base_momentum",
      T + "lr_scheduler.verbose"]),
    ({T + "optimizer": {"type": "Adam"}, T + "lr_scheduler": {**CYCLIC, "gamma": 0.9, "cycle_momentum": True,
                                                              "base_momentum": 0.7, "verbose": False}}, []),
    ({T + "update_lr_per_iter": False, T + "use_tensorboard": False, T + "max_ckpt": 2}, []),
    # data_options
    ({"data_options.r_max": 5.0, "data_options.oer_max": None}, ["data_options.r_max"]),
    ({"data_options.reference": {"root": "./data", "prefix": "Si64"}}, []),  # reference sets act
    ({"data_options.train.get_eigenvalues": True, "data_options.train.get_DM": True},
     ["data_options.train.get_DM", "data_options.train.get_eigenvalues"]),
    ({"data_options.train.get_eigenvalues": True, T + "loss_options.train": {"method": "eig_ham"}}, []),
    ({**VALIDATION, "data_options.validation.get_overlap": False, "data_options.validation.get_DM": False},
     ["data_options.validation.get_overlap"]),
])
def test_ignored_keys_of_a_slem_config(base, overrides, expected):
    assert keys(base, overrides) == expected


NNSK = {"onsite": {"method": "uniform"}, "hopping": {"method": "powerlaw", "rs": 3.0, "w": 0.1}}


@pytest.mark.parametrize("nnsk, expected", [
    ({}, ["data_options.er_max"]),  # r_max acts for nnsk: the training graphs' radius
    ({"atomic_radius": "cov", "std": 0.1, "freeze": False, "soc": {}}, ["data_options.er_max"]),
    ({"atomic_radius": "v1"}, ["data_options.er_max"]),  # DeePTB's v1 radii table is eqtb's too
])
def test_ignored_keys_of_an_nnsk_config(base, nnsk, expected):
    assert keys(base, {"model_options": {"nnsk": {**NNSK, **nnsk}}, "data_options.r_max": 5.0,
                       "data_options.er_max": 5.0}) == expected


def test_models_eqtb_cannot_build_list_nothing_and_built_ones_their_ignored_keys(base):
    trinity = {E + "method": "trinity", E + "universal": True, "data_options.r_max": 5.0, T + "ref_batch_size": 2}
    assert keys(base, trinity) == []
    mix = {"model_options": {"nnsk": {**NNSK, "atomic_radius": "v1"},
                             "embedding": {"method": "se2", "rs": 3.0, "rc": 4.0, "radial_net": {"neurons": [8]}},
                             "prediction": {"method": "sktb", "neurons": [8]}},
           "data_options.r_max": 5.0, "data_options.train.get_eigenvalues": True}
    # mix is built: its own keys act; the data cutoff and band energies without a band loss do not
    assert keys(base, mix) == ["data_options.r_max", "data_options.train.get_eigenvalues"]
    # dftbsk is built: its keys all act, the data_options cutoff does not
    dftbsk = {"model_options": {"dftbsk": {"skdata": "slakos", "r_max": 5.0}}, "data_options.r_max": 5.0}
    assert keys(base, dftbsk) == ["data_options.r_max"]
    # a model from a checkpoint: the other sections are still checked
    assert keys(base, {"model_options": None, "data_options.r_max": 5.0}) == ["data_options.r_max"]


def test_deeptb_per_iteration_examples_warn_for_what_eqtb_ignores(data_dir):
    """DeePTB's lem examples: eqtb's LEM has no tensor-product radial embedding; the cyclic
    scheduler's lr and scale_mode have no effect."""
    for path in sorted((data_dir / "deeptb_examples" / "clr_and_per_iter_update").glob("*.json")):
        with pytest.warns(ConfigWarning) as record:
            cfg = load_config(path)
        cyclic = ["train_options.optimizer.lr", "train_options.lr_scheduler.scale_mode"]
        assert [str(w.message).split(": ")[1] for w in record] == (
            ["model_options.embedding.tp_radial_emb"] + (cyclic if path.name.startswith("clr") else []))
        assert cfg.train_options.update_lr_per_iter is ("per_iter" in path.name)


def test_test_config_keys_taken_from_the_model_or_command_line(tmp_path):
    data = {"common_options": {"basis": {"Si": "1s1p"}, "device": "cuda", "overlap": True},
            "test_options": {"batch_size": 2, "loss_options": {"train": {"method": "hamil_abs"}}},
            "data_options": {"test": {"root": "./data", "prefix": "Si64", "get_Hamiltonian": True}}}
    assert keys(data, kind="test") == ["common_options.overlap", "common_options.device",
                                       "test_options.batch_size", "test_options.loss_options"]
    data = {"common_options": {"basis": {"Si": "1s1p"}},
            "data_options": {"test": {"root": "./data", "prefix": "Si64", "get_Hamiltonian": True,
                                      "get_eigenvalues": True}}}
    assert keys(data, kind="test") == []

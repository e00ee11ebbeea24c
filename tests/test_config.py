import pytest
import torch
import yaml

from refdet_core.config import (
    ConfigError,
    RefDetConfig,
    config_from_dict,
    config_from_params,
    load_config,
    parse_override,
    read_yaml,
)
from refdet_core.io import atomic_write_text


def test_flat_nested_and_dotted_keys_agree():
    flat = config_from_dict({"img_size": 320, "epochs": 3, "fusion": "cheaf"})
    nested = config_from_dict({"data": {"img_size": 320}, "train": {"epochs": 3}, "model": {"fusion": "cheaf"}})
    dotted = config_from_dict({"data.img_size": 320, "train.epochs": 3, "model.fusion": "cheaf"})
    assert flat == nested == dotted
    assert flat.data.img_size == 320 and flat.train.epochs == 3 and flat.model.fusion == "cheaf"


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("img_size: 320\nepochz: 3\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: unknown key 'epochz'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'data.bogus'"):
        config_from_dict({"data": {"bogus": 1}})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr", -1.0, "'lr' must be >= 0"),
        ("n_way", 0, "'n_way' must be > 0"),
        ("fusion", "transformer", "'fusion' must be one of psalm, cheaf"),
        ("img_size", "big", "'img_size' must be an integer"),
        ("use_p2", "yes", "'use_p2' must be true or false"),
        ("bg_share", 1.5, "'bg_share' must be in"),
        ("proto_dims", [8, 16], "'proto_dims' needs 4 values"),
        ("stage", 4, "'stage' must be 1, 2 or 3"),
    ],
)
def test_bad_values_raise_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({key: value}, source="x.yaml")


def test_save_round_trip(tmp_path):
    cfg = config_from_dict({"img_size": 320, "proto_dims": [8, 16, 32, 64], "lr_mult": {"backbone": 0.5}})
    path = cfg.save(tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text())["data"]["img_size"] == 320
    assert load_config(path) == cfg


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        load_config(bad)


def test_overrides_and_notebook_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("run_dir: outputs/x\nimg_size: 320\n")
    with pytest.raises(ConfigError, match="p.yaml: unknown key 'run_dir'"):
        load_config(path)
    cfg = load_config(path, {"img_size": 256}, notebooks=("05_train_stage2",))
    assert cfg.data.img_size == 256
    assert parse_override("proto_dims=[8,16,32,64]") == ("proto_dims", [8, 16, 32, 64])
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_defaults_are_valid():
    cfg = RefDetConfig()
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("key", "replacement"),
    [
        ("frame_size", "img_size is the whole-frame size and train_window the training crop"),
        ("crop_native", "img_size is the whole-frame size and train_window the training crop"),
        ("seed", "the random seed is random_seed"),
    ],
)
def test_replaced_keys_name_their_replacement(tmp_path, key, replacement):
    value = {"frame_size": 640, "crop_native": True, "seed": 1}[key]
    section = "train" if key == "seed" else "data"
    for given, named in (({key: value}, key), ({f"{section}.{key}": value}, f"{section}.{key}"),
                         ({section: {key: value}}, f"{section}.{key}")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"^x\.yaml: key '{named}' was replaced: {replacement}"):
            config_from_dict(given, source="x.yaml")
    path = tmp_path / "p.yaml"
    path.write_text(f"img_size: 320\n{key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"p\.yaml: key '{key}' was replaced: {replacement}") as err:
        config_from_params(read_yaml(path), source=str(path), notebooks=("05_train_stage2",))
    assert "\n" not in str(err.value)


def test_train_window_is_a_window_of_the_whole_frame():
    cfg = config_from_dict({"img_size": 640, "train_window": 320})
    assert (cfg.data.img_size, cfg.data.query_size) == (640, 320)
    assert config_from_dict({"img_size": 640}).data.query_size == 640, "0: training queries are whole frames"
    with pytest.raises(ConfigError, match="key 'train_window' must be 0 or at most img_size 320"):
        config_from_dict({"img_size": 320, "train_window": 640})
    with pytest.raises(ConfigError, match="key 'train_window' must be a multiple of 32"):
        config_from_dict({"img_size": 640, "train_window": 300})
    with pytest.raises(ConfigError, match="key 'train_window' must be >= 0"):
        config_from_dict({"img_size": 640, "train_window": -32})


OLD_STYLE = {  # a config.yaml as checkpoints of the earlier keys saved it (nested, every section)
    "windowed": ({"img_size": 320, "frame_size": 640, "crop_native": True}, (640, 320)),
    "whole": ({"img_size": 320, "frame_size": 0, "crop_native": False}, (320, 0)),
    "same_size": ({"img_size": 320, "frame_size": 320, "crop_native": False}, (320, 0)),
    "window_of_the_whole_frame": ({"img_size": 320, "frame_size": 320, "crop_native": True}, (320, 320)),
    "crop_without_frame_size": ({"img_size": 320, "frame_size": 0, "crop_native": True}, (320, 0)),
}


@pytest.mark.parametrize("name", list(OLD_STYLE))
def test_checkpoints_with_the_earlier_keys_are_translated(tmp_path, name):
    from safetensors.torch import save_file

    from refdet_core.checkpoint import read_checkpoint, upgrade_saved_config

    data, (img_size, train_window) = OLD_STYLE[name]
    saved = RefDetConfig().to_dict()
    saved["data"] = {k: v for k, v in saved["data"].items() if k != "train_window"} | data
    saved["train"] = {("seed" if k == "random_seed" else k): (7 if k == "random_seed" else v)
                      for k, v in saved["train"].items()}  # fmt: skip
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    (folder / "meta.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    _, cfg, _ = read_checkpoint(folder)
    assert (cfg.data.img_size, cfg.data.train_window, cfg.train.random_seed) == (img_size, train_window, 7)
    assert cfg.data.query_size == 320, "the same run trains on the same query size"
    flat = {k: v for section in saved.values() for k, v in section.items()}
    assert config_from_dict(upgrade_saved_config(flat)) == cfg, "a flat saved config translates alike"
    assert config_from_dict(upgrade_saved_config(saved)) == cfg
    assert flat["frame_size"] == saved["data"]["frame_size"] == data["frame_size"], "the input is left as it was"

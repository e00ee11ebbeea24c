import pytest
import yaml

from refdet_core.config import ConfigError, RefDetConfig, config_from_dict, load_config, parse_override
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

"""The speed program: registry, presets, profiler, bench JSON, accuracy guard, exactness of exact options."""

from __future__ import annotations

import pytest
import torch
import yaml

from refdet_core.config import ConfigError, RefDetConfig, config_from_dict
from refdet_core.models.params import param_summary
from refdet_core.models.refdet import validate_model_config
from refdet_core.speed import guard
from refdet_core.speed.bench import run_bench
from refdet_core.speed.options import OPTIONS, OptionError, apply_options, entry_config, fast_options, preset_config
from refdet_core.speed.profiler import COMPONENTS, profile_step, timed_step
from refdet_core.speed.setup import build_setup

TINY = {
    "img_size": 64,
    "support_size": 64,
    "n_way": 2,
    "n_query": 2,
    "episodes_per_epoch": 4,
    "encoder": "vit_tiny_patch16_dinov3_qkvb",
    "encoder_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64},
    "proto_dims": [8, 8, 16, 16],
    "width": 0.0625,
    "device": "cpu",
    "precision": "fp32",
    "store_bg_share": 0.5,
}


@pytest.fixture(scope="module")
def base(demo_root, tmp_path_factory) -> RefDetConfig:
    store = tmp_path_factory.mktemp("speed") / "store"
    return config_from_dict({**TINY, "data_root": str(demo_root), "store_dir": str(store)})


def small(cfg: RefDetConfig) -> RefDetConfig:
    """The seed preset's 512 px references are too slow for unit tests; everything else stays."""
    return config_from_dict({"support_size": 64}, base=cfg)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_applies_and_validates(base, name):
    original = preset_config("seed", base)
    opt = OPTIONS[name]
    cfg = opt.apply(original)
    validate_model_config(cfg.model, img_size=cfg.data.query_size, support_size=cfg.data.support_size)
    flat = cfg.flat()
    assert all(flat[k] == v or isinstance(v, list) for k, v in opt.resolve(original).items())
    assert opt.description and opt.applies in ("cpu", "gpu", "both")
    assert opt.exactness in ("exact", "close", "lossy")
    assert opt.exactness != "close" or opt.tolerance > 0, f"{name}: a close option needs a tolerance"


def test_seed_preset_is_the_original(base):
    original = preset_config("seed", base).flat()
    assert original["loader"] == "seek" and original["support_size"] == 512 and original["support_cache"] is False
    assert original["precision"] == "fp32" and original["num_workers"] == 1 and original["compile"] is False
    assert original["trainable_blocks"] == 1, "half the (tiny, 2-block) encoder trains, as 6 of 12 in the original"
    assert original["train_window"] == 0 and original["img_size"] == base.data.img_size


def test_seed_preset_trains_whole_frames_on_a_windowed_base(base):
    windowed = config_from_dict({"img_size": 64, "train_window": 32}, base=base)
    original = preset_config("seed", windowed).data
    assert (original.img_size, original.train_window, original.query_size) == (64, 0, 64)


def test_presets_train_the_same_model(base):
    original, fast = param_summary(preset_config("seed", base)), param_summary(preset_config("fast", base))
    assert original["total"] == fast["total"]
    assert original["modules"].keys() == fast["modules"].keys()
    assert fast["trainable"] < original["trainable"], "fast freezes the encoder (lossy, measured in 04)"


def test_fast_preset_trains_half_size_windows_of_the_seed_presets_frames(base):
    original, fast = preset_config("seed", base).data, preset_config("fast", base).data
    assert fast.train_window == fast.query_size == original.img_size // 2
    assert fast.img_size == original.img_size, "inference and the frame store keep the seed preset's frame size"
    windowed = config_from_dict({"img_size": 64, "train_window": 32}, base=base)
    again = preset_config("fast", windowed).data
    assert (again.train_window, again.img_size) == (32, 64), "a windowed base keeps its windows"


def test_fast_preset_resolves_for_the_machine():
    names = fast_options("cpu")
    from refdet_core.train.optim import bf16_supported

    assert ("bf16" in names) == bf16_supported(torch.device("cpu"))
    assert "compile" not in names and "fused_adamw" in names
    assert {"frame_store", "support_cache", "workers", "channels_last", "keep_memory", "crop_window"} <= set(names)
    assert {"compile", "fused_adamw", "channels_last"} <= set(fast_options("cuda"))
    assert "keep_memory" not in fast_options("cuda"), "CUDA's caching allocator keeps GPU memory already"


def test_unknown_option_and_preset_name_the_choices(base):
    with pytest.raises(OptionError, match=r"unknown option 'warp'.*frame_store.*support_cache"):
        apply_options(base, ["warp"])
    with pytest.raises(OptionError, match=r"unknown preset 'fastest'.*seed, fast"):
        preset_config("fastest", base)
    with pytest.raises(OptionError, match=r"unknown option 'warp'"):
        entry_config("seed+warp", base)
    with pytest.raises(OptionError, match=r"unknown preset 'turbo'"):
        run_bench(["turbo"], [], episodes=1, repeats=1)


def test_profiler_components_sum_to_the_step(base):
    report = profile_step(small(preset_config("fast", base)), steps=2, warmup=1)
    assert list(report["components"]) == list(COMPONENTS)
    total = sum(c["ms"] for c in report["components"].values())
    assert total == pytest.approx(report["step_ms"], rel=0.10)
    assert sum(c["pct"] for c in report["components"].values()) == pytest.approx(100.0, abs=1e-6)
    assert report["episodes_per_s"] == pytest.approx(1e3 / report["step_ms"])
    assert report["cache"]["support"]["hits"] + report["cache"]["support"]["misses"] == 2 * 2
    assert report["cache"]["frames"]["hits"] + report["cache"]["frames"]["misses"] > 0


@pytest.mark.parametrize("ref_match", [False, True])
def test_profiled_step_is_the_trainers_step(base, ref_match):
    """The profiler's stage-by-stage step computes the same loss as Trainer.train_step on the same batch."""
    cfg = config_from_dict({"ref_match": ref_match, "match_size": 32}, base=small(preset_config("fast", base)))
    a, b = build_setup(cfg), build_setup(cfg)
    b.model.load_state_dict(a.model.state_dict())
    batch = next(iter(a.trainer.loader))
    from refdet_core.speed.profiler import Clock

    loss_a = timed_step(a, iter([batch]), Clock(torch.device("cpu")))
    loss_b = b.trainer.train_step(batch, 0)
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))  # both stepped


def test_training_setup_honours_compile(base):
    """speed.compile set in params reaches 05's model (not only the bench): stages wrapped, same checkpoint keys."""
    cfg = small(preset_config("fast", base))
    plain = build_setup(cfg).model
    compiled = build_setup(config_from_dict({"compile": True}, base=cfg)).model
    assert all(getattr(plain, s)._compiled_call_impl is None for s in ("backbone", "fusion", "head"))
    assert all(getattr(compiled, s)._compiled_call_impl is not None for s in ("backbone", "fusion", "head"))
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_frame_store_gives_the_seek_readers_batches(base):
    original = small(preset_config("seed", base))
    frame_store = apply_options(original, ["frame_store"])
    assert guard.batch_difference(guard.first_batch(original), guard.first_batch(frame_store)) == 0


def test_support_cache_equals_reencoding_when_frozen(base):
    from refdet_core.data.episodes import load_fixed_episode

    plain = config_from_dict({"trainable_blocks": 0, "support_cache": False}, base=base)
    a, b = build_setup(plain), build_setup(config_from_dict({"support_cache": True}, base=plain))
    b.model.load_state_dict(a.model.state_dict())
    assert b.support_cache is not None and not hasattr(b.model, "support_feature_cache")
    batch = load_fixed_episode(a.layout, a.source, a.train_ids, plain, base_classes=a.base_classes)
    assert guard.episode_losses(a, batch) == guard.episode_losses(b, batch)  # before and after one step
    assert b.support_cache.hits >= 1


def test_bench_and_profile_refuse_an_unknown_params_key(base, tmp_path):
    from refdet_core.speed.profiler import profile_from_params

    params = tmp_path / "typo.yaml"
    params.write_text(yaml.safe_dump({**base.flat(), "run_dir": "ignored", "episodez": 3}))
    with pytest.raises(ConfigError, match="typo.yaml: unknown key 'episodez'"):
        run_bench(["seed"], [], episodes=1, repeats=1, params=params)
    with pytest.raises(ConfigError, match="typo.yaml: unknown key 'episodez'"):
        profile_from_params(params, steps=1, warmup=0)


def test_bench_json_shape(base, tmp_path):
    params = tmp_path / "bench.yaml"
    params.write_text(yaml.safe_dump({**base.flat(), "run_dir": "ignored"}))
    r = run_bench(["seed", "fast"], [], episodes=1, repeats=1, params=params)
    assert set(r["presets"]) == {"seed", "fast"}
    for p in r["presets"].values():
        assert p["episodes_per_s"] > 0 and p["epoch_s_projected"] == pytest.approx(2075 / p["episodes_per_s"])
    assert r["speedup"]["seed"] == 1.0 and r["speedup"]["fast"] > 0
    assert r["presets"]["seed"]["params"] == r["presets"]["fast"]["params"]
    assert r["projection"]["measured_at"]["img_size"] == 64
    assert {"frame_store", "support_cache", "workers", "cache_sizes", "keep_memory"} <= set(r["guard"])
    assert all(g["ok"] for g in r["guard"].values()), r["guard"]
    assert set(r["accuracy"]) >= {"freeze_encoder", "support_256"}


def test_prefill_is_shared_between_matching_setups_only(base):
    from refdet_core.speed.setup import Prefills, prefill_support_cache

    prefills = Prefills()
    cfg = preset_config("fast", base)
    first, second = build_setup(cfg), build_setup(cfg)  # same random seed: same encoder weights
    assert prefill_support_cache(first, prefills) > 0
    assert prefill_support_cache(second, prefills) == 0.0  # reused, not encoded again
    assert prefill_support_cache(build_setup(cfg)) > 0  # without the caller's prefills: nothing is shared
    a, b = first.support_cache, second.support_cache
    assert a.entries.keys() == b.entries.keys() and len(a.entries) > 0
    assert all(torch.equal(a.entries[k], b.entries[k]) for k in a.entries)
    other = build_setup(config_from_dict({"random_seed": 1}, base=cfg))  # other weights: encoded afresh
    assert other.support_cache.fingerprint() != a.fingerprint()
    assert prefill_support_cache(other, prefills) > 0


def test_guard_holds_close_options_to_the_head_outputs(base):
    original = small(preset_config("seed", base))
    result = guard._compute_checks(["channels_last", "support_cache"], original)
    close, exact = result["channels_last"], result["support_cache"]
    assert close["rel_diff"] == close["output_rel_diff"] < 1e-4  # same outputs up to rounding
    assert exact["rel_diff"] == max(exact["output_rel_diff"], exact["loss_rel_diff"])


def test_validation_loss_compares_windowed_and_whole_frame_runs(base):
    """accuracy.val_loss scores whole frames whatever the training query size, so crop_window's runs compare."""
    from refdet_core.speed.accuracy import val_loss

    whole = small(preset_config("seed", base))
    windowed = apply_options(whole, ["crop_window"])
    assert windowed.data.query_size < whole.data.query_size == windowed.data.img_size
    a, b = build_setup(whole), build_setup(windowed)
    b.model.load_state_dict(a.model.state_dict())
    assert val_loss(b, 1) == pytest.approx(val_loss(a, 1), rel=1e-5)

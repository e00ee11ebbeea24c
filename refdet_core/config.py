"""Typed configuration: one dataclass per concern, loaded once from a params YAML or a dict.

A config can be given nested (``{"data": {"img_size": 640}, "train": {...}}``) or flat
(``{"img_size": 640, "epochs": 30}``): every field name is unique across sections, so a flat key
names exactly one field. Dotted keys (``data.img_size``) work too. Unknown keys are an error that
names the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from refdet_core.io import atomic_write_text


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the key and its source."""


@dataclass
class DataConfig:
    data_root: str = "data/demo"  # challenge layout root: samples/<video_id>/..., annotations/annotations.json
    val_videos: tuple[str, ...] = ()  # explicit validation videos; empty = splits.json in root, else val_fraction
    val_fraction: float = 0.2  # share of videos held out for validation when no split is given
    split_seed: int = 42  # seed of the by-video split
    max_train_videos: int = 0  # training videos used: 0 = all, N = the split's first N (speed benches, quick runs)
    img_size: int = 640  # whole-frame letterbox size (square): frame store, seek reader, inference, export
    train_window: int = 0  # training queries: 0 = whole frames at img_size; N = N x N windows cut from them
    support_size: int = 256  # reference image size (square)
    k_shot: int = 3  # reference images per video
    n_way: int = 2  # videos per episode
    n_query: int = 4  # query frames per video per episode
    bg_share: float = 0.25  # share of episode query frames drawn from background (object absent)
    num_aug: int = 1  # augmented variants of each frame per epoch (the epoch is num_aug x episodes_per_epoch)
    augment: bool = True  # random augmentation on training episodes (never on validation)

    joint_colour: bool = True  # one RGB channel permutation per video and episode on its references AND frames
    paste_share: float = 0.0  # training queries given another episode video's target, labelled as that video's
    store_dir: str = ""  # frame store folder; empty = <root>/.frame_store_<img_size>
    store_bg_share: float = 0.25  # background frames kept in the store, as a share of all background frames
    store_format: str = "npy"  # "npy" (memory-mapped uint8) or "jpeg"
    cache_mb: int = 512  # byte bound of the in-memory LRU in front of the store
    loader: str = "store"  # "store" (frame store) or "seek" (new VideoCapture + seek per sample, as the original)
    num_workers: int = 0  # DataLoader workers
    pin_memory: bool = False
    persistent_workers: bool = False
    episodes_per_epoch: int = 100  # episodes per epoch at num_aug 1 (an epoch draws num_aug times as many)

    @property
    def query_size(self) -> int:
        """The side of a training query: ``train_window``, or ``img_size`` when training on whole frames.

        A window keeps the frame's scale: an object is as many pixels tall in a window as in the whole frame
        that inference sees at ``img_size``.
        """
        return self.train_window or self.img_size


@dataclass
class ModelConfig:
    encoder: str = "vit_small_patch16_dinov3"  # timm support encoder
    encoder_weights: str = ""  # local .safetensors/.pth; empty = timm cache when present, else random init
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)  # shrink the encoder for tests (depth, embed_dim...)
    encoder_patch: int = 16  # 32 resamples the patch embedding
    trainable_blocks: int = 0  # last encoder blocks that train (0 = frozen; the original trained 6 of 12)
    int8_encoder: bool = False  # INT8 dynamic quantization of the frozen encoder (CPU only)
    colour_bins: int = 0  # bins per channel of a centre-weighted reference colour histogram added to the prototypes
    proto_dims: tuple[int, ...] = (32, 64, 128, 256)  # prototype dims per scale P2..P5
    width: float = 0.25  # YOLOv8 width multiple (n = 0.25)
    depth: float = 0.33  # YOLOv8 depth multiple (n = 0.33)
    backbone_weights: str = ""  # Ultralytics yolov8n state dict (.pt/.safetensors), optional
    use_p2: bool = True  # P2 (stride 4) scale; False = P3-P5
    fusion: str = "psalm"  # "psalm" or "cheaf"
    head_mode: str = "dual"  # "standard", "prototype" or "dual"
    num_base_classes: int = 0  # base classes of the standard head; 0 = from the training videos
    reg_max: int = 16  # DFL bins
    ref_match: bool = False  # references also through the query backbone: a siamese match score (models/match.py)
    match_dim: int = 64  # width of the match projections
    match_size: int = 64  # side references and candidate crops are resized to for the match
    crop_reid: bool = (
        False  # a re-ID network of its own over candidate crops, trained after the detector (models/reid.py)
    )
    crop_reid_size: int = 64  # side crops and references are resampled to for it
    crop_reid_width: int = 16  # its first stage's channels


@dataclass
class LossConfig:
    box_loss: str = "wiou_v3"  # "wiou_v1", "wiou_v2", "wiou_v3" or "ciou"
    score_loss: str = "bce"  # "bce" or "varifocal"
    w_box: float = 7.5
    w_dfl: float = 1.5
    w_score: float = 1.0
    w_cls: float = 0.5
    w_supcon: float = 0.1
    w_cpe: float = 0.1
    w_triplet: float = 0.1
    w_reid: float = 1.0  # the model's crop re-identification vs the references (with ref_match; models/match.py)
    tal_topk: int = 10
    tal_alpha: float = 0.5
    tal_beta: float = 6.0
    contrastive_decay_epoch: int = -1  # dynamic schedule: after this epoch contrastive weights are scaled (-1 = off)
    contrastive_decay: float = 0.5  # the scale applied after contrastive_decay_epoch


@dataclass
class TrainConfig:
    stage: int = 2  # 1 = base detection, 2 = episodic (default), 3 = fine-tune
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.05
    lr_mult: dict[str, float] = field(default_factory=lambda: {"support_encoder": 0.1})  # per-module LR multipliers
    warmup_steps: int = 100  # optimizer steps of linear warmup
    min_lr_ratio: float = 0.05  # cosine floor as a share of lr
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_norm: float = 10.0
    max_bad_steps: int = 5  # consecutive non-finite steps before training stops
    random_seed: int = 0  # seed of the run's random draws: initial weights, episodes, augmentation
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    log_every: int = 1  # optimizer steps between history rows
    checkpoint_every: int = 1  # epochs between checkpoints
    bn_recalibrate: int = 20  # episodes that recompute BatchNorm statistics with the final weights (0 = off)
    reid_steps: int = 1500  # steps of the crop re-ID network's training after the detector's (with crop_reid)
    reid_every: int = 4  # every n-th training frame is mined for its crops


@dataclass
class SpeedConfig:
    precision: str = "auto"  # "auto" (bf16 where the hardware has it, else fp16), "bf16", "fp16", "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile the query path (static episode shapes)
    fused_adamw: bool = True  # one fused AdamW kernel (CPU and CUDA); it also skips non-finite steps on the device
    keep_memory: bool = False  # glibc mallopt: freed memory stays mapped for the next step (refdet_core/memory.py)
    support_cache: bool = True  # persistent cache of frozen support features per reference image and variant
    support_variants: int = 6  # reference variants kept in the support cache (joint colours: 6 = every permutation)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "speed": SpeedConfig,
}


@dataclass
class RefDetConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = asdict(self)
        for section in out.values():  # tuples become lists so YAML/JSON stay plain
            for k, v in section.items():
                if isinstance(v, tuple):
                    section[k] = list(v)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML, atomically."""
        path = Path(path)
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def flat(self) -> dict[str, Any]:
        return {k: v for section in self.to_dict().values() for k, v in section.items()}


def _field_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            assert f.name not in index, f"config field {f.name!r} appears in two sections"
            index[f.name] = section
    return index


FIELD_SECTION = _field_index()
FLAT_KEYS = frozenset(FIELD_SECTION)


SCALARS: dict[type, tuple[type | tuple[type, ...], str]] = {
    bool: (bool, "true or false"),
    int: (int, "an integer"),
    float: ((int, float), "a number"),
    str: (str, "a string"),
}


def _coerce_scalar(value: Any, hint: type, where: str) -> Any:
    accepted, words = SCALARS[hint]
    if (isinstance(value, bool) and hint is not bool) or not isinstance(value, accepted):
        raise ConfigError(f"{where} must be {words}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value) if hint is float else value


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check (and gently convert) one value against its field's type hint."""
    origin = typing.get_origin(hint)
    where = f"{source}: key '{key}'"
    if hint in SCALARS:
        return _coerce_scalar(value, hint, where)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_hint, _) = typing.get_args(hint)
        return tuple(_coerce(v, item_hint, key, source) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        _, val_hint = typing.get_args(hint)
        if val_hint is Any:
            return dict(value)
        return {str(k): _coerce(v, val_hint, f"{key}.{k}", source) for k, v in value.items()}
    return value


CHOICES: dict[str, tuple[str, ...]] = {
    "store_format": ("npy", "jpeg"),
    "loader": ("store", "seek"),
    "fusion": ("psalm", "cheaf"),
    "head_mode": ("standard", "prototype", "dual"),
    "box_loss": ("wiou_v1", "wiou_v2", "wiou_v3", "ciou"),
    "score_loss": ("bce", "varifocal"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
}

POSITIVE = (
    "img_size",
    "support_size",
    "k_shot",
    "n_way",
    "n_query",
    "num_aug",
    "epochs",
    "grad_accum",
    "episodes_per_epoch",
    "reg_max",
    "max_bad_steps",
    "log_every",
    "checkpoint_every",
    "tal_topk",
    "encoder_patch",
    "support_variants",
    "crop_reid_size",
    "crop_reid_width",
    "reid_every",
)
NON_NEGATIVE = (
    "max_train_videos",
    "reid_steps",
    "lr",
    "weight_decay",
    "warmup_steps",
    "clip_norm",
    "num_workers",
    "cache_mb",
    "trainable_blocks",
    "colour_bins",
    "train_window",
    "w_box",
    "w_dfl",
    "w_score",
    "w_cls",
    "w_supcon",
    "w_cpe",
    "w_triplet",
    "w_reid",
)
UNIT_INTERVAL = ("val_fraction", "bg_share", "paste_share", "store_bg_share", "min_lr_ratio")


def _check_ranges(flat: dict[str, Any], source: str) -> None:
    for key, choices in CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{source}: key '{key}' must be one of {', '.join(choices)}; got {flat[key]!r}")
    for key in POSITIVE:
        if flat[key] <= 0:
            raise ConfigError(f"{source}: key '{key}' must be > 0, got {flat[key]!r}")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{source}: key '{key}' must be >= 0, got {flat[key]!r}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= flat[key] <= 1.0:
            raise ConfigError(f"{source}: key '{key}' must be in [0, 1], got {flat[key]!r}")


def _validate(cfg: RefDetConfig, source: str) -> None:
    flat = cfg.flat()
    _check_ranges(flat, source)
    if flat["stage"] not in (1, 2, 3):
        raise ConfigError(f"{source}: key 'stage' must be 1, 2 or 3, got {flat['stage']!r}")
    if len(cfg.model.proto_dims) != 4:
        raise ConfigError(f"{source}: key 'proto_dims' needs 4 values (P2..P5), got {list(cfg.model.proto_dims)}")
    d = cfg.data
    for key in ("img_size", "train_window"):
        if getattr(d, key) % 32:
            raise ConfigError(f"{source}: key '{key}' must be a multiple of 32 (the P5 stride), got {getattr(d, key)}")
    if d.train_window > d.img_size:
        raise ConfigError(
            f"{source}: key 'train_window' must be 0 or at most img_size {d.img_size} (a window of the whole frame), "
            f"got {d.train_window}"
        )
    for key, mult in cfg.train.lr_mult.items():
        if mult < 0:
            raise ConfigError(f"{source}: key 'lr_mult.{key}' must be >= 0, got {mult!r}")


_WINDOW = "img_size is the whole-frame size and train_window the training crop (0 = whole frames)"
REPLACED: dict[str, str] = {
    "frame_size": _WINDOW,
    "crop_native": _WINDOW,
    "seed": "the random seed is random_seed (seed is the name of the original system's bench preset)",
}  # keys of earlier versions; checkpoints that carry them are translated (checkpoint.upgrade_saved_config)


def unknown_key_error(key: str, *, source: str) -> ConfigError:
    """The error for a key that is no config key: one line, naming the replacement of a key that was replaced."""
    name = key.rsplit(".", 1)[-1]
    if name in REPLACED:
        return ConfigError(f"{source}: key '{key}' was replaced: {REPLACED[name]}")
    return ConfigError(f"{source}: unknown key '{key}'")


def _normalise_keys(d: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Nested, flat or dotted keys -> {section: {field: value}}; unknown keys raise."""
    out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            section_fields = {f.name for f in fields(SECTIONS[key])}
            for sub, sub_value in value.items():
                if sub not in section_fields:
                    raise unknown_key_error(f"{key}.{sub}", source=source)
                out[key][sub] = sub_value
        elif "." in key and key.split(".", 1)[0] in SECTIONS:
            section, sub = key.split(".", 1)
            if sub not in {f.name for f in fields(SECTIONS[section])}:
                raise unknown_key_error(key, source=source)
            out[section][sub] = value
        elif key in FIELD_SECTION:
            out[FIELD_SECTION[key]][key] = value
        else:
            raise unknown_key_error(key, source=source)
    return out


def config_from_dict(
    d: dict[str, Any] | None = None, *, source: str = "<dict>", base: RefDetConfig | None = None
) -> RefDetConfig:
    """Build a validated config from a nested, flat or dotted dict, on top of ``base`` (default: the defaults)."""
    base = base or RefDetConfig()
    by_section = _normalise_keys(d or {}, source)
    sections = {}
    for name, cls in SECTIONS.items():
        current = getattr(base, name)
        hints = typing.get_type_hints(cls)
        updates = {k: _coerce(v, hints[k], k, source) for k, v in by_section[name].items()}
        sections[name] = dataclasses.replace(current, **updates)
    cfg = RefDetConfig(**sections)
    _validate(cfg, source)
    return cfg


# Parameters of the numbered notebooks that are no config key. A params file of a notebook may hold them besides
# config keys (``refdet train`` / ``profile`` / ``bench`` read the same files); any other key is an error.
# tests/test_notebooks.py checks these against the notebooks' parameters cells.
NOTEBOOK_KEYS: dict[str, frozenset[str]] = {
    "01_data_cache": frozenset(
        {
            "run_dir",
            "demo_if_missing",
            "demo_videos",
            "demo_frames",
            "demo_train_frames",
            "demo_val_videos",
            "demo_tune_videos",
            "read_samples",
            "sim_epochs",
            "interactive",
        }
    ),
    "02_model_params": frozenset({"run_dir", "time_batch", "time_repeats", "variants"}),
    "03_profile": frozenset(
        {
            "run_dir",
            "threads",
            "presets",
            "steps",
            "warmup",
            "scale_preset",
            "scale_n_way",
            "scale_n_query",
            "scale_img_size",
            "scale_steps",
            "trace",
        }
    ),  # fmt: skip
    "04_optimize": frozenset(
        {
            "run_dir",
            "threads",
            "options",
            "bench_episodes",
            "bench_repeats",
            "table_options",
            "table_episodes",
            "table_repeats",
            "table_warmup",
            "accuracy_options",
            "accuracy_episodes",
            "accuracy_val_episodes",
            "accuracy_st_iou",
            "interactive",
        }
    ),  # fmt: skip
    "05_train_stage2": frozenset({"run_dir", "fast_params", "live_plot", "train_in", "nproc"}),
    "06_validate": frozenset(
        {
            "run_dir",
            "split",
            "batch",
            "backend",
            "enter",
            "leave",
            "max_gap",
            "smooth",
            "min_len",
            "use_hysteresis",
            "use_gap_fill",
            "use_smoothing",
            "use_min_len",
            "candidates",
            "colour_power",
            "model_weight",
            "choose_settings",
            "reference_swap",
            "baseline",
            "baseline_stride",
            "show_frames",
        }
    ),  # fmt: skip
}


def _is_config_key(key: str) -> bool:
    return key in FIELD_SECTION or key in SECTIONS or key.split(".", 1)[0] in SECTIONS


def config_from_params(
    params: dict[str, Any],
    *,
    source: str,
    notebooks: tuple[str, ...] | None = None,
    base: RefDetConfig | None = None,
) -> RefDetConfig:
    """The config of a params mapping (a params file, a notebook's parameters), on top of ``base``.

    Config keys (flat, nested or dotted) set the config; parameters of ``notebooks`` (default: every notebook,
    ``NOTEBOOK_KEYS``) are skipped; any other key raises ``ConfigError`` naming it and ``source``.
    """
    allowed = set().union(*(NOTEBOOK_KEYS[n] for n in (NOTEBOOK_KEYS if notebooks is None else notebooks)))
    unknown = [k for k in params if not _is_config_key(k) and k not in allowed]
    if unknown:
        raise unknown_key_error(unknown[0], source=source)
    items = {k: v for k, v in params.items() if _is_config_key(k)}
    return config_from_dict(items, source=source, base=base)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error, and ``1e-3`` is a float
    (YAML 1.1 wants ``1.0e-3``)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text as Python values: duplicated keys raise, ``1e-3`` is a float."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}"
    return str(err).strip().splitlines()[0]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable or non-mapping file raises ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def require_data_root(data: dict[str, Any], source: str) -> None:
    """A params file must say where its data is (a default relative to the working folder would pick any
    ``data/demo`` that happens to be there)."""
    nested = data.get("data")
    if "data_root" in data or "data.data_root" in data or (isinstance(nested, dict) and "data_root" in nested):
        return
    raise ConfigError(f"{source}: key 'data_root' is not set (the challenge layout root)")


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, *, notebooks: tuple[str, ...] = ()
) -> RefDetConfig:
    """Load a config YAML (nested or flat keys), then apply ``overrides``; parameters of ``notebooks`` (none by
    default: a resolved ``config.yaml`` holds config keys only) are skipped (``config_from_params``)."""
    cfg = config_from_params(read_yaml(path), source=str(path), notebooks=notebooks)
    if overrides:
        cfg = config_from_dict(overrides, source="overrides", base=cfg)
    return cfg


def params_file_config(path: str | Path, *, notebooks: tuple[str, ...] | None = None) -> RefDetConfig:
    """The config of a params YAML, strictly (``config_from_params``), and ``data_root`` must be set. Imports no
    model code, so a bad file fails in well under a second."""
    data = read_yaml(path)
    require_data_root(data, str(path))
    return config_from_params(data, source=str(path), notebooks=notebooks)


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a YAML value (``use_p2=false``, ``proto_dims=[8,16,32,64]``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip(), parse_yaml(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({_yaml_problem(err)})") from None

"""Run configuration: one dataclass, YAML recipes in train/configs/, `--key value` overrides."""

from __future__ import annotations

import dataclasses
import datetime
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


def _key(default: Any, meaning: str) -> Any:
    """A config field with its meaning, which `python -m train.pretrain --help` prints."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": meaning})
    return field(default=default, metadata={"help": meaning})


# The help's sections: the first key of each, in the order of the fields below.
SECTIONS = {
    "name": "Run",
    "dataset": "Data",
    "backbone": "Model",
    "method": "Method",
    "epochs": "Optimisation",
    "device": "Runtime",
}


@dataclass
class Config:
    """Everything a pretraining run depends on; written next to its outputs as config.yaml."""

    name: str = _key("demo", "run name (the recipe's file name); names the default output folder")
    # Data
    dataset: str = _key(
        "demo",
        "demo (the bundled CIFAR-10 subset) | cifar10 | cifar100 (torchvision, or an ImageFolder "
        "tree / .tar(.gz) of one given as data) | imagefolder (data is required)",
    )
    data: str | None = _key(None, "dataset path: a torchvision root, an ImageFolder tree or a .tar(.gz)")
    cache_dir: str = _key("~/.cache/intl-kernels", "where archives are extracted (once)")
    augment: str = _key("cifar", "cifar | imagenet (two views) | multicrop (2x224 + 192, 160, 128, 96)")
    image_size: int = _key(32, "crop size of the views (multicrop: fixed sizes)")
    num_workers: int = _key(2, "data loader worker processes per rank")
    # Model
    backbone: str = _key("resnet18", "resnet18 | resnet50")
    stem: str = _key("cifar", "cifar (3x3 stride-1 conv, no max-pool) | imagenet")
    projector: list[int] = _key(
        [2048, 2048, 2048], "projector layer sizes, comma-separated; the last is the embedding size"
    )
    # Method
    method: str = _key("intl", "a name in train.methods.METHODS (python -m train.pretrain --help lists them)")
    # The method's own settings, checked by the method (train/methods.py): YAML `options: {p: 0.25}`,
    # command line `--options.p 0.25`; written to config.yaml with the method's defaults filled in.
    options: dict[str, Any] = _key({}, "the method's own settings (--options.NAME value)")
    axis: int = _key(0, "whitening axis: 0 (the official default) | 1")
    iterations: int = _key(4, "IterNorm Newton iterations T")
    beta: float | None = _key(
        None, "trace-loss weight; none: intl_trade_off(axis, batch_size, embedding size), the official rule"
    )
    base_momentum: float = _key(0.996, "intl_m's EMA momentum at step 0 (cosine schedule up to 1)")
    whitening_backend: str = _key(
        "auto", "FusedIterNorm backend: auto | reference | torch | cpp | cuda | triton"
    )
    # Optimisation
    epochs: int = _key(100, "training epochs")
    batch_size: int = _key(256, "global batch, over all ranks")
    lr: float = _key(0.5, "learning rate for a batch of 256; scaled linearly with batch_size")
    weight_decay: float = _key(1e-5, "SGD weight decay")
    weight_decay_1d: bool = _key(
        False,
        "also decay 1-D parameters (biases, norm scales and shifts): the official CIFAR code decays "
        "every parameter, the official ImageNet code none of the 1-D ones",
    )
    warmup_epochs: float = _key(2.0, "linear warm-up epochs")
    final_lr_ratio: float = _key(0.001, "the cosine schedule ends at this fraction of the peak lr")
    optimizer: str = _key("sgd", "sgd (momentum 0.9, the official) | lars | adam (W-MSE's)")
    max_steps: int | None = _key(None, "stop after this many steps (tests, smoke runs); none: run all epochs")
    # Runtime
    device: str = _key("auto", "auto | cpu | cuda")
    precision: str = _key(
        "auto",
        "GPU autocast: auto (bf16 where the GPU has it, else fp16) | bf16 | fp16 (with a GradScaler, "
        "as the official ImageNet code) | fp32 (as the official CIFAR code); the whitening's "
        "internals stay fp32; CPU runs are fp32",
    )
    channels_last: bool = _key(True, "channels-last memory format on GPU")
    compile: bool = _key(False, "torch.compile the backbone")
    seed: int = _key(0, "seed of the initialisation, data order and augmentations")
    output_dir: str | None = _key(None, "output folder; none: runs/<name>-<timestamp>")
    ckpt_every: int = _key(0, "also checkpoint every this many steps (0: off)")
    ckpt_minutes: float = _key(10.0, "and after this much wall time since the last checkpoint (0: off)")
    collective_timeout: float = _key(30.0, "minutes a collective waits for another rank, then an error")
    log_every: int = _key(10, "log metrics every this many steps")
    knn_every: int = _key(0, "k-NN monitor every this many epochs (0: off)")
    knn_k: int = _key(20, "neighbours of the k-NN monitor")
    knn_metric: str = _key(
        "cosine",
        "k-NN monitor: cosine (votes weighted by exp(similarity / 0.07)) | euclidean (plain "
        "majority, the official CIFAR monitor)",
    )
    probe_lr: float = _key(0.1, "lr of the online linear probe on detached features")
    spectrum_every: int = _key(1, "log the embedding spectrum every this many epochs")
    collapse_rank: float = _key(1.5, "an effective rank below this stops the run")

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{self.name}-{stamp}"
        suffix = 1
        while path.exists():  # two runs started within one second
            suffix += 1
            path = Path("runs") / f"{self.name}-{stamp}-{suffix}"
        return path


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def help_text() -> str:
    """Every key with its default and meaning, in the sections of the Config fields."""
    lines = [
        "usage: python -m train.pretrain [--config FILE|NAME] [--key value ...]",
        "",
        textwrap.fill(
            "--config FILE|NAME: a recipe, a YAML file or a name in train/configs/ "
            f"({', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')))}); default demo. "
            "--key value (or --key=value) overrides one key of the recipe; hyphens or underscores.",
            100,
        ),
    ]
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            lines += ["", f"{SECTIONS[f.name]}:"]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, list):
            default = ",".join(map(str, default))
        hint = hints[f.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint)
        entry = f"--{f.name} ({kind}, default {default}): {f.metadata['help']}"
        lines.append(textwrap.fill(entry, 100, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


# Keys that older checkpoints' configs hold under another form: key -> its translation.
_LEGACY_KEYS = {"amp": lambda amp: {"precision": "auto" if amp else "fp32"}}


def config_from_saved(values: dict[str, Any]) -> Config:
    """The Config of a saved run (a checkpoint's or config.yaml's dict), older forms translated."""
    values = dict(values)
    for key, translate in _LEGACY_KEYS.items():
        if key in values:
            values.update(translate(values.pop(key)))
    return Config(**values)


def _convert(name: str, value: Any) -> Any:
    """Coerce a YAML or command-line value to the type of field `name`."""
    return convert_value(name, typing.get_type_hints(Config)[name], value)


def convert_value(name: str, hint: Any, value: Any) -> Any:
    """Coerce a YAML or command-line value to the type `hint` (of the setting `name`, for errors)."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"config key {name!r} cannot be None")
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {name!r} needs a mapping, got {value!r}")
        return dict(value)
    if typing.get_origin(base) is list:
        items = value.split(",") if isinstance(value, str) else list(value)
        try:
            return [int(v) for v in items]
        except (TypeError, ValueError):
            raise ValueError(f"config key {name!r} needs comma-separated integers, got {value!r}") from None
    if base is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config key {name!r} needs a boolean, got {value!r}")
    try:
        return base(value)
    except (TypeError, ValueError):
        raise ValueError(f"config key {name!r} needs a {base.__name__}, got {value!r}") from None


def _apply(config: Config, values: dict[str, Any], source: str) -> None:
    valid = field_names()
    for key, value in values.items():
        key = key.replace("-", "_")
        if key.startswith("options."):  # one method option; the method converts and checks it
            config.options = {**config.options, key[len("options.") :]: value}
            continue
        if key not in valid:
            raise ValueError(f"unknown config key {key!r} in {source}; valid keys: {', '.join(valid)}")
        setattr(config, key, _convert(key, value))


def find_named_yaml(name_or_path: str, folder: Path, kind: str) -> Path:
    """A YAML file: a path, or the name of one in `folder` (FileNotFoundError listing them)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = folder / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    raise FileNotFoundError(f"no {kind} {name_or_path!r}; in {folder.name}/: {', '.join(names)}")


def find_recipe(name_or_path: str) -> Path:
    """A recipe file: a path, or the name of one in train/configs/."""
    return find_named_yaml(name_or_path, CONFIG_DIR, "config file")


def load_config(argv: list[str]) -> Config:
    """Config from `[--config FILE|NAME] [--key value ...]` (the demo recipe when no --config)."""
    config = Config()
    pairs: dict[str, str] = {}
    recipe = "demo"
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected --key value, got {arg!r}")
        key, _, inline = arg[2:].partition("=")
        if inline:
            value, i = inline, i + 1
        elif i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        else:
            raise ValueError(f"--{key} needs a value")
        if key == "config":
            recipe = value
        else:
            pairs[key] = value
    path = find_recipe(recipe)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must be a mapping of keys to values")
    config.name = path.stem
    _apply(config, values, str(path))
    _apply(config, pairs, "the command line")
    validate(config)
    return config


# Inclusive ranges of the numeric settings (validate checks them; None passes where allowed).
BOUNDS: dict[str, tuple[float, float]] = {
    "epochs": (1, math.inf),
    "iterations": (1, math.inf),
    "image_size": (1, math.inf),
    "num_workers": (0, math.inf),
    "beta": (0, math.inf),
    "base_momentum": (0, 1),
    "weight_decay": (0, math.inf),
    "warmup_epochs": (0, math.inf),
    "final_lr_ratio": (0, 1),
    "log_every": (1, math.inf),
    "ckpt_every": (0, math.inf),
    "ckpt_minutes": (0, math.inf),
    "collective_timeout": (1e-3, math.inf),
    "knn_every": (0, math.inf),
    "knn_k": (1, math.inf),
    "spectrum_every": (0, math.inf),
    "collapse_rank": (0, math.inf),
    "probe_lr": (0, math.inf),
}


def validate(config: Config) -> None:
    """Clear errors for settings that cannot run."""
    choices = {
        "dataset": ("demo", "cifar10", "cifar100", "imagefolder"),
        "augment": ("cifar", "imagenet", "multicrop"),
        "backbone": ("resnet18", "resnet50"),
        "stem": ("cifar", "imagenet"),
        "optimizer": ("sgd", "lars", "adam"),
        "device": ("auto", "cpu", "cuda"),
        "precision": ("auto", "bf16", "fp16", "fp32"),
        "knn_metric": ("cosine", "euclidean"),
    }
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(config, key)!r}")
    if config.axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {config.axis}")
    if config.batch_size < 2:
        raise ValueError(
            f"batch_size must be at least 2 (a whitening needs 2 samples), got {config.batch_size}"
        )
    if config.dataset == "imagefolder" and not config.data:
        raise ValueError("dataset 'imagefolder' needs --data DIR_OR_TAR")
    if not config.projector:
        raise ValueError("projector needs at least one layer size")
    if any(size < 1 for size in config.projector):
        raise ValueError(f"projector layer sizes must be positive, got {config.projector}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"max_steps must be at least 1 (or none: no limit), got {config.max_steps}")
    for key, (low, high) in BOUNDS.items():
        value = getattr(config, key)
        if value is not None and not low <= value <= high:  # also refuses NaN
            upper = "" if high == math.inf else f" and at most {high:g}"
            raise ValueError(f"{key} must be at least {low:g}{upper}, got {value!r}")
    from train.methods import resolve_options  # the methods import this module

    config.options = resolve_options(config)


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

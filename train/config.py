"""Run configuration: one dataclass, YAML recipes in train/configs/, `--key value` overrides."""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class Config:
    """Everything a pretraining run depends on; written next to its outputs as config.yaml."""

    name: str = "demo"
    # Data: "demo" (the bundled CIFAR-10 subset), "cifar10", "cifar100" (torchvision, or an
    # ImageFolder tree / .tar(.gz) of one given as `data`), or "imagefolder" (`data` is required).
    dataset: str = "demo"
    data: str | None = None
    cache_dir: str = "~/.cache/intl-kernels"
    augment: str = "cifar"  # "cifar" | "imagenet" (two views) | "multicrop"
    image_size: int = 32
    num_workers: int = 2
    # Model
    backbone: str = "resnet18"  # "resnet18" | "resnet50"
    stem: str = "cifar"  # "cifar" (3x3 stride-1 conv, no max-pool) | "imagenet"
    projector: list[int] = field(default_factory=lambda: [2048, 2048, 2048])
    # Method
    method: str = "intl"  # a name in train.methods.METHODS
    # The method's own settings, checked by the method (train/methods.py): YAML `options: {p: 0.25}`,
    # command line `--options.p 0.25`; written to config.yaml with the method's defaults filled in.
    options: dict[str, Any] = field(default_factory=dict)
    axis: int = 0
    iterations: int = 4
    beta: float | None = None  # None: intl_trade_off(axis, batch_size, embedding size)
    base_momentum: float = 0.996  # intl_m's EMA momentum at step 0
    whitening_backend: str = "auto"
    # Optimisation
    epochs: int = 100
    batch_size: int = 256  # global, over all ranks
    lr: float = 0.5  # for a batch of 256; scaled linearly with batch_size
    weight_decay: float = 1e-5
    warmup_epochs: float = 2.0
    final_lr_ratio: float = 0.001
    optimizer: str = "sgd"  # "sgd" | "lars"
    max_steps: int | None = None  # stop early (tests, smoke runs)
    # Runtime
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = True  # bf16 autocast on GPU; the whitening's internals stay fp32
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    output_dir: str | None = None  # default runs/<name>-<timestamp>
    ckpt_every: int = 0  # also checkpoint every this many steps (0: only at epoch ends)
    log_every: int = 10
    knn_every: int = 0  # k-NN monitor every this many epochs (0: off)
    knn_k: int = 20
    probe_lr: float = 0.1  # online linear probe on detached features
    spectrum_every: int = 1  # epochs
    collapse_rank: float = 1.5  # effective rank below this stops the run

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
        return [int(v) for v in items]
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


def find_recipe(name_or_path: str) -> Path:
    """A recipe file: a path, or the name of one in train/configs/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    recipes = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no config file {name_or_path!r}; recipes: {', '.join(recipes)}")


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


def validate(config: Config) -> None:
    """Clear errors for settings that cannot run."""
    choices = {
        "dataset": ("demo", "cifar10", "cifar100", "imagefolder"),
        "augment": ("cifar", "imagenet", "multicrop"),
        "backbone": ("resnet18", "resnet50"),
        "stem": ("cifar", "imagenet"),
        "optimizer": ("sgd", "lars"),
        "device": ("auto", "cpu", "cuda"),
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
    from train.methods import resolve_options  # the methods import this module

    config.options = resolve_options(config)


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

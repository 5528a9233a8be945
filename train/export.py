"""Export a pretrained backbone: `python -m train.export OUT/last.pt backbone.pth`.

The result is a torchvision ResNet state dict without the classifier (`fc`): load it with
`model = torchvision.models.resnet50(); model.fc = torch.nn.Identity(); model.load_state_dict(sd)`
(CIFAR-stem backbones also need their 3x3 `conv1` and `maxpool = Identity`, as in train/models.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

PREFIX = "method.backbone."


def backbone_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The online backbone's weights from a training checkpoint, under torchvision's names."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if (
        isinstance(state, dict)
        and "model" not in state
        and state
        and all(torch.is_tensor(v) for v in state.values())
    ):
        return state  # already an exported backbone
    model = state.get("model") if isinstance(state, dict) else None
    if not model:
        raise ValueError(f"{checkpoint} is not an intl-kernels training checkpoint")
    weights = {
        k[len(PREFIX) :].replace("_orig_mod.", ""): v for k, v in model.items() if k.startswith(PREFIX)
    }
    if not weights:
        raise ValueError(f"{checkpoint} holds no backbone weights (keys starting with {PREFIX!r})")
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint, OUT/last.pt")
    parser.add_argument("output", type=Path, help="where to write the backbone's state dict (.pth)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    weights = backbone_state_dict(args.checkpoint)
    torch.save(weights, args.output)
    print(f"wrote {len(weights)} tensors of the backbone to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

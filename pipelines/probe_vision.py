"""Does a VLM's vision tower carry what the descriptions need? Linear probes of its image tokens.

    python -m pipelines.probe_vision --model runs/demo/cache/warmup-<key> --world runs/demo/cache/warmup_world-<key>

On the shapes world at 84 px every grid cell is one image token (patch 14, merge 2). For each object
of each scene the probe takes the token of its cell as it enters the language model (the vision
tower and its merger) and fits a linear classifier (seeded, 80/20 split by object) for the object's
shape, colour and size. Held-out accuracy near 1 means the information reaches the language model
and whatever the model's descriptions get wrong is the language model's reading of it; near chance
means the tower does not carry it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROBED = ("shape", "color", "size")
"""The scene attributes probed (keys of a stored scene object)."""


def cell_tokens(model_dir: Path, world: Path, n_images: int = 3000, batch: int = 100):
    """(features, labels): the image token of every object's cell, and the object's attributes."""
    import numpy as np
    import torch
    from PIL import Image

    from train.common import load_vlm

    model, processor = load_vlm(model_dir)
    model.eval()
    merge = model.config.vision_config.spatial_merge_size
    with open(world / "train.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for _, line in zip(range(n_images), f)]
    feats, labels = [], {a: [] for a in PROBED}
    with torch.no_grad():
        for start in range(0, len(records), batch):
            rows = records[start:start + batch]
            images = [Image.open(world / r["images"][0]).convert("RGB") for r in rows]
            inputs = processor.image_processor(images=images, return_tensors="pt")
            grid = inputs["image_grid_thw"]
            out = model.model.visual(inputs["pixel_values"], grid_thw=grid)
            per_image = torch.split(out.pooler_output, (grid.prod(-1) // merge**2).tolist())
            for r, t, (_, h, w) in zip(rows, per_image, grid.tolist()):
                side = r["scene"]["grid"]
                if (h // merge, w // merge) != (side, side):
                    raise ValueError(f"{r['qid']}: {h // merge}x{w // merge} image tokens, not one per cell of the "
                                     f"{side}x{side} grid (render the world at 28 px per cell)")
                for o in r["scene"]["objects"]:
                    feats.append(t[o["row"] * side + o["col"]].float().numpy())
                    for a in PROBED:
                        labels[a].append(o[a])
    return np.stack(feats), labels


def linear_probe(x, y: list[str], seed: int = 0, steps: int = 400) -> dict:
    """Held-out accuracy of a linear classifier of ``y`` on standardised ``x`` (80/20 split, seeded), and chance
    (the most frequent held-out label's share)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    classes = sorted(set(y))
    target = torch.tensor([classes.index(v) for v in y])
    x = torch.tensor(x, dtype=torch.float32)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    torch.manual_seed(seed)
    clf = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(x[train]), target[train]).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (clf(x[test]).argmax(1) == target[test]).float().mean().item()
    chance = np.bincount(target[test].numpy(), minlength=len(classes)).max() / len(test)
    return {"accuracy": round(accuracy, 4), "chance": round(float(chance), 4), "objects": len(y), "held_out": len(test)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a Qwen2-VL / Qwen2.5-VL model directory")
    p.add_argument("--world", type=Path, required=True, help="a shapes world (train.jsonl and images/) at 28 px per cell")
    p.add_argument("--images", type=int, default=3000, help="scenes to read (default 3000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    x, labels = cell_tokens(args.model, args.world, args.images)
    print(json.dumps({a: linear_probe(x, labels[a], args.seed) for a in PROBED}, indent=2))


if __name__ == "__main__":
    main()

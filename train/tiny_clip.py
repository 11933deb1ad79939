"""A tiny CLIP model trained offline on a shapes world, so the demo's perception reward has an alignment model.

It learns to match a world's images with the descriptions of their gold responses (the text the clip
reward embeds), with CLIP's symmetric contrastive loss plus, NegCLIP-style, one corrupted description
per image as an extra negative, so that a description with a wrong attribute scores below the exact one.
Images and texts reach the model through the reward's own loading and processor, at training as at reward time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rewards.clip import ClipReward, extract_caption, load_image
from rewards.text import normalise
from schemas.io import sha256_file

# The shapes world's vocabulary and description format (curate.synth; train may not import curate, and a
# test checks these against it). `load_world` checks each description against its scene before corrupting it.
SHAPES = ["circle", "square", "triangle", "diamond", "star"]
COLORS = ["red", "green", "blue", "yellow", "purple"]
SIZES = ["small", "large"]
ROWS = ["top", "middle", "bottom"]
COLS = ["left", "middle", "right"]
GRID = 3


@dataclass(frozen=True)
class Obj:
    """One object of a shapes scene, as a record's ``scene.objects`` lists it."""

    shape: str
    color: str
    size: str
    row: int
    col: int


def describe(objects: list[Obj]) -> str:
    """The world's description of a scene: the caption of its gold response.

    >>> describe([Obj("circle", "red", "small", 0, 0), Obj("star", "blue", "large", 1, 1)])
    '2 objects: small red circle top left, large blue star center.'
    """
    def where(o: Obj) -> str:
        return "center" if (o.row, o.col) == (1, 1) else f"{ROWS[o.row]} {COLS[o.col]}"

    n = len(objects)
    items = ", ".join(f"{o.size} {o.color} {o.shape} {where(o)}" for o in objects)
    return f"{n} object{'' if n == 1 else 's'}: {items}."


SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftext|>", "<|unk|>"]
"""End of text (also the padding), start of text, unknown word. The end token's id is 0: CLIP pools the
text at the first end token, except for a legacy end id of 2, where it pools at the highest id instead."""

CORRUPTIONS = ("color", "shape", "size", "position", "missing", "extra")
"""Ways ``corrupt`` changes one thing in a scene: an object's colour, shape, size or cell, one object fewer or more."""

RECORD_NAME = "pebr_clip.json"
"""The run record in the output directory."""


@dataclass
class TinyClipConfig:
    """Sizes and training of the tiny CLIP; the defaults train on a 5000-image world in about two CPU minutes."""

    seed: int = 0
    """Seed of the initialisation, the held-out split, the batch order and the corrupted negatives."""
    epochs: int = 5
    """Passes over the training images."""
    batch_size: int = 128
    """Images per step (each with its description and, with ``hard_negatives``, one corrupted description)."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (linear warm-up over 5% of the steps, then cosine decay)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    hard_negatives: bool = True
    """Add one corrupted description per image to the texts each step (NegCLIP); False: plain CLIP loss."""
    negative_kinds: list[str] = field(default_factory=lambda: list(CORRUPTIONS))
    """Corruptions drawn for the hard negatives (see ``CORRUPTIONS``)."""
    heldout_fraction: float = 0.1
    """Share of the images kept out of training to measure the similarities (at least one image)."""
    image_size: int | None = None
    """Side of the model's input images; None: the world's ``scene.image_size``."""
    patch_size: int = 14
    """Pixels per vision patch side; must divide ``image_size`` (84 px -> 6x6 patches, two per grid cell)."""
    hidden_size: int = 128
    """Width of both towers."""
    intermediate_size: int = 512
    """MLP width of both towers."""
    num_layers: int = 2
    """Transformer layers of each tower."""
    num_heads: int = 4
    """Attention heads of each tower."""
    projection_dim: int = 64
    """Size of the shared embedding space."""
    max_text_tokens: int = 64
    """Text positions (start and end tokens included); a shapes description takes at most about 40."""
    threads: int | None = 1
    """Torch CPU threads while training and measuring; None keeps torch's setting. The tiny matrices gain
    little from more, and on a busy machine OpenMP's waiting threads made a step ~50x slower with 2 than with 1."""


def load_world(data: Path, image_root: Path | None = None) -> tuple[list[dict], int]:
    """One row per distinct image of a world JSONL: ``image`` (path), ``caption``, ``objects``; and the rows read.

    The caption is what the clip reward reads from the gold response; records without one are skipped.
    ``objects`` is empty where the scene does not describe to the caption (no corrupted negatives then).
    """
    data = Path(data)
    root = Path(image_root) if image_root is not None else data.parent
    rows: dict[str, dict] = {}
    n = 0
    with open(data, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            n += 1
            rec = json.loads(line)
            caption = extract_caption(normalise(rec.get("response") or ""))
            images = rec.get("images") or []
            if not caption or not images:
                continue
            image = str((root / images[0]).resolve())
            scene = rec.get("scene") or {}
            objects = [Obj(**o) for o in scene.get("objects", [])]
            rows.setdefault(image, {
                "image": image,
                "caption": caption,
                "objects": objects if objects and describe(objects) == caption else [],
                "image_size": scene.get("image_size"),
            })
    return list(rows.values()), n


def corrupt(objects: list[Obj], kind: str, rng: np.random.Generator) -> list[Obj] | None:
    """``objects`` with one thing changed as ``kind`` says, or None where the scene does not allow it.

    >>> scene = [Obj("circle", "red", "small", 0, 0)]
    >>> corrupt(scene, "missing", np.random.default_rng(0)) is None
    True
    >>> corrupt(scene, "color", np.random.default_rng(0))[0].color != "red"
    True
    """
    objs = list(objects)
    if not objs:
        return None
    i = int(rng.integers(len(objs)))
    o = objs[i]
    free = sorted(set(range(GRID * GRID)) - {p.row * GRID + p.col for p in objs})
    if kind in ("color", "shape", "size"):
        values = {"color": list(COLORS), "shape": SHAPES, "size": SIZES}[kind]
        new = [v for v in values if v != getattr(o, kind)]
        objs[i] = Obj(**{**asdict(o), kind: new[int(rng.integers(len(new)))]})
    elif kind == "position":
        if not free:
            return None
        cell = free[int(rng.integers(len(free)))]
        objs[i] = Obj(**{**asdict(o), "row": cell // GRID, "col": cell % GRID})
    elif kind == "missing":
        if len(objs) < 2:
            return None
        del objs[i]
    elif kind == "extra":
        if not free:
            return None
        cell = free[int(rng.integers(len(free)))]
        objs.append(Obj(SHAPES[int(rng.integers(len(SHAPES)))], COLORS[int(rng.integers(len(COLORS)))],
                        SIZES[int(rng.integers(len(SIZES)))], cell // GRID, cell % GRID))
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
    return sorted(objs, key=lambda p: (p.row, p.col))  # descriptions list objects in reading order


def build_processor(captions: list[str], image_size: int, max_text_tokens: int):
    """A CLIPProcessor: a word-level tokenizer learnt from ``captions`` and a CLIP image processor at ``image_size``.

    >>> p = build_processor(["2 objects: small red circle top left."], 84, 16)
    >>> p.tokenizer.convert_ids_to_tokens(p.tokenizer("Small red hexagon")["input_ids"])
    ['<|startoftext|>', 'small', 'red', '<|unk|>', '<|endoftext|>']
    """
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    eos, bos, unk = SPECIAL_TOKENS
    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    # Every word of the world's language, even one a small world happens not to use.
    words = [" ".join([*SHAPES, *COLORS, *SIZES, *ROWS, *COLS, "center", "object", "objects"]), *map(str, range(10))]
    tok.train_from_iterator([*words, *captions], trainer=trainers.WordLevelTrainer(
        special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos, unk_token=unk,
        model_max_length=max_text_tokens, padding_side="right", clean_up_tokenization_spaces=False,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(cfg: TinyClipConfig, tokenizer, image_size: int):
    """A randomly initialised (with ``cfg.seed``) transformers ``CLIPModel`` of ``cfg``'s sizes."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    towers = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=cfg.max_text_tokens,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **towers),
        vision_config=dict(image_size=image_size, patch_size=cfg.patch_size, **towers),
        projection_dim=cfg.projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return CLIPModel(config).to(torch.float32)


def train_tiny_clip(
    data: Path,
    out: Path,
    cfg: TinyClipConfig | None = None,
    image_root: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Train a tiny CLIP on the world ``data`` and save it, loadable by ``ClipReward``, in ``out``.

    ``image_root`` is the folder the records' image paths are relative to (default: ``data``'s folder).
    ``progress(phase, done, total)`` reports images prepared, steps trained and pairs measured.
    Writes the model, its processor and ``pebr_clip.json`` (what produced it, the held-out similarities
    and the suggested ``clip_threshold``); returns that record.
    """
    import torch

    cfg = cfg or TinyClipConfig()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(data, out, cfg, image_root, progress or (lambda phase, done, total: None))
    finally:
        torch.set_num_threads(threads)


def _train(data: Path, out: Path, cfg: TinyClipConfig, image_root: Path | None, report) -> dict:
    import torch
    import transformers
    from transformers import get_cosine_schedule_with_warmup

    unknown = set(cfg.negative_kinds) - set(CORRUPTIONS)
    if unknown:
        raise ValueError(f"unknown negative kinds {sorted(unknown)}; expected some of {CORRUPTIONS}")
    out = Path(out)
    start = time.perf_counter()
    rows, n_records = load_world(data, image_root)
    if len(rows) < 4:
        raise ValueError(f"{data}: {len(rows)} images with a described gold response; need at least 4")
    image_size = cfg.image_size or _world_image_size(rows)
    if image_size % cfg.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {cfg.patch_size}")

    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(rows))
    n_heldout = max(1, round(len(rows) * cfg.heldout_fraction))
    heldout = [rows[i] for i in sorted(order[:n_heldout])]
    train = [rows[i] for i in sorted(order[n_heldout:])]

    processor = build_processor([r["caption"] for r in train], image_size, cfg.max_text_tokens)
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    # The reward's own path: load_image at the reward's size, then the saved image processor.
    pixels = []
    for s in range(0, len(train), 256):
        chunk = [load_image(r["image"], image_size) for r in train[s : s + 256]]
        pixels.append(image_processor(images=chunk, return_tensors="pt")["pixel_values"])
        report("prepare", min(s + 256, len(train)), len(train))
    pixels = torch.cat(pixels)
    heldout_images = [load_image(r["image"], image_size) for r in heldout]
    prepared = time.perf_counter()

    model = build_model(cfg, tokenizer, image_size)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, round(0.05 * total)), total)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(train), generator=generator).tolist()
            epoch_loss = 0.0
            for k in range(steps_per_epoch):
                batch = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
                texts = [train[i]["caption"] for i in batch]
                if cfg.hard_negatives:
                    texts += [_negative(train[i], cfg.negative_kinds, rng) for i in batch]
                enc = tokenizer(texts, padding="longest", truncation=True, max_length=cfg.max_text_tokens,
                                return_tensors="pt")
                output = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               pixel_values=pixels[batch], return_loss=not cfg.hard_negatives)
                loss = output.loss if not cfg.hard_negatives else _negclip_loss(output.logits_per_image)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                epoch_loss += loss.item()
                report("train", epoch * steps_per_epoch + k + 1, total)
            losses.append(round(epoch_loss / steps_per_epoch, 4))
    trained = time.perf_counter()

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)  # for readers that load the parts on their own
    similarity = measure(out, heldout, heldout_images, image_size, cfg.max_text_tokens, seed=cfg.seed, progress=report)
    suggested = round(similarity["matching"]["q90"], 4)
    record = {
        "data": str(Path(data).resolve()),
        "data_sha256": sha256_file(data),
        "records": n_records,
        "images": len(rows),
        "train_images": len(train),
        "heldout_images": len(heldout),
        "seed": cfg.seed,
        "config": {**asdict(cfg), "image_size": image_size},
        "epoch_loss": losses,
        "seconds": {"prepare": round(prepared - start, 2), "train": round(trained - prepared, 2),
                    "measure": round(time.perf_counter() - trained, 2),
                    "total": round(time.perf_counter() - start, 2)},
        "similarity": similarity,
        "suggested_threshold": suggested,
        "reward_config": {"clip_model_path": str(out.resolve()), "clip_threshold": suggested,
                          "clip_image_size": image_size, "clip_text_max_tokens": cfg.max_text_tokens},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record


def measure(model_dir: Path, rows: list[dict], images: list, image_size: int, text_max_tokens: int, seed: int = 0,
            progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Similarities, through ``ClipReward``, of ``rows``' ``images`` (loaded) with their descriptions, shuffled and corrupted ones.

    ``shuffled`` pairs each image with the next row's description; each corruption kind changes one thing in
    the image's own scene. ``correct_wins`` is, per kind, the share of images whose exact description scores
    higher than the corrupted one.
    """
    reward = ClipReward(str(model_dir), image_size=image_size, text_max_tokens=text_max_tokens, device="cpu")
    rng = np.random.default_rng([seed, 1])
    captions = {"matching": [r["caption"] for r in rows]}
    captions["shuffled"] = captions["matching"][1:] + captions["matching"][:1]
    for kind in CORRUPTIONS:
        captions[kind] = [_maybe(describe, corrupt(r["objects"], kind, rng)) for r in rows]
    sims: dict[str, list[float | None]] = {}
    for i, (name, texts) in enumerate(captions.items()):
        keep = [j for j, t in enumerate(texts) if t is not None]
        values = _batched(reward, [texts[j] for j in keep], [images[j] for j in keep])
        sims[name] = [None] * len(texts)
        for j, v in zip(keep, values):
            sims[name][j] = v
        if progress:
            progress("measure", i + 1, len(captions))
    result: dict[str, Any] = {name: _stats([v for v in vals if v is not None]) for name, vals in sims.items()}
    corrupted = [v for kind in CORRUPTIONS for v in sims[kind] if v is not None]
    result["corrupted"] = _stats(corrupted)
    result["correct_wins"] = {
        kind: round(float(np.mean([m > c for m, c in zip(sims["matching"], sims[kind]) if c is not None])), 4)
        for kind in ["shuffled", *CORRUPTIONS]
    }
    return result


def _batched(reward: ClipReward, texts: list[str], images: list, size: int = 256) -> list[float]:
    return [s for k in range(0, len(texts), size) for s in reward.similarities(texts[k : k + size], images[k : k + size])]


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    q = np.quantile(a, [0.1, 0.5, 0.9])
    return {"n": int(a.size), "mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
            "q10": round(float(q[0]), 4), "q50": round(float(q[1]), 4), "q90": round(float(q[2]), 4)}


def _maybe(f, x):
    return None if x is None else f(x)


def _negative(row: dict, kinds: list[str], rng: np.random.Generator) -> str:
    """A description of the row's scene with one thing wrong (a kind that fits the scene, drawn at random)."""
    for kind in rng.permutation(kinds):
        objects = corrupt(row["objects"], str(kind), rng)
        if objects is not None:
            return describe(objects)
    return "0 objects."  # no kind fits (an empty scene): any other scene is wrong


def _negclip_loss(logits_per_image):
    """CLIP's symmetric loss over B images and 2B texts, the second B the images' corrupted descriptions."""
    import torch
    import torch.nn.functional as F

    n = logits_per_image.shape[0]
    labels = torch.arange(n, device=logits_per_image.device)
    image_loss = F.cross_entropy(logits_per_image, labels)
    text_loss = F.cross_entropy(logits_per_image[:, :n].t(), labels)
    return (image_loss + text_loss) / 2


def _world_image_size(rows: list[dict]) -> int:
    sizes = {r["image_size"] for r in rows if r["image_size"]}
    if len(sizes) != 1:
        raise ValueError(f"the world's images have sizes {sorted(sizes) or 'unrecorded'}; set image_size")
    return sizes.pop()

"""Training data in, `datasets.Dataset` out: one loader for every format the stages accept.

Accepted inputs:
- a stage dataset directory written by `curate select` (Parquet files + manifest.json);
- JSONL / JSON / Parquet records in the reference format (`problem`, `images`, `answer`, `key_words`)
  with a gold `response` for warm-up SFT; image paths are relative to `image_root` (default: the
  file's folder);
- LLaMA-Factory sharegpt records: `messages` (a user turn with `<image>`, an assistant turn) and `images`.

Warm-up rows become TRL prompt-completion pairs; GRPO rows keep `prompt`, `images` and the columns
the rewards read (`answer`, `key_words`, ...).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from generation.prompt import PROMPT_TEMPLATE, as_template, build_messages
from schemas import STAGE_SHARDS
from schemas.errors import PebrError


@dataclass
class LoadReport:
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Records not used, by reason (e.g. ``no_gold_response``)."""
    source: str = ""
    manifest: dict | None = None

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _records(path: Path) -> tuple[list[dict], Path, dict | None]:
    """The raw records of `path`, the folder image paths are relative to, and a stage manifest if any."""
    if not path.exists():
        raise PebrError(f"{path}: no such file or directory")
    if path.is_dir():
        manifest_path = path / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        # A stage dataset's manifest lists its shards in order (beside select_drops.parquet and format extras);
        # other folders: every Parquet file.
        listed = [path / name for name in (manifest or {}).get("files", {}) if fnmatch.fnmatch(name, STAGE_SHARDS)]
        if not listed and any(path.glob(STAGE_SHARDS)):
            raise PebrError(f"{path}: Parquet shards without manifest.json, an unfinished `curate select`; select the stage again")
        files = listed or sorted(path.glob("*.parquet"))
        if not files:
            raise PebrError(f"{path}: no Parquet files (expected a stage dataset from `curate select`)")
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise PebrError(f"{path}: missing what the manifest lists ({', '.join(missing)}); select the stage again")
        import pyarrow.parquet as pq

        rows = [r for f in files for r in pq.read_table(f).to_pylist()]
        return rows, path, manifest
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist(), path.parent, None
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text), path.parent, None
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise PebrError(f"{path}:{i + 1}: not JSON") from None
    return rows, path.parent, None


def _image(item, root: Path):
    """A PIL image from a path (relative to root), a datasets Image dict, bytes, or a PIL image."""
    import io

    from PIL import Image

    if isinstance(item, dict):
        if item.get("bytes") is not None:
            return Image.open(io.BytesIO(item["bytes"])).convert("RGB")
        item = item.get("path")
    if isinstance(item, (bytes, bytearray)):
        return Image.open(io.BytesIO(item)).convert("RGB")
    if isinstance(item, str):
        p = Path(item)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise PebrError(f"image {p} not found (a stage dataset selected with `--images path` points into its store's "
                            "image folder: keep the store in place, or select with `--images embed`)")
        with Image.open(p) as im:
            return im.convert("RGB")
    if hasattr(item, "convert"):
        return item.convert("RGB")
    raise PebrError(f"cannot read an image from {type(item).__name__}")


def _images(rec: dict, root: Path) -> list:
    refs = rec.get("images", rec.get("image"))
    if refs is None:
        return []
    refs = refs if isinstance(refs, list) else [refs]
    return [_image(r, root) for r in refs]


def _gold(rec: dict) -> str | None:
    """The gold response of a record, from `response`, or from the `extra` JSON of a stage dataset."""
    if isinstance(rec.get("response"), str) and rec["response"].strip():
        return rec["response"]
    extra = rec.get("extra")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = None
    if isinstance(extra, dict) and isinstance(extra.get("response"), str) and extra["response"].strip():
        return extra["response"]
    return None


def _prompt(rec: dict, n_images: int, template: str) -> list[dict]:
    if isinstance(rec.get("prompt"), list):
        return [_clean_message(m) for m in rec["prompt"]]
    return build_messages(rec["problem"], n_images, template)


def _clean_message(m: dict) -> dict:
    """Drop the null fields Arrow adds to struct parts (an image part read back has text=None)."""
    content = m["content"]
    if isinstance(content, list):
        content = [{k: v for k, v in part.items() if v is not None} for part in content]
    return {"role": m["role"], "content": content}


def format_prompt_text(path: str | Path | None) -> str | None:
    """The text of the format prompt file a config names (None: none named)."""
    from generation.prompt import load_format_prompt

    return None if path is None else load_format_prompt(path)


def _format_prompt(template: str | None, manifest: dict | None, path: Path) -> str:
    """The format prompt for records without a `prompt`: `template`, else the stage dataset's, else
    the default. A stage dataset's prompts were built with its own; another one is refused."""
    built = ((manifest or {}).get("format_prompt") or {}).get("text")
    if template is not None and built is not None and as_template(template) != as_template(built):
        raise PebrError(f"{path} was selected with another format prompt than the one asked for; select the stage "
                        "again with `curate select --format-prompt FILE`, or train without --format-prompt")
    return template or built or PROMPT_TEMPLATE


def load_sft(path: Path, image_root: Path | None = None, template: str | None = None):
    """Prompt-completion rows for warm-up SFT, and a report of records without a gold response.
    `template` is the format prompt (default: the stage dataset's, else the toolkit's)."""
    import datasets

    records, root, manifest = _records(path)
    template = _format_prompt(template, manifest, path)
    root = image_root or root
    report = LoadReport(source=str(path), manifest=manifest)
    prompts, completions, images = [], [], []
    for rec in records:
        if isinstance(rec.get("messages"), list):  # sharegpt
            msgs = rec["messages"]
            user = next((m for m in msgs if m.get("role") in ("user", "human")), None)
            reply = next((m for m in msgs if m.get("role") in ("assistant", "gpt")), None)
            if not user or not reply or not str(reply.get("content", "")).strip():
                report.skip("no_gold_response")
                continue
            imgs = _images(rec, root)
            prompt = build_messages(str(user["content"]), len(imgs), "{{ content }}")  # the turn is the whole prompt
            gold = str(reply["content"])
        else:
            gold = _gold(rec)
            if gold is None:
                report.skip("no_gold_response")
                continue
            if not rec.get("problem") and not rec.get("prompt"):
                report.skip("no_problem")
                continue
            imgs = _images(rec, root)
            prompt = _prompt(rec, len(imgs), template)
        prompts.append(prompt)
        completions.append([{"role": "assistant", "content": [{"type": "text", "text": gold}]}])
        images.append(imgs)
    report.rows = len(prompts)
    if not prompts:
        raise PebrError(f"{path}: no record with a gold response to train on ({report.skipped})")
    ds = datasets.Dataset.from_dict({"prompt": prompts, "completion": completions, "images": images},
                                    features=_features(with_completion=True))
    return ds, report


def load_rl(path: Path, image_root: Path | None = None, template: str | None = None):
    """Rows for GRPO and evaluation: `prompt`, `images`, and the reward columns. `template` is the
    format prompt (default: the stage dataset's, else the toolkit's)."""
    import datasets

    records, root, manifest = _records(path)
    template = _format_prompt(template, manifest, path)
    root = image_root or root
    report = LoadReport(source=str(path), manifest=manifest)
    cols: dict[str, list] = {k: [] for k in ("prompt", "images", "answer", "key_words", "sample_id", "source", "capability")}
    for i, rec in enumerate(records):
        if rec.get("answer") is None or (not rec.get("problem") and not rec.get("prompt")):
            report.skip("no_problem_or_answer")
            continue
        imgs = _images(rec, root)
        cols["prompt"].append(_prompt(rec, len(imgs), template))
        cols["images"].append(imgs)
        cols["answer"].append(str(rec["answer"]))
        kw = rec.get("key_words") or []
        cols["key_words"].append([kw] if isinstance(kw, str) else [str(k) for k in kw])
        sid = next((rec[k] for k in ("sample_id", "qid") if rec.get(k) not in (None, "")), i)  # a qid of 0 is an id
        cols["sample_id"].append(str(sid))
        cols["source"].append(str(rec.get("source") or path.stem))
        cols["capability"].append(rec.get("capability"))
    report.rows = len(cols["prompt"])
    if not report.rows:
        raise PebrError(f"{path}: no usable record ({report.skipped})")
    return datasets.Dataset.from_dict(cols, features=_features(with_completion=False, rl=True)), report


def _features(with_completion: bool, rl: bool = False):
    import datasets

    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    message = {"role": datasets.Value("string"), "content": datasets.List(part)}
    feats = {"prompt": datasets.List(message), "images": datasets.List(datasets.Image())}
    if with_completion:
        feats["completion"] = datasets.List(message)
    if rl:
        feats.update({"answer": datasets.Value("string"), "key_words": datasets.List(datasets.Value("string")),
                      "sample_id": datasets.Value("string"), "source": datasets.Value("string"),
                      "capability": datasets.Value("string")})
    return datasets.Features(feats)

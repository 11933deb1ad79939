"""The demo's measures: description F1 against stored scenes, paired-bootstrap comparisons, the summary
and its report page, and the capability mix of the evaluation world."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from curate.synth import (
    ATTRIBUTES,
    SHAPES,
    description_attributes,
    description_f1,
    generate_world,
    make_sample,
)
from pipelines import results
from pipelines.compare import excludes_zero, paired_bootstrap


def test_description_f1_scores_the_gold_description_1_and_each_error_less():
    record, _ = make_sample(3, 7, image_size=84)
    scene, gold = record["scene"], record["response"]
    assert description_f1(gold, scene) == 1.0
    objects = scene["objects"]
    first = objects[0]
    wrong_colour = "green" if first["color"] != "green" else "red"
    item = f"{first['size']} {first['color']} {first['shape']}"
    assert item in gold
    assert description_f1(gold.replace(item, f"{first['size']} {wrong_colour} {first['shape']}", 1), scene) < 1.0
    extra = gold.replace("### Rationales:", ", small purple star bottom right ### Rationales:", 1)
    expected = 2 * len(objects) / (2 * len(objects) + 1)  # precision n/(n+1), recall 1
    assert ("purple", "star", "small", 2, 2) not in {(o["color"], o["shape"], o["size"], o["row"], o["col"]) for o in objects}
    assert description_f1(extra, scene) == pytest.approx(expected)
    assert description_f1(gold.replace("### Image Description:", "### Picture:"), scene) == 0.0


def test_description_attributes_score_each_attribute_of_each_object_on_its_own():
    record, _ = make_sample(3, 1, image_size=84)
    scene, gold = record["scene"], record["response"]
    n = len(scene["objects"])
    assert n > 1  # so that one wrong or missing object is a part of the whole
    assert description_attributes(gold, scene) == dict.fromkeys(ATTRIBUTES, 1.0)
    first = scene["objects"][0]
    other = next(s for s in ("circle", "square", "triangle") if s != first["shape"])
    item = f"{first['size']} {first['color']} {first['shape']}"
    wrong_shape = description_attributes(gold.replace(item, f"{first['size']} {first['color']} {other}", 1), scene)
    assert wrong_shape == {**dict.fromkeys(ATTRIBUTES, 1.0), "shape": pytest.approx(1 - 1 / n)}
    # one object left out: the count is wrong and so is every attribute of the object not named
    last = scene["objects"][-1]
    dropped = gold.replace(f", {last['size']} {last['color']} {last['shape']}", "", 1)
    left_out = description_attributes(dropped, scene)
    assert left_out["count"] == 0.0 and left_out["colour"] == pytest.approx(1 - 1 / n)
    assert description_attributes("no description", scene) == dict.fromkeys(ATTRIBUTES, 0.0)


def test_paired_bootstrap_sees_a_paired_difference_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(0)
    base = (rng.random(1000) < 0.5).astype(float)
    better = base.copy()
    better[rng.choice(1000, 40, replace=False)] = 1.0  # a few questions flip to right
    c = paired_bootstrap(better, base)
    assert c["n"] == 1000 and c["diff"] == pytest.approx((better - base).mean())
    assert excludes_zero(c) and c["ci_low"] > 0
    same = paired_bootstrap(base, base)
    assert (same["diff"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    # three seeds against one warm-up run: pooled over seeds, the same question draw for each
    seeds = np.stack([better, base, better])
    pooled = paired_bootstrap(seeds, base)
    assert pooled["seeds"] == 3 and pooled["diff"] == pytest.approx((seeds - base).mean())
    assert pooled["ci_low"] < pooled["diff"] < pooled["ci_high"]
    with pytest.raises(ValueError, match="different numbers of questions"):
        paired_bootstrap(base[:10], base)


def _answers(world, accuracy_of, f1_wrong=False):
    path = world / "responses.jsonl"
    lines = []
    for qid, w in sorted(results.scenes(world / "train.jsonl").items()):
        rec = next(r for r in map(json.loads, (world / "train.jsonl").read_text().splitlines()) if r["qid"] == qid)
        response = rec["response"].replace("objects:", "objects: large red circle top left,") if f1_wrong else rec["response"]
        lines.append(json.dumps({"sample_id": qid, "capability": w["capability"], "response": response,
                                 "accuracy": accuracy_of(qid, w["capability"])}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_summary_comparisons_curves_and_report_from_real_responses(tmp_path, monkeypatch):
    generate_world(tmp_path, n=60, seed=5, test_fraction=0, image_size=84,
                   mix={"reasoning": 2, "perception_coarse": 1, "perception_fine": 1})
    world = results.scenes(tmp_path / "train.jsonl")
    warm = results.per_question(_answers(tmp_path, lambda q, c: 0.0, f1_wrong=True), world)
    good = results.per_question(_answers(tmp_path, lambda q, c: 1.0 if c == "reasoning" else 0.0), world)
    assert warm["f1"].mean() < 1.0 == good["f1"].min()
    answers = {"warmup": [warm], "stage1": [good, good], "stage2": [good, good], "single_stage_baseline": [warm, warm]}
    signal = {"predicted_zero_adv": 0.25, "observed_per_step": [0.5, 0.25], "rewards_per_step": {"reward": [0.2, 0.4]}}
    signals = {arm: [signal, {**signal, "updates": {"kl": [0.01, 0.03], "clip_ratio": [0.0, 0.02]}}]
               for arm in ("stage1", "stage2", "single_stage_baseline")}
    by_family = [{"family": "count_objects", "capability": "perception_coarse", "n": 20, "pass_rate": 0.9,
                  "easy": 10, "medium": 10, "hard": 0},
                 {"family": "list_shapes", "capability": "perception_coarse", "n": 20, "pass_rate": 0.1,
                  "easy": 0, "medium": 10, "hard": 10}]
    s = results.summarise(answers, signals, by_family)
    assert s["eval"]["n"] == 60 and s["eval"]["reasoning"] + s["eval"]["perception"] == 60
    r = s["comparisons"]["stage2_vs_warmup"]["reasoning"]
    assert (r["diff"], r["n"], r["seeds"]) == (1.0, s["eval"]["reasoning"], 2)
    assert s["comparisons"]["two_stage_vs_baseline"]["perception"]["diff"] == 0.0
    assert s["comparisons"]["stage1_vs_warmup"]["description_f1"]["ci_low"] > 0
    assert s["zero_adv_observed"]["single_stage_baseline"]["mean"] == 0.375
    assert s["observed_zero_adv"] == {"perception": 0.375, "reasoning": 0.375}
    assert s["reward_per_step"]["stage1"] == [[0.2, 0.4], [0.2, 0.4]]
    assert s["pool"]["degenerate"] == 0.5 and [r["degenerate"] for r in s["pool_by_family"]] == [0.5, 0.5]
    assert s["bands"] == {"easy": 10, "medium": 20, "hard": 10}  # the pool's totals, summed over its families
    assert s["bands_by_capability"] == [{"capability": "perception_coarse", "band": b, "n": n}
                                        for b, n in (("easy", 10), ("hard", 10), ("medium", 20))]
    assert s["description_attributes"]["stage2"] == dict.fromkeys(ATTRIBUTES, 1.0)
    warm_attrs = s["description_attributes"]["warmup"]  # an extra first object ("N objects:" only) shifts the rest
    single = np.mean([len(w["scene"]["objects"]) == 1 for w in world.values()])
    assert 0 < single < 1 and warm_attrs["count"] == pytest.approx(single) and warm_attrs["size"] < 1.0
    truth = Counter(o["shape"] for w in world.values() for o in w["scene"]["objects"])
    assert s["shapes_named"]["stage2"] == pytest.approx({k: truth[k] / sum(truth.values()) for k in SHAPES})
    assert s["shapes_named"]["warmup"]["circle"] > s["shapes_named"]["stage2"]["circle"]  # the extra red circles
    assert s["updates"]["stage2"] == {"updates": 2, "kl_last": 0.03, "clip_ratio_mean": 0.01}
    s["seeds"] = [1, 2]
    report = results.write_report(s, tmp_path)
    text = report.read_text()
    assert "| stage2_vs_warmup | " in text and "+1.000 [+1.000, +1.000]" in text
    assert "| stage2 | 2 | 0.030 | 0.0100 |" in text
    assert "| list_shapes | perception_coarse | 20 | 0.10 | 0 | 10 | 10 | 50% |" in text
    assert "| model | circle | square | triangle | diamond | star |" in text
    assert "| model | count | size | colour | shape | cell |" in text and "| stage2 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in text
    assert all((tmp_path / "plots" / f).stat().st_size > 1000 for f in ("reward.png", "zero_adv.png", "scores.png"))
    # the table the demo ends with
    from rich.console import Console

    from pipelines import demo

    s.update(rollouts={"two_stage": 640, "single_stage_baseline": 640}, seconds={"score": 60.0})
    monkeypatch.setattr(demo, "console", Console(record=True, width=200))
    demo.show(s)
    shown = demo.console.export_text()
    assert "stage2_vs_warmup" in shown and "+1.000 [+1.000, +1.000]" in shown and "easy or hard: 50%" in shown


def test_a_missing_answer_is_refused(tmp_path):
    generate_world(tmp_path, n=6, seed=5, test_fraction=0, image_size=84)
    path = _answers(tmp_path, lambda q, c: 1.0)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(ValueError, match="1 questions unanswered"):
        results.per_question(path, results.scenes(tmp_path / "train.jsonl"))


def test_the_capability_mix_changes_only_the_mix():
    a, _ = make_sample(0, 11, 84)
    b, _ = make_sample(0, 11, 84, mix=None)
    assert a == b, "the default world is the same with and without the option"
    caps = [make_sample(4, i, 84, mix={"reasoning": 1, "perception_coarse": 0, "perception_fine": 0})[0]["capability"]
            for i in range(20)]
    assert set(caps) == {"reasoning"}
    with pytest.raises(ValueError, match="capability mix"):
        make_sample(0, 0, 84, mix={"planning": 1})

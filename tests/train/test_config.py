"""train.config: the paper's numbers as defaults, recipes and --set overrides layered on top, clear errors."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from schemas.errors import PebrError
from train.config import (
    STAGE_DEFAULTS,
    EvalConfig,
    GRPOStageConfig,
    WarmupConfig,
    load_recipe,
    parse_overrides,
    stage_config,
)

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"

SECTION_CLASSES = {"warmup": WarmupConfig, "perception": GRPOStageConfig, "reasoning": GRPOStageConfig,
                   "baseline": GRPOStageConfig, "eval": EvalConfig}
"""Recipe sections that fill a config class of train/config.py (the demo's `baseline` is a reasoning run)."""

# The GRPO settings both stages share (PAPER.md / EasyR1), and what stage 1 and stage 2 change.
PAPER_GRPO = dict(num_generations=8, temperature=1.2, top_p=0.99, max_completion_length=2048, learning_rate=1e-6,
                  lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=1.0, beta=0.01, epsilon_low=0.2,
                  epsilon_high=0.3, dual_clip=3.0, loss_type="dapo", scale_rewards="group", freeze_vision=False,
                  min_pixels=576, max_pixels=802_816)
PAPER_STAGES = {"perception": dict(stage="perception", rollout_batch_questions=560, update_batch_questions=112, epochs=1.0),
                "reasoning": dict(stage="reasoning", rollout_batch_questions=512, update_batch_questions=128, epochs=2.0)}


def _fields(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _known(message: str) -> list[str]:
    """The list of known settings an unknown-setting error names."""
    return ast.literal_eval(re.search(r"known: (\[.*\])$", message).group(1))


@pytest.mark.parametrize("stage", ["perception", "reasoning"])
def test_grpo_stage_defaults_are_the_papers(stage):
    cfg = stage_config(stage)
    assert isinstance(cfg, GRPOStageConfig)
    got = _fields(cfg)
    assert {k: got[k] for k in PAPER_GRPO} == PAPER_GRPO
    assert {k: got[k] for k in PAPER_STAGES[stage]} == PAPER_STAGES[stage]
    assert cfg == stage_config(stage, {}, {}) == stage_config(stage, None, None)


def test_warmup_defaults_are_the_papers():
    cfg = stage_config("warmup")
    assert isinstance(cfg, WarmupConfig)
    assert (cfg.learning_rate, cfg.epochs, cfg.lr_scheduler_type, cfg.warmup_ratio, cfg.max_length, cfg.freeze_vision) == (
        1e-5, 2.0, "cosine", 0.1, 4096, True)
    assert cfg == WarmupConfig()


def test_stage_defaults_change_only_batch_sizes_and_epochs():
    assert set(STAGE_DEFAULTS) == {"perception", "reasoning"}
    s1, s2 = _fields(stage_config("perception")), _fields(stage_config("reasoning"))
    differ = {k for k in s1 if s1[k] != s2[k]}
    # (the stage's reward settings may differ too; every other GRPO setting is shared)
    assert {"stage", "rollout_batch_questions", "update_batch_questions", "epochs"} <= differ
    assert differ - {"stage", "rollout_batch_questions", "update_batch_questions", "epochs"} <= {"rewards", "reward_weights"}


def test_layers_defaults_then_recipe_section_then_overrides():
    recipe = {"perception": {"learning_rate": 2e-6, "epochs": 3, "save_steps": 7},
              "reasoning": {"beta": 0.5},
              "warmup": {"batch_size": 2, "epochs": 4}}
    snapshot = {k: dict(v) for k, v in recipe.items()}
    cfg = stage_config("perception", recipe, {"epochs": 5, "max_steps": 9})
    assert (cfg.learning_rate, cfg.save_steps) == (2e-6, 7), "the recipe section beats the defaults"
    assert (cfg.epochs, cfg.max_steps) == (5, 9), "overrides beat the recipe"
    assert (cfg.rollout_batch_questions, cfg.update_batch_questions, cfg.stage) == (560, 112, "perception"), \
        "stage defaults the recipe does not touch stay"
    assert cfg.beta == 0.01, "another stage's section does not leak in"
    # an override of a stage default (not in the recipe) wins too
    assert stage_config("reasoning", recipe, {"rollout_batch_questions": 64}).rollout_batch_questions == 64
    assert stage_config("reasoning", recipe).beta == 0.5
    w = stage_config("warmup", recipe, {"epochs": 1})
    assert (w.batch_size, w.epochs, w.learning_rate) == (2, 1, 1e-5)
    # nothing was written back into the inputs or the shared defaults
    assert recipe == snapshot
    assert {k: STAGE_DEFAULTS["perception"][k] for k in PAPER_STAGES["perception"]} == PAPER_STAGES["perception"]
    assert stage_config("perception").epochs == 1.0


@pytest.mark.parametrize("stage,cls", [("warmup", WarmupConfig), ("perception", GRPOStageConfig),
                                       ("reasoning", GRPOStageConfig)])
def test_unknown_settings_are_refused_with_the_known_ones(stage, cls):
    with pytest.raises(PebrError) as exc:
        stage_config(stage, {stage: {"learning_rate": 1e-6, "lr": 1e-6}}, {"betta": 1})
    message = str(exc.value)
    assert message.startswith(f"{stage}: unknown setting(s) ['betta', 'lr']; known: [")
    assert _known(message) == sorted(f.name for f in dataclasses.fields(cls))
    # the refusal comes from the recipe alone as well as from the overrides alone
    with pytest.raises(PebrError, match=re.escape("unknown setting(s) ['lr']")):
        stage_config(stage, {stage: {"lr": 1}})
    with pytest.raises(PebrError, match=re.escape("unknown setting(s) ['lr']")):
        stage_config(stage, None, {"lr": 1})


def test_unknown_stage():
    for stage in ("stage1", "Perception", ""):
        with pytest.raises(PebrError, match=re.escape(f"unknown stage {stage!r}; expected one of warmup, perception, reasoning")):
            stage_config(stage)


@pytest.mark.parametrize("stage", ["warmup", "perception"])
def test_an_empty_recipe_section_means_the_defaults(tmp_path, stage):
    path = tmp_path / "r.yaml"
    path.write_text(f"{stage}:\n  # learning_rate: 1.0e-6\n")
    assert stage_config(stage, load_recipe(path)) == stage_config(stage)


# -- the shipped recipes ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pebr.yaml", "demo.yaml"])
def test_every_setting_of_a_shipped_recipe_is_a_known_field(name):
    recipe = load_recipe(PIPELINES / name)
    sections = [s for s in SECTION_CLASSES if s in recipe]
    assert {"warmup", "perception", "reasoning", "eval"} <= set(sections)
    for section in sections:
        known = {f.name for f in dataclasses.fields(SECTION_CLASSES[section])}
        assert isinstance(recipe[section], dict), section
        assert set(recipe[section]) <= known, f"{name}: {section}: {sorted(set(recipe[section]) - known)}"
    for stage in ("warmup", "perception", "reasoning"):
        cfg = stage_config(stage, recipe)
        for key, value in recipe[stage].items():
            if not isinstance(value, dict):  # a nested setting may become its own typed object
                assert getattr(cfg, key) == value, f"{name}: {stage}.{key}"
    EvalConfig(**recipe["eval"])
    if "clip" in recipe:  # the demo's tiny CLIP model (train init-clip)
        from schemas.config import build
        from train.tiny_clip import TinyClipConfig

        build(TinyClipConfig, recipe["clip"])
    if "baseline" in recipe:
        assert stage_config("reasoning", recipe, recipe["baseline"]).stage == "reasoning"


def test_the_paper_recipe_restates_the_papers_numbers():
    recipe = load_recipe(PIPELINES / "pebr.yaml")
    for stage in ("perception", "reasoning"):
        cfg = _fields(stage_config(stage, recipe))
        assert {k: cfg[k] for k in PAPER_GRPO} == PAPER_GRPO, stage
        assert {k: cfg[k] for k in PAPER_STAGES[stage]} == PAPER_STAGES[stage], stage
        assert cfg["use_vllm"] is True and cfg["bf16"] is True
    s1 = stage_config("perception", recipe)
    assert (s1.rewards.clip_model_path, s1.rewards.allow_remote_code) == ("/models/FG-CLIP-large", True)
    assert s1.rewards.length_limit == 512, "the other reward settings keep the paper's values"
    assert stage_config("reasoning", recipe).rewards.clip_model_path is None
    w = stage_config("warmup", recipe)
    assert (w.learning_rate, w.epochs, w.lr_scheduler_type, w.warmup_ratio, w.max_length, w.freeze_vision) == (
        1e-5, 2, "cosine", 0.1, 4096, True)
    assert w.batch_size * w.gradient_accumulation_steps == 32
    assert recipe["eval"]["temperature"] == 0.5
    assert (recipe["score"]["n"], recipe["score"]["temperature"], recipe["score"]["top_p"]) == (8, 1.2, 0.99)


def test_the_demo_recipe_keeps_the_papers_algorithm():
    recipe = load_recipe(PIPELINES / "demo.yaml")
    for stage in ("perception", "reasoning"):
        cfg = stage_config(stage, recipe)
        assert (cfg.num_generations, cfg.temperature, cfg.top_p, cfg.beta) == (8, 1.2, 0.99, 0.01)
        assert (cfg.epsilon_low, cfg.epsilon_high, cfg.dual_clip, cfg.loss_type) == (0.2, 0.3, 3.0, "dapo")
        assert cfg.stage == stage
        # the paper's proportions: RL lr 1/10 of SFT's, its updates per rollout batch, its epochs
        assert cfg.learning_rate == pytest.approx(stage_config("warmup", recipe).learning_rate / 10)
        assert cfg.lr_scheduler_type == "constant"
        assert cfg.rollout_batch_questions // cfg.update_batch_questions == {"perception": 5, "reasoning": 4}[stage]
        assert cfg.epochs == {"perception": 1, "reasoning": 2}[stage] and cfg.max_steps == -1
    base = stage_config("reasoning", recipe, recipe["baseline"])
    s2 = stage_config("reasoning", recipe)
    assert (base.learning_rate, base.rollout_batch_questions, base.update_batch_questions) == (
        s2.learning_rate, s2.rollout_batch_questions, s2.update_batch_questions), "the baseline trains like stage 2"
    assert stage_config("perception", recipe).rewards.length_limit < stage_config("perception", recipe).max_completion_length


def test_load_recipe_errors_and_empty_files(tmp_path):
    assert load_recipe(None) == {}
    with pytest.raises(PebrError, match=re.escape(f"--recipe {tmp_path / 'nope.yaml'}: no such file")):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(PebrError, match="no such file"):
        load_recipe(tmp_path)  # a folder is not a recipe
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    assert load_recipe(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- warmup\n- perception\n")
    with pytest.raises(PebrError, match="expected a mapping at the top level"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "ok.yaml").write_text("reasoning:\n  beta: 0.02\n  learning_rate: 2.0e-6\n")
    assert load_recipe(str(tmp_path / "ok.yaml")) == {"reasoning": {"beta": 0.02, "learning_rate": 2e-6}}


# -- --set key=value ----------------------------------------------------------------------------

def test_parse_overrides_types():
    got = parse_overrides([
        "max_steps=5", "beta=0.02", "learning_rate=2e-5", "warmup_ratio=1E-1", "freeze_vision=true", "bf16=False",
        "dual_clip=null", "clip_model_path=/models/fg.clip-large", "lr_scheduler_type=cosine",
        " vllm_mode =server", "reward_weights={accuracy: 0.9, format: 0.1}", "config=a=b", "limit=",
    ])
    assert got == {
        "max_steps": 5, "beta": 0.02, "learning_rate": 2e-5, "warmup_ratio": 0.1, "freeze_vision": True, "bf16": False,
        "dual_clip": None, "clip_model_path": "/models/fg.clip-large", "lr_scheduler_type": "cosine",
        "vllm_mode": "server", "reward_weights": {"accuracy": 0.9, "format": 0.1}, "config": "a=b", "limit": None,
    }
    # YAML 1.1 reads "2e-5" as a string; here it is a number, whose type is exactly float
    assert type(got["learning_rate"]) is float and type(got["max_steps"]) is int
    assert parse_overrides([]) == {}
    assert parse_overrides(["beta=0.1", "beta=0.2"]) == {"beta": 0.2}, "the last one wins"


def test_parse_overrides_needs_key_equals_value():
    with pytest.raises(PebrError, match=re.escape("override 'beta': expected key=value")):
        parse_overrides(["max_steps=1", "beta"])


def test_overrides_from_the_command_line_fill_a_stage_config():
    cfg = stage_config("reasoning", {}, parse_overrides(["learning_rate=5e-7", "dual_clip=null", "use_vllm=true"]))
    assert (cfg.learning_rate, cfg.dual_clip, cfg.use_vllm) == (5e-7, None, True)


def test_every_reward_setting_is_reachable_from_recipes_and_overrides():
    from rewards.config import RewardConfig

    recipe = {"perception": {"rewards": {"clip_model_path": "/m/clip", "length_limit": 256}}}
    cfg = stage_config("perception", recipe, parse_overrides(["rewards.clip_threshold=0.3", "rewards.length_limit=128"]))
    assert isinstance(cfg.rewards, RewardConfig)
    assert (cfg.rewards.clip_model_path, cfg.rewards.length_limit, cfg.rewards.clip_threshold) == ("/m/clip", 128, 0.3)
    for f in dataclasses.fields(RewardConfig):
        value = getattr(RewardConfig(), f.name)
        got = stage_config("reasoning", {}, {"rewards": {f.name: value}}).rewards
        assert getattr(got, f.name) == value
    with pytest.raises(PebrError, match=r"reasoning.rewards: unknown setting\(s\) \['lenght_limit'\]"):
        stage_config("reasoning", {}, parse_overrides(["rewards.lenght_limit=3"]))
    with pytest.raises(PebrError, match="max_steps must be int, not 'abc'"):
        stage_config("reasoning", {}, parse_overrides(["max_steps=abc"]))


def test_one_recipe_drives_every_step(tmp_path):
    """pebr.yaml's score, select and eval sections are read by the commands, and a top-level
    format_prompt reaches every stage that does not set its own."""
    from curate.score import score_options
    from curate.select import select_options
    from schemas.config import recipe_section

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "pipelines" / "pebr.yaml")
    opts = score_options("m", recipe_section(recipe, "score"))
    assert (opts.engine, opts.sampling.n, opts.sampling.temperature, opts.sampling.top_p) == ("vllm", 8, 1.2, 0.99)
    sel = select_options("reasoning", tmp_path, recipe_section(recipe, "select"))
    assert (sel.easy_min, sel.hard_max, sel.group_size) == (1.0, 0.0, 8)
    ev = stage_config("eval", recipe)
    assert (ev.temperature, ev.max_new_tokens) == (0.5, 2048)
    prompt = tmp_path / "p.jinja"
    prompt.write_text("Q: {{ content }}")
    with_prompt = {**recipe, "format_prompt": str(prompt)}
    assert stage_config("reasoning", with_prompt).format_prompt == str(prompt)
    assert stage_config("eval", with_prompt).format_prompt == str(prompt)
    assert score_options("m", recipe_section(with_prompt, "score")).template == "Q: {{ content }}"
    with pytest.raises(PebrError, match=r"score: unknown setting\(s\) \['nn'\]"):
        score_options("m", {"nn": 3})
    with pytest.raises(PebrError, match="n must be int"):
        score_options("m", {"n": "eight"})

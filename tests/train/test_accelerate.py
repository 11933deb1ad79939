"""A GRPO stage under `accelerate launch` with two processes (CPU, gloo): the paper's batches are global.

The run uses the shipped DDP config (pipelines/accelerate/ddp.yaml) as a user would on GPUs, with the
GPUs hidden. A reward wrapper logs the sample ids each process scored, so the test sees what TRL's
sampler handed out, not only what the run record claims.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = REPO / "pipelines" / "accelerate"

DRIVER = '''
import functools, json, os, sys
from pathlib import Path

import rewards
from train.config import stage_config
from train.grpo import run_stage

model, data, out, seen = map(Path, sys.argv[1:5])
overrides = json.loads(sys.argv[5])
log = seen / f"rank{os.environ['RANK']}.jsonl"
real = rewards.stage_reward_functions


def logged(func):
    @functools.wraps(func)
    def wrapper(*args, **kw):
        with log.open("a") as f:
            f.write("".join(json.dumps(sid) + "\\n" for sid in kw["sample_id"]))
        return func(*args, **kw)
    return wrapper


def stage_reward_functions(*args, **kw):
    funcs, weights = real(*args, **kw)
    return [logged(funcs[0]), *funcs[1:]], weights


rewards.stage_reward_functions = stage_reward_functions
run_stage(model, data, out, stage_config("reasoning", overrides=overrides))
'''

# Two processes, 4 completions per micro-step each: an update of 2 questions x G 4 = 8 completions is one
# micro-step per process; a rollout batch of 4 questions feeds two updates, so two steps are one round.
SETTINGS = dict(num_generations=4, micro_batch_size=4, update_batch_questions=2, rollout_batch_questions=4,
                max_completion_length=12, max_steps=2, save_steps=1000, logging_steps=1)


@pytest.mark.slow
def test_two_processes_share_the_papers_batches(tmp_path, tiny_model):
    from curate.synth import generate_world

    generate_world(tmp_path / "world", n=16, seed=11, test_fraction=0.0)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    seen, out = tmp_path / "seen", tmp_path / "run"
    seen.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", "0", str(driver),
           str(tiny_model), str(tmp_path / "world" / "train.jsonl"), str(out), str(seen), json.dumps(SETTINGS)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    record = json.loads((out / "pebr_run.json").read_text())
    b = record["trl_batching"]
    assert b["world_size"] == 2
    assert (b["questions_per_update"], b["questions_per_rollout"]) == (2, 4) == (
        SETTINGS["update_batch_questions"], SETTINGS["rollout_batch_questions"])
    assert (b["per_device_train_batch_size"], b["gradient_accumulation_steps"], b["steps_per_generation"]) == (4, 1, 2)
    assert b["per_device_train_batch_size"] * b["gradient_accumulation_steps"] * b["world_size"] == 2 * 4
    assert record["rollouts"] == 2 * 2 * 4 and record["skipped"] == {} and record["longest_prompt_tokens"] > 0
    # What each process scored: one rollout round of 4 questions x 4 completions, half on each process, no overlap.
    ranks = [[json.loads(x) for x in (seen / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [len(r) for r in ranks] == [8, 8]
    assert not set(ranks[0]) & set(ranks[1])
    everything = ranks[0] + ranks[1]
    assert len(set(everything)) == SETTINGS["rollout_batch_questions"]
    assert all(everything.count(sid) == SETTINGS["num_generations"] for sid in set(everything))
    assert (out / "model.safetensors").is_file() and json.loads((out / "signal.json").read_text())["stage"] == "reasoning"


def test_the_shipped_accelerate_configs_load_and_say_how_to_launch():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {"ddp.yaml": "MULTI_GPU", "fsdp2.yaml": "FSDP", "zero3.yaml": "DEEPSPEED"}
    assert sorted(p.name for p in ACCELERATE.glob("*.yaml")) == sorted(kinds)
    for name, kind in kinds.items():
        path = ACCELERATE / name
        config = load_config_from_file(str(path))
        assert str(config.distributed_type).endswith(kind) and config.num_processes == 8
        header = path.read_text().split("\ncompute_environment")[0]
        assert f"accelerate launch --config_file pipelines/accelerate/{name} -m train.cli run --stage" in header
        assert "GB" in header and "GPU" in header
    fsdp = load_config_from_file(str(ACCELERATE / "fsdp2.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and "# fsdp_offload_params: true" in (ACCELERATE / "fsdp2.yaml").read_text()
    assert load_config_from_file(str(ACCELERATE / "zero3.yaml")).deepspeed_config["zero_stage"] == 3

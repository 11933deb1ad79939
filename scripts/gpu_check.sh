#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a lent GPU machine (no network), from the repo root:
#
#     bash scripts/gpu_check.sh [extra gpu_check.py args, e.g. --samples 16 --steps 3]
#
# Needs the wheels in .whl/ (carried: transformers and the three it needs at its version, trl, datasets, dill,
# multiprocess, mathruler, pylatexenc); everything else (torch, accelerate, pyarrow, ...) is the machine's own.
# transformers travels because the fast path uses 5.24's static-cache API (max_cache_len, CompileConfig).
# Fetch them where pip works, for the target's Python (3.12 on the machines this was run on):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#         transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 huggingface_hub==2.4.0 \
#         trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 mathruler==0.1.0 pylatexenc==2.11
# The big files (the 3B model, ~7 GB) stay in $WORK on the machine's disk; the figures (gpu_check.json,
# rewritten after every phase) and the log go to $OUT, so they come back.
set -uo pipefail

OUT=${OUT:-/tmp/gpu_out}
WORK=${WORK:-/tmp/gpu}
LIMIT=${GPU_CHECK_LIMIT_S:-450}   # gpu_check.py is stopped after this many seconds (its JSON is per phase)
mkdir -p "$OUT"
rm -rf "$WORK"

main() {
t0=$(date +%s)
echo "== install carried wheels ($(ls .whl/*.whl | wc -l) files)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install FAILED"; return 2; }
export PYTHONPATH=/tmp/site:$PWD
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HOME=/tmp/hf TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg PYTHONUNBUFFERED=1

echo "== machine"
nvidia-smi -L || true
python3 - <<'EOF'
import sys, importlib.metadata as md
from packaging.requirements import Requirement
import torch, transformers, trl, datasets
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
print("transformers", transformers.__version__, "trl", trl.__version__, "datasets", datasets.__version__)
for n in ("accelerate", "huggingface_hub", "tokenizers", "safetensors", "numpy", "pyarrow", "pandas", "fsspec",
          "tqdm", "peft", "pillow", "torchvision", "sympy", "dill", "multiprocess", "mathruler", "pylatexenc"):
    try:
        print(f"  {n} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"  {n} MISSING")
# Every non-extra requirement of the carried wheels, against what this machine has.
bad = 0
for dist in ("transformers", "tokenizers", "safetensors", "huggingface_hub", "trl", "datasets", "dill", "multiprocess",
             "mathruler", "pylatexenc"):
    for r in md.requires(dist) or []:
        req = Requirement(r)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            have = None
        if have is None or not req.specifier.contains(have, prereleases=True):
            bad += 1
            print(f"  REQ-MISMATCH {dist} needs {r}; machine has {have}")
print("requirements of carried wheels:", "all met" if not bad else f"{bad} NOT met (see above)")
EOF
[ $? -eq 0 ] || { echo "version report FAILED"; return 4; }

echo "== import smoke"
python3 -c "import trl, datasets, train.grpo, generation, generation.hf, curate.synth, rewards, generation.prompt, \
train.config, train.tiny, train.common, train.data, mathruler.grader; from trl import GRPOConfig, GRPOTrainer; print('imports ok')" \
    || { echo "import smoke FAILED"; return 3; }
echo "setup took $(( $(date +%s) - t0 )) s"

echo "== gpu_check (limit ${LIMIT}s): $*"
rc=0
timeout --signal=TERM --kill-after=20 "$LIMIT" \
    python3 benchmarks/gpu_check.py --work "$WORK" --json "$OUT/gpu_check.json" "$@" || rc=$?
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
echo "gpu_check exit $rc; total $(( $(date +%s) - t0 )) s"
return $rc
}

rc=0
main "$@" 2>&1 | tee "$OUT/gpu_log.txt" || rc=$?
exit $rc

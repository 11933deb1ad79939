#!/usr/bin/env bash
# Run benchmarks/bench_select.py on a lent machine with more CPU cores (no network), from the repo root:
#
#     bash scripts/bench_select_device.sh
#
# Needs the wheels in .whl/ (carried: duckdb and typer for the machine's Python; the rest of what
# `curate select` imports, pyarrow, numpy, rich, pillow, is the machine's own). Installs the project
# without dependencies so that the `curate` CLI runs exactly as a user's would, then writes the
# figures to $OUT/bench_select.json and the log to $OUT/bench_select_log.txt. Fetch the wheels with
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl duckdb==2.0.1 typer==0.28.0
set -uo pipefail
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
{
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || echo "editable install failed: the bench measures through the library"
echo "cpus $(nproc); $(lscpu | grep -m1 'Model name')"
python3 -c "import duckdb, pyarrow, typer; print('duckdb', duckdb.__version__, 'pyarrow', pyarrow.__version__, 'typer', typer.__version__)"
python3 benchmarks/bench_select.py --results "$OUT/bench_select.json"
} 2>&1 | tee "$OUT/bench_select_log.txt"

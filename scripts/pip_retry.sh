#!/usr/bin/env bash
# Runs `PYTHON -m pip ARGS...` and retries it when it fails, for flaky networks: pip itself resumes
# an interrupted download (PIP_RESUME_RETRIES) and retries a refused connection (PIP_RETRIES), but a
# download cut more often than that fails the whole install. Already-installed packages are not
# downloaded again on the next attempt.
#
#   scripts/pip_retry.sh .venv/bin/python install -c constraints.txt -e ".[train]"
set -uo pipefail
export PIP_RETRIES="${PIP_RETRIES:-10}" PIP_RESUME_RETRIES="${PIP_RESUME_RETRIES:-20}" PIP_TIMEOUT="${PIP_TIMEOUT:-60}"
py="$1"; shift
attempts="${PEBR_PIP_ATTEMPTS:-4}"
for ((i = 1; i <= attempts; i++)); do
    "$py" -m pip "$@" && exit 0
    rc=$?
    if ((i < attempts)); then
        echo "pip $1 failed (exit $rc, attempt $i of $attempts); retrying in $((10 * i)) s" >&2
        sleep $((10 * i))
    fi
done
echo "pip $1 failed after $attempts attempts" >&2
exit "$rc"

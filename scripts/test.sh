#!/usr/bin/env bash
# The project's test run: lint and the format check first (cheap, catches breakage early),
# then pytest with the defaults from pyproject (-m 'not slow'). Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."

.venv/bin/ruff check .
.venv/bin/ruff format --check .

status=0
.venv/bin/pytest "$@" || status=$?

if [[ $status -eq 5 ]]; then
    # pytest's "no tests collected" must not look like a green run in CI.
    echo "test.sh: pytest collected no tests (exit 5); treating as failure: a run that tests" \
        "nothing must not pass" >&2
    exit 1
fi
exit "$status"

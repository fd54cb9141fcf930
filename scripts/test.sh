#!/usr/bin/env bash
# Every check `make test` (and so CI) runs: lint, strict typing, then the test suites.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONDONTWRITEBYTECODE=1
VENV=$ROOT/.venv

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== engine tests"
# The engine's tests run without Home Assistant's pytest plugin, which blocks sockets and
# checks for Home Assistant's own leftovers after every test.
"$VENV/bin/pytest" -p no:homeassistant -p no:cacheprovider tests/engine tests/flows tests/e2e "$@"
if [ -d tests/ha ]; then
  echo "== Home Assistant tests"
  "$VENV/bin/pytest" -p no:cacheprovider --cov=custom_components/edge_inspector \
    --cov-report=term-missing:skip-covered tests/ha "$@"
fi

#!/usr/bin/env bash
# Every check `make test` (and so CI) runs: lint, strict typing, the workflows, the engine's
# tests, then the Home Assistant tests (tests/ha and the real-`hass` ones in tests/e2e) on each
# supported release, and the HACS install on the current one.
#
#   scripts/test.sh [PYTEST ARGS...]     e.g. scripts/test.sh -x -k remote
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONDONTWRITEBYTECODE=1
# The project is not installed into the shared environments: the checkout is on the path.
export PYTHONPATH=$ROOT
# Hypothesis (the fuzzing tests) keeps its files outside the checkout; it keeps no example
# database at all (`database=None`): every run generates the same cases from the same seed.
export HYPOTHESIS_STORAGE_DIRECTORY=${EDGE_INSPECTOR_CACHE:-$HOME/.cache/edge-inspector}/hypothesis
CURRENT=$ROOT/.venv             # Home Assistant 2026.11, Python 3.14
OLDEST=$ROOT/.venv-ha-2026.2    # Home Assistant 2026.2, Python 3.13

# pytest's exit 5 (nothing selected) is no failure for one suite of several: `-k remote` selects
# nothing in some of them.
suite() { "$@" || { local rc=$?; [ "$rc" -eq 5 ] || exit "$rc"; }; }
release() { "$1/bin/python" -c 'from homeassistant.const import __version__; print(__version__)'; }

echo "== ruff"
"$CURRENT/bin/ruff" check .
"$CURRENT/bin/ruff" format --check .
echo "== mypy --strict"
"$CURRENT/bin/mypy"
echo "== actionlint"
"$CURRENT/bin/actionlint" .github/workflows/*.yml
echo "== engine tests (Python $("$CURRENT/bin/python" -c 'import platform; print(platform.python_version())'))"
# The engine's tests run without Home Assistant's pytest plugin, which blocks sockets and
# checks for Home Assistant's own leftovers after every test.
suite "$CURRENT/bin/pytest" -p no:homeassistant -p no:cacheprovider tests/engine tests/flows "$@"
for venv in "$CURRENT" "$OLDEST"; do
  echo "== Home Assistant $(release "$venv") (Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'))"
  suite "$venv/bin/pytest" -p no:cacheprovider --cov=custom_components/edge_inspector \
    --cov-report=term-missing:skip-covered tests/ha "$@"
  suite "$venv/bin/pytest" -p no:homeassistant -p no:cacheprovider tests/e2e "$@"
done
echo "== HACS install on Home Assistant $(release "$CURRENT")"
suite "$CURRENT/bin/pytest" -p no:homeassistant -p no:cacheprovider tests/install "$@"

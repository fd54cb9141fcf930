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
# One real Ollama (tests/real_ollama.py) for every suite, rather than one per suite: the models
# load once and the prompt cache carries over. A REAL_OLLAMA_HOST you set is used as it is.
if [ -z "${REAL_OLLAMA_HOST:-}" ]; then
  coproc OLLAMA { exec "$CURRENT/bin/python" -m tests.real_ollama; }
  if read -r -t 180 REAL_OLLAMA_HOST <&"${OLLAMA[0]}"; then
    export REAL_OLLAMA_HOST
    echo "== the real Ollama serves at $REAL_OLLAMA_HOST"
  else
    echo "== no real Ollama (not installed?): the tests that need it start their own or skip"
  fi
  trap '[ -n "${OLLAMA_PID:-}" ] && kill "$OLLAMA_PID" 2>/dev/null; wait' EXIT
fi
echo "== engine tests (Python $("$CURRENT/bin/python" -c 'import platform; print(platform.python_version())'))"
# The engine's tests run without Home Assistant's pytest plugin, which blocks sockets and
# checks for Home Assistant's own leftovers after every test.
suite "$CURRENT/bin/pytest" -p no:homeassistant -p no:cacheprovider --durations=15 tests/engine tests/flows "$@"
for venv in "$CURRENT" "$OLDEST"; do
  echo "== Home Assistant $(release "$venv") (Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'))"
  suite "$venv/bin/pytest" -p no:cacheprovider --cov=custom_components/edge_inspector \
    --cov-report=term-missing:skip-covered tests/ha "$@"
  suite "$venv/bin/pytest" -p no:homeassistant -p no:cacheprovider tests/e2e "$@"
done
echo "== HACS install on Home Assistant $(release "$CURRENT")"
suite "$CURRENT/bin/pytest" -p no:homeassistant -p no:cacheprovider tests/install "$@"

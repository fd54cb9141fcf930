#!/usr/bin/env bash
# Idempotent set-up used by `make demo` and `make test`.
#
# Finds (or builds once, from Debian's source package) Python 3.13.5, makes .venv, installs the
# project with its test extras, and installs the system packages the tests need. Everything that
# is slow to make is cached outside the checkout in $EDGE_INSPECTOR_CACHE, so a second run only
# compares stamps.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EDGE_INSPECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-inspector}
PY_VERSION=3.13.5
PY_ORIG=python3.13_${PY_VERSION}.orig.tar.xz
PY_SHA256=93e583f243454e6e9e4588ca2c2662206ad961659863277afcdb96801647d640
PY_PREFIX=$CACHE/python-$PY_VERSION
VENV=$ROOT/.venv
APT_PACKAGES=(libgl1 libglib2.0-0 mosquitto mosquitto-clients openssl chromium fonts-dejavu-core)

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

python_ok() {
  "$1" - <<'PY' 2>/dev/null
import sys, sqlite3, ssl, ctypes, lzma, bz2, zlib  # the modules a half-built Python lacks
con = sqlite3.connect(":memory:")
con.execute("create virtual table t using fts5(x)")
sys.exit(0 if (3, 13, 2) <= sys.version_info[:3] < (3, 14) else 1)
PY
}

find_python() {
  local candidate
  for candidate in "$PY_PREFIX/bin/python3.13" "$(command -v python3.13 || true)" /usr/bin/python3.13; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && python_ok "$candidate"; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

build_python() {
  log "building Python $PY_VERSION from Debian's source package into $PY_PREFIX (once, ~3 min)"
  local work lists
  work=$(mktemp -d)
  lists=$work/lists
  mkdir -p "$lists/partial"
  # A private sources list, so the system's apt configuration is left untouched.
  cat >"$work/sources.list" <<SRC
deb-src http://deb.debian.org/debian trixie main
SRC
  local apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$lists" -o "APT::Sandbox::User=root")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work" && apt-get "${apt_opts[@]}" source --download-only python3.13 >/dev/null)
  echo "$PY_SHA256  $work/$PY_ORIG" | sha256sum -c --quiet
  tar -C "$work" -xf "$work/$PY_ORIG"
  local src
  src=$(find "$work" -maxdepth 1 -type d -name 'Python-*' | head -n 1)
  (cd "$src" && ./configure --prefix="$PY_PREFIX" --with-ensurepip=install >"$work/configure.log" 2>&1 \
    && make -j"$(nproc)" >"$work/make.log" 2>&1 && make altinstall >"$work/install.log" 2>&1) || {
    log "Python build failed; logs in $work"
    exit 1
  }
  rm -rf "$work"
}

ensure_apt_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  local python=$1 stamp want
  want=$( (cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" "${BASH_SOURCE[0]}"; "$python" --version) | sha256sum | cut -d' ' -f1)
  stamp=$VENV/.edge-inspector-setup
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python"; then
    log "creating $VENV with $python"
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
  fi
  log "installing edge-inspector with its test extras (first time: a few minutes)"
  PIP_CACHE_DIR=$CACHE/pip "$VENV/bin/python" -m pip install -q --upgrade pip
  PIP_CACHE_DIR=$CACHE/pip "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[test]"
  printf '%s\n' "$want" >"$stamp"
}

ensure_node_red() {
  # Node-RED for the flow tests, outside the checkout; Node.js 20 comes with the machine.
  local want=4.1.8 dir=$CACHE/node
  if [ -f "$dir/node_modules/node-red/package.json" ] &&
    grep -q "\"version\": \"$want\"" "$dir/node_modules/node-red/package.json"; then
    return 0
  fi
  if ! command -v npm >/dev/null; then
    log "npm not found: install Node.js 20 (Debian: apt-get install nodejs npm)"
    exit 1
  fi
  log "installing Node-RED $want into $dir"
  mkdir -p "$dir"
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "node-red@$want" >/dev/null)
}

ensure_browser_driver() {
  # Playwright's library (no bundled browsers: the tests drive Debian's chromium).
  local want=1.49.1 dir=$CACHE/browser
  if [ -f "$dir/node_modules/playwright-core/package.json" ] &&
    grep -q "\"version\": \"$want\"" "$dir/node_modules/playwright-core/package.json"; then
    return 0
  fi
  log "installing playwright-core $want into $dir"
  mkdir -p "$dir"
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund \
    --loglevel=error "playwright-core@$want" >/dev/null)
}

main() {
  mkdir -p "$CACHE"
  ensure_apt_packages
  ensure_node_red
  ensure_browser_driver
  local python
  if ! python=$(find_python); then
    build_python
    python=$(find_python) || { log "no usable Python $PY_VERSION after the build"; exit 1; }
  fi
  ensure_venv "$python"
}

main "$@"

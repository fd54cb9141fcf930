#!/usr/bin/env bash
# Idempotent set-up used by `make demo` and `make test`.
#
# One virtual environment per supported Home Assistant release, each on the Python that release
# needs, kept outside the checkout in $EDGE_INSPECTOR_CACHE and linked into it:
#   .venv               Python 3.14, Home Assistant 2026.11 (current)  -- the demo, lint, the tests
#   .venv-ha-2026.2     Python 3.13, Home Assistant 2026.2 (oldest supported)
# plus a plain Home Assistant 2026.11 environment without this project (the HACS install test
# copies it and lets Home Assistant install our requirement itself) and the wheels that install
# needs beyond Home Assistant's own packages. The project itself is never installed into these
# environments: the Makefile and the tests put the checkout on PYTHONPATH, so any number of
# clones share them. Python 3.13.5 is built once from Debian's source package where the system
# has none; Python 3.14 comes from Debian's unstable binary packages, unpacked into the cache and
# pointed at their own C library (Debian 12 and 13 have too old a glibc for them). A second run
# only compares stamps.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EDGE_INSPECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-inspector}
DEBIAN_MIRROR=${EDGE_INSPECTOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY313_VERSION=3.13.5
PY313_ORIG=python3.13_${PY313_VERSION}.orig.tar.xz
PY313_SHA256=93e583f243454e6e9e4588ca2c2662206ad961659863277afcdb96801647d640
PY313_PREFIX=$CACHE/python-$PY313_VERSION
PY314_ROOT=$CACHE/python-3.14/root
# Python 3.14 and what it links, from Debian unstable (verified by apt against the signed index).
PY314_DEBS=(python3.14 python3.14-minimal libpython3.14-minimal libpython3.14-stdlib python3.14-venv
  python3.14-dev libpython3.14-dev libpython3.14 libc6 libc-gconv-modules-extra libgcc-s1
  libstdc++6 libssl3t64 openssl-provider-legacy libffi8 libsqlite3-0 libexpat1 libzstd1 zlib1g
  libbz2-1.0 liblzma5 libncursesw6 libtinfo6 libreadline8t64 libuuid1 libdb5.3t64 libmpdec4
  media-types)
APT_PACKAGES=(libgl1 libglib2.0-0 libturbojpeg0 mosquitto mosquitto-clients openssl chromium fonts-dejavu-core
  patchelf python3-venv python3-pip gcc unzip curl)
export PIP_CACHE_DIR=$CACHE/pip PIP_DISABLE_PIP_VERSION_CHECK=1
BOOTSTRAP_PIP=python3
# An environment is rebuilt when its requirements change, or when this is raised (a change to how
# this script builds environments).
ENV_REVISION=1
HACS_ENV_REVISION=3

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

python_ok() {  # python_ok PYTHON MIN_VERSION MAX_VERSION_EXCLUSIVE
  "$1" - "$2" "$3" <<'PY' 2>/dev/null
import sys, sqlite3, ssl, ctypes, lzma, bz2, zlib  # the modules a half-built Python lacks
con = sqlite3.connect(":memory:")
con.execute("create virtual table t using fts5(x)")
low, high = (tuple(int(p) for p in v.split(".")) for v in sys.argv[1:3])
sys.exit(0 if low <= sys.version_info[: len(low)] and sys.version_info[: len(high)] < high else 1)
PY
}

# A private apt configuration (lists and downloads in a temporary folder), so the system's own
# sources and state stay untouched.
private_apt() {  # private_apt WORKDIR SOURCE_LINE APT_ARGS...
  local work=$1 line=$2
  shift 2
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  printf '%s\n' "$line" >"$work/sources.list"
  apt-get -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-" \
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives" \
    -o "Dir::Cache=$work" -o "APT::Sandbox::User=root" \
    -o "APT::Architecture=amd64" -o "APT::Architectures=amd64" "$@"
}

find_python() {  # find_python MIN_VERSION MAX_VERSION_EXCLUSIVE CANDIDATE...: the first usable
  local low=$1 high=$2 candidate
  shift 2
  for candidate in "$@"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && python_ok "$candidate" "$low" "$high"; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

find_python313() {
  find_python 3.13.2 3.14 "$PY313_PREFIX/bin/python3.13" "$(command -v python3.13 || true)" \
    /usr/bin/python3.13
}

build_python313() {
  log "building Python $PY313_VERSION from Debian's source package into $PY313_PREFIX (once, ~3 min)"
  local work
  work=$(mktemp -d)
  private_apt "$work" "deb-src $DEBIAN_MIRROR trixie main" update -qq
  (cd "$work" && private_apt "$work" "deb-src $DEBIAN_MIRROR trixie main" \
    source --download-only python3.13 >/dev/null)
  echo "$PY313_SHA256  $work/$PY313_ORIG" | sha256sum -c --quiet
  tar -C "$work" -xf "$work/$PY313_ORIG"
  local src
  src=$(find "$work" -maxdepth 1 -type d -name 'Python-*' | head -n 1)
  (cd "$src" && ./configure --prefix="$PY313_PREFIX" --with-ensurepip=install >"$work/configure.log" 2>&1 \
    && make -j"$(nproc)" >"$work/make.log" 2>&1 && make altinstall >"$work/install.log" 2>&1) || {
    log "Python build failed; logs in $work"
    exit 1
  }
  rm -rf "$work"
}

find_python314() {
  find_python 3.14.2 3.15 "$PY314_ROOT/usr/bin/python3.14" "$(command -v python3.14 || true)"
}

fetch_python314() {
  log "unpacking Python 3.14 from Debian unstable's packages into $PY314_ROOT (once, ~1 min)"
  local work root=$PY314_ROOT
  work=$(mktemp -d)
  local line="deb [arch=amd64] $DEBIAN_MIRROR sid main"
  private_apt "$work" "$line" update -qq
  mkdir -p "$work/debs"
  (cd "$work/debs" && private_apt "$work" "$line" download "${PY314_DEBS[@]}" >/dev/null)
  # Unpacked beside and moved into place whole: an interrupted run leaves no half a Python.
  local new=$root.new deb
  rm -rf "$new" && mkdir -p "$new"
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$new"; done
  # Its own loader and libraries first (DT_RPATH also serves the extension modules it loads).
  patchelf --set-interpreter "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
    --force-rpath --set-rpath "$root/usr/lib/x86_64-linux-gnu" "$new/usr/bin/python3.14"
  rm -rf "$root" && mv "$new" "$root"
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

# The project's requirements without the project itself: `all` (core, engine, export and test
# extras) or `core` (what Home Assistant installs with the integration).
project_requirements() {  # project_requirements PYTHON all|core
  "$1" - "$ROOT/pyproject.toml" "$2" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
wanted = [*project["dependencies"]]
if sys.argv[2] == "all":
    wanted += [*extras["engine"], *extras["export"], *extras["plc"], *extras["test"]]
print("\n".join(req for req in wanted if not req.startswith(project["name"])))
PY
}

new_venv() {  # new_venv PYTHON DIR
  rm -rf "$2"
  if ! "$1" -m venv "$2" >/dev/null 2>&1; then
    # Debian's Python has no bundled pip wheel for ensurepip: pip from its own wheel
    rm -rf "$2"
    "$1" -m venv --without-pip "$2"
    local wheels
    wheels=$(mktemp -d)
    "$BOOTSTRAP_PIP" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" pip
    "$2/bin/python" "$(echo "$wheels"/pip-*.whl)/pip" install -q --no-index "$wheels"/pip-*.whl
    rm -rf "$wheels"
  fi
  "$2/bin/python" -m pip install -q --upgrade pip
}

# Home Assistant's own pins for a release, read from its wheel.
ha_constraints() {  # ha_constraints VENV OUT
  "$1/bin/python" - "$2" <<'PY'
import sys
from importlib.resources import files
text = files("homeassistant").joinpath("package_constraints.txt").read_text()
open(sys.argv[1], "w").write(text)
PY
}

# A venv with one Home Assistant release, its test tools and the project's requirements.
ensure_release_venv() {  # ensure_release_venv PYTHON RELEASE LINK
  local python=$1 release=$2 link=$3 reqs=$ROOT/requirements/ha-$2.txt
  local want dir
  want=$( (echo "$ENV_REVISION"; cat "$reqs"; project_requirements "$python" all; "$python" --version) | sha256sum | cut -c1-16)
  dir=$CACHE/venvs/ha-$release-$want
  if [ ! -f "$dir/.complete" ]; then
    log "creating $dir: Home Assistant $release, its test tools and the project's requirements (first time: a few minutes)"
    new_venv "$python" "$dir"
    local tmp
    tmp=$(mktemp -d)
    project_requirements "$python" all >"$tmp/project.txt"
    grep -v '^# NO_DEPS:' "$reqs" >"$tmp/release.txt"
    # Home Assistant first, then everything else under its own package constraints.
    "$dir/bin/python" -m pip install -q "$(grep -E '^homeassistant==' "$reqs")"
    ha_constraints "$dir" "$tmp/ha-constraints.txt"
    "$dir/bin/python" -m pip install -q -c "$tmp/ha-constraints.txt" -r "$tmp/release.txt" -r "$tmp/project.txt"
    local no_deps
    no_deps=$(sed -n 's/^# NO_DEPS: *//p' "$reqs")
    if [ -n "$no_deps" ]; then
      "$dir/bin/python" -m pip install -q --no-deps $no_deps
    fi
    rm -rf "$tmp"
    touch "$dir/.complete"
    # Older environments of this release (their requirements changed) are not used again.
    find "$CACHE/venvs" -maxdepth 1 -name "ha-$release-*" ! -name "${dir##*/}" -exec rm -rf {} +
  fi
  link_into_checkout "$dir" "$link"
}

link_into_checkout() {  # link_into_checkout TARGET NAME
  [ -L "$ROOT/$2" ] || rm -rf "${ROOT:?}/$2"  # a venv made by an older set-up
  ln -sfn "$1" "$ROOT/$2"
}

# Home Assistant 2026.11 as a user installs it (no Edge Inspector, no PyTorch), and a wheelhouse
# with what our requirement needs beyond Home Assistant's packages. The HACS install test copies
# the environment and serves the wheelhouse (plus the freshly built wheel) on loopback.
ensure_hacs_env() {
  local python=$1 release=2026.11 reqs=$ROOT/requirements/ha-2026.11.txt
  local want dir
  want=$( (grep -E '^(homeassistant|home-assistant-frontend|ha-ffmpeg|rf-protocols|infrared-protocols|mutagen|pymicro-vad|pyspeex-noise|hassil|home-assistant-intents|gazetteer-matcher|PyTurboJPEG)==' "$reqs"; \
    echo "$HACS_ENV_REVISION"; project_requirements "$python" core; \
    "$python" --version) | sha256sum | cut -c1-16)
  dir=$CACHE/hacs/ha-$release-$want
  if [ ! -f "$dir/.complete" ]; then
    log "creating $dir: a plain Home Assistant $release for the HACS install test"
    rm -rf "$dir" && mkdir -p "$dir"
    new_venv "$python" "$dir/venv"
    local tmp
    tmp=$(mktemp -d)
    "$dir/venv/bin/python" -m pip install -q "$(grep -E '^homeassistant==' "$reqs")"
    ha_constraints "$dir/venv" "$dir/constraints.txt"
    grep -E '^(home-assistant-frontend|ha-ffmpeg|rf-protocols|infrared-protocols|mutagen|pymicro-vad|pyspeex-noise|hassil|home-assistant-intents|gazetteer-matcher|PyTurboJPEG)==' \
      "$reqs" | sed 's/ *#.*//' >"$tmp/preinstall.txt"
    # Home Assistant's own packages for the integrations ours depends on (Home Assistant
    # installs them with ours, as it walks dependencies and after_dependencies).
    "$dir/venv/bin/python" - "$ROOT/custom_components/edge_inspector/manifest.json" \
      >>"$tmp/preinstall.txt" <<'PY'
import json, sys
from pathlib import Path
import homeassistant.components as components

root = Path(components.__file__).parent
ours = json.loads(Path(sys.argv[1]).read_text())
todo = [*ours.get("dependencies", []), *ours.get("after_dependencies", [])]
seen, requirements = set(), set()
while todo:
    domain = todo.pop()
    if domain in seen:
        continue
    seen.add(domain)
    manifest = json.loads((root / domain / "manifest.json").read_text())
    requirements.update(manifest.get("requirements", []))
    todo += [*manifest.get("dependencies", []), *manifest.get("after_dependencies", [])]
print("\n".join(sorted(requirements)))
PY
    "$dir/venv/bin/python" -m pip install -q -c "$dir/constraints.txt" -r "$tmp/preinstall.txt"
    # Its first start, as a user's: Home Assistant installs its own packages (the auth modules'
    # and those of the integrations a set-up like the test's loads) from the package index.
    first_start "$dir/venv/bin/python" "$tmp/first-start"
    # What Home Assistant's installer will have to fetch for our core requirements: exactly the
    # distributions pip would add to this environment.
    project_requirements "$python" core >"$tmp/core.txt"
    "$dir/venv/bin/python" -m pip install -q --dry-run --report "$tmp/report.json" \
      -c "$dir/constraints.txt" -r "$tmp/core.txt"
    "$python" - "$tmp/report.json" >"$tmp/missing.txt" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(f'{item["metadata"]["name"]}=={item["metadata"]["version"]}')
PY
    mkdir -p "$dir/wheelhouse"
    if [ -s "$tmp/missing.txt" ]; then
      "$dir/venv/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$dir/wheelhouse" -r "$tmp/missing.txt"
    fi
    rm -rf "$tmp"
    touch "$dir/.complete"
  fi
  link_into_checkout "$dir" .hacs-env
}

first_start() {  # first_start PYTHON CONFIG_DIR
  mkdir -p "$2"
  "$1" - "$2" <<'PY'
import signal, socket, subprocess, sys, time
from pathlib import Path

config = Path(sys.argv[1])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
(config / "configuration.yaml").write_text(
    "homeassistant:\n  name: first start\n  time_zone: UTC\n"
    f"http:\n  server_host: 127.0.0.1\n  server_port: {port}\n"
    "api:\nconfig:\ncamera:\nconversation:\nwebsocket_api:\nimage:\nevent:\n"
    "logger:\n  default: warning\n  logs:\n    homeassistant.bootstrap: info\n"
)
log = config / "run.log"
with log.open("w") as out:
    proc = subprocess.Popen(
        [sys.executable, "-m", "homeassistant", "-c", str(config)], stdout=out, stderr=out
    )
try:
    deadline = time.monotonic() + 900
    while "Home Assistant initialized" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"Home Assistant's first start failed:\n{log.read_text()[-3000:]}")
        time.sleep(1)
finally:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
if "Unable to install package" in log.read_text():
    sys.exit(f"Home Assistant could not install its packages:\n{log.read_text()[-3000:]}")
PY
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

ensure_node_tool() {  # ensure_node_tool PACKAGE VERSION DIR
  local name=$1 want=$2 dir=$CACHE/$3
  if [ -f "$dir/node_modules/$name/package.json" ] &&
    grep -q "\"version\": \"$want\"" "$dir/node_modules/$name/package.json"; then
    return 0
  fi
  log "installing $name $want into $dir"
  mkdir -p "$dir"
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund \
    --loglevel=error "$name@$want" >/dev/null)
}

main() {
  mkdir -p "$CACHE"
  # One set-up at a time per cache: clones (and CI) share it.
  exec 9>"$CACHE/.setup.lock"
  flock 9
  ensure_apt_packages
  ensure_node_red
  # Playwright's library (no bundled browsers: the tests drive Debian's chromium).
  ensure_node_tool playwright-core 1.49.1 browser
  local py313 py314
  if ! py313=$(find_python313); then
    build_python313
    py313=$(find_python313) || { log "no usable Python $PY313_VERSION after the build"; exit 1; }
  fi
  if ! py314=$(find_python314); then
    fetch_python314
    py314=$(find_python314) || { log "no usable Python 3.14 after unpacking it"; exit 1; }
  fi
  ensure_release_venv "$py313" 2026.2 .venv-ha-2026.2
  BOOTSTRAP_PIP=$ROOT/.venv-ha-2026.2/bin/python  # Debian's 3.14 has no bundled pip wheel
  # Its headers, for the extensions pip builds from source (pyconfig.h is under the multiarch
  # folder); the unpacked packages carry no C library headers, so nothing else changes.
  export CPATH=$PY314_ROOT/usr/include${CPATH:+:$CPATH}
  ensure_release_venv "$py314" 2026.11 .venv
  ensure_hacs_env "$py314"
  # A real Ollama and two real models for the tests that put a model in the loop (1.6 GB once)
  EDGE_INSPECTOR_CACHE=$CACHE bash "$ROOT/scripts/real-ollama.sh" install
  # `runtime: auto` exports the demo model and times each runtime the first time a station
  # starts; done once here (cached by model hash, per Python and package versions) so the first
  # demo and the tests do not pay it; a second or two per venv once the table is there.
  # `edge-inspector bench-model` prints the table it keeps.
  local venv
  for venv in .venv .venv-ha-2026.2; do
    PYTHONPATH=$ROOT EDGE_INSPECTOR_CACHE=$CACHE "$ROOT/$venv/bin/python" - <<'PY' 2>/dev/null ||
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.detect.autoruntime import choose_runtime

for size in (320, 640):  # the tests' size and the default
    choose_runtime(DEMO_MODEL, imgsz=size)
PY
      log "timing the demo model's runtimes failed ($venv): the first station start will do it"
  done
}

main "$@"

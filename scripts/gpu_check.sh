#!/usr/bin/env bash
# The one prepared accelerator run (about 6-8 min on an H100/H200): golden parity on the device, then model,
# session and training-step timings. Results go to $OUT (the device tool's return folder) or runs/gpu_check.
#
#   run(command="bash scripts/gpu_check.sh", timeout_s=560)      # device tool, a CUDA machine
#   DEVICE=cpu QUICK=1 bash scripts/gpu_check.sh                   # dry run here (minutes on 2 cores)
#   PY=/path/to/venv/python ...                                    # a Python with torch, if not .venv/bin/python
# Exit status: 0 when every step passed, 1 otherwise.
#
# Only torch, numpy, scipy and safetensors are needed (the device image has them); the package runs from
# src/ without installing. Each step has its own timeout so one slow step cannot eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
DEVICE=${DEVICE:-cuda}
O=${OUT:-runs/gpu_check}
mkdir -p "$O"
if [[ -n "${QUICK:-}" ]]; then R=(1 1 2 2 1); else R=(10 3 8 5 3); fi  # model, padded, session clicks, train steps,
                                                                       # session-vs-reference runs

FAILS=0
step() {  # step NAME SECONDS CMD...: run, log to $O/NAME.txt, record the exit code
    local name=$1 secs=$2; shift 2
    echo "== $name ($(date -u +%H:%M:%S))"
    timeout "$secs" "$@" > "$O/$name.txt" 2>&1
    local rc=$?
    [[ $rc -eq 0 ]] || FAILS=$((FAILS + 1))
    echo "$name rc=$rc" | tee -a "$O/summary.txt"
    tail -n 15 "$O/$name.txt"
}

: > "$O/summary.txt"
{ date -u; uname -a; nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, platform; print('torch', torch.__version__, 'python', platform.python_version());
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} > "$O/env.txt" 2>&1
cat "$O/env.txt"
step parity 150 "$PY" benchmarks/cuda_parity.py --device "$DEVICE" --json "$O/parity.json"
if [[ "$DEVICE" == cuda* ]]; then
    step bench_model 150 "$PY" benchmarks/bench_model.py --device cuda --repeats "${R[0]}" \
        --padded-repeats "${R[1]}" --json "$O/bench_model.json"
else
    step bench_model 300 "$PY" benchmarks/bench_model.py --device cpu --repeats "${R[0]}" \
        --padded-repeats "${R[1]}" --small-only --json "$O/bench_model.json"
fi
step bench_session 120 "$PY" benchmarks/bench_session.py --device "$DEVICE" --clicks "${R[2]}" --prediction tumour
step bench_reference 240 "$PY" benchmarks/bench_reference_speed.py --device "$DEVICE" --threads 2 \
    --repeats "${R[4]}" --json "$O/bench_reference.json"
step bench_training 150 "$PY" benchmarks/bench_training.py --device "$DEVICE" --config msam-small --clicks 10 \
    --batch 2 --repeats "${R[3]}"
echo "== done ($FAILS failed)"; cat "$O/summary.txt"
exit $(( FAILS > 0 ))

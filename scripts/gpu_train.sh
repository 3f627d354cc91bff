#!/usr/bin/env bash
# One GPU training burst: a default-model candidate trained for a fixed wall clock, handed back in parts.
#
#   python -m napari_msam.training.pack packed                     # here, once: ~11.5 MiB, git-ignored
#   run(command="bash scripts/gpu_train.sh", carry=["packed"], timeout_s=540)  # docs/gpu-burst.md
#   python -m napari_msam.training.burst join <files_at> -o runs/burst/model.safetensors   # here, after
#
#   BUDGET=20 bash scripts/gpu_train.sh --device cpu --init scratch --config msam-tiny --batch-size 2  # CPU
#
# Writes into $OUT (the device tool's return folder; runs/burst-out when unset): model.safetensors.partNN
# (<= 15 MiB each), parts.json (SHA-256 of each part and of the whole), log.json (loss per step, validation
# Dice per click) and train.log (this script's output). Extra arguments go to `burst train`.
# Needs only torch, numpy and the standard library on the device: the package runs from src/ uninstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
O=${OUT:-runs/burst-out}
PACKED=${PACKED:-packed}
BUDGET=${BUDGET:-420}
mkdir -p "$O"
{
    echo "== burst $(date -u +%FT%TZ), budget ${BUDGET} s, packed set ${PACKED}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
        || echo "no nvidia-smi"
    "$PY" -m napari_msam.training.burst train --packed "$PACKED" --out "$O" --budget-s "$BUDGET" "$@"
} 2>&1 | tee "$O/train.log"

#!/usr/bin/env bash
# Train the embedded default model (msam-small, from scratch) on the STS CT + T1 MR cases.
#
#   scripts/train_default_model.sh            # start, or continue exactly where the last run stopped
#   OUT=runs/other EPOCHS=30 scripts/train_default_model.sh
#
# STS_024 is the shipped sample case and never seen in training; 6 fixed patients are the validation set
# (patient-wise: a patient's CT and MR are on the same side). Budget: about 45 min of one CPU core
# (measured ~2.4 s per sample with 5 clicks on a shared core); --time-limit stops cleanly with a
# resumable checkpoint, so the run can also be done in several pieces. Outputs: $OUT/best.safetensors
# (highest mean validation Dice over the clicks), $OUT/last.safetensors, $OUT/state.pt, $OUT/cache/.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/sts}
OUT=${OUT:-runs/default}
EPOCHS=${EPOCHS:-24}
MINUTES=${MINUTES:-45}
THREADS=${THREADS:-1}

RESUME=()
if [[ -f "$OUT/state.pt" && -f "$OUT/last.safetensors" ]]; then
    RESUME=(--resume)
    echo "resuming from $OUT/state.pt"
fi

export OMP_NUM_THREADS="$THREADS"
exec "$PY" -m napari_msam.training "$DATA" --out "$OUT" \
    --config msam-small --modalities ct mr \
    --exclude-patients STS_024 \
    --val-patients STS_003 STS_008 STS_013 STS_018 STS_022 STS_027 \
    --spacing 2.5 --normalization zscore \
    --clicks 5 --val-clicks 5 --batch-size 2 --steps-per-epoch 20 --epochs "$EPOCHS" \
    --lr 8e-4 --weight-decay 0.1 --decoder-lr-factor 1.0 --warmup-steps 20 \
    --milestones 16 21 --gamma 0.3 --grad-clip 1.0 \
    --seed 2023 --threads "$THREADS" --device cpu --time-limit "$MINUTES" \
    "${RESUME[@]}" "$@"

#!/usr/bin/env bash
# Set up if needed, then open napari on the sample case (STS_024 MR) with the Segment (M-SAM) widget docked.
# Extra arguments go to the launcher: --ct (the CT instead), --model PATH, --screenshot OUT.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  echo "No display found: running under xvfb-run (headless)." >&2
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m napari_msam.launch "$@"
fi
exec .venv/bin/python -m napari_msam.launch "$@"

#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh Debian machine: apt packages napari needs under Xvfb, a venv in
# .venv, and the project with its napari and test extras. CUDA users: TORCH_SPEC="torch" (or a CUDA wheel
# index, see README) before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PKGS="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 \
libxcb-xinerama0 libxcb-randr0 libxcb-cursor0 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1 libgl1 libegl1 \
libglib2.0-0"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # word-split on purpose: TORCH_SPEC may carry pip options such as --index-url
  # shellcheck disable=SC2086
  .venv/bin/pip install -q $TORCH_SPEC
fi
if ! .venv/bin/python -c "import napari_msam, napari, pytest_xvfb" >/dev/null 2>&1; then
  .venv/bin/pip install -q -c scripts/constraints.txt -e ".[napari,testing]"
fi

#!/usr/bin/env bash
# Set up if needed, then lint and run the whole test suite (GUI tests under Xvfb via pytest-xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
unset QT_QPA_PLATFORM
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Create .venv (Python 3.11) and install fl-iot with the exact versions of constraints.txt.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "fl-iot needs Python 3.11; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
# torch first, pinned: an unpinned torch (asked for directly or by a dependency) pulls a
# multi-GB CUDA build. 2.13.0 is the CPU wheel on our machines; elsewhere add
# --index-url https://download.pytorch.org/whl/cpu to get the CPU build.
.venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet -c constraints.txt -e ".[dev]"

#!/usr/bin/env bash
# Install magpipe and everything it needs into ./.venv (created if missing).
#
#   TORCH_SPEC   torch requirement installed first when the venv has no torch
#                (default torch==2.13.0; on a machine whose pip finds a CPU wheel, that one)
#   TORCH_INDEX  extra package index for torch, e.g. the CPU-only or a CUDA index of pytorch.org,
#                so a CPU machine does not download a multi-GB CUDA build
#   EXTRAS       extras of magpipe to install (default: dev, which adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH_SPEC:-torch==2.13.0}"
fi
"${pip[@]}" -e ".[${EXTRAS:-dev}]"

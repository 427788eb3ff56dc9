#!/usr/bin/env bash
# The test suite in one command: set up .venv, prepare the VOC sample, run pytest offline.
# Expects the reference fixtures at ../shared/fixtures (or $CLIPTRASE_FIXTURES).
#   tools/test.sh [pytest args ...]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup_env.sh
PY="${VENV:-.venv}/bin/python"
"$PY" datasets/prepare_sample.py
HF_HUB_OFFLINE=1 exec "$PY" -m pytest -q "$@" tests

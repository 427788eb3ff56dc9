#!/usr/bin/env bash
# The test suite in one command: set up .venv, prepare the VOC sample, run pytest offline; then
# the tests that exercise detectron2 itself again on detectron2 main (an official build in
# .venv-official, made once from ../shared/deps; OFFICIAL=0 skips this part).
# Expects the reference fixtures at ../shared/fixtures (or $CLIPTRASE_FIXTURES).
#   tools/test.sh [pytest args ...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${OFFICIAL:-1}" != [01] ]]; then
  echo "[test] ERROR: OFFICIAL=$OFFICIAL; use OFFICIAL=0 (skip detectron2 main) or OFFICIAL=1" >&2
  exit 1
fi
tools/setup_env.sh
PY="${VENV:-.venv}/bin/python"
"$PY" datasets/prepare_sample.py
# Debian's Chromium for the web demo's browser test (root or sudo; without them that test is
# skipped outside CI and fails under CI)
tools/install_browser.sh || echo "[test] Chromium could not be installed: the browser test will not run"
status=0
# formatter and linter (ruff.toml: 100 columns), as CI checks them
"$PY" -m ruff check . || status=$?
"$PY" -m ruff format --check . || status=$?
HF_HUB_OFFLINE=1 "$PY" -m pytest -q "$@" tests || status=$?

# detectron2 main: its evaluator (Boundary IoU), launch (gloo on CPU), data pipeline, visualizer
if [[ "${OFFICIAL:-1}" != 0 ]]; then
  OFFICIAL_VENV=.venv-official
  D2=official VENV="$OFFICIAL_VENV" tools/setup_env.sh
  echo "[test] detectron2 main ($OFFICIAL_VENV)"
  HF_HUB_OFFLINE=1 "$OFFICIAL_VENV/bin/python" -m pytest -q "$@" tests/test_evaluation.py \
    tests/test_launch.py tests/test_meta_arch.py tests/test_demo.py tests/test_train_net.py \
    tests/test_api.py tests/test_datasets.py tests/test_stock_pipeline.py \
    tests/test_default_predictor.py tests/test_resume.py tests/test_output_dir.py || status=$?
fi
exit "$status"

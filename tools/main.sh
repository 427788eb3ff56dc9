#!/usr/bin/env bash
# The main job in one command: set up .venv, prepare the four-photo VOC sample, and evaluate
# CLIPtrase (OpenAI ViT-B/16) on it with tools/train_net.py --eval-only.
#   tools/main.sh                                   # weights: "openai" (downloaded when online)
#   tools/main.sh MODEL.WEIGHTS weights/ViT-B-16.pt # any config overrides, KEY VALUE ...
#   SMOKE=1 tools/main.sh                           # offline smoke run with the tiny test CLIP
# Environment: NUM_GPUS (processes; default 1), CONFIG (default configs/sample/voc21_standard.yaml),
# SMOKE=1 (the tiny random CLIP of the test fixtures, $CLIPTRASE_FIXTURES or ../shared/fixtures:
# checks the installation end to end in seconds; its mIoU means nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${SMOKE:-0}" != [01] ]]; then
  echo "[main] ERROR: SMOKE=$SMOKE; use SMOKE=1 (the tiny test CLIP) or SMOKE=0 (the real one)" >&2
  exit 1
fi
tools/setup_env.sh
PY="${VENV:-.venv}/bin/python"
"$PY" datasets/prepare_sample.py
smoke=()
if [[ "${SMOKE:-0}" == 1 ]]; then
  fixtures="${CLIPTRASE_FIXTURES:-../shared/fixtures}"
  smoke=(MODEL.CLIPTRASE.CLIP_MODEL "$fixtures/tiny_clip.json" MODEL.WEIGHTS "$fixtures/tiny_clip_openai.pt")
fi
exec "$PY" tools/train_net.py --eval-only --num-gpus "${NUM_GPUS:-1}" \
  --config-file "${CONFIG:-configs/sample/voc21_standard.yaml}" "${smoke[@]}" "$@"

#!/usr/bin/env bash
# One prepared check for a machine with a CUDA GPU and no internet (at most the 8 minutes of the
# steps' limits below):
#   1. the CUDA tests (tests/test_cuda.py: parity on the GPU within the tolerances stated there),
#   2. tools/benchmark.py on CUDA in fp32 and in fp16, throughput at batch 1 and 32,
#   3. a 1-GPU tools/train_net.py --eval-only on the VOC sample (the fixtures' tiny CLIP),
# and writes everything to one JSON file (default device_check.json).
#
#   tools/device_check.sh [--dry-run] [OUTPUT.json]
#
# --dry-run: checks that everything the run needs is here (python, the fixtures, the sample),
# prints the commands and writes the JSON with "dry_run": true, without running them (CPU-safe).
# Environment: PYTHON (default: python), CLIPTRASE_FIXTURES (default ../shared/fixtures),
# DETECTRON2_DATASETS (default ./datasets), BENCHMARK_MODEL (default ViT-B-16-quickgelu, random
# weights: no download).
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
output="${1:-device_check.json}"
python="${PYTHON:-python}"
fixtures="${CLIPTRASE_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
datasets="${DETECTRON2_DATASETS:-$PWD/datasets}"
model="${BENCHMARK_MODEL:-ViT-B-16-quickgelu}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for needed in "$fixtures/tiny_clip.json" "$fixtures/tiny_clip_openai.pt" "$datasets/cliptrase_sample_voc21"; do
  if [[ ! -e "$needed" ]]; then
    echo "device_check: $needed is missing (set CLIPTRASE_FIXTURES / DETECTRON2_DATASETS)" >&2
    exit 2
  fi
done
if [[ -d "$output" || ! -w "$(dirname -- "$output")" || (-e "$output" && ! -w "$output") ]]; then
  echo "device_check: cannot write $output (a folder, or its folder is missing or read-only):" \
    "give another OUTPUT.json" >&2  # found now, not when the steps' results are to be kept
  exit 2
fi
"$python" -c "import cliptrase_d2, torch" || { echo "device_check: $python cannot import cliptrase_d2 and torch" >&2; exit 2; }

export CLIPTRASE_FIXTURES="$fixtures" DETECTRON2_DATASETS="$datasets" HF_HUB_OFFLINE=1
benchmark=(tools/benchmark.py --device cuda --model "${model@Q}" --cases paper_224,paper_336,standard_512x683
           --batch-sizes 1,32 --repeats 5 --no-memory --json)
commands=(  # name|limit in seconds (8 minutes in all)|command (paths quoted: a space in them)
  "tests|150|${python@Q} -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_dbscan.py"
  "benchmark_fp32|120|${python@Q} ${benchmark[*]} --precision fp32"
  "benchmark_fp16|120|${python@Q} ${benchmark[*]} --precision fp16"
  "train_net|90|${python@Q} tools/train_net.py --eval-only --num-gpus 1 --config-file configs/sample/voc21_standard.yaml
   MODEL.DEVICE cuda MODEL.CLIPTRASE.CLIP_MODEL ${fixtures@Q}/tiny_clip.json MODEL.WEIGHTS ${fixtures@Q}/tiny_clip_openai.pt
   MODEL.CLIPTRASE.TEXT_CACHE_DIR none OUTPUT_DIR ${work@Q}/train_net"
)

for entry in "${commands[@]}"; do
  IFS='|' read -r name limit command <<< "$(echo "$entry" | tr -s ' \n' ' ')"
  echo "$command" > "$work/$name.command"
  if (( dry_run )); then
    echo "[dry-run] $name (limit ${limit}s): $command"
    echo "skipped" > "$work/$name.status"
    continue
  fi
  echo "device_check: $name" >&2
  start=$(date +%s)
  set +e
  timeout "$limit" bash -c "$command" > "$work/$name.out" 2> "$work/$name.err"
  echo $? > "$work/$name.status"
  set -e
  echo $(( $(date +%s) - start )) > "$work/$name.seconds"
done

"$python" - "$work" "$output" "$dry_run" <<'PY'
import json, os, sys
work, output, dry_run = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def read(name, default=""):
    path = os.path.join(work, name)
    return open(path).read().strip() if os.path.exists(path) else default
result = {"dry_run": dry_run, "steps": {}}
if not dry_run:
    import torch
    result["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
for name in ("tests", "benchmark_fp32", "benchmark_fp16", "train_net"):
    status = read(f"{name}.status")
    step = {"command": read(f"{name}.command"), "status": status if dry_run else int(status)}
    if not dry_run:
        step["seconds"] = int(read(f"{name}.seconds", "0"))
        out, err = read(f"{name}.out"), read(f"{name}.err")
        if name.startswith("benchmark") and step["status"] == 0:
            step["result"] = json.loads(out.splitlines()[-1])
        else:
            step["output_tail"] = (out + "\n" + err)[-4000:]
    result["steps"][name] = step
with open(output, "w") as f:
    json.dump(result, f, indent=1)
print(output)
PY

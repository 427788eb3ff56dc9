#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv with every pinned dependency.
# Idempotent: a second run with unchanged requirements returns at once.
#   tools/setup_env.sh            # CPU machine (this is what the README commands call)
# Environment: PYTHON (interpreter, default python3), VENV (default .venv; a relative path is
# taken from the repository root), D2 (which detectron2 a new venv gets: `sdist`, the default, is
# the 0.6 release's Python sources; `official` builds detectron2 main from
# ../shared/deps/detectron2-02b5c4e.tar.gz with its C++ ops; docs/detectron2_versions.md):
#   D2=official VENV=.venv-official tools/setup_env.sh
# A venv that already holds a compiled (official) detectron2, as the README's GPU recipe builds,
# keeps its torch and detectron2: only the pinned runtime and test packages are added.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.cliptrase-setup"
D2=${D2:-sdist}
D2_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
D2_OFFICIAL_SOURCE=../shared/deps/detectron2-02b5c4e.tar.gz
D2_OFFICIAL_SHA256=9352c9b37f9f7b6c86c8d13f4a6c66942b3aef280da22f1927b9afd299f183c3
if [[ "$D2" != sdist && "$D2" != official ]]; then
  echo "[setup] ERROR: D2=$D2; use D2=sdist (detectron2 0.6) or D2=official (main)" >&2
  exit 1
fi
want="$( (cat requirements/*.txt tools/setup_env.sh; echo "D2=$D2") | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -m venv "$VENV"; then
  echo "[setup] ERROR: PYTHON=$PYTHON could not create VENV=$VENV (above): set VENV to a new" \
    "folder (or an existing venv) and PYTHON to a Python 3 interpreter" >&2
  exit 1
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

install_detectron2_sdist() {
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "${PIP[@]}" install setuptools wheel
  # detectron2 is not on PyPI as a wheel; pb1-detectron2 is v0.6's Python sources, built here
  # without its C++ ops (unused). pip checks the archive against the pinned sha256.
  "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation -d "$work" \
    -r /dev/stdin <<< "pb1-detectron2==0.6 --hash=sha256:$D2_SHA256"
  tar -xzf "$work"/pb1*detectron2-0.6.tar.gz -C "$work"
  src="$(ls -d "$work"/pb1*detectron2-0.6)"
  sed -i "s/ext_modules=get_extensions()/ext_modules=[]/" "$src/setup.py"
  grep -q "ext_modules=\[\]" "$src/setup.py" \
    || { echo "[setup] ERROR: could not find 'ext_modules=get_extensions()' in $src/setup.py" >&2; exit 1; }
  "${PIP[@]}" install --no-build-isolation -c requirements/runtime.txt "$src"
}

install_detectron2_official() {
  if [[ ! -f "$D2_OFFICIAL_SOURCE" ]]; then
    echo "[setup] ERROR: $D2_OFFICIAL_SOURCE not found (see ../shared/deps/README.md)" >&2
    exit 1
  fi
  if ! echo "$D2_OFFICIAL_SHA256  $D2_OFFICIAL_SOURCE" | sha256sum --check --quiet; then
    echo "[setup] ERROR: $D2_OFFICIAL_SOURCE does not match the pinned $D2_OFFICIAL_SHA256" >&2
    exit 1
  fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "${PIP[@]}" install setuptools wheel
  tar -xzf "$D2_OFFICIAL_SOURCE" -C "$work"
  # not editable: pip then falls back to an isolated build, without this venv's torch
  "${PIP[@]}" install --no-build-isolation -c requirements/runtime.txt "$work"/detectron2-*/
}

if "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("detectron2") and u.find_spec("detectron2._C")))' 2>/dev/null; then
  echo "[setup] $VENV has a compiled detectron2 (an official build): keeping its torch and detectron2"
else
  echo "[setup] building $VENV (torch, detectron2 ($D2), open_clip; a few minutes the first time)"
  "${PIP[@]}" install -r requirements/torch.txt
  if ! "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
    if [[ "$D2" == official ]]; then install_detectron2_official; else install_detectron2_sdist; fi
  elif [[ "$D2" == official ]]; then
    echo "[setup] ERROR: $VENV holds detectron2 0.6 without compiled ops; D2=official needs" \
      "another VENV (e.g. VENV=.venv-official)" >&2
    exit 1
  fi
fi
"${PIP[@]}" install -r requirements/runtime.txt -r requirements/test.txt
# the web demo (Gradio) and its browser test (Selenium): --no-deps, see requirements/web.txt
"${PIP[@]}" install --no-deps -r requirements/web.txt
"${PIP[@]}" install --no-build-isolation --no-deps -e .
echo "$want" > "$STAMP"
echo "[setup] ready: $VENV"

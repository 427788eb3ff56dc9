#!/usr/bin/env bash
# Installs Debian's Chromium and its WebDriver for the web demo's browser test
# (tests/test_web_demo.py); needs root (or sudo) and apt. Idempotent: returns at once when both
# are already installed.
#   tools/install_browser.sh
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "[browser] ERROR: run as root: apt-get install chromium chromium-driver" >&2
    exit 1
  fi
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "[browser] $(chromium --version); $(chromedriver --version | cut -d' ' -f1-2)"

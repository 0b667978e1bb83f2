#!/usr/bin/env bash
# A virtual environment with Jupyter's client library for the kernel test (tests/e2e/kernel.rs):
# jupyter_client drives the kernel as a notebook server would. Idempotent; needs PyPI once.
# Usage: tests/kernel/setup-venv.sh [DIR]   (default target/kernel-venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${1:-target/kernel-venv}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import jupyter_client" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv "$venv" 2>/dev/null; then
  # Debian splits venv out of python3.
  rm -rf "$venv"
  if command -v apt-get >/dev/null; then
    apt-get install -y -qq python3-venv >/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
  fi
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "jupyter_client>=8,<9"

#!/usr/bin/env bash
# README command 1: install what is missing, then run the end-to-end demo (as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
exec .venv/bin/python scripts/demo.py

#!/usr/bin/env bash
# README command 1: install iotid and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/iotid demo "$@"

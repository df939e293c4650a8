#!/usr/bin/env bash
# Set up .venv and run the main job on the embedded default configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/evasion evaluate "$@"

#!/usr/bin/env bash
# Set up .venv and run the main job on the embedded default configuration.
#
#   bash scripts/main.sh [CONFIG] [--out DIR] [...]   # arguments go to `evasion evaluate`
#
# Paths in the arguments (a config file, --out) are relative to where you run it, not to the
# repository: only the setup and the virtual environment are found through this script's folder.
# The setup runs once per change of pyproject.toml or scripts/setup.sh (a stamp in .venv records
# it); EVASION_NO_SETUP=1 skips it (the environment is ready, e.g. made by scripts/test.sh).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAMP="$REPO/.venv/.main-setup-done"
if [ "${EVASION_NO_SETUP:-0}" != 1 ]; then
  if [ ! -x "$REPO/.venv/bin/evasion" ] || [ ! -f "$STAMP" ] \
    || [ "$REPO/pyproject.toml" -nt "$STAMP" ] || [ "$REPO/scripts/setup.sh" -nt "$STAMP" ]; then
    bash "$REPO/scripts/setup.sh"
    touch "$STAMP"
  fi
fi
if [ ! -x "$REPO/.venv/bin/evasion" ]; then
  echo "main.sh: $REPO/.venv/bin/evasion is missing; run: bash $REPO/scripts/setup.sh" >&2
  exit 2
fi
exec "$REPO/.venv/bin/evasion" evaluate "$@"

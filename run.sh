#!/usr/bin/env bash
# Sets up everything on a fresh machine, then starts Punderful on embedded SQLite.
# Extra arguments go to `python -m punderful` (e.g. --port 8787 --db postgresql://...).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e . -e apps/punderful
exec .venv/bin/python -m punderful "$@"

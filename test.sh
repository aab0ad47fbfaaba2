#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs them (lint, types, tests).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[app,dev,ops]'

# PostgreSQL: the tests run against the local server; start it if it is down.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
# Headless Chromium for the browser tests (Debian packages).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi

.venv/bin/ruff format --check perdure punderful tests bench examples
.venv/bin/ruff check perdure punderful tests bench examples
.venv/bin/mypy perdure punderful
PERDURE_TEST_POSTGRES=${PERDURE_TEST_POSTGRES:-1} .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs them: lint, types, the docs
# build, the tests of both distributions (perdure, and Punderful in apps/punderful), and a check
# of the built packages in fresh virtual environments. Arguments go to the engine's pytest run
# only (e.g. `bash test.sh -k queues`; Punderful's tests: `cd apps/punderful && ../../.venv/bin/pytest`).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[postgres,server,redis,otel]' -e apps/punderful \
  --group dev --group apps/punderful/pyproject.toml:test

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

.venv/bin/ruff format --check perdure tests bench examples docs apps/punderful
.venv/bin/ruff check perdure tests bench examples docs apps/punderful
.venv/bin/mypy perdure
(cd apps/punderful && ../../.venv/bin/mypy punderful)
export PERDURE_TEST_POSTGRES=${PERDURE_TEST_POSTGRES:-1}
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
  (cd apps/punderful && ../../.venv/bin/python -m pytest -q)
  .venv/bin/python tests/packaging/check_dist.py
fi

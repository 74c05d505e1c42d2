#!/usr/bin/env bash
# The test command (README): a project venv, lint, type check, then every test, slow ones included.
set -euo pipefail
cd "$(dirname "$0")/.."
# The system packages the fleet tests need (sshd, systemd-analyze), declared once; a no-op once there.
bash scripts/ci-deps.sh
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e '.[dev,fleet]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"

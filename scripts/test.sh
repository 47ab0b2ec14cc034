#!/usr/bin/env bash
# Run the test suite: starts a throwaway PostgreSQL server when one is installed (store tests run against it
# and SQLite), then pytest on two workers (pytest-xdist; tests/conftest.py keeps the real vLLM tests on one worker,
# one engine at a time). Extra arguments go to pytest and override the defaults (-n 0: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LAYOUTCAST_TEST_PG_URL:-}" ]; then
  LAYOUTCAST_TEST_PG_URL=$(scripts/pg_server.sh || true)
  export LAYOUTCAST_TEST_PG_URL
fi
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup "$@"

#!/usr/bin/env bash
# Makes sure a redis-server binary is available for the tests (they start their own on a free port).
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  echo "redis-server not found: installing it with apt-get" >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q redis-server >/dev/null
  # The package starts a system instance on :6379; the tests do not use it.
  exit 0
fi
echo "redis-server is required for the tests: install Redis (>= 7.0) or Valkey and put redis-server on PATH" >&2
exit 1

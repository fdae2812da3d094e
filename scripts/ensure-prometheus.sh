#!/usr/bin/env bash
# Makes sure the prometheus and promtool binaries (Debian's `prometheus` package) are available: the
# dashboard test scrapes a real proxy with a real Prometheus, and the alert rules are checked and
# unit-tested with promtool. The package's own system service is stopped: the tests start their own.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  echo "prometheus/promtool not found: installing Debian's prometheus package with apt-get" >&2
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null
  fi
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop prometheus >/dev/null 2>&1 || true; fi
  if command -v service >/dev/null 2>&1; then $SUDO service prometheus stop >/dev/null 2>&1 || true; fi
  exit 0
fi
echo "prometheus and promtool are required for the tests: install Prometheus (>= 2.40) and put both on PATH" >&2
exit 1

#!/usr/bin/env bash
# Makes sure Debian's chromium is installed for the portal's browser tests (Playwright drives it
# through executable_path; Playwright's own browser downloads are not used).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  echo "chromium not found: installing it with apt-get" >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
  exit 0
fi
echo "the portal's browser tests need Debian's chromium at /usr/bin/chromium" >&2
exit 1

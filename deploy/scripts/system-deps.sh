#!/usr/bin/env bash
# Installs the system packages patterd needs that are missing, using apt-get when available
# (as root, or through sudo). "runtime": Python with venv. "test": also Node.js + npm (the
# OpenAPI request-validating mock server), systemd, PostgreSQL, HAProxy (the load-balanced
# cluster test puts real patterd replicas behind deploy/haproxy/haproxy.cfg) and Chromium (the
# console's browser tests drive Debian's chromium through Playwright).
set -euo pipefail
want=()
python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3-venv)
command -v gcc >/dev/null 2>&1 || want+=(gcc)
if [ "${1:-runtime}" = "test" ]; then
  command -v node >/dev/null 2>&1 || want+=(nodejs)
  command -v npm >/dev/null 2>&1 || want+=(npm)
  command -v systemd-analyze >/dev/null 2>&1 || want+=(systemd)   # verifies deploy/systemd
  # The store tests use the PostgreSQL on 127.0.0.1:5432, or start a throwaway one from these.
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || want+=(postgresql)
  # tests/integration/test_load_balanced.py and `haproxy -c` on deploy/haproxy/haproxy.cfg.
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || want+=(haproxy)
  # tests/integration/test_console_browser.py (Playwright's own browser download is not used).
  command -v chromium >/dev/null 2>&1 || want+=(chromium)
fi
[ ${#want[@]} -eq 0 ] && exit 0
echo "patterd: installing system packages: ${want[*]}" >&2
case " ${want[*]} " in
  *" postgresql "*|*" haproxy "*)
    echo "patterd: (on Debian/Ubuntu apt enables and starts the PostgreSQL and HAProxy services;" \
         "the tests use them on 127.0.0.1)" >&2 ;;
esac
if ! command -v apt-get >/dev/null 2>&1; then
  echo "patterd: please install these packages with your system's package manager: ${want[*]}" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}"

#!/usr/bin/env bash
# Debian packages some tests drive as real peers (promtool/Prometheus, Alertmanager, kcat, openssl, Chromium).
# Installed when we are root on a Debian-like machine (CI, the development machines); elsewhere the tests that
# need them report one skip line each naming the package.
set -euo pipefail
PACKAGES=(prometheus prometheus-alertmanager kcat openssl chromium)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-packages: not root or no apt-get; tests that need ${missing[*]} will be skipped" >&2
  exit 0
fi
echo "system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null

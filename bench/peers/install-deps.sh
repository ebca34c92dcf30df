#!/usr/bin/env bash
# Installs the Debian 12 packages of the rsyslog comparison
# (bench/peers/rsyslog_compare.sh): rsyslog, its RELP input/output modules
# and its OpenSSL network driver. Idempotent: when everything is present it
# only checks and returns. Never run at build time; the comparison is opt-in.
#
# Installing rsyslog on a machine without it also installs Debian's system
# logger service; the comparison never uses or touches that one (it runs
# private instances with their own config, pid file, work directory and
# loopback ports).
set -euo pipefail

packages=(rsyslog rsyslog-relp rsyslog-openssl python3)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "peers/install-deps: all ${#packages[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "peers/install-deps: missing packages: ${missing[*]}; run this script as root" >&2
  exit 1
fi

echo "peers/install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

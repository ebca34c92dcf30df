#!/usr/bin/env bash
# Installs every Debian 12 package that edgerelay's build, tests and benchmarks
# need. Idempotent: when everything is present it only checks and returns.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git clang-format
  libboost1.81-dev libboost-system1.81-dev libboost-json1.81-dev libboost-url1.81-dev
  liblmdb-dev lmdb-utils libssl-dev openssl
  catch2 libbenchmark-dev
  libtoml11-dev libcli11-dev libspdlog-dev libfmt-dev
  libzstd-dev libxxhash-dev libsystemd-dev
  prometheus
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run this script as root" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

# prometheus is here for promtool and for the tests' own short-lived server on
# a free loopback port. Its Debian postinst enables and starts a system-wide
# server on :9090 (where an init system runs and no policy-rc.d forbids it):
# stop and disable that one, but only when this run installed the package, so
# a Prometheus someone set up on purpose is left alone.
for p in "${missing[@]}"; do
  if [ "$p" = prometheus ]; then
    if [ -d /run/systemd/system ]; then
      systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      service prometheus stop >/dev/null 2>&1 || true
      update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
    echo "install-deps: stopped and disabled the prometheus service (only promtool and the binary are used)"
  fi
done

#!/usr/bin/env bash
# The systemd unit passes `systemd-analyze verify` without any warning, and
# its `systemd-analyze security` exposure stays at or below a threshold.
#
# Offline (systemd is not PID 1 in CI containers), `verify` loads the unit
# file on its own and checks that every Exec*= binary exists and is
# executable. /usr/bin/edgerelay is not installed on a build machine, so a
# copy of the unit is verified with ExecStart pointing at the build's binary;
# nothing else is changed.
#
# usage: systemd_unit_test.sh UNIT EDGERELAY_BINARY SCRATCH_DIR MAX_EXPOSURE
# MAX_EXPOSURE is in tenths, as systemd-analyze --threshold takes it: 20 = 2.0.
set -euo pipefail

unit=$1 binary=$2 scratch=$3 max_exposure=$4
name=$(basename "$unit")

if ! command -v systemd-analyze >/dev/null; then
	echo "systemd-analyze not found (Debian package systemd)" >&2
	exit 1
fi
if [ ! -x "$binary" ]; then
	echo "$binary does not exist: build the edgerelay target first" >&2
	exit 1
fi

rm -rf "$scratch"
mkdir -p "$scratch/unit" "$scratch/broken"
sed "s#^ExecStart=/usr/bin/edgerelay #ExecStart=$binary #" "$unit" >"$scratch/unit/$name"
if ! grep -q "^ExecStart=$binary run --config /etc/edgerelay/edgerelay.toml$" "$scratch/unit/$name"; then
	echo "FAIL: $name has no 'ExecStart=/usr/bin/edgerelay run --config /etc/edgerelay/edgerelay.toml'" >&2
	exit 1
fi

# Prints what systemd-analyze verify says about the unit; fails if it fails.
verify() {
	local out rc=0
	out=$(cd "$1" && systemd-analyze verify --man=no "./$name" 2>&1) || rc=$?
	printf '%s' "$out"
	return $rc
}

# The check must be able to see a problem: a unit with an unknown key has to
# produce a warning, or this systemd-analyze is not checking anything.
sed 's/^\[Service\]$/[Service]\nNoSuchSetting=1/' "$scratch/unit/$name" >"$scratch/broken/$name"
if ! verify "$scratch/broken" | grep -q "NoSuchSetting"; then
	echo "FAIL: systemd-analyze verify did not report an unknown key; it cannot check the unit here" >&2
	exit 1
fi

rc=0
out=$(verify "$scratch/unit") || rc=$?
if [ $rc -ne 0 ] || [ -n "$out" ]; then
	echo "FAIL: systemd-analyze verify $name (exit $rc):" >&2
	echo "$out" >&2
	exit 1
fi
echo "ok: systemd-analyze verify $name: no warnings"

if ! systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
	echo "systemd-analyze security has no --offline (systemd < 250): exposure not checked"
	exit 0
fi
rc=0
report=$(cd "$scratch/unit" && systemd-analyze security --offline=yes --threshold="$max_exposure" "./$name" 2>&1) || rc=$?
echo "$report" | grep -E "Overall exposure level" || true
if [ $rc -ne 0 ]; then
	echo "FAIL: exposure of $name is above $max_exposure/10:" >&2
	echo "$report" | grep '✗' >&2 || echo "$report" >&2
	exit 1
fi
echo "ok: exposure at or below $max_exposure/10"

#!/usr/bin/env bash
# Installs, upgrades, removes and purges the Debian package with the real
# dpkg, and checks what its maintainer scripts did — without touching this
# machine: everything runs in a private mount namespace (unshare -m), chrooted
# into an overlay whose lower layer is the host's root file system and whose
# upper layer is a tmpfs. When the namespace ends, every change is gone.
#
# systemd is not running in the chroot; /run/systemd/system is created and
# systemctl is replaced by a shim that logs its arguments, so the scripts'
# "systemd is running" branches run and their calls can be checked.
#
# Needs root and permission to unshare and mount overlayfs; without them the
# test is skipped (exit 77), and only deb_contents covers the package.
#
# usage: deb_maintainer_scripts_test.sh DEB SCRATCH_DIR
# dpkg-query's ${Status} is a format, not a shell expansion:
# shellcheck disable=SC2016
set -euo pipefail

deb=$(readlink -f "$1") scratch=$2

skip() {
	echo "SKIP: $*"
	exit 77
}

if [ "${EDGERELAY_IN_NAMESPACE:-}" != 1 ]; then
	[ "$(id -u)" -eq 0 ] || skip "needs root"
	command -v unshare >/dev/null || skip "unshare not found"
	rm -rf "$scratch"
	mkdir -p "$scratch"
	if ! unshare --mount --propagation private true 2>/dev/null; then
		skip "cannot create a mount namespace here"
	fi
	rc=0
	EDGERELAY_IN_NAMESPACE=1 unshare --mount --propagation private "$0" "$deb" "$scratch" || rc=$?
	rm -rf "$scratch"
	exit $rc
fi

# ---- inside the private mount namespace ----
mount -t tmpfs -o size=1g tmpfs "$scratch"
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"
if ! mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root" 2>/dev/null; then
	skip "cannot mount an overlay file system here"
fi
root=$scratch/root
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	DEBIAN_FRONTEND=noninteractive "$@"; }
failures=0
fail() {
	echo "FAIL: $*" >&2
	failures=$((failures + 1))
}
calls() { cat "$root/var/log/systemctl-calls" 2>/dev/null || true; }

# If the chroot already has the package (a host with it installed), start clean.
in_root dpkg --purge edgerelay >/dev/null 2>&1 || true
if in_root getent passwd edgerelay >/dev/null; then
	in_root deluser --quiet --system edgerelay >/dev/null 2>&1 || true
	in_root delgroup --quiet --system edgerelay >/dev/null 2>&1 || true
fi

mkdir -p "$root/run/systemd/system"
rm -f "$root/usr/bin/systemctl" "$root/bin/systemctl" 2>/dev/null || true
cat >"$root/usr/bin/systemctl" <<'SHIM'
#!/bin/sh
echo "$*" >>/var/log/systemctl-calls
exit 0
SHIM
chmod 0755 "$root/usr/bin/systemctl"
cp "$deb" "$root/tmp/edgerelay.deb"

# ---- fresh install ----
: >"$root/var/log/systemctl-calls"
if ! in_root dpkg -i /tmp/edgerelay.deb </dev/null; then
	echo "FAIL: dpkg -i (fresh install)" >&2
	exit 1
fi
[ "$(in_root dpkg-query -W -f='${Status}' edgerelay)" = "install ok installed" ] || fail "not installed after dpkg -i"
pw=$(in_root getent passwd edgerelay) || fail "postinst made no user edgerelay"
IFS=: read -r _ _ uid gid _ home shell <<<"$pw"
[ "$uid" -lt 1000 ] || fail "user edgerelay has uid $uid: not a system user"
[ "$(in_root getent group edgerelay | cut -d: -f3)" = "$gid" ] || fail "edgerelay's primary group is not the group edgerelay"
[ "$home" = /var/lib/edgerelay ] || fail "home of edgerelay is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "shell of edgerelay is $shell"
[ "$(in_root stat -c '%U:%G %a' /var/lib/edgerelay)" = "edgerelay:edgerelay 750" ] ||
	fail "/var/lib/edgerelay is $(in_root stat -c '%U:%G %a' /var/lib/edgerelay)"
calls | grep -qx -- "--system daemon-reload" || fail "postinst did not reload systemd (calls: $(calls | tr '\n' ';'))"
if calls | grep -Eq "(^| )(start|restart|try-restart|enable)( |$)"; then
	fail "a fresh install enabled or started the service (calls: $(calls | tr '\n' ';'))"
fi
# The service user can read the shipped config and the binary accepts it.
if ! out=$(in_root runuser -u edgerelay -- /usr/bin/edgerelay check-config --config /etc/edgerelay/edgerelay.toml 2>&1); then
	fail "check-config as user edgerelay after install: $out"
fi
echo "$out"

# ---- upgrade (the same version again) keeps a changed conffile and restarts ----
echo "# changed by the administrator" >>"$root/etc/edgerelay/edgerelay.toml"
: >"$root/var/log/systemctl-calls"
if ! in_root dpkg -i --force-confold /tmp/edgerelay.deb </dev/null; then
	echo "FAIL: dpkg -i (upgrade)" >&2
	exit 1
fi
grep -q "changed by the administrator" "$root/etc/edgerelay/edgerelay.toml" || fail "upgrade replaced the changed conffile"
calls | grep -qx "try-restart edgerelay.service" || fail "upgrade did not try-restart the service (calls: $(calls | tr '\n' ';'))"
calls | grep -qx "stop edgerelay.service" && fail "upgrade stopped the service in prerm"

# ---- remove keeps configuration, state and the user ----
mkdir -p "$root/var/lib/edgerelay/queue"
echo data >"$root/var/lib/edgerelay/queue/data.mdb"
: >"$root/var/log/systemctl-calls"
in_root dpkg -r edgerelay </dev/null || fail "dpkg -r"
calls | grep -qx "stop edgerelay.service" || fail "remove did not stop the service (calls: $(calls | tr '\n' ';'))"
[ ! -e "$root/usr/bin/edgerelay" ] || fail "remove left /usr/bin/edgerelay"
[ ! -e "$root/lib/systemd/system/edgerelay.service" ] || fail "remove left the unit"
[ -f "$root/etc/edgerelay/edgerelay.toml" ] || fail "remove deleted the configuration"
[ -f "$root/var/lib/edgerelay/queue/data.mdb" ] || fail "remove deleted the queue"
in_root getent passwd edgerelay >/dev/null || fail "remove deleted the user"

# ---- purge deletes configuration and state, keeps the user ----
in_root dpkg -P edgerelay </dev/null || fail "dpkg -P"
[ ! -e "$root/etc/edgerelay" ] || fail "purge left /etc/edgerelay: $(ls -A "$root/etc/edgerelay")"
[ ! -e "$root/var/lib/edgerelay" ] || fail "purge left /var/lib/edgerelay"
in_root getent passwd edgerelay >/dev/null || fail "purge deleted the user (Debian practice keeps it)"
[ -z "$(in_root dpkg-query -W -f='${Status}' edgerelay 2>/dev/null)" ] ||
	[ "$(in_root dpkg-query -W -f='${Status}' edgerelay 2>/dev/null)" = "unknown ok not-installed" ] ||
	fail "dpkg still knows edgerelay after purge: $(in_root dpkg-query -W -f='${Status}' edgerelay)"

[ $failures -eq 0 ] || exit 1
echo "ok: install, upgrade, remove and purge of $(basename "$deb") in a throw-away overlay root"

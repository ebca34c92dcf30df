#!/usr/bin/env bash
# The Debian package's control data and file layout are as documented in
# docs/operations.md, and the configuration it ships passes
# `edgerelay check-config` with the binary it ships, unpacked into a scratch
# root (dpkg -x: no maintainer scripts run, the system is not touched).
#
# usage: deb_contents_test.sh DEB SCRATCH_DIR
set -euo pipefail

deb=$1 scratch=$2
failures=0
fail() {
	echo "FAIL: $*" >&2
	failures=$((failures + 1))
}

info=$(dpkg-deb --info "$deb")
field() { dpkg-deb --field "$deb" "$1"; }

[ "$(field Package)" = edgerelay ] || fail "Package is '$(field Package)'"
[ "$(field Architecture)" = "$(dpkg --print-architecture)" ] || fail "Architecture is '$(field Architecture)'"
depends=$(field Depends)
echo "Depends: $depends"
# From dpkg-shlibdeps: the libraries the binary links, with versions.
# The package names, without versions, one a line.
depends_names=$(echo "$depends" | tr ',' '\n' | awk '{print $1}')
for lib in libc6 libstdc++6 libssl3 liblmdb0 libzstd1 adduser; do
	echo "$depends_names" | grep -Fqx "$lib" || fail "Depends lacks $lib"
done
for script in postinst prerm postrm conffiles; do
	echo "$info" | grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\*? *$script( |$)" || fail "control member $script missing"
done
for script in postinst prerm postrm; do
	echo "$info" | grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$script " || fail "$script is not executable"
done
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" = /etc/edgerelay/edgerelay.toml ] ||
	fail "conffiles is not exactly /etc/edgerelay/edgerelay.toml"

contents=$(dpkg-deb --contents "$deb")
expect() { # MODE PATH: a file of that mode owned by root
	echo "$contents" | grep -Eq "^$1 root/root +[0-9]+ [0-9-]+ [0-9:]+ \.$2$" || fail "no $1 root/root $2 in the package"
}
expect -rwxr-xr-x /usr/bin/edgerelay
expect -rw-r--r-- /lib/systemd/system/edgerelay.service
expect -rw-r--r-- /etc/edgerelay/edgerelay.toml
expect -rw-r--r-- /usr/share/edgerelay/alerts.yml
expect -rw-r--r-- /usr/share/doc/edgerelay/operations.md
expect -rw-r--r-- /usr/share/doc/edgerelay/config.md
expect -rw-r--r-- /usr/share/doc/edgerelay/copyright
expect -rw-r--r-- /usr/share/doc/edgerelay/examples/edge.toml
expect -rw-r--r-- /usr/share/doc/edgerelay/examples/hub.toml
# Nothing of the build tree, and no state: /var/lib/edgerelay is made by
# postinst (and systemd), so that dpkg never owns the queue.
if echo "$contents" | grep -Eq '\./(var|home|root|tmp|work)/'; then
	fail "the package holds files outside /usr, /etc and /lib:"
	echo "$contents" | grep -E '\./(var|home|root|tmp|work)/' >&2
fi

rm -rf "$scratch"
mkdir -p "$scratch"
dpkg -x "$deb" "$scratch"
if readelf -S "$scratch/usr/bin/edgerelay" | grep -Eq '\.(symtab|debug_info)'; then
	fail "usr/bin/edgerelay is not stripped"
fi
rc=0
out=$("$scratch/usr/bin/edgerelay" check-config --config "$scratch/etc/edgerelay/edgerelay.toml" 2>&1) || rc=$?
echo "$out"
[ $rc -eq 0 ] || fail "the packaged binary rejects the packaged config (exit $rc)"
"$scratch/usr/bin/edgerelay" --help >/dev/null || fail "the packaged binary does not run"

[ $failures -eq 0 ] || exit 1
echo "ok: $(basename "$deb"): control data, layout, and check-config of the shipped config"

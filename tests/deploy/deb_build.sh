#!/usr/bin/env bash
# Builds the Debian package with CPack from a configured build directory
# whose edgerelay target is built. The test fixture for the deb_* tests.
#
# usage: deb_build.sh BUILD_DIR EDGERELAY_BINARY OUT_DIR
set -euo pipefail

build=$1 binary=$2 out=$3

if [ ! -x "$binary" ]; then
	echo "$binary does not exist: build the edgerelay target first" >&2
	exit 1
fi
for tool in cpack dpkg-deb dpkg-shlibdeps; do
	if ! command -v "$tool" >/dev/null; then
		echo "$tool not found (Debian packages cmake, dpkg-dev)" >&2
		exit 1
	fi
done

rm -rf "$out"
mkdir -p "$out"
if ! cpack --config "$build/CPackConfig.cmake" -G DEB -B "$out" >"$out/cpack.log" 2>&1; then
	cat "$out/cpack.log" >&2
	exit 1
fi
debs=("$out"/edgerelay_*.deb)
if [ ${#debs[@]} -ne 1 ] || [ ! -f "${debs[0]}" ]; then
	echo "cpack made no single edgerelay_*.deb in $out:" >&2
	ls -l "$out" >&2
	exit 1
fi
ln -sf "$(basename "${debs[0]}")" "$out/edgerelay.deb"
echo "ok: built ${debs[0]} ($(stat -c %s "${debs[0]}") bytes)"

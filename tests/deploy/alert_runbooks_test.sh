#!/usr/bin/env bash
# Every alert in alerts.yml has a severity label and a runbook_url whose
# anchor is a section of docs/operations.md: a heading "### <AlertName>"
# (GitHub and most Markdown renderers make its anchor the lower-cased name).
#
# usage: alert_runbooks_test.sh ALERTS_YML OPERATIONS_MD
set -euo pipefail

alerts=$1 doc=$2
base="file:///usr/share/doc/edgerelay/operations.md#"
failures=0 count=0

# One line per alert: "name|severity|runbook_url".
rows=$(awk '
  /^ *- alert:/ { if (name != "") print name "|" sev "|" url; name = $3; sev = ""; url = "" }
  /^ *severity:/ { sev = $2 }
  /^ *runbook_url:/ { url = $2; gsub(/"/, "", url) }
  END { if (name != "") print name "|" sev "|" url }
' "$alerts")

while IFS='|' read -r name sev url; do
	count=$((count + 1))
	anchor=$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]')
	case "$sev" in
	page | warning) ;;
	*)
		echo "FAIL: $name: severity '$sev' is neither page nor warning" >&2
		failures=$((failures + 1))
		;;
	esac
	if [ "$url" != "$base$anchor" ]; then
		echo "FAIL: $name: runbook_url '$url', expected '$base$anchor'" >&2
		failures=$((failures + 1))
	fi
	if ! grep -qx "### $name" "$doc"; then
		echo "FAIL: $name: $doc has no heading '### $name'" >&2
		failures=$((failures + 1))
	fi
done <<<"$rows"

if [ "$count" -lt 1 ]; then
	echo "FAIL: no alerts found in $alerts" >&2
	exit 1
fi
if [ "$failures" -ne 0 ]; then
	exit 1
fi
echo "ok: $count alerts, each with a severity and a runbook section in $(basename "$doc")"

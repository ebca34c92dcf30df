#!/usr/bin/env bash
# Instructions per delivered T1 segment, counted with callgrind: the stable
# figure to defend against regressions (bench/README.md, "Instructions per
# T1 segment").
#
#   bench/callgrind_t1.sh [BUILD_DIR] [N_SMALL] [N_LARGE]
#
# Runs an edge and a hub (the same configs as `edgerelay bench tiers`:
# sync = "full" on both, ws ingest, mTLS relay, file:// spool) each under
# `valgrind --tool=callgrind`, sends N segments of 64 B with
# `edgerelay send` over the WebSocket ingest (batches of 1,024, window 8),
# waits until the hub's spool peer has delivered all of them, stops both
# nodes and reads each node's instruction total. It does this for N_SMALL
# (default 20,000) and N_LARGE (default 60,000) segments; the marginal cost
#     (Ir(N_LARGE) - Ir(N_SMALL)) / (N_LARGE - N_SMALL)
# cancels start-up, TLS handshakes and shutdown, and is printed per node and
# for both together. Timer ticks (50 ms) still add a little per wall second.
# Needs valgrind; takes 1-3 minutes. The producer (edgerelay send) is not
# counted. EDGERELAY_CALLGRIND_KEEP=1 keeps the callgrind files for
# callgrind_annotate.
set -euo pipefail

build=${1:-build}
n_small=${2:-20000}
n_large=${3:-60000}
bin=$(realpath "$build/bin/edgerelay")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/edgerelay-callgrind-XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${EDGERELAY_CALLGRIND_KEEP:-}" ]; then
    echo "kept $work (callgrind_annotate $work/run-*/{edge,hub}.cg)" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

"$bin" pki init --dir "$work/pki" >/dev/null

# Waits for a node's "node running: admin A, ingest B, listen C" line and prints the value of $2.
addr_of() {
  local log=$1 key=$2
  for _ in $(seq 1 600); do
    # The line is written piecewise: use it once the file ends with a newline.
    if grep -q "node running:" "$log" 2>/dev/null && [ -z "$(tail -c 1 "$log")" ]; then
      grep -o "$key [0-9.:]*" "$log" | head -1 | cut -d' ' -f2
      return
    fi
    sleep 0.1
  done
  echo "node did not start; $log:" >&2
  cat "$log" >&2
  exit 1
}

# The hub's deliveries into its spool (0 while its admin API does not answer).
delivered() {
  local v
  v=$("$bin" status --admin "http://$1" --json 2>/dev/null |
    python3 -c 'import json,sys; print(sum(p["delivered"] for p in json.load(sys.stdin)["peers"]))' 2>/dev/null) || v=0
  echo "${v:-0}"
}

# Runs one round with $1 segments; prints "edge_Ir hub_Ir".
round() {
  local n=$1 d="$work/run-$1"
  mkdir -p "$d/hub/spool"
  cat >"$d/hub.toml" <<EOF
[node]
id = "hub"
data_dir = "$d/hub/data"
sync = "full"
[listen]
address = "127.0.0.1:0"
cert = "$work/pki/server.pem"
key = "$work/pki/server.key"
ca = "$work/pki/ca.pem"
allow = ["URI:spiffe://edgerelay/edge/*"]
[admin]
listen = "127.0.0.1:0"
[evidence]
canary_interval = "0s"
[[peer]]
name = "spool"
url = "file://$d/hub/spool"
batch_max_bytes = "4MiB"
EOF
  valgrind --tool=callgrind --callgrind-out-file="$d/hub.cg" "$bin" run --config "$d/hub.toml" >"$d/hub.log" 2>&1 &
  local hub=$!
  pids+=("$hub")
  local hub_listen hub_admin
  hub_listen=$(addr_of "$d/hub.log" listen)
  hub_admin=$(addr_of "$d/hub.log" admin)
  cat >"$d/edge.toml" <<EOF
[node]
id = "edge"
data_dir = "$d/edge/data"
sync = "full"
[ingest]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[evidence]
canary_interval = "0s"
[[peer]]
name = "hub"
url = "wss://$hub_listen/v1/relay"
server_name = "localhost"
cert = "$work/pki/client.pem"
key = "$work/pki/client.key"
ca = "$work/pki/ca.pem"
window = 16
batch_max_bytes = "4MiB"
compression = "none"
EOF
  valgrind --tool=callgrind --callgrind-out-file="$d/edge.cg" "$bin" run --config "$d/edge.toml" >"$d/edge.log" 2>&1 &
  local edge=$!
  pids+=("$edge")
  local ingest
  ingest=$(addr_of "$d/edge.log" ingest)
  "$bin" send --url "ws://$ingest" --stream bench --count "$n" --size 64B --batch 1024 --window 8 >&2
  for _ in $(seq 1 1200); do
    [ "$(delivered "$hub_admin")" -ge "$n" ] && break
    sleep 0.25
  done
  if [ "$(delivered "$hub_admin")" -lt "$n" ]; then
    echo "round $n: not everything was delivered" >&2
    exit 1
  fi
  kill "$edge" "$hub"
  wait "$edge" "$hub" || true
  local e h
  e=$(grep -m1 '^summary:' "$d/edge.cg" | cut -d' ' -f2)
  h=$(grep -m1 '^summary:' "$d/hub.cg" | cut -d' ' -f2)
  echo "$e $h"
}

read -r e1 h1 < <(round "$n_small")
read -r e2 h2 < <(round "$n_large")
dn=$((n_large - n_small))
python3 - "$e1" "$h1" "$e2" "$h2" "$n_small" "$n_large" <<'EOF'
import sys
e1, h1, e2, h2, n1, n2 = map(int, sys.argv[1:])
d = n2 - n1
print(f"round {n1}: edge {e1:,} Ir, hub {h1:,} Ir")
print(f"round {n2}: edge {e2:,} Ir, hub {h2:,} Ir")
print(f"instructions per delivered T1 segment (marginal over {d:,} segments): "
      f"edge {(e2 - e1) / d:,.0f}, hub {(h2 - h1) / d:,.0f}, both {(e2 - e1 + h2 - h1) / d:,.0f}")
EOF

#!/usr/bin/python3
"""rsyslog beside edgerelay: the same store-and-forward pair, T1 and T2.

An edge rsyslog (producer -> imtcp on loopback) forwards over RELP with TLS
(librelp, OpenSSL, mutual certificates from `edgerelay pki init`) to a hub
rsyslog (imrelp) that writes every message's payload, one per line, to a
file. Two configurations, written out below in full (bench/README.md,
"Peers", explains the choice):

  durable  the edge's omrelp action has a disk queue with
           queue.syncqueuefiles="on" (every queue write fsynced); the hub's
           main queue is a disk queue with queue.syncqueuefiles="on" and its
           omfile fsyncs each batch (sync="on"). The same promise as
           edgerelay's sync = "full" on both nodes, as far as rsyslog can
           give it (the edge's imtcp -> main queue hop is in memory).
  fast     rsyslog's best tuned setup we found: in-memory LinkedList main
           queues with large dequeue batches, a disk-assisted memory action
           queue (spills to disk only when full) with two workers (two RELP
           sessions), RELP windowSize 16384, no fsync anywhere. A weaker promise (a crash loses queued messages).

For each configuration and tier it sends N messages with the tier's payload
size (64 B, 1 KiB; a 12-digit sequence number then filler), waits until the
hub's file holds N lines, and checks every line (missing, duplicated or
corrupted payloads). Rate = N / (last line seen - first byte sent).

Then it runs `edgerelay bench tiers --tiers T1,T2` (or reads --ours FILE)
and prints both sets of figures and the ratios edgerelay / rsyslog.

After each rsyslog run it calls sync(2): the fast configuration leaves
hundreds of MB unwritten in the page cache (it never fsyncs), and the
kernel writing them back during the next measurement would slow that
measurement's fsyncs.

Every rsyslogd it starts is a private instance (-f own config, -i own pid
file, own work directory, loopback ports, no system inputs) and is stopped
(SIGTERM, then SIGKILL) before the script ends, also on errors and Ctrl-C.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TIERS = {"T1": 64, "T2": 1024}
# Messages per run: (quick, full).
COUNTS = {
    ("durable", "T1"): (3_000, 20_000),
    ("durable", "T2"): (3_000, 20_000),
    ("fast", "T1"): (100_000, 1_000_000),
    ("fast", "T2"): (50_000, 400_000),
}

HUB_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imrelp" tls.tlslib="openssl")
template(name="payload" type="string" string="%msg%\\n")
{main_queue}
input(type="imrelp" address="127.0.0.1" port="{port}" maxDataSize="64k"
      tls="on" tls.cacert="{ca}" tls.mycert="{cert}" tls.myprivkey="{key}"
      tls.authmode="certvalid")
action(type="omfile" file="{out}" template="payload" {omfile})
"""

EDGE_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp")
module(load="omrelp" tls.tlslib="openssl")
{main_queue}
input(type="imtcp" address="127.0.0.1" port="{port}")
action(type="omrelp" target="127.0.0.1" port="{hub_port}"
       tls="on" tls.cacert="{ca}" tls.mycert="{cert}" tls.myprivkey="{key}"
       tls.authmode="name" tls.permittedpeer=["localhost"]
       action.resumeRetryCount="-1" {omrelp})
"""

CONFIGS = {
    "durable": {
        "hub_main_queue": 'main_queue(queue.type="Disk" queue.filename="hubmain" queue.syncqueuefiles="on" '
        'queue.maxDiskSpace="8g" queue.saveOnShutdown="on")',
        "omfile": 'sync="on" flushOnTXEnd="on"',
        "edge_main_queue": "",
        "omrelp": 'queue.type="Disk" queue.filename="edgeq" queue.syncqueuefiles="on" '
        'queue.maxDiskSpace="8g" queue.saveOnShutdown="on"',
    },
    "fast": {
        "hub_main_queue": 'main_queue(queue.type="LinkedList" queue.size="2000000" '
        'queue.dequeueBatchSize="4096" queue.workerThreads="1")',
        "omfile": 'ioBufferSize="1m" flushOnTXEnd="on"',
        "edge_main_queue": 'main_queue(queue.type="LinkedList" queue.size="2000000" '
        'queue.dequeueBatchSize="4096")',
        "omrelp": 'windowSize="16384" queue.workerThreads="2" queue.type="LinkedList" queue.filename="edgeq" '
        'queue.size="2000000" queue.dequeueBatchSize="4096" queue.highWatermark="1800000" '
        'queue.maxDiskSpace="8g" queue.saveOnShutdown="on"',
    },
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=20):
    # A plain connect as the probe: the hub's imrelp logs it as a failed TLS
    # handshake ("unexpected eof"), which is expected and harmless.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} rsyslogd ended (exit {proc.returncode}); see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} rsyslogd does not listen on {port}; see its rsyslogd.log")


class Rsyslog:
    """A private rsyslogd: own config, pid file, work dir; stopped by stop()."""

    def __init__(self, name, conf_text, base):
        self.dir = os.path.join(base, name)
        os.makedirs(os.path.join(self.dir, "work"), exist_ok=True)
        self.conf = os.path.join(self.dir, "rsyslog.conf")
        with open(self.conf, "w") as f:
            f.write(conf_text)
        self.pidfile = os.path.join(self.dir, "rsyslogd.pid")
        self.log = open(os.path.join(self.dir, "rsyslogd.log"), "w")
        check = subprocess.run(["rsyslogd", "-N1", "-f", self.conf], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"rsyslogd -N1 refuses {self.conf}:\n{check.stdout}{check.stderr}")
        self.proc = subprocess.Popen(["rsyslogd", "-n", "-f", self.conf, "-i", self.pidfile],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def make_messages(n, size):
    filler = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" * (size // 62 + 2))
    chunks, batch = [], []
    for i in range(n):
        payload = f"{i:012d}" + filler[i % 62: i % 62 + size - 12]
        batch.append(f"<13>bench: {payload}\n")
        if len(batch) == 10000:
            chunks.append("".join(batch).encode())
            batch = []
    if batch:
        chunks.append("".join(batch).encode())
    return chunks, filler


def count_lines(path, state):
    try:
        with open(path, "rb") as f:
            f.seek(state["offset"])
            data = f.read()
    except FileNotFoundError:
        return state["lines"]
    state["offset"] += len(data)
    state["lines"] += data.count(b"\n")
    return state["lines"]


def verify(path, n, size, filler):
    seen = bytearray(n)
    dup = bad = 0
    with open(path, "rb") as f:
        for line in f:
            p = line.strip().decode(errors="replace")
            try:
                i = int(p[:12])
            except ValueError:
                bad += 1
                continue
            if i >= n or len(p) != size or p[12:] != filler[i % 62: i % 62 + size - 12]:
                bad += 1
                continue
            if seen[i]:
                dup += 1
            seen[i] = 1
    return {"missing": n - sum(seen), "duplicates": dup, "corrupted": bad}


def run_pair(config, tier, n, pki, base, timeout):
    size = TIERS[tier]
    d = os.path.join(base, f"{config}-{tier}")
    os.makedirs(d)
    hub_port, edge_port = free_port(), free_port()
    out = os.path.join(d, "hub-out.log")
    c = CONFIGS[config]
    hub = edge = None
    try:
        hub = Rsyslog("hub", HUB_CONF.format(work=os.path.join(d, "hub", "work"), port=hub_port,
                                             ca=pki["ca"], cert=pki["server"], key=pki["server_key"], out=out,
                                             main_queue=c["hub_main_queue"], omfile=c["omfile"]), d)
        wait_port(hub_port, hub.proc, "hub")
        edge = Rsyslog("edge", EDGE_CONF.format(work=os.path.join(d, "edge", "work"), port=edge_port,
                                                hub_port=hub_port, ca=pki["ca"], cert=pki["client"],
                                                key=pki["client_key"], main_queue=c["edge_main_queue"],
                                                omrelp=c["omrelp"]), d)
        wait_port(edge_port, edge.proc, "edge")
        chunks, filler = make_messages(n, size)
        state = {"offset": 0, "lines": 0}
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", edge_port)) as s:
            for ch in chunks:
                s.sendall(ch)
        sent_s = time.monotonic() - t0
        deadline = t0 + timeout
        last = t0
        while True:
            lines = count_lines(out, state)
            now = time.monotonic()
            if lines >= n or now > deadline:
                break
            if lines and state.get("prev") != lines:
                last = now
            state["prev"] = lines
            time.sleep(0.02)
        if lines >= n:
            last = time.monotonic()
        elapsed = last - t0
        result = {"config": config, "tier": tier, "segment_bytes": size, "messages": n, "delivered": lines,
                  "seconds": round(elapsed, 3), "producer_seconds": round(sent_s, 3),
                  "segments_per_s": lines / elapsed if elapsed > 0 else 0.0,
                  "timed_out": lines < n}
        result["mb_per_s"] = result["segments_per_s"] * size / 1e6
        edge.stop()
        hub.stop()
        result.update(verify(out, n, size, filler))
        return result
    finally:
        for r in (edge, hub):
            if r is not None:
                r.stop()


def settle_disk():
    """Writes back what the run left dirty in the page cache, so that the
    kernel's writeback does not land in the next measurement."""
    t0 = time.monotonic()
    os.sync()
    print(f"peers: sync after the run: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgerelay", default=os.path.join(here, "..", "..", "build", "bin", "edgerelay"),
                    help="the edgerelay binary (default: build/bin/edgerelay of this tree)")
    ap.add_argument("--tiers", default="T1,T2", help="T1, T2 or both (default T1,T2)")
    ap.add_argument("--configs", default="durable,fast", help="durable, fast or both")
    ap.add_argument("--quick", action="store_true", help="small counts (seconds per run)")
    ap.add_argument("--ours", help="read edgerelay's figures from this bench tiers JSON instead of running it")
    ap.add_argument("--pki", help="use this dev PKI (ca.pem, server.pem/key, client.pem/key) instead of "
                    "making one with `edgerelay pki init`")
    ap.add_argument("--dir", help="work directory on a real disk (default: a new one under $TMPDIR, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", help="write all figures as JSON here")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for one run's delivery")
    a = ap.parse_args()

    tiers = [t for t in a.tiers.split(",") if t]
    configs = [c for c in a.configs.split(",") if c]
    for t in tiers:
        if t not in TIERS:
            ap.error(f"unknown tier {t!r} (rsyslog runs T1 and T2)")
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r} (durable, fast)")
    if shutil.which("rsyslogd") is None:
        sys.exit("rsyslogd not found: run bench/peers/install-deps.sh")
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so") and \
            not any(os.path.exists(os.path.join(p, "imrelp.so")) for p in ("/usr/lib/rsyslog",)):
        print("warning: imrelp.so not found where Debian puts it; is rsyslog-relp installed?", file=sys.stderr)

    base = os.path.abspath(a.dir) if a.dir else tempfile.mkdtemp(prefix="edgerelay-peers-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.makedirs(base, exist_ok=True)
    results = []
    try:
        p = os.path.abspath(a.pki) if a.pki else None
        if not p:
            p = os.path.join(base, "pki")
            subprocess.run([a.edgerelay, "pki", "init", "--dir", p, "--force"], check=True, stdout=subprocess.DEVNULL)
        pki = {"ca": f"{p}/ca.pem", "server": f"{p}/server.pem", "server_key": f"{p}/server.key",
               "client": f"{p}/client.pem", "client_key": f"{p}/client.key"}
        for c in configs:
            for t in tiers:
                n = COUNTS[(c, t)][0 if a.quick else 1]
                print(f"peers: rsyslog {c} {t}: {n} messages of {TIERS[t]} B ...", file=sys.stderr, flush=True)
                r = run_pair(c, t, n, pki, base, a.timeout)
                print(f"peers: rsyslog {c} {t}: {r['segments_per_s']:.0f} messages/s, {r['mb_per_s']:.2f} MB/s, "
                      f"missing {r['missing']}, duplicates {r['duplicates']}, corrupted {r['corrupted']}",
                      file=sys.stderr, flush=True)
                results.append(r)
                settle_disk()

        if a.ours:
            with open(a.ours) as f:
                ours = json.load(f)
        else:
            ours_file = os.path.join(base, "edgerelay-tiers.json")
            cmd = [a.edgerelay, "bench", "tiers", "--tiers", ",".join(tiers), "--out", ours_file,
                   "--dir", os.path.join(base, "edgerelay")]
            if a.quick:
                cmd.append("--quick")
            print("peers: " + " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd)
            with open(ours_file) as f:
                ours = json.load(f)
    finally:
        if not a.keep and not a.dir:
            shutil.rmtree(base, ignore_errors=True)

    by_tier = {t["tier"]: t for t in ours["tiers"]}
    print(f"\nrsyslog vs edgerelay ({'quick' if a.quick else 'full'}) - {ours.get('machine')}, "
          f"edgerelay commit {ours.get('commit')}")
    print(f"{'tier':4} {'system':22} {'segments/s':>12} {'MB/s':>9} {'loss':>6} {'dups':>6}  edgerelay / it")
    for t in tiers:
        o = by_tier.get(t)
        if o:
            print(f"{t:4} {'edgerelay (sync full)':22} {o['segments_per_s']:12.0f} {o['mb_per_s']:9.2f} "
                  f"{o['loss']:6d} {o['duplicates']:6d}")
        for r in results:
            if r["tier"] != t:
                continue
            ratio = (o["segments_per_s"] / r["segments_per_s"]) if o and r["segments_per_s"] > 0 else float("nan")
            r["edgerelay_ratio"] = ratio
            print(f"{t:4} {'rsyslog ' + r['config']:22} {r['segments_per_s']:12.0f} {r['mb_per_s']:9.2f} "
                  f"{r['missing']:6d} {r['duplicates']:6d}  {ratio:8.1f} x"
                  + ("  (TIMED OUT)" if r["timed_out"] else ""))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rsyslog": results, "edgerelay": ours}, f, indent=1)
    ok = all(r["missing"] == 0 and r["duplicates"] == 0 and r["corrupted"] == 0 and not r["timed_out"]
             for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

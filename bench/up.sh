#!/usr/bin/env bash
# A whole HCU from nothing: the time from `mailctl up` (3 mserv, 2 ustore, 2 frontdoor, 1 login,
# 1 smtp-in, on an empty data directory) to the first successful `mailctl probe`, then the probe's
# end-to-end latency (SMTP in, sign in, seen through a front door, read back) as the median of 20.
#
#   bench/up.sh
#
# The layout is deploy/local.toml with every port moved up by 20000, so a running `./dev up` is
# not disturbed. Last line: RESULT up_to_probe_ms=<n> probe_p50_ms=<n>
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/hcu.sh
hcu_layout 20000

now_ms() { date +%s%3N; }
start=$(now_ms)
hcu_start
hcu_wait 120 "$bin/mailctl" --data "$dir/data" --json probe
up_to_probe=$(( $(now_ms) - start ))
echo "first probe ok after ${up_to_probe} ms: $(tr -d '\n ' <"$dir/ready.out")"

for i in $(seq 1 20); do
    "$bin/mailctl" --data "$dir/data" --json probe | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_ms"])' >>"$dir/lat"
done
p50=$(sort -n "$dir/lat" | python3 -c 'import sys; v=[float(x) for x in sys.stdin]; print(round(v[len(v)//2]))')
echo "probe latencies (ms): $(sort -n "$dir/lat" | tr '\n' ' ')"
echo "RESULT up_to_probe_ms=${up_to_probe} probe_p50_ms=${p50}"

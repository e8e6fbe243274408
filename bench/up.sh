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
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/megamail/target}"
cargo build --release --quiet --workspace --bins
bin="$CARGO_TARGET_DIR/release"

dir="$(mktemp -d)"
up_pid=""
cleanup() {
    if [ -n "$up_pid" ]; then kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

python3 - "$dir/layout.toml" <<'PY'
import re, sys
text = open("deploy/local.toml").read()
text = re.sub(r'"127\.0\.0\.1:(\d+)"', lambda m: '"127.0.0.1:%d"' % (int(m.group(1)) + 20000), text)
open(sys.argv[1], "w").write(text)
PY

now_ms() { date +%s%3N; }
start=$(now_ms)
"$bin/mailctl" --data "$dir/data" up --config "$dir/layout.toml" >"$dir/up.log" 2>&1 &
up_pid=$!
until [ -f "$dir/data/endpoints.json" ] && "$bin/mailctl" --data "$dir/data" --json probe >"$dir/probe.json" 2>/dev/null; do
    if ! kill -0 "$up_pid" 2>/dev/null; then cat "$dir/up.log"; echo "mailctl up exited" >&2; exit 1; fi
    if [ $(( $(now_ms) - start )) -gt 120000 ]; then echo "no successful probe within 120 s" >&2; exit 1; fi
    sleep 0.05
done
up_to_probe=$(( $(now_ms) - start ))
echo "first probe ok after ${up_to_probe} ms: $(cat "$dir/probe.json" | tr -d '\n ')"

for i in $(seq 1 20); do
    "$bin/mailctl" --data "$dir/data" --json probe | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_ms"])' >>"$dir/lat"
done
p50=$(sort -n "$dir/lat" | python3 -c 'import sys; v=[float(x) for x in sys.stdin]; print(round(v[len(v)//2]))')
echo "probe latencies (ms): $(sort -n "$dir/lat" | tr '\n' ' ')"
echo "RESULT up_to_probe_ms=${up_to_probe} probe_p50_ms=${p50}"

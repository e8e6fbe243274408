#!/usr/bin/env bash
# Webmail under load: a whole HCU from `mailctl up` (release binaries), 50 users with 1000
# messages each in their Inbox, signed in through the login server's JSON API and spread over
# both front doors, each asking for its Inbox page (`GET /folder/Inbox` with the session cookie,
# one keep-alive connection per user) as fast as it can for 10 s after a warm-up. Reports pages
# per second, the p99 latency seen by the clients, and the stores' RocksDB block cache misses
# (from their /metrics) per page served.
#
#   bench/webmail.sh            (USERS, MESSAGES, SECS and WARMUP_SECS override the defaults)
#
# The layout is deploy/local.toml with every port moved up by 21000, so neither a running
# `./dev up` nor bench/up.sh is disturbed. Last line:
# RESULT inbox_pages_per_s=<n> p99_ms=<n> cache_misses_per_page=<x>
set -euo pipefail
cd "$(dirname "$0")/.."
users="${USERS:-50}"
messages="${MESSAGES:-1000}"
secs="${SECS:-10}"
warmup="${WARMUP_SECS:-2}"

. bench/hcu.sh
hcu_up 21000

load=("$bin/webmail-load")
"${load[@]}" setup --data "$dir/data" --users "$users" --messages "$messages"

# Restart the stores (a clean stop flushes the memtables; the supervisor starts them again), so
# pages are read from table files through a block cache that starts cold, as in steady state.
# (`status` exits non-zero while a process is not healthy; its JSON is still the rows.)
status_json() { "$bin/mailctl" --data "$dir/data" --json status 2>/dev/null || true; }
store_pids() {
    status_json | python3 -c 'import json,sys; t=sys.stdin.read(); print(" ".join(str(r["pid"]) for r in (json.loads(t) if t.strip() else []) if r["role"] == "ustore" and r["pid"]))'
}
old_pids=$(store_pids)
[ -n "$old_pids" ] || { echo "no store pids in mailctl status" >&2; exit 1; }
# shellcheck disable=SC2086 # one pid per word
kill -TERM $old_pids
start=$(date +%s)
until status_json | python3 -c '
import json, sys
old = set(sys.argv[1].split())
text = sys.stdin.read()
rows = json.loads(text) if text.strip() else []
stores = [r for r in rows if r["role"] == "ustore"]
ok = rows and all(r["state"] == "ok" for r in rows) and stores and all(str(r["pid"]) not in old for r in stores)
sys.exit(0 if ok else 1)' "$old_pids"; do
    if [ $(( $(date +%s) - start )) -gt 120 ]; then echo "the stores did not come back within 120 s" >&2; exit 1; fi
    sleep 0.2
done
until "$bin/mailctl" --data "$dir/data" --json probe >/dev/null 2>&1; do
    if [ $(( $(date +%s) - start )) -gt 120 ]; then echo "no successful probe after the store restart" >&2; exit 1; fi
    sleep 0.2
done
echo "stores restarted (memtables flushed) in $(( $(date +%s) - start )) s"

if ! "${load[@]}" run --data "$dir/data" --users "$users" --secs "$secs" --warmup-secs "$warmup" \
    | tee "$dir/run.out" | grep -v '^RESULT '; then
    echo "the load run failed; the HCU's log ends:" >&2
    tail -n 30 "$dir/up.log" >&2
    exit 1
fi
result=$(grep '^RESULT ' "$dir/run.out" | tail -n 1)
[ -n "$result" ] || { echo "the load generator printed no RESULT" >&2; exit 1; }

# Stop the HCU before the last line, so nothing it prints follows it.
hcu_stop
echo "$result"

#!/usr/bin/env bash
# The load generator against a whole HCU from `mailctl up` (release binaries): simulated users
# signing in, listing folders, opening their Inbox and messages and sometimes sending, plus SMTP
# arrivals at a set rate, for SECS seconds after a warm-up. loadgen measures each role's CPU per
# request and the stores' I/O per page view and per delivery, and writes the capacity profile
# that hcu-sizing reads; then hcu-sizing plans the 1999 workload on it, if both are there.
#
#   bench/loadgen.sh [PROFILE]   (default: measured-capacity.toml in the temporary directory;
#                                 USERS, SESSIONS, SMTP_RATE, SECS, WARMUP_SECS, THINK_MS override)
#
# The layout is deploy/local.toml with every port moved up by 22000, so neither a running
# `./dev up` nor the other benchmarks are disturbed. Last line:
# RESULT frontdoor_pv_per_s=<n> store_pv_per_s=<n> store_deliveries_per_s=<n> logins_per_s=<n>
#        smtp_msgs_per_s=<n> disk_per_stored_byte=<x>
set -euo pipefail
cd "$(dirname "$0")/.."
users="${USERS:-200}"
sessions="${SESSIONS:-40}"
smtp_rate="${SMTP_RATE:-20}"
secs="${SECS:-60}"
warmup="${WARMUP_SECS:-5}"
think="${THINK_MS:-200}"

. bench/hcu.sh
out="${1:-$dir/measured-capacity.toml}"
if [ -z "${1:-}" ]; then
    # Keep only the profile.
    trap 'hcu_stop; find "$dir" -mindepth 1 -maxdepth 1 ! -name measured-capacity.toml -exec rm -rf {} +' EXIT
fi
hcu_up 22000

if ! "$bin/loadgen" --data "$dir/data" --users "$users" --sessions "$sessions" \
    --smtp-rate "$smtp_rate" --duration "${secs}s" --warmup "${warmup}s" --think-ms "$think" \
    --out "$out"; then
    echo "the load run failed; the HCU's log ends:" >&2
    tail -n 30 "$dir/up.log" >&2
    exit 1
fi

# Stop the HCU before planning, so nothing it prints mixes with the plan.
hcu_stop

echo
echo "capacity profile ($out):"
cat "$out"
workload="hcu-sizing/profiles/1999-workload.toml"
if [ -x "$bin/hcu-sizing" ] && [ -f "$workload" ]; then
    echo
    echo "hcu-sizing plan --workload $workload --capacity $out"
    "$bin/hcu-sizing" plan --workload "$workload" --capacity "$out"
else
    echo "(no hcu-sizing binary or no $workload: the plan is skipped)"
fi

python3 - "$out" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))
print("RESULT frontdoor_pv_per_s=%.0f store_pv_per_s=%.0f store_deliveries_per_s=%.0f logins_per_s=%.0f smtp_msgs_per_s=%.0f disk_per_stored_byte=%.2f" % (
    p["frontdoor"]["page_views_per_s"], p["ustore"]["page_views_per_s"],
    p["ustore"]["deliveries_per_s"], p["login"]["logins_per_s"],
    p["smtp-in"]["messages_per_s"], p["ustore"]["disk_bytes_per_stored_byte"]))
PY

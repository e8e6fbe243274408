#!/usr/bin/env bash
# Evacuating a store: a whole HCU from `mailctl up` (release build), 200 mailboxes filled to
# about 1.1 GB on store-1, then `mailctl store drain store-1` and
# `mailctl migrate --from store-1 --all` while a steady SMTP load (50 messages/s by default)
# goes to every one of those users. Afterwards every mailbox is read back: each message accepted
# with 250 during the run must be there, and none twice.
#
#   bench/migrate.sh [PARALLEL (default 2, one per core)] [SMTP_MSGS_PER_S]
#
# Last line: RESULT migrate_mb_per_s=<x> mailboxes_per_s=<x> freeze_p99_ms=<n> lost=<n> duplicated=<n>
set -euo pipefail
cd "$(dirname "$0")/.."
parallel="${1:-2}"
rate="${2:-50}"
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

# deploy/local.toml with every port moved up by 21000.
python3 - "$dir/layout.toml" <<'PY'
import re, sys
text = open("deploy/local.toml").read()
text = re.sub(r'"127\.0\.0\.1:(\d+)"', lambda m: '"127.0.0.1:%d"' % (int(m.group(1)) + 21000), text)
open(sys.argv[1], "w").write(text)
PY
"$bin/mailctl" --data "$dir/data" up --config "$dir/layout.toml" >"$dir/up.log" 2>&1 &
up_pid=$!
until [ -f "$dir/data/endpoints.json" ] && "$bin/mailctl" --data "$dir/data" status >/dev/null 2>&1; do
    if ! kill -0 "$up_pid" 2>/dev/null; then cat "$dir/up.log"; exit 1; fi
    sleep 0.2
done
"$bin/migrate-bench" --data "$dir/data" setup
"$bin/migrate-bench" --data "$dir/data" run --mailctl "$bin/mailctl" --parallel "$parallel" --smtp-rate "$rate"

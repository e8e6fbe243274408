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
. bench/hcu.sh
# deploy/local.toml with every port moved up by 21000; ready once every process is healthy.
hcu_layout 21000
hcu_start
hcu_wait 180 "$bin/mailctl" --data "$dir/data" status
"$bin/migrate-bench" --data "$dir/data" setup
"$bin/migrate-bench" --data "$dir/data" run --mailctl "$bin/mailctl" --parallel "$parallel" --smtp-rate "$rate"

#!/usr/bin/env bash
# Durable deliveries per second of ~10 KiB text mail into one ustore, with 1, 16 and 64 concurrent
# clients; WAL fsyncs per delivery; and bytes on disk per byte of mail once the store has stopped
# (memtables flushed, WAL gone). Loopback only.
#
#   bench/ustore.sh [SECONDS_PER_RUN]      (INTERNAL_TLS=off: without mutual TLS)
#
# Last line: RESULT deliveries_per_s_64=<n> deliveries_per_s_1=<n> disk_bytes_per_mail_byte=<x>
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/megamail/target}"
cargo build --release --quiet --workspace --bins
bin="$CARGO_TARGET_DIR/release"

dir="$(mktemp -d)"
. bench/internal-tls.sh
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/ustore.toml" <<CFG
name = "bench"
listen = "127.0.0.1:$port"
[[segments]]
id = 0
path = "$dir/seg-0"
[[segments]]
id = 1
path = "$dir/seg-1"
[log]
level = "warn"
CFG
tls_section ustore bench-store >> "$dir/ustore.toml"
session_keys_section >> "$dir/ustore.toml"
# shellcheck disable=SC2207 # the arguments are words
client_tls=($(tls_client_args))
"$bin/ustore" --config "$dir/ustore.toml" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# Disk use of the empty store (RocksDB's own files), subtracted below.
base=$(du -sb "$dir"/seg-* | awk '{s+=$1} END {print s}')
out=$("$bin/ustore-bench" "${client_tls[@]}" --addr "127.0.0.1:$port" --clients 1,16,64 --seconds "$secs" --size 10240)
echo "$out"
kill -TERM $pid
wait $pid || true
# Settle: the flushed store holds bodies in blob files and the index in SSTs.
used=$(du -sb "$dir"/seg-* | awk '{s+=$1} END {print s}')
mail=$(echo "$out" | awk '/^TOTAL/ {split($2,a,"="); print a[2]}')
d1=$(echo "$out" | awk '/^clients=1 / {for(i=1;i<=NF;i++) if ($i ~ /^deliveries_per_s=/) {split($i,a,"="); print a[2]}}')
d64=$(echo "$out" | awk '/^clients=64 / {for(i=1;i<=NF;i++) if ($i ~ /^deliveries_per_s=/) {split($i,a,"="); print a[2]}}')
ratio=$(python3 -c "print(f'{($used-$base)/$mail:.3f}')")
echo "disk: ${used} bytes after the run (${base} empty) for ${mail} bytes of mail"
echo "RESULT deliveries_per_s_64=$d64 deliveries_per_s_1=$d1 disk_bytes_per_mail_byte=$ratio"

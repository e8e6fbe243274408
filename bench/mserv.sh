#!/usr/bin/env bash
# The member index under load: three mserv replicas on loopback, then, through the mserv client,
# lookups per second from one replica without cache (many callers pipelining on a few
# connections), the same with the client's cache, placement creations per second (each one a
# replicated, fsynced Raft write), and the time from kill -9 of the leader to the first write
# accepted by the new one.
#
#   bench/mserv.sh [SECONDS_PER_RUN] [USERS]
#
# Last line: RESULT lookups_per_s=<n> cached_lookups_per_s=<n> creates_per_s=<n> failover_ms=<n>
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
users="${2:-100000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/megamail/target}"
cargo build --release --quiet --workspace --bins
bin="$CARGO_TARGET_DIR/release"

dir="$(mktemp -d)"
. bench/internal-tls.sh
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
ports=()
for i in 1 2 3; do ports+=("$(free_port)"); done
peers=""
for i in 1 2 3; do
    peers+="[[peers]]
id = $i
addr = \"127.0.0.1:${ports[$((i-1))]}\"
"
done
addrs=""
pidlist=""
for i in 1 2 3; do
    port="${ports[$((i-1))]}"
    cat > "$dir/mserv-$i.toml" <<CFG
id = $i
listen = "127.0.0.1:$port"
data-dir = "$dir/mserv-$i"
$peers
[log]
level = "warn"
CFG
    tls_section mserv "mserv-$i" >> "$dir/mserv-$i.toml"
    "$bin/mserv" --config "$dir/mserv-$i.toml" >"$dir/mserv-$i.log" 2>&1 &
    pids+=($!)
    # Not a job of this shell: the kills below report nothing.
    disown
    addrs+="${addrs:+,}127.0.0.1:$port"
    pidlist+="${pidlist:+,}$i=$!"
done
for port in "${ports[@]}"; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

# shellcheck disable=SC2046 # the arguments are words
"$bin/mserv-bench" $(tls_client_args) --addrs "$addrs" --pids "$pidlist" --seconds "$secs" --users "$users"

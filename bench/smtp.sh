#!/usr/bin/env bash
# SMTP ingress under load: one mserv replica, two ustores (two segments each) and smtp-in on
# loopback, 100 users, then Postfix's smtp-source sending 5000 messages of 10 KiB with 20 SMTP
# sessions at a time (one connection per message), spread over the users. Reports messages
# accepted per second of wall clock, the number stored (read back from the stores) and the p99
# of smtp-in's end-of-data-to-reply latency (`smtp_data_seconds`, a bucket's upper bound).
#
#   bench/smtp.sh
#
# Last line: RESULT smtp_msgs_per_s=<n> stored=<n> p99_ms=<n>
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/megamail/target}"
users=100
per_user=50
size=10240
parallel=20

smtp_source="$(command -v smtp-source || echo /usr/sbin/smtp-source)"
if [ ! -x "$smtp_source" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null
    smtp_source="$(command -v smtp-source || echo /usr/sbin/smtp-source)"
fi

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
wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}
start() { # name, then the command
    local name="$1"
    shift
    "$@" >"$dir/$name.log" 2>&1 &
    pids+=($!)
    # Not a job of this shell: the kills in cleanup report nothing.
    disown
}

# The member index: one replica.
mport=$(free_port)
cat >"$dir/mserv.toml" <<CFG
id = 1
listen = "127.0.0.1:$mport"
data-dir = "$dir/mserv"
[[peers]]
id = 1
addr = "127.0.0.1:$mport"
[log]
level = "warn"
CFG
tls_section mserv mserv-1 >>"$dir/mserv.toml"
start mserv "$bin/mserv" --config "$dir/mserv.toml"

# Two stores, two segments each.
stores=()
for s in 1 2; do
    port=$(free_port)
    cat >"$dir/store-$s.toml" <<CFG
name = "store-$s"
listen = "127.0.0.1:$port"
[[segments]]
id = 0
path = "$dir/store-$s/seg-0"
[[segments]]
id = 1
path = "$dir/store-$s/seg-1"
[log]
level = "warn"
CFG
    tls_section ustore "store-$s" >>"$dir/store-$s.toml"
    session_keys_section >>"$dir/store-$s.toml"
    start "store-$s" "$bin/ustore" --config "$dir/store-$s.toml"
    stores+=(--store "store-$s=127.0.0.1:$port")
    wait_port "$port"
done
wait_port "$mport"

# Register the stores (retried until the replica has elected itself), then the users.
# shellcheck disable=SC2046 # the arguments are words
setup=("$bin/hcu-setup" $(tls_client_args) --mserv "127.0.0.1:$mport" --domain megamail.test --prefix u)
for i in $(seq 60); do
    "${setup[@]}" "${stores[@]}" 2>"$dir/setup.err" && break
    [ "$i" -lt 60 ] || { cat "$dir/setup.err" >&2; exit 1; }
    sleep 0.5
done
"${setup[@]}" --users "$users"

# smtp-in.
sport=$(free_port)
aport=$(free_port)
cat >"$dir/smtp-in.toml" <<CFG
hostname = "mx.megamail.test"
listen = "127.0.0.1:$sport"
domains = ["megamail.test"]
mserv = ["127.0.0.1:$mport"]
max-message-bytes = 10485760
max-recipients = 100
max-line-bytes = 4096
command-timeout-secs = 300
data-timeout-secs = 300
max-sessions = 2000
max-sessions-per-client = 1000
deliver-timeout-secs = 10
[admin]
listen = "127.0.0.1:$aport"
[log]
level = "warn"
CFG
tls_section smtp-in smtp-in >>"$dir/smtp-in.toml"
start smtp-in "$bin/smtp-in" --config "$dir/smtp-in.toml"
for i in $(seq 300); do
    curl -sf "http://127.0.0.1:$aport/healthz" >/dev/null && break
    [ "$i" -lt 300 ] || { echo "smtp-in not healthy:" >&2; tail "$dir/smtp-in.log" >&2; exit 1; }
    sleep 0.1
done

# The load: 100 runs of 50 messages, 20 at a time.
t0=$(date +%s.%N)
status=0
seq 0 $((users - 1)) | xargs -P "$parallel" -I{} \
    "$smtp_source" -s 1 -m "$per_user" -l "$size" -f bench@remote.test \
    -t "u{}@megamail.test" "127.0.0.1:$sport" || status=$?
t1=$(date +%s.%N)
[ "$status" -eq 0 ] || echo "smtp-source reported errors (exit $status)" >&2

curl -sf "http://127.0.0.1:$aport/metrics" >"$dir/metrics.txt"
stored=$("${setup[@]}" --users "$users" --count)
read -r rate p99 < <(python3 - "$dir/metrics.txt" "$t0" "$t1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
t0, t1 = float(sys.argv[2]), float(sys.argv[3])
def sample(name):
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
accepted = sample('smtp_messages_total{result="accepted"}')
buckets = [(float(le), float(n)) for le, n in
           re.findall(r'^smtp_data_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)]
total = sample("smtp_data_seconds_count")
p99 = "nan"
for le, n in sorted(buckets):
    if total > 0 and n >= 0.99 * total:
        p99 = "inf" if le == float("inf") else "%g" % (le * 1000)
        break
print("%.0f %s" % (accepted / (t1 - t0), p99))
PY
)
accepted=$(awk '/^smtp_messages_total\{result="accepted"\}/ {print $2}' "$dir/metrics.txt")
deferred=$(awk '/^smtp_messages_total\{result="deferred"\}/ {print $2}' "$dir/metrics.txt")
expected=$((users * per_user))
echo "sent $expected messages of $size bytes in $(python3 -c "print(f'{$t1-$t0:.2f}')") s:" \
    "accepted=$accepted deferred=$deferred stored=$stored"
[ "$stored" -eq "$expected" ] || echo "WARNING: $stored of $expected messages stored" >&2

for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
echo "RESULT smtp_msgs_per_s=$rate stored=$stored p99_ms=$p99"

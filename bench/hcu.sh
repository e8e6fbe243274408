# Sourced by the benchmarks that run a whole HCU, from the repository root: builds the release
# binaries ($bin), makes a temporary directory ($dir, removed on exit with the HCU stopped), and
# offers
#
#   hcu_layout OFFSET        write $dir/layout.toml: deploy/local.toml with every port moved up
#                            by OFFSET, so a running `./dev up` and other benchmarks are not hit
#                            (INTERNAL_TLS=off: internal connections in plaintext)
#   hcu_start                start `mailctl up` on it in the background ($up_pid, log $dir/up.log)
#   hcu_wait SECS CMD...     poll CMD (its output in $dir/ready.out) until it succeeds; fail if
#                            `mailctl up` exits or SECS pass
#   hcu_up OFFSET            all three, ready when a probe passes
#   hcu_stop                 SIGTERM to `mailctl up` (its children drain) and wait for it
#
# A script that keeps something from $dir sets its own EXIT trap calling hcu_stop.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/megamail/target}"
cargo build --release --quiet --workspace --bins
bin="$CARGO_TARGET_DIR/release"

dir="$(mktemp -d)"
up_pid=""

hcu_stop() {
    if [ -n "$up_pid" ]; then
        kill -TERM "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
        up_pid=""
    fi
}
hcu_cleanup() {
    hcu_stop
    rm -rf "$dir"
}
trap hcu_cleanup EXIT
trap 'exit 130' INT TERM

hcu_layout() {
    python3 - "$dir/layout.toml" "$1" <<'PY'
import os, re, sys
text = open("deploy/local.toml").read()
offset = int(sys.argv[2])
text = re.sub(r'"127\.0\.0\.1:(\d+)"', lambda m: '"127.0.0.1:%d"' % (int(m.group(1)) + offset), text)
if os.environ.get("INTERNAL_TLS", "on") == "off":
    # Before the first table: a top-level key of the layout.
    text = re.sub(r'^\[', 'internal-plaintext = true\n\n[', text, count=1, flags=re.M)
open(sys.argv[1], "w").write(text)
PY
}

hcu_start() {
    "$bin/mailctl" --data "$dir/data" up --config "$dir/layout.toml" >"$dir/up.log" 2>&1 &
    up_pid=$!
}

hcu_wait() {
    local secs="$1" start
    shift
    start=$(date +%s)
    until [ -f "$dir/data/endpoints.json" ] && "$@" >"$dir/ready.out" 2>/dev/null; do
        if ! kill -0 "$up_pid" 2>/dev/null; then
            cat "$dir/up.log" >&2
            echo "mailctl up exited" >&2
            exit 1
        fi
        if [ $(( $(date +%s) - start )) -gt "$secs" ]; then
            echo "the HCU was not ready within $secs s" >&2
            exit 1
        fi
        sleep 0.05
    done
}

hcu_up() {
    local start
    start=$(date +%s)
    hcu_layout "$1"
    hcu_start
    hcu_wait 180 "$bin/mailctl" --data "$dir/data" --json probe
    echo "HCU up after $(( $(date +%s) - start )) s"
}

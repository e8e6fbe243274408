#!/usr/bin/env bash
# The hostile-input sweep: every decoder that reads outside bytes (XFS and index frames and
# records, whole SMTP sessions, login and API forms and JSON, session tokens and cookies, MIME,
# the HTML sanitizer) fed random and mutated inputs, release build. 100,000 inputs per target
# by default (1.1 million in all); any panic is printed with its input in hex and fails the run.
#
#   bench/fuzz.sh [inputs-per-target] [seed]
#
# Last line: RESULT inputs=<total> panics=<n>
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/megamail/target}"
# No debug info: the sweep reports failing inputs, not backtraces, and the build is far smaller.
export CARGO_PROFILE_RELEASE_DEBUG=0
per_target="${1:-100000}"
seed="${2:-$(date +%s)}"

cargo build --release --quiet -p fuzz
echo "seed=$seed inputs_per_target=$per_target"
SECONDS=0
status=0
out="$("$CARGO_TARGET_DIR/release/fuzz" --iterations "$per_target" --seed "$seed")" || status=$?
grep -v '^RESULT' <<<"$out" || true
echo "seconds=$SECONDS"
grep '^RESULT' <<<"$out"
exit "$status"

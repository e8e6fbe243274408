#!/usr/bin/env bash
# What mutual TLS between the roles costs: bench/ustore.sh's load (durable deliveries into one
# store, 64 clients) and bench/webmail.sh's load (Inbox pages through the front doors, which call
# the index and the stores) each run with internal TLS on and with it off (INTERNAL_TLS=off:
# plaintext, every caller trusted), alternating, in the same run. Connections are pooled, so
# handshakes are rare; what remains is the record layer's encryption.
#
#   bench/tls.sh            (SECS per ustore run, default 10; webmail.sh's variables apply)
#
# Last line: RESULT ustore_tls_ratio=<on/off> webmail_tls_ratio=<on/off>
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${SECS:-10}"
result() { grep '^RESULT' | tail -1; }
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }

for mode in on off; do
    out=$(INTERNAL_TLS=$mode bench/ustore.sh "$secs" | result)
    echo "ustore internal-tls=$mode: $out"
    declare "ustore_$mode=$(echo "$out" | field deliveries_per_s_64)"
done
for mode in on off; do
    out=$(INTERNAL_TLS=$mode bench/webmail.sh | result)
    echo "webmail internal-tls=$mode: $out"
    declare "webmail_$mode=$(echo "$out" | field inbox_pages_per_s)"
done
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
echo "RESULT ustore_tls_ratio=$(ratio "$ustore_on" "$ustore_off") webmail_tls_ratio=$(ratio "$webmail_on" "$webmail_off")"

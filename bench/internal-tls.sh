# Sourced by the benchmarks that write role configs by hand (after $bin and $dir are set):
#
#   tls_section ROLE NAME    print the process's [internal-tls] section: a certificate from the
#                            authority in $dir/certs (made on first use), or plaintext when
#                            INTERNAL_TLS=off (to measure what TLS costs: bench/tls.sh)
#   tls_client_args          the arguments that make a bench client call as the operator `bench`
#   session_keys_section     a store's [[session-keys]]: the example key of deploy/ (the
#                            benchmarks' clients call as operators and carry no sessions)
tls_section() {
    if [ "${INTERNAL_TLS:-on}" = off ]; then
        printf '\n[internal-tls]\nname = "%s"\nplaintext = true\n' "$2"
    else
        printf '\n'
        "$bin/mailctl" --data "$dir" certs issue --role "$1" --name "$2"
    fi
}
tls_client_args() {
    if [ "${INTERNAL_TLS:-on}" != off ]; then
        "$bin/mailctl" --data "$dir" certs issue --role operator --name bench >/dev/null
        echo "--certs $dir/certs"
    fi
}
session_keys_section() {
    printf '\n[[session-keys]]\nid = "k1"\npublic-key = "93e0c89fa2bb5035775aeed22aa1d68a270edff99899704682cbd77aa00b1272"\n'
}

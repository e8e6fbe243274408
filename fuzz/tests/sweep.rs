//! A short sweep of every target, so an ordinary test run catches a decoder that panics on
//! hostile input; `bench/fuzz.sh` runs the long one.

#[test]
fn every_decoder_survives_a_short_sweep() {
    let per_target = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let mut found = Vec::new();
    for t in fuzz::all() {
        let r = fuzz::sweep(&t, per_target, 20_260_101);
        assert_eq!(r.inputs, per_target);
        for f in r.failures.iter().take(3) {
            found.push(format!(
                "{}: {}\n  input={}",
                t.name,
                f.message,
                hex::encode(&f.input)
            ));
        }
    }
    assert!(found.is_empty(), "panics:\n{}", found.join("\n"));
}

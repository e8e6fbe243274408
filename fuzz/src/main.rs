//! `fuzz --iterations N --seed S [--target NAME]`: sweep every target (or one) with N inputs
//! each, print `target=<name> inputs=<n> panics=<k>` per target and each panicking input in hex,
//! then `RESULT inputs=<total> panics=<total>`; exit non-zero on any panic.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: fuzz [--iterations N] [--seed S] [--target NAME] [--list]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut iterations: u64 = 10_000;
    let mut seed: u64 = 1;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = match a.as_str() {
            "--list" => {
                for t in fuzz::all() {
                    println!("{}", t.name);
                }
                return ExitCode::SUCCESS;
            }
            "--iterations" | "--seed" | "--target" => match args.next() {
                Some(v) => v,
                None => return usage(),
            },
            _ => return usage(),
        };
        match a.as_str() {
            "--iterations" => match value.parse() {
                Ok(n) => iterations = n,
                Err(_) => return usage(),
            },
            "--seed" => match value.parse() {
                Ok(n) => seed = n,
                Err(_) => return usage(),
            },
            _ => only = Some(value),
        }
    }
    let targets: Vec<_> = fuzz::all()
        .into_iter()
        .filter(|t| only.as_deref().is_none_or(|o| o == t.name))
        .collect();
    if targets.is_empty() {
        eprintln!("no target named {}", only.unwrap_or_default());
        return usage();
    }
    let (mut inputs, mut panics) = (0u64, 0usize);
    for t in &targets {
        let started = std::time::Instant::now();
        let r = fuzz::sweep(t, iterations, seed);
        println!(
            "target={} inputs={} panics={} seconds={:.1}",
            t.name,
            r.inputs,
            r.failures.len(),
            started.elapsed().as_secs_f64()
        );
        for f in r.failures.iter().take(10) {
            println!(
                "  panic in {}: {}\n    input={}",
                t.name,
                f.message,
                hex::encode(&f.input)
            );
        }
        inputs += r.inputs;
        panics += r.failures.len();
    }
    println!("RESULT inputs={inputs} panics={panics}");
    if panics == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! The `smtp-in` binary: parses arguments, loads the config, and runs the SMTP ingress.

fn main() -> std::process::ExitCode {
    runtime::cli::main("smtp-in", smtp_in::run)
}

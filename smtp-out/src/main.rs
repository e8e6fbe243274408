//! The `smtp-out` binary: parses arguments, loads the config, and runs an outbound worker.

fn main() -> std::process::ExitCode {
    runtime::cli::main("smtp-out", smtp_out::run)
}

//! The `ustore` binary: parses arguments, loads the config, and runs the store.

fn main() -> std::process::ExitCode {
    runtime::cli::main("ustore", ustore::run)
}

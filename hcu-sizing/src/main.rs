//! The `hcu-sizing` binary.

fn main() -> std::process::ExitCode {
    hcu_sizing::cli::main()
}

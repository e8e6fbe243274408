//! The `mailctl` binary.

fn main() -> std::process::ExitCode {
    mailctl::main()
}

//! The `mserv` binary: one replica of the member index.

fn main() -> std::process::ExitCode {
    runtime::cli::main("mserv", mserv::run)
}

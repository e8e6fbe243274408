//! The `loadgen` binary: see the library.

fn main() -> std::process::ExitCode {
    loadgen::main()
}

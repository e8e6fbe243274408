//! The `login` binary: parses arguments, loads the config, and runs the sign-in server.

fn main() -> std::process::ExitCode {
    runtime::cli::main("login", login::run)
}

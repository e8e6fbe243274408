//! The `frontdoor` binary: parses arguments, loads the config, and serves webmail and the API.

fn main() -> std::process::ExitCode {
    runtime::cli::main("frontdoor", frontdoor::run)
}

//! The `certs` binary: parses the command line and hands it to the library.

fn main() -> std::process::ExitCode {
    certs::cli::main_from(std::env::args_os())
}

//! The `agency-client` binary: parses the command line and hands it to the library.

fn main() -> std::process::ExitCode {
    agency_client::exit::main_from(std::env::args_os())
}

//! The `certs` binary: parses the command line and hands it to the library.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    certs::cli::main_with(certs::cli::Cli::parse())
}

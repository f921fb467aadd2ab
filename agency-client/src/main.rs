//! The `agency-client` binary: parses the command line and hands it to the library.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    agency_client::cli::main_with(agency_client::cli::Cli::parse())
}

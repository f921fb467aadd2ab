//! The `broker` binary: parses the command line and hands it to the library.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    broker::cli::main_with(broker::cli::Cli::parse())
}

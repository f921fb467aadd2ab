//! The `broker` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // One crypto provider for the whole process: ring (see DEPENDENCIES in SECURITY.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = broker::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(broker::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

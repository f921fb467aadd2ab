//! `under-test broker|agency-client|certs ARGS…`: the three tools' command
//! lines, exactly as their own binaries run them, for tests that need real
//! child processes.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        eprintln!("usage: under-test broker|agency-client|certs ARGS...");
        return ExitCode::FAILURE;
    }
    let tool = args.remove(1);
    match tool.as_str() {
        "broker" => broker::cli::main_with(broker::cli::Cli::parse_from(args)),
        "agency-client" => agency_client::exit::main_from(args),
        "certs" => certs::cli::main_with(certs::cli::Cli::parse_from(args)),
        other => {
            eprintln!("unknown tool {other:?}");
            ExitCode::FAILURE
        }
    }
}

//! `under-test broker|agency-client|certs ARGS…`: the three tools' command
//! lines, exactly as their own binaries run them, for tests that need real
//! child processes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() < 2 {
        eprintln!("usage: under-test broker|agency-client|certs ARGS...");
        return ExitCode::FAILURE;
    }
    let tool = args.remove(1);
    match tool.to_str().unwrap_or_default() {
        "broker" => broker::cli::main_from(args),
        "agency-client" => agency_client::exit::main_from(args),
        "certs" => certs::cli::main_from(args),
        other => {
            eprintln!("unknown tool {other:?}");
            ExitCode::FAILURE
        }
    }
}

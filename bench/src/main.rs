//! The `loadgen` binary: parses the command line and hands it to the library.

fn main() -> std::process::ExitCode {
    loadgen::cli::main()
}

//! The `loadgen` binary: parses the command line and hands it to the library.

/// The broker's allocator (see broker/src/main.rs), so that measurements match.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    loadgen::cli::main()
}

//! The `broker` binary: parses the command line and hands it to the library.

/// mimalloc: sled allocates and frees node copies at a high rate; glibc's
/// allocator spent a tenth of the committer's time in malloc and let the
/// resident set fragment under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    broker::cli::main_from(std::env::args_os())
}

//! Shell completions, man pages and usage errors for a command line: each of
//! the three tools (`certs`, `broker`, `agency-client`) prints its own the
//! same way.
//!
//! Here because every tool depends on this crate and on no other tool: a
//! tool that printed another's would have to depend on it (the broker must
//! not depend on `agency-client`; ARCHITECTURE.md).

use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Parses the command line (`args` includes the program name) as clap does,
/// except that a usage error under `--json` is one JSON object on standard
/// error (`{"exit_code": 2, "message": …}`, the shape of the tool's other
/// errors) instead of clap's text. `Err` holds the exit code: 0 after
/// `--help` or `--version`, 2 after a usage error.
pub fn parse_args<C: clap::Parser>(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<C, std::process::ExitCode> {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let e = match C::try_parse_from(&args) {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    let code = e.exit_code();
    if e.use_stderr() && args.iter().any(|a| a == "--json") {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
        eprintln!("{}", serde_json::json!({"exit_code": code, "message": first}));
    } else {
        let _ = e.print();
    }
    Err(std::process::ExitCode::from(u8::try_from(code).unwrap_or(2)))
}

/// Writes the completion script of `cmd` (named after the command) for `shell`.
pub fn completions(shell: Shell, mut cmd: clap::Command, out: &mut dyn std::io::Write) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes the man page of `cmd` as `NAME.1` in `dir` (created if missing,
/// each page crash-safely), and one page per subcommand as
/// `NAME-SUBCOMMAND.1`, the pages the top page refers to; returns their
/// paths, the top page first.
pub fn write_man_page(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    crate::durable_file::create_dir_all(dir)?;
    let mut cmd = cmd;
    cmd.build();
    let mut pages = vec![render(&cmd, cmd.get_name(), dir)?];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{}-{}", cmd.get_name(), sub.get_name());
        pages.push(render(&sub.clone().bin_name(name.clone()), &name, dir)?);
    }
    Ok(pages)
}

fn render(cmd: &clap::Command, name: &str, dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).title(name.to_owned()).render(&mut page)?;
    crate::durable_file::write(&path, page)?;
    Ok(path)
}

//! The `loadgen` command line: `run`, `streams`, `acks` and `overlap` measure; the hidden
//! `serve-broker` and `serve-ceiling` are the servers under test, which
//! `run` and `streams` start as child processes of this same executable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::acks::{AcksArgs, acks};
use crate::overlap::{OverlapArgs, overlap};
use crate::run::{RunArgs, run};
use crate::streams::{StreamsArgs, streams};

/// Load generator and resource meter for the referral broker. Every run makes its own
/// temporary development federation and starts the server under test itself.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Throughput, latency, CPU and memory of the ceiling and/or the broker under submits.
    Run(RunArgs),
    /// Memory of many idle Subscribe streams on the broker.
    Streams(StreamsArgs),
    /// The cost of acknowledging one referral by id at several queue lengths.
    Acks(AcksArgs),
    /// Time and bytes of the blind overlap check through the broker, beside its core.
    Overlap(OverlapArgs),
    /// The real broker (`broker serve --config FILE`); started by `run` and `streams`.
    #[command(hide = true)]
    ServeBroker {
        #[arg(long)]
        config: PathBuf,
    },
    /// The ceiling server; started by `run`.
    #[command(hide = true)]
    ServeCeiling {
        #[arg(long)]
        config: PathBuf,
    },
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = run(args).await?;
    if json {
        print_json(&report)
    } else {
        print!("{}", report.to_table());
        Ok(())
    }
}

async fn streams_command(args: StreamsArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = streams(args).await?;
    if json {
        print_json(&report)
    } else {
        print!("{}", report.to_table());
        Ok(())
    }
}

async fn acks_command(args: AcksArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = acks(args).await?;
    if json {
        print_json(&report)
    } else {
        print!("{}", report.to_table());
        Ok(())
    }
}

async fn overlap_command(args: OverlapArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = overlap(args).await?;
    if json {
        print_json(&report)
    } else {
        print!("{}", report.to_table());
        Ok(())
    }
}

/// Runs a measuring command on a fresh runtime with the ring TLS provider.
fn measure(command: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    agency_client::cli::run_program(command, |()| ExitCode::SUCCESS)
}

/// Parses the process's arguments and carries them out.
pub fn main() -> ExitCode {
    main_with(Cli::parse())
}

/// Carries out a parsed command line and turns the outcome into an exit code.
pub fn main_with(cli: Cli) -> ExitCode {
    match cli.command {
        Command::ServeBroker { config } => {
            let os = |s: &str| std::ffi::OsString::from(s);
            broker::cli::main_with(broker::cli::Cli::parse_from([
                os("broker"),
                os("serve"),
                os("--config"),
                config.into_os_string(),
            ]))
        }
        Command::ServeCeiling { config } => crate::ceiling::main(&config),
        Command::Run(args) => measure(run_command(args)),
        Command::Streams(args) => measure(streams_command(args)),
        Command::Acks(args) => measure(acks_command(args)),
        Command::Overlap(args) => measure(overlap_command(args)),
    }
}

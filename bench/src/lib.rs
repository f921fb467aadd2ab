//! `loadgen`: the referral broker's load generator and resource meter.
//!
//! Every run orchestrates itself on a fresh temporary development
//! federation: it writes a broker configuration with limits high enough not
//! to interfere, starts the system under test as a child process of itself
//! (so that it can read that process's CPU time and peak RSS from `/proc`),
//! drives it over real mutual TLS with real sealed and signed envelopes, and
//! reports throughput, latency percentiles (HDR histograms), CPU per submit,
//! memory and start-up time as a table or as JSON.
//!
//! Two systems can be measured:
//! - the **broker** (`loadgen serve-broker`, the real `broker serve`), and
//! - the **ceiling** (`loadgen serve-ceiling`): the same TLS listener and
//!   gRPC stack answering every `Submit` with one precomputed receipt,
//!   without verifying or storing anything, i.e. what gRPC and TLS cost alone.
//!
//! # Layout
//! - [`cli`]: the command line (`run`, `streams`, and the hidden server subcommands).
//! - [`setup`]: the temporary federation, its broker configuration, and machine facts.
//! - [`workload`]: the referral notice grown to a size, sealing, and re-signed fill envelopes.
//! - [`server`]: the child process under test: spawn, readiness, CPU, memory, stop.
//! - [`procfs`]: reading CPU time and memory of a process from `/proc`.
//! - [`ceiling`]: the bare gRPC + TLS server that is the ceiling.
//! - [`load`]: the submitters, subscribers and receipt watcher, and their histograms.
//! - [`metrics`]: the broker's commit figures, from its admin endpoint.
//! - [`fill`]: pre-populating a data directory with queued messages through the real committer.
//! - [`run`]: the `run` command: one or both targets, end to end.
//! - [`streams`]: the `streams` command: many idle subscriptions and what they cost.
//! - [`acks`]: the `acks` command: acknowledging one referral by id at several queue lengths.
//! - [`overlap`]: the `overlap` command: the blind overlap check through the broker beside its core.
//! - [`report`]: the figures, as a human-readable table or as JSON.

pub mod acks;
pub mod ceiling;
pub mod cli;
pub mod fill;
pub mod load;
pub mod metrics;
pub mod overlap;
pub mod process;
pub mod procfs;
pub mod redis;
pub mod report;
pub mod run;
pub mod server;
pub mod setup;
pub mod streams;
pub mod workload;

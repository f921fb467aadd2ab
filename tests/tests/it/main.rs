//! End-to-end scenarios over a real broker with real mTLS (see the harness
//! in `tests/src/lib.rs`). One module per concern:

/// The audit log verifies, proves, and catches tampering.
mod audit;
/// The command-line tools as people use them.
mod cli;
/// SIGKILL at random moments loses nothing.
mod crash;
/// Deadlines, escalation, expiry, purge on a moved clock.
mod deadlines;
/// Fan-out, first ack wins, redelivery, stuck subscribers.
mod delivery;
/// The demo.
mod demo;
/// Referrals both ways, receipts, idempotent resubmission.
mod exchange;
/// Full disks and damaged data directories.
mod faults;
/// Hostile clients and an outside TLS check.
mod hostile;
/// Health, reflection, metrics, status, backup, rotation.
mod operations;
/// A power loss at random moments loses nothing; the broker starts by itself.
mod power_loss;
/// No personal data in logs or on disk.
mod privacy;
/// Everything the broker refuses, with the exact status.
mod rejections;
/// Restarts lose nothing.
mod restart;
/// Shared helpers.
mod support;
/// OPERATIONS.md, executed.
mod walkthrough;

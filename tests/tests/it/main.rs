//! End-to-end scenarios over a real broker with real mTLS (see the harness
//! in `tests/src/lib.rs`). One module per concern:

/// The optional note with an acknowledgement: sealed to the sender, never logged, purged, refused when bad.
mod ack_note;
/// ARCHITECTURE.md's rules on what each crate and module may name.
mod agency_keys;
mod architecture;
/// The audit log verifies, proves, and catches tampering.
mod audit;
/// The auditor's command line: accept-restore after a real restore, replay filters, saved proofs, the report.
mod auditor_cli;
/// A refused certificate says whose, why, and exits with its own code.
mod certificate_refusals;
/// The command-line tools as people use them.
mod cli;
/// The on-call web console: attacks on the page, and a referral from the police to the page and back.
mod console;
/// The on-call web console in headless Chromium over WebDriver: live list, keyboard, arming (tone, notification without personal data), accessibility (axe-core), screenshots.
mod console_browser;
/// SIGKILL at random moments loses nothing.
mod crash;
/// Deadlines, escalation, expiry, purge on a moved clock.
mod deadlines;
/// Fan-out, first ack wins, redelivery, stuck subscribers.
mod delivery;
/// The demo.
mod demo;
/// A stale or rolled-back directory is refused by the broker and clients.
mod directory_freshness;
/// Reads that answer a client see only durable state.
mod durable_reads;
/// Referrals both ways, receipts, idempotent resubmission.
mod exchange;
/// PostgreSQL with two synchronous standbys: the primary and a broker node killed under load.
mod failover;
/// Full disks and damaged data directories.
mod faults;
/// Fetch: one message by id, authorized like Subscribe, recorded as a delivery.
mod fetch;
/// A broker that forges receipts and proofs: the client believes none of it.
mod forging_server;
/// Hostile clients and an outside TLS check.
mod hostile;
/// HTTP/2 limits against a raw HTTP/2 client.
mod http2_limits;
/// Keys judged at the broker's receive time; signed times within the window.
mod key_validity;
/// Refusals cannot grow the audit log without bound.
mod log_growth;
/// Health, reflection, metrics, status, backup, rotation.
mod operations;
/// The admin endpoint's token, private backups, key file modes.
mod operator;
/// The blind overlap check through the broker: results, privacy, refusals.
mod overlap;
/// The PostgreSQL engine: the exchange, restarts, TLS, schema versions, a killed database.
mod postgres;
/// A power loss at random moments loses nothing; the broker starts by itself.
mod power_loss;
/// No personal data in logs or on disk.
mod privacy;
/// Everything the broker refuses, with the exact status.
mod rejections;
/// A resend is the same envelope and gets the original receipt.
mod resend;
/// Restarts lose nothing.
mod restart;
/// SECURITY.md names only tests that exist.
mod security_doc;
/// Ack labels that would put personal identity numbers in the log.
mod staff_labels;
/// SubmitStream: in-order results, refusals inside them, the credit window, bulk send.
mod submit_stream;
/// Shared helpers.
mod support;
/// Escapes and overrides never reach a terminal; a closed pipe ends quietly.
mod terminal;
/// Trust judged continuously: revocation, expiry, directory removal.
mod trust_live;
/// OPERATIONS.md, executed.
mod walkthrough;

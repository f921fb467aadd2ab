//! The referral broker: mutually authenticated, durable store-and-forward of
//! signed, end-to-end-encrypted referrals between police and social
//! services, with alerts, signed acknowledgements, receipts and an audit
//! transparency log.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated into [`config::Config`].
//! - [`tls`]: the mTLS listener (rustls, CRLs, reload) and [`identity`]: certificate to principal.
//! - [`authz`]: the role x RPC matrix and routing policy, in one place.
//! - [`service`]: the gRPC handlers (`ReferralBroker`, `Auditor`) and bounded streams.
//! - [`ledger`]: the message lifecycle as pure transitions (reads in, writes, effects and answers out).
//! - [`commit`]: the single writer: runs each batch of jobs and due deadlines through the ledger,
//!   commits it durably once, then publishes its effects and answers.
//! - [`store`]: the storage trait and [`store::tables`], the one place each record kind is encoded,
//!   decoded and read (durable reads through a watermark); [`store::sled_store`] is the only sled code.
//! - [`hub`]: wakes subscribers after commits; no payloads, no queues.
//! - [`tasks`]: tree head signer, reloader.
//! - [`audit`]: the audit log type (append, restore, checkpoint), the store-backed Merkle node
//!   source, tree heads.
//! - [`refusals`]: how a refusal is answered, counted and logged (one by one when signed,
//!   else summarised per interval).
//! - [`error`]: every broker error and its single mapping to a gRPC status.
//! - [`health`], [`admin`], [`metrics`], [`status`], [`backup`]: what operators use: the gRPC
//!   health service, the admin HTTP endpoint (metrics, health, status, backup), restore.
//! - [`server`]: wiring and orderly shutdown; [`cli`], [`dev`] and `demo` back the binary
//!   (`demo`, behind the default `demo` feature, is the only module that uses `agency-client`).
//!
//! Architecture invariants: the broker never holds an agency private key
//! and never sees a referral's plaintext; nothing is answered or delivered
//! before it is durable; only `store::sled_store` names sled.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod authz;
pub mod backup;
pub use audit::checkpoint;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commit;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(feature = "demo")]
mod demo_audit;
pub mod dev;
pub mod directory;
pub mod error;
pub mod health;
pub mod hub;
pub mod identity;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod refusals;
pub mod server;
pub mod service;
pub mod state;
pub mod status;
pub mod store;
pub mod tasks;
pub mod tls;
pub mod trust;

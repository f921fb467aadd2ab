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
//! - [`commit`]: the single writer: group commit of submits, acks, deliveries,
//!   deadlines, with their audit entries and receipts.
//! - [`store`]: the storage trait, key layout and records; [`store::sled_store`] is the only sled code.
//! - [`hub`]: wakes subscribers after commits; no payloads, no queues.
//! - [`tasks`]: deadline scheduler, tree head signer, reloader.
//! - [`audit`]: audit entries, the store-backed Merkle node source, tree heads.
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
pub mod checkpoint;
pub mod cli;
pub mod clock;
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

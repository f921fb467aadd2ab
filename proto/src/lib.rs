//! The referral broker's wire protocol: generated protobuf types, the domain
//! types they convert into, and the protocol's cryptography as pure functions.
//!
//! This crate does no I/O: no files, no sockets, no clocks, no logging. Callers
//! pass in bytes, keys and the current time; PROTOCOL.md specifies every byte
//! this crate signs, seals or hashes.
//!
//! # Layout
//! - [`pb`]: code generated from `proto/referral/v1/*.proto` (protox, no protoc).
//! - [`ids`]: validated identifiers: agencies, messages, keys, principals.
//! - [`canonical`]: the length-prefixed encoder every signature input is built with.
//! - [`keys`]: Ed25519 signing keys (ed25519-dalek), agency key bundles (Ed25519 + X25519 for HPKE),
//!   key ids and the text format key files use.
//! - [`envelope`]: the envelope header and envelope, their digests and wire conversions.
//! - [`seal`]: sealing a referral to a recipient and opening it again.
//! - [`notice`]: the referral notice inside the encryption and its validation rules.
//! - [`ack`]: the recipient's signed acknowledgement.
//! - [`directory`]: the federation directory, its signature and rollback protection.
//! - [`sigbatch`]: Ed25519 verification in batches (ed25519-dalek) with exactly the strict
//!   single-signature accept rule, and the check every directory signing key passes.
//! - [`receipt`]: receipts and tree heads signed with the broker's log key.
//! - [`merkle`]: RFC 9162 Merkle tree hashing and proof verification.
//! - [`audit`]: audit log entries: decoding and what an auditor checks about each.
//! - [`psi`]: the blind overlap check: RFC 9380 hash to ristretto255, identity number
//!   normalisation, and the two-party set intersection as pure functions.
//! - [`overlap`]: the overlap check through the broker: signed statements (propose,
//!   accept, finish) and sealed, signed chunks of blinded sets and answers.
//! - [`test_vectors`]: the fixed inputs and outputs PROTOCOL.md publishes.
//! - [`text`]: what every text field may hold: no controls, no bidirectional overrides.
//! - [`time`]: Unix-millisecond timestamps and their RFC 3339 form.

pub mod ack;
pub mod audit;
pub mod canonical;
pub mod directory;
pub mod envelope;
pub mod ids;
pub mod keys;
pub mod merkle;
pub mod notice;
pub mod overlap;
pub mod psi;
pub mod receipt;
pub mod seal;
pub mod sigbatch;
pub mod test_vectors;
pub mod text;
pub mod time;

/// Generated protobuf messages and gRPC stubs for package `referral.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("referral.v1");

    /// Encoded `FileDescriptorSet` of every `.proto` file, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("referral_descriptor");
}

/// Envelope protocol version described by PROTOCOL.md.
pub const PROTOCOL_VERSION: u32 = 1;

/// The `domain` of the `google.rpc.ErrorInfo` the broker puts in every
/// refusal's status details; its `reason` is the stable code of PROTOCOL.md's
/// error table.
pub const ERROR_DOMAIN: &str = "referral.v1";

/// Content type of a sealed `referral.v1.ReferralNotice`.
pub const NOTICE_CONTENT_TYPE: &str = "application/vnd.referral.notice+protobuf";

/// Schema version of `referral.v1.ReferralNotice`.
pub const NOTICE_CONTENT_VERSION: u32 = 1;

/// Largest encoded envelope the broker accepts, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_ring(ring::digest::digest(&ring::digest::SHA256, data))
    }

    pub(crate) fn from_ring(d: ring::digest::Digest) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Parses exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

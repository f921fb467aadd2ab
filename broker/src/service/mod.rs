//! The gRPC services: thin handlers that identify and authorize the caller,
//! validate the request into domain types, and hand state changes to the
//! committer. Long-lived streams are in [`streams`].

pub mod auditor;
pub mod referral;
pub mod streams;

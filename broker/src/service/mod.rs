//! The gRPC services: thin handlers that identify and authorize the caller,
//! validate the request into domain types, and hand state changes to the
//! committer. Long-lived streams are in [`streams`]; [`gate`] stands in
//! front of every service.

pub mod auditor;
pub mod gate;
pub mod overlap;
pub mod referral;
pub mod streams;

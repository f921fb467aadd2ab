//! Authorization, in one place: which role may call which RPC, and which
//! agency may send to which.

use referral_proto::directory::{AgencyKind, Directory};
use referral_proto::envelope::EnvelopeHeader;
use referral_proto::ids::{AgencyId, Principal, Role};

use crate::error::BrokerError;

/// Every RPC the broker serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    Submit,
    SubmitStream,
    Subscribe,
    Ack,
    Fetch,
    GetReceipts,
    WatchReceipts,
    GetDirectory,
    AuditTreeHead,
    AuditReplay,
    AuditInclusionProof,
    AuditConsistencyProof,
    AuditDirectory,
    OverlapPropose,
    OverlapAccept,
    OverlapSend,
    OverlapReceive,
    OverlapFinish,
    OverlapSessions,
}

impl Rpc {
    pub const ALL: [Rpc; 19] = [
        Rpc::Submit,
        Rpc::SubmitStream,
        Rpc::Subscribe,
        Rpc::Ack,
        Rpc::Fetch,
        Rpc::GetReceipts,
        Rpc::WatchReceipts,
        Rpc::GetDirectory,
        Rpc::AuditTreeHead,
        Rpc::AuditReplay,
        Rpc::AuditInclusionProof,
        Rpc::AuditConsistencyProof,
        Rpc::AuditDirectory,
        Rpc::OverlapPropose,
        Rpc::OverlapAccept,
        Rpc::OverlapSend,
        Rpc::OverlapReceive,
        Rpc::OverlapFinish,
        Rpc::OverlapSessions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::Submit => "Submit",
            Rpc::SubmitStream => "SubmitStream",
            Rpc::Subscribe => "Subscribe",
            Rpc::Ack => "Ack",
            Rpc::Fetch => "Fetch",
            Rpc::GetReceipts => "GetReceipts",
            Rpc::WatchReceipts => "WatchReceipts",
            Rpc::GetDirectory => "GetDirectory",
            Rpc::AuditTreeHead => "Auditor.GetTreeHead",
            Rpc::AuditReplay => "Auditor.Replay",
            Rpc::AuditInclusionProof => "Auditor.InclusionProof",
            Rpc::AuditConsistencyProof => "Auditor.ConsistencyProof",
            Rpc::AuditDirectory => "Auditor.GetDirectory",
            Rpc::OverlapPropose => "Overlap.Propose",
            Rpc::OverlapAccept => "Overlap.Accept",
            Rpc::OverlapSend => "Overlap.Send",
            Rpc::OverlapReceive => "Overlap.Receive",
            Rpc::OverlapFinish => "Overlap.Finish",
            Rpc::OverlapSessions => "Overlap.Sessions",
        }
    }

    fn is_audit(self) -> bool {
        matches!(
            self,
            Rpc::AuditTreeHead
                | Rpc::AuditReplay
                | Rpc::AuditInclusionProof
                | Rpc::AuditConsistencyProof
                | Rpc::AuditDirectory
        )
    }
}

/// The role x RPC matrix.
///
/// - `system`: submit as its own agency (one by one or on a stream), subscribe, fetch and ack for it, read its receipts, read the directory,
///   and run the blind overlap check (the `Overlap` service) for it: only an agency's system holds the set;
/// - `oncall`: subscribe, fetch and ack for its own agency, read the directory (to check signatures);
/// - `auditor`: the audit RPCs and nothing else.
pub fn allowed(role: Role, rpc: Rpc) -> bool {
    match role {
        Role::System => !rpc.is_audit(),
        // Fetch is authorized exactly like Subscribe: it is a delivery of one message.
        Role::Oncall => matches!(rpc, Rpc::Subscribe | Rpc::Fetch | Rpc::Ack | Rpc::GetDirectory),
        Role::Auditor => rpc.is_audit(),
    }
}

/// Refuses a call the principal's role may not make, and agency calls by a
/// principal whose agency is not in the directory.
pub fn check(principal: &Principal, rpc: Rpc, directory: &Directory) -> Result<(), BrokerError> {
    if !allowed(principal.role, rpc) {
        return Err(BrokerError::RoleNotAllowed { role: principal.role.as_str(), rpc: rpc.name() });
    }
    if principal.role != Role::Auditor && rpc != Rpc::GetDirectory && directory.agency(&principal.agency).is_none() {
        return Err(BrokerError::AgencyNotInDirectory { agency: principal.agency.clone(), action: "use the broker" });
    }
    Ok(())
}

/// Checks the envelope's routing: the sender is the caller's own agency, the
/// recipient exists, and the pair is of different kinds (police to
/// municipality or back) or explicitly allowed by the broker's policy.
pub fn check_route(
    principal: &Principal,
    header: &EnvelopeHeader,
    directory: &Directory,
    allow_same_kind: &[(AgencyId, AgencyId)],
) -> Result<(), BrokerError> {
    if header.sender != principal.agency {
        return Err(BrokerError::SenderMismatch {
            principal_agency: principal.agency.clone(),
            sender: header.sender.clone(),
        });
    }
    check_pair(&header.sender, &header.recipient, directory, allow_same_kind)
}

/// The routing policy for a pair: the sender is in the directory, the
/// recipient exists, and the two are of different kinds (police and
/// municipality) or explicitly allowed. Referrals and overlap sessions
/// follow the same rule: who may refer to whom may compare sets.
pub fn check_pair(
    from: &AgencyId,
    to: &AgencyId,
    directory: &Directory,
    allow_same_kind: &[(AgencyId, AgencyId)],
) -> Result<(), BrokerError> {
    let sender = directory
        .agency(from)
        .ok_or_else(|| BrokerError::AgencyNotInDirectory { agency: from.clone(), action: "send" })?;
    let recipient = directory.agency(to).ok_or_else(|| BrokerError::UnknownRecipient(to.clone()))?;
    let allowed_pair = allow_same_kind.iter().any(|(a, b)| (a == from && b == to) || (b == from && a == to));
    if sender.kind == recipient.kind && !allowed_pair {
        let kind = |k: AgencyKind| k.as_str();
        return Err(BrokerError::PolicyForbids {
            sender: sender.id.clone(),
            sender_kind: kind(sender.kind),
            recipient: recipient.id.clone(),
            recipient_kind: kind(recipient.kind),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full matrix, written out so that a change to it is a visible diff.
    #[test]
    fn role_rpc_matrix() {
        use Rpc::*;
        let expect = |role: Role, rpc: Rpc| -> bool {
            matches!(
                (role, rpc),
                (
                    Role::System,
                    Submit
                        | SubmitStream
                        | Subscribe
                        | Ack
                        | Fetch
                        | GetReceipts
                        | WatchReceipts
                        | GetDirectory
                        | OverlapPropose
                        | OverlapAccept
                        | OverlapSend
                        | OverlapReceive
                        | OverlapFinish
                        | OverlapSessions
                ) | (Role::Oncall, Subscribe | Ack | Fetch | GetDirectory)
                    | (
                        Role::Auditor,
                        AuditTreeHead | AuditReplay | AuditInclusionProof | AuditConsistencyProof | AuditDirectory
                    )
            )
        };
        let mut allowed_count = 0;
        for role in Role::ALL {
            for rpc in Rpc::ALL {
                assert_eq!(allowed(role, rpc), expect(role, rpc), "{role} x {}", rpc.name());
                allowed_count += usize::from(allowed(role, rpc));
            }
        }
        assert_eq!(allowed_count, 14 + 4 + 5);
        // Fetch hands out what Subscribe does, so exactly the same roles may call it.
        for role in Role::ALL {
            assert_eq!(allowed(role, Fetch), allowed(role, Subscribe), "{role}");
        }
        // A stream of submits is a batch of Submit calls: exactly the same roles.
        for role in Role::ALL {
            assert_eq!(allowed(role, SubmitStream), allowed(role, Submit), "{role}");
        }
    }
}

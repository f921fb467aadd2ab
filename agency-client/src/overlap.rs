//! The blind overlap check from an agency's side (PROTOCOL.md 13): propose
//! or accept a session, then run it through the broker: send this side's
//! blinded set sealed to the peer, answer the peer's set, match the peer's
//! answer, and report the transcript hash.
//!
//! The secret scalar lives only in this process, inside
//! [`referral_proto::psi::Party`], and is zeroized when it is dropped (after
//! answering); it is never written anywhere. A run that is interrupted
//! cannot be resumed: start a new session (the broker's log shows the
//! incomplete one). The result (this side's own matching subjects) is kept
//! in the profile's state folder, readable only by its owner, for
//! `overlap result`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use referral_proto::Digest;
use referral_proto::directory::Directory;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::LegalBasisKind;
use referral_proto::overlap::{self, Chunk, Kind, SignedStatement, Statement, Step};
use referral_proto::pb;
use referral_proto::pb::overlap_client::OverlapClient;
use referral_proto::psi::{self, Answer, BlindedSet, Party, PersonalIdentityNumber};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::{Client, ClientError, now};

/// How often a waiting side asks the broker for news.
const POLL: Duration = Duration::from_millis(150);

/// Which side of a session this agency is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Initiator,
    Responder,
}

/// The legal basis a side states for its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalBasis {
    pub kind: LegalBasisKind,
    /// The provision relied on, e.g. `OSL 10 kap. 18 c §`. No personal data:
    /// the broker and the audit log see it.
    pub citation: String,
}

/// One side's result: which of its own subjects the peer also holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlapResult {
    pub session: String,
    pub role: Role,
    pub peer: String,
    /// Distinct subjects this side brought.
    pub own_subjects: usize,
    /// Padded set sizes, as both sides signed them.
    pub own_size: u32,
    pub peer_size: u32,
    /// This side's own subjects (normalised 12-digit numbers) the peer holds, ascending.
    pub matches: Vec<String>,
    /// The transcript hash both sides reported (PROTOCOL.md 13.5), hex.
    pub transcript: String,
}

fn err(session: MessageId, message: impl Into<String>) -> ClientError {
    ClientError::Overlap { session, message: message.into() }
}

/// A session this side has proposed or accepted, holding its secret scalar
/// until it answers.
pub struct OverlapRun {
    session: MessageId,
    role: Role,
    peer: AgencyId,
    party: Party,
    set: BlindedSet,
    own_subjects: usize,
    own_size: u32,
    /// Known once the responder accepted.
    peer_size: Option<u32>,
}

impl std::fmt::Debug for OverlapRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlapRun")
            .field("session", &self.session)
            .field("role", &self.role)
            .field("peer", &self.peer)
            .field("own_size", &self.own_size)
            .finish_non_exhaustive()
    }
}

/// Reads a subjects file: one personal identity number per line, in any
/// form [`PersonalIdentityNumber::parse`] accepts; blank lines and lines
/// starting with `#` are skipped. A bad line is named by its number only
/// (its content is personal data).
pub fn read_subjects(text: &str) -> Result<Vec<PersonalIdentityNumber>, ClientError> {
    let today = now();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let pin = PersonalIdentityNumber::parse(t, today)
            .map_err(|e| ClientError::Invalid(format!("subjects line {}: {e}", n + 1)))?;
        out.push(pin);
    }
    Ok(out)
}

fn decode_statement(
    p: Option<pb::SignedOverlapStatement>,
    session: MessageId,
    what: &str,
) -> Result<SignedStatement, ClientError> {
    SignedStatement::try_from(p.ok_or_else(|| err(session, format!("the broker's answer lacks the {what}")))?)
        .map_err(|e| err(session, format!("the {what}: {e}")))
}

impl Client {
    /// The raw Overlap gRPC client on this connection.
    pub fn overlap_rpc(&self) -> OverlapClient<Channel> {
        OverlapClient::new(self.channel.clone()).max_decoding_message_size(1024 * 1024)
    }

    /// Signs a statement with this agency's current key.
    fn sign_statement(
        &self,
        step: Step,
        session: MessageId,
        (initiator, responder): (&AgencyId, &AgencyId),
        body: Body<'_>,
    ) -> Result<SignedStatement, ClientError> {
        let (set_size, basis, transcript_hash) = match body {
            Body::Input(n, basis) => (n, Some(basis), None),
            Body::Transcript(d) => (0, None, Some(d)),
        };
        self.with_bundle(|b| {
            Statement {
                step,
                session,
                initiator: initiator.clone(),
                responder: responder.clone(),
                signer: b.agency().clone(),
                signer_key_id: b.key_id(),
                signed_at: now(),
                set_size,
                legal_basis: basis.map(|l| l.kind),
                legal_citation: basis.map(|l| l.citation.clone()).unwrap_or_default(),
                transcript_hash,
            }
            .sign(b)
        })
    }

    /// The sessions this agency takes part in, newest first, as the broker
    /// records them.
    pub async fn overlap_sessions(&self) -> Result<Vec<pb::OverlapSession>, ClientError> {
        Ok(self.overlap_rpc().sessions(pb::OverlapSessionsRequest {}).await?.into_inner().sessions)
    }

    /// Proposes a session to `with`: blinds `subjects` under a fresh scalar
    /// and session id and states the padded size and legal basis. Run the
    /// returned session with [`OverlapRun::run`].
    pub async fn overlap_propose(
        &self,
        with: &AgencyId,
        subjects: &[PersonalIdentityNumber],
        basis: &LegalBasis,
    ) -> Result<OverlapRun, ClientError> {
        let dir = self.directory().await?;
        if dir.agency(with).is_none() {
            return Err(ClientError::UnknownAgency {
                agency: with.clone(),
                known: dir.agencies.keys().cloned().collect(),
            });
        }
        let me = self.principal().agency.clone();
        let session = MessageId::generate(now().0);
        let (party, set) = Party::start(session, subjects, &mut referral_proto::seal::getrandom_rng())
            .map_err(|e| err(session, e.to_string()))?;
        let own_size = set.len() as u32;
        let s = self.sign_statement(Step::Propose, session, (&me, with), Body::Input(own_size, basis))?;
        self.overlap_rpc().propose(pb::SignedOverlapStatement::from(&s)).await?;
        Ok(OverlapRun {
            session,
            role: Role::Initiator,
            peer: with.clone(),
            party,
            set,
            own_subjects: distinct(subjects),
            own_size,
            peer_size: None,
        })
    }

    /// Accepts the session `session` another agency proposed to this one,
    /// after checking the proposal's signature against the directory.
    pub async fn overlap_accept(
        &self,
        session: MessageId,
        subjects: &[PersonalIdentityNumber],
        basis: &LegalBasis,
    ) -> Result<OverlapRun, ClientError> {
        let dir = self.directory().await?;
        let view = self.overlap_view(session, Kind::Set, 0).await?.0;
        let proposal = decode_statement(view.proposal, session, "proposal")?;
        proposal.verify(&dir, proposal.statement.signed_at).map_err(|e| err(session, format!("the proposal: {e}")))?;
        let me = self.principal().agency.clone();
        let p = &proposal.statement;
        if p.responder != me {
            return Err(err(session, format!("the session was proposed to {}, not to this agency", p.responder)));
        }
        let (party, set) = Party::start(session, subjects, &mut referral_proto::seal::getrandom_rng())
            .map_err(|e| err(session, e.to_string()))?;
        let own_size = set.len() as u32;
        let s = self.sign_statement(Step::Accept, session, (&p.initiator, &me), Body::Input(own_size, basis))?;
        self.overlap_rpc().accept(pb::SignedOverlapStatement::from(&s)).await?;
        Ok(OverlapRun {
            session,
            role: Role::Responder,
            peer: p.initiator.clone(),
            party,
            set,
            own_subjects: distinct(subjects),
            own_size,
            peer_size: Some(p.set_size),
        })
    }

    async fn overlap_view(
        &self,
        session: MessageId,
        kind: Kind,
        from: u32,
    ) -> Result<(pb::OverlapSession, Vec<pb::OverlapChunk>), ClientError> {
        let r = self
            .overlap_rpc()
            .receive(pb::OverlapReceiveRequest {
                session_id: session.as_bytes().to_vec(),
                kind: i32::from(kind.code()),
                from_index: from,
            })
            .await?
            .into_inner();
        let view = r.session.ok_or(ClientError::Incomplete("session"))?;
        if view.state == pb::OverlapState::Expired as i32 {
            // Nothing more can come: the broker deleted the chunks.
            return Err(err(
                session,
                "the broker expired the session: it was not finished within the broker's session timeout; start a new one",
            ));
        }
        Ok((view, r.chunks))
    }

    /// Seals `bytes` to `peer` in chunks and sends them; returns their count.
    pub async fn overlap_send(
        &self,
        session: MessageId,
        kind: Kind,
        peer: &AgencyId,
        bytes: &[u8],
    ) -> Result<usize, ClientError> {
        let dir = self.directory().await?;
        let agency = dir.agency(peer).ok_or_else(|| ClientError::UnknownAgency {
            agency: peer.clone(),
            known: dir.agencies.keys().cloned().collect(),
        })?;
        let chunks = self.with_bundle(|b| {
            overlap::seal_message(session, kind, bytes, b, agency, now(), &mut referral_proto::seal::getrandom_rng())
        })??;
        let n = chunks.len();
        let mut rpc = self.overlap_rpc();
        for c in &chunks {
            rpc.send(pb::OverlapChunk::from(c)).await?;
        }
        Ok(n)
    }

    /// Waits for the peer's whole message of `kind`, verifying and opening
    /// every chunk; returns its bytes.
    async fn overlap_collect(
        &self,
        session: MessageId,
        kind: Kind,
        peer: &AgencyId,
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        let dir = self.directory().await?;
        let me = self.principal().agency.clone();
        let mut bytes = Vec::new();
        let mut next = 0u32;
        let mut count = None;
        loop {
            let (_, chunks) = self.overlap_view(session, kind, next).await?;
            for raw in chunks {
                let c = Chunk::try_from(raw).map_err(|e| err(session, format!("a chunk from the broker: {e}")))?;
                check_chunk(&c, session, kind, peer, &me, next, count)?;
                count = Some(c.header.count);
                bytes.extend(open(&c, &dir, &self.bundles())?);
                next += 1;
            }
            if count == Some(next) {
                return Ok(bytes);
            }
            if Instant::now() >= deadline {
                return Err(err(session, format!("gave up waiting for {peer}'s {}", kind.as_str())));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Where the result of `session` is kept.
    pub fn overlap_result_path(&self, session: MessageId) -> PathBuf {
        self.profile.state_dir().join("overlap").join(format!("{session}.json"))
    }

    /// The result of a session this profile ran, as kept.
    pub fn overlap_result(&self, session: MessageId) -> Result<OverlapResult, ClientError> {
        let path = self.overlap_result_path(session);
        let text = certs::secret_file::read(&path).map_err(|e| ClientError::State {
            path: path.clone(),
            message: format!("no result of session {session} kept by this profile ({e})"),
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::State { path, message: e.to_string() })
    }
}

/// What a statement carries besides its step, session and agencies.
enum Body<'a> {
    /// Propose, accept: the signer's padded size and legal basis.
    Input(u32, &'a LegalBasis),
    /// Finish: the transcript hash.
    Transcript(Digest),
}

fn distinct(subjects: &[PersonalIdentityNumber]) -> usize {
    subjects.iter().collect::<std::collections::BTreeSet<_>>().len()
}

fn check_chunk(
    c: &Chunk,
    session: MessageId,
    kind: Kind,
    peer: &AgencyId,
    me: &AgencyId,
    index: u32,
    count: Option<u32>,
) -> Result<(), ClientError> {
    let h = &c.header;
    if h.session != session || h.kind != kind || &h.sender != peer || &h.recipient != me || h.index != index {
        return Err(err(
            session,
            format!("the broker returned another chunk than {} chunk {index} from {peer}", kind.as_str()),
        ));
    }
    if count.is_some_and(|n| n != h.count) {
        return Err(err(session, "the peer's chunks disagree on their count"));
    }
    Ok(())
}

fn open(c: &Chunk, dir: &Directory, bundles: &[referral_proto::keys::AgencyKeyBundle]) -> Result<Vec<u8>, ClientError> {
    overlap::open_chunk(c, dir, bundles).map_err(|e| {
        err(c.header.session, format!("{} chunk {} cannot be opened: {e}", c.header.kind.as_str(), c.header.index))
    })
}

impl OverlapRun {
    pub fn session(&self) -> MessageId {
        self.session
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn peer(&self) -> &AgencyId {
        &self.peer
    }

    /// The blinded set this side sends (sealed) to the peer: what a
    /// privacy test looks for in the broker's store.
    pub fn blinded_set(&self) -> &BlindedSet {
        &self.set
    }

    /// Runs the session to its end (waiting at most `timeout` for the peer
    /// at each step): set out, the peer's set in and checked, answer out,
    /// the peer's answer in and matched, transcript hash reported. Keeps
    /// the result for [`Client::overlap_result`] and returns it.
    pub async fn run(mut self, client: &Client, timeout: Duration) -> Result<OverlapResult, ClientError> {
        let session = self.session;
        let deadline = Instant::now() + timeout;
        let dir = client.directory().await?;
        // Nothing blinded leaves before both sides accepted.
        let peer_size = match self.peer_size {
            Some(n) => n,
            None => loop {
                let (view, _) = client.overlap_view(session, Kind::Set, 0).await?;
                if view.acceptance.is_some() {
                    let a = decode_statement(view.acceptance, session, "acceptance")?;
                    a.verify(&dir, a.statement.signed_at).map_err(|e| err(session, format!("the acceptance: {e}")))?;
                    if a.statement.signer != self.peer {
                        return Err(err(session, "the acceptance is not signed by the peer"));
                    }
                    break a.statement.set_size;
                }
                if Instant::now() >= deadline {
                    return Err(err(session, format!("{} has not accepted the session", self.peer)));
                }
                tokio::time::sleep(POLL).await;
            },
        };
        self.peer_size = Some(peer_size);
        client.overlap_send(session, Kind::Set, &self.peer, self.set.as_bytes()).await?;
        let peer_bytes = client.overlap_collect(session, Kind::Set, &self.peer, deadline).await?;
        let peer_set = BlindedSet::from_bytes(&peer_bytes)
            .map_err(|e| err(session, format!("{}'s blinded set is malformed: {e}", self.peer)))?;
        if peer_set.len() != peer_size as usize {
            return Err(err(
                session,
                format!("{}'s set has {} elements, not the {peer_size} it signed", self.peer, peer_set.len()),
            ));
        }
        // The scalar is dropped (and zeroized) inside answer().
        let (waiting, answer) = self.party.answer(&peer_set);
        client.overlap_send(session, Kind::Answer, &self.peer, &answer.to_bytes()).await?;
        let peer_answer_bytes = client.overlap_collect(session, Kind::Answer, &self.peer, deadline).await?;
        let peer_answer = Answer::from_bytes(&peer_answer_bytes)
            .map_err(|e| err(session, format!("{}'s answer is malformed: {e}", self.peer)))?;
        let matches = waiting
            .finish(&peer_answer)
            .map_err(|e| err(session, format!("{}'s answer does not fit: {e}", self.peer)))?;
        let own_digest = self.set.digest(&session);
        let peer_digest = peer_set.digest(&session);
        let transcript = match self.role {
            Role::Initiator => psi::transcript_hash(&session, &own_digest, &peer_digest, &answer, &peer_answer),
            Role::Responder => psi::transcript_hash(&session, &peer_digest, &own_digest, &peer_answer, &answer),
        };
        let me = client.principal().agency.clone();
        let (initiator, responder) = match self.role {
            Role::Initiator => (me, self.peer.clone()),
            Role::Responder => (self.peer.clone(), me),
        };
        let s = client.sign_statement(Step::Finish, session, (&initiator, &responder), Body::Transcript(transcript))?;
        client.overlap_rpc().finish(pb::SignedOverlapStatement::from(&s)).await?;
        let result = OverlapResult {
            session: session.to_string(),
            role: self.role,
            peer: self.peer.to_string(),
            own_subjects: self.own_subjects,
            own_size: self.own_size,
            peer_size,
            matches: matches.iter().map(|p| p.as_str().to_owned()).collect(),
            transcript: transcript.to_hex(),
        };
        let path = client.overlap_result_path(session);
        let text = serde_json::to_string_pretty(&result).expect("a result serializes");
        if let Some(dir) = path.parent() {
            certs::durable_file::create_dir_all_mode(dir, 0o700)
                .map_err(|e| ClientError::State { path: dir.to_owned(), message: e.to_string() })?;
        }
        certs::secret_file::write(&path, text.as_bytes(), true)
            .map_err(|e| ClientError::State { path: path.clone(), message: e.to_string() })?;
        Ok(result)
    }
}

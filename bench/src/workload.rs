//! What the generator sends: the example referral notice grown to a chosen
//! size, envelopes sealed and signed from it exactly as an agency system
//! does (one HPKE seal and one Ed25519 signature each), and, for filling a
//! store, envelopes that share one ciphertext under fresh signed headers.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use certs::profile::Profile;
use referral_proto::directory::{Agency, Directory};
use referral_proto::envelope::{Envelope, EnvelopeHeader, signing_input};
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::keys::AgencyKeyBundle;
use referral_proto::notice::{ReferralNotice, example_notice};
use referral_proto::pb;
use referral_proto::seal::seal;

/// Bytes the padding puts in front of the notice (its length, a u32).
pub const PADDING_PREFIX: usize = 4;
/// Most characters `free_text` may hold (PROTOCOL.md 6.3).
const MAX_FREE_TEXT_CHARS: usize = 4000;
/// Text without digits, so that it never looks like a personal identity number.
const FILLER: &str = "The subject describes repeated threats and controlling behaviour over the last year; \
    she asks to be contacted discreetly and only during working hours, when her partner is away from home. ";

/// Why a notice of the requested size cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("--size {size}: the smallest notice is {min} bytes encoded, so --size must be at least {}", min + PADDING_PREFIX)]
    TooSmall { size: usize, min: usize },
    #[error(
        "--size {size}: free_text holds at most {MAX_FREE_TEXT_CHARS} characters, so --size can be at most {}",
        max + PADDING_PREFIX
    )]
    TooLarge { size: usize, max: usize },
}

fn with_text(base: &ReferralNotice, chars: usize) -> ReferralNotice {
    let mut n = base.clone();
    n.free_text = FILLER.chars().cycle().take(chars).collect();
    n
}

/// The example notice with `free_text` grown so that the encoded notice is
/// as close as possible to, and not over, `size - 4` bytes: together with
/// the padding's 4-byte length prefix it then fills `size` bytes, so a
/// `size` that is a padding bucket (1024, 2048, 4096, ...) gives a referral
/// of exactly that bucket.
pub fn sized_notice(size: usize) -> Result<ReferralNotice, SizeError> {
    let base = example_notice();
    let min = with_text(&base, 0).encode().len();
    let max = with_text(&base, MAX_FREE_TEXT_CHARS).encode().len();
    let target = size.saturating_sub(PADDING_PREFIX);
    if target < min {
        return Err(SizeError::TooSmall { size, min });
    }
    if target > max {
        return Err(SizeError::TooLarge { size, max });
    }
    // The filler is ASCII, so one character is one byte; only the length
    // prefix of the field (a varint) can make the first guess miss.
    let mut chars = (target - min).min(MAX_FREE_TEXT_CHARS);
    let mut notice = with_text(&base, chars);
    while notice.encode().len() > target && chars > 0 {
        chars -= 1;
        notice = with_text(&base, chars);
    }
    Ok(notice)
}

/// The sizes of what is sent, for reports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sizes {
    pub notice_bytes: usize,
    pub ciphertext_bytes: usize,
    pub envelope_bytes: usize,
}

/// Seals referrals from the sending profile to the recipient agency.
#[derive(Debug)]
pub struct Sealer {
    profile: Profile,
    recipient: Agency,
    notice: ReferralNotice,
}

impl Sealer {
    /// Loads the sender's profile; `directory` is the verified federation directory.
    pub fn new(
        profile_dir: &Path,
        directory: &Directory,
        recipient: &AgencyId,
        notice: ReferralNotice,
    ) -> anyhow::Result<Self> {
        let profile = Profile::load(profile_dir, certs::now())
            .with_context(|| format!("cannot load the profile {}", profile_dir.display()))?;
        let recipient =
            directory.agency(recipient).with_context(|| format!("agency {recipient} is not in the directory"))?.clone();
        notice.validate().context("the generated referral notice is invalid")?;
        Ok(Self { profile, recipient, notice })
    }

    fn bundle(&self) -> anyhow::Result<&AgencyKeyBundle> {
        self.profile
            .current_bundle(certs::now())
            .with_context(|| format!("profile {} has no key bundle valid now", self.profile.dir.display()))
    }

    /// The sending principal's URI.
    pub fn principal_uri(&self) -> String {
        self.profile.principal.uri()
    }

    /// One referral, sealed and signed now under a fresh message id.
    pub fn seal_domain(&self) -> anyhow::Result<Envelope> {
        let now = certs::now();
        Ok(seal(&self.notice, self.bundle()?, &self.recipient, MessageId::generate(now.0), now)?)
    }

    /// [`Sealer::seal_domain`] in wire form.
    pub fn seal_one(&self) -> anyhow::Result<pb::Envelope> {
        Ok(pb::Envelope::from(&self.seal_domain()?))
    }

    /// `count` referrals sealed on `threads` threads, in order.
    pub fn seal_many(&self, count: usize, threads: usize) -> anyhow::Result<Vec<pb::Envelope>> {
        let threads = threads.clamp(1, count.max(1));
        let per = count.div_ceil(threads);
        let parts: Vec<anyhow::Result<Vec<pb::Envelope>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let n = per.min(count.saturating_sub(t * per));
                    s.spawn(move || (0..n).map(|_| self.seal_one()).collect())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a sealing thread panicked"))))
                .collect()
        });
        let mut out = Vec::with_capacity(count);
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }

    /// The sizes of one sealed referral.
    pub fn sizes(&self) -> anyhow::Result<Sizes> {
        let e = self.seal_domain()?;
        Ok(Sizes {
            notice_bytes: self.notice.encode().len(),
            ciphertext_bytes: e.ciphertext.len(),
            envelope_bytes: e.encode().len(),
        })
    }

    /// A copy of `base` under a fresh message id and creation time, signed
    /// again by the sender (about 25 µs: one Ed25519 signature).
    ///
    /// The ciphertext is `base`'s, and HPKE's `info` binds the message id,
    /// so the copy verifies (the broker accepts it) but cannot be opened by
    /// the recipient: such envelopes only load a store.
    pub fn resign(&self, base: &Envelope) -> anyhow::Result<Envelope> {
        let now = certs::now();
        let header = EnvelopeHeader { message_id: MessageId::generate(now.0), created_at: now, ..base.header.clone() };
        let signature = self.bundle()?.sign(&signing_input(&header, &base.payload_digest()));
        Ok(Envelope { header, encapsulated_key: base.encapsulated_key, ciphertext: base.ciphertext.clone(), signature })
    }
}

/// Where submitted envelopes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Sealed before the clock started; index `i` is the `i`-th submit.
    Presealed(Arc<Vec<pb::Envelope>>),
    /// Sealed by the submitting task just before each submit.
    OnTheFly(Arc<Sealer>),
}

impl Source {
    /// Envelope number `i`.
    pub fn get(&self, i: u64) -> anyhow::Result<pb::Envelope> {
        match self {
            Source::Presealed(v) => {
                v.get(i as usize).cloned().with_context(|| format!("only {} envelopes were sealed", v.len()))
            }
            Source::OnTheFly(s) => s.seal_one(),
        }
    }

    /// How many envelopes there are, if limited.
    pub fn limit(&self) -> Option<u64> {
        match self {
            Source::Presealed(v) => Some(v.len() as u64),
            Source::OnTheFly(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use referral_proto::seal::{PADDING_BUCKETS, pad};

    #[test]
    fn a_bucket_size_fills_that_bucket_exactly() {
        for size in [1024, 2048, 4096] {
            let n = sized_notice(size).expect("fits");
            let bytes = n.encode();
            assert!(bytes.len() <= size - PADDING_PREFIX);
            assert!(bytes.len() >= size - PADDING_PREFIX - 2, "{} for {size}", bytes.len());
            assert_eq!(pad(&bytes).expect("pads").len(), size);
            assert!(PADDING_BUCKETS.contains(&size));
            n.validate().expect("valid");
        }
    }

    #[test]
    fn impossible_sizes_are_explained() {
        assert!(sized_notice(10).unwrap_err().to_string().contains("at least"));
        assert!(sized_notice(40_000).unwrap_err().to_string().contains("at most"));
    }
}

#[cfg(test)]
mod federation_tests {
    use super::*;
    use broker::directory::{DirectoryState, read_federation_key};
    use referral_proto::seal::open;

    #[test]
    fn sealed_referrals_open_at_the_recipient_and_filled_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let setup = crate::setup::Setup::create(Some(&tmp.path().join("w")), false, "info").unwrap();
        let key = read_federation_key(&setup.config.federation.federation_key).unwrap();
        let dir = DirectoryState::open(&setup.config.federation.directory, key, certs::now()).unwrap();
        let directory = &dir.current().directory;
        let social = AgencyId::new(certs::dev::SOCIAL).unwrap();
        let sealer = Sealer::new(
            &setup.profile(&crate::setup::sender_profile()),
            directory,
            &social,
            sized_notice(2048).unwrap(),
        )
        .unwrap();
        let recipient = Profile::load(&setup.profile(&crate::setup::subscriber_profiles()[0]), certs::now()).unwrap();
        let envelope = sealer.seal_domain().unwrap();
        open(&envelope, directory, &recipient.bundles).expect("opens");
        let filled = sealer.resign(&envelope).unwrap();
        referral_proto::seal::verify_envelope(&filled, directory).expect("verifies");
        assert!(open(&filled, directory, &recipient.bundles).is_err());
    }
}

//! The referral notice: the personal data inside the encryption, and the rules
//! it must satisfy. Validation runs at the sender before sealing and again at
//! the recipient after opening; it reports every problem at once, naming each
//! field by its path (`subject.personal_identity_number`).
//!
//! Error messages name fields and rules, never values: they may end up in
//! logs and must not carry personal data.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::envelope::Urgency;
use crate::pb;
use crate::text;
use crate::time::{Timestamp, is_valid_date};

/// Limits on free text, so a notice fits the largest padding bucket.
pub const MAX_FREE_TEXT_CHARS: usize = 4000;
const MAX_SHORT_TEXT_CHARS: usize = 200;
const MAX_CHILDREN: usize = 20;

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReferralNotice {
    pub subject: Subject,
    pub safe_contact: SafeContact,
    pub legal_basis: LegalBasis,
    pub consent: Consent,
    pub victim_aware: VictimAwareness,
    pub risk: RiskAssessment,
    #[serde(default)]
    pub children: Vec<Child>,
    #[serde(default)]
    pub requested_support: Vec<SupportKind>,
    pub urgency: Urgency,
    #[serde(default)]
    pub respond_by: Option<Timestamp>,
    pub sender_case_reference: String,
    pub sender_contact: ContactPerson,
    #[serde(default)]
    pub free_text: String,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub name: String,
    /// 12 digits, `YYYYMMDDNNNN` (a `-` before the last four is accepted).
    #[serde(default)]
    pub personal_identity_number: String,
    #[serde(default)]
    pub protected_identity: bool,
    #[serde(default)]
    pub street_address: String,
    #[serde(default)]
    pub postal_code: String,
    #[serde(default)]
    pub city: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ContactChannel {
    Phone,
    Sms,
    Email,
    ViaSender,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SafeContact {
    pub channel: ContactChannel,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub best_time: String,
    #[serde(default)]
    pub safe_to_leave_message: bool,
    #[serde(default)]
    pub language: String,
    #[serde(default)]
    pub interpreter_needed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LegalBasisKind {
    Consent,
    #[serde(rename = "osl_10_18c")]
    Osl10_18c,
    ChildConcernReport,
    Other,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LegalBasis {
    pub kind: LegalBasisKind,
    pub citation: String,
    pub reason: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    Given,
    Refused,
    Withdrawn,
    NotSoughtUnsafe,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Consent {
    pub state: ConsentState,
    #[serde(default)]
    pub obtained_by: String,
    #[serde(default)]
    pub obtained_at: Option<Timestamp>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum VictimAwareness {
    Aware,
    NotAware,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RiskTool {
    None,
    #[serde(rename = "sara_sv")]
    SaraSv,
    #[serde(rename = "check_10")]
    Check10,
    Patriark,
    Freda,
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Low,
    Moderate,
    High,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RiskAssessment {
    pub tool: RiskTool,
    #[serde(default)]
    pub level: Option<RiskLevel>,
    #[serde(default)]
    pub assessed_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Child {
    // The schema says what serde enforces for a u32 (its "uint32" format is
    // not one validators check).
    #[cfg_attr(feature = "schema", schemars(range(max = 4_294_967_295_u32)))]
    pub age: u32,
    #[serde(default)]
    pub present: bool,
    #[serde(default)]
    pub witnessed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SupportKind {
    TransportToInterview,
    ShelteredHousing,
    HomeVisit,
    #[serde(rename = "contact_within_24h")]
    ContactWithin24h,
    PerpetratorProgramme,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ContactPerson {
    pub name: String,
    #[serde(default)]
    pub title: String,
    pub phone: String,
    #[serde(default)]
    pub email: String,
}

/// One broken rule: the field's path and the rule, never the field's value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FieldError {
    pub field: &'static str,
    pub rule: &'static str,
}

/// Every rule a notice breaks.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn has(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid referral notice: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.rule)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn check(&mut self, ok: bool, field: &'static str, rule: &'static str) {
        if !ok {
            self.0.push(FieldError { field, rule });
        }
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(ValidationErrors(self.0)) }
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn present(s: &str) -> bool {
    !s.trim().is_empty()
}

impl ReferralNotice {
    /// Checks every rule; PROTOCOL.md, "Referral notice rules", lists them.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        let s = &self.subject;
        e.check(present(&s.name), "subject.name", "is required");
        e.check(chars(&s.name) <= MAX_SHORT_TEXT_CHARS, "subject.name", "is longer than 200 characters");
        e.check(
            s.personal_identity_number.is_empty() || is_personal_identity_number(&s.personal_identity_number),
            "subject.personal_identity_number",
            "is not a valid 12-digit personnummer or samordningsnummer (YYYYMMDDNNNN, Luhn check digit)",
        );
        let has_address = present(&s.street_address) || present(&s.postal_code) || present(&s.city);
        e.check(
            !(s.protected_identity && has_address),
            "subject.street_address",
            "must be empty for a subject with protected identity (also postal_code and city)",
        );
        for (field, v) in [
            ("subject.street_address", &s.street_address),
            ("subject.postal_code", &s.postal_code),
            ("subject.city", &s.city),
        ] {
            e.check(chars(v) <= MAX_SHORT_TEXT_CHARS, field, "is longer than 200 characters");
        }

        let c = &self.safe_contact;
        match c.channel {
            ContactChannel::Phone | ContactChannel::Sms => e.check(
                is_phone_number(&c.address),
                "safe_contact.address",
                "must be a phone number (digits, spaces, '-', optional leading '+') for channel phone or sms",
            ),
            ContactChannel::Email => {
                e.check(is_email(&c.address), "safe_contact.address", "must be an e-mail address for channel email")
            }
            ContactChannel::ViaSender => {
                e.check(c.address.is_empty(), "safe_contact.address", "must be empty for channel via_sender")
            }
        }
        e.check(chars(&c.best_time) <= MAX_SHORT_TEXT_CHARS, "safe_contact.best_time", "is longer than 200 characters");
        e.check(
            c.language.is_empty() || is_language_tag(&c.language),
            "safe_contact.language",
            "is not a BCP 47 language tag such as sv or ar",
        );

        let l = &self.legal_basis;
        e.check(present(&l.citation), "legal_basis.citation", "is required");
        e.check(present(&l.reason), "legal_basis.reason", "is required: say why the provision applies in this case");
        e.check(chars(&l.citation) <= MAX_SHORT_TEXT_CHARS, "legal_basis.citation", "is longer than 200 characters");
        e.check(chars(&l.reason) <= MAX_FREE_TEXT_CHARS, "legal_basis.reason", "is longer than 4000 characters");

        let k = &self.consent;
        if k.state == ConsentState::Given {
            e.check(present(&k.obtained_by), "consent.obtained_by", "is required when consent is given");
            e.check(k.obtained_at.is_some(), "consent.obtained_at", "is required when consent is given");
        }
        e.check(
            l.kind != LegalBasisKind::Consent || k.state == ConsentState::Given,
            "consent.state",
            "must be given when the legal basis is consent",
        );
        e.check(chars(&k.obtained_by) <= MAX_SHORT_TEXT_CHARS, "consent.obtained_by", "is longer than 200 characters");

        if self.risk.tool != RiskTool::None {
            e.check(self.risk.level.is_some(), "risk.level", "is required when a risk tool was used");
            e.check(self.risk.assessed_at.is_some(), "risk.assessed_at", "is required when a risk tool was used");
        }

        e.check(self.children.len() <= MAX_CHILDREN, "children", "lists more than 20 children");
        e.check(self.children.iter().all(|c| c.age <= 17), "children.age", "must be 0 to 17");
        let mut seen = Vec::new();
        for s in &self.requested_support {
            e.check(!seen.contains(s), "requested_support", "lists a kind of support twice");
            seen.push(*s);
        }

        let r = &self.sender_case_reference;
        e.check(present(r), "sender_case_reference", "is required");
        e.check(chars(r) <= 64, "sender_case_reference", "is longer than 64 characters");
        e.check(
            !contains_personal_identity_number(r),
            "sender_case_reference",
            "must not contain a personal identity number",
        );

        let p = &self.sender_contact;
        e.check(present(&p.name), "sender_contact.name", "is required");
        e.check(is_phone_number(&p.phone), "sender_contact.phone", "must be a phone number");
        e.check(p.email.is_empty() || is_email(&p.email), "sender_contact.email", "is not an e-mail address");
        e.check(chars(&p.name) <= MAX_SHORT_TEXT_CHARS, "sender_contact.name", "is longer than 200 characters");
        e.check(chars(&p.title) <= MAX_SHORT_TEXT_CHARS, "sender_contact.title", "is longer than 200 characters");

        e.check(chars(&self.free_text) <= MAX_FREE_TEXT_CHARS, "free_text", "is longer than 4000 characters");
        // Text rules (6.3, rule 32): every text field, so that nothing a
        // sender writes can drive the recipient's terminal.
        for (field, v) in [
            ("subject.name", &s.name),
            ("subject.personal_identity_number", &s.personal_identity_number),
            ("subject.street_address", &s.street_address),
            ("subject.postal_code", &s.postal_code),
            ("subject.city", &s.city),
            ("safe_contact.address", &c.address),
            ("safe_contact.best_time", &c.best_time),
            ("safe_contact.language", &c.language),
            ("legal_basis.citation", &l.citation),
            ("consent.obtained_by", &k.obtained_by),
            ("sender_case_reference", r),
            ("sender_contact.name", &p.name),
            ("sender_contact.title", &p.title),
            ("sender_contact.phone", &p.phone),
            ("sender_contact.email", &p.email),
        ] {
            e.check(text::line_ok(v), field, text::LINE_RULE);
        }
        for (field, v) in [("legal_basis.reason", &l.reason), ("free_text", &self.free_text)] {
            e.check(text::free_text_ok(v), field, text::FREE_TEXT_RULE);
        }
        // On the wire a time of 0 means "not set", so a set time must be later.
        for (field, t) in [
            ("consent.obtained_at", self.consent.obtained_at),
            ("risk.assessed_at", self.risk.assessed_at),
            ("respond_by", self.respond_by),
        ] {
            e.check(t.is_none_or(|t| t.0 > 0), field, "must be a time after 1970-01-01T00:00:00Z");
        }
        e.finish()
    }

    /// Encodes as `pb::ReferralNotice` (the plaintext that gets padded and sealed).
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&pb::ReferralNotice::from(self))
    }

    /// Decodes and validates a `pb::ReferralNotice`.
    pub fn decode(bytes: &[u8]) -> Result<Self, NoticeError> {
        let p: pb::ReferralNotice = prost::Message::decode(bytes).map_err(|_| NoticeError::Decode)?;
        let n = ReferralNotice::try_from(p)?;
        n.validate()?;
        Ok(n)
    }
}

/// A notice could not be decoded or broke a rule.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("not a valid protobuf referral.v1.ReferralNotice")]
    Decode,
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// Whether `s` is a 12-digit personnummer or samordningsnummer
/// (`YYYYMMDDNNNN` or `YYYYMMDD-NNNN`) with a real date (day + 60 for a
/// samordningsnummer) and a correct Luhn check digit over the last ten digits.
pub fn is_personal_identity_number(s: &str) -> bool {
    let digits: String = match s.len() {
        12 => s.to_owned(),
        13 if s.as_bytes()[8] == b'-' => format!("{}{}", &s[..8], &s[9..]),
        _ => return false,
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| digits[r].parse::<i64>().unwrap_or(-1);
    let (y, m, mut d) = (num(0..4), num(4..6), num(6..8));
    if d > 60 {
        d -= 60;
    }
    is_valid_date(y, m, d) && luhn_ok(&digits.as_bytes()[2..])
}

pub(crate) fn luhn_ok(ten: &[u8]) -> bool {
    let sum: u32 = ten
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                x / 10 + x % 10
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `s` contains anything shaped like a personal identity number: six
/// or eight digits forming a date (day + 60 allowed), an optional separator
/// (`-`, `+` or space), then four digits. The check digit is deliberately not
/// required: a mistyped number is still personal data.
pub fn contains_personal_identity_number(s: &str) -> bool {
    let b = s.as_bytes();
    let is_digit_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    for start in 0..b.len() {
        if !is_digit_at(start) || (start > 0 && is_digit_at(start - 1)) {
            continue;
        }
        let run = (start..b.len()).take_while(|&i| is_digit_at(i)).count();
        for date_len in [8usize, 6] {
            let date_end = start + date_len;
            let tail = if run == date_len + 4 {
                Some(date_end)
            } else if run == date_len && matches!(b.get(date_end), Some(b'-' | b'+' | b' ')) {
                Some(date_end + 1)
            } else {
                None
            };
            let Some(tail) = tail else { continue };
            let four = (tail..tail + 4).all(is_digit_at) && !is_digit_at(tail + 4);
            if four && looks_like_date(&s[start..date_end]) {
                return true;
            }
        }
    }
    false
}

fn looks_like_date(d: &str) -> bool {
    let n = |r: std::ops::Range<usize>| d[r].parse::<i64>().unwrap_or(-1);
    let (y, m, day) = if d.len() == 8 { (n(0..4), n(4..6), n(6..8)) } else { (2000 + n(0..2), n(2..4), n(4..6)) };
    let day = if day > 60 { day - 60 } else { day };
    is_valid_date(y, m, day) || (m == 2 && day == 29)
}

/// International numbers (`+46 8 …`) have 6 to 15 digits (E.164); national
/// ones may be as short as Sweden's service numbers (`112`, `114 14`,
/// `1177`), which on-call staff do give as the way to reach them.
fn is_phone_number(s: &str) -> bool {
    let (t, least) = match s.strip_prefix('+') {
        Some(t) => (t, 6),
        None => (s, 3),
    };
    let digits = t.bytes().filter(u8::is_ascii_digit).count();
    (least..=15).contains(&digits) && t.bytes().all(|b| b.is_ascii_digit() || b == b' ' || b == b'-')
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(char::is_whitespace)
                && s.len() <= 254
        }
        None => false,
    }
}

fn is_language_tag(s: &str) -> bool {
    let mut parts = s.split('-');
    let first = parts.next().unwrap_or("");
    (2..=3).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

// ---- Conversions between the domain notice and the wire message ----

/// A valid `YYYYMMDD-NNNN` number in the 12-digit form the reference encoder
/// sends, so that a decoded notice re-encodes to itself; anything else is
/// left for validation to judge.
fn twelve_digit_form(pin: String) -> String {
    if pin.len() == 13 && is_personal_identity_number(&pin) { pin.replace('-', "") } else { pin }
}

fn opt_ts(ms: i64) -> Option<Timestamp> {
    (ms != 0).then_some(Timestamp(ms))
}

fn ts_ms(t: Option<Timestamp>) -> i64 {
    t.map_or(0, |t| t.0)
}

impl From<&ReferralNotice> for pb::ReferralNotice {
    fn from(n: &ReferralNotice) -> Self {
        let s = &n.subject;
        let c = &n.safe_contact;
        pb::ReferralNotice {
            schema_version: crate::NOTICE_CONTENT_VERSION,
            subject: Some(pb::Subject {
                name: s.name.clone(),
                personal_identity_number: s.personal_identity_number.replace('-', ""),
                protected_identity: s.protected_identity,
                street_address: s.street_address.clone(),
                postal_code: s.postal_code.clone(),
                city: s.city.clone(),
            }),
            safe_contact: Some(pb::SafeContact {
                channel: match c.channel {
                    ContactChannel::Phone => pb::ContactChannel::Phone,
                    ContactChannel::Sms => pb::ContactChannel::Sms,
                    ContactChannel::Email => pb::ContactChannel::Email,
                    ContactChannel::ViaSender => pb::ContactChannel::ViaSender,
                } as i32,
                address: c.address.clone(),
                best_time: c.best_time.clone(),
                safe_to_leave_message: c.safe_to_leave_message,
                language: c.language.clone(),
                interpreter_needed: c.interpreter_needed,
            }),
            legal_basis: Some(pb::LegalBasis {
                kind: match n.legal_basis.kind {
                    LegalBasisKind::Consent => pb::LegalBasisKind::Consent,
                    LegalBasisKind::Osl10_18c => pb::LegalBasisKind::Osl1018c,
                    LegalBasisKind::ChildConcernReport => pb::LegalBasisKind::ChildConcernReport,
                    LegalBasisKind::Other => pb::LegalBasisKind::Other,
                } as i32,
                citation: n.legal_basis.citation.clone(),
                reason: n.legal_basis.reason.clone(),
            }),
            consent: Some(pb::Consent {
                state: match n.consent.state {
                    ConsentState::Given => pb::ConsentState::Given,
                    ConsentState::Refused => pb::ConsentState::Refused,
                    ConsentState::Withdrawn => pb::ConsentState::Withdrawn,
                    ConsentState::NotSoughtUnsafe => pb::ConsentState::NotSoughtUnsafe,
                } as i32,
                obtained_by: n.consent.obtained_by.clone(),
                obtained_at_ms: ts_ms(n.consent.obtained_at),
            }),
            victim_aware: match n.victim_aware {
                VictimAwareness::Aware => pb::VictimAwareness::Aware,
                VictimAwareness::NotAware => pb::VictimAwareness::NotAware,
            } as i32,
            risk: Some(pb::RiskAssessment {
                tool: match n.risk.tool {
                    RiskTool::None => pb::RiskTool::None,
                    RiskTool::SaraSv => pb::RiskTool::SaraSv,
                    RiskTool::Check10 => pb::RiskTool::Check10,
                    RiskTool::Patriark => pb::RiskTool::Patriark,
                    RiskTool::Freda => pb::RiskTool::Freda,
                    RiskTool::Other => pb::RiskTool::Other,
                } as i32,
                level: n.risk.level.map_or(pb::RiskLevel::Unspecified, |l| match l {
                    RiskLevel::Low => pb::RiskLevel::Low,
                    RiskLevel::Moderate => pb::RiskLevel::Moderate,
                    RiskLevel::High => pb::RiskLevel::High,
                }) as i32,
                assessed_at_ms: ts_ms(n.risk.assessed_at),
            }),
            children: n
                .children
                .iter()
                .map(|c| pb::Child { age: c.age, present: c.present, witnessed: c.witnessed })
                .collect(),
            requested_support: n
                .requested_support
                .iter()
                .map(|s| {
                    (match s {
                        SupportKind::TransportToInterview => pb::SupportKind::TransportToInterview,
                        SupportKind::ShelteredHousing => pb::SupportKind::ShelteredHousing,
                        SupportKind::HomeVisit => pb::SupportKind::HomeVisit,
                        SupportKind::ContactWithin24h => pb::SupportKind::ContactWithin24h,
                        SupportKind::PerpetratorProgramme => pb::SupportKind::PerpetratorProgramme,
                    }) as i32
                })
                .collect(),
            urgency: n.urgency.to_pb() as i32,
            respond_by_ms: ts_ms(n.respond_by),
            sender_case_reference: n.sender_case_reference.clone(),
            sender_contact: Some(pb::ContactPerson {
                name: n.sender_contact.name.clone(),
                title: n.sender_contact.title.clone(),
                phone: n.sender_contact.phone.clone(),
                email: n.sender_contact.email.clone(),
            }),
            free_text: n.free_text.clone(),
        }
    }
}

impl TryFrom<pb::ReferralNotice> for ReferralNotice {
    type Error = ValidationErrors;

    /// Maps the wire message onto the domain type; every missing message and
    /// unspecified or unknown enum value is reported, all at once.
    fn try_from(p: pb::ReferralNotice) -> Result<Self, ValidationErrors> {
        let mut e = Errors::default();
        e.check(p.schema_version == crate::NOTICE_CONTENT_VERSION, "schema_version", "must be 1");
        let mut need = |v: bool, field: &'static str| e.check(v, field, "is missing or unspecified");

        let s = p.subject.unwrap_or_default();
        let c = p.safe_contact.unwrap_or_default();
        let channel = match pb::ContactChannel::try_from(c.channel) {
            Ok(pb::ContactChannel::Phone) => Some(ContactChannel::Phone),
            Ok(pb::ContactChannel::Sms) => Some(ContactChannel::Sms),
            Ok(pb::ContactChannel::Email) => Some(ContactChannel::Email),
            Ok(pb::ContactChannel::ViaSender) => Some(ContactChannel::ViaSender),
            _ => None,
        };
        need(channel.is_some(), "safe_contact.channel");
        let l = p.legal_basis.unwrap_or_default();
        let kind = match pb::LegalBasisKind::try_from(l.kind) {
            Ok(pb::LegalBasisKind::Consent) => Some(LegalBasisKind::Consent),
            Ok(pb::LegalBasisKind::Osl1018c) => Some(LegalBasisKind::Osl10_18c),
            Ok(pb::LegalBasisKind::ChildConcernReport) => Some(LegalBasisKind::ChildConcernReport),
            Ok(pb::LegalBasisKind::Other) => Some(LegalBasisKind::Other),
            _ => None,
        };
        need(kind.is_some(), "legal_basis.kind");
        let k = p.consent.unwrap_or_default();
        let state = match pb::ConsentState::try_from(k.state) {
            Ok(pb::ConsentState::Given) => Some(ConsentState::Given),
            Ok(pb::ConsentState::Refused) => Some(ConsentState::Refused),
            Ok(pb::ConsentState::Withdrawn) => Some(ConsentState::Withdrawn),
            Ok(pb::ConsentState::NotSoughtUnsafe) => Some(ConsentState::NotSoughtUnsafe),
            _ => None,
        };
        need(state.is_some(), "consent.state");
        let victim_aware = match pb::VictimAwareness::try_from(p.victim_aware) {
            Ok(pb::VictimAwareness::Aware) => Some(VictimAwareness::Aware),
            Ok(pb::VictimAwareness::NotAware) => Some(VictimAwareness::NotAware),
            _ => None,
        };
        need(victim_aware.is_some(), "victim_aware");
        let r = p.risk.unwrap_or_default();
        let tool = match pb::RiskTool::try_from(r.tool) {
            Ok(pb::RiskTool::None) => Some(RiskTool::None),
            Ok(pb::RiskTool::SaraSv) => Some(RiskTool::SaraSv),
            Ok(pb::RiskTool::Check10) => Some(RiskTool::Check10),
            Ok(pb::RiskTool::Patriark) => Some(RiskTool::Patriark),
            Ok(pb::RiskTool::Freda) => Some(RiskTool::Freda),
            Ok(pb::RiskTool::Other) => Some(RiskTool::Other),
            _ => None,
        };
        need(tool.is_some(), "risk.tool");
        let level = match pb::RiskLevel::try_from(r.level) {
            Ok(pb::RiskLevel::Low) => Some(RiskLevel::Low),
            Ok(pb::RiskLevel::Moderate) => Some(RiskLevel::Moderate),
            Ok(pb::RiskLevel::High) => Some(RiskLevel::High),
            Ok(pb::RiskLevel::Unspecified) => None,
            Err(_) => {
                need(false, "risk.level");
                None
            }
        };
        let mut support = Vec::with_capacity(p.requested_support.len());
        for v in &p.requested_support {
            match pb::SupportKind::try_from(*v) {
                Ok(pb::SupportKind::TransportToInterview) => support.push(SupportKind::TransportToInterview),
                Ok(pb::SupportKind::ShelteredHousing) => support.push(SupportKind::ShelteredHousing),
                Ok(pb::SupportKind::HomeVisit) => support.push(SupportKind::HomeVisit),
                Ok(pb::SupportKind::ContactWithin24h) => support.push(SupportKind::ContactWithin24h),
                Ok(pb::SupportKind::PerpetratorProgramme) => support.push(SupportKind::PerpetratorProgramme),
                _ => need(false, "requested_support"),
            }
        }
        let urgency = Urgency::from_pb(p.urgency);
        need(urgency.is_some(), "urgency");
        let sc = p.sender_contact.unwrap_or_default();

        let (Some(channel), Some(kind), Some(state), Some(victim_aware), Some(tool), Some(urgency)) =
            (channel, kind, state, victim_aware, tool, urgency)
        else {
            return Err(ValidationErrors(e.0));
        };
        if !e.0.is_empty() {
            return Err(ValidationErrors(e.0));
        }
        Ok(ReferralNotice {
            subject: Subject {
                name: s.name,
                personal_identity_number: twelve_digit_form(s.personal_identity_number),
                protected_identity: s.protected_identity,
                street_address: s.street_address,
                postal_code: s.postal_code,
                city: s.city,
            },
            safe_contact: SafeContact {
                channel,
                address: c.address,
                best_time: c.best_time,
                safe_to_leave_message: c.safe_to_leave_message,
                language: c.language,
                interpreter_needed: c.interpreter_needed,
            },
            legal_basis: LegalBasis { kind, citation: l.citation, reason: l.reason },
            consent: Consent { state, obtained_by: k.obtained_by, obtained_at: opt_ts(k.obtained_at_ms) },
            victim_aware,
            risk: RiskAssessment { tool, level, assessed_at: opt_ts(r.assessed_at_ms) },
            children: p
                .children
                .into_iter()
                .map(|c| Child { age: c.age, present: c.present, witnessed: c.witnessed })
                .collect(),
            requested_support: support,
            urgency,
            respond_by: opt_ts(p.respond_by_ms),
            sender_case_reference: p.sender_case_reference,
            sender_contact: ContactPerson { name: sc.name, title: sc.title, phone: sc.phone, email: sc.email },
            free_text: p.free_text,
        })
    }
}

/// A complete, valid example notice (fictitious person); used by the demo,
/// tests, benchmarks and PROTOCOL.md's vectors.
pub fn example_notice() -> ReferralNotice {
    ReferralNotice {
        subject: Subject {
            name: "Testperson Andersson".into(),
            personal_identity_number: "198503122387".into(),
            protected_identity: false,
            street_address: "Exempelvägen 1".into(),
            postal_code: "141 00".into(),
            city: "Huddinge".into(),
        },
        safe_contact: SafeContact {
            channel: ContactChannel::Phone,
            address: "+46 70 000 00 00".into(),
            best_time: "weekdays 09-11".into(),
            safe_to_leave_message: false,
            language: "sv".into(),
            interpreter_needed: false,
        },
        legal_basis: LegalBasis {
            kind: LegalBasisKind::Consent,
            citation: "Samtycke".into(),
            reason: "The subject asked for support from social services during the interview.".into(),
        },
        consent: Consent {
            state: ConsentState::Given,
            obtained_by: "Inspektör 4711".into(),
            obtained_at: Some(Timestamp(1_795_940_100_000)),
        },
        victim_aware: VictimAwareness::Aware,
        risk: RiskAssessment {
            tool: RiskTool::SaraSv,
            level: Some(RiskLevel::High),
            assessed_at: Some(Timestamp(1_795_940_100_000)),
        },
        children: vec![Child { age: 4, present: true, witnessed: true }],
        requested_support: vec![SupportKind::ContactWithin24h, SupportKind::ShelteredHousing],
        urgency: Urgency::Urgent,
        respond_by: Some(Timestamp(1_796_026_500_000)),
        sender_case_reference: "PM-2026-5501".into(),
        sender_contact: ContactPerson {
            name: "Inspektör 4711".into(),
            title: "Relationsvåldsgruppen".into(),
            phone: "+46 8 000 000 00".into(),
            email: "".into(),
        },
        free_text: "Subject prefers contact through her sister's phone before noon.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_swedish_service_numbers_are_phone_numbers() {
        for ok in ["112", "114 14", "1177", "08-123 456 78", "+46 8 000 000 00", "+46701234567"] {
            assert!(is_phone_number(ok), "{ok}");
        }
        for bad in ["11", "+112", "+46 12", "112a", "", "1234567890123456", "++46 8 000 000"] {
            assert!(!is_phone_number(bad), "{bad}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn example_is_valid_and_round_trips() {
        let n = example_notice();
        n.validate().unwrap();
        assert_eq!(ReferralNotice::decode(&n.encode()).unwrap(), n);
    }

    #[test]
    fn personal_identity_numbers() {
        assert!(is_personal_identity_number("198503122387"));
        assert!(is_personal_identity_number("19850312-2387"));
        assert!(!is_personal_identity_number("198503122388"), "bad check digit");
        assert!(!is_personal_identity_number("198513122383"), "month 13");
        assert!(!is_personal_identity_number("8503122383"), "10 digits");
        // Samordningsnummer: day + 60.
        assert!(is_personal_identity_number("198503722384"));
    }

    #[test]
    fn case_reference_must_not_hold_a_pin() {
        for bad in ["AM-19850312-2387", "850312-2383", "ref 8503122383", "x 19850312 2384 y", "8503722389"] {
            assert!(contains_personal_identity_number(bad), "{bad}");
        }
        for ok in ["PM-2026-5501", "5000-K12345-26", "2026-11-29", "AB123456789"] {
            assert!(!contains_personal_identity_number(ok), "{ok}");
        }
    }

    fn errors(n: &ReferralNotice) -> Vec<&'static str> {
        n.validate().unwrap_err().0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn each_rule_rejects_with_its_field() {
        let mut n = example_notice();
        n.legal_basis.reason = "  ".into();
        assert_eq!(errors(&n), ["legal_basis.reason"]);

        let mut n = example_notice();
        n.subject.protected_identity = true;
        assert_eq!(errors(&n), ["subject.street_address"]);
        n.subject.street_address.clear();
        n.subject.postal_code.clear();
        n.subject.city.clear();
        n.validate().unwrap();

        let mut n = example_notice();
        n.sender_case_reference = "AM 19850312-2387".into();
        assert_eq!(errors(&n), ["sender_case_reference"]);

        let mut n = example_notice();
        n.consent.state = ConsentState::Refused;
        assert_eq!(errors(&n), ["consent.state"], "consent basis needs given consent");
        n.legal_basis.kind = LegalBasisKind::Osl10_18c;
        n.validate().unwrap();

        let mut n = example_notice();
        n.consent.obtained_at = None;
        n.consent.obtained_by.clear();
        assert_eq!(errors(&n), ["consent.obtained_by", "consent.obtained_at"]);

        let mut n = example_notice();
        n.subject.personal_identity_number = "198503122388".into();
        n.safe_contact.channel = ContactChannel::Email;
        n.children.push(Child { age: 18, present: false, witnessed: false });
        n.free_text = "x".repeat(MAX_FREE_TEXT_CHARS + 1);
        assert_eq!(
            errors(&n),
            ["subject.personal_identity_number", "safe_contact.address", "children.age", "free_text"],
            "every problem is reported at once"
        );
    }

    #[test]
    fn terminal_escapes_and_bidi_overrides_are_refused_in_every_text_field() {
        let mut n = example_notice();
        // Erase the line and print another address; write the clipboard (OSC 52).
        n.subject.street_address = "Storgatan 1\u{1b}[2K\rHamngatan 9".into();
        n.subject.city = "Huddinge\u{1b}]52;c;aGVqCg==\u{7}".into();
        n.sender_contact.name = "Anna \u{202E}nossral".into();
        n.safe_contact.best_time = "f\u{9b}2Jm".into();
        n.free_text = "fine\nsecond line\u{1b}[1A".into();
        n.legal_basis.reason = "isolated \u{2067}x\u{2069}".into();
        assert_eq!(
            errors(&n),
            [
                "subject.street_address",
                "subject.city",
                "safe_contact.best_time",
                "sender_contact.name",
                "legal_basis.reason",
                "free_text"
            ]
        );
        let msg = n.validate().unwrap_err().to_string();
        assert!(msg.contains(&format!("subject.city: {}", text::LINE_RULE)), "{msg}");
        assert!(msg.contains(&format!("free_text: {}", text::FREE_TEXT_RULE)), "{msg}");

        // Newline is allowed in free text only.
        let mut n = example_notice();
        n.free_text = "line one\nline two".into();
        n.legal_basis.reason = "first\nsecond".into();
        n.validate().unwrap();
        n.subject.name = "Anna\nAddress: elsewhere".into();
        assert_eq!(errors(&n), ["subject.name"]);
    }

    #[test]
    fn set_times_must_be_after_the_epoch() {
        let mut n = example_notice();
        n.consent.obtained_at = Some(Timestamp(0));
        n.respond_by = Some(Timestamp(-5));
        assert_eq!(errors(&n), ["consent.obtained_at", "respond_by"]);
    }

    #[test]
    fn error_messages_hold_no_values() {
        let mut n = example_notice();
        n.subject.personal_identity_number = "198503122388".into();
        n.sender_case_reference = "AM 19850312-2387".into();
        let msg = n.validate().unwrap_err().to_string();
        assert!(!msg.contains("198503") && !msg.contains("Andersson"), "{msg}");
    }

    #[test]
    fn wire_rejects_unspecified_enums_all_at_once() {
        let mut p = pb::ReferralNotice::from(&example_notice());
        p.consent.as_mut().unwrap().state = 0;
        p.urgency = 0;
        p.victim_aware = 99;
        let err = ReferralNotice::try_from(p).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["consent.state", "victim_aware", "urgency"]);
        assert_eq!(ReferralNotice::decode(&[0xff, 0xff]), Err(NoticeError::Decode));
    }

    #[test]
    fn dashed_wire_pin_decodes_to_the_twelve_digit_form() {
        // Found by fuzz/ (notice): a wire notice carrying the accepted
        // `YYYYMMDD-NNNN` form decoded with the '-', but `encode` strips it,
        // so decode(encode(n)) != n.
        let mut p = pb::ReferralNotice::from(&example_notice());
        p.subject.as_mut().unwrap().personal_identity_number = "19850312-2387".into();
        let n = ReferralNotice::decode(&prost::Message::encode_to_vec(&p)).unwrap();
        assert_eq!(n.subject.personal_identity_number, "198503122387");
        assert_eq!(ReferralNotice::decode(&n.encode()), Ok(n));
        // An invalid number keeps its '-' and is still refused.
        p.subject.as_mut().unwrap().personal_identity_number = "19850312-2388".into();
        let err = ReferralNotice::decode(&prost::Message::encode_to_vec(&p)).unwrap_err();
        assert!(matches!(&err, NoticeError::Invalid(e) if e.has("subject.personal_identity_number")), "{err:?}");
    }

    #[test]
    fn json_uses_readable_names() {
        let json = serde_json::to_value(example_notice()).unwrap();
        assert_eq!(json["legal_basis"]["kind"], "consent");
        assert_eq!(json["risk"]["tool"], "sara_sv");
        assert_eq!(json["requested_support"][0], "contact_within_24h");
        assert_eq!(json["consent"]["obtained_at"], "2026-11-29T08:15:00Z");
        let unknown = r#"{"subject": {"name": "x", "shoe_size": 42}}"#;
        let err = serde_json::from_str::<ReferralNotice>(unknown).unwrap_err().to_string();
        assert!(err.contains("shoe_size"), "{err}");
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "[a-zA-Z åäö]{1,40}"
    }

    prop_compose! {
        fn arb_notice()(name in arb_text(), reason in arb_text(), free in "[\\PC\n]{0,200}",
                        ages in proptest::collection::vec(0u32..18, 0..5),
                        urgency in prop_oneof![Just(Urgency::Immediate), Just(Urgency::Urgent), Just(Urgency::Routine)],
                        protected in any::<bool>()) -> ReferralNotice {
            let mut n = example_notice();
            n.subject.name = name;
            n.legal_basis.reason = reason;
            n.free_text = free;
            n.children = ages.into_iter().map(|age| Child { age, present: true, witnessed: false }).collect();
            n.urgency = urgency;
            if protected {
                n.subject.protected_identity = true;
                n.subject.street_address.clear();
                n.subject.postal_code.clear();
                n.subject.city.clear();
            }
            n
        }
    }

    proptest! {
        #[test]
        fn valid_notices_round_trip(n in arb_notice()) {
            prop_assume!(n.validate().is_ok());
            prop_assert_eq!(ReferralNotice::decode(&n.encode()).unwrap(), n);
        }
    }
}

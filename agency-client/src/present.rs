//! How a referral is put in front of a person on call: human labels for
//! every coded value (Swedish by default, English on request), local times
//! in Europe/Stockholm from the bundled time-zone database, the time left
//! ("svar inom 3 h 40 min"), the flags that must catch the eye, and the
//! triage order. Shared by `listen`, `show` and the web console, so that a
//! terminal and the page never say different things.
//!
//! Everything here returns plain, unescaped text: the terminal passes it
//! through [`crate::display::safe`], the console through its HTML escaping.
//! No I/O, and the clock is a parameter, so every sentence is tested exactly.

use std::cmp::Ordering;

use referral_proto::envelope::Urgency;
use referral_proto::notice::{
    ConsentState, ContactChannel, LegalBasisKind, ReferralNotice, RiskLevel, RiskTool, SupportKind, VictimAwareness,
};
use referral_proto::time::Timestamp;

use crate::alerts::IncomingReferral;

/// The time zone every time is shown in.
pub const TIME_ZONE: &str = "Europe/Stockholm";

/// The language of the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Sv,
    En,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sv" => Ok(Lang::Sv),
            "en" => Ok(Lang::En),
            other => Err(format!("unknown language {other:?}: use sv (Swedish) or en (English)")),
        }
    }
}

impl Lang {
    /// The BCP 47 tag (for `<html lang>`).
    pub fn tag(self) -> &'static str {
        match self {
            Lang::Sv => "sv",
            Lang::En => "en",
        }
    }
}

/// Something about a referral that must catch the eye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    DeadlinePassed,
    Escalated,
    ProtectedIdentity,
    HighRisk,
    Children,
}

impl Flag {
    /// A stable name (CSS class, JSON).
    pub fn code(self) -> &'static str {
        match self {
            Flag::DeadlinePassed => "deadline-passed",
            Flag::Escalated => "escalated",
            Flag::ProtectedIdentity => "protected-identity",
            Flag::HighRisk => "high-risk",
            Flag::Children => "children",
        }
    }
}

/// One labelled value of an opened referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub label: &'static str,
    pub value: String,
}

/// A titled group of rows, in the order a person on call needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub title: &'static str,
    pub rows: Vec<Row>,
}

/// Labels and times in one language and the Stockholm time zone.
#[derive(Debug, Clone)]
pub struct Presenter {
    pub lang: Lang,
    tz: jiff::tz::TimeZone,
}

/// The deadline a person on call works to: the broker's acknowledgement
/// deadline (after which the referral escalates), or the sender's
/// respond-by when that is earlier.
pub fn deadline(r: &IncomingReferral) -> Timestamp {
    match r.notice.respond_by {
        Some(t) if t < r.ack_deadline => t,
        _ => r.ack_deadline,
    }
}

/// Triage order: most urgent first, then the nearest deadline, then the
/// queue order.
pub fn triage_order(a: &IncomingReferral, b: &IncomingReferral) -> Ordering {
    a.urgency.cmp(&b.urgency).then(deadline(a).cmp(&deadline(b))).then(a.sequence.cmp(&b.sequence))
}

/// The flags of a referral at `now`, most pressing first.
pub fn flags(r: &IncomingReferral, now: Timestamp) -> Vec<Flag> {
    let n = &r.notice;
    let mut f = Vec::new();
    if deadline(r) <= now {
        f.push(Flag::DeadlinePassed);
    }
    if r.escalated {
        f.push(Flag::Escalated);
    }
    if n.subject.protected_identity {
        f.push(Flag::ProtectedIdentity);
    }
    if n.risk.level == Some(RiskLevel::High) {
        f.push(Flag::HighRisk);
    }
    if !n.children.is_empty() {
        f.push(Flag::Children);
    }
    f
}

impl Presenter {
    /// Loads Europe/Stockholm from the time-zone database built into the
    /// binary (no system files needed).
    pub fn new(lang: Lang) -> Self {
        let tz = jiff::tz::db().get(TIME_ZONE).expect("Europe/Stockholm is in the bundled time-zone database");
        Self { lang, tz }
    }

    fn t(&self, sv: &'static str, en: &'static str) -> &'static str {
        match self.lang {
            Lang::Sv => sv,
            Lang::En => en,
        }
    }

    /// `2026-12-02 13:07 CET`: local time with the zone's abbreviation, so
    /// that summer and winter time are never confused.
    pub fn local_time(&self, t: Timestamp) -> String {
        match jiff::Timestamp::from_millisecond(t.0) {
            Ok(ts) => ts.to_zoned_datetime(self.tz.clone()).strftime("%Y-%m-%d %H:%M %Z").to_string(),
            Err(_) => t.to_string(),
        }
    }

    /// A span as people say it: `3 h 40 min`, `2 d 5 h`, `under 1 min`.
    pub fn span(&self, millis: i64) -> String {
        let minutes = millis.max(0) / 60_000;
        let (d, h, m) = (minutes / 1440, (minutes % 1440) / 60, minutes % 60);
        let day = self.t("dygn", "d");
        match (d, h, m) {
            (0, 0, 0) => self.t("under 1 min", "less than 1 min").to_owned(),
            (0, 0, m) => format!("{m} min"),
            (0, h, 0) => format!("{h} h"),
            (0, h, m) => format!("{h} h {m} min"),
            (d, 0, _) => format!("{d} {day}"),
            (d, h, _) => format!("{d} {day} {h} h"),
        }
    }

    /// "svar inom 3 h 40 min" before the deadline, "tiden gick ut för
    /// 25 min sedan" after it.
    pub fn time_left(&self, deadline: Timestamp, now: Timestamp) -> String {
        let left = deadline.0 - now.0;
        if left > 0 {
            match self.lang {
                Lang::Sv => format!("svar inom {}", self.span(left)),
                Lang::En => format!("respond within {}", self.span(left)),
            }
        } else {
            match self.lang {
                Lang::Sv => format!("TIDEN GICK UT för {} sedan", self.span(-left)),
                Lang::En => format!("DEADLINE PASSED {} ago", self.span(-left)),
            }
        }
    }

    pub fn urgency(&self, u: Urgency) -> &'static str {
        match u {
            Urgency::Immediate => self.t("Akut", "Immediate"),
            Urgency::Urgent => self.t("Brådskande", "Urgent"),
            Urgency::Routine => self.t("Ej brådskande", "Routine"),
        }
    }

    pub fn flag(&self, f: Flag) -> &'static str {
        match f {
            Flag::DeadlinePassed => self.t("Tiden har gått ut", "Deadline passed"),
            Flag::Escalated => self.t("Eskalerad", "Escalated"),
            Flag::ProtectedIdentity => self.t("Skyddad identitet", "Protected identity"),
            Flag::HighRisk => self.t("Hög risk", "High risk"),
            Flag::Children => self.t("Barn i hushållet", "Children in the household"),
        }
    }

    pub fn channel(&self, c: ContactChannel) -> &'static str {
        match c {
            ContactChannel::Phone => self.t("Telefon", "Phone"),
            ContactChannel::Sms => self.t("SMS", "Text message"),
            ContactChannel::Email => self.t("E-post", "E-mail"),
            ContactChannel::ViaSender => self.t("Endast via avsändaren", "Only through the sender"),
        }
    }

    pub fn legal_basis(&self, k: LegalBasisKind) -> &'static str {
        match k {
            LegalBasisKind::Consent => self.t("Samtycke", "Consent"),
            LegalBasisKind::Osl10_18c => self.t(
                "Sekretessbrytande bestämmelse, OSL 10 kap. 18 c §",
                "Secrecy exemption, Public Access to Information and Secrecy Act ch. 10 s. 18 c",
            ),
            LegalBasisKind::ChildConcernReport => {
                self.t("Orosanmälan om barn (socialtjänstlagen)", "Report of concern for a child (Social Services Act)")
            }
            LegalBasisKind::Other => self.t("Annan grund", "Other basis"),
        }
    }

    pub fn consent(&self, s: ConsentState) -> &'static str {
        match s {
            ConsentState::Given => self.t("Samtycke har lämnats", "Consent given"),
            ConsentState::Refused => self.t("Samtycke har nekats", "Consent refused"),
            ConsentState::Withdrawn => self.t("Samtycket har återkallats", "Consent withdrawn"),
            ConsentState::NotSoughtUnsafe => {
                self.t("Inte efterfrågat: det var inte säkert att fråga", "Not sought: it was not safe to ask")
            }
        }
    }

    pub fn victim_aware(&self, v: VictimAwareness) -> &'static str {
        match v {
            VictimAwareness::Aware => self.t("Den utsatta vet om hänvisningen", "The victim knows of this referral"),
            VictimAwareness::NotAware => {
                self.t("Den utsatta vet INTE om hänvisningen", "The victim does NOT know of this referral")
            }
        }
    }

    pub fn risk_tool(&self, t: RiskTool) -> &'static str {
        match t {
            RiskTool::None => self.t("Ingen riskbedömning", "No risk assessment"),
            RiskTool::SaraSv => "SARA:SV",
            RiskTool::Check10 => "Check-10",
            RiskTool::Patriark => "PATRIARK",
            RiskTool::Freda => "FREDA",
            RiskTool::Other => self.t("Annat verktyg", "Another tool"),
        }
    }

    pub fn risk_level(&self, l: RiskLevel) -> &'static str {
        match l {
            RiskLevel::Low => self.t("låg risk", "low risk"),
            RiskLevel::Moderate => self.t("måttlig risk", "moderate risk"),
            RiskLevel::High => self.t("HÖG RISK", "HIGH RISK"),
        }
    }

    pub fn support(&self, s: SupportKind) -> &'static str {
        match s {
            SupportKind::TransportToInterview => self.t("Transport till förhör", "Transport to an interview"),
            SupportKind::ShelteredHousing => self.t("Skyddat boende", "Sheltered housing"),
            SupportKind::HomeVisit => self.t("Hembesök", "Home visit"),
            SupportKind::ContactWithin24h => self.t("Kontakt inom 24 timmar", "Contact within 24 hours"),
            SupportKind::PerpetratorProgramme => {
                self.t("Behandling för den som utövar våld", "Programme for the perpetrator")
            }
        }
    }

    fn yes_no(&self, b: bool) -> &'static str {
        if b { self.t("ja", "yes") } else { self.t("nej", "no") }
    }

    /// The sender as shown: its directory name, or its id when the
    /// directory has no name for it.
    pub fn sender(r: &IncomingReferral) -> &str {
        if r.sender_name.is_empty() { r.sender.as_str() } else { &r.sender_name }
    }

    /// One line of the triage list: urgency, sender, time left, flags.
    pub fn summary_line(&self, r: &IncomingReferral, now: Timestamp) -> String {
        let mut line = format!(
            "{} | {} | {} ({}) | {}",
            self.urgency(r.urgency).to_uppercase(),
            Self::sender(r),
            self.time_left(deadline(r), now),
            self.local_time(deadline(r)),
            r.message_id
        );
        let f = flags(r, now);
        if !f.is_empty() {
            let names: Vec<&str> = f.iter().map(|f| self.flag(*f)).collect();
            line.push_str(&format!(" | {}", names.join(", ")));
        }
        line
    }

    /// "12 hänvisningar väntar: 2 akuta, 5 brådskande, 5 ej brådskande;
    /// 3 har passerat tiden".
    pub fn summary_head(&self, waiting: &[&IncomingReferral], now: Timestamp) -> String {
        let count = |u| waiting.iter().filter(|r| r.urgency == u).count();
        let passed = waiting.iter().filter(|r| deadline(r) <= now).count();
        let (i, u, r) = (count(Urgency::Immediate), count(Urgency::Urgent), count(Urgency::Routine));
        match self.lang {
            Lang::Sv => format!(
                "{} {} väntar på kvittens: {i} akuta, {u} brådskande, {r} ej brådskande; {passed} har passerat tiden",
                waiting.len(),
                if waiting.len() == 1 { "hänvisning" } else { "hänvisningar" }
            ),
            Lang::En => format!(
                "{} {} waiting for acknowledgement: {i} immediate, {u} urgent, {r} routine; {passed} past the deadline",
                waiting.len(),
                if waiting.len() == 1 { "referral" } else { "referrals" }
            ),
        }
    }

    /// "already acknowledged by X at T".
    pub fn already_acknowledged(&self, by: &str, at: Timestamp) -> String {
        match self.lang {
            Lang::Sv => format!("redan kvitterad av {by} {}", self.local_time(at)),
            Lang::En => format!("already acknowledged by {by} at {}", self.local_time(at)),
        }
    }

    /// The opened referral, every field, in the order a person on call
    /// acts on it: who and how to reach them safely, the danger, the
    /// children, what is asked, then the legal ground and consent, then the
    /// sender's details.
    pub fn sections(&self, r: &IncomingReferral, now: Timestamp) -> Vec<Section> {
        let n: &ReferralNotice = &r.notice;
        let s = &n.subject;
        let c = &n.safe_contact;
        let row = |label, value: String| Row { label, value };
        let mut out = Vec::new();

        let mut head = vec![
            row(self.t("Brådska", "Urgency"), self.urgency(r.urgency).to_owned()),
            row(self.t("Från", "From"), format!("{} ({})", Self::sender(r), r.sender)),
            row(
                self.t("Svara senast", "Respond by"),
                format!("{} – {}", self.local_time(deadline(r)), self.time_left(deadline(r), now)),
            ),
            row(self.t("Kvittens senast", "Acknowledge by"), self.local_time(r.ack_deadline)),
            row(self.t("Skickad", "Sent"), self.local_time(r.created_at)),
        ];
        if let Some(t) = n.respond_by {
            head.push(row(
                self.t("Avsändaren vill ha svar senast", "The sender asks for an answer by"),
                self.local_time(t),
            ));
        }
        let f = flags(r, now);
        if !f.is_empty() {
            head.push(row(self.t("Observera", "Note"), f.iter().map(|f| self.flag(*f)).collect::<Vec<_>>().join(", ")));
        }
        head.push(row(self.t("Meddelande-id", "Message id"), r.message_id.to_string()));
        out.push(Section { title: self.t("Hänvisning", "Referral"), rows: head });

        let mut person = vec![row(self.t("Namn", "Name"), s.name.clone())];
        person.push(row(
            self.t("Personnummer", "Personal identity number"),
            if s.personal_identity_number.is_empty() { "–".into() } else { s.personal_identity_number.clone() },
        ));
        person.push(row(
            self.t("Skyddad identitet", "Protected identity"),
            if s.protected_identity {
                self.t(
                    "JA – lämna inte ut adress eller uppgifter om vistelseort",
                    "YES – never disclose an address or whereabouts",
                )
                .to_owned()
            } else {
                self.yes_no(false).to_owned()
            },
        ));
        if !(s.street_address.is_empty() && s.postal_code.is_empty() && s.city.is_empty()) {
            person.push(row(
                self.t("Adress", "Address"),
                format!("{}, {} {}", s.street_address, s.postal_code, s.city).trim().to_owned(),
            ));
        }
        person.push(row(
            self.t("Känner till hänvisningen", "Aware of the referral"),
            self.victim_aware(n.victim_aware).into(),
        ));
        out.push(Section { title: self.t("Den utsatta", "The person at risk"), rows: person });

        let mut contact = vec![row(self.t("Kanal", "Channel"), self.channel(c.channel).to_owned())];
        if !c.address.is_empty() {
            contact.push(row(self.t("Nummer/adress", "Number/address"), c.address.clone()));
        }
        if !c.best_time.is_empty() {
            contact.push(row(self.t("Bästa tid", "Best time"), c.best_time.clone()));
        }
        contact.push(row(
            self.t("Säkert att lämna meddelande", "Safe to leave a message"),
            if c.safe_to_leave_message {
                self.yes_no(true).to_owned()
            } else {
                self.t("NEJ – lämna inget meddelande", "NO – leave no message").to_owned()
            },
        ));
        if !c.language.is_empty() {
            contact.push(row(self.t("Språk", "Language"), c.language.clone()));
        }
        contact.push(row(self.t("Tolk behövs", "Interpreter needed"), self.yes_no(c.interpreter_needed).into()));
        // Safe contact comes before everything else one acts on.
        out.insert(1, Section { title: self.t("Säker kontaktväg", "Safe way to make contact"), rows: contact });

        let mut risk = vec![row(self.t("Verktyg", "Tool"), self.risk_tool(n.risk.tool).to_owned())];
        if let Some(l) = n.risk.level {
            risk.push(row(self.t("Nivå", "Level"), self.risk_level(l).to_owned()));
        }
        if let Some(t) = n.risk.assessed_at {
            risk.push(row(self.t("Bedömd", "Assessed"), self.local_time(t)));
        }
        out.push(Section { title: self.t("Risk", "Risk"), rows: risk });

        let kids = if n.children.is_empty() {
            vec![row(self.t("Barn", "Children"), self.t("Inga barn uppgivna", "No children reported").into())]
        } else {
            n.children
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let mut v = match self.lang {
                        Lang::Sv => format!("{} år", k.age),
                        Lang::En => format!("{} years", k.age),
                    };
                    v.push_str(&format!(
                        "; {}: {}; {}: {}",
                        self.t("närvarande", "present"),
                        self.yes_no(k.present),
                        self.t("bevittnade våldet", "witnessed the violence"),
                        self.yes_no(k.witnessed)
                    ));
                    row(if i == 0 { self.t("Barn", "Children") } else { "" }, v)
                })
                .collect()
        };
        out.push(Section { title: self.t("Barn i hushållet", "Children in the household"), rows: kids });

        let support = if n.requested_support.is_empty() {
            self.t("Inget särskilt begärt", "Nothing in particular").to_owned()
        } else {
            n.requested_support.iter().map(|s| self.support(*s)).collect::<Vec<_>>().join(", ")
        };
        out.push(Section {
            title: self.t("Begärt stöd", "Support requested"),
            rows: vec![row(self.t("Stöd", "Support"), support)],
        });

        let l = &n.legal_basis;
        let mut legal = vec![
            row(self.t("Grund", "Basis"), self.legal_basis(l.kind).to_owned()),
            row(self.t("Lagrum", "Citation"), l.citation.clone()),
            row(self.t("Skäl i detta ärende", "Reason in this case"), l.reason.clone()),
            row(self.t("Samtycke", "Consent"), self.consent(n.consent.state).to_owned()),
        ];
        if !n.consent.obtained_by.is_empty() {
            legal.push(row(self.t("Inhämtat av", "Obtained by"), n.consent.obtained_by.clone()));
        }
        if let Some(t) = n.consent.obtained_at {
            legal.push(row(self.t("Inhämtat", "Obtained"), self.local_time(t)));
        }
        out.push(Section { title: self.t("Rättslig grund och samtycke", "Legal basis and consent"), rows: legal });

        let p = &n.sender_contact;
        let mut sender = vec![
            row(self.t("Avsändarens ärende", "Sender's case"), n.sender_case_reference.clone()),
            row(self.t("Kontaktperson", "Contact person"), p.name.clone()),
        ];
        if !p.title.is_empty() {
            sender.push(row(self.t("Titel", "Title"), p.title.clone()));
        }
        sender.push(row(self.t("Telefon", "Phone"), p.phone.clone()));
        if !p.email.is_empty() {
            sender.push(row(self.t("E-post", "E-mail"), p.email.clone()));
        }
        if !n.free_text.is_empty() {
            sender.push(row(self.t("Övrigt", "Notes"), n.free_text.clone()));
        }
        out.push(Section { title: self.t("Avsändare", "Sender"), rows: sender });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use referral_proto::ids::{AgencyId, MessageId};
    use referral_proto::notice::example_notice;

    /// 2026-12-02 12:00:00 UTC = 13:00 CET.
    const NOON_UTC: i64 = 1_796_212_800_000;

    pub(crate) fn referral(urgency: Urgency, deadline_in_min: i64, seq: u64) -> IncomingReferral {
        let now = Timestamp(NOON_UTC);
        let mut notice = example_notice();
        notice.urgency = urgency;
        notice.respond_by = None;
        IncomingReferral {
            message_id: MessageId::generate(NOON_UTC + seq as i64),
            sender: AgencyId::new("polisen-huddinge").unwrap(),
            sender_name: "Polisen Huddinge".into(),
            sequence: seq,
            urgency,
            created_at: now.plus_millis(-600_000),
            ack_deadline: now.plus_millis(deadline_in_min * 60_000),
            redelivery: false,
            escalated: false,
            envelope_digest: referral_proto::Digest([0; 32]),
            notice,
        }
    }

    #[test]
    fn local_times_follow_stockholm_summer_and_winter_time() {
        let p = Presenter::new(Lang::Sv);
        assert_eq!(p.local_time(Timestamp(NOON_UTC)), "2026-12-02 13:00 CET");
        // 2026-07-01 12:00 UTC is 14:00 summer time.
        assert_eq!(p.local_time(Timestamp(1_782_907_200_000)), "2026-07-01 14:00 CEST");
    }

    #[test]
    fn time_left_in_words_and_passed_deadlines_flagged() {
        let now = Timestamp(NOON_UTC);
        let sv = Presenter::new(Lang::Sv);
        let en = Presenter::new(Lang::En);
        let at = |min: i64| now.plus_millis(min * 60_000 + 30_000);
        assert_eq!(sv.time_left(at(220), now), "svar inom 3 h 40 min");
        assert_eq!(en.time_left(at(220), now), "respond within 3 h 40 min");
        assert_eq!(sv.time_left(at(0), now), "svar inom under 1 min");
        assert_eq!(sv.time_left(at(60), now), "svar inom 1 h");
        assert_eq!(sv.time_left(at(3 * 1440 + 61), now), "svar inom 3 dygn 1 h");
        assert_eq!(en.time_left(at(3 * 1440), now), "respond within 3 d");
        assert_eq!(sv.time_left(now.plus_millis(-25 * 60_000), now), "TIDEN GICK UT för 25 min sedan");
        assert_eq!(en.time_left(now, now), "DEADLINE PASSED less than 1 min ago");
    }

    #[test]
    fn flags_and_triage_order() {
        let now = Timestamp(NOON_UTC);
        let mut late = referral(Urgency::Routine, -5, 1);
        late.notice.subject.protected_identity = true;
        late.notice.subject.street_address.clear();
        late.notice.subject.postal_code.clear();
        late.notice.subject.city.clear();
        let example_flags = flags(&late, now);
        assert_eq!(example_flags[0], Flag::DeadlinePassed);
        assert!(example_flags.contains(&Flag::ProtectedIdentity));
        let mut list = [
            referral(Urgency::Routine, 10, 2),
            referral(Urgency::Immediate, 15, 3),
            referral(Urgency::Urgent, 200, 4),
            referral(Urgency::Urgent, 100, 5),
            late,
        ];
        list.sort_by(triage_order);
        let seqs: Vec<u64> = list.iter().map(|r| r.sequence).collect();
        assert_eq!(seqs, [3, 5, 4, 1, 2], "urgency first, then the nearest deadline");
        // A sender's earlier respond-by is the deadline that counts.
        let mut r = referral(Urgency::Urgent, 240, 6);
        r.notice.respond_by = Some(now.plus_millis(30 * 60_000));
        assert_eq!(deadline(&r), now.plus_millis(30 * 60_000));
    }

    #[test]
    fn summary_line_and_head_exactly() {
        let now = Timestamp(NOON_UTC);
        let r = referral(Urgency::Urgent, 220, 7);
        let id = r.message_id;
        let sv = Presenter::new(Lang::Sv);
        let flags_sv = flags(&r, now).iter().map(|f| sv.flag(*f)).collect::<Vec<_>>().join(", ");
        assert_eq!(
            sv.summary_line(&r, now),
            format!("BRÅDSKANDE | Polisen Huddinge | svar inom 3 h 40 min (2026-12-02 16:40 CET) | {id} | {flags_sv}")
        );
        let late = referral(Urgency::Immediate, -3, 8);
        assert_eq!(
            sv.summary_head(&[&r, &late], now),
            "2 hänvisningar väntar på kvittens: 1 akuta, 1 brådskande, 0 ej brådskande; 1 har passerat tiden"
        );
        let en = Presenter::new(Lang::En);
        assert_eq!(
            en.summary_head(&[&late], now),
            "1 referral waiting for acknowledgement: 1 immediate, 0 urgent, 0 routine; 1 past the deadline"
        );
        assert_eq!(
            en.already_acknowledged("jour-1", Timestamp(NOON_UTC)),
            "already acknowledged by jour-1 at 2026-12-02 13:00 CET"
        );
        assert_eq!(
            sv.already_acknowledged("jour-1", Timestamp(NOON_UTC)),
            "redan kvitterad av jour-1 2026-12-02 13:00 CET"
        );
    }

    #[test]
    fn opened_referral_has_every_field_safe_contact_first_and_no_code_names() {
        let now = Timestamp(NOON_UTC);
        let r = referral(Urgency::Urgent, 220, 9);
        for lang in [Lang::Sv, Lang::En] {
            let p = Presenter::new(lang);
            let sections = p.sections(&r, now);
            let titles: Vec<&str> = sections.iter().map(|s| s.title).collect();
            let expected = match lang {
                Lang::Sv => [
                    "Hänvisning",
                    "Säker kontaktväg",
                    "Den utsatta",
                    "Risk",
                    "Barn i hushållet",
                    "Begärt stöd",
                    "Rättslig grund och samtycke",
                    "Avsändare",
                ],
                Lang::En => [
                    "Referral",
                    "Safe way to make contact",
                    "The person at risk",
                    "Risk",
                    "Children in the household",
                    "Support requested",
                    "Legal basis and consent",
                    "Sender",
                ],
            };
            assert_eq!(titles, expected);
            let all: String =
                sections.iter().flat_map(|s| s.rows.iter()).map(|r| format!("{}: {}\n", r.label, r.value)).collect();
            let n = &r.notice;
            for value in [
                &n.subject.name,
                &n.safe_contact.address,
                &n.legal_basis.citation,
                &n.legal_basis.reason,
                &n.sender_case_reference,
                &n.sender_contact.name,
                &n.sender_contact.phone,
            ] {
                assert!(all.contains(value.as_str()), "{value} missing from\n{all}");
            }
            for code in ["NotAware", "NotSoughtUnsafe", "Osl10_18c", "SaraSv", "ContactWithin24h", "Some(", "None"] {
                assert!(!all.contains(code), "code name {code} shown:\n{all}");
            }
        }
    }
}

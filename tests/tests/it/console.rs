//! The on-call web console (`agency-client console`) over HTTP against a
//! real broker: each attack on the page gets its exact refusal, and a
//! referral goes from the police to the page (live, by server-sent
//! events), is opened and taken, is seen as taken by a second console, and
//! a broker restart shows the banner and then recovers with nothing missed.

use std::sync::Arc;
use std::time::Duration;

use agency_client::console::{self, ConsoleArgs, refusal};
use agency_client::present::{Lang, Presenter};
use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use referral_proto::receipt::ReceiptStatus;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio_util::sync::CancellationToken;

use crate::support::waiting;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// One answer: status, headers (names lower-case), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A console under test and its address.
struct Console {
    port: u16,
    login: String,
    stop: CancellationToken,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_console(h: &Harness, profile: &str, on_alert: Option<String>) -> Console {
    console_with(h.client(profile).await, on_alert).await
}

/// A console on `client` (connected, or waiting for the broker).
async fn console_with(client: agency_client::Client, on_alert: Option<String>) -> Console {
    let client = Arc::new(client);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let running =
        console::start(client, listener, Lang::En, ConsoleArgs { port: 0, on_alert }, stop.clone()).await.unwrap();
    let login =
        running.login_url.strip_prefix(&format!("http://127.0.0.1:{}", running.addr.port())).unwrap().to_owned();
    Console { port: running.addr.port(), login, stop }
}

impl Console {
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A request as a browser on this computer would send it.
    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.0\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer { status, headers, body: body.to_owned() }
    }

    /// Uses the login address; returns the session cookie (`name=value`).
    async fn log_in(&self) -> String {
        let a = self.request("GET", &self.login.clone(), &[("Host", &self.host())], "").await;
        assert_eq!(a.status, 303, "{a:?}");
        let cookie = a.header("set-cookie").unwrap().to_owned();
        let (pair, attributes) = cookie.split_once("; ").unwrap();
        assert_eq!(attributes, "Path=/; HttpOnly; SameSite=Strict");
        pair.to_owned()
    }

    async fn get(&self, path: &str, cookie: &str) -> Answer {
        self.request("GET", path, &[("Host", &self.host()), ("Cookie", cookie)], "").await
    }

    /// The CSRF token of an opened referral's form.
    async fn csrf(&self, id: &str, cookie: &str) -> String {
        let page = self.get(&format!("/referral/{id}"), cookie).await.body;
        let at = page.find(r#"name="csrf" value=""#).expect("the ack form") + r#"name="csrf" value=""#.len();
        page[at..at + 64].to_owned()
    }

    async fn ack(&self, id: &str, cookie: &str, form: &str) -> Answer {
        let origin = self.origin();
        self.request(
            "POST",
            &format!("/referral/{id}/ack"),
            &[("Host", &self.host()), ("Cookie", cookie), ("Origin", &origin)],
            form,
        )
        .await
    }

    /// Opens the live updates; each event as (event, id, data).
    async fn events(&self, cookie: &str, last_id: Option<u64>) -> tokio::sync::mpsc::UnboundedReceiver<SseEvent> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut req = format!(
            "GET /events HTTP/1.0\r\nHost: {}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n",
            self.host()
        );
        if let Some(l) = last_id {
            req.push_str(&format!("Last-Event-ID: {l}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            let mut ev = SseEvent::default();
            let mut in_body = false;
            while let Ok(Some(line)) = lines.next_line().await {
                if !in_body {
                    in_body = line.is_empty();
                    continue;
                }
                if line.is_empty() {
                    if !ev.event.is_empty() && tx.send(std::mem::take(&mut ev)).is_err() {
                        return;
                    }
                } else if let Some(v) = line.strip_prefix("event: ") {
                    ev.event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    ev.id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    ev.data = v.to_owned();
                }
            }
        });
        rx
    }
}

/// Whether `html` holds an inline event handler (` onclick=` and the like).
fn has_inline_handler(html: &str) -> bool {
    html.match_indices(" on").any(|(i, _)| {
        let rest = &html[i + 3..];
        let name_len = rest.chars().take_while(char::is_ascii_lowercase).count();
        name_len > 0 && rest[name_len..].starts_with('=')
    })
}

#[derive(Debug, Default, Clone)]
struct SseEvent {
    event: String,
    id: Option<u64>,
    data: String,
}

/// The next event of `kind` (others are skipped).
async fn next_of(rx: &mut tokio::sync::mpsc::UnboundedReceiver<SseEvent>, kind: &str, data: &str) -> SseEvent {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let ev = rx.recv().await.expect("the event stream stays open");
            if ev.event == kind && ev.data.contains(data) {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} event with {data}"))
}

/// The paging command's output once it has `n` lines (it runs beside the console).
async fn paged_lines(file: &std::path::Path, n: usize) -> String {
    for _ in 0..600 {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().count() >= n {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the paging command never wrote {n} lines");
}

/// Polls the list until `want` holds (the view follows the alert stream).
async fn list_until(c: &Console, cookie: &str, want: impl Fn(&str) -> bool) -> String {
    for _ in 0..600 {
        let a = c.get("/list", cookie).await;
        assert_eq!(a.status, 200);
        if want(&a.body) {
            return a.body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the list never got there: {}", c.get("/list", cookie).await.body);
}

#[tokio::test]
async fn the_console_refuses_foreign_hosts_and_origins_requests_without_session_or_csrf_and_a_second_login() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let id = sent.message_id.to_string();
    let c = start_console(&h, SOCIAL_ONCALL, None).await;
    let host = c.host();

    // Never on anything but loopback.
    let open = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = console::start(
        Arc::new(h.client(SOCIAL_ONCALL).await),
        open,
        Lang::En,
        ConsoleArgs { port: 0, on_alert: None },
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), "the console listens on loopback only, not on 0.0.0.0");

    // DNS rebinding: a page of evil.example that resolves to 127.0.0.1.
    for bad_host in [format!("evil.example:{}", c.port), "127.0.0.1".to_owned(), format!("127.0.0.1:{}", c.port + 1)] {
        let a = c.request("GET", &c.login.clone(), &[("Host", &bad_host)], "").await;
        assert_eq!((a.status, a.body.trim()), (421, refusal::FOREIGN_HOST), "{bad_host}");
    }
    let a = c.request("GET", "/", &[], "").await;
    assert_eq!((a.status, a.body.trim()), (421, refusal::FOREIGN_HOST), "no Host at all");
    // No cookie, a made-up cookie.
    let a = c.get("/", "").await;
    assert_eq!((a.status, a.body.trim()), (401, refusal::NO_SESSION));
    assert_eq!(a.header("content-security-policy"), Some(CSP), "refusals carry the policy too");
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let a = c.get("/events", &format!("{}={}", console::COOKIE, "0".repeat(64))).await;
    assert_eq!((a.status, a.body.trim()), (401, refusal::NO_SESSION));

    // The login address works once.
    let cookie = c.log_in().await;
    let again = c.request("GET", &c.login.clone(), &[("Host", &host)], "").await;
    assert_eq!((again.status, again.body.trim()), (403, refusal::LOGIN_USED));
    let page = c.get("/", &cookie).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-security-policy"), Some(CSP));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("same-origin"));
    assert!(!page.body.contains("<script>") && !has_inline_handler(&page.body), "no inline script or handler");
    assert!(page.body.contains(r#"<script src="/static/console.js" defer></script>"#));

    // A foreign origin, even with the cookie (a browser would not send it
    // cross-site, but the console does not rely on that).
    let a = c.request("GET", "/", &[("Host", &host), ("Cookie", &cookie), ("Origin", "http://evil.example")], "").await;
    assert_eq!((a.status, a.body.trim()), (403, refusal::FOREIGN_ORIGIN));
    let a =
        c.request("GET", "/list", &[("Host", &host), ("Cookie", &cookie), ("Sec-Fetch-Site", "cross-site")], "").await;
    assert_eq!((a.status, a.body.trim()), (403, refusal::FOREIGN_ORIGIN));

    // Actions: without the CSRF token, with a wrong one, without Origin, without the cookie.
    let csrf = c.csrf(&id, &cookie).await;
    let a = c.ack(&id, &cookie, "by=jour-1").await;
    assert_eq!((a.status, a.body.trim()), (403, refusal::BAD_CSRF));
    let a = c.ack(&id, &cookie, &format!("csrf={}&by=jour-1", "0".repeat(64))).await;
    assert_eq!((a.status, a.body.trim()), (403, refusal::BAD_CSRF));
    let a = c
        .request(
            "POST",
            &format!("/referral/{id}/ack"),
            &[("Host", &host), ("Cookie", &cookie)],
            &format!("csrf={csrf}&by=jour-1"),
        )
        .await;
    assert_eq!((a.status, a.body.trim()), (403, refusal::NO_ORIGIN));
    let a = c
        .request(
            "POST",
            &format!("/referral/{id}/ack"),
            &[("Host", &host), ("Origin", &c.origin())],
            &format!("csrf={csrf}&by=jour-1"),
        )
        .await;
    assert_eq!((a.status, a.body.trim()), (401, refusal::NO_SESSION));
    // A staff label holding a personal identity number is refused with the reason.
    let a = c.ack(&id, &cookie, &format!("csrf={csrf}&by=jour+198503122387")).await;
    assert_eq!(a.status, 422);
    assert!(
        a.body.contains("The name must not contain a personal identity number: it is kept in the permanent log."),
        "{}",
        a.body
    );
    let oncall = h.client(SOCIAL_ONCALL).await;
    assert_eq!(waiting(&oncall).await, [sent.message_id], "no refused request acknowledged anything");

    // The session ends with the console.
    c.stop.cancel();
    let mut closed = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", c.port)).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "nothing listens any more");
}

#[tokio::test]
async fn a_referral_appears_live_is_opened_and_taken_a_second_console_sees_who_and_a_broker_restart_loses_nothing() {
    let mut h = Harness::start().await;
    let pages = h.dir().join("pages.txt");
    let c = start_console(&h, SOCIAL_ONCALL, Some(format!("echo \"$@\" >> {}", pages.display()))).await;
    let cookie = c.log_in().await;
    let mut events = c.events(&cookie, None).await;
    next_of(&mut events, "link", r#""up":true"#).await;

    // The police send; the page hears of it without a reload.
    let police = h.client(POLICE_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let notice = example_notice();
    let sent = police.send(&social, &notice).await.unwrap();
    let id = sent.message_id.to_string();
    let ev = next_of(&mut events, "referral", &id).await;
    assert_eq!(ev.id, Some(1), "the event id is the queue sequence");
    assert_eq!(ev.data, format!(r#"{{"message_id":"{id}","urgency":"Urgent"}}"#), "no personal data");
    let list = c.get("/list", &cookie).await.body;
    assert!(
        list.contains(&format!(
            r#"<a href="/referral/{id}">Open the referral from Polisen, lokalpolisområde Huddinge</a>"#
        )),
        "{list}"
    );
    assert!(list.contains("1 referral waiting for acknowledgement: 0 immediate, 1 urgent, 0 routine"), "{list}");
    assert!(!list.contains(&notice.subject.name), "the list shows no names");

    // Opened: every section, safe contact first, in plain language.
    let page = c.get(&format!("/referral/{id}"), &cookie).await.body;
    let order: Vec<usize> = [
        "<h2>Safe way to make contact</h2>",
        "<h2>The person at risk</h2>",
        "<h2>Risk</h2>",
        "<h2>Children in the household</h2>",
        "<h2>Support requested</h2>",
        "<h2>Legal basis and consent</h2>",
    ]
    .iter()
    .map(|s| page.find(s).unwrap_or_else(|| panic!("{s} missing:\n{page}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "sections out of order: {order:?}");
    assert!(page.contains(&format!("<dd>{}</dd>", console::esc(&notice.subject.name))), "{page}");
    assert!(page.contains(&format!("<dd>{}</dd>", console::esc(&notice.safe_contact.address))), "{page}");

    // The paging command got the four fields and nothing else.
    let deadline = {
        let r = match h.client(SOCIAL_ONCALL).await.fetch(sent.message_id).await.unwrap() {
            agency_client::alerts::Fetched::Waiting(agency_client::alerts::AlertEvent::Referral(r)) => r,
            other => panic!("{other:?}"),
        };
        agency_client::present::deadline(&r)
    };
    let paged = paged_lines(&pages, 1).await;
    assert_eq!(paged, format!("{id} urgent {deadline} {POLICE}\n"));

    // A second console of the same agency has the referral open too.
    let c2 = start_console(&h, SOCIAL_SYSTEM, None).await;
    let cookie2 = c2.log_in().await;
    let csrf2 = c2.csrf(&id, &cookie2).await;

    // The page offers a note for the sender and says who can read it.
    let csrf = c.csrf(&id, &cookie).await;
    let page = c.get(&format!("/referral/{id}"), &cookie).await.body;
    assert!(page.contains(r#"<textarea id="note" name="note" rows="3" maxlength="2044""#), "a note field: {page}");
    assert!(page.contains("It may therefore contain personal data"), "{page}");
    // A note the rules refuse: told why, nothing signed.
    let long = "x".repeat(2045);
    let a = c.ack(&id, &cookie, &format!("csrf={csrf}&by=jour-1&note={long}")).await;
    assert_eq!(a.status, 422);
    assert!(
        a.body
            .contains(r#"<p class="message" role="alert" id="message">The note is too long: at most 2044 bytes.</p>"#),
        "{}",
        a.body
    );
    let a = c.ack(&id, &cookie, &format!("csrf={csrf}&by=jour-1&note=ring%1B%5B2J")).await;
    assert_eq!(a.status, 422);
    assert!(a.body.contains("The note contains a control character: write plain text."), "{}", a.body);
    let oncall = h.client(SOCIAL_ONCALL).await;
    assert_eq!(waiting(&oncall).await, [sent.message_id], "nothing was signed");

    // Taken: the police see ACKNOWLEDGED by that person.
    // With a note (a personal identity number in it is fine: it is sealed to the sender).
    let a =
        c.ack(&id, &cookie, &format!("csrf={csrf}&by=jour-1&note=Ringer+m%C3%A5ls%C3%A4gande+198503122387+kl+8")).await;
    assert_eq!((a.status, a.header("location")), (303, Some(format!("/referral/{id}").as_str())), "{a:?}");
    let receipts = police.receipts(&[sent.message_id]).await.unwrap();
    let acked = receipts[0].1.iter().find(|r| r.statement.status == ReceiptStatus::Acknowledged).expect("ACKNOWLEDGED");
    let ack = acked.ack.as_ref().unwrap();
    assert_eq!(ack.statement.acknowledged_by, "jour-1");
    assert_eq!(police.open_note(acked).unwrap().as_deref(), Some("Ringer målsägande 198503122387 kl 8"));
    let taken = Presenter::new(Lang::En).already_acknowledged("jour-1", ack.statement.acknowledged_at);
    let page = c.get(&format!("/referral/{id}"), &cookie).await.body;
    assert!(page.contains(&format!(r#"<p class="taken" id="taken" role="status">{taken}</p>"#)), "{page}");
    assert!(!page.contains(r#"action="/referral/"#), "no form once taken: {page}");

    // The second console: its ack is told who was first, and so is its page.
    let a = c2.ack(&id, &cookie2, &format!("csrf={csrf2}&by=jour-2")).await;
    assert_eq!(a.status, 409);
    assert!(a.body.contains(&format!(r#"<p class="message" role="alert" id="message">{taken}</p>"#)), "{}", a.body);
    let page = c2.get(&format!("/referral/{id}"), &cookie2).await.body;
    assert!(page.contains(&taken), "{page}");
    let list2 = list_until(&c2, &cookie2, |l| l.contains("0 referrals waiting")).await;
    assert!(list2.contains(&taken), "{list2}");

    // The broker stops: the banner says so.
    h.stop().await;
    next_of(&mut events, "link", r#""up":false"#).await;
    let down = c.get("/list", &cookie).await.body;
    assert!(
        down.contains(
            r#"data-state="down"><strong>The connection to the broker is down: new referrals are not shown.</strong>"#
        ),
        "{down}"
    );
    // It comes back; a referral sent at once is not missed.
    h.restart().await;
    let police = h.client(POLICE_SYSTEM).await;
    let second = police.send(&social, &notice).await.unwrap();
    let id2 = second.message_id.to_string();
    next_of(&mut events, "link", r#""up":true"#).await;
    let ev = next_of(&mut events, "referral", &id2).await;
    assert_eq!(ev.id, Some(2));
    let list = list_until(&c, &cookie, |l| l.contains(&id2)).await;
    assert!(!list.contains("data-state="), "no banner once connected: {list}");

    // A page that lost its event stream catches up from its last event id.
    let mut resumed = c.events(&cookie, Some(1)).await;
    let ev = next_of(&mut resumed, "referral", "").await;
    assert_eq!((ev.id, ev.data.contains(&id2)), (Some(2), true), "{ev:?}");
    let paged = paged_lines(&pages, 2).await;
    assert_eq!(paged.lines().count(), 2, "paged once per referral: {paged}");
    assert!(paged.lines().nth(1).unwrap().starts_with(&format!("{id2} urgent ")), "{paged}");
    // And no more: the redelivery after the restart paged nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&pages).unwrap(), paged);
}

/// Started while the broker is down: the console starts all the same,
/// prints its login address, shows the banner, keeps retrying, and fills
/// in when the broker comes up.
#[tokio::test]
async fn a_console_started_while_the_broker_is_down_shows_the_banner_and_fills_in_when_it_comes_up() {
    let mut h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let id = sent.message_id.to_string();
    h.stop().await;

    // The commands that only answer once still refuse at once.
    let e = agency_client::Client::connect_dir(&h.profile(SOCIAL_ONCALL)).await.unwrap_err();
    assert!(e.to_string().starts_with("cannot reach the broker at "), "{e}");
    let client = agency_client::Client::connect_dir_waiting(&h.profile(SOCIAL_ONCALL)).await.unwrap();
    let c = console_with(client, None).await;
    let cookie = c.log_in().await;
    let down = list_until(&c, &cookie, |l| l.contains(r#"data-state="down""#)).await;
    assert!(
        down.contains(
            r#"data-state="down"><strong>The connection to the broker is down: new referrals are not shown.</strong>"#
        ),
        "{down}"
    );
    assert!(!down.contains(&id), "{down}");

    h.restart().await;
    let list = list_until(&c, &cookie, |l| l.contains(&id)).await;
    assert!(!list.contains("data-state="), "no banner once connected: {list}");
    assert!(list.contains("1 referral waiting for acknowledgement: 0 immediate, 1 urgent, 0 routine"), "{list}");
}

/// `--on-alert` pages each referral that arrives while the console runs,
/// and what already waited at start with one summary page, never one by
/// one (a restarted console does not page the backlog again).
#[tokio::test]
async fn on_alert_pages_new_referrals_one_by_one_and_what_waited_at_start_once_as_a_summary() {
    use referral_proto::envelope::Urgency;
    let h = Harness::start().await;
    let pages = h.dir().join("pages.txt");
    let pager = format!("printf '<%s>' \"$@\" >> {0}; echo >> {0}", pages.display());
    let police = h.client(POLICE_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let oncall = h.client(SOCIAL_ONCALL).await;
    let deadline_of = async |id| match oncall.fetch(id).await.unwrap() {
        agency_client::alerts::Fetched::Waiting(agency_client::alerts::AlertEvent::Referral(r)) => {
            agency_client::present::deadline(&r)
        }
        other => panic!("{other:?}"),
    };

    // Nothing waits: no page at start.
    let c = start_console(&h, SOCIAL_ONCALL, Some(pager.clone())).await;
    let cookie = c.log_in().await;
    list_until(&c, &cookie, |l| l.contains("0 referrals waiting")).await;
    let urgent = police.send(&social, &example_notice()).await.unwrap();
    let paged = paged_lines(&pages, 1).await;
    assert_eq!(paged, format!("<{}><urgent><{}><{POLICE}>\n", urgent.message_id, deadline_of(urgent.message_id).await));
    drop(c);

    // One more while no console runs; a new console pages once for both.
    let mut notice = example_notice();
    notice.urgency = Urgency::Immediate;
    let immediate = police.send(&social, &notice).await.unwrap();
    let earliest = deadline_of(urgent.message_id).await.min(deadline_of(immediate.message_id).await);
    let c = start_console(&h, SOCIAL_ONCALL, Some(pager.clone())).await;
    let cookie = c.log_in().await;
    list_until(&c, &cookie, |l| l.contains("2 referrals waiting")).await;
    let paged = paged_lines(&pages, 2).await;
    assert_eq!(paged.lines().nth(1).unwrap(), format!("<><immediate><{earliest}><{POLICE}><2>"), "{paged}");
    // A referral that arrives now is paged by itself, with its own fields.
    let third = police.send(&social, &example_notice()).await.unwrap();
    let paged = paged_lines(&pages, 3).await;
    assert_eq!(
        paged.lines().nth(2).unwrap(),
        format!("<{}><urgent><{}><{POLICE}>", third.message_id, deadline_of(third.message_id).await),
        "{paged}"
    );
    list_until(&c, &cookie, |l| l.contains("3 referrals waiting")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&pages).unwrap(), paged, "nothing from the backlog paged one by one");
}

/// A referral past its acknowledgement deadline escalates (on the broker's
/// manual clock): the list flags it and the opened referral says so.
#[tokio::test]
async fn an_escalated_referral_is_flagged_in_the_list_and_said_in_the_opened_referral() {
    const HOUR: Duration = Duration::from_secs(3600);
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let id = sent.message_id.to_string();
    // The on-call principal is the directory's escalation contact.
    let c = start_console(&h, SOCIAL_ONCALL, None).await;
    let cookie = c.log_in().await;
    let flag = r#"<span class="flag escalated">Escalated</span>"#;
    let list = list_until(&c, &cookie, |l| l.contains(&id)).await;
    assert!(!list.contains(flag), "not escalated yet: {list}");
    let page = c.get(&format!("/referral/{id}"), &cookie).await.body;
    assert!(!page.contains(r#"id="escalation""#), "not escalated yet: {page}");

    // An urgent referral's acknowledgement deadline is 4 h.
    h.advance(4 * HOUR - Duration::from_secs(60));
    h.state().committer.barrier().await;
    h.advance(2 * Duration::from_secs(60));
    let list = list_until(&c, &cookie, |l| l.contains(flag)).await;
    assert!(list.contains(&format!(r#"data-message-id="{id}""#)), "{list}");
    let page = c.get(&format!("/referral/{id}"), &cookie).await.body;
    assert!(
        page.contains(&format!(
            r#"<p class="escalation" id="escalation" role="status">{flag} The acknowledgement deadline has passed: the sender and the escalation contact have been told. It can still be acknowledged.</p>"#
        )),
        "{page}"
    );
}

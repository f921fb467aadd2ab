//! `agency-client console`: the on-call web console, a page served on
//! loopback by the process that holds the agency's keys (the broker never
//! sees plaintext; the page is only a view of this client).
//!
//! # Security of the page
//! - Bound to 127.0.0.1 only. Every request's `Host` must name this
//!   console (`127.0.0.1:PORT` or `localhost:PORT`), so a DNS-rebinding
//!   page cannot reach it under another name; an `Origin` or
//!   `Sec-Fetch-Site` that is not this console is refused.
//! - One login: the command prints a one-time address; its first use sets
//!   a `SameSite=Strict; HttpOnly` session cookie, any later use is
//!   refused. The session lives in this process's memory only and ends
//!   with the command.
//! - Every action (a POST) carries the session's CSRF token.
//! - A strict Content-Security-Policy (scripts and styles from this origin
//!   only, no inline script), `Cache-Control: no-store`, no framing, no
//!   referrer. The page keeps nothing in browser storage.
//! - Every string from elsewhere is HTML-escaped ([`esc`]); notifications
//!   and the `--on-alert` command carry no personal data.
//!
//! # Live updates
//! The alert stream ([`crate::live`]) feeds a [`View`]; every change is
//! sent to the page as a server-sent event. A new referral's event id is
//! its queue sequence, so a page that reconnects with `Last-Event-ID`
//! gets the referrals it missed; every other change makes the page reload
//! its list, which the server renders from the current view.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use referral_proto::envelope::Urgency;
use referral_proto::ids::MessageId;
use referral_proto::time::Timestamp;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::Client;
use crate::alerts::{AlertEvent, IncomingReferral};
use crate::live::{self, Backoff, LiveEvent};
use crate::present::{Lang, Presenter, deadline, flags, triage_order};

/// `agency-client console` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Port on 127.0.0.1 (0: a free one). The console never listens on
    /// another address.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The agency's paging command (SMS, phone gateway), run through
    /// `sh -c` with no personal data. For each referral that arrives while
    /// the console runs: four arguments, message id, urgency, deadline
    /// (RFC 3339, UTC) and sender agency id. Once at start, when referrals
    /// already wait: five, an empty message id, the most pressing urgency,
    /// the earliest deadline, the sender agency id (or `several`) and how
    /// many wait. What waited before the start is never paged one by one.
    #[arg(long, value_name = "COMMAND")]
    pub on_alert: Option<String>,
}

/// The name of the session cookie.
pub const COOKIE: &str = "console_session";

/// Exact refusals, one per rule (the attack tests check each).
pub mod refusal {
    pub const FOREIGN_HOST: &str =
        "refused: the Host header does not name this console (127.0.0.1 or localhost on its port)";
    pub const FOREIGN_ORIGIN: &str = "refused: the request comes from another site (Origin or Sec-Fetch-Site)";
    pub const NO_ORIGIN: &str = "refused: an action must carry the Origin header of this console";
    pub const NO_SESSION: &str =
        "refused: no valid session; open the one-time login address printed by agency-client console";
    pub const LOGIN_USED: &str =
        "refused: this login address has been used already; restart agency-client console for a new one";
    pub const BAD_CSRF: &str = "refused: the form's CSRF token is missing or wrong; reload the page";
}

/// The connection to the broker, as the banner shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting,
    Up,
    Down { error: String, since: Timestamp },
}

/// Who acknowledged a referral, as this console learnt it.
#[derive(Debug, Clone)]
pub struct Taken {
    pub by: String,
    pub at: Timestamp,
    pub urgency: Urgency,
    pub sender: String,
}

/// One change sent to the page.
#[derive(Debug, Clone)]
struct Update {
    /// The queue sequence of a new referral; none for other changes.
    id: Option<u64>,
    kind: &'static str,
    /// Never personal data: ids, urgency labels, connection state.
    data: String,
}

/// What the console knows, fed by the alert stream.
#[derive(Debug, Default)]
pub struct View {
    pub waiting: BTreeMap<MessageId, IncomingReferral>,
    pub taken: BTreeMap<MessageId, Taken>,
    pub unreadable: Vec<String>,
    pub link: Option<Link>,
    /// New referrals' updates, for `Last-Event-ID` catch-up.
    log: VecDeque<Update>,
    /// Whether the first catch-up of the alert stream has ended: what
    /// arrives afterwards and was not seen before is paged one by one.
    caught_up: bool,
}

const LOG_KEEP: usize = 20_000;

struct Session {
    id: String,
    csrf: String,
}

struct Shared {
    client: Arc<Client>,
    p: Presenter,
    port: u16,
    login: Mutex<Option<String>>,
    session: Mutex<Option<Session>>,
    view: Mutex<View>,
    updates: broadcast::Sender<Update>,
    on_alert: Option<String>,
}

/// A running console.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// The one-time login address.
    pub login_url: String,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn random_token() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut b).expect("system random");
    hex::encode(b)
}

/// Compares secrets without an early exit.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HTML-escapes text from elsewhere (the only way it enters a page).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `application/x-www-form-urlencoded` fields.
fn form_fields(body: &[u8]) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Starts the console on `listener` (which must be on loopback) and the
/// alert stream behind it; both stop when `shutdown` is cancelled.
pub async fn start(
    client: Arc<Client>,
    listener: tokio::net::TcpListener,
    lang: Lang,
    args: ConsoleArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    anyhow::ensure!(addr.ip().is_loopback(), "the console listens on loopback only, not on {}", addr.ip());
    let token = random_token();
    let (updates, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        client: client.clone(),
        p: Presenter::new(lang),
        port: addr.port(),
        login: Mutex::new(Some(token.clone())),
        session: Mutex::new(None),
        view: Mutex::new(View::default()),
        updates,
        on_alert: args.on_alert,
    });
    let feed = shared.clone();
    let stop_feed = shutdown.clone();
    tokio::spawn(async move {
        let c = feed.client.clone();
        tokio::select! {
            () = live::run(&c, Backoff::default(), |ev| { feed.apply(ev); true }) => {}
            () = stop_feed.cancelled() => {}
        }
    });
    let app = Router::new()
        .route("/", get(list_page))
        .route("/list", get(list_fragment))
        .route("/events", get(events))
        .route("/login/{token}", get(login))
        .route("/referral/{id}", get(referral_page))
        .route("/referral/{id}/ack", post(ack))
        .route("/static/console.js", get(script))
        .route("/static/console.css", get(style))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    });
    Ok(Running { addr, login_url: format!("http://127.0.0.1:{}/login/{token}", addr.port()), task })
}

/// `agency-client console`: starts the console, prints the login address,
/// and serves until interrupted (Ctrl-C or SIGTERM), which ends the session.
pub async fn run(client: Client, lang: Lang, args: ConsoleArgs) -> anyhow::Result<bool> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let shutdown = CancellationToken::new();
    let agency = client.principal().agency.clone();
    let running = start(Arc::new(client), listener, lang, args, shutdown.clone()).await?;
    crate::cli::write_line(format_args!("on-call console for {agency} on http://{}", running.addr))?;
    crate::cli::write_line(format_args!("open this one-time login address in a browser on this computer:"))?;
    crate::cli::write_line(format_args!("  {}", running.login_url))?;
    crate::cli::write_line(format_args!("the session ends when this command stops (Ctrl-C)"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
    let _ = running.task.await;
    Ok(true)
}

impl Shared {
    fn send(&self, view: &mut View, update: Update) {
        if update.id.is_some() {
            view.log.push_back(update.clone());
            if view.log.len() > LOG_KEEP {
                view.log.pop_front();
            }
        }
        let _ = self.updates.send(update);
    }

    /// Takes one event of the alert stream into the view.
    fn apply(&self, ev: LiveEvent) {
        let mut v = self.view.lock().expect("view lock");
        match ev {
            LiveEvent::Connected { .. } => {
                v.link = Some(Link::Up);
                self.send(&mut v, Update { id: None, kind: "link", data: r#"{"up":true}"#.into() });
            }
            LiveEvent::Down { error, .. } => {
                if !matches!(v.link, Some(Link::Down { .. })) {
                    v.link = Some(Link::Down { error, since: certs::now() });
                }
                self.send(&mut v, Update { id: None, kind: "link", data: r#"{"up":false}"#.into() });
            }
            LiveEvent::Alert(AlertEvent::Referral(r)) => {
                let id = r.message_id;
                if v.taken.contains_key(&id) {
                    return;
                }
                let new = !v.waiting.contains_key(&id);
                let data = serde_json::json!({
                    "message_id": id.to_string(), "urgency": self.p.urgency(r.urgency),
                })
                .to_string();
                if new && v.caught_up {
                    self.page(&r);
                }
                let seq = r.sequence;
                let escalated_changed = v.waiting.get(&id).is_some_and(|old| old.escalated != r.escalated);
                v.waiting.insert(id, *r);
                if new {
                    self.send(&mut v, Update { id: Some(seq), kind: "referral", data });
                } else if escalated_changed {
                    self.send(&mut v, Update { id: None, kind: "changed", data });
                }
            }
            LiveEvent::Alert(AlertEvent::Settled { message_id, acknowledged_by, at, .. }) => {
                self.settle(&mut v, message_id, acknowledged_by, at);
            }
            LiveEvent::Alert(AlertEvent::Escalation { message_id, .. }) => {
                if let Some(r) = v.waiting.get_mut(&message_id) {
                    r.escalated = true;
                }
                let data = serde_json::json!({"message_id": message_id.to_string()}).to_string();
                self.send(&mut v, Update { id: None, kind: "changed", data });
            }
            LiveEvent::Alert(AlertEvent::Unreadable { message_id, sequence, error }) => {
                let line = format!(
                    "message {} (queue position {sequence}) failed verification and is not shown: {error}",
                    message_id.map_or("?".into(), |m| m.to_string())
                );
                if !v.unreadable.contains(&line) {
                    v.unreadable.push(line);
                    self.send(&mut v, Update { id: None, kind: "changed", data: "{}".into() });
                }
            }
            LiveEvent::Alert(AlertEvent::CaughtUp { .. }) => {
                if !v.caught_up {
                    v.caught_up = true;
                    if let Some(args) = summary_page(&v.waiting) {
                        self.run_on_alert(args, "the waiting referrals".into());
                    }
                }
            }
            LiveEvent::Alert(AlertEvent::Heartbeat { .. }) => {}
        }
    }

    fn settle(&self, v: &mut View, id: MessageId, by: String, at: Timestamp) {
        if v.taken.contains_key(&id) {
            return;
        }
        let (urgency, sender) = v
            .waiting
            .remove(&id)
            .map(|r| (r.urgency, Presenter::sender(&r).to_owned()))
            .unwrap_or((Urgency::Routine, String::new()));
        v.taken.insert(id, Taken { by, at, urgency, sender });
        let data = serde_json::json!({"message_id": id.to_string()}).to_string();
        self.send(v, Update { id: None, kind: "settled", data });
    }

    /// Runs the agency's paging command for a new referral: message id,
    /// urgency, deadline and sender agency, never anything from the notice.
    fn page(&self, r: &IncomingReferral) {
        let args = vec![
            r.message_id.to_string(),
            r.urgency.as_str().to_owned(),
            deadline(r).to_string(),
            r.sender.as_str().to_owned(),
        ];
        self.run_on_alert(args, r.message_id.to_string());
    }

    /// Runs `--on-alert` with `args` (`id` names the page in warnings).
    fn run_on_alert(&self, args: Vec<String>, id: String) {
        let Some(command) = &self.on_alert else { return };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(command).arg("on-alert").args(args).stdin(std::process::Stdio::null()).kill_on_drop(false);
        match cmd.spawn() {
            Ok(mut child) => {
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(s) if s.success() => {}
                        Ok(s) => eprintln!("warning: the --on-alert command failed for {id} ({s})"),
                        Err(e) => eprintln!("warning: the --on-alert command for {id}: {e}"),
                    }
                });
            }
            Err(e) => eprintln!("warning: cannot run the --on-alert command for {id}: {e}"),
        }
    }

    fn csrf(&self) -> String {
        self.session.lock().expect("session lock").as_ref().map(|s| s.csrf.clone()).unwrap_or_default()
    }
}

/// The one page at start for what already waits (none when nothing
/// waits): an empty message id, the most pressing urgency, the earliest
/// deadline, the sender agency id when all come from one (else `several`)
/// and how many wait. No referral's id, and nothing from any notice.
pub fn summary_page(waiting: &BTreeMap<MessageId, IncomingReferral>) -> Option<Vec<String>> {
    let urgency = waiting.values().map(|r| r.urgency).min()?;
    let earliest = waiting.values().map(deadline).min()?;
    let mut senders = waiting.values().map(|r| r.sender.as_str());
    let first = senders.next()?;
    let sender = if senders.all(|s| s == first) { first } else { "several" };
    Some(vec![
        String::new(),
        urgency.as_str().to_owned(),
        earliest.to_string(),
        sender.to_owned(),
        waiting.len().to_string(),
    ])
}

fn refuse(status: StatusCode, text: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{text}\n")).into_response()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Every request passes here: Host, Origin and Sec-Fetch-Site, the
/// session (all but the login address and the static files), then the
/// headers every answer carries.
async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let ours = [format!("127.0.0.1:{}", s.port), format!("localhost:{}", s.port)];
    let mut answer = if !ours.iter().any(|h| h == host) {
        refuse(StatusCode::MISDIRECTED_REQUEST, refusal::FOREIGN_HOST)
    } else if let Some(origin) = headers.get(header::ORIGIN) {
        if ours.iter().any(|h| origin.as_bytes() == format!("http://{h}").as_bytes()) {
            check_session(&s, req, next).await
        } else {
            refuse(StatusCode::FORBIDDEN, refusal::FOREIGN_ORIGIN)
        }
    } else if headers.get("sec-fetch-site").is_some_and(|v| v != "same-origin" && v != "none") {
        refuse(StatusCode::FORBIDDEN, refusal::FOREIGN_ORIGIN)
    } else if req.method() == axum::http::Method::POST {
        refuse(StatusCode::FORBIDDEN, refusal::NO_ORIGIN)
    } else {
        check_session(&s, req, next).await
    };
    let h = answer.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not no-referrer: with it Chromium sends `Origin: null` on the page's own
    // form posts, which the Origin check must refuse. same-origin still sends
    // nothing to any other site.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    answer
}

async fn check_session(s: &Shared, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/login/") || path.starts_with("/static/") {
        return next.run(req).await;
    }
    let ok = {
        let session = s.session.lock().expect("session lock");
        match (session.as_ref(), cookie_value(req.headers(), COOKIE)) {
            (Some(sess), Some(given)) => same(&sess.id, given),
            _ => false,
        }
    };
    if ok { next.run(req).await } else { refuse(StatusCode::UNAUTHORIZED, refusal::NO_SESSION) }
}

async fn login(State(s): State<Arc<Shared>>, Path(token): Path<String>) -> Response {
    let mut login = s.login.lock().expect("login lock");
    let valid = login.as_ref().is_some_and(|t| same(t, &token));
    if !valid {
        return refuse(StatusCode::FORBIDDEN, refusal::LOGIN_USED);
    }
    // One use: the address is spent whoever opens it first.
    *login = None;
    let session = Session { id: random_token(), csrf: random_token() };
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", session.id);
    *s.session.lock().expect("session lock") = Some(session);
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/".to_owned()), (header::SET_COOKIE, cookie)], "logged in\n")
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found\n").into_response()
}

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("console/console.js")).into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("console/console.css")).into_response()
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// A whole page around `main`.
fn page(s: &Shared, title: &str, main: &str) -> String {
    let p = &s.p;
    let t = |sv: &'static str, en: &'static str| if p.lang == Lang::Sv { sv } else { en };
    format!(
        r##"<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/console.css">
<script src="/static/console.js" defer></script>
</head>
<body data-notify-title="{notify}" data-notify-body="{notify_body}" data-console-down="{console_down}" data-broker-down="{broker_down}">
<a class="skip" href="#main">{skip}</a>
<header>
<p class="agency">{agency}</p>
<button type="button" id="arm" aria-pressed="false">{arm}</button>
<span id="armed" role="status" hidden>{armed}</span>
</header>
<div id="console-banner" class="banner" role="alert" hidden></div>
<main id="main">
{main}
</main>
</body>
</html>
"##,
        lang = p.lang.tag(),
        title = esc(title),
        notify = esc(t("Ny hänvisning", "New referral")),
        notify_body = esc(t("Öppna konsolen", "Open the console")),
        console_down = esc(t(
            "Konsolen svarar inte: kör agency-client console igen",
            "The console does not answer: run agency-client console again"
        )),
        broker_down = esc(t(
            "Förbindelsen med brokern är nere: nya hänvisningar syns inte. Återansluter automatiskt.",
            "The connection to the broker is down: new referrals are not shown. Reconnecting automatically."
        )),
        skip = t("Till innehållet", "Skip to content"),
        agency = esc(&format!("{} – {}", t("Jourkonsol", "On-call console"), s.client.principal().agency)),
        arm = t("Slå på ljud och aviseringar", "Turn on sound and notifications"),
        armed = t("Ljud och aviseringar är på", "Sound and notifications are on"),
    )
}

/// The connection banner: empty when the broker connection is up.
fn banner(s: &Shared, v: &View) -> String {
    let p = &s.p;
    match &v.link {
        Some(Link::Up) => String::new(),
        None | Some(Link::Connecting) => format!(
            r#"<div class="banner link-down" role="alert" id="link-state" data-state="connecting">{}</div>"#,
            esc(if p.lang == Lang::Sv { "Ansluter till brokern …" } else { "Connecting to the broker …" })
        ),
        Some(Link::Down { error, since }) => format!(
            r#"<div class="banner link-down" role="alert" id="link-state" data-state="down"><strong>{}</strong> {} <span class="detail">{}</span></div>"#,
            esc(if p.lang == Lang::Sv {
                "Förbindelsen med brokern är nere: nya hänvisningar syns inte."
            } else {
                "The connection to the broker is down: new referrals are not shown."
            }),
            esc(&format!(
                "{} {}; {}",
                if p.lang == Lang::Sv { "Sedan" } else { "Since" },
                p.local_time(*since),
                if p.lang == Lang::Sv { "återansluter automatiskt." } else { "reconnecting automatically." }
            )),
            esc(error)
        ),
    }
}

/// The triage list (and the banner), as the page reloads it.
fn list_html(s: &Shared) -> String {
    let p = &s.p;
    let t = |sv: &'static str, en: &'static str| if p.lang == Lang::Sv { sv } else { en };
    let v = s.view.lock().expect("view lock");
    let now = certs::now();
    let mut list: Vec<&IncomingReferral> = v.waiting.values().collect();
    list.sort_by(|a, b| triage_order(a, b));
    let mut out = banner(s, &v);
    out.push_str(&format!(r#"<h1 id="summary">{}</h1>"#, esc(&p.summary_head(&list, now))));
    if !list.is_empty() {
        out.push_str(&format!(
            r#"<table class="triage"><caption>{}</caption><thead><tr><th scope="col">{}</th><th scope="col">{}</th><th scope="col">{}</th><th scope="col">{}</th><th scope="col">{}</th></tr></thead><tbody>"#,
            t("Väntar på kvittens, mest brådskande först", "Waiting for acknowledgement, most urgent first"),
            t("Brådska", "Urgency"),
            t("Från", "From"),
            t("Tid kvar", "Time left"),
            t("Observera", "Note"),
            t("Öppna", "Open"),
        ));
        for r in list {
            let f = flags(r, now);
            let tags: String =
                f.iter().map(|f| format!(r#"<span class="flag {}">{}</span> "#, f.code(), esc(p.flag(*f)))).collect();
            out.push_str(&format!(
                r#"<tr class="urgency-{u}" data-message-id="{id}"><td><span class="urgency">{ul}</span></td><td>{from}</td><td>{left}<br><span class="time">{at}</span></td><td>{tags}</td><td><a href="/referral/{id}">{open}</a></td></tr>"#,
                u = r.urgency.as_str(),
                id = r.message_id,
                ul = esc(p.urgency(r.urgency)),
                from = esc(Presenter::sender(r)),
                left = esc(&p.time_left(deadline(r), now)),
                at = esc(&p.local_time(deadline(r))),
                open = esc(&format!("{} {}", t("Öppna hänvisningen från", "Open the referral from"), Presenter::sender(r))),
            ));
        }
        out.push_str("</tbody></table>");
    }
    if !v.unreadable.is_empty() {
        out.push_str(&format!(
            r#"<h2>{}</h2><ul class="unreadable">"#,
            t("Kunde inte verifieras", "Failed verification")
        ));
        for line in &v.unreadable {
            out.push_str(&format!("<li>{}</li>", esc(line)));
        }
        out.push_str("</ul>");
    }
    if !v.taken.is_empty() {
        out.push_str(&format!(r#"<h2>{}</h2><ul class="taken">"#, t("Kvitterade", "Acknowledged")));
        for (id, tk) in v.taken.iter().rev().take(50) {
            out.push_str(&format!(
                r#"<li data-message-id="{id}">{} – {}: {}</li>"#,
                esc(p.urgency(tk.urgency)),
                esc(if tk.sender.is_empty() { "?" } else { &tk.sender }),
                esc(&p.already_acknowledged(&tk.by, tk.at))
            ));
        }
        out.push_str("</ul>");
    }
    out
}

async fn list_page(State(s): State<Arc<Shared>>) -> Response {
    let title = if s.p.lang == Lang::Sv { "Jourkonsol" } else { "On-call console" };
    let main = format!(r#"<div id="triage" data-live="list">{}</div>"#, list_html(&s));
    html(page(&s, title, &main))
}

async fn list_fragment(State(s): State<Arc<Shared>>) -> Response {
    html(list_html(&s))
}

fn referral_html(s: &Shared, id: MessageId, r: Option<&IncomingReferral>, message: &str) -> String {
    let p = &s.p;
    let t = |sv: &'static str, en: &'static str| if p.lang == Lang::Sv { sv } else { en };
    let now = certs::now();
    let v = s.view.lock().expect("view lock");
    let mut out = banner(s, &v);
    out.push_str(&format!(r#"<p><a href="/">{}</a></p>"#, t("← Till listan", "← Back to the list")));
    if !message.is_empty() {
        out.push_str(&format!(r#"<p class="message" role="alert" id="message">{}</p>"#, esc(message)));
    }
    if let Some(tk) = v.taken.get(&id) {
        out.push_str(&format!(
            r#"<p class="taken" id="taken" role="status">{}</p>"#,
            esc(&p.already_acknowledged(&tk.by, tk.at))
        ));
    }
    let Some(r) = r.or_else(|| v.waiting.get(&id)) else {
        if !v.taken.contains_key(&id) {
            out.push_str(&format!(
                "<p>{}</p>",
                esc(t("Hänvisningen väntar inte på kvittens hos er.", "This referral is not waiting for your agency."))
            ));
        }
        return out;
    };
    out.push_str(&format!(
        r#"<h1 id="title">{} – {}</h1>"#,
        esc(p.urgency(r.urgency)),
        esc(&format!("{} {}", t("hänvisning från", "referral from"), Presenter::sender(r)))
    ));
    if r.escalated {
        out.push_str(&format!(
            r#"<p class="escalation" id="escalation" role="status"><span class="flag escalated">{}</span> {}</p>"#,
            esc(p.flag(crate::present::Flag::Escalated)),
            esc(t(
                "Kvittenstiden har gått ut: avsändaren och eskaleringskontakten har fått besked. Den kan fortfarande kvitteras.",
                "The acknowledgement deadline has passed: the sender and the escalation contact have been told. It can still be acknowledged.",
            ))
        ));
    }
    for section in p.sections(r, now) {
        out.push_str(&format!("<section><h2>{}</h2><dl>", esc(section.title)));
        for row in &section.rows {
            out.push_str(&format!("<dt>{}</dt><dd>{}</dd>", esc(row.label), esc(&row.value)));
        }
        out.push_str("</dl></section>");
    }
    if !v.taken.contains_key(&id) {
        out.push_str(&format!(
            r#"<form method="post" action="/referral/{id}/ack" class="ack">
<h2>{h}</h2>
<input type="hidden" name="csrf" value="{csrf}">
<label for="by">{by}</label>
<input id="by" name="by" required maxlength="64" autocomplete="off" aria-describedby="by-help">
<p id="by-help" class="help">{help}</p>
<label for="note">{note}</label>
<textarea id="note" name="note" rows="3" maxlength="{max}" autocomplete="off" aria-describedby="note-help"></textarea>
<p id="note-help" class="help">{note_help}</p>
<button type="submit" id="ack">{ack}</button>
</form>"#,
            h = t("Kvittera", "Acknowledge"),
            csrf = esc(&s.csrf()),
            by = t("Ditt namn eller jour-id", "Your name or on-call id"),
            help = t(
                "Sparas i den permanenta loggen: skriv inget personnummer.",
                "Kept in the permanent log: no personal identity number."
            ),
            note = t("Anteckning till avsändaren (frivillig)", "Note to the sender (optional)"),
            max = referral_proto::ack::MAX_NOTE_BYTES,
            note_help = t(
                "Krypteras så att bara den avsändande myndigheten kan läsa den; förmedlaren ser den aldrig och den sparas inte i loggen. Den får därför innehålla personuppgifter, men skriv bara det avsändaren behöver.",
                "Encrypted so that only the sending agency can read it; the broker never sees it and it is not kept in the log. It may therefore contain personal data, but write only what the sender needs."
            ),
            ack = t("Jag tar den", "I take it"),
        ));
    }
    out
}

async fn referral_page(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<MessageId>() else {
        return refuse(StatusCode::NOT_FOUND, "not found: that is not a message id");
    };
    let title = if s.p.lang == Lang::Sv { "Hänvisning" } else { "Referral" };
    let known = {
        let v = s.view.lock().expect("view lock");
        v.waiting.contains_key(&id) || v.taken.contains_key(&id)
    };
    let mut message = String::new();
    if !known {
        // Not in the view (yet): ask the broker for this one message.
        match s.client.fetch(id).await {
            Ok(crate::alerts::Fetched::Waiting(ev)) => s.apply(LiveEvent::Alert(ev)),
            Ok(crate::alerts::Fetched::Acknowledged(r)) => {
                if let Some(a) = &r.ack {
                    let mut v = s.view.lock().expect("view lock");
                    s.settle(&mut v, id, a.statement.acknowledged_by.clone(), a.statement.acknowledged_at);
                }
            }
            Ok(crate::alerts::Fetched::Expired(r)) => {
                message = crate::ClientError::Expired { message_id: id, at: r.statement.at }.to_string();
            }
            Err(e) => message = crate::error_chain(&e),
        }
    }
    let main =
        format!(r#"<div data-live="referral" data-message-id="{id}">{}</div>"#, referral_html(&s, id, None, &message));
    html(page(&s, title, &main))
}

async fn ack(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let fields = form_fields(&body);
    let given = fields.get("csrf").map(String::as_str).unwrap_or("");
    let expected = s.csrf();
    if expected.is_empty() || !same(&expected, given) {
        return refuse(StatusCode::FORBIDDEN, refusal::BAD_CSRF);
    }
    let Ok(id) = id.parse::<MessageId>() else {
        return refuse(StatusCode::NOT_FOUND, "not found: that is not a message id");
    };
    let by = fields.get("by").map(|b| b.trim().to_owned()).unwrap_or_default();
    let t = |sv: &'static str, en: &'static str| if s.p.lang == Lang::Sv { sv } else { en };
    // The note is sealed to the sending agency (PROTOCOL.md 7.4): only the
    // sender can read it, and the broker keeps no copy in its log.
    let note = fields.get("note").map(|n| n.trim_end().to_owned()).filter(|n| !n.trim().is_empty());
    let waiting = s.view.lock().expect("view lock").waiting.get(&id).map(|r| (r.envelope_digest, r.sender.clone()));
    let result = match &waiting {
        Some((d, sender)) => s.client.ack_digest_with_note(id, *d, &by, note.as_deref().map(|n| (n, sender))).await,
        None => s.client.ack_with_note(id, &by, note.as_deref()).await,
    }
    .map_err(|e| match e {
        crate::ClientError::Ack(referral_proto::ack::AckError::AcknowledgedByPersonalNumber) => t(
            "Namnet får inte innehålla ett personnummer: det sparas i den permanenta loggen.",
            "The name must not contain a personal identity number: it is kept in the permanent log.",
        )
        .to_owned(),
        crate::ClientError::Ack(referral_proto::ack::AckError::Note(n)) => match n {
            referral_proto::ack::NoteError::TooLarge { max, .. } => format!(
                "{} {max} {}",
                t("Anteckningen är för lång: högst", "The note is too long: at most"),
                t("byte.", "bytes.")
            ),
            referral_proto::ack::NoteError::Text => t(
                "Anteckningen innehåller ett styrtecken: skriv vanlig text.",
                "The note contains a control character: write plain text.",
            )
            .to_owned(),
            other => other.to_string(),
        },
        crate::ClientError::Ack(_) => {
            t("Skriv ett namn eller jour-id, 1 till 64 tecken.", "Write a name or on-call id, 1 to 64 characters.")
                .to_owned()
        }
        e => crate::error_chain(&e),
    });
    match result {
        Ok(acked) => {
            let (who, at) = acked
                .receipt
                .ack
                .as_ref()
                .map(|a| (a.statement.acknowledged_by.clone(), a.statement.acknowledged_at))
                .unwrap_or_default();
            {
                let mut v = s.view.lock().expect("view lock");
                s.settle(&mut v, id, who.clone(), at);
            }
            if acked.already_acknowledged {
                let main = format!(
                    r#"<div data-live="referral" data-message-id="{id}">{}</div>"#,
                    referral_html(&s, id, None, &s.p.already_acknowledged(&who, at))
                );
                return (StatusCode::CONFLICT, html(page(&s, t("Redan kvitterad", "Already acknowledged"), &main)))
                    .into_response();
            }
            (StatusCode::SEE_OTHER, [(header::LOCATION, format!("/referral/{id}"))], "acknowledged\n").into_response()
        }
        Err(message) => {
            let main = format!(
                r#"<div data-live="referral" data-message-id="{id}">{}</div>"#,
                referral_html(&s, id, None, &message)
            );
            (StatusCode::UNPROCESSABLE_ENTITY, html(page(&s, t("Inte kvitterad", "Not acknowledged"), &main)))
                .into_response()
        }
    }
}

/// The live updates: first every new referral after `Last-Event-ID`, then
/// each change as it happens.
async fn events(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let last: Option<u64> = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    // Subscribe before reading the log, so nothing falls between the two.
    let rx = s.updates.subscribe();
    let (backlog, link_up) = {
        let v = s.view.lock().expect("view lock");
        let backlog: Vec<Update> =
            v.log.iter().filter(|u| last.is_some_and(|l| u.id.is_some_and(|id| id > l))).cloned().collect();
        (backlog, v.link == Some(Link::Up))
    };
    let high = backlog.iter().filter_map(|u| u.id).max().or(last);
    let first = Update { id: None, kind: "link", data: format!(r#"{{"up":{link_up}}}"#) };
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |u| async move {
        match u {
            Ok(u) if u.id.is_some_and(|id| high.is_some_and(|h| id <= h)) => None,
            Ok(u) => Some(u),
            // Fell behind: tell the page to reload its list.
            Err(_) => Some(Update { id: None, kind: "changed", data: "{}".into() }),
        }
    });
    let stream = futures_util::stream::iter(std::iter::once(first).chain(backlog)).chain(live).map(|u| {
        let mut e = Event::default().event(u.kind).data(u.data);
        if let Some(id) = u.id {
            e = e.id(id.to_string());
        }
        Ok::<_, std::convert::Infallible>(e)
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_forms() {
        assert_eq!(esc(r#"<script>"a"&'b'</script>"#), "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;");
        let f = form_fields(b"csrf=ab12&by=jour+1&note=ring%20f%C3%B6rst%21&x=%zz");
        assert_eq!(f["csrf"], "ab12");
        assert_eq!(f["by"], "jour 1");
        assert_eq!(f["note"], "ring först!");
        assert_eq!(f["x"], "%zz");
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    fn referral(sender: &str, urgency: Urgency, ack_deadline: i64) -> IncomingReferral {
        let mut notice = referral_proto::notice::example_notice();
        notice.respond_by = None;
        IncomingReferral {
            message_id: MessageId::generate(ack_deadline),
            sender: referral_proto::ids::AgencyId::new(sender).unwrap(),
            sender_name: "Namn".into(),
            sequence: 1,
            urgency,
            created_at: Timestamp(0),
            ack_deadline: Timestamp(ack_deadline),
            redelivery: false,
            escalated: false,
            envelope_digest: referral_proto::Digest([0; 32]),
            notice,
        }
    }

    /// The summary page at start: most pressing urgency, earliest deadline,
    /// one sender or `several`, the count; none when nothing waits.
    #[test]
    fn the_summary_page_names_no_referral() {
        let mut waiting = BTreeMap::new();
        assert_eq!(summary_page(&waiting), None);
        for r in [
            referral("polisen-huddinge", Urgency::Routine, 1_800_000_000_000),
            referral("polisen-huddinge", Urgency::Urgent, 1_900_000_000_000),
        ] {
            waiting.insert(r.message_id, r);
        }
        let early = Timestamp(1_800_000_000_000).to_string();
        assert_eq!(summary_page(&waiting).unwrap(), ["", "urgent", early.as_str(), "polisen-huddinge", "2"]);
        let r = referral("polisen-botkyrka", Urgency::Routine, 1_850_000_000_000);
        waiting.insert(r.message_id, r);
        assert_eq!(summary_page(&waiting).unwrap(), ["", "urgent", early.as_str(), "several", "3"]);
    }
}

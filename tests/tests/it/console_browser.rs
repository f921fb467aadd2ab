//! The on-call console in a real browser (Debian's Chromium, headless,
//! driven over WebDriver by chromedriver) against a real broker: a
//! referral appears without a reload, is opened and taken from the
//! keyboard, a second console shows who took it, a broker restart shows
//! the banner and recovers with nothing missed; armed from the keyboard, a
//! new referral plays a tone and raises a notification that names only its
//! urgency (recorded in the page through WebDriver); axe-core (from the npm
//! registry, installed by `.ci/run` into `target/browser-test`) finds no
//! serious or critical accessibility violation; screenshots of the list and
//! of an opened referral are saved in `target/screenshots/`, and with
//! `UPDATE_SCREENSHOTS=1` into `docs/screenshots/`, which the README shows.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agency_client::console::{self, ConsoleArgs};
use agency_client::present::{Lang, Presenter};
use fantoccini::key::Key;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use referral_proto::receipt::ReceiptStatus;
use tokio_util::sync::CancellationToken;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// axe-core's browser build, installed by `.ci/run` (or `AXE_CORE_JS`).
fn axe_source() -> String {
    let path = std::env::var_os("AXE_CORE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/browser-test/node_modules/axe-core/axe.min.js"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; install it with `npm install --no-save --prefix target/browser-test axe-core@4` (as .ci/run does)",
            path.display()
        )
    })
}

/// chromedriver on a free port, ended when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = free_port().port();
        let child = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; .ci/run installs it)");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Self { child, url: format!("http://127.0.0.1:{port}") };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver did not start");
    }

    async fn browser(&self) -> Browser {
        let mut caps = serde_json::Map::new();
        // Notifications allowed, as a person on call would allow them for
        // this page; sound without a gesture is not needed (arming is a click).
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"],
                "prefs": {"profile.default_content_setting_values.notifications": 1},
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector).capabilities(caps).connect(&self.url).await.expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_console(h: &Harness, profile: &str) -> (u16, String, CancellationToken) {
    let client = Arc::new(h.client(profile).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let running = console::start(client, listener, Lang::En, ConsoleArgs { port: 0, on_alert: None }, stop.clone())
        .await
        .unwrap();
    (running.addr.port(), running.login_url, stop)
}

/// Waits until the page has an element matching `css`.
async fn appears(b: &Browser, css: &str) -> fantoccini::elements::Element {
    match b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(css)).await {
        Ok(e) => e,
        Err(e) => {
            let url = b.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            let page = b.source().await.unwrap_or_default();
            panic!("{css} never appeared ({e}) on {url}:\n{page}")
        }
    }
}

/// The text of the first element matching `css`, read in one step (the
/// list is re-rendered on every change, so a held element can go stale).
async fn text_of(b: &Browser, css: &str) -> String {
    for _ in 0..300 {
        let v = b
            .execute(
                "const e = document.querySelector(arguments[0]); return e && e.textContent;",
                vec![serde_json::json!(css)],
            )
            .await
            .unwrap();
        if let Some(t) = v.as_str() {
            return t.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = b.current_url().await.map(|u| u.to_string()).unwrap_or_default();
    panic!("{css} never appeared on {url}:\n{}", b.source().await.unwrap_or_default());
}

/// Waits until nothing on the page matches `css`.
async fn disappears(b: &Browser, css: &str) {
    for _ in 0..600 {
        if b.find_all(Locator::Css(css)).await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never went away");
}

/// Runs axe-core in the page: the serious and critical violations.
async fn axe(b: &Browser, axe: &str) -> Vec<String> {
    // Run as the body of WebDriver's script function (not subject to the
    // page's CSP, which forbids eval and inline script).
    let load = format!("{axe}\n;if (typeof axe !== 'undefined') {{ window.axe = axe; }}\nreturn typeof window.axe;");
    assert_eq!(b.execute(&load, vec![]).await.expect("axe-core loads"), serde_json::json!("object"));
    let found = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document).then(r => done(r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.impact + ' ' + v.id + ': ' + v.help + ' (' + v.nodes.map(n => n.target.join(' ')).join(', ') + ')')));",
            vec![],
        )
        .await
        .expect("axe-core runs");
    found.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

/// Presses Tab until the focused element matches `css` (at most 30 times).
async fn tab_to(b: &Browser, css: &str) {
    for _ in 0..30 {
        let focused: bool = b
            .execute("return document.activeElement.matches(arguments[0]);", vec![serde_json::json!(css)])
            .await
            .unwrap()
            .as_bool()
            .unwrap();
        if focused {
            return;
        }
        b.active_element().await.unwrap().send_keys(&Key::Tab.to_string()).await.unwrap();
    }
    panic!("{css} cannot be reached with the Tab key");
}

async fn screenshot(b: &Browser, name: &str) {
    let dir = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        workspace().join("docs/screenshots")
    } else {
        workspace().join("target/screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), b.screenshot().await.unwrap()).unwrap();
}

#[tokio::test]
async fn in_a_browser_a_referral_appears_is_taken_from_the_keyboard_and_a_broker_restart_loses_nothing() {
    let axe_js = axe_source();
    let mut h = Harness::start().await;
    let driver = Driver::start().await;
    let b = driver.browser().await;
    let (port, login, _stop) = start_console(&h, SOCIAL_ONCALL).await;

    // Log in; the empty list.
    b.goto(&login).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("http://127.0.0.1:{port}/"));
    let summary = text_of(&b, "#summary").await;
    assert!(summary.starts_with("0 referrals waiting"), "{summary}");
    disappears(&b, "#link-state").await;
    let storage: i64 = b
        .execute("return localStorage.length + sessionStorage.length + document.cookie.length;", vec![])
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    assert_eq!(storage, 0, "nothing in browser storage, and the session cookie is HttpOnly");

    // The police send: the row appears without a reload.
    let police = h.client(POLICE_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let mut notice = example_notice();
    notice.respond_by = None;
    let sent = police.send(&social, &notice).await.unwrap();
    let id = sent.message_id.to_string();
    appears(&b, &format!("tr[data-message-id='{id}']")).await;
    screenshot(&b, "console-list.png").await;
    assert_eq!(axe(&b, &axe_js).await, Vec::<String>::new(), "the list");

    // Opened from the keyboard.
    tab_to(&b, &format!("a[href='/referral/{id}']")).await;
    b.active_element().await.unwrap().send_keys(&Key::Enter.to_string()).await.unwrap();
    assert_eq!(text_of(&b, "#title").await, "Urgent – referral from Polisen, lokalpolisområde Huddinge");
    let text = text_of(&b, "main").await;
    assert!(text.contains(&notice.subject.name) && text.contains(&notice.safe_contact.address), "{text}");
    screenshot(&b, "console-referral.png").await;
    assert_eq!(axe(&b, &axe_js).await, Vec::<String>::new(), "the opened referral");

    // Taken from the keyboard: the name, Enter on the button.
    tab_to(&b, "#by").await;
    b.active_element().await.unwrap().send_keys("jour-1").await.unwrap();
    tab_to(&b, "#ack").await;
    b.active_element().await.unwrap().send_keys(&Key::Enter.to_string()).await.unwrap();
    let taken = text_of(&b, "#taken").await;
    let receipts = police.receipts(&[sent.message_id]).await.unwrap();
    let acked = receipts[0].1.iter().find(|r| r.statement.status == ReceiptStatus::Acknowledged).expect("ACKNOWLEDGED");
    let at = acked.ack.as_ref().unwrap().statement.acknowledged_at;
    assert_eq!(taken, Presenter::new(Lang::En).already_acknowledged("jour-1", at));

    // A second console of the same agency shows who took it.
    let (_, login2, _stop2) = start_console(&h, SOCIAL_SYSTEM).await;
    let b2 = driver.browser().await;
    b2.goto(&login2).await.unwrap();
    appears(&b2, "#summary").await;
    b2.goto(&format!("{}/referral/{id}", login2.split("/login/").next().unwrap())).await.unwrap();
    assert_eq!(text_of(&b2, "#taken").await, taken);
    b2.close().await.unwrap();

    // The broker stops: the banner; it restarts: a referral sent at once appears.
    b.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    appears(&b, "#summary").await;
    h.stop().await;
    let banner = text_of(&b, "#link-state[data-state='down'] strong").await;
    assert_eq!(banner, "The connection to the broker is down: new referrals are not shown.");
    h.restart().await;
    let police = h.client(POLICE_SYSTEM).await;
    let second = police.send(&social, &notice).await.unwrap();
    appears(&b, &format!("tr[data-message-id='{}']", second.message_id)).await;
    disappears(&b, "#link-state").await;
    b.close().await.unwrap();
}

/// Records every notification the page raises and every tone it plays,
/// passing both on to the browser's own. Installed through WebDriver (the
/// page's CSP forbids inline script, not the driver's). Returns the
/// browser's notification permission.
const RECORDER: &str = "
    window.__rec = { notes: [], tones: [] };
    const Real = window.Notification;
    function Recording(title, options) {
        window.__rec.notes.push({ title: String(title), options: options || {} });
        try { return new Real(title, options); } catch (e) { return {}; }
    }
    Object.defineProperty(Recording, 'permission', { get: function () { return Real.permission; } });
    Recording.requestPermission = function () { return Real.requestPermission.apply(Real, arguments); };
    window.Notification = Recording;
    const start = OscillatorNode.prototype.start;
    OscillatorNode.prototype.start = function () {
        window.__rec.tones.push(this.frequency.value);
        return start.apply(this, arguments);
    };
    return Real.permission;";

async fn recorded(b: &Browser) -> serde_json::Value {
    b.execute("return window.__rec;", vec![]).await.unwrap()
}

#[tokio::test]
async fn in_a_browser_arming_from_the_keyboard_gives_a_tone_and_a_notification_without_personal_data() {
    let h = Harness::start().await;
    let driver = Driver::start().await;
    let b = driver.browser().await;
    let (_port, login, _stop) = start_console(&h, SOCIAL_ONCALL).await;
    b.goto(&login).await.unwrap();
    appears(&b, "#summary").await;
    disappears(&b, "#link-state").await;
    let permission = b.execute(RECORDER, vec![]).await.unwrap();
    assert_eq!(permission, "granted", "the profile allows notifications");

    // Not armed: a new referral raises nothing.
    let police = h.client(POLICE_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let first = police.send(&social, &example_notice()).await.unwrap();
    appears(&b, &format!("tr[data-message-id='{}']", first.message_id)).await;
    assert_eq!(recorded(&b).await, serde_json::json!({"notes": [], "tones": []}), "nothing before arming");

    // Armed from the keyboard: the button says so, and plays one tone to show it works.
    tab_to(&b, "#arm").await;
    b.active_element().await.unwrap().send_keys(&Key::Enter.to_string()).await.unwrap();
    appears(&b, "#arm[aria-pressed='true']").await;
    assert_eq!(text_of(&b, "#armed").await, "Sound and notifications are on");
    assert_eq!(recorded(&b).await, serde_json::json!({"notes": [], "tones": [880]}));

    // A referral about a named person with a personal identity number and an address.
    let mut notice = example_notice();
    notice.subject.name = "Ingrid Hemligsdotter".into();
    notice.subject.personal_identity_number = "197904163305".into();
    let second = police.send(&social, &notice).await.unwrap();
    appears(&b, &format!("tr[data-message-id='{}']", second.message_id)).await;
    let mut rec = recorded(&b).await;
    for _ in 0..100 {
        if !rec["notes"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rec = recorded(&b).await;
    }
    // Exactly one notification, saying a referral came and how urgent it is;
    // and a second tone.
    assert_eq!(
        rec,
        serde_json::json!({
            "notes": [{"title": "New referral: Urgent", "options": {"body": "Open the console"}}],
            "tones": [880, 880],
        })
    );
    let shown = rec["notes"].to_string();
    for personal in [
        notice.subject.name.as_str(),
        "Hemligsdotter",
        notice.subject.personal_identity_number.as_str(),
        "7904163305",
        notice.safe_contact.address.as_str(),
        "Polisen",
        &second.message_id.to_string(),
    ] {
        assert!(!shown.contains(personal), "{personal:?} in the notification: {shown}");
    }
    b.close().await.unwrap();
}

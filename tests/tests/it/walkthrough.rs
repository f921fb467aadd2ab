//! OPERATIONS.md, executed: every command of its `sh` blocks runs, in
//! order, against real tools and a real broker process, so the document
//! cannot drift from the software.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::*;

/// Splits a command line into words, honouring double quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn substitute(text: &str, vars: &HashMap<&str, String>) -> String {
    let mut out = text.to_owned();
    // Longest names first, so $OPS never eats the start of another name.
    let mut names: Vec<&&str> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        out = out.replace(&format!("${n}"), &vars[*n]);
    }
    out
}

/// The `sh` blocks of OPERATIONS.md, as lines (heredocs kept together).
fn script() -> Vec<String> {
    let doc = include_str!("../../../OPERATIONS.md");
    let mut lines = Vec::new();
    let mut in_block = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
            continue;
        }
        if in_block {
            lines.push(line.to_owned());
        }
    }
    lines
}

struct Broker {
    child: tokio::process::Child,
    log: PathBuf,
}

fn reloads(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("TLS certificates, key and CRL reloaded").count()
}

async fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn every_command_in_operations_md_works() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let mut vars: HashMap<&str, String> = HashMap::new();
    vars.insert("OPS", tmp.path().display().to_string());
    vars.insert("PORT", free_port().port().to_string());
    let admin = free_port();
    vars.insert("ADMIN", admin.to_string());
    let mut broker: Option<Broker> = None;
    let mut ran = 0;
    let lines = script();
    let mut i = 0;
    while i < lines.len() {
        let line = substitute(lines[i].trim(), &vars);
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        ran += 1;
        let w = words(&line);
        match w[0].as_str() {
            "cat" => {
                // cat > FILE <<EOF … EOF
                let mut body = String::new();
                while lines[i].trim() != "EOF" {
                    body.push_str(&substitute(&lines[i], &vars));
                    body.push('\n');
                    i += 1;
                }
                i += 1;
                std::fs::write(&w[2], body).unwrap();
            }
            "mv" => std::fs::rename(&w[1], &w[2]).unwrap(),
            "kill" => {
                let b = broker.as_mut().expect("a broker is running");
                let before = reloads(&b.log);
                let pid = b.child.id().unwrap().to_string();
                let sig = &w[1];
                assert!(
                    std::process::Command::new("kill").args([sig.as_str(), pid.as_str()]).status().unwrap().success()
                );
                if sig == "-HUP" {
                    let log = b.log.clone();
                    wait_until(|| reloads(&log) > before, "the broker to reload").await;
                } else {
                    let status = tokio::time::timeout(Duration::from_secs(30), b.child.wait()).await.unwrap().unwrap();
                    assert!(status.success(), "the broker exits cleanly on {sig}");
                    broker = None;
                }
            }
            _ => {
                let (expect_ok, w) = if w[0] == "!" { (false, &w[1..]) } else { (true, &w[..]) };
                let background = w.last().map(String::as_str) == Some("&");
                let w = if background { &w[..w.len() - 1] } else { w };
                assert!(
                    ["certs", "broker", "agency-client"].contains(&w[0].as_str()),
                    "unknown command in OPERATIONS.md: {line}"
                );
                if background {
                    let log = tmp.path().join("broker.log");
                    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
                    let child = tokio::process::Command::new(exe)
                        .args(w)
                        .current_dir(&root)
                        .stderr(file)
                        .stdout(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .unwrap();
                    broker = Some(Broker { child, log });
                    let mut ready = false;
                    for _ in 0..500 {
                        if let Ok((200, _)) = broker::admin::request(admin, None, "GET", "/health", None).await {
                            ready = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    assert!(
                        ready,
                        "the broker became healthy; log:\n{}",
                        std::fs::read_to_string(tmp.path().join("broker.log")).unwrap_or_default()
                    );
                    continue;
                }
                let out = tokio::process::Command::new(exe)
                    .args(w)
                    .current_dir(&root)
                    .env_remove("AGENCY_CLIENT_PROFILE")
                    .output()
                    .await
                    .unwrap();
                let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                assert_eq!(out.status.success(), expect_ok, "{line}\nstdout:\n{stdout}\nstderr:\n{stderr}");
                // A few outcomes worth checking beyond the exit code.
                if line.trim_end().ends_with("agency-client schema") {
                    let committed = std::fs::read_to_string(root.join("agency-client/schema/referral.schema.json"));
                    assert_eq!(stdout, committed.unwrap(), "the schema printed is the published one");
                }
                if line.contains(" status 0192") {
                    assert!(stdout.contains("ACKNOWLEDGED") && stdout.contains("jour-1"), "{stdout}");
                }
                if line.contains("audit verify") && expect_ok {
                    assert!(stdout.contains("OK: every signature"), "{stdout}");
                }
                // After the restore: the documented failure, then the decision.
                if line.contains("audit verify") && !expect_ok {
                    assert!(stdout.contains("the log shrank") && stdout.contains("audit accept-restore"), "{stdout}");
                }
                if line.contains("audit accept-restore") {
                    assert!(stdout.contains("no longer provable:  entry") && stdout.contains("accepted: "), "{stdout}");
                }
                if line.contains("audit check-proof") {
                    assert!(stdout.starts_with("OK: ") && stdout.contains(" holds: entry "), "{stdout}");
                }
                if line.contains("audit report") && !line.contains("--csv") {
                    assert!(stdout.contains("huddinge-socialtjanst  received"), "{stdout}");
                }
                if line.contains("listen --once") && expect_ok {
                    // The sorted summary (Swedish by default): a count, then one line per referral.
                    let head = stdout.lines().next().unwrap_or_default();
                    assert!(
                        head.split(' ').next().is_some_and(|n| n.parse::<u64>().is_ok())
                            && head.contains(" väntar på kvittens: "),
                        "{stdout}"
                    );
                }
            }
        }
    }
    assert!(ran >= 40, "ran only {ran} commands");
    if let Some(mut b) = broker {
        let _ = b.child.kill().await;
    }
}

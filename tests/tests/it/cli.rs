//! The `agency-client` and `certs` command lines, run as child processes
//! against a real broker, including the errors people will meet.

use std::path::Path;

use agency_client::present::{Lang, Presenter};

use crate::support::{client, exe};
use integration_tests::*;

fn write_referral(dir: &Path, notice: &referral_proto::notice::ReferralNotice) -> String {
    let path = dir.join("referral.json");
    std::fs::write(&path, serde_json::to_string_pretty(notice).unwrap()).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn send_listen_ack_status_and_directory() {
    let h = Harness::start().await;
    let file = write_referral(h.dir(), &referral_proto::notice::example_notice());
    let (code, out, err) = client(&h, POLICE_SYSTEM, &["--json", "send", "--to", SOCIAL, "--referral", &file]).await;
    assert_eq!(code, 0, "{err}");
    let sent: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let id = sent["message_id"].as_str().unwrap().to_owned();
    assert_eq!(sent["receipt"]["status"], "ACCEPTED");

    let (code, out, err) = client(&h, SOCIAL_ONCALL, &["--json", "listen", "--once"]).await;
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0]["event"], "referral");
    assert_eq!(events[0]["message_id"], id.as_str());
    assert_eq!(events[0]["notice"]["subject"]["name"], "Testperson Andersson");
    assert_eq!(events.last().unwrap()["event"], "caught_up");

    // The readable form for a person on call: a sorted summary, human
    // labels, local time and time left (English here, Swedish by default).
    let oncall = h.client(SOCIAL_ONCALL).await;
    let r = match oncall.fetch(id.parse().unwrap()).await.unwrap() {
        agency_client::alerts::Fetched::Waiting(agency_client::alerts::AlertEvent::Referral(r)) => r,
        other => panic!("{other:?}"),
    };
    let p = h.profile(SOCIAL_ONCALL).display().to_string();
    let summary = |lang: Lang, now| {
        let pr = Presenter::new(lang);
        let tail = match lang {
            Lang::En => format!("-- open one: agency-client --profile {p} show MESSAGE-ID"),
            Lang::Sv => format!("-- öppna en: agency-client --profile {p} show MEDDELANDE-ID"),
        };
        format!("{}\n  {}\n{tail}\n", pr.summary_head(&[&*r], now), pr.summary_line(&r, now))
    };
    for (lang, args) in [(Lang::En, &["--lang", "en", "listen", "--once"][..]), (Lang::Sv, &["listen", "--once"][..])] {
        let before = certs::now();
        let (code, out, err) = client(&h, SOCIAL_ONCALL, args).await;
        assert_eq!(code, 0, "{err}");
        // The time left is in whole minutes: the run may straddle one.
        assert!(out == summary(lang, before) || out == summary(lang, certs::now()), "{out}");
    }
    let (code, out, err) = client(&h, SOCIAL_ONCALL, &["--lang", "en", "show", &id]).await;
    assert_eq!(code, 0, "{err}");
    for (i, line) in [
        "   [Referral]",
        "   [Safe way to make contact]",
        "   [The person at risk]",
        "   [Risk]",
        "   [Children in the household]",
        "   [Support requested]",
        "   [Legal basis and consent]",
        &*format!("     {:<32}{}", "Consent:", "Consent given"),
        &*format!("     {:<32}{}", "Level:", "HIGH RISK"),
        &*format!("     {:<32}{}", "Children:", "4 years; present: yes; witnessed the violence: yes"),
        &*format!("   to acknowledge: agency-client --profile {p} ack {id} --by NAME"),
    ]
    .iter()
    .enumerate()
    {
        assert!(out.lines().any(|l| l == *line), "line {i} {line:?} missing:\n{out}");
    }
    for code_name in ["NotAware", "NotSoughtUnsafe", "Osl10_18c", "SaraSv", "Some(", "None"] {
        assert!(!out.contains(code_name), "{code_name} shown:\n{out}");
    }

    let (code, out, err) = client(&h, SOCIAL_ONCALL, &["ack", &id, "--by", "jour-3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("acknowledged {id} as jour-3")), "{out}");
    // Acknowledged already: said so, with who and when, and nothing more is done.
    let police = h.client(POLICE_SYSTEM).await;
    let receipts = police.receipts(&[id.parse().unwrap()]).await.unwrap();
    let at = receipts[0].1.iter().find_map(|r| r.ack.as_ref()).unwrap().statement.acknowledged_at;
    let (code, out, err) = client(&h, SOCIAL_SYSTEM, &["--lang", "en", "ack", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "{id}: already acknowledged by jour-3 at {}; nothing more to do\n",
            Presenter::new(Lang::En).local_time(at)
        )
    );
    let (code, out, err) = client(&h, SOCIAL_SYSTEM, &["show", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{id}: redan kvitterad av jour-3 {}\n", Presenter::new(Lang::Sv).local_time(at)));
    let unknown = referral_proto::ids::MessageId::generate(certs::now().0).to_string();
    let (code, _, err) = client(&h, SOCIAL_ONCALL, &["ack", &unknown]).await;
    assert_eq!(code, 65, "a permanent refusal");
    assert!(err.contains(&format!("message {unknown} is not waiting for this agency")), "{err}");

    let (code, out, err) = client(&h, POLICE_SYSTEM, &["--json", "status", &id]).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let statuses: Vec<&str> =
        status["receipts"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ACCEPTED", "DELIVERED", "ACKNOWLEDGED"]);
    assert_eq!(status["receipts"][2]["acknowledged_by"], "jour-3");

    let (code, out, _) = client(&h, POLICE_SYSTEM, &["directory"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("huddinge-socialtjanst") && out.contains("signature verified"), "{out}");
}

#[tokio::test]
async fn errors_name_the_problem() {
    let h = Harness::start().await;
    let good = write_referral(h.dir(), &referral_proto::notice::example_notice());

    let (code, _, err) = run_tool(exe(), "agency-client", &["--profile", "/nonexistent", "directory"]).await;
    assert_eq!(code, 78, "a profile problem is a setup problem");
    assert!(err.contains("not a profile folder"), "{err}");

    let (code, _, err) = client(&h, POLICE_SYSTEM, &["send", "--to", "okand-kommun", "--referral", &good]).await;
    assert_eq!(code, 67, "addressee unknown");
    assert!(err.contains("agency okand-kommun is not in the directory"), "{err}");

    let mut bad = referral_proto::notice::example_notice();
    bad.legal_basis.reason.clear();
    bad.sender_case_reference = "ref 19850312-2387".into();
    let bad_file = h.dir().join("bad.json");
    std::fs::write(&bad_file, serde_json::to_string(&bad).unwrap()).unwrap();
    let (code, _, err) =
        client(&h, POLICE_SYSTEM, &["send", "--to", SOCIAL, "--referral", bad_file.to_str().unwrap()]).await;
    assert_eq!(code, 65, "invalid input");
    assert!(
        err.contains("legal_basis.reason: is required")
            && err.contains("sender_case_reference: must not contain a personal identity number"),
        "{err}"
    );
    assert!(!err.contains("19850312"), "errors never echo personal data: {err}");

    let (code, _, err) = client(&h, SOCIAL_ONCALL, &["send", "--to", POLICE, "--referral", &good]).await;
    assert_eq!(code, 77, "not allowed");
    assert!(err.contains("PERMISSION_DENIED") && err.contains("role oncall may not call Submit"), "{err}");

    // An expired certificate: the client says so before trying.
    let expired_dir = h.dir().join("expired-profile");
    let mut fed = h.federation();
    let p = referral_proto::ids::Principal::parse_uri("spiffe://igor.example.se/agency/polisen-huddinge/system/gammal")
        .unwrap();
    let now = certs::now();
    let issued = fed.issue_principal(&p, now.plus_millis(-3 * 86_400_000), now.plus_millis(-86_400_000)).unwrap();
    let ca = std::fs::read_to_string(h.dev.federation_dir().join("ca.pem")).unwrap();
    certs::profile::write(
        &expired_dir,
        &certs::profile::NewProfile {
            principal: &p,
            broker: &format!("https://{}", h.addr),
            server_name: "localhost",
            issued: &issued,
            ca_pem: &ca,
            federation_key: &fed.federation_key(),
            bundle_files: &[h.dev.agency_keys_dir().join(format!("{POLICE}.key"))],
            min_directory_version: 0,
        },
        false,
    )
    .unwrap();
    let (code, _, err) =
        run_tool(exe(), "agency-client", &["--profile", expired_dir.to_str().unwrap(), "directory"]).await;
    assert_eq!(code, 78);
    assert!(err.contains("the certificate expired at"), "{err}");

    // A personal identity number typed into profile.toml: the error names
    // the line, or the setting and its type, never the value or the line.
    let toml_path = expired_dir.join("profile.toml");
    let text = std::fs::read_to_string(&toml_path).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    for (broken, problem) in [
        (format!("{first}\nnote = 19850312-2387\n"), "TOML syntax error at line 2, column "),
        (
            text.lines()
                .map(|l| if l.starts_with("server_name") { "server_name = 198503122387" } else { l })
                .collect::<Vec<_>>()
                .join("\n"),
            "server_name: wrong type: expected a string, found an integer (not shown)",
        ),
    ] {
        std::fs::write(&toml_path, &broken).unwrap();
        let (code, _, err) =
            run_tool(exe(), "agency-client", &["--profile", expired_dir.to_str().unwrap(), "directory"]).await;
        assert_eq!(code, 78, "{err}");
        assert!(err.contains(problem), "{err}");
        assert!(!err.contains("2387"), "errors never echo personal data: {err}");
    }

    // A key file others can read is refused, with the fix.
    let key = h.profile(POLICE_SYSTEM).join("key.pem");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, _, err) = client(&h, POLICE_SYSTEM, &["directory"]).await;
    assert_eq!(code, 78);
    assert!(err.contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn certs_dev_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fed");
    let d = dir.to_str().unwrap();
    let (code, out, err) = run_tool(exe(), "certs", &["dev", "--dir", d]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("profile:"), "{out}");
    let (code, _, err) = run_tool(exe(), "certs", &["dev", "--dir", d]).await;
    assert_eq!(code, 1);
    assert!(err.contains("already holds a development federation; pass --force"), "{err}");
    let (code, _, err) = run_tool(exe(), "certs", &["dev", "--dir", d, "--force"]).await;
    assert_eq!(code, 0, "{err}");
    let other = tmp.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep").unwrap();
    let (code, _, err) = run_tool(exe(), "certs", &["dev", "--dir", other.to_str().unwrap(), "--force"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is not a development federation"), "{err}");
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "keep");
}

#[tokio::test]
async fn check_config_reports_every_problem_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fed");
    let (code, _, err) = run_tool(exe(), "certs", &["dev", "--dir", dir.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let config = dir.join("broker.toml");
    let listen = "127.0.0.1:7443".parse().unwrap();
    std::fs::write(&config, broker::config::dev_config_text(listen, &tmp.path().join("data"))).unwrap();
    let args = ["check-config", "--config", config.to_str().unwrap()];
    let check = || run_tool(exe(), "broker", &args);
    let (code, out, err) = check().await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("configuration ok: listening on 127.0.0.1:7443, directory version 1 with 2 agencies"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("(fjall)"), "no engine named, no store yet: fjall: {out}");

    // Two unrelated problems: a missing certificate, and a log key file that
    // holds another kind of key (the directory signing key).
    std::fs::remove_file(dir.join("broker/server.pem")).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("broker/log.key", "federation/directory.key")).unwrap();
    let (code, _, err) = check().await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(err.contains("server.pem"), "the missing certificate: {err}");
    assert!(err.contains("directory.key"), "the wrong log key: {err}");

    // A readable broker log key that the directory does not publish.
    let (code, _, err) = {
        std::fs::write(&config, text.replace("broker/log.key", "broker/log-other.key")).unwrap();
        let other = referral_proto::keys::SigningKey::generate();
        let file = referral_proto::keys::signing_key_file(&other, referral_proto::keys::KeyPurpose::BrokerLog);
        certs::secret_file::write(&dir.join("broker/log-other.key"), file.as_bytes(), false).unwrap();
        check().await
    };
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(err.contains("is not the broker log key the directory publishes"), "{err}");

    // An invalid value and two missing files: all three in one run; and
    // the same with a value of the wrong TOML type.
    std::fs::remove_file(dir.join("federation/crl.pem")).unwrap();
    for (setting, problem) in [
        ("subscriber_buffer = 0", "delivery.subscriber_buffer must be 1 to 10000"),
        (
            "subscriber_buffer = \"lots\"",
            "delivery.subscriber_buffer: wrong type: expected usize, found a string (not shown)",
        ),
    ] {
        std::fs::write(&config, text.replace("[delivery]", &format!("[delivery]\n{setting}"))).unwrap();
        let (code, _, err) = check().await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("3 problem(s)"), "{err}");
        assert!(err.contains(problem), "{err}");
        assert!(!err.contains("lots"), "the wrong-typed value is not quoted: {err}");
        assert!(err.contains("tls.certificate = \"broker/server.pem\""), "{err}");
        assert!(err.contains("tls.crl = \"federation/crl.pem\""), "{err}");
    }
}

#[tokio::test]
async fn broker_dev_makes_a_federation_and_serves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let (listen, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(exe())
        .args([
            "broker",
            "dev",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .arg("--data")
        .arg(tmp.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("stderr.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = false;
    for _ in 0..500 {
        if let Ok((200, _)) = broker::admin::request(admin, None, "GET", "/health", None).await {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "broker dev became healthy");
    assert!(dir.join("broker.toml").is_file());
    let client = agency_client::Client::connect_dir(&dir.join("profiles").join(POLICE_SYSTEM)).await.unwrap();
    assert_eq!(client.refresh_directory().await.unwrap().agencies.len(), 2);
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().await.unwrap();
    let log = std::fs::read_to_string(tmp.path().join("stderr.log")).unwrap();
    assert!(status.success(), "SIGTERM shuts down cleanly; exited with {status}:\n{log}");
    assert!(log.contains("shutting down: finishing in-flight requests") && log.contains("stopped"), "{log}");
}

#[tokio::test]
async fn completions_and_man_pages_are_generated() {
    // Each tool prints its own: the broker does not depend on agency-client.
    for (tool, function, subcommand) in [
        ("broker", "_broker()", "check-config"),
        ("agency-client", "_agency__client()", "listen"),
        ("certs", "_certs()", "add-agency"),
    ] {
        let (code, out, err) = run_tool(exe(), tool, &["completions", "bash"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(function) && out.contains(subcommand), "bash completion for {tool}:\n{out}");
    }
    let (code, out, err) = run_tool(exe(), "certs", &["completions", "zsh"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("#compdef certs"), "{out}");
    let (code, _, err) = run_tool(exe(), "broker", &["completions", "nope"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'nope' for '<SHELL>'"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    for tool in ["broker", "agency-client", "certs"] {
        let (code, out, err) = run_tool(exe(), tool, &["manpages", "--out", tmp.path().to_str().unwrap()]).await;
        assert_eq!(code, 0, "{err}");
        let page = std::fs::read_to_string(tmp.path().join(format!("{tool}.1"))).unwrap();
        assert!(page.contains(".TH") && page.to_lowercase().contains(tool), "{tool}.1 is a man page");
        assert!(out.contains(&format!("{tool}.1")), "{out}");
    }
    // Every subcommand the top page lists has its own page.
    for (tool, sub) in [("broker", "check-config"), ("agency-client", "listen"), ("certs", "request")] {
        let top = std::fs::read_to_string(tmp.path().join(format!("{tool}.1"))).unwrap();
        let reference = format!("{tool}-{sub}(1)").replace('-', "\\-");
        assert!(top.contains(&reference), "{tool}.1 refers to {tool}-{sub}(1):\n{top}");
        let page = std::fs::read_to_string(tmp.path().join(format!("{tool}-{sub}.1"))).unwrap();
        assert!(page.contains(".TH") && page.contains(sub), "{tool}-{sub}.1");
    }
}

/// Every option of every subcommand of the three tools says what it is for.
#[test]
fn every_option_has_help_text() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    for mut cmd in [
        <broker::cli::Cli as clap::CommandFactory>::command(),
        <agency_client::cli::Cli as clap::CommandFactory>::command(),
        <certs::cli::Cli as clap::CommandFactory>::command(),
    ] {
        cmd.build();
        let name = cmd.get_name().to_owned();
        walk(&cmd, &name, &mut missing);
    }
    assert!(missing.is_empty(), "options without help text:\n{}", missing.join("\n"));
}

/// Each kind of failure has its own exit code (OPERATIONS.md, "Exit codes"),
/// and with `--json` the error is one JSON object on standard error.
#[tokio::test]
async fn exit_codes_tell_a_script_what_to_do() {
    let mut h = Harness::start().await;
    let good = write_referral(h.dir(), &referral_proto::notice::example_notice());
    let json = |err: &str| serde_json::from_str::<serde_json::Value>(err.trim()).unwrap();

    // 64: the command line is wrong.
    let (code, _, err) = client(&h, POLICE_SYSTEM, &["frobnicate"]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.starts_with("error: unrecognized subcommand 'frobnicate'"), "{err}");
    let (code, _, err) = client(&h, AUDITOR, &["--json", "audit", "replay", "--since", "yesterday"]).await;
    assert_eq!(code, 64, "{err}");
    assert_eq!(
        json(&err),
        serde_json::json!({"exit_code": 64, "class": "usage", "reason": "usage", "status": null,
            "message": "invalid value 'yesterday' for '--since <TIME>': \"yesterday\" is not an RFC 3339 time such as 2026-11-29T08:15:00Z"})
    );
    let (code, _, err) = run_tool(exe(), "agency-client", &["directory"]).await;
    assert_eq!((code, err.trim()), (64, "error: --profile DIR is required (or set AGENCY_CLIENT_PROFILE)"));
    let (code, _, err) = client(&h, SOCIAL_ONCALL, &["ack", "not-a-uuid"]).await;
    assert_eq!((code, err.trim()), (64, "error: message id \"not-a-uuid\" is not a UUID"));
    let (code, out, _) = run_tool(exe(), "agency-client", &["--help"]).await;
    assert_eq!(code, 0, "help is not an error");
    assert!(out.contains("Usage:"), "{out}");

    // 66: an input file that cannot be read.
    let (code, _, err) =
        client(&h, POLICE_SYSTEM, &["send", "--to", SOCIAL, "--referral", "/nonexistent/referral.json"]).await;
    assert_eq!(code, 66, "{err}");
    assert!(err.starts_with("error: cannot read /nonexistent/referral.json: "), "{err}");

    // 67: the recipient is not in the directory.
    let (code, _, err) =
        client(&h, POLICE_SYSTEM, &["--json", "send", "--to", "okand-kommun", "--referral", &good]).await;
    assert_eq!(code, 67, "{err}");
    assert_eq!(
        json(&err),
        serde_json::json!({"exit_code": 67, "class": "unknown_agency", "reason": "unknown_agency", "status": null,
            "message": "agency okand-kommun is not in the directory; it lists huddinge-socialtjanst, polisen-huddinge"})
    );

    // 77: refused for good, with the broker's reason and status.
    let (code, _, err) = client(&h, SOCIAL_ONCALL, &["--json", "send", "--to", POLICE, "--referral", &good]).await;
    assert_eq!(code, 77, "{err}");
    let e = json(&err);
    assert_eq!(
        (&e["class"], &e["reason"], &e["status"]),
        (&"permission".into(), &"role_not_allowed".into(), &"PERMISSION_DENIED".into())
    );
    assert!(e["message"].as_str().unwrap().contains("role oncall may not call Submit"), "{e}");

    // 75: try again later, unchanged: the broker cannot be reached.
    h.stop().await;
    let (code, _, err) = client(&h, POLICE_SYSTEM, &["--json", "send", "--to", SOCIAL, "--referral", &good]).await;
    assert_eq!(code, 75, "{err}");
    let e = json(&err);
    assert_eq!((&e["exit_code"], &e["class"], &e["reason"]), (&75.into(), &"try_again".into(), &"unreachable".into()));
    let (code, _, err) = client(&h, POLICE_SYSTEM, &["directory"]).await;
    assert_eq!(code, 75);
    assert!(err.starts_with("error: cannot reach the broker at https://"), "{err}");
}

/// `agency-client schema` prints the referral form's JSON Schema, the file
/// committed in the source (agency-client's unit tests check that file
/// against the types and the examples).
#[tokio::test]
async fn schema_prints_the_published_referral_schema() {
    let (code, out, err) = run_tool(exe(), "agency-client", &["schema"]).await;
    assert_eq!(code, 0, "{err}");
    let committed = include_str!("../../../agency-client/schema/referral.schema.json");
    assert_eq!(out, committed);
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(schema["title"], "ReferralNotice");
}

/// `validate` checks a referral file offline, with no profile and no broker.
#[tokio::test]
async fn validate_checks_a_referral_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write_referral(tmp.path(), &referral_proto::notice::example_notice());
    let (code, out, err) = run_tool(exe(), "agency-client", &["validate", "--referral", &good]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("OK: {good} is a valid referral notice (urgent urgency); nothing was sent"));
    let (code, out, _) = run_tool(exe(), "agency-client", &["--json", "validate", "--referral", &good]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap(),
        serde_json::json!({"valid": true, "file": good, "urgency": "urgent"})
    );

    let mut bad = referral_proto::notice::example_notice();
    bad.legal_basis.reason.clear();
    bad.sender_case_reference = "ref 19850312-2387".into();
    let bad_file = tmp.path().join("bad.json");
    std::fs::write(&bad_file, serde_json::to_string(&bad).unwrap()).unwrap();
    let (code, out, err) =
        run_tool(exe(), "agency-client", &["validate", "--referral", bad_file.to_str().unwrap()]).await;
    assert_eq!((code, out.as_str()), (65, ""), "{err}");
    assert!(err.starts_with(&format!("error: {}: ", bad_file.display())), "{err}");
    assert!(
        err.contains("legal_basis.reason: is required")
            && err.contains("sender_case_reference: must not contain a personal identity number"),
        "{err}"
    );
    assert!(!err.contains("19850312"), "errors never echo personal data: {err}");
    let (code, _, err) = run_tool(exe(), "agency-client", &["validate", "--referral", "/nonexistent.json"]).await;
    assert_eq!(code, 66, "{err}");

    // A value of the wrong type (a personal identity number where a number
    // belongs, and one as a number where text belongs) is named by its field
    // and expected type; the value is never shown, in text or in JSON.
    let mut v = serde_json::to_value(referral_proto::notice::example_notice()).unwrap();
    v["children"][0]["age"] = serde_json::json!("19850312-2387");
    v["subject"]["personal_identity_number"] = serde_json::json!(198503122387_u64);
    std::fs::write(&bad_file, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let bad = bad_file.to_str().unwrap();
    let (code, out, err) = run_tool(exe(), "agency-client", &["validate", "--referral", bad]).await;
    assert_eq!((code, out.as_str()), (65, ""), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "error: {bad} is not a valid referral notice: field children[0].age: wrong type: \
             expected u32, found a string (not shown) at line 4 column 28"
        )
    );
    let (code, _, err) = run_tool(exe(), "agency-client", &["validate", "--json", "--referral", bad]).await;
    assert_eq!(code, 65);
    let e: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!((&e["class"], &e["reason"]), (&"data".into(), &"invalid_referral".into()));
    v["children"][0]["age"] = serde_json::json!(4);
    std::fs::write(&bad_file, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let (code, _, err) = run_tool(exe(), "agency-client", &["validate", "--referral", bad]).await;
    assert_eq!(code, 65);
    assert!(
        err.contains(
            "field subject.personal_identity_number: wrong type: expected a string, found an integer (not shown)"
        ),
        "{err}"
    );
    assert!(!err.contains("19850312") && !err.contains("198503122387"), "errors never echo personal data: {err}");

    // Sweden's short service numbers are phone numbers too.
    for number in ["112", "114 14"] {
        let mut n = referral_proto::notice::example_notice();
        n.safe_contact.address = number.into();
        n.sender_contact.phone = number.into();
        let file = write_referral(tmp.path(), &n);
        let (code, _, err) = run_tool(exe(), "agency-client", &["validate", "--referral", &file]).await;
        assert_eq!(code, 0, "{number}: {err}");
    }
}

/// `listen` left running: a broker restart is said out loud and survived,
/// and a referral from an agency added to the directory after `listen`
/// started is opened (the directory is fetched again), not refused.
#[tokio::test]
async fn listen_reconnects_after_a_broker_restart_and_reads_agencies_added_after_it_started() {
    use referral_proto::directory::AgencyKind;
    use referral_proto::ids::{AgencyId, Principal, Role};
    use tokio::io::AsyncBufReadExt as _;

    let mut h = Harness::start().await;
    let p = h.profile(SOCIAL_ONCALL).display().to_string();
    let mut child = tokio::process::Command::new(exe())
        .args(["agency-client", "--profile", &p, "--lang", "en", "listen"])
        .env_remove("AGENCY_CLIENT_PROFILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut until = async |want: &dyn Fn(&str) -> bool| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("waited in vain after {seen:?}"))
                .unwrap()
                .expect("listen keeps running");
            let done = want(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    };
    let start = until(&|l| l.starts_with("-- all waiting referrals shown")).await;
    assert_eq!(
        start,
        [
            "0 referrals waiting for acknowledgement: 0 immediate, 0 urgent, 0 routine; 0 past the deadline",
            "-- all waiting referrals shown; listening for new ones"
        ]
    );

    h.stop().await;
    let down = until(&|l| l.starts_with("!! CONNECTION TO THE BROKER IS DOWN (")).await;
    assert!(down.last().unwrap().ends_with("); new referrals are not shown; retrying in 0.5 s"), "{down:?}");
    h.restart().await;
    until(&|l| l == "-- connected to the broker again; fetching what waits").await;

    // A new agency joins the federation after listen fetched the directory.
    let now = certs::now();
    let mut fed = h.federation();
    let town = AgencyId::new("polisen-botkyrka").unwrap();
    fed.add_agency(&town, AgencyKind::Police, "Polisen, lokalpolisområde Botkyrka", None).unwrap();
    let key = h.dir().join("botkyrka.key");
    let (_, files) =
        certs::keygen::generate(&town, &key, now.plus_millis(-60_000), now.plus_millis(86_400_000), false).unwrap();
    fed.add_agency_key(&certs::keygen::read_public(&files.public).unwrap()).unwrap();
    fed.publish_directory(now).unwrap();
    h.reload();
    let system = Principal::new(fed.trust_domain(), town.clone(), Role::System, "system").unwrap();
    let profile = h.dir().join("botkyrka-system");
    let (code, _, err) = run_tool(
        exe(),
        "certs",
        &[
            "issue",
            "--dir",
            h.dev.federation_dir().to_str().unwrap(),
            "--principal",
            &system.uri(),
            "--out",
            profile.to_str().unwrap(),
            "--broker",
            &format!("https://{}", h.addr),
            "--agency-keys",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let botkyrka = agency_client::Client::connect_dir(&profile).await.unwrap();
    let sent = botkyrka.send(&AgencyId::new(SOCIAL).unwrap(), &referral_proto::notice::example_notice()).await.unwrap();
    let shown = until(&|l| l.starts_with("== ") || l.starts_with("!! message")).await;
    let head = shown.last().unwrap();
    assert!(
        head.starts_with("== URGENT | Polisen, lokalpolisområde Botkyrka | ")
            && head.contains(&sent.message_id.to_string()),
        "{shown:?}"
    );
}

/// `--json` means the same in all three tools and goes before or after the
/// subcommand: JSON output where the verb has one, and an error as one JSON
/// object on standard error.
#[tokio::test]
async fn json_is_accepted_before_and_after_the_subcommand_by_all_three_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let fed = tmp.path().join("fed");
    let d = fed.to_str().unwrap();
    assert_eq!(run_tool(exe(), "certs", &["dev", "--dir", d]).await.0, 0);
    let config = fed.join("broker.toml");
    std::fs::write(
        &config,
        broker::config::dev_config_text("127.0.0.1:7443".parse().unwrap(), &tmp.path().join("data")),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let federation = fed.join("federation");
    let f = federation.to_str().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../agency-client/examples/referral.json");
    let parse = |text: &str| -> serde_json::Value {
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}"))
    };
    for (tool, before, after, key, value) in [
        (
            "certs",
            vec!["--json", "show", "--dir", f],
            vec!["show", "--dir", f, "--json"],
            "trust_domain",
            "igor.example.se",
        ),
        (
            "broker",
            vec!["--json", "check-config", "--config", c],
            vec!["check-config", "--config", c, "--json"],
            "listen",
            "127.0.0.1:7443",
        ),
        (
            "agency-client",
            vec!["--json", "validate", "--referral", example],
            vec!["validate", "--referral", example, "--json"],
            "urgency",
            "urgent",
        ),
    ] {
        for args in [before, after] {
            let (code, out, err) = run_tool(exe(), tool, &args).await;
            assert_eq!(code, 0, "{tool} {args:?}: {err}");
            assert_eq!(parse(&out)[key], value, "{tool} {args:?}");
        }
    }
    // Errors: one JSON object with the exit code and the message.
    for (tool, args, code, message) in [
        ("certs", vec!["show", "--dir", "/nonexistent", "--json"], 1, "/nonexistent"),
        ("broker", vec!["--json", "check-config", "--config", "/nonexistent.toml"], 1, "cannot read /nonexistent.toml"),
        (
            "agency-client",
            vec!["validate", "--json", "--referral", "/nonexistent.json"],
            66,
            "cannot read /nonexistent.json",
        ),
        // Usage errors too, in each tool's own exit code for them.
        ("certs", vec!["--json", "show", "--no-such-flag"], 2, "unexpected argument '--no-such-flag'"),
        ("broker", vec!["check-config", "--json", "--no-such-flag"], 2, "unexpected argument '--no-such-flag'"),
        ("agency-client", vec!["--json", "validate", "--no-such-flag"], 64, "unexpected argument '--no-such-flag'"),
    ] {
        let (got, out, err) = run_tool(exe(), tool, &args).await;
        assert_eq!((got, out.as_str()), (code, ""), "{tool}: {err}");
        let e = parse(&err);
        assert_eq!(e["exit_code"], code, "{tool}: {err}");
        assert!(e["message"].as_str().unwrap().contains(message), "{tool}: {err}");
    }
}

/// `listen` started while the broker is down: it says so, keeps retrying,
/// and shows what waits once the broker is up (`listen --once` still
/// refuses at once: it answers "what waits now?").
#[tokio::test]
async fn listen_started_while_the_broker_is_down_says_so_and_shows_what_waits_when_it_comes_up() {
    use referral_proto::ids::AgencyId;
    use tokio::io::AsyncBufReadExt as _;

    let mut h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    police.send(&AgencyId::new(SOCIAL).unwrap(), &referral_proto::notice::example_notice()).await.unwrap();
    h.stop().await;
    let p = h.profile(SOCIAL_ONCALL).display().to_string();
    let (code, _, err) = run_tool(exe(), "agency-client", &["--profile", &p, "listen", "--once"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach the broker at "), "{err}");

    let mut child = tokio::process::Command::new(exe())
        .args(["agency-client", "--profile", &p, "--lang", "en", "listen"])
        .env_remove("AGENCY_CLIENT_PROFILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut until = async |want: &dyn Fn(&str) -> bool| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("waited in vain after {seen:?}"))
                .unwrap()
                .expect("listen keeps running");
            let done = want(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    };
    let down = until(&|l| l.starts_with("!! CONNECTION TO THE BROKER IS DOWN (")).await;
    assert_eq!(down.len(), 1, "the first line says the broker is down: {down:?}");
    assert!(down[0].ends_with("); new referrals are not shown; retrying in 0.5 s"), "{down:?}");
    h.restart().await;
    let up = until(&|l| l.starts_with("-- all waiting referrals shown")).await;
    assert!(
        up.iter().any(|l| l.starts_with("1 referral waiting for acknowledgement: 0 immediate, 1 urgent, 0 routine")),
        "{up:?}"
    );
}

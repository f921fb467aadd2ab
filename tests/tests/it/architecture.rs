//! ARCHITECTURE.md's invariants about what each crate and module may name,
//! held by reading `cargo metadata` and scanning the sources:
//! - the broker uses `agency-client` (and with it agency keys) only in its demo;
//! - `proto` does no I/O, and draws randomness only where ARCHITECTURE.md says;
//! - only the broker's `store/` names sled;
//! - of the broker's library, only `cli` reads the environment and starts logging.
//!
//! Each rule is a function from sources (or metadata) to violations, so the
//! tests at the bottom can show every rule failing on a made-up source.
//!
//! The scanner reads code, not text: comments are dropped and the contents of
//! string and character literals blanked, then a name counts only at
//! identifier boundaries (`sled::Db` names sled, `sled_store` does not). It is
//! not a parser: a name brought in by a glob import or a macro from another
//! crate escapes it, which is why the dependency lists are checked too.

use std::path::{Path, PathBuf};

/// A source file: its path relative to the workspace root, with `/`, and its code.
struct Source {
    path: String,
    code: String,
}

impl Source {
    fn new(path: &str, text: &str) -> Self {
        Self { path: path.to_owned(), code: code_only(text) }
    }

    fn line(&self, at: usize) -> usize {
        self.code[..at].matches('\n').count() + 1
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_owned()
}

/// Every `.rs` file under `dirs` (relative to the workspace root), build
/// output excluded.
fn sources(dirs: &[&str]) -> Vec<Source> {
    let root = workspace_root();
    let mut out = Vec::new();
    let mut pending: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "target" || name.starts_with('.') {
                continue;
            }
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            out.push(Source::new(&rel, &std::fs::read_to_string(&path).unwrap()));
        }
    }
    assert!(!out.is_empty(), "no sources under {dirs:?}");
    out
}

/// `cargo metadata` of the workspace (its own packages only).
fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

// ---------------------------------------------------------------- scanner

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The code of a Rust source: comments removed, the contents of string and
/// character literals blanked, newlines kept (so line numbers still hold).
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    // Skips to `end` (the index after a literal or comment), keeping its newlines.
    let skip = |out: &mut String, from: usize, end: usize| {
        out.extend(c[from..end.min(c.len())].iter().filter(|&&ch| ch == '\n'));
    };
    while i < c.len() {
        let ch = c[i];
        let ident_before = i > 0 && is_ident(c[i - 1]);
        if ch == '/' && at(i + 1) == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == Some('*') {
            // Block comments nest in Rust.
            let (start, mut depth) = (i, 0);
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == Some('*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == Some('/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            skip(&mut out, start, i);
            out.push(' ');
        } else if ch == 'r'
            && (!ident_before || (c[i - 1] == 'b' && (i < 2 || !is_ident(c[i - 2]))))
            && matches!(at(i + 1), Some('"' | '#'))
        {
            // A raw string r"..", r#".."#, br".."; or an identifier such as r#type.
            let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
            if at(i + 1 + hashes) != Some('"') {
                out.push(ch);
                i += 1;
                continue;
            }
            let start = i;
            let closing: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            i += 2 + hashes;
            while i < c.len() && !c[i..].starts_with(&closing) {
                i += 1;
            }
            i += closing.len();
            skip(&mut out, start, i);
            out.push_str("\"\"");
        } else if ch == '"' {
            let start = i;
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            skip(&mut out, start, i);
            out.push_str("\"\"");
        } else if ch == '\'' && at(i + 1) == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{1b}'.
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if ch == '\'' && at(i + 2) == Some('\'') {
            i += 3;
            out.push_str("' '");
        } else {
            // Anything else, a lifetime or label ('a) included.
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// Where `code` names `name`: byte offsets of occurrences not glued to a
/// longer identifier (`sled` in `sled::Db`, not in `sled_store`).
fn occurrences(code: &str, name: &str) -> Vec<usize> {
    let starts_ident = name.chars().next().is_some_and(is_ident);
    let ends_ident = name.chars().next_back().is_some_and(is_ident);
    code.match_indices(name)
        .filter(|(at, _)| {
            let before = code[..*at].chars().next_back();
            let after = code[at + name.len()..].chars().next();
            let glued_before = starts_ident && before.is_some_and(is_ident);
            let glued_after = ends_ident && after.is_some_and(is_ident);
            !glued_before && !glued_after
        })
        .map(|(at, _)| at)
        .collect()
}

/// The function whose code holds offset `at`: the last `fn NAME` before it
/// (good enough for the flat functions the rules look at).
fn enclosing_fn(code: &str, at: usize) -> Option<&str> {
    let fn_at = occurrences(&code[..at], "fn").pop()?;
    let rest = code[fn_at + 2..].trim_start();
    let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Every use of one of `names` in `sources`, unless `allowed(path, fn)`.
fn uses(sources: &[Source], names: &[&str], allowed: impl Fn(&str, Option<&str>) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for s in sources {
        for name in names {
            for at in occurrences(&s.code, name) {
                let function = enclosing_fn(&s.code, at);
                if !allowed(&s.path, function) {
                    let inside = function.map(|f| format!(" in fn {f}")).unwrap_or_default();
                    found.push(format!("{}:{} names {name}{inside}", s.path, s.line(at)));
                }
            }
        }
    }
    found
}

// ------------------------------------------------------------------ rules

/// The broker's modules that make up `broker demo`: the only ones that may
/// use agency-client, and through it hold agency keys.
const BROKER_DEMO: [&str; 2] = ["broker/src/demo.rs", "broker/src/demo_audit.rs"];

/// Names that would bring the client, or an agency's private keys, into the
/// broker: the client library, the private key bundle and its file, opening.
const CLIENT_AND_AGENCY_KEYS: [&str; 4] = ["agency_client", "AgencyKeyBundle", "from_key_file", "seal::open"];

fn broker_client_rule(sources: &[Source]) -> Vec<String> {
    uses(sources, &CLIENT_AND_AGENCY_KEYS, |path, _| BROKER_DEMO.contains(&path))
}

/// The broker package's dependency on agency-client: optional, and enabled
/// by the `demo` feature alone (the feature that compiles the demo modules).
fn broker_client_dependency_rule(metadata: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    let broker = package(metadata, "broker");
    for dep in broker["dependencies"].as_array().unwrap() {
        if dep["name"] == "agency-client" && dep["kind"].is_null() && dep["optional"] != true {
            found.push("broker depends on agency-client without the demo feature".to_owned());
        }
    }
    for (feature, enables) in broker["features"].as_object().unwrap() {
        let enables_client =
            enables.as_array().unwrap().iter().any(|e| e == "dep:agency-client" || e == "agency-client");
        if enables_client && feature != "demo" {
            found.push(format!("broker's feature {feature:?} enables agency-client"));
        }
    }
    found
}

/// What `proto` may depend on: encoding, the generated service types, and
/// cryptography. None of them is used for I/O by proto's own code (tonic's
/// generated clients and servers are driven by the broker and the client).
/// schemars (optional, feature `schema`) only describes the notice's JSON.
const PROTO_DEPENDENCIES: [&str; 16] = [
    "prost",
    "tonic",
    "tonic-prost",
    "ring",
    "hpke",
    "curve25519-dalek",
    "ed25519-dalek",
    "zeroize",
    "serde",
    "thiserror",
    "hex",
    "base64",
    "uuid",
    "rand_core",
    "getrandom",
    "schemars",
];

fn proto_dependency_rule(metadata: &serde_json::Value) -> Vec<String> {
    package(metadata, "referral-proto")["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"].is_null() && !PROTO_DEPENDENCIES.contains(&d["name"].as_str().unwrap()))
        .map(|d| format!("referral-proto depends on {} (not in the reviewed list)", d["name"]))
        .collect()
}

/// Names of files, sockets, processes, the environment, clocks, output and logging.
const IO: [&str; 22] = [
    "std::fs",
    "fs::",
    "std::net",
    "net::",
    "std::env",
    "std::process",
    "std::io::stdin",
    "tokio",
    "tracing",
    "log::",
    "SystemTime",
    "Instant",
    "UNIX_EPOCH",
    "File",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "println!",
    "eprintln!",
    "print!",
    "eprint!",
    "dbg!",
];

fn proto_io_rule(sources: &[Source]) -> Vec<String> {
    uses(sources, &IO, |_, _| false)
}

/// Every way to draw randomness proto's dependencies offer.
const RANDOMNESS: [&str; 11] = [
    "SystemRandom",
    "SecureRandom::fill",
    "getrandom",
    "SysRng",
    "OsRng",
    "thread_rng",
    "gen_keypair",
    "new_v4",
    "new_v7",
    "now_v7",
    "Uuid::now",
];

/// Where proto draws randomness, as ARCHITECTURE.md lists it: the HPKE
/// ephemeral key of `seal`, key generation, and the random bits of a new
/// message id.
const RANDOMNESS_ALLOWED: [(&str, &str); 4] = [
    ("proto/src/seal.rs", "getrandom_rng"),
    ("proto/src/keys.rs", "random_32"),
    ("proto/src/keys.rs", "generate"),
    ("proto/src/ids.rs", "generate"),
];

fn proto_randomness_rule(sources: &[Source]) -> Vec<String> {
    uses(sources, &RANDOMNESS, |path, function| {
        RANDOMNESS_ALLOWED.iter().any(|&(p, f)| p == path && Some(f) == function)
    })
}

/// The ways code names the sled crate (a bare `sled` can only be a local).
const SLED: [&str; 3] = ["sled::", "use sled", "extern crate sled"];

fn sled_rule(sources: &[Source]) -> Vec<String> {
    uses(sources, &SLED, |path, _| path.starts_with("broker/src/store/"))
}

const POSTGRES: [&str; 4] = ["tokio_postgres::", "use tokio_postgres", "deadpool_postgres::", "use deadpool_postgres"];

/// Only the PostgreSQL engine names the database crates.
fn postgres_rule(sources: &[Source]) -> Vec<String> {
    uses(sources, &POSTGRES, |path, _| path == "broker/src/store/postgres.rs")
}

const FJALL: [&str; 2] = ["fjall::", "use fjall"];

/// Only the fjall engine names fjall.
fn fjall_rule(sources: &[Source]) -> Vec<String> {
    uses(sources, &FJALL, |path, _| path == "broker/src/store/fjall_store.rs")
}

/// Which workspace packages list sled as a dependency (only broker may).
fn sled_dependency_rule(metadata: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    for p in metadata["packages"].as_array().unwrap() {
        for d in p["dependencies"].as_array().unwrap() {
            if d["name"] == "sled" && (p["name"] != "broker" || !d["kind"].is_null()) {
                found.push(format!("{} depends on sled", p["name"]));
            }
        }
    }
    found
}

/// The environment and the global log subscriber belong to the program: of
/// the broker's library only `cli` (and the demo's temporary folder) touch them.
fn broker_environment_rule(sources: &[Source]) -> Vec<String> {
    let mut found = uses(
        sources,
        &["env::var", "env::vars", "env::var_os", "env::vars_os", "env::args", "env::set_var", "env::temp_dir"],
        |path, function| {
            path == "broker/src/cli.rs" || (path == "broker/src/demo.rs" && function == Some("tempfile_dir"))
        },
    );
    found.extend(uses(
        sources,
        &["tracing_subscriber::fmt", "try_init", "set_global_default", "init_logging"],
        |path, _| path == "broker/src/cli.rs",
    ));
    found
}

fn package<'m>(metadata: &'m serde_json::Value, name: &str) -> &'m serde_json::Value {
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no package {name}"))
}

// ------------------------------------------------------------------ tests

#[test]
fn the_broker_uses_agency_client_only_in_its_demo() {
    assert_eq!(broker_client_dependency_rule(&metadata()), Vec::<String>::new());
    assert_eq!(broker_client_rule(&sources(&["broker/src", "broker/benches"])), Vec::<String>::new());
}

#[test]
fn proto_does_no_io() {
    assert_eq!(proto_dependency_rule(&metadata()), Vec::<String>::new());
    assert_eq!(proto_io_rule(&sources(&["proto/src"])), Vec::<String>::new());
}

#[test]
fn proto_draws_randomness_only_where_architecture_md_says() {
    let proto = sources(&["proto/src"]);
    assert_eq!(proto_randomness_rule(&proto), Vec::<String>::new());
    // And each allowed place still draws it (else the list is out of date).
    for (path, function) in RANDOMNESS_ALLOWED {
        let drawn = uses(&proto, &RANDOMNESS, |p, f| !(p == path && f == Some(function)));
        assert!(
            !drawn.is_empty(),
            "{path} fn {function} no longer draws randomness: update ARCHITECTURE.md and this list"
        );
    }
}

#[test]
fn only_the_store_names_sled() {
    assert_eq!(sled_dependency_rule(&metadata()), Vec::<String>::new());
    let all =
        sources(&["proto", "broker", "agency-client", "certs", "tests", "bench", "fuzz/src", "fuzz/fuzz_targets"]);
    assert_eq!(sled_rule(&all), Vec::<String>::new());
    assert!(!uses(&all, &SLED, |_, _| false).is_empty(), "the store itself names sled");
}

#[test]
fn only_the_postgres_engine_names_postgres() {
    let all =
        sources(&["proto", "broker", "agency-client", "certs", "tests", "bench", "fuzz/src", "fuzz/fuzz_targets"]);
    assert_eq!(postgres_rule(&all), Vec::<String>::new());
    assert!(!uses(&all, &POSTGRES, |_, _| false).is_empty(), "the engine itself names tokio_postgres");
    let made_up = [Source::new("broker/src/hub.rs", "fn f() { tokio_postgres::connect(x) }")];
    assert_eq!(postgres_rule(&made_up).len(), 1);
}

#[test]
fn only_the_fjall_engine_names_fjall() {
    let all =
        sources(&["proto", "broker", "agency-client", "certs", "tests", "bench", "fuzz/src", "fuzz/fuzz_targets"]);
    assert_eq!(fjall_rule(&all), Vec::<String>::new());
    assert!(!uses(&all, &FJALL, |_, _| false).is_empty(), "the engine itself names fjall");
    let made_up = [Source::new("broker/src/commit.rs", "fn f() { let db = fjall::Database::builder(p); }")];
    assert_eq!(fjall_rule(&made_up).len(), 1);
}

#[test]
fn only_the_command_line_reads_the_environment_and_starts_logging() {
    assert_eq!(broker_environment_rule(&sources(&["broker/src"])), Vec::<String>::new());
}

// The rules fail on what they forbid.

#[test]
fn the_scanner_reads_code_not_text() {
    let code = code_only(
        "let a = \"tokio\"; // tokio\n/* sled /* nested */ sled */ let q = '\"'; let r = r#\"sled \"# ; tokio::spawn(x);\nfn f<'a>(s: &'a str) { sled::open(s) }",
    );
    assert_eq!(occurrences(&code, "tokio").len(), 1, "{code}");
    assert_eq!(occurrences(&code, "sled").len(), 1, "{code}");
    assert_eq!(code.lines().count(), 3, "newlines kept: {code}");
    assert!(occurrences("use broker::store::sled_store::SledStore; let looks_like_sled = 1;", "sled").is_empty());
    assert_eq!(occurrences("use std::{fs, io}; fs::read(p)", "fs::").len(), 1);
    let code = "fn outer() { a }\nfn random_32() -> [u8; 32] { SystemRandom::new() }";
    assert_eq!(enclosing_fn(code, code.find("SystemRandom").unwrap()), Some("random_32"));
}

#[test]
fn each_rule_catches_what_it_forbids() {
    let cli = [Source::new("broker/src/cli.rs", "agency_client::cli::run_program(run(cli), |()| ExitCode::SUCCESS)")];
    assert_eq!(broker_client_rule(&cli), ["broker/src/cli.rs:1 names agency_client"]);
    let keys = [Source::new("broker/src/server.rs", "fn start() {\n let b = AgencyKeyBundle::from_key_file(&t)?; }")];
    assert_eq!(broker_client_rule(&keys).len(), 2);
    assert!(broker_client_rule(&[Source::new("broker/src/demo.rs", "use agency_client::Client;")]).is_empty());

    let io =
        [Source::new("proto/src/seal.rs", "fn f() { let t = std::time::SystemTime::now(); tracing::info!(\"x\"); }")];
    assert_eq!(proto_io_rule(&io).len(), 2, "{:?}", proto_io_rule(&io));
    let grouped = [Source::new("proto/src/keys.rs", "use std::{fs, net};\nfn f() { fs::read(\"k\") }")];
    assert_eq!(proto_io_rule(&grouped), ["proto/src/keys.rs:2 names fs:: in fn f"]);

    let random = [Source::new("proto/src/envelope.rs", "fn id() -> Uuid { uuid::Uuid::new_v4() }")];
    assert_eq!(proto_randomness_rule(&random), ["proto/src/envelope.rs:1 names new_v4 in fn id"]);
    let elsewhere_in_keys = [Source::new("proto/src/keys.rs", "fn nonce() { ring::rand::SystemRandom::new() }")];
    assert_eq!(proto_randomness_rule(&elsewhere_in_keys).len(), 1);
    let allowed = [Source::new("proto/src/keys.rs", "fn random_32() { ring::rand::SystemRandom::new() }")];
    assert!(proto_randomness_rule(&allowed).is_empty());

    let sled = [Source::new("broker/src/status.rs", "fn gather(db: &sled::Db) {}")];
    assert_eq!(sled_rule(&sled), ["broker/src/status.rs:1 names sled:: in fn gather"]);
    assert!(!sled_rule(&[Source::new("bench/src/fill.rs", "use sled::Db;")]).is_empty());
    assert!(sled_rule(&[Source::new("broker/src/server.rs", "let sled = SledStore::open(d)?;")]).is_empty());
    assert!(sled_rule(&[Source::new("broker/src/store/sled_store.rs", "db: sled::Db,")]).is_empty());

    let env = [Source::new("broker/src/server.rs", "fn start() { std::env::var(\"BROKER_LOG\") }")];
    assert_eq!(broker_environment_rule(&env), ["broker/src/server.rs:1 names env::var in fn start"]);
}

#[test]
fn each_dependency_rule_catches_what_it_forbids() {
    let metadata = serde_json::json!({"packages": [
        {"name": "broker", "dependencies": [
            {"name": "agency-client", "kind": null, "optional": false},
            {"name": "sled", "kind": null, "optional": false}
        ], "features": {"default": ["demo"], "demo": ["dep:agency-client"], "tools": ["dep:agency-client"]}},
        {"name": "referral-proto", "dependencies": [
            {"name": "ring", "kind": null, "optional": false},
            {"name": "tokio", "kind": null, "optional": false},
            {"name": "proptest", "kind": "dev", "optional": false}
        ], "features": {}},
        {"name": "agency-client", "dependencies": [{"name": "sled", "kind": null, "optional": false}], "features": {}}
    ]});
    assert_eq!(
        broker_client_dependency_rule(&metadata),
        [
            "broker depends on agency-client without the demo feature",
            "broker's feature \"tools\" enables agency-client"
        ]
    );
    assert_eq!(proto_dependency_rule(&metadata), ["referral-proto depends on \"tokio\" (not in the reviewed list)"]);
    assert_eq!(sled_dependency_rule(&metadata), ["\"agency-client\" depends on sled"]);
}

//! Configuration: a TOML file plus `BROKER__SECTION__KEY` environment
//! overrides, parsed into a raw structure and then validated into [`Config`],
//! reporting every problem at once. The environment is passed in, so tests
//! never touch the process's own.
//!
//! Settings that an operator must choose (addresses, credentials, data
//! directory, ack deadlines) have no defaults; tuning knobs do, and the
//! example `broker.toml` documents each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use referral_proto::ids::AgencyId;
use serde::Deserialize;

/// Durations in milliseconds per urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckDeadlines {
    pub immediate_ms: i64,
    pub urgent_ms: i64,
    pub routine_ms: i64,
}

impl AckDeadlines {
    pub fn for_urgency(&self, u: referral_proto::envelope::Urgency) -> i64 {
        use referral_proto::envelope::Urgency::*;
        match u {
            Immediate => self.immediate_ms,
            Urgent => self.urgent_ms,
            Routine => self.routine_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub crl: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub submit_rate_per_second: u32,
    pub submit_burst: u32,
    pub max_in_flight_per_principal: usize,
    pub max_streams_per_principal: usize,
    pub max_connections: usize,
    /// Connections one principal (certificate URI) may hold at once.
    pub max_connections_per_principal: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised on each connection.
    pub max_concurrent_streams_per_connection: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: the largest header block accepted.
    pub max_header_list_bytes: u32,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub handshake_timeout: Duration,
    pub tls: TlsFiles,
    pub reload_interval: Duration,
    pub directory: PathBuf,
    pub federation_key: PathBuf,
    pub log_key: PathBuf,
    pub data_dir: PathBuf,
    pub ack_deadlines: AckDeadlines,
    pub unacked_retention_ms: i64,
    pub acked_retention_ms: i64,
    pub heartbeat_interval: Duration,
    pub stall_timeout: Duration,
    pub subscriber_buffer: usize,
    pub max_future_skew_ms: i64,
    pub max_past_skew_ms: i64,
    pub deadline_tick: Duration,
    pub tree_head_interval: Duration,
    pub limits: Limits,
    /// Pairs of same-kind agencies allowed to send to each other.
    pub allow_same_kind: Vec<(AgencyId, AgencyId)>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// The admin endpoint (metrics, health, status, backup); None (off)
    /// unless the configuration has an `[admin]` section.
    pub admin: Option<AdminConfig>,
    pub health_interval: Duration,
    pub cert_expiry_warning: Duration,
}

/// Where the admin endpoint listens and the token that opens it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A file (mode 0600) holding the bearer token every admin request but
    /// `GET /health` must present; read at start.
    pub token_file: PathBuf,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<RawListen>,
    tls: Option<RawTls>,
    federation: Option<RawFederation>,
    storage: Option<RawStorage>,
    delivery: Option<RawDelivery>,
    limits: Option<RawLimits>,
    audit: Option<RawAudit>,
    policy: Option<RawPolicy>,
    log: Option<RawLog>,
    admin: Option<RawAdmin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Option<String>,
    handshake_timeout: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    reload_interval: Option<String>,
    expiry_warning: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    directory: Option<PathBuf>,
    federation_key: Option<PathBuf>,
    log_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    ack_deadline_immediate: Option<String>,
    ack_deadline_urgent: Option<String>,
    ack_deadline_routine: Option<String>,
    unacked_retention: Option<String>,
    acked_retention: Option<String>,
    heartbeat_interval: Option<String>,
    subscriber_stall_timeout: Option<String>,
    subscriber_buffer: Option<usize>,
    max_clock_skew_future: Option<String>,
    max_clock_skew_past: Option<String>,
    deadline_tick: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    submit_rate_per_second: Option<u32>,
    submit_burst: Option<u32>,
    max_in_flight_per_principal: Option<usize>,
    max_streams_per_principal: Option<usize>,
    max_connections_per_principal: Option<usize>,
    max_concurrent_streams_per_connection: Option<u32>,
    max_header_list_bytes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    tree_head_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allow_same_kind: Option<Vec<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    health_interval: Option<String>,
}

/// Where the admin endpoint listens when `[admin]` names no address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// Parses `500ms`, `30s`, `15m`, `4h`, `3d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn required<T>(&mut self, v: Option<T>, name: &str) -> Option<T> {
        if v.is_none() {
            self.problems.push(format!("{name} is required"));
        }
        v
    }

    fn duration(&mut self, v: Option<&String>, name: &str, default: Option<Duration>) -> Duration {
        match v {
            None => default.unwrap_or_else(|| {
                self.problems.push(format!("{name} is required (a duration such as 15m, 4h or 3d)"));
                Duration::ZERO
            }),
            Some(s) => match parse_duration(s) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    self.problems
                        .push(format!("{name} = {s:?} is not a positive duration such as 500ms, 30s, 15m, 4h or 3d"));
                    Duration::ZERO
                }
            },
        }
    }
}

fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("BROKER__") else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let [section, key] = parts.as_slice() else {
            problems.push(format!("environment variable {k} must look like BROKER__SECTION__KEY"));
            continue;
        };
        // A value that parses as a TOML scalar (number, boolean, array) is
        // taken as such; anything else is a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.clone(), value);
            }
            _ => problems.push(format!("environment variable {k}: [{section}] is not a section")),
        }
    }
    problems
}

impl Config {
    /// Reads `path`, applies overrides from `env` (pairs of name and value),
    /// and validates. Relative paths are relative to the file's folder.
    pub fn load(path: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Self::parse(&text, &base, env)
    }

    /// Parses configuration text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError(vec![e.to_string()]))?;
        let mut problems = apply_env(&mut table, env);
        let raw: Raw = match Raw::deserialize(toml::Value::Table(table)) {
            Ok(r) => r,
            Err(e) => {
                problems.push(e.to_string());
                return Err(ConfigError(problems));
            }
        };
        let mut c = Checker { problems };
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let listen = raw.listen.unwrap_or_default();
        let listen_addr = c.required(listen.address, "listen.address").and_then(|a| match a.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.problems.push(format!("listen.address = {a:?} is not an address such as 0.0.0.0:7443"));
                None
            }
        });
        let handshake_timeout =
            c.duration(listen.handshake_timeout.as_ref(), "listen.handshake_timeout", Some(Duration::from_secs(10)));

        let tls = raw.tls.unwrap_or_default();
        let certificate = c.required(tls.certificate, "tls.certificate");
        let key = c.required(tls.key, "tls.key");
        let client_ca = c.required(tls.client_ca, "tls.client_ca");
        let crl = c.required(tls.crl, "tls.crl");
        let reload_interval =
            c.duration(tls.reload_interval.as_ref(), "tls.reload_interval", Some(Duration::from_secs(10)));
        let cert_expiry_warning =
            c.duration(tls.expiry_warning.as_ref(), "tls.expiry_warning", Some(Duration::from_secs(14 * 86_400)));

        let fed = raw.federation.unwrap_or_default();
        let directory = c.required(fed.directory, "federation.directory");
        let federation_key = c.required(fed.federation_key, "federation.federation_key");
        let log_key = c.required(fed.log_key, "federation.log_key");

        let storage = raw.storage.unwrap_or_default();
        let data_dir = c.required(storage.data_dir, "storage.data_dir");

        let d = raw.delivery.unwrap_or_default();
        let ms = |d: Duration| d.as_millis() as i64;
        let ack_deadlines = AckDeadlines {
            immediate_ms: ms(c.duration(d.ack_deadline_immediate.as_ref(), "delivery.ack_deadline_immediate", None)),
            urgent_ms: ms(c.duration(d.ack_deadline_urgent.as_ref(), "delivery.ack_deadline_urgent", None)),
            routine_ms: ms(c.duration(d.ack_deadline_routine.as_ref(), "delivery.ack_deadline_routine", None)),
        };
        let unacked_retention_ms = ms(c.duration(d.unacked_retention.as_ref(), "delivery.unacked_retention", None));
        let acked_retention_ms = ms(c.duration(d.acked_retention.as_ref(), "delivery.acked_retention", None));
        let longest = ack_deadlines.immediate_ms.max(ack_deadlines.urgent_ms).max(ack_deadlines.routine_ms);
        if unacked_retention_ms > 0 && unacked_retention_ms <= longest {
            c.problems.push("delivery.unacked_retention must be longer than every ack deadline".into());
        }
        let heartbeat_interval =
            c.duration(d.heartbeat_interval.as_ref(), "delivery.heartbeat_interval", Some(Duration::from_secs(15)));
        let stall_timeout = c.duration(
            d.subscriber_stall_timeout.as_ref(),
            "delivery.subscriber_stall_timeout",
            Some(Duration::from_secs(30)),
        );
        let subscriber_buffer = d.subscriber_buffer.unwrap_or(64);
        if !(1..=10_000).contains(&subscriber_buffer) {
            c.problems.push("delivery.subscriber_buffer must be 1 to 10000".into());
        }
        let max_future_skew_ms = ms(c.duration(
            d.max_clock_skew_future.as_ref(),
            "delivery.max_clock_skew_future",
            Some(Duration::from_secs(300)),
        ));
        let max_past_skew_ms = ms(c.duration(
            d.max_clock_skew_past.as_ref(),
            "delivery.max_clock_skew_past",
            Some(Duration::from_secs(7 * 86_400)),
        ));
        let deadline_tick =
            c.duration(d.deadline_tick.as_ref(), "delivery.deadline_tick", Some(Duration::from_secs(1)));

        let l = raw.limits.unwrap_or_default();
        let limits = Limits {
            submit_rate_per_second: l.submit_rate_per_second.unwrap_or(200),
            submit_burst: l.submit_burst.unwrap_or(400),
            max_in_flight_per_principal: l.max_in_flight_per_principal.unwrap_or(256),
            max_streams_per_principal: l.max_streams_per_principal.unwrap_or(16),
            max_connections: listen.max_connections.unwrap_or(20_000),
            max_connections_per_principal: l.max_connections_per_principal.unwrap_or(32),
            max_concurrent_streams_per_connection: l.max_concurrent_streams_per_connection.unwrap_or(100),
            max_header_list_bytes: l.max_header_list_bytes.unwrap_or(16 * 1024),
        };
        if limits.max_header_list_bytes < 1024 {
            c.problems.push("limits.max_header_list_bytes must be at least 1024".into());
        }
        if limits.submit_rate_per_second == 0 || limits.submit_burst == 0 {
            c.problems.push("limits.submit_rate_per_second and limits.submit_burst must be positive".into());
        }
        if limits.max_in_flight_per_principal == 0
            || limits.max_streams_per_principal == 0
            || limits.max_connections == 0
            || limits.max_connections_per_principal == 0
            || limits.max_concurrent_streams_per_connection == 0
        {
            c.problems.push("limits and listen.max_connections must be positive".into());
        }
        let tree_head_interval = c.duration(
            raw.audit.unwrap_or_default().tree_head_interval.as_ref(),
            "audit.tree_head_interval",
            Some(Duration::from_secs(2)),
        );

        let mut allow_same_kind = Vec::new();
        for pair in raw.policy.unwrap_or_default().allow_same_kind.unwrap_or_default() {
            match pair.as_slice() {
                [a, b] => match (AgencyId::new(a.clone()), AgencyId::new(b.clone())) {
                    (Ok(a), Ok(b)) => allow_same_kind.push((a, b)),
                    (Err(e), _) | (_, Err(e)) => c.problems.push(format!("policy.allow_same_kind: {e}")),
                },
                _ => c.problems.push("policy.allow_same_kind entries must be pairs of agency ids".into()),
            }
        }

        let log = raw.log.unwrap_or_default();
        let log_format = match log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                c.problems.push(format!("log.format = {other:?} must be text or json"));
                LogFormat::Text
            }
        };
        let log_level = log.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            c.problems.push(format!("log.level = {log_level:?} is not a tracing filter such as info or broker=debug"));
        }
        // The admin endpoint is off unless the file asks for it, and then it
        // needs a token of its own (its requests carry no certificate).
        let health_interval = c.duration(
            raw.admin.as_ref().and_then(|a| a.health_interval.as_ref()),
            "admin.health_interval",
            Some(Duration::from_secs(5)),
        );
        let admin = match raw.admin {
            None => None,
            Some(admin) => match admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
                "off" => None,
                a => {
                    let listen = a.parse::<SocketAddr>().ok();
                    if listen.is_none() {
                        c.problems.push(format!(
                            "admin.listen = {a:?} is not an address such as 127.0.0.1:9464 (or \"off\")"
                        ));
                    }
                    let token_file = c.required(admin.token_file, "admin.token_file");
                    match (listen, token_file) {
                        (Some(listen), Some(t)) => Some(AdminConfig { listen, token_file: abs(t) }),
                        _ => None,
                    }
                }
            },
        };

        if !c.problems.is_empty() {
            return Err(ConfigError(c.problems));
        }
        let (
            Some(listen),
            Some(certificate),
            Some(key),
            Some(client_ca),
            Some(crl),
            Some(directory),
            Some(federation_key),
            Some(log_key),
            Some(data_dir),
        ) = (listen_addr, certificate, key, client_ca, crl, directory, federation_key, log_key, data_dir)
        else {
            unreachable!("every missing setting was reported as a problem");
        };
        Ok(Config {
            listen,
            handshake_timeout,
            tls: TlsFiles { certificate: abs(certificate), key: abs(key), client_ca: abs(client_ca), crl: abs(crl) },
            reload_interval,
            directory: abs(directory),
            federation_key: abs(federation_key),
            log_key: abs(log_key),
            data_dir: abs(data_dir),
            ack_deadlines,
            unacked_retention_ms,
            acked_retention_ms,
            heartbeat_interval,
            stall_timeout,
            subscriber_buffer,
            max_future_skew_ms,
            max_past_skew_ms,
            deadline_tick,
            tree_head_interval,
            limits,
            allow_same_kind,
            log_format,
            log_level,
            admin,
            health_interval,
            cert_expiry_warning,
        })
    }

    /// The configuration for a development federation made by `certs dev`
    /// in `dev_dir`, listening on `listen` with data in `data_dir`.
    pub fn for_dev_federation(dev_dir: &Path, listen: SocketAddr, data_dir: &Path) -> Self {
        let text = dev_config_text(listen, data_dir);
        Self::parse(&text, dev_dir, &[]).expect("the development configuration is valid")
    }
}

/// The text of a development configuration (paths relative to the dev
/// federation folder), also written as `broker.toml` by `broker dev`.
pub fn dev_config_text(listen: SocketAddr, data_dir: &Path) -> String {
    format!(
        r#"# Development broker configuration, written by 'broker dev'.
[listen]
address = "{listen}"

[tls]
certificate = "broker/server.pem"
key = "broker/server.key"
client_ca = "federation/ca.pem"
crl = "federation/crl.pem"

[federation]
directory = "federation/directory.bin"
federation_key = "federation/federation.pub"
log_key = "broker/log.key"

[storage]
data_dir = "{}"

[delivery]
ack_deadline_immediate = "15m"
ack_deadline_urgent = "4h"
ack_deadline_routine = "3d"
unacked_retention = "30d"
acked_retention = "7d"
"#,
        data_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[listen]
address = "127.0.0.1:7443"
[tls]
certificate = "s.pem"
key = "s.key"
client_ca = "ca.pem"
crl = "crl.pem"
[federation]
directory = "d.bin"
federation_key = "f.pub"
log_key = "log.key"
[storage]
data_dir = "data"
[delivery]
ack_deadline_immediate = "15m"
ack_deadline_urgent = "4h"
ack_deadline_routine = "3d"
unacked_retention = "30d"
acked_retention = "7d"
"#;

    #[test]
    fn minimal_config_resolves_paths_and_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/etc/broker"), &[]).unwrap();
        assert_eq!(c.tls.key, Path::new("/etc/broker/s.key"));
        assert_eq!(c.ack_deadlines.urgent_ms, 4 * 3_600_000);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.admin, None, "no [admin] section, no admin endpoint");
    }

    #[test]
    fn an_admin_section_needs_a_token_file() {
        let err = Config::parse(&format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9464\"\n"), Path::new("/"), &[])
            .unwrap_err();
        assert_eq!(err.0, ["admin.token_file is required"]);
        let c = Config::parse(&format!("{MINIMAL}\n[admin]\ntoken_file = \"admin.token\"\n"), Path::new("/b"), &[])
            .unwrap();
        let admin = c.admin.unwrap();
        assert_eq!((admin.listen, admin.token_file), ("127.0.0.1:9464".parse().unwrap(), "/b/admin.token".into()));
        let off = Config::parse(&format!("{MINIMAL}\n[admin]\nlisten = \"off\"\n"), Path::new("/"), &[]).unwrap();
        assert_eq!(off.admin, None);
    }

    #[test]
    fn env_overrides_win() {
        let env = vec![
            ("BROKER__LISTEN__ADDRESS".to_owned(), "0.0.0.0:9000".to_owned()),
            ("BROKER__LIMITS__SUBMIT_BURST".to_owned(), "7".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let c = Config::parse(MINIMAL, Path::new("/"), &env).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.limits.submit_burst, 7);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = MINIMAL
            .replace("address = \"127.0.0.1:7443\"", "address = \"nowhere\"")
            .replace("ack_deadline_urgent = \"4h\"", "ack_deadline_urgent = \"soon\"")
            .replace("data_dir = \"data\"", "")
            .replace("unacked_retention = \"30d\"", "unacked_retention = \"1h\"");
        let err = Config::parse(&text, Path::new("/"), &[("BROKER__LOG__FORMAT".into(), "xml".into())]).unwrap_err();
        let all = err.0.join("\n");
        for expected in [
            "listen.address",
            "ack_deadline_urgent",
            "storage.data_dir is required",
            "unacked_retention must be longer",
            "log.format",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(err.0.len(), 5, "{all}");
    }

    #[test]
    fn unknown_settings_are_refused() {
        let err = Config::parse(&format!("{MINIMAL}\n[storage2]\nx = 1\n"), Path::new("/"), &[]).unwrap_err();
        assert!(err.0[0].contains("storage2"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3d"), Some(Duration::from_secs(259_200)));
        assert_eq!(parse_duration("3 days"), None);
        assert_eq!(parse_duration("h"), None);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// packaging/broker.toml explains every setting: it must parse, and it
    /// must set every key the configuration knows.
    #[test]
    fn the_packaged_example_parses_and_sets_everything() {
        let text = include_str!("../../packaging/broker.toml");
        let c = Config::parse(text, Path::new("/etc/referral-broker"), &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:7443".parse().unwrap());
        let admin = c.admin.expect("the example turns the admin endpoint on");
        assert_eq!(admin.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(admin.token_file, Path::new("/etc/referral-broker/admin.token"));
        let table: toml::Table = text.parse().unwrap();
        let keys: usize = table.values().map(|v| v.as_table().map_or(0, |t| t.len())).sum();
        // 38 = the fields of the Raw* structs above; unknown keys are refused by parsing.
        assert_eq!(
            keys, 38,
            "a setting was added to Config without being explained in packaging/broker.toml (or the reverse)"
        );
    }
}

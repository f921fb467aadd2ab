//! `certs dev`: a complete development federation in one step: a CA, a
//! police district and a municipality's social services with a `system` and
//! an `oncall` principal each, one `auditor`, broker credentials, the signed
//! directory, and a ready profile folder per principal.

use std::path::{Path, PathBuf};

use referral_proto::directory::{AgencyKind, EscalationContact};
use referral_proto::ids::{AgencyId, Principal, Role, TrustDomain};
use referral_proto::time::Timestamp;

use crate::federation::{Federation, FederationError};
use crate::profile::{self, NewProfile, ProfileError};
use crate::{DAY_MS, broker_creds, keygen};

/// How long the development federation's directory is valid.
pub const DEV_DIRECTORY_VALIDITY_DAYS: i64 = 90;

pub const TRUST_DOMAIN: &str = "igor.example.se";
pub const POLICE: &str = "polisen-huddinge";
pub const SOCIAL: &str = "huddinge-socialtjanst";
/// The auditor's organisation (a supervisory authority; not an agency in the directory).
pub const AUDITOR_ORG: &str = "imy";
const MARKER: &str = ".referral-dev-federation";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}: already holds a development federation; pass --force to replace it")]
    Exists(PathBuf),
    #[error("{0}: exists and is not a development federation made by 'certs dev'; refusing to touch it")]
    NotOurs(PathBuf),
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Paths inside a development federation folder.
#[derive(Debug, Clone)]
pub struct DevFederation {
    pub dir: PathBuf,
}

impl DevFederation {
    pub fn at(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }
    pub fn exists(&self) -> bool {
        self.dir.join(MARKER).exists()
    }
    pub fn federation_dir(&self) -> PathBuf {
        self.dir.join("federation")
    }
    pub fn broker_dir(&self) -> PathBuf {
        self.dir.join("broker")
    }
    pub fn agency_keys_dir(&self) -> PathBuf {
        self.dir.join("agency-keys")
    }
    /// The profile folder of `<agency>-<role>` (or `auditor`).
    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir.join("profiles").join(name)
    }
    pub fn profile_names() -> [String; 5] {
        [
            format!("{POLICE}-system"),
            format!("{POLICE}-oncall"),
            format!("{SOCIAL}-system"),
            format!("{SOCIAL}-oncall"),
            "auditor".to_owned(),
        ]
    }
}

/// Options for [`create`].
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// `host:port` clients connect to.
    pub broker_addr: String,
    pub force: bool,
}

fn principal(td: &TrustDomain, agency: &str, role: Role, name: &str) -> Principal {
    Principal::new(td.clone(), AgencyId::new(agency).expect("constant"), role, name).expect("constant")
}

/// Creates the development federation in `dir`.
pub fn create(dir: &Path, opts: &DevOptions, now: Timestamp) -> Result<DevFederation, DevError> {
    let dev = DevFederation::at(dir);
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
        if !dev.exists() {
            return Err(DevError::NotOurs(dir.to_owned()));
        }
        if !opts.force {
            return Err(DevError::Exists(dir.to_owned()));
        }
        for sub in ["federation", "broker", "agency-keys", "profiles", MARKER] {
            let p = dir.join(sub);
            let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            if let Err(source) = r
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(DevError::Io { path: p, source });
            }
        }
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DevError::Io { path, source }
    };
    crate::durable_file::create_dir_all(dir).map_err(io(dir))?;
    crate::durable_file::write(dir.join(MARKER), "made by 'certs dev'; safe to delete with the folder\n")
        .map_err(io(dir))?;
    let td = TrustDomain::new(TRUST_DOMAIN).expect("constant");
    let mut fed = Federation::init(&dev.federation_dir(), &td, now, 3650)?;

    let agencies = [
        (POLICE, AgencyKind::Police, "Polisen, lokalpolisområde Huddinge", "vakthavande", "Vakthavande befäl"),
        (SOCIAL, AgencyKind::Municipal, "Huddinge kommun, socialtjänsten", "socialjour", "Socialjouren"),
    ];
    let keys_dir = dev.agency_keys_dir();
    crate::durable_file::create_dir_all(&keys_dir).map_err(io(&keys_dir))?;
    for (id, kind, name, oncall, oncall_title) in agencies {
        let agency = AgencyId::new(id).expect("constant");
        let escalation = EscalationContact {
            principal: principal(&td, id, Role::Oncall, oncall),
            display_name: oncall_title.to_owned(),
            phone: "+46 8 000 000 00".to_owned(),
        };
        fed.add_agency(&agency, kind, name, Some(escalation))?;
        let (_, files) = keygen::generate(
            &agency,
            &keys_dir.join(format!("{id}.key")),
            now.plus_millis(-DAY_MS),
            now.plus_millis(730 * DAY_MS),
            false,
        )?;
        fed.add_agency_key(&keygen::read_public(&files.public)?)?;
    }
    let host = opts.broker_addr.rsplit_once(':').map_or(opts.broker_addr.as_str(), |(h, _)| h);
    let mut dns = vec!["localhost".to_owned()];
    if host.parse::<std::net::IpAddr>().is_err() && host != "localhost" {
        dns.push(host.to_owned());
    }
    let ips = vec!["127.0.0.1".parse().expect("constant"), "::1".parse().expect("constant")];
    broker_creds::create(&mut fed, &dev.broker_dir(), dns, ips, now, 365, false)?;
    // Longer than the default, so that tests may move a broker's clock past
    // the 30-day retention periods without the directory going stale.
    fed.publish_directory_valid_for(now, DEV_DIRECTORY_VALIDITY_DAYS)?;

    let broker_url = format!("https://{}", opts.broker_addr);
    let fed_key = fed.federation_key();
    let ca_pem = fed.ca().cert_pem().to_owned();
    let people = [
        (POLICE, Role::System, "arendesystem"),
        (POLICE, Role::Oncall, "vakthavande"),
        (SOCIAL, Role::System, "verksamhetssystem"),
        (SOCIAL, Role::Oncall, "socialjour"),
        (AUDITOR_ORG, Role::Auditor, "granskare"),
    ];
    for ((agency, role, name), profile_name) in people.into_iter().zip(DevFederation::profile_names()) {
        let p = principal(&td, agency, role, name);
        let issued = fed.issue_principal(&p, now.plus_millis(-60_000), now.plus_millis(365 * DAY_MS))?;
        let bundles: Vec<PathBuf> =
            if role == Role::Auditor { vec![] } else { vec![keys_dir.join(format!("{agency}.key"))] };
        profile::write(
            &dev.profile(&profile_name),
            &NewProfile {
                principal: &p,
                broker: &broker_url,
                server_name: "localhost",
                issued: &issued,
                ca_pem: &ca_pem,
                federation_key: &fed_key,
                bundle_files: &bundles,
                min_directory_version: fed.state().directory_version,
            },
            false,
        )?;
    }
    Ok(dev)
}

//! The `certs` command line: parsed here, carried out by the rest of the library.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::federation::Federation;
use crate::profile::{self, NewProfile};
use crate::{broker_creds, dev, keygen, now};
use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use referral_proto::directory::{AgencyKind, EscalationContact};
use referral_proto::ids::{AgencyId, Principal, TrustDomain};

const DAY_MS: i64 = 86_400_000;

/// The referral federation's PKI tool: CA, certificates, CRLs, agency keys and the signed directory.
#[derive(Debug, Parser)]
#[command(name = "certs", version)]
pub struct Cli {
    /// Machine-readable output: JSON from show and revoke, and an error as
    /// one JSON object on standard error. Before or after the subcommand.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where and for what names the broker's server certificate is made.
#[derive(Debug, clap::Args)]
pub struct ServerCertArgs {
    /// The federation folder (made by 'certs init').
    #[arg(long)]
    dir: PathBuf,
    /// Folder for the broker's credentials.
    #[arg(long)]
    out: PathBuf,
    /// DNS names for the server certificate.
    #[arg(long = "dns", required = true)]
    dns: Vec<String>,
    /// IP addresses for the server certificate.
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// Validity in days from now.
    #[arg(long, default_value_t = 365)]
    days: i64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a complete development federation (two agencies, five principals, broker credentials).
    Dev {
        /// Folder to create (must be empty or an earlier dev federation).
        #[arg(long, default_value = "dev-federation")]
        dir: PathBuf,
        /// Address clients will use to reach the broker.
        #[arg(long, default_value = "127.0.0.1:7443")]
        broker_addr: String,
        /// Replace an existing development federation in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Create a new federation: CA, directory key, empty registry.
    Init {
        /// The federation folder (made by 'certs init').
        #[arg(long)]
        dir: PathBuf,
        /// The SPIFFE trust domain every principal's id starts with (e.g. igor.example.se).
        #[arg(long)]
        trust_domain: String,
        /// CA validity in days.
        #[arg(long, default_value_t = 3650)]
        ca_days: i64,
    },
    /// Register an agency.
    AddAgency {
        /// The federation folder (made by 'certs init').
        #[arg(long)]
        dir: PathBuf,
        /// The agency id (lowercase letters, digits and '-'), e.g. polisen-huddinge.
        #[arg(long)]
        id: String,
        /// police or municipal.
        #[arg(long)]
        kind: AgencyKind,
        /// The agency's name as people read it in the directory.
        #[arg(long)]
        name: String,
        /// SPIFFE id alerted when the agency misses an ack deadline.
        #[arg(long, requires_all = ["escalation_name", "escalation_phone"])]
        escalation_principal: Option<String>,
        /// Name of the escalation contact, as people read it.
        #[arg(long)]
        escalation_name: Option<String>,
        /// Phone number of the escalation contact.
        #[arg(long)]
        escalation_phone: Option<String>,
    },
    /// Generate an agency key bundle (run by the agency): OUT (secret, 0600) and OUT.pub.
    Keygen {
        /// The agency id the bundle is for.
        #[arg(long)]
        agency: String,
        /// File for the secret key bundle (0600); the public half is written to OUT.pub.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days from now.
        #[arg(long, default_value_t = 730)]
        days: i64,
        /// Start of validity (RFC 3339); default now. Use a future time to stage a rotation.
        #[arg(long)]
        not_before: Option<String>,
        /// Replace what is already there.
        #[arg(long)]
        force: bool,
    },
    /// Copy an agency key bundle into an existing profile (after a key rotation).
    AddProfileKey {
        /// The profile folder.
        #[arg(long)]
        profile: PathBuf,
        /// The key bundle file (from keygen).
        #[arg(long)]
        key: PathBuf,
    },
    /// Register the public half (a .pub file from keygen) of an agency key bundle.
    AddKey {
        /// The federation folder (made by 'certs init').
        #[arg(long)]
        dir: PathBuf,
        /// The .pub file 'certs keygen' wrote beside the bundle.
        #[arg(long)]
        public: PathBuf,
    },
    /// Create the broker's server certificate, key and log key in OUT.
    Broker {
        #[command(flatten)]
        server: ServerCertArgs,
        /// Replace what is already there.
        #[arg(long)]
        force: bool,
    },
    /// Renew the broker's server certificate and key in OUT (the log key stays).
    RenewServerCert {
        #[command(flatten)]
        server: ServerCertArgs,
    },
    /// Make a principal's TLS key and a certificate request (run by the agency; the key never leaves OUT).
    Request {
        /// spiffe://TRUST-DOMAIN/agency/AGENCY-ID/ROLE/NAME
        #[arg(long)]
        principal: String,
        /// Folder to create: key.pem (0600, stays here) and request.csr (send it to the federation).
        #[arg(long)]
        out: PathBuf,
        /// Replace a request already in OUT.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate: with --csr, for an agency's own key (OUT receives the certificate and what
    /// the agency needs besides, no private key); without, a new key and a whole profile folder in OUT.
    Issue {
        /// The federation folder.
        #[arg(long)]
        dir: PathBuf,
        /// spiffe://TRUST-DOMAIN/agency/AGENCY-ID/ROLE/NAME
        #[arg(long)]
        principal: String,
        /// A certificate request from 'certs request'; it must name PRINCIPAL.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Profile folder to write, or with --csr the folder to hand back to the agency.
        #[arg(long)]
        out: PathBuf,
        /// https://host:port of the broker.
        #[arg(long)]
        broker: String,
        /// DNS name in the broker's certificate.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Agency key bundle files to put in the profile (system and oncall roles; not with --csr).
        #[arg(long = "agency-keys")]
        agency_keys: Vec<PathBuf>,
        /// Certificate validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Replace a profile or an issued folder already in OUT.
        #[arg(long)]
        force: bool,
    },
    /// Assemble a profile folder on the agency's side from its request folder and what the federation issued.
    Profile {
        /// The folder 'certs request' made (holds the private key).
        #[arg(long)]
        request: PathBuf,
        /// The folder 'certs issue --csr' made.
        #[arg(long)]
        issued: PathBuf,
        /// Profile folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Agency key bundle files to put in the profile (system and oncall roles).
        #[arg(long = "agency-keys")]
        agency_keys: Vec<PathBuf>,
        /// Replace a profile already in OUT.
        #[arg(long)]
        force: bool,
    },
    /// Revoke certificates by serial (hex) or subject (SPIFFE id), and write a new CRL.
    Revoke {
        /// The federation folder (made by 'certs init').
        #[arg(long)]
        dir: PathBuf,
        /// A serial number in hex or a SPIFFE id.
        target: String,
    },
    /// Write a fresh CRL (CRLs expire; the broker refuses clients once its CRL has).
    Crl {
        /// The federation folder (made by 'certs init').
        #[arg(long)]
        dir: PathBuf,
    },
    /// Sign and write the next directory version (directory.bin). Every
    /// party refuses it once its validity has passed: re-sign before then.
    Directory {
        /// The federation folder (made by 'certs init').
        #[arg(long)]
        dir: PathBuf,
        /// Days the new version stays valid (1 to 366).
        #[arg(long, default_value_t = crate::federation::DIRECTORY_VALIDITY_DAYS)]
        valid_days: i64,
    },
    /// Show the registry: agencies, keys and certificates.
    Show {
        /// The federation folder (made by 'certs init').
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print shell completions for certs.
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: crate::tool_docs::Shell,
    },
    /// Write the man pages of certs (certs.1 and one per subcommand) into a folder.
    Manpages {
        /// Folder for the pages (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Carries out a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let now = now();
    let json = cli.json;
    match cli.command {
        Command::Completions { shell } => {
            crate::tool_docs::completions(shell, <Cli as clap::CommandFactory>::command(), &mut std::io::stdout());
        }
        Command::Manpages { out } => {
            for page in crate::tool_docs::write_man_page(<Cli as clap::CommandFactory>::command(), &out)? {
                println!("{}", page.display());
            }
        }
        Command::Dev { dir, broker_addr, force } => {
            let dev = dev::create(&dir, &dev::DevOptions { broker_addr, force }, now)?;
            println!("development federation written to {}", dev.dir.display());
            println!("  federation: {}", dev.federation_dir().display());
            println!("  broker:     {}", dev.broker_dir().display());
            for name in dev::DevFederation::profile_names() {
                println!("  profile:    {}", dev.profile(&name).display());
            }
        }
        Command::Init { dir, trust_domain, ca_days } => {
            let td = TrustDomain::new(trust_domain)?;
            Federation::init(&dir, &td, now, ca_days)?;
            println!("federation {td} created in {}", dir.display());
        }
        Command::AddAgency { dir, id, kind, name, escalation_principal, escalation_name, escalation_phone } => {
            let mut fed = Federation::open(&dir)?;
            let escalation = match escalation_principal {
                None => None,
                Some(p) => Some(EscalationContact {
                    principal: Principal::parse_uri(&p).context("--escalation-principal")?,
                    display_name: escalation_name.unwrap_or_default(),
                    phone: escalation_phone.unwrap_or_default(),
                }),
            };
            fed.add_agency(&AgencyId::new(id.clone())?, kind, &name, escalation)?;
            println!("agency {id} registered; publish with 'certs directory --dir {}'", dir.display());
        }
        Command::Keygen { agency, out, days, not_before, force } => {
            let nb = match not_before {
                Some(t) => referral_proto::time::Timestamp::parse_rfc3339(&t)?,
                None => now,
            };
            let (bundle, files) =
                keygen::generate(&AgencyId::new(agency)?, &out, nb, nb.plus_millis(days * DAY_MS), force)?;
            println!(
                "key bundle {} written to {} (secret) and {}",
                bundle.key_id(),
                files.secret.display(),
                files.public.display()
            );
        }
        Command::AddProfileKey { profile, key } => {
            profile::add_bundle(&profile, &key)?;
            println!("key bundle {} added to profile {}", key.display(), profile.display());
        }
        Command::AddKey { dir, public } => {
            let mut fed = Federation::open(&dir)?;
            let id = fed.add_agency_key(&keygen::read_public(&public)?)?;
            println!("key {id} registered; publish with 'certs directory --dir {}'", dir.display());
        }
        Command::Broker { server: ServerCertArgs { dir, out, dns, ips, days }, force } => {
            let mut fed = Federation::open(&dir)?;
            broker_creds::create(&mut fed, &out, dns, ips, now, days, force)?;
            println!("broker credentials written to {}; publish the log key with 'certs directory'", out.display());
        }
        Command::RenewServerCert { server: ServerCertArgs { dir, out, dns, ips, days } } => {
            let mut fed = Federation::open(&dir)?;
            broker_creds::renew_server_cert(&mut fed, &out, dns, ips, now, days)?;
            println!("server certificate renewed in {}; the broker picks it up on reload (SIGHUP)", out.display());
        }
        Command::Request { principal, out, force } => {
            let p = Principal::parse_uri(&principal)?;
            crate::request::make(&out, &p, force)?;
            println!(
                "key and certificate request for {p} written to {}; send {} to the federation, keep the key",
                out.display(),
                out.join(crate::request::CSR).display()
            );
        }
        Command::Issue { dir, principal, csr: Some(csr), out, broker, server_name, agency_keys, days, force } => {
            if !agency_keys.is_empty() {
                bail!("--agency-keys goes to 'certs profile' on the agency's side, not to 'certs issue --csr'");
            }
            if !broker.starts_with("https://") {
                bail!("--broker {broker:?} must be an https:// address");
            }
            let mut fed = Federation::open(&dir)?;
            let p = Principal::parse_uri(&principal)?;
            let csr_pem = std::fs::read_to_string(&csr).with_context(|| format!("cannot read {}", csr.display()))?;
            let cert_pem = fed.issue_principal_for_request(
                &p,
                &csr_pem,
                &csr.display().to_string(),
                now.plus_millis(-60_000),
                now.plus_millis(days * DAY_MS),
            )?;
            let issued = crate::request::Issued {
                principal: p.uri(),
                broker,
                server_name,
                min_directory_version: fed.state().directory_version,
            };
            crate::request::write_issued(&out, &issued, &cert_pem, fed.ca().cert_pem(), &fed.federation_key(), force)?;
            println!("certificate for {p} written to {}; hand the folder back to the agency", out.display());
        }
        Command::Issue { dir, principal, csr: None, out, broker, server_name, agency_keys, days, force } => {
            let mut fed = Federation::open(&dir)?;
            let p = Principal::parse_uri(&principal)?;
            if !broker.starts_with("https://") {
                bail!("--broker {broker:?} must be an https:// address");
            }
            let issued = fed.issue_principal(&p, now.plus_millis(-60_000), now.plus_millis(days * DAY_MS))?;
            let ca_pem = fed.ca().cert_pem().to_owned();
            profile::write(
                &out,
                &NewProfile {
                    principal: &p,
                    broker: &broker,
                    server_name: &server_name,
                    issued: &issued,
                    ca_pem: &ca_pem,
                    federation_key: &fed.federation_key(),
                    bundle_files: &agency_keys,
                    min_directory_version: fed.state().directory_version,
                },
                force,
            )?;
            println!("certificate {} for {p} written to profile {}", hex::encode(&issued.serial), out.display());
        }
        Command::Profile { request, issued, out, agency_keys, force } => {
            let p = crate::request::assemble_profile(&request, &issued, &out, &agency_keys, force)?;
            println!("profile for {p} written to {}", out.display());
        }
        Command::Revoke { dir, target } => {
            let mut fed = Federation::open(&dir)?;
            let revoked = fed.revoke(&target, now)?;
            if json {
                println!("{}", serde_json::json!({"revoked": revoked, "crl": dir.join("crl.pem")}));
                return Ok(());
            }
            for serial in revoked {
                println!("revoked {serial}");
            }
            println!("CRL written to {}; the broker picks it up on reload (SIGHUP)", dir.join("crl.pem").display());
        }
        Command::Crl { dir } => {
            Federation::open(&dir)?.write_crl(now)?;
            println!("CRL written to {}", dir.join("crl.pem").display());
        }
        Command::Directory { dir, valid_days } => {
            let mut fed = Federation::open(&dir)?;
            fed.publish_directory_valid_for(now, valid_days)?;
            println!(
                "directory version {} written to {}, valid until {}; re-sign before then",
                fed.state().directory_version,
                dir.join("directory.bin").display(),
                now.plus_millis(valid_days * DAY_MS),
            );
        }
        Command::Show { dir } => {
            let fed = Federation::open(&dir)?;
            let s = fed.state();
            if json {
                println!("{}", serde_json::to_string(s)?);
                return Ok(());
            }
            println!(
                "trust domain {}, directory version {}, CRL number {}",
                s.trust_domain, s.directory_version, s.crl_number
            );
            for a in &s.agencies {
                println!("agency {} ({}) {}", a.id, a.kind.as_str(), a.display_name);
                for k in &a.keys {
                    println!("  key {} valid {} .. {}", k.key_id, k.not_before, k.not_after);
                }
            }
            for c in &s.certificates {
                let state = c.revoked_at.map_or("valid".to_owned(), |t| format!("revoked {t}"));
                println!("cert {} {} until {} ({state})", c.serial, c.subject, c.not_after);
            }
        }
    }
    Ok(())
}

/// Parses the command line (`args` includes the program name) and runs it:
/// what the binary does. A usage error under `--json` is one JSON object
/// ([`crate::tool_docs::parse_args`]).
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    match crate::tool_docs::parse_args(args) {
        Ok(cli) => main_with(cli),
        Err(code) => code,
    }
}

/// Runs the CLI and turns the outcome into an exit code, printing errors.
pub fn main_with(cli: Cli) -> std::process::ExitCode {
    let json = cli.json;
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if json => {
            eprintln!("{}", serde_json::json!({"exit_code": 1, "message": format!("{e:#}")}));
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The replicated engine: the same tables in PostgreSQL, for sites that
//! run the broker on a database with synchronous standbys.
//!
//! Layout: one table `kv (tbl, k, v)` keyed by (table, key), so that every
//! [`Table`] keeps sled's byte order (`bytea` compares bytewise) and a
//! whole committer batch is one PostgreSQL transaction. The schema is
//! versioned in `broker_schema` and migrated at start under an advisory
//! lock, so two nodes starting together migrate once.
//!
//! Durability: a commit returns when PostgreSQL has committed the
//! transaction, which with `synchronous_commit = on` (the default) means
//! flushed to the primary's WAL and, with `synchronous_standby_names`,
//! to a standby's. Reads see only committed data.
//!
//! Several broker nodes serve at once, one writer at a time: each
//! committer batch begins ([`Store::begin_batch`]) by locking the one row
//! of `broker_writer` (`FOR UPDATE`) in a transaction held on a connection
//! of its own; the committer's reads while it builds the batch go through
//! that transaction (so they see every batch any node committed before),
//! and the commit writes in it, advances `broker_writer.generation` by one
//! and commits, which releases the lock to the next node. A node whose
//! last known generation is not the one it finds under the lock reloads
//! what it derived from the store (the audit frontier, counters,
//! deadlines) before building its batch, so audit indexes, queue
//! sequences, first-ack-wins and deadlines are decided on the newest
//! state, by one node at a time. `node` and `since` name the last writer
//! (for operators); `epoch` counts the nodes' starts.
//!
//! What other nodes must announce (see [`Batch::changes`]) is written in
//! the same transaction to `broker_changes` under its generation, and a
//! `NOTIFY broker_changes` carrying only that number wakes every node's
//! listener, which reads the rows it lacks in generation order; it also
//! polls, since notifications are lost while disconnected. Rows are kept
//! ten minutes.
//!
//! Audit entries are append-only: they are INSERTed, never upserted, so a
//! batch built on a stale view of the log (another writer appended first)
//! fails as a whole with [`StoreError::Io`] naming the conflict instead of
//! overwriting an entry; the committer then reloads from the store.
//!
//! TLS to the database is required and verified against the configured CA
//! (rustls on ring). The connection string may name several hosts; with
//! `target_session_attrs=read-write` the pool follows the primary.
//!
//! The trait is synchronous and is called from the committer's thread and
//! from async handlers, so the store runs its own small runtime: each call
//! is a task there, and the caller waits for it (inside
//! [`tokio::task::block_in_place`] when called from the broker's runtime).
//!
//! The only module that names PostgreSQL.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;

use super::records::STORE_FORMAT;
use super::{Batch, Entries, Op, Store, StoreError, Table};
use crate::store::keys::meta;

/// The schema versions this broker knows, in order; each is applied once.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE kv (
        tbl smallint NOT NULL,
        k bytea NOT NULL,
        v bytea NOT NULL,
        PRIMARY KEY (tbl, k)
    );
    CREATE TABLE broker_writer (
        id smallint PRIMARY KEY CHECK (id = 1),
        epoch bigint NOT NULL,
        node text NOT NULL,
        since timestamptz NOT NULL
    )",
    ),
    (
        2,
        "ALTER TABLE broker_writer ADD COLUMN generation bigint NOT NULL DEFAULT 0;
        CREATE TABLE broker_changes (
            generation bigint PRIMARY KEY,
            node bigint NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            changes bytea NOT NULL
        )",
    ),
];

/// The channel of `NOTIFY`; its payload is a generation number only.
const CHANNEL: &str = "broker_changes";

/// How long `broker_changes` rows are kept; a listener that could not
/// read for half of this re-reads everything instead.
const CHANGES_KEPT: Duration = Duration::from_secs(600);

/// How long a batch waits for another node's batch before it fails, and
/// how long a node may hold the writer lock idle (a hung or partitioned
/// node loses its transaction, and so the lock, after this).
const LOCK_WAIT: &str = "10s";
const LOCK_IDLE: &str = "30s";

/// Why `broker backup` and `broker restore` refuse this engine.
pub const NO_BROKER_BACKUP: &str = "the store is PostgreSQL (storage.engine): back it up and restore it with \
     PostgreSQL's own tools, pg_basebackup with WAL archiving (OPERATIONS.md), not with 'broker backup' or 'broker restore'";

/// The schema version this broker needs.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// An arbitrary, fixed advisory-lock key for migrations ("referral").
const MIGRATION_LOCK: i64 = 0x7265_6665_7272_616c;

/// A database call that takes longer than this fails (the committer
/// retries with backoff, handlers answer UNAVAILABLE) rather than hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How to reach the database (`[storage.postgres]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// A libpq-style connection string or URL; several hosts allowed.
    pub url: String,
    /// The CA that signed the database servers' certificates (PEM).
    pub ca_file: PathBuf,
    /// A file holding the password (mode 0600), kept out of the
    /// configuration; None when the URL or client certificates suffice.
    pub password_file: Option<PathBuf>,
    /// Most pooled connections.
    pub pool_size: usize,
}

/// With PostgreSQL, `data_dir` holds only the node's checkpoint of the
/// audit log: created 0700 when missing, and never a sled store.
pub fn prepare_checkpoint_dir(dir: &Path) -> Result<(), StoreError> {
    let refuse = |message: String| StoreError::Refused { path: dir.display().to_string(), message };
    if dir.join("db").exists() {
        return Err(refuse(
            "holds a sled store, but storage.engine is \"postgres\"; point data_dir at a folder of its own".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| refuse(format!("cannot create it: {e}")))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| refuse(format!("cannot make it private: {e}")))
}

fn read_password(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} can be read by others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(password.to_owned())
}

/// The `tbl` column: the table's stored code.
fn table_id(t: Table) -> i16 {
    i16::from(t.code())
}

/// A database error as the operator should see it: PostgreSQL's message
/// and SQLSTATE, never its DETAIL (which can quote row values).
fn db_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if db.code() == &tokio_postgres::error::SqlState::DISK_FULL => StoreError::NoSpace,
        Some(db) => StoreError::Io(format!("postgres: {} (SQLSTATE {})", db.message(), db.code().code())),
        None => {
            // tokio-postgres says "error connecting to server"; the cause
            // (refused, TLS, timeout) is in its sources.
            let mut text = format!("postgres: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            StoreError::Io(text)
        }
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_err(e),
        other => StoreError::Io(format!("postgres: {other}")),
    }
}

pub struct PgStore {
    pool: Pool,
    /// This store's random id in `broker_changes`, so its own rows are
    /// not announced twice.
    node_id: i64,
    /// Host and process, for `broker_writer.node`.
    node_name: String,
    /// The batch the committer's thread began, holding the writer lock.
    held: std::sync::Mutex<Option<Held>>,
    /// For the listener's own connection.
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Where the store's tasks run; None only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// The connection string without its password, for messages.
    target: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks; the broker may drop the store from async code.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The connection target for messages: hosts, ports and database, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(|p| p.to_string()).collect();
    format!(
        "postgres://{}@{} port {} database {}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("?")
    )
}

fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read the database CA {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls_pki_types::CertificateDer<'static> =
            cert.map_err(|e| format!("the database CA {} is not PEM: {e}", ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("the database CA {} is not usable: {e}", ca_file.display()))?;
        found += 1;
    }
    if found == 0 {
        return Err(format!("the database CA {} holds no certificate", ca_file.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What `broker check-config` found in the database, without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Hosts, ports, database and user (never the password).
    pub target: String,
    /// The schema version the database holds; 0 before the first start.
    pub schema_version: i32,
}

impl Probe {
    pub fn describe_schema(&self) -> String {
        match self.schema_version {
            0 => format!(
                "reachable over verified TLS; no schema yet, the broker creates version {SCHEMA_VERSION} at start"
            ),
            v if v == SCHEMA_VERSION => format!("reachable over verified TLS; schema version {v}"),
            v => format!("reachable over verified TLS; schema version {v}, migrated to {SCHEMA_VERSION} at start"),
        }
    }
}

/// Connects and reads the schema version; refuses a database newer than
/// this broker. Changes nothing.
pub fn probe(settings: &PgSettings) -> Result<Probe, String> {
    let store = PgStore::connect(settings).map_err(|e| e.to_string())?;
    let schema_version = store.schema_version().map_err(|e| format!("{}: {e}", store.target))?;
    if schema_version > SCHEMA_VERSION {
        return Err(format!(
            "{} has schema version {schema_version}, newer than this broker's {SCHEMA_VERSION}; \
             upgrade the broker (never downgrade a database)",
            store.target
        ));
    }
    Ok(Probe { target: store.target.clone(), schema_version })
}

impl PgStore {
    /// Connects, checks TLS and the schema, migrates a fresh or older
    /// schema, and writes the store format marker into a fresh database.
    pub fn open(settings: &PgSettings) -> Result<Self, StoreError> {
        let refuse = |message: String| StoreError::Refused { path: "storage.postgres".into(), message };
        let store = Self::connect(settings)?;
        store.migrate().map_err(|e| match e {
            StoreError::Io(m) => refuse(format!("{}: {m}", store.target)),
            other => other,
        })?;
        store.register()?;
        match store.get(Table::Meta, meta::FORMAT)? {
            Some(f) if f == STORE_FORMAT => {}
            Some(f) => {
                return Err(refuse(format!(
                    "{} holds store format {:?}, this broker reads {:?}",
                    store.target,
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(STORE_FORMAT)
                )));
            }
            None => {
                let holds = store.range(Table::Meta, &[], &[0xff; 8], 1)?;
                if !holds.is_empty() {
                    return Err(refuse(format!("{} holds data but no store format marker", store.target)));
                }
                let mut b = Batch::default();
                b.put(Table::Meta, meta::FORMAT.to_vec(), STORE_FORMAT.to_vec());
                store.commit(&b)?;
            }
        }
        Ok(store)
    }

    /// A pool for `settings`, checked by one connection (TLS verified,
    /// password accepted); the schema is not touched (for tools that read).
    pub fn connect(settings: &PgSettings) -> Result<Self, StoreError> {
        let refuse = |message: String| StoreError::Refused { path: "storage.postgres".into(), message };
        let mut config: tokio_postgres::Config =
            settings.url.parse().map_err(|e| refuse(format!("url is not a PostgreSQL connection string: {e}")))?;
        let target = describe(&config);
        if let Some(path) = &settings.password_file {
            config.password(read_password(path).map_err(refuse)?);
        }
        // Never plaintext: TLS is required and the server is verified.
        config.ssl_mode(SslMode::Require);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&settings.ca_file).map_err(refuse)?);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Verified },
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("cannot start the database runtime: {e}")))?;
        let pool = {
            let _guard = runtime.enter();
            Pool::builder(manager)
                .max_size(settings.pool_size.max(2))
                .wait_timeout(Some(CALL_TIMEOUT))
                .create_timeout(Some(CALL_TIMEOUT))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Io(format!("postgres: {e}")))?
        };
        let node_id = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish() as i64
        };
        let node_name = format!(
            "{} pid {}",
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
            std::process::id()
        );
        let store = Self {
            pool,
            node_id,
            node_name,
            held: std::sync::Mutex::new(None),
            config,
            tls,
            runtime: Some(runtime),
            target,
        };
        let pool = store.pool.clone();
        store
            .run(async move {
                let client = pool.get().await.map_err(pool_err)?;
                client.simple_query("SELECT 1").await.map_err(db_err).map(|_| ())
            })
            .map_err(|e| match e {
                StoreError::Io(m) => refuse(format!("{}: {m}", store.target)),
                other => other,
            })?;
        Ok(store)
    }

    /// Runs `f` on the store's runtime and waits for it, bounded by [`CALL_TIMEOUT`].
    fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or_else(|| StoreError::Io("the store is closed".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let out = match tokio::time::timeout(CALL_TIMEOUT, f).await {
                Ok(out) => out,
                Err(_) => Err(StoreError::Io(format!("postgres: no answer within {CALL_TIMEOUT:?}"))),
            };
            let _ = tx.send(out);
        });
        let wait = move || rx.recv().unwrap_or_else(|_| Err(StoreError::Io("the database task stopped".into())));
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// The schema version the database holds (0: none yet).
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let exists = client
                .query_one("SELECT to_regclass('broker_schema') IS NOT NULL", &[])
                .await
                .map_err(db_err)?
                .get::<_, bool>(0);
            if !exists {
                return Ok(0);
            }
            let row =
                client.query_one("SELECT COALESCE(MAX(version), 0) FROM broker_schema", &[]).await.map_err(db_err)?;
            Ok(row.get::<_, i32>(0))
        })
    }

    /// Records this node's start in `broker_writer` (creating the row
    /// every batch locks); takes nothing from the nodes already serving.
    fn register(&self) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let node = self.node_name.clone();
        let epoch = self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_one(
                    "INSERT INTO broker_writer (id, epoch, node, since) VALUES (1, 1, $1, now())
                     ON CONFLICT (id) DO UPDATE SET epoch = broker_writer.epoch + 1
                     RETURNING epoch",
                    &[&node],
                )
                .await
                .map_err(db_err)?;
            Ok(row.get::<_, i64>(0))
        })?;
        tracing::info!(start = epoch, "serving on the database");
        Ok(())
    }

    /// The batch this thread began, if any.
    fn held_here(&self) -> Option<Arc<deadpool_postgres::Object>> {
        let held = self.held.lock().expect("held lock");
        held.as_ref().filter(|h| h.thread == std::thread::current().id()).map(|h| h.client.client().clone())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let target = self.target.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(db_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_err)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS broker_schema (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await
            .map_err(db_err)?;
            let found: i32 =
                tx.query_one("SELECT COALESCE(MAX(version), 0) FROM broker_schema", &[]).await.map_err(db_err)?.get(0);
            if found > SCHEMA_VERSION {
                return Err(StoreError::Refused {
                    path: "storage.postgres".into(),
                    message: format!(
                        "{target} has schema version {found}, newer than this broker's {SCHEMA_VERSION}; \
                         upgrade the broker (never downgrade a database)"
                    ),
                });
            }
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
                tx.batch_execute(sql).await.map_err(db_err)?;
                tx.execute("INSERT INTO broker_schema (version) VALUES ($1)", &[version]).await.map_err(db_err)?;
                tracing::info!(version, "database schema migrated");
            }
            tx.commit().await.map_err(db_err)
        })
    }
}

/// A batch begun by the committer's thread: a connection inside a
/// transaction that holds the `broker_writer` row lock.
struct Held {
    client: InTransaction,
    thread: std::thread::ThreadId,
    /// The generation found under the lock.
    generation: i64,
}

/// Opens a transaction on `client` and locks the writer row; the
/// generation found. Bounded: waits at most [`LOCK_WAIT`] for the lock.
async fn lock_writer(client: &tokio_postgres::Client) -> Result<i64, StoreError> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{LOCK_WAIT}'; SET LOCAL idle_in_transaction_session_timeout = '{LOCK_IDLE}'"
        ))
        .await
        .map_err(db_err)?;
    let row =
        client.query_one("SELECT generation FROM broker_writer WHERE id = 1 FOR UPDATE", &[]).await.map_err(db_err)?;
    Ok(row.get::<_, i64>(0))
}

/// A pooled connection inside a transaction (possibly holding the writer
/// lock, possibly with writes not yet committed). It goes back to the pool
/// only through [`InTransaction::ended`]; dropped any other way (a call
/// that timed out and was cancelled midway, a panic), it is closed, so the
/// server rolls the transaction back and releases the lock, and no later
/// borrower can find the transaction open, or commit its half.
struct InTransaction(Option<Arc<deadpool_postgres::Object>>);

impl InTransaction {
    fn new(object: deadpool_postgres::Object) -> Self {
        Self(Some(Arc::new(object)))
    }

    fn client(&self) -> &Arc<deadpool_postgres::Object> {
        self.0.as_ref().expect("taken only by ended() and drop")
    }

    /// The transaction was committed or rolled back: the connection may be reused.
    fn ended(mut self) {
        self.0.take();
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if let Some(object) = self.0.take().and_then(|c| Arc::try_unwrap(c).ok()) {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

/// Ends a failed transaction; a connection that cannot even roll back is
/// closed instead of going back to the pool.
async fn abandon(client: InTransaction) {
    if client.client().batch_execute("ROLLBACK").await.is_ok() {
        client.ended();
    }
}

/// One batch's writes, grouped by statement.
#[derive(Default)]
struct Grouped {
    ins_k: Vec<Vec<u8>>,
    ins_v: Vec<Vec<u8>>,
    put_t: Vec<i16>,
    put_k: Vec<Vec<u8>>,
    put_v: Vec<Vec<u8>>,
    del_t: Vec<i16>,
    del_k: Vec<Vec<u8>>,
}

impl Grouped {
    fn of(batch: &Batch) -> Self {
        // The last write to a key wins, as in a sled batch.
        let mut last: BTreeMap<(i16, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        let mut appended: Vec<Vec<u8>> = Vec::new();
        for op in &batch.ops {
            match op {
                Op::Put(Table::Audit, k, v) => {
                    appended.push(k.clone());
                    last.insert((table_id(Table::Audit), k.clone()), Some(v.clone()));
                }
                Op::Put(t, k, v) => {
                    last.insert((table_id(*t), k.clone()), Some(v.clone()));
                }
                Op::Delete(t, k) => {
                    last.insert((table_id(*t), k.clone()), None);
                }
            }
        }
        let audit = table_id(Table::Audit);
        let mut g = Grouped::default();
        for ((t, k), v) in last {
            match v {
                Some(v) if t == audit && appended.contains(&k) => {
                    g.ins_k.push(k);
                    g.ins_v.push(v);
                }
                Some(v) => {
                    g.put_t.push(t);
                    g.put_k.push(k);
                    g.put_v.push(v);
                }
                None => {
                    g.del_t.push(t);
                    g.del_k.push(k);
                }
            }
        }
        g
    }
}

/// Who writes a batch and what it tells the other nodes.
struct Writer {
    node_id: i64,
    node_name: String,
    changes: Vec<u8>,
}

/// Writes `g` inside the locked transaction on `client` (found at
/// `generation`), advances the generation, records and announces the
/// changes, and commits.
async fn write_locked(
    client: &tokio_postgres::Client,
    generation: i64,
    g: Grouped,
    who: Writer,
) -> Result<(), StoreError> {
    let audit = table_id(Table::Audit);
    if !g.ins_k.is_empty() {
        // Append-only, at the indexes the batch expects: a batch built on a
        // stale view of the log fails whole rather than overwrite an entry.
        let n = g.ins_k.len() as u64;
        let inserted = client
            .execute(
                "INSERT INTO kv (tbl, k, v) SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS a(k, v)
                 ON CONFLICT DO NOTHING",
                &[&audit, &g.ins_k, &g.ins_v],
            )
            .await
            .map_err(db_err)?;
        if inserted != n {
            return Err(StoreError::Io(
                "postgres: another writer appended to the audit log first; the batch was not written".into(),
            ));
        }
    }
    if !g.put_t.is_empty() {
        client
            .execute(
                "INSERT INTO kv (tbl, k, v) SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[])
                 ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v",
                &[&g.put_t, &g.put_k, &g.put_v],
            )
            .await
            .map_err(db_err)?;
    }
    if !g.del_t.is_empty() {
        client
            .execute(
                "DELETE FROM kv WHERE (tbl, k) IN (SELECT * FROM unnest($1::int2[], $2::bytea[]))",
                &[&g.del_t, &g.del_k],
            )
            .await
            .map_err(db_err)?;
    }
    let next = generation + 1;
    client
        .execute(
            "UPDATE broker_writer SET generation = $1, node = $2, since = now() WHERE id = 1",
            &[&next, &who.node_name],
        )
        .await
        .map_err(db_err)?;
    if !who.changes.is_empty() {
        client
            .execute(
                "INSERT INTO broker_changes (generation, node, changes) VALUES ($1, $2, $3)",
                &[&next, &who.node_id, &who.changes],
            )
            .await
            .map_err(db_err)?;
        // Delivered at commit; only the number, never what changed.
        client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()]).await.map_err(db_err)?;
    }
    // Every 256th batch, whatever it carries, drops what listeners no longer need.
    if next % 256 == 0 {
        let kept = format!("{} seconds", CHANGES_KEPT.as_secs());
        client
            .execute("DELETE FROM broker_changes WHERE at < now() - $1::text::interval", &[&kept])
            .await
            .map_err(db_err)?;
    }
    client.batch_execute("COMMIT").await.map_err(db_err)
}

impl Store for PgStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let g = Grouped::of(batch);
        let who = Writer { node_id: self.node_id, node_name: self.node_name.clone(), changes: batch.changes.clone() };
        let held = {
            let mut held = self.held.lock().expect("held lock");
            match held.take() {
                Some(h) if h.thread == std::thread::current().id() => Some(h),
                other => {
                    *held = other;
                    None
                }
            }
        };
        match held {
            // The committer's batch: written under the lock it began with.
            Some(h) => self.run(async move {
                let out = write_locked(h.client.client(), h.generation, g, who).await;
                match out {
                    Ok(()) => h.client.ended(),
                    Err(_) => abandon(h.client).await,
                }
                out
            }),
            // A batch on its own (start-up, tools): locks, writes, commits.
            None => {
                let pool = self.pool.clone();
                self.run(async move {
                    let client = InTransaction::new(pool.get().await.map_err(pool_err)?);
                    let out = match lock_writer(client.client()).await {
                        Ok(generation) => write_locked(client.client(), generation, g, who).await,
                        Err(e) => Err(e),
                    };
                    match out {
                        Ok(()) => client.ended(),
                        Err(_) => abandon(client).await,
                    }
                    out
                })
            }
        }
    }

    fn begin_batch(&self) -> Result<Option<u64>, StoreError> {
        self.end_batch();
        let pool = self.pool.clone();
        let (client, generation) = self.run(async move {
            let client = InTransaction::new(pool.get().await.map_err(pool_err)?);
            match lock_writer(client.client()).await {
                Ok(generation) => Ok((client, generation)),
                Err(e) => {
                    abandon(client).await;
                    Err(e)
                }
            }
        })?;
        *self.held.lock().expect("held lock") = Some(Held { client, thread: std::thread::current().id(), generation });
        Ok(Some(u64::try_from(generation).unwrap_or(0)))
    }

    fn end_batch(&self) {
        let held = {
            let mut held = self.held.lock().expect("held lock");
            match held.take() {
                Some(h) if h.thread == std::thread::current().id() => Some(h),
                other => {
                    *held = other;
                    None
                }
            }
        };
        if let Some(h) = held {
            // Nothing was written: the lock is released, the pool gets the connection back.
            let _ = self.run(async move {
                abandon(h.client).await;
                Ok(())
            });
        }
    }

    fn watch_changes(&self, sink: super::ChangeSink, poll: Duration) {
        let Some(runtime) = self.runtime.as_ref() else { return };
        let (config, tls, own) = (self.config.clone(), self.tls.clone(), self.node_id);
        runtime.spawn(listen(config, tls, own, sink, poll));
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let pool = self.pool.clone();
        let held = self.held_here();
        let key = key.to_vec();
        self.run(async move {
            let sql = "SELECT v FROM kv WHERE tbl = $1 AND k = $2";
            let row = match held {
                Some(client) => {
                    let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
                    client.query_opt(&stmt, &[&table_id(table), &key]).await.map_err(db_err)?
                }
                None => {
                    let client = pool.get().await.map_err(pool_err)?;
                    let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
                    client.query_opt(&stmt, &[&table_id(table), &key]).await.map_err(db_err)?
                }
            };
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn range(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let pool = self.pool.clone();
        let held = self.held_here();
        let (start, end) = (start.to_vec(), end.to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async move {
            let sql = "SELECT k, v FROM kv WHERE tbl = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4";
            let rows = match held {
                Some(client) => {
                    let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
                    client.query(&stmt, &[&table_id(table), &start, &end, &limit]).await.map_err(db_err)?
                }
                None => {
                    let client = pool.get().await.map_err(pool_err)?;
                    let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
                    client.query(&stmt, &[&table_id(table), &start, &end, &limit]).await.map_err(db_err)?
                }
            };
            Ok(rows.into_iter().map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))).collect())
        })
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client.query_one("SELECT pg_total_relation_size('kv')", &[]).await.map_err(db_err)?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    /// A failed PostgreSQL transaction is rolled back whole; the pool
    /// replaces broken connections itself. Only a batch still open is ended.
    fn recover(&self) -> Result<(), StoreError> {
        self.end_batch();
        Ok(())
    }

    /// PostgreSQL is backed up with its own tools (OPERATIONS.md).
    fn backup_to(&self, dir: &Path) -> Result<u64, StoreError> {
        Err(StoreError::Refused { path: dir.display().to_string(), message: NO_BROKER_BACKUP.into() })
    }
}

/// The listener: its own connection, `LISTEN broker_changes`, and on each
/// notification or every `poll`, the rows after the last one seen, handed
/// to `sink` in generation order (other nodes' only). Reconnects after a
/// second when the connection fails (e.g. to the new primary). Ends when
/// `sink` answers false (the broker stopped).
async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    own: i64,
    sink: super::ChangeSink,
    poll: Duration,
) {
    let sink = Arc::new(sink);
    // Start from the present, and re-read once there: the hub was built
    // from the store before this first connection, and what other nodes
    // wrote in between is in the counters, not in rows after `seen`.
    let mut seen: Option<i64> = None;
    let mut last_read = tokio::time::Instant::now();
    let mut warned = false;
    loop {
        let connected = config.connect(tls.clone()).await;
        let (client, mut connection) = match connected {
            Ok(c) => c,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %db_err(e), "the change listener cannot reach the database; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
        let conn = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                        let _ = wake_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let ok: Result<bool, tokio_postgres::Error> = async {
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            loop {
                let current: i64 =
                    client.query_one("SELECT generation FROM broker_writer WHERE id = 1", &[]).await?.get(0);
                let after = match seen {
                    // Rows may have been pruned: the sink re-reads instead.
                    Some(s) if last_read.elapsed() < CHANGES_KEPT / 2 => s,
                    _ => {
                        seen = Some(current);
                        if !forward(&sink, None).await {
                            return Ok(false);
                        }
                        current
                    }
                };
                let rows = client
                    .query(
                        "SELECT generation, node, changes FROM broker_changes WHERE generation > $1 AND generation <= $2
                         ORDER BY generation LIMIT 1000",
                        &[&after, &current],
                    )
                    .await?;
                let full = rows.len() == 1000;
                for row in rows {
                    let (generation, node, changes): (i64, i64, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
                    if node != own && !forward(&sink, Some(changes)).await {
                        return Ok(false);
                    }
                    seen = Some(generation);
                }
                if !full {
                    seen = Some(current.max(seen.unwrap_or(current)));
                }
                last_read = tokio::time::Instant::now();
                warned = false;
                if !full {
                    tokio::select! {
                        w = wake.recv() => {
                            if w.is_none() {
                                return Ok(true);
                            }
                        }
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
            }
        }
        .await;
        conn.abort();
        match ok {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %db_err(e), "the change listener lost the database; reconnecting");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Calls the sink off the runtime's workers (it may read the store).
async fn forward(sink: &Arc<super::ChangeSink>, changes: Option<Vec<u8>>) -> bool {
    let sink = sink.clone();
    match tokio::task::spawn_blocking(move || sink(changes.as_deref())).await {
        Ok(alive) => alive,
        // One bad row must not end cross-node wake-ups for good: the poll
        // and the periodic re-read catch up from the store.
        Err(e) => {
            tracing::error!(error = %e, "applying another node's changes failed; the listener goes on");
            true
        }
    }
}

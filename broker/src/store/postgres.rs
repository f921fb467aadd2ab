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
//! One node writes at a time: opening the store takes the next writer
//! epoch in `broker_writer`, and every commit locks that row and checks
//! the epoch is still its own, so a node that another has replaced (a
//! standby broker started after it) is fenced and writes nothing more.
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
const MIGRATIONS: &[(i32, &str)] = &[(
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
)];

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
    /// The writer epoch this store took when opened; a commit succeeds
    /// only while it is still the database's (0: opened to read only).
    epoch: i64,
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
        let mut store = Self::connect(settings)?;
        store.migrate().map_err(|e| match e {
            StoreError::Io(m) => refuse(format!("{}: {m}", store.target)),
            other => other,
        })?;
        store.epoch = store.take_writer()?;
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
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Verified });
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
        let store = Self { pool, epoch: 0, runtime: Some(runtime), target };
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

    /// Becomes the database's writer: the next epoch, which fences every
    /// store opened before this one (their commits fail from now on).
    fn take_writer(&self) -> Result<i64, StoreError> {
        let pool = self.pool.clone();
        let node = format!(
            "{} pid {}",
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
            std::process::id()
        );
        let epoch = self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_one(
                    "INSERT INTO broker_writer (id, epoch, node, since) VALUES (1, 1, $1, now())
                     ON CONFLICT (id) DO UPDATE SET epoch = broker_writer.epoch + 1, node = EXCLUDED.node, since = now()
                     RETURNING epoch",
                    &[&node],
                )
                .await
                .map_err(db_err)?;
            Ok(row.get::<_, i64>(0))
        })?;
        tracing::info!(epoch, "writing to the database");
        Ok(epoch)
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

impl Store for PgStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
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
        let (mut put_t, mut put_k, mut put_v, mut ins_k, mut ins_v, mut del_t, mut del_k) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for ((t, k), v) in last {
            match v {
                Some(v) if t == audit && appended.contains(&k) => {
                    ins_k.push(k);
                    ins_v.push(v);
                }
                Some(v) => {
                    put_t.push(t);
                    put_k.push(k);
                    put_v.push(v);
                }
                None => {
                    del_t.push(t);
                    del_k.push(k);
                }
            }
        }
        let pool = self.pool.clone();
        let epoch = self.epoch;
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(db_err)?;
            // The fence: this node still holds the writer epoch, and no
            // other node commits until this transaction ends.
            let row = tx
                .query_one("SELECT epoch, node, since::text FROM broker_writer WHERE id = 1 FOR UPDATE", &[])
                .await
                .map_err(db_err)?;
            let (current, node, since): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            if current != epoch {
                return Err(StoreError::Io(format!(
                    "postgres: fenced: another broker node ({node}, writer epoch {current}) took over writing at \
                     {since}; this node (epoch {epoch}) writes nothing more"
                )));
            }
            if !ins_k.is_empty() {
                let n = ins_k.len() as u64;
                let inserted = tx
                    .execute(
                        "INSERT INTO kv (tbl, k, v) SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS a(k, v)
                         ON CONFLICT DO NOTHING",
                        &[&audit, &ins_k, &ins_v],
                    )
                    .await
                    .map_err(db_err)?;
                if inserted != n {
                    return Err(StoreError::Io(
                        "postgres: another writer appended to the audit log first; the batch was not written".into(),
                    ));
                }
            }
            if !put_t.is_empty() {
                tx.execute(
                    "INSERT INTO kv (tbl, k, v) SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[])
                     ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v",
                    &[&put_t, &put_k, &put_v],
                )
                .await
                .map_err(db_err)?;
            }
            if !del_t.is_empty() {
                tx.execute(
                    "DELETE FROM kv WHERE (tbl, k) IN (SELECT * FROM unnest($1::int2[], $2::bytea[]))",
                    &[&del_t, &del_k],
                )
                .await
                .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)
        })
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let pool = self.pool.clone();
        let key = key.to_vec();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client.prepare_cached("SELECT v FROM kv WHERE tbl = $1 AND k = $2").await.map_err(db_err)?;
            let row = client.query_opt(&stmt, &[&table_id(table), &key]).await.map_err(db_err)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn range(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let pool = self.pool.clone();
        let (start, end) = (start.to_vec(), end.to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached("SELECT k, v FROM kv WHERE tbl = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4")
                .await
                .map_err(db_err)?;
            let rows = client.query(&stmt, &[&table_id(table), &start, &end, &limit]).await.map_err(db_err)?;
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
    /// replaces broken connections itself. Nothing to reopen.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// PostgreSQL is backed up with its own tools (OPERATIONS.md).
    fn backup_to(&self, dir: &Path) -> Result<u64, StoreError> {
        Err(StoreError::Refused { path: dir.display().to_string(), message: NO_BROKER_BACKUP.into() })
    }
}

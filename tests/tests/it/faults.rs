//! Storage faults: a full disk refuses new work with a clear status, loses
//! nothing already accepted, and recovers by itself once space is free; a
//! corrupt or foreign data directory refuses to start, saying why.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::config::Engine;
use broker::store::LocalEngine;
use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use tonic::Code;

/// A small tmpfs, unmounted on drop. Needs CAP_SYS_ADMIN (root in the CI
/// container), as a full disk cannot be made any other honest way.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, megabytes: u32) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "this test mounts a small tmpfs to fill it up; it needs root (CAP_SYS_ADMIN)");
        Self { path: path.to_owned() }
    }

    /// Bytes the file system has free, as `df` reports them.
    fn free_bytes(&self) -> u64 {
        let out =
            std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(&self.path).output().expect("run df");
        assert!(out.status.success(), "df {}", self.path.display());
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df's output: {text}"))
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_submits_keeps_what_was_accepted_and_recovers() {
    full_disk(LocalEngine::Sled).await
}

#[tokio::test]
async fn on_fjall_a_full_disk_refuses_submits_keeps_what_was_accepted_and_recovers() {
    full_disk(LocalEngine::Fjall).await
}

/// The test, on the embedded engine given.
async fn full_disk(engine: LocalEngine) {
    let mount = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(mount.path(), 48);
    let data = disk.path.join("data");
    let h = Harness::start_with(Options {
        tweak: Box::new(move |c| {
            c.storage.data_dir = data.clone();
            c.storage.engine = Engine::Local(engine);
        }),
        ..Options::default()
    })
    .await;
    let police = h.client(POLICE_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let mut accepted = Vec::new();
    for _ in 0..5 {
        accepted.push(police.send(&social, &example_notice()).await.unwrap().message_id);
    }
    let filler = disk.fill();
    // Submits now fail with a clear status. The file system allocates
    // whole pages, so the store's last page may still have room for one
    // small write after the filler took every free page: a submit that fits
    // there is stored for real, and must be kept like any other. Only a
    // page's worth can fit while nothing is free. An engine may also free
    // space itself: fjall, when the store is reopened after the failed
    // write, deletes the files its startup left obsolete (about 150 KiB
    // here), and submits fit in that until it is used up.
    let (mut refusals, mut fitted_while_full, mut tries) = (0, 0, 0);
    let mut refused = Vec::new();
    while refusals < 5 {
        tries += 1;
        assert!(tries < 1_000, "a 48 MiB disk full of filler still takes submits after {tries} tries");
        let full = disk.free_bytes() == 0;
        let envelope = crate::support::example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
        match crate::support::submit_raw(&police, envelope.clone()).await {
            Ok(r) => {
                fitted_while_full += usize::from(full);
                assert!(fitted_while_full <= 2, "still accepting on a full disk after {refusals} refusals: {r:?}");
                let id = &envelope.header.as_ref().unwrap().message_id;
                accepted.push(referral_proto::ids::MessageId::from_bytes(id).unwrap());
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert_eq!(integration_tests::reason(&s).as_deref(), Some("storage_full"), "{s:?}");
                assert!(s.message().contains("retry later with the same message id"), "{s:?}");
                refused.push(envelope);
                refusals += 1;
            }
        }
    }
    assert_eq!(refusals, 5);
    eprintln!(
        "{}: {} submits fitted after the disk was full ({fitted_while_full} with no page free)",
        engine.name(),
        accepted.len() - 5
    );
    // Health says so.
    let mut sick = false;
    for _ in 0..200 {
        if !h.state().health.is_serving() {
            sick = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(sick, "health turns NOT_SERVING while the disk is full");
    assert!(h.state().health.problems().iter().any(|p| p.contains("does not take durable writes")));

    // Space comes back: the broker recovers by itself.
    std::fs::remove_file(filler).unwrap();
    let mut recovered = None;
    for _ in 0..200 {
        match police.send(&social, &example_notice()).await {
            Ok(sent) => {
                recovered = Some(sent.message_id);
                break;
            }
            Err(e) => eprintln!("still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    accepted.push(recovered.expect("submits succeed again once space is free"));
    // A refused submit may have been stored all the same: the batch whose
    // write failed can be wholly on disk when the store is reopened
    // (Store::recover). The refusal says so, and the client's retry with
    // the same message id finds out: each is accepted now, once.
    let mut were_stored = 0;
    for envelope in refused {
        let r = crate::support::submit_raw(&police, envelope.clone())
            .await
            .unwrap_or_else(|s| panic!("a refused submit sent again once space is free: {s:?}"));
        were_stored += usize::from(r.duplicate);
        let id = &envelope.header.as_ref().unwrap().message_id;
        accepted.push(referral_proto::ids::MessageId::from_bytes(id).unwrap());
    }
    eprintln!("{}: {were_stored} of 5 refused submits had been stored all the same", engine.name());
    // Nothing accepted was lost, and nothing is there twice.
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut got = crate::support::waiting(&oncall).await;
    assert_eq!(got[..5], accepted[..5], "those from before the disk filled up come first, in order");
    got.sort();
    accepted.sort();
    assert_eq!(got, accepted);
    let auditor = h.client(AUDITOR).await;
    let v = auditor.verify_log(&h.dir().join("audit.json"), |_, _| {}).await.unwrap();
    assert!(v.ok, "{:?}", v.report.failures);
}

/// Runs `broker serve` on a configuration and expects it to refuse to
/// start; returns its error output.
async fn refuses_to_start(config: &Path) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_under-test"))
            .args(["broker", "serve", "--config"])
            .arg(config)
            .env("RUST_BACKTRACE", "0")
            .output(),
    )
    .await
    .expect("exits by itself")
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "refused to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_damaged_or_foreign_data_directory_refuses_to_start_and_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    // sled's: the damage goes into its one database file.
    let data_dir = tmp.path().join("data");
    let mut b = ChildBroker::start_on(exe, tmp.path(), &data_dir, "engine = \"sled\"\n", "").await;
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    for _ in 0..50 {
        police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    }
    assert!(b.terminate().await.success());

    // Damage the middle of the database file.
    let db = b.data_dir.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    for byte in &mut bytes[mid..mid + 4096] {
        *byte = 0xab;
    }
    std::fs::write(&db, &bytes).unwrap();
    let err = refuses_to_start(&b.config_path).await;
    assert!(err.contains("error: storage:"), "{err}");
    assert!(err.contains(&b.data_dir.display().to_string()), "names the directory: {err}");
    assert!(
        err.contains("is damaged") || err.contains("corrupt") || err.contains("cannot open the store"),
        "says what is wrong: {err}"
    );
    // Not reset: the store still holds its data from before the damage
    // (sled's own recovery cuts its log at the damage when it opens it, so
    // later data is gone; RELIABILITY.md says so and what to do).
    {
        let store = broker::store::sled_store::SledStore::open_existing(&b.data_dir).unwrap();
        use broker::store::Store as _;
        assert!(store.get(broker::store::Table::Meta, b"store-format").unwrap().is_some());
        assert!(
            store.get(broker::store::Table::Audit, &0u64.to_be_bytes()).unwrap().is_some(),
            "the first entry survives"
        );
    }
    let err = refuses_to_start(&b.config_path).await;
    assert!(err.contains("the database lost data") || err.contains("is damaged"), "still refused: {err}");

    // A folder of something else entirely.
    std::fs::remove_dir_all(&b.data_dir).unwrap();
    std::fs::create_dir_all(&b.data_dir).unwrap();
    std::fs::write(b.data_dir.join("payroll.csv"), "not a broker's").unwrap();
    let err = refuses_to_start(&b.config_path).await;
    assert!(err.contains("is not empty and is not a broker data directory"), "{err}");
    assert_eq!(std::fs::read_to_string(b.data_dir.join("payroll.csv")).unwrap(), "not a broker's");
}

#[tokio::test]
async fn a_store_of_the_other_engine_is_refused_by_name_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    let data_dir = tmp.path().join("data");
    let mut b = ChildBroker::start_on(exe, tmp.path(), &data_dir, "engine = \"sled\"\n", "").await;
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    assert!(b.terminate().await.success());
    let files = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = files(&b.data_dir);

    // The sled store named as fjall's.
    let text = std::fs::read_to_string(&b.config_path).unwrap();
    let fjall = text.replacen("engine = \"sled\"\n", "engine = \"fjall\"\n", 1);
    assert_ne!(fjall, text);
    std::fs::write(&b.config_path, &fjall).unwrap();
    let err = refuses_to_start(&b.config_path).await;
    assert!(
        err.contains(
            "holds a store of the sled engine, but storage.engine is \"fjall\"; set storage.engine = \"sled\""
        ),
        "{err}"
    );
    assert_eq!(files(&b.data_dir), before, "nothing was written into it");

    // With no engine named (an upgrade to a release whose default for a
    // new store is fjall), it is the sled store's: it serves what it held
    // and takes new work into the same store.
    let unset = text.replacen("engine = \"sled\"\n", "", 1);
    assert_ne!(unset, text);
    std::fs::write(&b.config_path, &unset).unwrap();
    b.spawn().await;
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    assert_eq!(crate::support::waiting(&oncall).await, vec![sent.message_id]);
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    let second = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    assert_eq!(crate::support::waiting(&oncall).await, vec![sent.message_id, second.message_id]);
    assert!(b.terminate().await.success());
    assert!(b.data_dir.join("db").is_file() && !b.data_dir.join("version").exists(), "still a sled store");

    // Named rightly, it serves the same.
    std::fs::write(&b.config_path, &text).unwrap();
    b.spawn().await;
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    assert_eq!(crate::support::waiting(&oncall).await, vec![sent.message_id, second.message_id]);
}

#[tokio::test]
async fn a_new_data_directory_with_no_engine_named_is_a_fjall_store() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    let mut b = ChildBroker::start(exe, tmp.path(), "").await;
    let text = std::fs::read_to_string(&b.config_path).unwrap();
    assert!(!text.contains("engine"), "the development configuration names no engine:\n{text}");
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    assert!(b.terminate().await.success());
    assert!(b.data_dir.join("version").is_file() && !b.data_dir.join("db").exists(), "a fjall store");
    // Restarted with no engine named, it is still fjall's and serves what it holds.
    b.spawn().await;
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    assert_eq!(crate::support::waiting(&oncall).await, vec![sent.message_id]);
}

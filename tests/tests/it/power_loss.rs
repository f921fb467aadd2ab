//! Power loss: the broker's data folder is on a filesystem that keeps
//! unsynced writes in memory ([`integration_tests::powerloss_fs`]); the
//! broker is SIGKILLed at random moments under load from senders and an
//! acker, everything not yet synced is thrown away, and the broker must
//! start again by itself with every receipted referral and ack there
//! exactly once and the audit log verifying.
//!
//! `POWER_LOSS_CYCLES` sets the number of cycles (default 20, for CI);
//! `CRASH_SEED` repeats a run.

use std::path::Path;

use integration_tests::ChildBroker;
use integration_tests::powerloss_fs::PowerLoss;

use crate::crash::{Ending, kill_cycles, seed};

/// Mounts the filesystem, or fails with what is missing: this test must
/// never pass without having run.
fn mount(at: &Path) -> PowerLoss {
    if !Path::new("/dev/fuse").exists() {
        panic!("the power-loss test needs FUSE, and this machine has no /dev/fuse");
    }
    std::fs::create_dir(at).expect("mount point");
    PowerLoss::mount(at).unwrap_or_else(|e| {
        panic!(
            "cannot mount the power-loss filesystem on {} ({e}); it needs /dev/fuse and the fusermount3 program \
             (Debian package fuse3, which .ci/run installs)",
            at.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_at_random_moments_loses_nothing_and_the_broker_starts_by_itself() {
    power_cuts("sled").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fjall_power_loss_at_random_moments_loses_nothing_and_the_broker_starts_by_itself() {
    power_cuts("fjall").await
}

/// The test, on the embedded engine named.
async fn power_cuts(engine: &str) {
    let cycles: usize = std::env::var("POWER_LOSS_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed = seed();
    eprintln!("power-loss test on {engine}: {cycles} cycles, CRASH_SEED={seed}");
    let tmp = tempfile::tempdir().unwrap();
    // Declared before the broker, so dropped after it: never unmounted under a live process.
    let disk = mount(&tmp.path().join("disk"));
    // A folder below the mount point, so that making it must be durable too.
    let data_dir = disk.path().join("broker-data");
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    // fjall with 1 MiB tables in memory, so that the cuts also hit its
    // background work: tables written to sorted files, journals rotated
    // and deleted, compactions (at the default 64 MiB a run this short
    // would never leave the journal).
    let storage = match engine {
        "fjall" => "engine = \"fjall\"\nfjall_memtable_mib = 1\n".to_string(),
        _ => format!("engine = \"{engine}\"\n"),
    };
    let mut b = ChildBroker::start_on(exe, tmp.path(), &data_dir, &storage, "").await;
    let audit_state = tmp.path().join("audit-state.json");
    let mut f =
        kill_cycles(&mut b, &vec![Ending::Sigkill; cycles], seed, "power loss", &audit_state, || disk.power_cut())
            .await;
    let mut cuts = cycles;
    // fjall writes a table out once 1 MiB of it has come in; on a machine
    // busy with the rest of the suite, 20 short cycles may not carry that
    // much. Then more cycles, 10 at a time (at most 60 more), until it has:
    // the cuts must also have landed in that background work.
    let mut round = 0;
    while engine == "fjall" && sorted_files(&data_dir) == 0 && round < 6 {
        round += 1;
        let more = kill_cycles(
            &mut b,
            &[Ending::Sigkill; 10],
            seed.wrapping_add(round),
            "power loss (more)",
            &audit_state,
            || disk.power_cut(),
        )
        .await;
        f.receipted += more.receipted;
        f.acked += more.acked;
        f.submit_errors += more.submit_errors;
        f.slowest_restart = f.slowest_restart.max(more.slowest_restart);
        cuts += 10;
    }
    b.kill().await;
    let stats = disk.stats();
    let rebuilt = b.log().matches("rebuilding it from the audit log").count();
    eprintln!(
        "power-loss test on {engine} done: {cuts} power cuts after SIGKILL under load; the broker started by itself every time \
         ({rebuilt} checkpoint rebuilds); {} submits receipted and all found exactly once, {} acks receipted and all \
         kept, 0 lost; {} submits cut off by a kill; slowest restart to serving {:.0} ms; the cuts reverted {} files \
         and removed {} unsynced files ({} file syncs, {} folder syncs)",
        f.receipted,
        f.acked,
        f.submit_errors,
        f.slowest_restart.as_secs_f64() * 1000.0,
        stats.files_reverted,
        stats.files_lost,
        stats.file_syncs,
        stats.folder_syncs,
    );
    assert_eq!(stats.power_cuts, cuts as u64);
    // Unsynced writes are thrown away as reverted files or as removed files
    // (created, never made durable): either proves the cuts bit. Reverted
    // files alone were too few to count on (2 of 20 cuts in a typical run,
    // 0 in one run under the whole suite's load), removed ones are dozens.
    assert!(
        stats.files_reverted + stats.files_lost > 0,
        "the power cuts threw away unsynced writes (else the test proves nothing)"
    );
    assert!(f.receipted >= cycles, "the workload ran");
    if engine == "fjall" {
        let sorted = sorted_files(&data_dir);
        eprintln!("fjall wrote {sorted} sorted table files that are still there");
        assert!(sorted > 0, "fjall wrote tables out during the run (else its background work was never cut)");
    }
}

/// The sorted table files of the broker's own tables in a fjall store (not
/// fjall's own metadata, keyspace 0).
fn sorted_files(data_dir: &Path) -> usize {
    let keyspaces = std::fs::read_dir(data_dir.join("keyspaces")).expect("a fjall store has keyspaces");
    keyspaces
        .map(|k| k.unwrap())
        .filter(|k| k.file_name() != "0")
        .filter_map(|k| std::fs::read_dir(k.path().join("tables")).ok())
        .map(|tables| tables.count())
        .sum()
}

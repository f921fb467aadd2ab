//! A server process the load generator started (the broker, the ceiling or
//! redis-server): measured through /proc, stopped with SIGTERM and SIGKILL
//! after a timeout, and never left running when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::procfs::{self, Memory};

#[derive(Debug)]
pub struct Spawned {
    child: Child,
    pub pid: u32,
    /// What it is, for messages ("the broker", "redis-server").
    name: String,
    /// Where its output goes.
    pub log_path: PathBuf,
}

impl Spawned {
    pub fn new(child: Child, name: impl Into<String>, log_path: PathBuf) -> Self {
        Self { pid: child.id(), child, name: name.into(), log_path }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_wait().with_context(|| format!("cannot check the {} process", self.name))
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("its log ({}) ends:\n{tail}", self.log_path.display())
    }

    /// CPU seconds the process has used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        Ok(procfs::cpu_seconds(self.pid)?)
    }

    /// Its current and peak resident memory.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        Ok(procfs::memory(self.pid)?)
    }

    /// Bytes it has written so far.
    pub fn written(&self) -> anyhow::Result<procfs::Written> {
        Ok(procfs::written(self.pid)?)
    }

    /// SIGTERM, then waits for the orderly shutdown (SIGKILL after `timeout`).
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        // `kill` the command: the workspace forbids unsafe code, so no libc::kill.
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                let status = self.child.wait().with_context(|| format!("cannot wait for the killed {}", self.name))?;
                anyhow::bail!(
                    "the {} did not stop within {} s of SIGTERM and was killed ({status})",
                    self.name,
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Never leave a server behind (an error path, or Ctrl-C).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

//! Reading a process's CPU time and memory from `/proc` (Linux only).
//!
//! CPU time is `utime + stime` from `/proc/PID/stat`, in clock ticks
//! (`getconf CLK_TCK`, 100 on every common Linux); memory is `VmRSS` (now)
//! and `VmHWM` (the peak) from `/proc/PID/status`.

use std::sync::OnceLock;

/// Why a figure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: cannot find {what}")]
    Parse { path: String, what: &'static str },
}

/// Memory figures of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size over the process's life (`VmHWM`).
    pub peak_kib: u64,
}

/// Clock ticks per second for `/proc/PID/stat` times: `getconf CLK_TCK`,
/// or 100 (the value on every common Linux) if that cannot be run.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t: &u64| t > 0)
            .unwrap_or(100)
    })
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read { path: path.to_owned(), source })
}

/// `utime + stime` in clock ticks, from the text of `/proc/PID/stat`.
///
/// The second field (the command name) is in parentheses and may contain
/// spaces, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field such as `VmHWM` from the text of `/proc/PID/status`.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, ProcError> {
    let path = format!("/proc/{pid}/stat");
    let ticks = parse_stat_cpu_ticks(&read(&path)?).ok_or(ProcError::Parse { path, what: "utime and stime" })?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// Current and peak resident memory of a process.
pub fn memory(pid: u32) -> Result<Memory, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    let rss_kib = parse_status_kib(&text, "VmRSS").ok_or(ProcError::Parse { path: path.clone(), what: "VmRSS" })?;
    let peak_kib = parse_status_kib(&text, "VmHWM").ok_or(ProcError::Parse { path, what: "VmHWM" })?;
    Ok(Memory { rss_kib, peak_kib })
}

/// Bytes a process has written: through system calls (`wchar`), and
/// sent to the storage layer (`write_bytes`), from `/proc/PID/io`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub syscall_bytes: u64,
    pub storage_bytes: u64,
}

/// `wchar` and `write_bytes` from the text of `/proc/PID/io`.
pub fn parse_io(io: &str) -> Option<Written> {
    let field =
        |name: &str| io.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok());
    Some(Written { syscall_bytes: field("wchar")?, storage_bytes: field("write_bytes")? })
}

/// What a process has written so far.
pub fn written(pid: u32) -> Result<Written, ProcError> {
    let path = format!("/proc/{pid}/io");
    parse_io(&read(&path)?).ok_or(ProcError::Parse { path, what: "wchar and write_bytes" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (worker) 1) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 129 0 0 20 0 3 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(860));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields_in_kib() {
        let status = "Name:\tbroker\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn io_counters() {
        let io = "rchar: 10\nwchar: 2048\nsyscr: 1\nsyscw: 2\nread_bytes: 0\nwrite_bytes: 4096\n";
        assert_eq!(parse_io(io), Some(Written { syscall_bytes: 2048, storage_bytes: 4096 }));
        assert_eq!(parse_io("rchar: 1"), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_ok());
        let m = memory(pid).expect("own memory");
        assert!(m.peak_kib >= m.rss_kib);
    }
}

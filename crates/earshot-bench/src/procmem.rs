//! A process's memory as Linux reports it: `VmRSS` from `/proc/PID/status`,
//! and `Pss` and private pages from `/proc/PID/smaps_rollup` when the
//! kernel has it (4.14+). Kernel memory for the sockets (skbuffs, TCP
//! state) is not part of any of these.

use anyhow::{Context, bail};

/// One reading, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident set size (`VmRSS`).
    pub rss: u64,
    /// The anonymous part of it (`RssAnon`: the heap, stacks), if reported;
    /// the rest is mostly the binary's own pages.
    pub anon: Option<u64>,
    /// Proportional set size, if `smaps_rollup` exists.
    pub pss: Option<u64>,
    /// `Private_Clean + Private_Dirty`, if `smaps_rollup` exists.
    pub private: Option<u64>,
}

pub fn read(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let Some(rss) = field_kib(&status, "VmRSS:") else {
        bail!("no VmRSS in /proc/{pid}/status");
    };
    let (pss, private) = match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        Ok(rollup) => {
            let private = match (
                field_kib(&rollup, "Private_Clean:"),
                field_kib(&rollup, "Private_Dirty:"),
            ) {
                (Some(clean), Some(dirty)) => Some(clean + dirty),
                _ => None,
            };
            (field_kib(&rollup, "Pss:"), private)
        }
        Err(_) => (None, None),
    };
    Ok(Memory {
        rss,
        anon: field_kib(&status, "RssAnon:"),
        pss,
        private,
    })
}

/// CPU time the process has used so far, all threads, in nanoseconds (the
/// first field of each `/proc/PID/task/TID/schedstat`): what a burst of
/// load cost the server, whatever else the machine was doing.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    let tasks = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&tasks).with_context(|| format!("cannot read {tasks}"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between listing and reading.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("bad {}", path.display()))?;
    }
    Ok(total)
}

/// The value of a `Name:   1234 kB` line, in bytes.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut words = line[name.len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::field_kib;

    #[test]
    fn reads_kib_fields_and_nothing_else() {
        let text = "Name:\tearshot\nVmRSS:\t   12345 kB\nPss_Anon:  7 kB\nPss:   9 kB\n";
        assert_eq!(field_kib(text, "VmRSS:"), Some(12345 * 1024));
        assert_eq!(field_kib(text, "Pss:"), Some(9 * 1024));
        assert_eq!(field_kib(text, "Name:"), None);
        assert_eq!(field_kib(text, "VmHWM:"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let m = super::read(std::process::id()).unwrap();
        assert!(m.rss > 0);
        let before = super::cpu_ns(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..10_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(super::cpu_ns(std::process::id()).unwrap() > before);
    }
}

//! What the bench reads about the broker process from `/proc`: CPU time (`/proc/PID/stat`)
//! and resident memory (`/proc/PID/status`). The parsers are pure functions over the text.

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`. The command name (field
/// 2) is in parentheses and may itself hold spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), ... utime (14), stime (15).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process, from the text of `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now, KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size, KiB (absent on some kernels: then `rss_kib`).
    pub peak_kib: u64,
}

/// `VmRSS` and `VmHWM` from the text of `/proc/PID/status` (`VmRSS:\t  12345 kB`).
pub fn status_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut parts = value.split_whitespace();
            let n: u64 = parts.next()?.parse().ok()?;
            match parts.next() {
                Some("kB") | None => Some(n),
                Some(_) => None,
            }
        })
    };
    let rss_kib = field("VmRSS")?;
    Some(Memory {
        rss_kib,
        peak_kib: field("VmHWM").unwrap_or(rss_kib).max(rss_kib),
    })
}

/// CPU time (µs) of process `pid` (`self` for this one).
pub fn cpu_us(pid: &str, clk_tck: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_cpu_ticks(&stat)? * 1_000_000 / clk_tck.max(1))
}

/// Resident memory of process `pid`.
pub fn memory(pid: &str) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_memory(&status)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (key bus) (x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    157 43 0 0 20 0 9 0 123456 1000000 2500 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(200));
    }

    #[test]
    fn truncated_or_garbled_stat_is_none() {
        assert_eq!(stat_cpu_ticks("4242 (keybus) S 1 2 3"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis at all"), None);
        assert_eq!(stat_cpu_ticks("1 (k) S 1 1 1 0 -1 0 0 0 0 0 x 4 0 0"), None);
    }

    #[test]
    fn memory_reads_vmrss_and_vmhwm() {
        let status = "Name:\tkeybus\nVmPeak:\t 2000000 kB\nVmHWM:\t  310000 kB\n\
                      VmRSS:\t  120500 kB\nThreads:\t9\n";
        assert_eq!(
            status_memory(status),
            Some(Memory {
                rss_kib: 120_500,
                peak_kib: 310_000
            })
        );
    }

    #[test]
    fn memory_without_vmhwm_uses_rss_and_without_vmrss_is_none() {
        assert_eq!(
            status_memory("VmRSS:\t 77 kB\n"),
            Some(Memory {
                rss_kib: 77,
                peak_kib: 77
            })
        );
        assert_eq!(status_memory("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(status_memory("VmRSS:\t 77 MB\n"), None);
        // A field whose name only starts like VmRSS is not it.
        assert_eq!(status_memory("VmRSSx:\t 5 kB\n"), None);
    }
}

//! CPU and memory of local processes, read from `/proc`.

use std::fs;

/// Clock ticks per second for `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`).
fn ticks() -> f64 {
    let t = rustix::param::clock_ticks_per_second();
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU seconds a process (and its reaped children) used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 of the full line: 12-15 after the name.
    let sum: f64 = f
        .get(11..15)?
        .iter()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    Some(sum / ticks())
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Direct children of a process (e.g. PostgreSQL's backends and walsender).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s[s.rfind(')')? + 2..]
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

/// CPU seconds of a process tree (one level of children: enough for PostgreSQL).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    cpu_seconds(pid).unwrap_or(0.0)
        + children(pid)
            .into_iter()
            .filter_map(cpu_seconds)
            .sum::<f64>()
}

/// Busy and total jiffies of the whole machine (`/proc/stat` first line).
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let vals: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = vals.iter().sum();
    let idle = vals.get(3).copied().unwrap_or(0) + vals.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(me).unwrap() >= before);
        assert!(rss_bytes(me).unwrap() > 1024 * 1024);
        let (busy, total) = machine_jiffies().unwrap();
        assert!(busy <= total);
    }
}

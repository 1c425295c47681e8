//! CPU time from `/proc`: the whole machine's busy time, one process's own
//! time, and the load average, so a result can say what else was running.

use anyhow::Context;

/// `/proc` counts in USER_HZ, which is 100 on Linux.
const USER_HZ: f64 = 100.0;

/// Seconds of CPU the whole machine has spent busy since boot.
pub fn busy_cpu() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_busy(&text).context("/proc/stat has no `cpu` line")
}

/// user + nice + system + irq + softirq + steal of the `cpu` line, in seconds.
fn parse_busy(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    Some(busy as f64 / USER_HZ)
}

/// Seconds of CPU process `pid` (all its threads) has used.
pub fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_process(&text).with_context(|| format!("{path} has no utime and stime"))
}

/// utime + stime (fields 14 and 15; the command name may hold spaces).
fn parse_process(stat: &str) -> Option<f64> {
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 300 1 2 3 0 0\ncpu0 50 2 25 4500 150 0 1 1 0 0\n";
        assert_eq!(parse_busy(stat), Some(1.61));
        assert_eq!(parse_busy("intr 1 2 3"), None);
    }

    #[test]
    fn process_time_is_utime_plus_stime() {
        let stat = "4242 (pgfollow serve) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_process(stat), Some(3.0));
        assert!(process_cpu(std::process::id()).is_ok());
    }
}

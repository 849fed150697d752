//! CPU time and memory of a process, from /proc.

use anyhow::{bail, Context, Result};

/// One sample of a process's resource use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// utime + stime, seconds (all threads).
    pub cpu_s: f64,
    /// VmRSS, KiB.
    pub rss_kb: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kb: u64,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `pid` = None means this process.
pub fn sample(pid: Option<u32>) -> Result<Sample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))
        .with_context(|| format!("reading {dir}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: the
    // fields after the last ')' start with field 3 (state).
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    if f.len() < 13 {
        bail!("short /proc/PID/stat");
    }
    // utime is field 14, stime field 15 (1-based) -> indices 11 and 12 here.
    let utime: u64 = f[11].parse().context("utime")?;
    let stime: u64 = f[12].parse().context("stime")?;
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .with_context(|| format!("reading {dir}/status"))?;
    let mut s = Sample {
        cpu_s: (utime + stime) as f64 / clk_tck(),
        ..Sample::default()
    };
    for line in status.lines() {
        let kb = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            s.rss_kb = kb(line);
        } else if line.starts_with("VmHWM:") {
            s.hwm_kb = kb(line);
        }
    }
    Ok(s)
}

/// Raises RLIMIT_NOFILE. Every client is one socket (one fd) in this process,
/// and the default soft limit (often 1024) would cap a run at about a thousand
/// clients. The soft limit goes to the hard limit; when `want` is above the
/// hard limit we try to raise the hard limit too (works as root, up to
/// fs.nr_open). Returns the resulting soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 0;
    }
    if want > rl.rlim_max {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
        let hard = want.min(nr_open).max(rl.rlim_max);
        let try_rl = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: valid pointer; failure (not privileged) is handled below.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &try_rl) } == 0 {
            return hard;
        }
    }
    let new = libc::rlimit {
        rlim_cur: rl.rlim_max,
        rlim_max: rl.rlim_max,
    };
    // SAFETY: valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        rl.rlim_max
    } else {
        rl.rlim_cur
    }
}

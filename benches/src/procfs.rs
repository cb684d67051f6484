//! CPU time and memory of another process, from Linux's `/proc`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// User plus system CPU time of every thread of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    // After it come field 3 (state) onwards; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((tick(11) + tick(12)) as f64 / clock_ticks_per_second())
}

/// Time core `core` spent on anything but idling (user, nice, system, irq, softirq, and
/// steal: time the hypervisor gave to other machines), in seconds, from `/proc/stat`.
pub fn core_busy_seconds(core: usize) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let prefix = format!("cpu{core} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&prefix))
        .ok_or_else(|| std::io::Error::other(format!("no cpu{core} in /proc/stat")))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0))
        .sum();
    Ok(busy as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// A `kB` field of `/proc/PID/status`, such as `VmRSS` (resident now) or `VmHWM` (peak), in KiB.
pub fn status_kib(pid: u32, field: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .ok_or_else(|| std::io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// Resets `VmHWM` to the current RSS, so the next peak is that of what follows. Needs to own
/// the process (or be root); when it cannot, peaks are since the process started.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    /// Busy time of the core the process is pinned to, whoever used it.
    pub core_busy_seconds: f64,
}

/// Reads a process's CPU time and RSS every few milliseconds until finished, so that CPU use
/// can be taken over exactly the window a load generator measured, and the largest RSS seen
/// cross-checks `VmHWM`.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(pid: u32, core: Option<usize>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                loop {
                    if let (Ok(cpu_seconds), Ok(rss_kib)) =
                        (cpu_seconds(pid), status_kib(pid, "VmRSS"))
                    {
                        samples.push(Sample {
                            at: Instant::now(),
                            cpu_seconds,
                            rss_kib,
                            core_busy_seconds: core
                                .and_then(|c| core_busy_seconds(c).ok())
                                .unwrap_or(0.0),
                        });
                    }
                    if stop.load(Ordering::Relaxed) {
                        return samples;
                    }
                    std::thread::sleep(every);
                }
            })
        };
        Sampler { stop, handle }
    }

    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// CPU cores used between `from` and `to` (1.0 = one core busy), from the samples nearest to
/// them: by the process, and on its core by anyone.
pub fn cores_between(samples: &[Sample], from: Instant, to: Instant) -> (f64, f64) {
    let nearest = |t: Instant| {
        samples
            .iter()
            .min_by_key(|s| if s.at > t { s.at - t } else { t - s.at })
    };
    match (nearest(from), nearest(to)) {
        (Some(a), Some(b)) if b.at > a.at => {
            let secs = (b.at - a.at).as_secs_f64();
            (
                (b.cpu_seconds - a.cpu_seconds) / secs,
                (b.core_busy_seconds - a.core_busy_seconds) / secs,
            )
        }
        _ => (0.0, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
        assert!(status_kib(me, "VmHWM").unwrap() >= status_kib(me, "VmRSS").unwrap() / 2);
        let before = cpu_seconds(me).unwrap();
        assert!(cpu_seconds(me).unwrap() >= before);
        assert!(status_kib(me, "NoSuchField").is_err());
    }

    #[test]
    fn cores_between_uses_the_nearest_samples() {
        let t0 = Instant::now();
        let at = |ms: u64, cpu: f64| Sample {
            at: t0 + Duration::from_millis(ms),
            cpu_seconds: cpu,
            rss_kib: 1,
            core_busy_seconds: 2.0 * cpu,
        };
        let samples = [at(0, 10.0), at(1000, 10.5), at(2000, 11.5), at(3000, 11.5)];
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(cores_between(&samples, ms(1010), ms(1990)), (1.0, 2.0));
        assert_eq!(cores_between(&samples, ms(0), ms(2000)), (0.75, 1.5));
        assert_eq!(cores_between(&samples, ms(2000), ms(2000)), (0.0, 0.0));
        assert_eq!(cores_between(&[], ms(0), ms(1)), (0.0, 0.0));
        assert!(core_busy_seconds(0).unwrap() > 0.0);
    }
}

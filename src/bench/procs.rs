//! Child processes of a benchmark (servers under test) and what `/proc` says about them:
//! spawning on loopback, waiting for a port, CPU time and resident memory, and stopping with
//! SIGTERM (then SIGKILL) — also when the benchmark itself fails.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::load::ServerWatch;

/// A free TCP port on 127.0.0.1 (bound, then released; the server binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < limit, "nothing listens on {addr} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server process under test. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// A gateway's admin HTTP address, serving `/metrics` (see [`ServerWatch`]).
    pub metrics: Option<SocketAddr>,
}

impl Server {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Server> {
        let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Server { name: name.to_string(), child: Some(child), log: log.to_path_buf(), metrics: None })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its process and, for a gateway, its `/metrics`.
    pub fn watch(&self) -> ServerWatch {
        ServerWatch { pids: self.pid().into_iter().collect(), metrics: self.metrics }
    }

    /// Fails with the tail of its log when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            anyhow::bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within {grace:?} of SIGTERM; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A server the benchmark measures: one process or several (whose figures are summed).
pub trait ServerUnderTest {
    /// The processes whose CPU and memory are the server's.
    fn pids(&self) -> Vec<u32>;
    /// Fails (with the reason and log tails) when the server is gone.
    fn check_alive(&mut self) -> anyhow::Result<()>;
    /// What a load watches of it: its processes, and a gateway's `/metrics`.
    fn watch(&self) -> ServerWatch {
        self.pids().into()
    }
}

impl ServerUnderTest for Server {
    fn pids(&self) -> Vec<u32> {
        self.pid().into_iter().collect()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        Server::check_alive(self)
    }

    fn watch(&self) -> ServerWatch {
        Server::watch(self)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// CPU time and memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// user + system CPU time of all threads.
    pub cpu: Duration,
    pub rss_bytes: u64,
    pub rss_anon_bytes: u64,
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Samples a process; `None` for the benchmark process itself.
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks_per_second();
    let cpu = Duration::from_nanos((utime + stime).saturating_mul(1_000_000_000) / ticks);
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Some(ProcSample { cpu, rss_bytes: kb("VmRSS:"), rss_anon_bytes: kb("RssAnon:") })
}

/// Time each thread spent runnable on a run queue without a CPU, in ns, by thread id.
pub type ThreadDelays = std::collections::HashMap<u32, u64>;

/// The run delay of every thread of `pids` (`/proc/<pid>/task/<tid>/schedstat`, second field);
/// `None` when a process is gone or the kernel reports none.
pub fn thread_run_delays(pids: &[u32]) -> Option<ThreadDelays> {
    let mut out = ThreadDelays::new();
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
            // "<ns on a CPU> <ns waiting on a run queue> <time slices>"; a thread may exit
            // between the listing and the read.
            let Ok(line) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
            if let Some(ns) = line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()) {
                out.insert(tid, ns);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Run delay accumulated from `earlier` to `later` by the threads alive at `later` (a thread
/// started in between counts from zero; one that ended in between is missed, so this is a
/// lower bound).
pub fn run_delay_between(earlier: &ThreadDelays, later: &ThreadDelays) -> Duration {
    let ns: u64 = later.iter().map(|(tid, ns)| ns.saturating_sub(earlier.get(tid).copied().unwrap_or(0))).sum();
    Duration::from_nanos(ns)
}

/// Busy CPU time of the whole machine (all processes, all cores), from `/proc/stat`.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …: everything but idle and iowait.
    let busy: u64 = v.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| x).sum();
    Some(Duration::from_nanos(busy.saturating_mul(1_000_000_000) / clock_ticks_per_second()))
}

/// CPU time of every process on the machine, by pid, and whether it is a kernel thread.
#[derive(Debug, Default)]
pub struct Census {
    procs: std::collections::HashMap<u32, (Duration, bool)>,
}

/// CPU used between two censuses by processes other than `exclude`: (user processes, kernel
/// threads). Processes that started in between count in full; processes that ended in between
/// count up to the last census that saw them, so both figures are lower bounds.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtherCpu {
    pub processes: Duration,
    pub kernel_threads: Duration,
}

const PF_KTHREAD: u64 = 0x0020_0000;

/// Reads `/proc/<pid>/stat` of every process.
pub fn census() -> Census {
    let mut procs = std::collections::HashMap::new();
    let ticks = clock_ticks_per_second();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Census::default() };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // f[0] = field 3 (state); flags = field 9, utime = 14, stime = 15.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cpu = Duration::from_nanos((num(11) + num(12)).saturating_mul(1_000_000_000) / ticks);
        procs.insert(pid, (cpu, num(6) & PF_KTHREAD != 0));
    }
    Census { procs }
}

impl Census {
    /// Takes the newer figures of `newer`, keeping processes that have since exited at their
    /// last-seen CPU time (so frequent censuses also catch short-lived processes).
    pub fn update(&mut self, newer: Census) {
        self.procs.extend(newer.procs);
    }

    pub fn other_since(&self, earlier: &Census, exclude: &[u32]) -> OtherCpu {
        let mut out = OtherCpu::default();
        for (pid, (cpu, kthread)) in &self.procs {
            if exclude.contains(pid) {
                continue;
            }
            let before = earlier.procs.get(pid).map_or(Duration::ZERO, |(c, _)| *c);
            let d = cpu.saturating_sub(before);
            if *kthread {
                out.kernel_threads += d;
            } else {
                out.processes += d;
            }
        }
        out
    }
}

/// Bytes allocated on disk by all files under `dir` (what a server wrote; sparse,
/// pre-sized segment files count only for their written blocks).
pub fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.blocks() * 512).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Finds an executable: the path itself when it contains a `/`, else a `PATH` lookup.
pub fn which(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if program.contains('/') {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Debian puts nats-server in /usr/sbin, which is not on every user's PATH.
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.into_iter().map(|d| d.join(program)).find(|c| c.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_itself() {
        let s = sample(None).expect("/proc/self is readable");
        assert!(s.rss_bytes > 0);
        let d = thread_run_delays(&[std::process::id()]).expect("no /proc/self/task/*/schedstat");
        assert!(d.contains_key(&std::process::id()), "the main thread is listed");
        assert_eq!(run_delay_between(&d, &d), Duration::ZERO);
    }

    #[test]
    fn run_delay_is_taken_thread_by_thread() {
        let earlier = ThreadDelays::from([(1, 1_000), (2, 5_000), (3, 9_000)]);
        // Thread 1 waited 500 ns more, thread 2 ended (missed), thread 4 started (from zero),
        // and thread 3's counter is not allowed to go backwards.
        let later = ThreadDelays::from([(1, 1_500), (3, 8_000), (4, 700)]);
        assert_eq!(run_delay_between(&earlier, &later), Duration::from_nanos(1_200));
    }

    #[test]
    fn census_sees_this_process() {
        let a = census();
        let me = std::process::id();
        assert!(a.procs.contains_key(&me));
        let b = census();
        let other = b.other_since(&a, &[me]);
        assert!(other.processes < Duration::from_secs(3600));
    }

    #[test]
    fn machine_busy_is_readable() {
        assert!(machine_busy().is_some());
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}

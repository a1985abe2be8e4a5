//! Child processes of the test cluster: each runs in its own process group
//! with its output in a log file, and a watchdog kills every group once the
//! test process is gone, however it ended (normal exit, panic, abort,
//! SIGKILL). Statics are never dropped, so the watchdog is what cleans up
//! after the shared cluster.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// Kills the registered process groups when the test process exits.
#[derive(Debug)]
pub(crate) struct Watchdog {
    groups_file: PathBuf,
    _child: Child,
}

/// Runs detached from the terminal's process group (so Ctrl-C reaches only
/// the test, and the watchdog outlives it), polls the test process, then
/// sends SIGTERM to every registered group, waits up to 5 s for them to go,
/// and sends SIGKILL to what is left. The etcd data is removed afterwards;
/// the logs are kept.
const WATCHDOG_SCRIPT: &str = r#"
trap '' INT HUP TERM PIPE
pid=$1; start=$2; groups=$3; dir=$4
alive() {
  s=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1,20)
  [ -n "$s" ] && [ "${s%% *}" != Z ] && [ "${s#* }" = "$start" ]
}
while alive; do sleep 0.5; done
for g in $(cat "$groups" 2>/dev/null); do kill -TERM -"$g" 2>/dev/null; done
i=0
while [ $i -lt 50 ]; do
  left=
  for g in $(cat "$groups" 2>/dev/null); do kill -0 -"$g" 2>/dev/null && left=1; done
  [ -z "$left" ] && break
  sleep 0.1
  i=$((i+1))
done
for g in $(cat "$groups" 2>/dev/null); do kill -KILL -"$g" 2>/dev/null; done
rm -rf "$dir/etcd-data"
"#;

/// Field 22 of /proc/self/stat: the process start time, which tells this
/// process apart from a later one that reuses its PID.
fn own_start_time() -> Result<String> {
    let stat = fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let after_comm = stat.rsplit_once(") ").map(|(_, rest)| rest).context("unexpected /proc/self/stat format")?;
    after_comm.split(' ').nth(19).map(str::to_string).context("no start time in /proc/self/stat")
}

impl Watchdog {
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        let groups_file = dir.join("process-groups");
        File::create(&groups_file).with_context(|| format!("creating {}", groups_file.display()))?;
        let log = File::create(dir.join("logs/watchdog.log")).context("creating watchdog.log")?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("remedy-cluster-watchdog")
            .arg(std::process::id().to_string())
            .arg(own_start_time()?)
            .arg(&groups_file)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting the cluster watchdog (sh)")?;
        Ok(Self { groups_file, _child: child })
    }

    fn register(&self, pgid: u32) -> Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.groups_file)
            .with_context(|| format!("opening {}", self.groups_file.display()))?;
        writeln!(f, "{pgid}").context("registering a process group")?;
        Ok(())
    }
}

/// One control-plane process.
#[derive(Debug)]
pub(crate) struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` in a new process group, stdout and stderr appended to
    /// `<log_dir>/<name>.log`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &Path)],
        log_dir: &Path,
        watchdog: &Watchdog,
    ) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
        // With process_group(0) the group id is the child's pid.
        watchdog.register(child.id())?;
        fs::write(log_dir.join(format!("{name}.cmdline")), format!("{} {}\n", program.display(), args.join(" "))).ok();
        Ok(Self { name: name.to_string(), child, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of the log when the process has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.exit_status() {
            bail!("{} exited ({status}); last lines of {}:\n{}", self.name, self.log.display(), tail(&self.log, 30));
        }
        Ok(())
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Resident set size in KiB, from /proc.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// VmRSS of a process in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// `n` distinct free TCP ports on 127.0.0.1. All listeners are held until
/// every port is chosen so that no port is handed out twice.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0 to pick a free port")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

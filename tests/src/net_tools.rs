//! Running the network tools tests need (`ip`, `nft`): a missing tool
//! fails the test with the command that installs it, never skips it.

use std::process::{Command, Stdio};

/// How to get the tools.
pub const INSTALL: &str = "apt-get install -y nftables iproute2";

/// Runs a program to completion; panics with its output when it fails.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): this test needs it; install it with `{INSTALL}`"));
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().expect("a piped stdin").write_all(text.as_bytes()).expect("write the program's input");
    }
    let out = child.wait_with_output().expect("wait for the program");
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn require_tools() {
    for (program, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(program).arg(arg).output().map(|o| o.status.success()).unwrap_or(false);
        assert!(ok, "`{program}` is missing or broken: this test needs it; install it with `{INSTALL}`");
    }
}

/// A network namespace this test made, deleted on drop with every link
/// inside it (and so their host-side peers).
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    /// Makes namespace `name` with its loopback up, replacing one left by a
    /// run that was killed before its drop ran.
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        run("ip", &["netns", "add", name], None);
        let ns = Netns(name.to_owned());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    /// Runs `nft ARGS…` inside it.
    pub fn nft(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut all = vec!["netns", "exec", self.0.as_str(), "nft"];
        all.extend_from_slice(args);
        run("ip", &all, stdin)
    }

    /// Runs `f` on a thread that entered this namespace: sockets it opens
    /// belong to the namespace, whichever thread uses them later.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("enter {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("the thread in the namespace panicked"))
    }

    /// Links it to the host with a veth pair: `host_side` on the host with
    /// `host_cidr`, `eth0` inside with `inner_cidr`.
    pub fn link(&self, host_side: &str, host_cidr: &str, inner_cidr: &str) {
        let _ = Command::new("ip").args(["link", "del", host_side]).stderr(Stdio::null()).status();
        run("ip", &["link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", &self.0], None);
        run("ip", &["addr", "add", host_cidr, "dev", host_side], None);
        run("ip", &["link", "set", host_side, "up"], None);
        self.ip(&["addr", "add", inner_cidr, "dev", "eth0"]);
        self.ip(&["link", "set", "eth0", "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

//! Running the network tools tests need (`ip`, `nft`): a missing tool
//! fails the test with the command that installs it, never skips it.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::procs::{Proc, bin};

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

/// The addresses in `set` of `table inet remedy` in `ns`; empty when the
/// set (or the table) is not there.
pub fn banned(ns: &Netns, set: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-j", "list", "set", "inet", "remedy", set])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip netns exec … nft` ({e}); install it with `{INSTALL}`"));
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut found = Vec::new();
    for object in listing["nftables"].as_array().into_iter().flatten() {
        for element in object["set"]["elem"].as_array().into_iter().flatten() {
            // Elements with a timeout are objects; plain ones are strings.
            let value = element.get("elem").map(|e| &e["val"]).unwrap_or(element);
            if let Some(text) = value.as_str() {
                found.push(text.to_owned());
            } else if let Some(prefix) = value.get("prefix") {
                found.push(format!("{}/{}", prefix["addr"].as_str().unwrap_or(""), prefix["len"]));
            }
        }
    }
    found
}

/// A CRI log line as the kubelet writes it.
pub fn cri(message: &str) -> String {
    format!("2026-11-27T03:00:00.000000000Z stdout F {message}\n")
}

/// One node of a test cluster: a network namespace this test made, linked
/// to the host, and the agent running inside it.
#[derive(Debug)]
pub struct NetNode {
    /// The node's name, as its agent says hello.
    pub name: String,
    /// The agent, once started.
    pub agent: Option<Proc>,
    /// The namespace.
    pub ns: Netns,
    /// The host side of its link, where the coordinator listens (`X.1`).
    pub host_address: String,
    /// The node's address on its link (`X.2`).
    pub address: String,
}

impl Drop for NetNode {
    fn drop(&mut self) {
        // The agent goes before its namespace.
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
    }
}

impl NetNode {
    /// Makes namespace `ns` with a veth link `host_side` to the host:
    /// `{subnet}.1/24` on the host, `{subnet}.2/24` inside (`subnet` is the
    /// first three octets, such as `10.79.0`).
    pub fn linked(name: &str, ns: &str, host_side: &str, subnet: &str) -> NetNode {
        let ns = Netns::new(ns);
        let (host_address, address) = (format!("{subnet}.1"), format!("{subnet}.2"));
        ns.link(host_side, &format!("{host_address}/24"), &format!("{address}/24"));
        NetNode { name: name.to_owned(), agent: None, ns, host_address, address }
    }

    /// Starts the node's agent under `ip netns exec` with `config` (the
    /// agent's YAML), dialling the coordinator's `port` on the host side of
    /// its link; its state lives under `dir/<name>`.
    pub fn start_agent(&mut self, dir: &Path, port: u16, config: &str) {
        let dir = dir.join(&self.name);
        std::fs::create_dir_all(&dir).expect("the agent's directory");
        let config_path = dir.join("agent.yaml");
        std::fs::write(&config_path, config).expect("the agent's configuration");
        let state = dir.join("state");
        let args = [
            "netns",
            "exec",
            self.ns.0.as_str(),
            bin("remedy-agent").to_str().unwrap_or_default(),
            "--node-name",
            &self.name,
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--insecure",
            "--coordinator",
            &format!("http://{}:{port}", self.host_address),
            "--diagnostics-listen",
            "127.0.0.1:7072",
            "--config",
            config_path.to_str().unwrap_or_default(),
        ]
        .map(str::to_owned)
        .to_vec();
        let log = dir.join("agent.log");
        self.agent = Some(Proc::spawn_program(&format!("agent {}", self.name), Path::new("ip"), &args, log));
    }
}

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

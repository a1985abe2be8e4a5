//! Throughput of the log detectors, beside their peers in the same run.
//!
//! 1. Classification: a generated CRI container log (1 GiB by default) read
//!    single-threaded through `ErrorClassifier`, then `grep -E -c` with the
//!    same error patterns on the same file.
//! 2. Brute force: a generated sshd auth log read through
//!    `BruteForceDetector`, then `fail2ban-regex` with its `sshd` filter on
//!    the same file; both lists of attacking addresses are compared.
//!
//! Prints Markdown on stdout, progress on stderr. The generated files live
//! under the temp dir and are removed on the way out. Content is
//! deterministic (a fixed-seed generator), so runs are comparable.
//!
//! `cargo bench -p remedy-shared --bench logs -- [--size-mib N] [--auth-lines N] [--auth-addresses N]
//! [--auth-fail-percent P] [--no-peers] [--quick] [--keep]`
//!
//! `--auth-addresses` bounds the addresses people mistype from (64,000 by
//! default: one new address per mistyping failure up to 64,000 of them,
//! then again from the first); with more failing addresses than the
//! detector's `max_ips` (10,000), it evicts. `--no-peers` skips grep and
//! fail2ban (which takes minutes on millions of lines).
#![allow(clippy::disallowed_methods, reason = "a benchmark measures elapsed time with the real clock")]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use remedy_shared::Timestamp;
use remedy_shared::finding::FindingState;
use remedy_shared::logs::{BruteForceConfig, BruteForceDetector, ClassifierConfig, ErrorClassifier, LineRef};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A small deterministic generator (SplitMix64): the same file every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Options {
    size_mib: u64,
    auth_lines: u64,
    auth_addresses: u64,
    auth_fail_percent: u64,
    peers: bool,
    keep: bool,
}

fn options() -> Result<Options> {
    let mut opts = Options {
        size_mib: 1024,
        auth_lines: 400_000,
        auth_addresses: 64_000,
        auth_fail_percent: 1,
        peers: true,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--size-mib" => opts.size_mib = args.next().ok_or("--size-mib needs a value")?.parse()?,
            "--auth-lines" => opts.auth_lines = args.next().ok_or("--auth-lines needs a value")?.parse()?,
            "--auth-addresses" => {
                opts.auth_addresses = args.next().ok_or("--auth-addresses needs a value")?.parse::<u64>()?.max(1);
            }
            "--auth-fail-percent" => {
                opts.auth_fail_percent =
                    args.next().ok_or("--auth-fail-percent needs a value")?.parse::<u64>()?.min(50);
            }
            "--no-peers" => opts.peers = false,
            "--quick" => {
                opts.size_mib = 128;
                opts.auth_lines = 50_000;
            }
            "--keep" => opts.keep = true,
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            "--help" | "-h" => {
                println!(
                    "logs bench: [--size-mib N (1024)] [--auth-lines N (400000)] [--auth-addresses N (64000)] \
                     [--auth-fail-percent P (1)] [--no-peers] [--quick] [--keep]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    Ok(opts)
}

/// Removes the generated files however the run ends.
struct TempFiles(Vec<PathBuf>, bool);

impl Drop for TempFiles {
    fn drop(&mut self) {
        if !self.1 {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn main() -> Result<()> {
    let opts = options()?;
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let cri = dir.join(format!("remedy-logs-bench-{pid}.cri.log"));
    let auth = dir.join(format!("remedy-logs-bench-{pid}.auth.log"));
    let _cleanup = TempFiles(vec![cri.clone(), auth.clone()], opts.keep);

    println!("## Log detectors\n");
    classification(&cri, opts.size_mib << 20, opts.peers)?;
    brute_force(&auth, &opts)?;
    Ok(())
}

// --- classification -------------------------------------------------------

fn message_pool(rng: &mut Rng) -> Vec<String> {
    let paths = ["/api/v1/items", "/api/v1/users/me", "/healthz", "/api/v1/orders", "/static/app.js"];
    let mut pool = Vec::new();
    for i in 0..8192u64 {
        let id = rng.next();
        let path = paths[(id % paths.len() as u64) as usize];
        let ms = rng.below(900);
        // Per thousand: 970 ordinary lines, 30 errors across the categories.
        let line = match rng.below(1000) {
            0..=399 => format!(
                "level=info ts=2026-11-26T10:00:00Z caller=server.go:214 msg=\"request served\" method=GET path={path}/{i} status=200 duration_ms={ms} request_id={id:016x}"
            ),
            400..=649 => format!(
                "10.{}.{}.{} - - [26/Nov/2026:10:00:00 +0000] \"GET {path}?page={i} HTTP/1.1\" 200 {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\" rt={}.{ms:03}",
                id % 250,
                (id >> 8) % 250,
                (id >> 16) % 250,
                id % 40_000,
                ms / 300
            ),
            650..=849 => format!(
                "{{\"level\":\"info\",\"ts\":\"2026-11-26T10:00:00.{ms:03}Z\",\"logger\":\"cache\",\"msg\":\"cache refresh complete\",\"keys\":{},\"took_ms\":{ms},\"trace_id\":\"{id:016x}\"}}",
                id % 100_000
            ),
            850..=969 => format!(
                "2026-11-26 10:00:00.{ms:03} DEBUG [worker-{}] c.e.idp.session.SessionStore - session {id:016x} touched, ttl=1800s",
                id % 16
            ),
            970..=979 => format!(
                "level=error ts=2026-11-26T10:00:00Z caller=db.go:88 msg=\"database query failed\" err=\"pq: connection refused\" query_id={id:016x}"
            ),
            980..=986 => format!(
                "2026-11-26 10:00:00.{ms:03} ERROR [worker-{}] c.e.idp.http.Client - upstream request timed out after 30000 ms ({path})",
                id % 16
            ),
            987..=991 => format!(
                "{{\"level\":\"error\",\"ts\":\"2026-11-26T10:00:00Z\",\"msg\":\"authentication failed: invalid token\",\"user_id\":{}}}",
                id % 100_000
            ),
            992..=995 => format!(
                "10.{}.{}.{} - - [26/Nov/2026:10:00:00 +0000] \"POST {path} HTTP/1.1\" 503 0 \"-\" \"okhttp/4.12\" rt=30.{ms:03}",
                id % 250,
                (id >> 8) % 250,
                (id >> 16) % 250
            ),
            _ => format!(
                "java.lang.IllegalStateException: order {id:016x} in unexpected state at c.e.idp.orders.Flow.advance(Flow.java:{})",
                ms
            ),
        };
        pool.push(line);
    }
    pool
}

fn generate_cri(path: &Path, bytes: u64) -> Result<(u64, u64)> {
    let mut rng = Rng(0x5EED_0001);
    let pool = message_pool(&mut rng);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let (mut written, mut lines) = (0u64, 0u64);
    while written < bytes {
        let msg = &pool[rng.below(pool.len() as u64) as usize];
        let (secs, nanos) = (lines / 2000, (lines % 2000) * 500_000);
        let stream = if lines % 5 == 0 { "stderr" } else { "stdout" };
        let line = format!(
            "2026-11-26T{:02}:{:02}:{:02}.{nanos:09}Z {stream} F {msg}\n",
            10 + secs / 3600 % 14,
            secs / 60 % 60,
            secs % 60
        );
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        lines += 1;
    }
    out.flush()?;
    Ok((written, lines))
}

/// Calls `each` with every complete line of `path`, read in large chunks.
fn for_each_line(path: &Path, mut each: impl FnMut(&[u8])) -> Result<()> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 8 << 20];
    let mut filled = 0;
    loop {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            if filled > 0 {
                each(&buf[..filled]);
            }
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &buf[..filled]) {
            each(&buf[start..end]);
            start = end + 1;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// The message of a CRI line (`TIMESTAMP STREAM P|F MESSAGE`).
fn cri_message(line: &[u8]) -> &[u8] {
    let mut rest = line;
    for _ in 0..3 {
        match memchr::memchr(b' ', rest) {
            Some(i) => rest = &rest[i + 1..],
            None => return &[],
        }
    }
    rest
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn classification(path: &Path, bytes: u64, peers: bool) -> Result<()> {
    eprintln!("logs bench: generating {} MiB of CRI log at {}", bytes >> 20, path.display());
    let started = Instant::now();
    let (size, lines) = generate_cri(path, bytes)?;
    eprintln!("logs bench: generated {lines} lines in {:.1} s", started.elapsed().as_secs_f64());

    let config = ClassifierConfig::default();
    let patterns = config.error_patterns.join("|");
    let mut classifier = ErrorClassifier::new(config)?;
    // Warm the page cache so both readers start from memory.
    for_each_line(path, |_| {})?;

    let mut findings = 0u64;
    let mut invalid_utf8 = 0u64;
    let mut n = 0i64;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for_each_line(path, |raw| {
        n += 1;
        let Ok(message) = std::str::from_utf8(cri_message(raw)) else {
            invalid_utf8 += 1;
            return;
        };
        let line = LineRef {
            namespace: Some("saas-idp-production"),
            pod: Some("saas-idp-api-7d9f8b6c5d-x2k7p"),
            container: Some("api"),
            file: None,
            timestamp: None,
            message,
        };
        // 2,000 lines per simulated second, as the file's timestamps say.
        let now = Timestamp::from_millis(1_795_687_200_000 + n / 2);
        if classifier.observe(&line, now).is_some() {
            findings += 1;
        }
    })?;
    let ours = t0.elapsed().as_secs_f64();
    let ours_cpu = cpu_seconds() - cpu0;
    let stats = classifier.stats();

    let (grep, grep_count) = if peers {
        eprintln!("logs bench: grep -E -c");
        let t1 = Instant::now();
        let out =
            Command::new("grep").env("LC_ALL", "C").arg("-E").arg("-c").arg("-e").arg(&patterns).arg(path).output()?;
        (t1.elapsed().as_secs_f64(), String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0))
    } else {
        (f64::NAN, 0)
    };

    let mb = size as f64 / 1e6;
    println!("### Error classification (P1-002), single thread\n");
    println!(
        "Generated CRI log: {:.0} MB ({} MiB), {lines} lines, {:.1} % error lines. Every line is split \
         from its CRI prefix, checked as UTF-8 and fed to `ErrorClassifier::observe` with the default \
         configuration (7 error patterns, categories database / timeout / authentication / other, \
         window 1m) on one thread; the file is in the page cache for both readers.\n",
        mb,
        size >> 20,
        stats.errors as f64 * 100.0 / lines as f64
    );
    println!("| reader | wall s | CPU s | MB/s | lines/s | error lines |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| remedy `ErrorClassifier` (1 core) | {ours:.2} | {ours_cpu:.2} | {:.0} | {:.0} | {} |",
        mb / ours,
        lines as f64 / ours,
        stats.errors
    );
    if peers {
        println!(
            "| `LC_ALL=C grep -E -c` (same patterns) | {grep:.2} | - | {:.0} | {:.0} | {grep_count} |",
            mb / grep,
            lines as f64 / grep
        );
    }
    let cats: Vec<String> =
        classifier.categories().iter().zip(&stats.by_category).map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "\nCategories: {}. Findings emitted: {findings} (raised {}, the rest refreshes). Same error count as grep: {}. \
         Invalid UTF-8 lines: {invalid_utf8}.\n\ngrep pattern: `{patterns}`\n",
        cats.join(", "),
        stats.raised,
        if grep_count == stats.errors { "yes" } else { "NO" }
    );
    Ok(())
}

// --- brute force ------------------------------------------------------------

struct AuthLog {
    attackers: BTreeMap<IpAddr, u64>,
    /// Distinct addresses that failed, attackers included.
    addresses: u64,
    lines: u64,
    bytes: u64,
}

/// Line `i` of the auth log is written at 10 ms steps from this instant
/// (2026-11-26T10:00:00Z).
const AUTH_T0_MS: i64 = 1_795_687_200_000;

/// The RFC 3164 timestamp of `ms` (UTC), as rsyslog writes it: the day
/// padded with a space, days and months rolling over.
fn syslog_time(ms: i64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let t = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let dt = jiff::tz::TimeZone::UTC.to_datetime(t);
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[(dt.month() - 1) as usize],
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// The `n`th address people mistype from, of `addresses`: 192.0.X.Y for
/// the first 64,000 (as the bench always wrote them), then 10.X.Y.Z.
fn mistyping_address(n: u64, addresses: u64) -> String {
    let i = n % addresses;
    if i < 64_000 {
        format!("192.0.{}.{}", i / 250, i % 250)
    } else {
        let j = i - 64_000;
        format!("10.{}.{}.{}", j / 62_500 % 256, j / 250 % 250, j % 250)
    }
}

fn generate_auth(path: &Path, lines: u64, addresses: u64, fail_percent: u64) -> Result<AuthLog> {
    let mut rng = Rng(0x5EED_0002);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let attackers: Vec<IpAddr> = (0..24u32)
        .map(|k| {
            if k % 4 == 3 {
                format!("2001:db8:{:x}::{:x}", 0xa0 + k, k + 1).parse()
            } else {
                format!("203.0.113.{}", 10 + k * 7).parse()
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    let mut counts = BTreeMap::new();
    let (mut bytes, mut legit) = (0u64, 0u64);
    // Each attacker gets a burst of 60 failures, one every 20 lines (0.2 s),
    // starting at its own place in the file.
    let span = (lines / attackers.len() as u64).max(1);
    for i in 0..lines {
        let now = AUTH_T0_MS + i as i64 * 10;
        let pid = 10_000 + i;
        let k = (i / span) as usize;
        let offset = i % span;
        let msg = if k < attackers.len() && offset.is_multiple_of(20) && offset / 20 < 60 {
            let ip = attackers[k];
            *counts.entry(ip).or_insert(0) += 1;
            let user = ["root", "admin", "oracle", "postgres", "ubuntu", "test"][(offset / 20 % 6) as usize];
            let invalid = if user == "root" { "" } else { "invalid user " };
            format!("Failed password for {invalid}{user} from {ip} port {} ssh2", 30_000 + rng.below(30_000))
        } else {
            let r = rng.next();
            let client = format!("198.51.{}.{}", (r >> 8) % 100, r % 250);
            match r % 100 {
                // People mistyping, each from an address of its own (up
                // to `addresses` of them).
                p if p < fail_percent => {
                    legit += 1;
                    format!(
                        "Failed password for deploy from {} port {} ssh2",
                        mistyping_address(legit, addresses),
                        40_000 + r % 20_000
                    )
                }
                1..=40 => format!(
                    "Accepted publickey for deploy from {client} port {} ssh2: ED25519 SHA256:{:016x}",
                    40_000 + r % 20_000,
                    r
                ),
                41..=70 => "pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)".to_owned(),
                71..=90 => {
                    format!("Received disconnect from {client} port {}:11: disconnected by user", 40_000 + r % 20_000)
                }
                _ => format!("Connection closed by {client} port {} [preauth]", 40_000 + r % 20_000),
            }
        };
        let line = format!("{} node-1 sshd[{pid}]: {msg}\n", syslog_time(now));
        out.write_all(line.as_bytes())?;
        bytes += line.len() as u64;
    }
    out.flush()?;
    let addresses = counts.len() as u64 + legit.min(addresses);
    Ok(AuthLog { attackers: counts, addresses, lines, bytes })
}

fn brute_force(path: &Path, opts: &Options) -> Result<()> {
    let lines = opts.auth_lines;
    eprintln!("logs bench: generating {lines} sshd lines at {}", path.display());
    let log = generate_auth(path, lines, opts.auth_addresses, opts.auth_fail_percent)?;
    let config = BruteForceConfig::default();
    let (raise_at, window) = (config.raise_at, config.window);
    let mut detector = BruteForceDetector::new(config)?;
    for_each_line(path, |_| {})?;

    let mut found = BTreeSet::new();
    let mut i = 0i64;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for_each_line(path, |raw| {
        let now = Timestamp::from_millis(AUTH_T0_MS + i * 10);
        i += 1;
        let Ok(message) = std::str::from_utf8(raw) else { return };
        if let Some(f) = detector.observe(&LineRef::plain(message), now)
            && f.state == FindingState::Active
        {
            found.insert(f.labels.get("source_ip").cloned().unwrap_or_default());
        }
    })?;
    let ours = t0.elapsed().as_secs_f64();
    let ours_cpu = cpu_seconds() - cpu0;
    let stats = detector.stats();
    let ours_ips: BTreeSet<IpAddr> = found.iter().filter_map(|s| s.parse().ok()).collect();

    let expected: BTreeSet<IpAddr> = log.attackers.keys().copied().collect();
    let mb = log.bytes as f64 / 1e6;
    println!("### Brute-force detection (SEC-001), single thread\n");
    println!(
        "Generated sshd auth log (syslog lines): {:.1} MB, {} lines, {} attacking addresses ({} IPv6) with {} \
         failures each in 12 s bursts, {} failures from people mistyping (each from the next of {} addresses, in turn), the rest accepted \
         logins, sessions and disconnects. remedy: `BruteForceDetector::observe` with the default configuration \
         (raise at {raise_at} failures in {}), the simulated clock following the lines (10 ms apart).\n",
        mb,
        log.lines,
        expected.len(),
        expected.iter().filter(|ip| ip.is_ipv6()).count(),
        log.attackers.values().next().copied().unwrap_or(0),
        stats.failures - log.attackers.values().sum::<u64>(),
        log.addresses - log.attackers.len() as u64,
        remedy_shared::config::format_duration(window),
    );

    println!(
        "| tool | wall s | CPU s | MB/s | lines/s | failures matched | addresses at >= {raise_at} failures | same as generated |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| remedy `BruteForceDetector` (1 core) | {ours:.3} | {ours_cpu:.3} | {:.0} | {:.0} | {} | {} | {} |",
        mb / ours,
        log.lines as f64 / ours,
        stats.failures,
        ours_ips.len(),
        if ours_ips == expected { "yes" } else { "NO" }
    );

    println!(
        "\nremedy: {} distinct addresses failed; {} addresses tracked at the end (max_ips {}), {} evicted.",
        log.addresses,
        stats.tracked,
        BruteForceConfig::default().max_ips,
        stats.evicted
    );
    let f2b = Command::new("fail2ban-regex").arg("--version").output();
    if !opts.peers {
        println!("\nPeers skipped (`--no-peers`).\n");
    } else if f2b.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("logs bench: fail2ban-regex -o ip {} sshd", path.display());
        let t1 = Instant::now();
        let out = Command::new("fail2ban-regex").arg("-o").arg("ip").arg(path).arg("sshd").output()?;
        let secs = t1.elapsed().as_secs_f64();
        let mut per_ip: BTreeMap<IpAddr, u64> = BTreeMap::new();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(ip) = l.trim().parse::<IpAddr>() {
                *per_ip.entry(ip.to_canonical()).or_insert(0) += 1;
            }
        }
        let total: u64 = per_ip.values().sum();
        let theirs: BTreeSet<IpAddr> = per_ip.iter().filter(|(_, n)| **n >= raise_at).map(|(ip, _)| *ip).collect();
        println!(
            "| `fail2ban-regex -o ip FILE sshd` | {secs:.2} | - | {:.1} | {:.0} | {total} | {} | {} |",
            mb / secs,
            log.lines as f64 / secs,
            theirs.len(),
            if theirs == expected { "yes" } else { "NO" }
        );
        println!(
            "\nremedy is {:.0}x fail2ban-regex on this file (wall time). fail2ban-regex counts matches over the \
             whole file (it applies no `findtime`); its addresses with >= {raise_at} matches are compared. \
             Same addresses found by both: {}.\n",
            secs / ours,
            if theirs == ours_ips { "yes" } else { "NO" }
        );
    } else {
        println!("\n`fail2ban-regex` is not installed (Debian package `fail2ban`): no peer in this run.\n");
    }
    Ok(())
}

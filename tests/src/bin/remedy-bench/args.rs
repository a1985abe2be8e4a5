//! The command line: every knob of every part, its default and its
//! `--quick` value, and the checks that keep each run bounded.
//!
//! Flags are parsed by clap into [`Args`], where every knob is optional;
//! [`Args::into_opts`] lays the knobs given over the defaults (or over the
//! `--quick` settings) and checks the result, giving the [`Opts`] the parts
//! read. A knob given explicitly wins over `--quick` wherever it stands on
//! the line, and a knob given twice keeps its last value.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use crate::blocks::BlocksOpts;
use crate::engine::EngineOpts;
use crate::tail::TailOpts;

/// Most findings per batch the coordinator accepts by default.
pub(crate) const COORDINATOR_MAX_BATCH: usize = 1_000;

/// The parts `--only` may name.
const PARTS: &[&str] = &[
    "agent",
    "fanin",
    "postgres",
    "engine",
    "engine-latency",
    "engine-decide",
    "engine-runs",
    "tail",
    "blocks",
    "tls",
];

/// A comma-separated list of counts, as `--fanin 1000,5000` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counts(pub(crate) Vec<usize>);

fn counts(value: &str) -> Result<Counts, String> {
    value
        .split(',')
        .map(|v| v.trim().parse::<usize>().map_err(|_| format!("`{}` is not a number", v.trim())))
        .collect::<Result<Vec<_>, _>>()
        .map(Counts)
}

/// A comma-separated list of part names, as `--only fanin,tls` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parts(pub(crate) Vec<String>);

fn parts(value: &str) -> Result<Parts, String> {
    Ok(Parts(value.split(',').map(|s| s.trim().to_owned()).collect()))
}

/// remedy-bench: benchmarks of Remedy's core against real release
/// processes on loopback, with their peers measured beside them.
///
/// Prints the results as Markdown on stdout. Every part runs unless
/// `--only` names some; a knob given explicitly wins over `--quick`.
/// `scripts/bench.sh` builds the binaries, installs the peers and runs this.
#[derive(Debug, Clone, Parser)]
#[command(name = "remedy-bench", args_override_self = true)]
pub(crate) struct Args {
    /// Short smoke run: small counts and short windows in every part
    /// (fan-in with 200 agents, 5 s measured; a quick engine, tail and
    /// blocks part; 2 s per TLS transport).
    #[arg(long)]
    pub(crate) quick: bool,

    /// Run only these parts, comma-separated: agent, fanin, postgres,
    /// engine, tail, blocks, tls; or one part of the engine's benchmark:
    /// engine-latency, engine-decide, engine-runs. Unset: every part.
    #[arg(long, value_name = "LIST", value_parser = parts)]
    pub(crate) only: Option<Parts>,

    /// Simulated agent counts for the fan-in runs, each 1 to 20000
    /// [default: 1000,5000; --quick: 200].
    #[arg(long, value_name = "N,N,...", value_parser = counts)]
    pub(crate) fanin: Option<Counts>,

    /// The fan-in run with this many agents first measures the coordinator
    /// idle, heartbeats only [default: 5000; --quick: 200].
    #[arg(long, value_name = "N")]
    pub(crate) idle_streams: Option<usize>,

    /// Seconds of the idle phase before the coordinator's RSS is measured
    /// [default: 25; --quick: 3].
    #[arg(long, value_name = "S")]
    pub(crate) idle_secs: Option<u64>,

    /// Findings per batch a simulated agent sends, 1 to the coordinator's
    /// default max_batch_findings (1000) [default: 100].
    #[arg(long, value_name = "N")]
    pub(crate) batch: Option<usize>,

    /// Batches in flight per simulated agent, at least 1 [default: 2].
    #[arg(long, value_name = "N")]
    pub(crate) window: Option<usize>,

    /// Seconds of load before the measurement window [default: 5; --quick: 2].
    #[arg(long, value_name = "S")]
    pub(crate) warmup_secs: Option<u64>,

    /// Seconds of the measurement window under load, at least 1
    /// [default: 30; --quick: 5].
    #[arg(long, value_name = "S")]
    pub(crate) measure_secs: Option<u64>,

    /// Streams being opened at once while the simulated agents connect, at
    /// least 1 [default: 200].
    #[arg(long, value_name = "N")]
    pub(crate) connect_parallel: Option<usize>,

    /// Seconds of the agent's and node_exporter's idle window, at least 1
    /// [default: 60; --quick: 10].
    #[arg(long, value_name = "S")]
    pub(crate) agent_secs: Option<u64>,

    /// The Prometheus node_exporter binary measured beside the agent.
    /// Unset: that peer is skipped.
    #[arg(long, value_name = "PATH")]
    pub(crate) node_exporter: Option<PathBuf>,

    /// The PostgreSQL bin directory (postgres, initdb, pgbench) measured
    /// as the peer of the ingest path. Unset: that peer is skipped.
    #[arg(long, value_name = "DIR")]
    pub(crate) pg_bin: Option<PathBuf>,

    /// Seconds of each pgbench run [default: 20; --quick: 3].
    #[arg(long, value_name = "S")]
    pub(crate) pg_secs: Option<u64>,

    /// pgbench client counts, each 1 to 32 [default: 1,8].
    #[arg(long, value_name = "N,N,...", value_parser = counts)]
    pub(crate) pg_clients: Option<Counts>,

    /// Rows per PostgreSQL transaction, 1 to 200000 [default: the findings
    /// per commit the coordinator reached in the fan-in runs, else 1000].
    #[arg(long, value_name = "N")]
    pub(crate) pg_rows: Option<usize>,

    /// Spaced alerts for webhook → first action, at most 20000
    /// [default: 500; --quick: 100].
    #[arg(long, value_name = "N")]
    pub(crate) engine_alerts: Option<usize>,

    /// The spaced alerts' rate, alerts per second, above 0 and at most 5000
    /// [default: 20].
    #[arg(long, value_name = "R")]
    pub(crate) engine_rate: Option<f64>,

    /// Bursts after the spaced alerts, at most 100 [default: 5; --quick: 2].
    #[arg(long, value_name = "N")]
    pub(crate) engine_bursts: Option<usize>,

    /// Alerts per burst, at most 2000 [default: 50; --quick: 20].
    #[arg(long, value_name = "N")]
    pub(crate) engine_burst: Option<usize>,

    /// Seconds between bursts, above 0 and at most 60 [default: 3; --quick: 2].
    #[arg(long, value_name = "S")]
    pub(crate) engine_burst_gap: Option<f64>,

    /// Active incidents for the in-process decision bench, each 1 to 100000
    /// [default: 1,100,1000; --quick: 1,100].
    #[arg(long, value_name = "N,N,...", value_parser = counts)]
    pub(crate) engine_incidents: Option<Counts>,

    /// Seconds measured per incident count, above 0 and at most 60
    /// [default: 3; --quick: 0.5].
    #[arg(long, value_name = "S")]
    pub(crate) engine_decide_secs: Option<f64>,

    /// Concurrent manual runs measured end to end, each 1 to 10000
    /// [default: 1,100,1000; --quick: 1,50].
    #[arg(long, value_name = "N,N,...", value_parser = counts)]
    pub(crate) engine_runs: Option<Counts>,

    /// HTTP steps per run, 1 to 100 [default: 5].
    #[arg(long, value_name = "N")]
    pub(crate) engine_steps: Option<usize>,

    /// Longest one end-to-end measurement may take, seconds, 1 to 1800
    /// [default: 240; --quick: 60].
    #[arg(long, value_name = "S")]
    pub(crate) engine_run_secs: Option<u64>,

    /// Log lines per second written in the tail part, 1 to 200000
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub(crate) tail_rate: Option<u64>,

    /// Container log files the lines are spread over, 1 to 1000 [default: 50].
    #[arg(long, value_name = "N")]
    pub(crate) tail_files: Option<usize>,

    /// Seconds the lines are written, 1 to 3600 [default: 60; --quick: 10].
    #[arg(long, value_name = "S")]
    pub(crate) tail_secs: Option<u64>,

    /// Line → finding latency trials, 1 to 5000 [default: 200; --quick: 20].
    #[arg(long, value_name = "N")]
    pub(crate) tail_trials: Option<usize>,

    /// Error lines written per latency trial, 1 to 100 [default: 5].
    #[arg(long, value_name = "N")]
    pub(crate) tail_burst: Option<usize>,

    /// Agents, one network namespace each, sent one block, 1 to 200
    /// [default: 50; --quick: 10].
    #[arg(long, value_name = "N")]
    pub(crate) blocks_agents: Option<usize>,

    /// Blocks timed per agent count, 1 to 1000 [default: 10; --quick: 5].
    #[arg(long, value_name = "N")]
    pub(crate) blocks_reps: Option<usize>,

    /// Bans held by one agent, 10 to 1000000 [default: 100000; --quick: 10000].
    #[arg(long, value_name = "N")]
    pub(crate) blocks_bans: Option<usize>,

    /// Seconds spent adding bans one directive at a time; the rest go in
    /// through the agent's blocks.json [default: 60; --quick: 15].
    #[arg(long, value_name = "S")]
    pub(crate) blocks_directive_secs: Option<u64>,

    /// TCP connects timed through the ruleset, 1 to 10000
    /// [default: 500; --quick: 200].
    #[arg(long, value_name = "N")]
    pub(crate) blocks_probes: Option<usize>,

    /// Seconds of new connections per transport in the tls part
    /// [default: 10; --quick: 2].
    #[arg(long, value_name = "S")]
    pub(crate) tls_secs: Option<u64>,
}

/// The knobs every part reads, defaults and `--quick` applied, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Opts {
    pub(crate) fanin: Vec<usize>,
    pub(crate) idle_streams: usize,
    pub(crate) idle_secs: u64,
    pub(crate) batch: usize,
    pub(crate) window: usize,
    pub(crate) warmup_secs: u64,
    pub(crate) measure_secs: u64,
    pub(crate) connect_parallel: usize,
    pub(crate) agent_secs: u64,
    pub(crate) node_exporter: Option<PathBuf>,
    pub(crate) pg_bin: Option<PathBuf>,
    pub(crate) pg_secs: u64,
    pub(crate) pg_clients: Vec<usize>,
    pub(crate) pg_rows: Option<usize>,
    /// The parts to run; empty: every part.
    pub(crate) only: Vec<String>,
    pub(crate) engine: EngineOpts,
    pub(crate) tail: TailOpts,
    pub(crate) blocks: BlocksOpts,
    /// Seconds of new connections per transport in the `tls` part.
    pub(crate) tls_secs: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            fanin: vec![1_000, 5_000],
            idle_streams: 5_000,
            idle_secs: 25,
            batch: 100,
            window: 2,
            warmup_secs: 5,
            measure_secs: 30,
            connect_parallel: 200,
            agent_secs: 60,
            node_exporter: None,
            pg_bin: None,
            pg_secs: 20,
            pg_clients: vec![1, 8],
            pg_rows: None,
            only: Vec::new(),
            engine: EngineOpts::default(),
            tail: TailOpts::default(),
            blocks: BlocksOpts::default(),
            tls_secs: 10,
        }
    }
}

impl Opts {
    /// The `--quick` settings: small counts and short windows.
    fn quick() -> Self {
        Opts {
            fanin: vec![200],
            idle_streams: 200,
            idle_secs: 3,
            warmup_secs: 2,
            measure_secs: 5,
            agent_secs: 10,
            pg_secs: 3,
            engine: EngineOpts::quick(),
            tail: TailOpts::quick(),
            blocks: BlocksOpts::quick(),
            tls_secs: 2,
            ..Opts::default()
        }
    }

    /// Whether `part` runs.
    pub(crate) fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }

    /// Whether any part of the engine's benchmark runs.
    pub(crate) fn runs_engine(&self) -> bool {
        self.runs("engine") || self.only.iter().any(|p| p.starts_with("engine-"))
    }

    /// Checks that every knob keeps its part bounded; the error names the flag.
    fn validate(&self) -> anyhow::Result<()> {
        if self.batch == 0 || self.batch > COORDINATOR_MAX_BATCH {
            bail!(
                "--batch must be between 1 and {COORDINATOR_MAX_BATCH} (the coordinator's default max_batch_findings)"
            );
        }
        if self.window == 0 || self.connect_parallel == 0 || self.measure_secs == 0 || self.agent_secs == 0 {
            bail!("--window, --connect-parallel, --measure-secs and --agent-secs must be greater than zero");
        }
        if self.fanin.iter().any(|&n| n == 0 || n > 20_000) {
            bail!("--fanin counts must be between 1 and 20000");
        }
        if self.pg_clients.iter().any(|&n| n == 0 || n > 32) {
            bail!("--pg-clients counts must be between 1 and 32");
        }
        if self.pg_rows.is_some_and(|r| r == 0 || r > 200_000) {
            bail!("--pg-rows must be between 1 and 200000");
        }
        self.engine.validate()?;
        self.tail.validate()?;
        self.blocks.validate()?;
        if let Some(unknown) = self.only.iter().find(|p| !PARTS.contains(&p.as_str())) {
            bail!("--only: unknown part `{unknown}` (known: {})", PARTS.join(", "));
        }
        Ok(())
    }
}

impl Args {
    /// The knobs given, laid over the defaults (or the `--quick` settings)
    /// and checked.
    pub(crate) fn into_opts(self) -> anyhow::Result<Opts> {
        fn set<T>(slot: &mut T, given: Option<T>) {
            if let Some(value) = given {
                *slot = value;
            }
        }
        let mut o = if self.quick { Opts::quick() } else { Opts::default() };
        set(&mut o.only, self.only.map(|p| p.0));
        set(&mut o.fanin, self.fanin.map(|c| c.0));
        set(&mut o.idle_streams, self.idle_streams);
        set(&mut o.idle_secs, self.idle_secs);
        set(&mut o.batch, self.batch);
        set(&mut o.window, self.window);
        set(&mut o.warmup_secs, self.warmup_secs);
        set(&mut o.measure_secs, self.measure_secs);
        set(&mut o.connect_parallel, self.connect_parallel);
        set(&mut o.agent_secs, self.agent_secs);
        o.node_exporter = self.node_exporter;
        o.pg_bin = self.pg_bin;
        set(&mut o.pg_secs, self.pg_secs);
        set(&mut o.pg_clients, self.pg_clients.map(|c| c.0));
        o.pg_rows = self.pg_rows;
        set(&mut o.engine.alerts, self.engine_alerts);
        set(&mut o.engine.rate, self.engine_rate);
        set(&mut o.engine.bursts, self.engine_bursts);
        set(&mut o.engine.burst_size, self.engine_burst);
        set(&mut o.engine.burst_gap_secs, self.engine_burst_gap);
        set(&mut o.engine.incidents, self.engine_incidents.map(|c| c.0));
        set(&mut o.engine.decide_secs, self.engine_decide_secs);
        set(&mut o.engine.runs, self.engine_runs.map(|c| c.0));
        set(&mut o.engine.steps, self.engine_steps);
        set(&mut o.engine.run_secs, self.engine_run_secs);
        set(&mut o.tail.rate, self.tail_rate);
        set(&mut o.tail.files, self.tail_files);
        set(&mut o.tail.secs, self.tail_secs);
        set(&mut o.tail.trials, self.tail_trials);
        set(&mut o.tail.burst, self.tail_burst);
        set(&mut o.blocks.agents, self.blocks_agents);
        set(&mut o.blocks.reps, self.blocks_reps);
        set(&mut o.blocks.bans, self.blocks_bans);
        set(&mut o.blocks.directive_secs, self.blocks_directive_secs);
        set(&mut o.blocks.probes, self.blocks_probes);
        set(&mut o.tls_secs, self.tls_secs);
        o.validate()?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Parses a command line as remedy-bench would, program name first.
    fn opts(line: &str) -> Opts {
        let argv = std::iter::once("remedy-bench").chain(line.split_whitespace());
        Args::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("`{line}` does not parse: {e}"))
            .into_opts()
            .unwrap_or_else(|e| panic!("`{line}` is refused: {e:#}"))
    }

    #[test]
    fn the_definition_is_consistent() {
        Args::command().debug_assert();
    }

    /// Each line scripts/bench.sh and docs/benchmarks.md hand remedy-bench:
    /// the script puts the peers it found first, then the arguments it was
    /// given, with `--only` stripped of `logs` and the `--logs-*` options
    /// taken out.
    #[test]
    fn every_command_line_of_the_bench_script_parses() {
        let peers = "--node-exporter /usr/bin/prometheus-node-exporter --pg-bin /usr/lib/postgresql/15/bin";
        let lines = [
            "",
            "--quick",
            "--only fanin --fanin 5000",
            "--only engine",
            "--only tail",
            "--only blocks",
            "--only tls",
            "--only tls --tls-secs 10",
            "--only tail --quick",
            "--only blocks --quick",
            "--only tail --tail-rate 20000 --tail-files 100 --tail-secs 30 --tail-trials 100 --tail-burst 5",
        ];
        for line in lines {
            opts(line);
            opts(&format!("{peers} {line}"));
            opts(&format!("--pg-bin /usr/lib/postgresql/15/bin {line}"));
        }
    }

    #[test]
    fn no_flags_give_the_defaults_and_quick_the_quick_settings() {
        assert_eq!(opts(""), Opts::default());
        assert_eq!(opts("--quick"), Opts::quick());
        let o = opts("--quick");
        assert_eq!((o.fanin, o.measure_secs, o.tls_secs), (vec![200], 5, 2));
        assert_eq!((o.engine.alerts, o.tail.secs, o.blocks.bans), (100, 10, 10_000));
    }

    #[test]
    fn flags_land_on_their_knobs() {
        let o = opts(
            "--node-exporter /ne --pg-bin /pg --only fanin,engine-runs --fanin 10,20 --pg-clients 2 --pg-rows 7 \
             --engine-rate 2.5 --engine-burst 9 --engine-runs 3,4 --tail-rate 20000 --tail-burst 5 \
             --blocks-directive-secs 30 --tls-secs 4",
        );
        assert_eq!(o.node_exporter, Some(PathBuf::from("/ne")));
        assert_eq!(o.pg_bin, Some(PathBuf::from("/pg")));
        assert_eq!(o.only, vec!["fanin", "engine-runs"]);
        assert!(o.runs("fanin") && o.runs_engine() && !o.runs("tls"));
        assert_eq!((o.fanin, o.pg_clients, o.pg_rows), (vec![10, 20], vec![2], Some(7)));
        assert_eq!((o.engine.rate, o.engine.burst_size, o.engine.runs), (2.5, 9, vec![3, 4]));
        assert_eq!((o.tail.rate, o.tail.burst, o.blocks.directive_secs, o.tls_secs), (20_000, 5, 30, 4));
    }

    #[test]
    fn explicit_flags_win_over_quick_wherever_they_stand() {
        for line in ["--quick --tail-secs 30 --fanin 300", "--tail-secs 30 --fanin 300 --quick"] {
            let o = opts(line);
            assert_eq!((o.tail.secs, o.tail.trials, o.fanin), (30, 20, vec![300]), "{line}");
        }
    }

    #[test]
    fn a_flag_given_twice_keeps_its_last_value() {
        assert_eq!(opts("--only fanin --only tls").only, vec!["tls"]);
        assert_eq!(opts("--tls-secs 3 --tls-secs 5").tls_secs, 5);
    }

    #[test]
    fn bad_lines_are_refused_naming_the_flag() {
        let refused = |line: &str| {
            let argv = std::iter::once("remedy-bench").chain(line.split_whitespace());
            match Args::try_parse_from(argv) {
                Err(e) => e.to_string(),
                Ok(args) => format!("{:#}", args.into_opts().unwrap_err()),
            }
        };
        assert!(refused("--fanin 10,x").contains("`x` is not a number"));
        assert!(refused("--fanin 0").contains("--fanin counts must be between 1 and 20000"));
        assert!(refused("--batch 1001").contains("--batch must be between 1 and 1000"));
        assert!(refused("--only fanin,logs").contains("unknown part `logs`"));
        assert!(refused("--engine-rate 0").contains("--engine-rate"));
        assert!(refused("--tls-secs").contains("--tls-secs"));
        assert!(refused("--no-such-flag 1").contains("--no-such-flag"));
    }

    #[test]
    fn help_names_every_flag() {
        let help = Args::command().render_long_help().to_string();
        for flag in [
            "--quick",
            "--only",
            "--fanin",
            "--pg-bin",
            "--engine-burst-gap",
            "--tail-burst",
            "--blocks-directive-secs",
            "--tls-secs",
        ] {
            assert!(help.contains(flag), "{flag} is missing from --help");
        }
        let err = Args::try_parse_from(["remedy-bench", "--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
    }
}

//! `encore serve`: the HTTP service and its page over one or more trained runs, and
//! `encore bench serve`: the bounded load generator against an in-process service. The
//! service itself lives in `encore-serve`; this module loads the runs through the binary's
//! registry, binds, and waits for Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_serve::load::{LoadOptions, LoadReport};
use encore_serve::{Client, Limits, ServedRun, Service};

use crate::{models, progress};

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Examples:\n  encore serve --run runs/demo/runs/multivae\n  encore serve --run mvae=runs/demo/runs/multivae --run ease=runs/demo/runs/ease --addr 127.0.0.1:8080\n  ENCORE_TOKEN=s3cret encore serve --run runs/demo/runs/multivae\n  curl -s localhost:8080/v1/recommend -d '{\"history\": [\"TRACK_ID\", \"TRACK_ID\"], \"k\": 5}'\n\nThe page is at http://ADDR/; the API under /v1: POST /v1/recommend\n({\"model\"?, \"user_id\"? | \"history\"?: [ids], \"k\"?, \"exclude\"?: [ids]}),\nGET /v1/items?q=&limit=, GET /v1/items/ID/similar?k=, GET /v1/models; GET /health and\nGET /metrics (Prometheus). Set RUST_LOG=warn to silence the access log."
)]
pub struct ServeArgs {
    /// A run directory to serve, as DIR (named after its folder) or NAME=DIR; repeat for
    /// several. The first is the default model.
    #[arg(long = "run", value_name = "[NAME=]DIR", required = true)]
    pub runs: Vec<String>,
    /// The address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Require `Authorization: Bearer TOKEN` on /v1/* (default: the ENCORE_TOKEN environment
    /// variable; none when both are unset).
    #[arg(long)]
    pub token: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The request limits, shared by `serve` and `bench serve`.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// The largest `k` (and search `limit`) a request may ask for.
    #[arg(long, default_value_t = Limits::default().max_k)]
    pub max_k: usize,
    /// The most items in a posted history or `exclude` list.
    #[arg(long, default_value_t = Limits::default().max_history)]
    pub max_history: usize,
    /// The largest request body in bytes (413 above).
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// How long a request may take before it is answered with 503, in milliseconds.
    #[arg(long, default_value_t = Limits::default().timeout.as_millis() as u64)]
    pub timeout_ms: u64,
}

impl LimitArgs {
    fn limits(&self) -> Result<Limits> {
        for (name, v) in [
            ("--max-k", self.max_k as u64),
            ("--max-history", self.max_history as u64),
            ("--max-body-bytes", self.max_body_bytes as u64),
            ("--timeout-ms", self.timeout_ms),
        ] {
            if v == 0 {
                bail!("{name}: expected a positive number, got 0");
            }
        }
        Ok(Limits {
            max_k: self.max_k,
            max_history: self.max_history,
            max_body_bytes: self.max_body_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

/// `NAME=DIR` or `DIR` (named after its last folder).
fn name_and_dir(spec: &str) -> Result<(String, PathBuf)> {
    if let Some((name, dir)) = spec.split_once('=') {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if valid && !dir.is_empty() {
            return Ok((name.to_string(), PathBuf::from(dir)));
        }
    }
    let dir = PathBuf::from(spec);
    let name = dir
        .components()
        .next_back()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .with_context(|| format!("--run `{spec}`: expected DIR or NAME=DIR"))?;
    Ok((name, dir))
}

/// Load every `--run` through the binary's registry.
fn load_runs(specs: &[String]) -> Result<Vec<ServedRun>> {
    let registry = models::registry();
    specs
        .iter()
        .map(|spec| {
            let (name, dir) = name_and_dir(spec)?;
            let spinner = progress::spinner(&format!("loading {name} from {}", dir.display()));
            let t = Instant::now();
            let run = ServedRun::load(&name, &dir, &registry)
                .with_context(|| format!("--run {}", dir.display()))?;
            spinner.finish_and_clear();
            eprintln!(
                "loaded {name}: {} on {} ({} users, {} items) in {:.1} s",
                run.info.model,
                run.dataset.name,
                run.dataset.users.len(),
                run.n_items(),
                t.elapsed().as_secs_f64()
            );
            Ok(run)
        })
        .collect()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(args: ServeArgs) -> Result<()> {
    let limits = args.limits.limits()?;
    let token = args
        .token
        .or_else(|| std::env::var("ENCORE_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let addr: SocketAddr = args.addr.parse().with_context(|| {
        format!(
            "--addr `{}`: expected IP:PORT, e.g. 127.0.0.1:8080",
            args.addr
        )
    })?;
    let runs = load_runs(&args.runs)?;
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    let service = Arc::new(Service::new(runs, limits, token.clone())?);
    if !addr.ip().is_loopback() && token.is_none() {
        eprintln!(
            "warning: listening on {addr}, reachable from other machines, without a token (--token or ENCORE_TOKEN)"
        );
    }
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| encore_serve::ServeError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr()?;
        println!(
            "serving {} on http://{local}/ (page at /, API under /v1{}); Ctrl-C or SIGTERM stops",
            names.join(", "),
            if token.is_some() {
                ", token required"
            } else {
                ""
            }
        );
        encore_serve::serve(listener, service, encore_serve::shutdown_signal()).await?;
        println!("stopped");
        Ok(())
    })
}

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Examples:\n  encore bench serve --run runs/onion-multivae --clients 2 --requests 5000 --history-len 50\n  encore bench serve --run runs/ml-100k-multivae --clients 8 --requests 20000 --out serve-ml100k.json\n\nThe service runs as a child `encore serve` on 127.0.0.1 (a free port), so the resident memory\nreported is its own; nothing is sent anywhere else. The load stops after --requests requests\nor --max-seconds, whichever comes first; the service is then stopped with SIGTERM.\n--threads (global) sets the service's scoring threads."
)]
pub struct BenchServeArgs {
    /// A run directory to serve (DIR or NAME=DIR; repeatable, the first is asked).
    #[arg(long = "run", value_name = "[NAME=]DIR", required = true)]
    pub runs: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Requests in all (after the warm-up).
    #[arg(long, default_value_t = 5000)]
    pub requests: usize,
    /// Requests sent before measuring, not counted.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Items in each valid request's history (distinct, drawn from the catalogue).
    #[arg(long, default_value_t = 50)]
    pub history_len: usize,
    /// Share of malformed requests.
    #[arg(long, default_value_t = 0.1)]
    pub malformed: f64,
    /// Recommendations per request.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Seed of the requests.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub max_seconds: f64,
    /// Also write the report as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

pub fn bench(args: BenchServeArgs) -> Result<()> {
    if args.clients == 0 || args.requests == 0 || args.history_len == 0 || args.k == 0 {
        bail!("--clients, --requests, --history-len and -k: expected positive numbers");
    }
    if !(0.0..=1.0).contains(&args.malformed) {
        bail!(
            "--malformed: expected a share from 0 to 1, got {}",
            args.malformed
        );
    }
    if args.max_seconds.is_nan() || args.max_seconds <= 0.0 {
        bail!("--max-seconds: expected a positive number of seconds");
    }
    args.limits.limits()?;
    let (model, first_dir) = name_and_dir(&args.runs[0])?;
    // The catalogue in index order, as the run's split keeps it (no model needed here).
    let items_file = first_dir.join("split").join("items.txt");
    let catalogue: Vec<String> = std::fs::read_to_string(&items_file)
        .with_context(|| format!("--run {}: reading the catalogue", first_dir.display()))?
        .lines()
        .map(str::to_string)
        .collect();
    let server = ServiceProcess::start(&args)?;
    let info = format!(
        "{model} on {} items: history {} items, k {}, {} clients, {} requests, {:.0}% malformed; service pid {} on {}",
        catalogue.len(),
        args.history_len,
        args.k,
        args.clients,
        args.requests,
        args.malformed * 100.0,
        server.child.id(),
        server.base,
    );
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(&server.base, None).map_err(anyhow::Error::msg)?;
    let opts = |requests: usize, seed: u64| LoadOptions {
        clients: args.clients,
        requests,
        history_len: args.history_len,
        malformed: args.malformed,
        k: args.k,
        model: Some(model.clone()),
        seed,
        max_duration: Duration::from_secs_f64(args.max_seconds),
    };
    println!("{info}");
    if args.warmup > 0 {
        let warm = clients.block_on(encore_serve::load::run(
            &client,
            &catalogue,
            &opts(args.warmup, args.seed.wrapping_add(1)),
            Arc::new(|_| {}),
        ));
        if warm.server_errors > 0 || warm.failed > 0 {
            bail!(
                "the warm-up got {} 5xx and {} failed requests",
                warm.server_errors,
                warm.failed
            );
        }
    }
    let bar = progress::bar(args.requests as u64, "requests");
    let counter = bar.clone();
    let report = clients.block_on(encore_serve::load::run(
        &client,
        &catalogue,
        &opts(args.requests, args.seed),
        Arc::new(move |n| counter.inc(n)),
    ));
    bar.finish_and_clear();
    server.stop()?;
    print_report(&report);
    if let Some(out) = &args.out {
        encore_io::write_json(out, &serde_json::json!({"setup": info, "report": report}))?;
        println!("report written to {}", out.display());
    }
    if report.server_errors > 0 || report.unexpected > 0 || report.failed > 0 {
        bail!(
            "{} answers were 5xx, {} had another status than expected, {} failed",
            report.server_errors,
            report.unexpected,
            report.failed
        );
    }
    Ok(())
}

/// `encore serve` in a child process on a free loopback port, so that its memory and CPU are
/// its own: the load generator measures the service's resident memory alone.
struct ServiceProcess {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    base: String,
}

impl ServiceProcess {
    fn start(args: &BenchServeArgs) -> Result<ServiceProcess> {
        use std::io::BufRead;
        let l = &args.limits;
        let mut cmd = std::process::Command::new(
            std::env::current_exe().context("locating the encore binary")?,
        );
        // The service scores with this process's thread count (`--threads`, or all cores).
        cmd.args(["--threads", &rayon::current_num_threads().to_string()])
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"]);
        for run in &args.runs {
            cmd.args(["--run", run]);
        }
        cmd.args(["--max-k", &l.max_k.to_string()])
            .args(["--max-history", &l.max_history.to_string()])
            .args(["--max-body-bytes", &l.max_body_bytes.to_string()])
            .args(["--timeout-ms", &l.timeout_ms.to_string()])
            // No access log: a line per request would be part of what is measured.
            .env("RUST_LOG", "warn")
            .env_remove("ENCORE_TOKEN")
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().context("starting encore serve")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(base) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(|w| w.trim_end_matches('/').to_string())
        else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("encore serve did not start (it printed {line:?})");
        };
        Ok(ServiceProcess {
            child,
            stdout,
            base,
        })
    }

    /// SIGTERM, and the service's clean exit.
    fn stop(mut self) -> Result<()> {
        use std::io::Read;
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("kill -TERM")?;
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("encore serve exited with {status} after SIGTERM");
        }
        Ok(())
    }
}

fn print_report(r: &LoadReport) {
    println!(
        "{} requests in {:.2} s: {:.0} requests/s ({} not sent within the time limit)",
        r.requests, r.seconds, r.requests_per_second, r.not_sent
    );
    println!(
        "{:<10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency", "count", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, l) in [("valid", &r.valid), ("malformed", &r.malformed)] {
        println!(
            "{:<10} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            name, l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
    }
    let statuses: Vec<String> = r
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    println!(
        "statuses {}; 5xx: {}; unexpected statuses: {}; failed: {}",
        statuses.join(", "),
        r.server_errors,
        r.unexpected,
        r.failed
    );
    let mib = |m: Option<f64>| m.map_or("n/a".to_string(), |m| format!("{m:.1} MiB"));
    println!(
        "resident memory: {} before, {} after",
        mib(r.rss_before_mib),
        mib(r.rss_after_mib)
    );
    if let Some(b) = r.fold_ins_per_pass {
        println!("fold-ins scored together: {b:.2} per pass on average");
    }
}

//! The `encore` command line: a thin layer that parses arguments and calls the crates.

mod bench;
mod data;
mod demo;
mod evaluate;
mod experiment;
mod experiment_report;
mod features;
mod models;
mod progress;
mod recommend;
mod report;
mod serve;
mod train;
mod tune;

use clap::{Parser, Subcommand};

/// Encore: multi-modal music recommendation with VAEs and denoising diffusion.
#[derive(Parser)]
#[command(
    name = "encore",
    version,
    about,
    after_help = "Examples:\n  encore demo\n  encore data synth --preset small --seed 7 --out data/small\n  encore data import --format onion --input data/small --out data/small-prepared\n  encore train --model pop --data data/small-prepared --split ratio\n  encore evaluate --split runs/pop/split --recommendations recs.tsv --k 10,20"
)]
struct Cli {
    /// Worker threads for parallel work (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate, import, inspect and split datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Text embedding, artist-tag texts, PCA and multi-modal fusion of item features.
    #[command(subcommand)]
    Features(features::FeaturesCommand),
    /// Train a model on a dataset and split; writes a run directory.
    Train(train::TrainArgs),
    /// Evaluate a run's best model, or ranked lists made by any other system.
    Evaluate(evaluate::EvaluateArgs),
    /// Top-k recommendations for a known user or for a listening history (fold-in).
    Recommend(recommend::RecommendArgs),
    /// One table of the test metrics of several runs (text, Markdown, CSV).
    Report(report::ReportArgs),
    /// Generate the synthetic `small` world, train every model, print a results table.
    Demo(demo::DemoArgs),
    /// Measure the hot paths and print a table; `bench serve`: load-test the HTTP service.
    Bench(bench::BenchArgs),
    /// Serve trained runs over HTTP: a JSON API under /v1, health, metrics and a web page.
    Serve(serve::ServeArgs),
    /// Tune a model's hyper-parameters on the validation split (TPE); each trial is a run.
    Tune(tune::TuneArgs),
    /// The paper's tables in one command: datasets x models x presets x seeds from a TOML
    /// file, resumable, with a report (tables, paired tests, plots, cold start).
    Experiment(experiment::ExperimentArgs),
}

fn main() {
    let cli = Cli::parse();
    // Commands that print end quietly when their reader goes away (`encore ... | head`), as
    // other command-line tools do, instead of panicking on the broken pipe. Not the service
    // and its load generator: they write to sockets, where a closed peer must be an error.
    #[cfg(target_os = "linux")]
    if !matches!(cli.command, Command::Serve(_) | Command::Bench(_)) {
        // SAFETY: setting a signal's disposition to its default, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Training reuses large per-step buffers instead of page-faulting them afresh
    // (`encore_core::alloc`). Only the commands that train get this policy: it keeps the heap
    // at its peak, which an import or a long-running process must not do.
    if matches!(cli.command, Command::Train(_) | Command::Demo(_)) {
        encore_core::alloc::retain_freed_memory();
    }
    // The service logs each request (`encore_serve::access`) unless RUST_LOG says otherwise.
    let default_filter = match cli.command {
        Command::Serve(_) => "warn,encore_serve=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log redirected to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: --threads {n}: {e}");
            std::process::exit(2);
        }
    }
    let result = match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Features(cmd) => features::run(cmd),
        Command::Train(args) => train::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Recommend(args) => recommend::run(args),
        Command::Report(args) => report::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Tune(args) => tune::run(args),
        Command::Experiment(args) => experiment::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause once: the crates' I/O errors already
/// include their source in their own message, which `{:#}` would print a second time.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

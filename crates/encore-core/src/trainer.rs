//! The generic trainer (SPEC §1 "trainer", EVALUATION.md "Protocol"): epochs of
//! [`Trainable::train_epoch`], validation by full ranking, the best checkpoint by the validation
//! metric, early stopping, an atomic checkpoint every epoch that a killed run resumes from
//! exactly, a per-epoch JSON-lines log, and plots of the validation metric.
//!
//! # The run directory
//!
//! ```text
//! run_dir/
//!   model/            the best model so far (Recommender::save), replaced atomically
//!   checkpoint/       the state after the last finished epoch: the model's training state
//!                     (Trainable::save_state) and trainer.json (epoch, best, bad evaluations,
//!                     the random stream, elapsed seconds)
//!   log.jsonl         one JSON object per epoch
//!   valid_epochs.png  the validation metric against epoch
//!   valid_minutes.png the validation metric against wall-clock minutes
//! ```
//!
//! A folder is replaced atomically by writing `<name>.tmp/`, renaming the old folder to
//! `<name>.old/`, renaming the new one into place and removing the old one; a run killed
//! between the two renames finds `<name>.old/` and uses it (SPEC §8: a killed run loses at most
//! one epoch).
//!
//! # Model selection (RecBole's rules)
//!
//! The validation metric ([`TrainerConfig::valid_metric`], `ndcg@10` by default) is rounded
//! to [`TrainerConfig::metric_decimals`] decimals; an evaluation at least as good as the best
//! so far is an improvement (ties move the best checkpoint forward, as RecBole's `>=`), and
//! training stops once more than `patience` evaluations in a row were not improvements
//! (RecBole's `cur_step > stopping_step`). Validation ranks every item with the user's model
//! input excluded.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use encore_data::InteractionMatrix;
use encore_eval::{evaluate, EvalOptions, MetricReport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use encore_io::{find_dir, replace_dir, with_suffix};

use crate::config::TrainerConfig;
use crate::{EpochContext, ModelError, Trainable};

/// The matrices a model is trained and validated on (all users x items, same shape).
pub struct TrainData<'a> {
    /// What the model learns from.
    pub train: &'a InteractionMatrix,
    /// The model's input rows when scoring for validation (training items, or fold-in items
    /// of held-out users); excluded from the ranking.
    pub input: &'a InteractionMatrix,
    /// Validation targets.
    pub valid: &'a InteractionMatrix,
}

/// [`crate::ModelScorer`] for a `&dyn Trainable` (without relying on trait upcasting, which
/// needs a newer compiler than the workspace's `rust-version`).
struct TrainableScorer<'a> {
    model: &'a dyn Trainable,
    input: &'a InteractionMatrix,
}

impl encore_eval::Scorer for TrainableScorer<'_> {
    fn n_items(&self) -> usize {
        self.model.n_items()
    }

    fn score_batch(&self, users: &[u32], out: &mut [f32]) {
        self.model.score_users(users, self.input, out)
    }
}

/// What a training run ended with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// 0-based epoch of the best validation result (`None` if no evaluation ran).
    pub best_epoch: Option<usize>,
    /// The best validation report.
    pub best_valid: Option<MetricReport>,
    /// Epochs trained in total (across resumes).
    pub epochs_run: usize,
    /// Wall-clock seconds in total (across resumes).
    pub seconds: f64,
    /// Whether early stopping ended the run before `epochs`.
    pub stopped_early: bool,
}

/// The trainer's part of a checkpoint (`checkpoint/trainer.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    /// The next epoch to run (0-based).
    next_epoch: usize,
    /// The best rounded validation metric.
    best_score: Option<f64>,
    best_epoch: Option<usize>,
    best_valid: Option<MetricReport>,
    /// Evaluations since the last improvement.
    bad_evals: usize,
    /// The random stream, as it was after the last finished epoch.
    rng: ChaCha8Rng,
    /// Wall-clock seconds spent in earlier sessions of this run.
    elapsed_seconds: f64,
    /// Training is over (early stop or last epoch).
    finished: bool,
    stopped_early: bool,
    /// The trainer configuration of the run (resuming under another is refused, except for
    /// a changed `epochs`).
    config: TrainerConfig,
}

/// One line of `log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    /// 0-based epoch.
    pub epoch: usize,
    /// Wall-clock seconds since the run started (across resumes), at the end of the epoch.
    pub wall_seconds: f64,
    /// Seconds of training in this epoch.
    pub epoch_seconds: f64,
    /// Seconds of validation in this epoch (0 when not evaluated).
    pub eval_seconds: f64,
    /// The named loss parts returned by the model.
    pub train: BTreeMap<String, f64>,
    /// Validation metrics, when evaluated this epoch.
    pub valid: Option<BTreeMap<String, f64>>,
    /// Whether this epoch's model became the best so far.
    pub best: bool,
}

/// Train `model` on `data` under `cfg`, writing the run into `run_dir` (see the module
/// documentation). With `resume`, continue from `run_dir/checkpoint` when there is one (a
/// finished run returns its outcome at once, unless `cfg.epochs` grew); without it, start
/// afresh and overwrite the log and checkpoint of an earlier run in the same folder.
pub fn train(
    model: &mut dyn Trainable,
    data: &TrainData,
    cfg: &TrainerConfig,
    run_dir: &Path,
    resume: bool,
) -> Result<TrainOutcome, ModelError> {
    cfg.check()?;
    for (name, m) in [("input", data.input), ("valid", data.valid)] {
        if m.n_items() != data.train.n_items() || m.n_users() != data.train.n_users() {
            return Err(ModelError::Input(format!(
                "the {name} matrix is {}x{}, the training matrix {}x{}",
                m.n_users(),
                m.n_items(),
                data.train.n_users(),
                data.train.n_items()
            )));
        }
    }
    if model.n_items() != data.train.n_items() {
        return Err(ModelError::Input(format!(
            "the model has {} items, the training matrix {}",
            model.n_items(),
            data.train.n_items()
        )));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| ModelError::io(run_dir, e))?;
    let log_path = run_dir.join("log.jsonl");
    let checkpoint = run_dir.join("checkpoint");

    let mut state = match find_dir(&checkpoint).filter(|_| resume) {
        Some(dir) => {
            let mut state = read_state(&dir.join("trainer.json"))?;
            // Only `epochs` may change on resume (to train a finished run further).
            let same = TrainerConfig {
                epochs: cfg.epochs,
                ..state.config.clone()
            };
            if same != *cfg {
                return Err(ModelError::config(
                    "train",
                    format!(
                        "the checkpoint in {} was made under another trainer configuration",
                        dir.display()
                    ),
                ));
            }
            if !state.stopped_early {
                state.finished = state.next_epoch >= cfg.epochs;
            }
            state.config = cfg.clone();
            model.load_state(&dir.join("model"))?;
            tracing::info!(epoch = state.next_epoch, "resuming from {}", dir.display());
            state
        }
        None => TrainerState {
            next_epoch: 0,
            best_score: None,
            best_epoch: None,
            best_valid: None,
            bad_evals: 0,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            elapsed_seconds: 0.0,
            finished: false,
            stopped_early: false,
            config: cfg.clone(),
        },
    };
    // The log keeps exactly the epochs the checkpoint has seen.
    let mut history = read_log(&log_path)?;
    history.retain(|l| l.epoch < state.next_epoch);
    write_log(&log_path, &history)?;

    let started = Instant::now();
    let opts = EvalOptions {
        ks: cfg.ks.clone(),
        batch_size: cfg.eval_batch_size,
        keep_per_user: false,
    };
    let tty = std::io::stderr().is_terminal();
    // When the plots were last drawn (this process).
    let mut plotted: Option<Instant> = None;
    while !state.finished && state.next_epoch < cfg.epochs {
        let epoch = state.next_epoch;
        let bar = ProgressBar::with_draw_target(
            None,
            if tty {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template("epoch {msg} {spinner} {pos} examples {per_sec}")
                .expect("valid template"),
        );
        bar.set_message(format!("{}/{}", epoch + 1, cfg.epochs));
        let t0 = Instant::now();
        let progress = |n: u64| bar.inc(n);
        let losses = model.train_epoch(EpochContext {
            train: data.train,
            epoch,
            rng: &mut state.rng,
            progress: &progress,
        })?;
        bar.finish_and_clear();
        let epoch_seconds = t0.elapsed().as_secs_f64();
        if let Some((k, v)) = losses.iter().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::Input(format!(
                "training diverged at epoch {epoch}: loss part `{k}` is {v}"
            )));
        }

        let evaluate_now = (epoch + 1) % cfg.eval_every == 0 || epoch + 1 == cfg.epochs;
        let mut valid = None;
        let mut eval_seconds = 0.0;
        let mut best = false;
        if evaluate_now {
            let t1 = Instant::now();
            let scorer = TrainableScorer {
                model: &*model,
                input: data.input,
            };
            let report = evaluate(&scorer, &[data.input], data.valid, &opts);
            eval_seconds = t1.elapsed().as_secs_f64();
            let value = report.get(&cfg.valid_metric).ok_or_else(|| {
                ModelError::config(
                    "train.valid_metric",
                    format!("the evaluator did not report `{}`", cfg.valid_metric),
                )
            })?;
            let score = cfg.round_metric(value);
            if state.best_score.is_none_or(|b| score >= b) {
                best = true;
                state.best_score = Some(score);
                state.best_epoch = Some(epoch);
                state.best_valid = Some(report.clone());
                state.bad_evals = 0;
                replace_dir(&run_dir.join("model"), |dir| model.save(dir))?;
            } else {
                state.bad_evals += 1;
                if cfg.patience > 0 && state.bad_evals > cfg.patience {
                    state.stopped_early = true;
                    state.finished = true;
                }
            }
            tracing::info!(
                epoch,
                metric = %cfg.valid_metric,
                value,
                best = state.best_score.unwrap_or(f64::NAN),
                "validation"
            );
            valid = Some(report.metrics);
        }
        state.next_epoch = epoch + 1;
        if state.next_epoch >= cfg.epochs {
            state.finished = true;
        }
        let wall_seconds = state.elapsed_seconds + started.elapsed().as_secs_f64();
        let line = EpochLog {
            epoch,
            wall_seconds,
            epoch_seconds,
            eval_seconds,
            train: losses,
            valid,
            best,
        };
        append_log(&log_path, &line)?;
        history.push(line);

        let saved = TrainerState {
            elapsed_seconds: wall_seconds,
            ..state.clone()
        };
        replace_dir(&checkpoint, |dir| -> Result<(), ModelError> {
            let model_dir = dir.join("model");
            std::fs::create_dir_all(&model_dir).map_err(|e| ModelError::io(&model_dir, e))?;
            model.save_state(&model_dir)?;
            Ok(encore_io::write_bytes(
                &dir.join("trainer.json"),
                serde_json::to_string(&saved)
                    .expect("trainer state serialises")
                    .as_bytes(),
            )?)
        })?;
        // Redrawn after an evaluation at most every PLOT_INTERVAL, and when the run ends:
        // drawing both takes about 5 ms, a sixth of the time of a MultiVAE epoch on ml-100k.
        if evaluate_now && (state.finished || plotted.is_none_or(|t| t.elapsed() >= PLOT_INTERVAL))
        {
            plotted = Some(Instant::now());
            // Plots are a convenience: a failure to draw one is reported, not fatal.
            if let Err(e) = plot_history(run_dir, &history, &cfg.valid_metric) {
                tracing::warn!("could not draw the validation plots: {e}");
            }
        }
    }
    let seconds = history
        .last()
        .map(|l| l.wall_seconds)
        .unwrap_or(state.elapsed_seconds);
    Ok(TrainOutcome {
        best_epoch: state.best_epoch,
        best_valid: state.best_valid,
        epochs_run: state.next_epoch,
        seconds,
        stopped_early: state.stopped_early,
    })
}

/// The shortest time between two drawings of the validation plots during a run.
const PLOT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

fn read_state(path: &Path) -> Result<TrainerState, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        ModelError::format(
            path,
            format!(
                "line {}, column {}: not a trainer state: {e}",
                e.line(),
                e.column()
            ),
        )
    })
}

/// Read `log.jsonl` (missing: empty).
pub fn read_log(path: &Path) -> Result<Vec<EpochLog>, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ModelError::io(path, e)),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<EpochLog>(line) {
            Ok(l) => out.push(l),
            // A line cut short by a kill mid-write is the last one: drop it.
            Err(_) if n + 1 == text.lines().count() => break,
            Err(e) => {
                return Err(ModelError::format(
                    path,
                    format!("line {}, column {}: {e}", n + 1, e.column()),
                ))
            }
        }
    }
    Ok(out)
}

fn write_log(path: &Path, lines: &[EpochLog]) -> Result<(), ModelError> {
    let mut text = String::new();
    for l in lines {
        text.push_str(&serde_json::to_string(l).expect("log line serialises"));
        text.push('\n');
    }
    Ok(encore_io::write_bytes(path, text.as_bytes())?)
}

fn append_log(path: &Path, line: &EpochLog) -> Result<(), ModelError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ModelError::io(path, e))?;
    let mut text = serde_json::to_string(line).expect("log line serialises");
    text.push('\n');
    f.write_all(text.as_bytes())
        .map_err(|e| ModelError::io(path, e))
}

/// Draw the validation metric against epoch (`valid_epochs.png`) and against wall-clock
/// minutes (`valid_minutes.png`).
///
/// The text is set in DejaVu Sans, embedded from the `dejavu` crate ([`register_font`]).
pub fn plot_history(run_dir: &Path, history: &[EpochLog], metric: &str) -> Result<(), String> {
    let points = curve_points(history, metric);
    if points.is_empty() {
        return Ok(());
    }
    let epochs: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.2)).collect();
    let minutes: Vec<(f64, f64)> = points.iter().map(|p| (p.1, p.2)).collect();
    let y = format!("valid {metric}");
    draw_line_plot(
        &run_dir.join("valid_epochs.png"),
        &epochs,
        &format!("Validation {metric} by epoch"),
        "epoch",
        &y,
    )?;
    draw_line_plot(
        &run_dir.join("valid_minutes.png"),
        &minutes,
        &format!("Validation {metric} by wall-clock time"),
        "minutes since the start",
        &y,
    )
}

/// `(epoch from 1, minutes since the start, validation metric)` of every validated epoch.
fn curve_points(log: &[EpochLog], metric: &str) -> Vec<(f64, f64, f64)> {
    log.iter()
        .filter_map(|l| {
            let v = l.valid.as_ref()?.get(metric)?;
            Some(((l.epoch + 1) as f64, l.wall_seconds / 60.0, *v))
        })
        .collect()
}

/// Register the embedded DejaVu Sans (from the `dejavu` crate, so nothing is read from the
/// system or downloaded) as plotters' sans-serif font, once per process.
fn register_font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                dejavu::sans::regular(),
            )
            .map_err(|_| "the embedded DejaVu Sans font could not be loaded".to_string())
        })
        .clone()
}

fn draw_line_plot(
    path: &Path,
    points: &[(f64, f64)],
    caption: &str,
    x_label: &str,
    y_label: &str,
) -> Result<(), String> {
    draw_lines(
        path,
        &[(String::new(), points.to_vec())],
        caption,
        x_label,
        y_label,
    )
}

/// One line per series (with markers), a legend when there are several; written through
/// `encore_io` (a temporary file, synced and renamed).
fn draw_lines(
    path: &Path,
    series: &[(String, Vec<(f64, f64)>)],
    caption: &str,
    x_label: &str,
    y_label: &str,
) -> Result<(), String> {
    use plotters::prelude::*;
    register_font()?;
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in series.iter().flat_map(|s| &s.1) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let tmp = with_suffix(path, ".tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .y_label_formatter(&|v| format!("{v:.4}"))
            .x_label_formatter(&|v| {
                // Epochs are whole numbers; minutes keep two decimals.
                if x_label == "epoch" {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            })
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = if series.len() == 1 {
                BLUE
            } else {
                let (r, g, b) = Palette99::pick(i).rgb();
                RGBColor(r, g, b)
            };
            let line = chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            if series.len() > 1 {
                line.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 15))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    encore_io::install_file(&tmp, path).map_err(|e| e.to_string())
}

/// A bar chart with error bars (an experiment table, the paper's Figure 6): one bar per
/// `(label, mean, std)`, its whisker `mean ± std`, the mean written above it; written through
/// `encore_io` (a temporary file, synced and renamed). Bars with a non-finite mean are drawn
/// empty and labelled "n/a".
pub fn plot_bars(
    path: &Path,
    caption: &str,
    y_label: &str,
    bars: &[(String, f64, f64)],
) -> Result<(), String> {
    use plotters::prelude::*;
    register_font()?;
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let top = bars
        .iter()
        .map(|b| finite(b.1) + finite(b.2))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let n = bars.len().max(1);
    let width = (160 + 110 * n).clamp(720, 1600) as u32;
    let tmp = with_suffix(path, ".tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (width, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(64)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..n as f64, 0f64..top)
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                let centre = (x - x.floor() - 0.5).abs() < 1e-6;
                match labels.get(i) {
                    Some(l) if centre => l.clone(),
                    _ => String::new(),
                }
            })
            .y_desc(y_label)
            .y_label_formatter(&|v| format!("{v:.3}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (_, mean, std)) in bars.iter().enumerate() {
            let (r, g, b) = Palette99::pick(i).rgb();
            let color = RGBColor(r, g, b);
            let x0 = i as f64 + 0.15;
            let x1 = i as f64 + 0.85;
            let xc = i as f64 + 0.5;
            let m = finite(*mean);
            let style = if mean.is_finite() {
                color.mix(0.75).filled()
            } else {
                color.stroke_width(1)
            };
            chart
                .draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x1, m)], style)))
                .map_err(|e| e.to_string())?;
            if mean.is_finite() && std.is_finite() && *std > 0.0 {
                let whisker = [
                    vec![(xc, m - std), (xc, m + std)],
                    vec![(xc - 0.12, m - std), (xc + 0.12, m - std)],
                    vec![(xc - 0.12, m + std), (xc + 0.12, m + std)],
                ];
                chart
                    .draw_series(
                        whisker
                            .into_iter()
                            .map(|p| PathElement::new(p, BLACK.stroke_width(2))),
                    )
                    .map_err(|e| e.to_string())?;
            }
            let text = if mean.is_finite() {
                format!("{m:.4}")
            } else {
                "n/a".into()
            };
            let y = m + if std.is_finite() { *std } else { 0.0 } + top * 0.06;
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (x0, y),
                    ("sans-serif", 14).into_font(),
                )))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    encore_io::install_file(&tmp, path).map_err(|e| e.to_string())
}

/// Learning curves of several runs on one chart each (the paper's Figures 7-8): the
/// validation `metric` against epoch (`{stem}-epochs.png`) and against wall-clock minutes
/// (`{stem}-minutes.png`) in `out_dir`, one line per run. Runs without a validated epoch are
/// left out; returns the files written (none when no run has a point).
pub fn plot_curves(
    out_dir: &Path,
    stem: &str,
    runs: &[(String, Vec<EpochLog>)],
    metric: &str,
) -> Result<Vec<std::path::PathBuf>, String> {
    let mut by_epoch = Vec::new();
    let mut by_minute = Vec::new();
    for (label, log) in runs {
        let points = curve_points(log, metric);
        if points.is_empty() {
            continue;
        }
        by_epoch.push((label.clone(), points.iter().map(|p| (p.0, p.2)).collect()));
        by_minute.push((label.clone(), points.iter().map(|p| (p.1, p.2)).collect()));
    }
    if by_epoch.is_empty() {
        return Ok(Vec::new());
    }
    let y = format!("valid {metric}");
    let epochs = out_dir.join(format!("{stem}-epochs.png"));
    let minutes = out_dir.join(format!("{stem}-minutes.png"));
    draw_lines(
        &epochs,
        &by_epoch,
        &format!("{stem}: validation {metric} by epoch"),
        "epoch",
        &y,
    )?;
    draw_lines(
        &minutes,
        &by_minute,
        &format!("{stem}: validation {metric} by wall-clock time"),
        "minutes since the start",
        &y,
    )?;
    Ok(vec![epochs, minutes])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Recommender;
    use rand::Rng;

    /// A small model whose training depends on the random stream: item scores are the
    /// training popularity plus noise that shrinks every epoch (so validation improves, then
    /// plateaus). It can fail at a given epoch to simulate a killed run.
    #[derive(Clone)]
    struct Noisy {
        scores: Vec<f32>,
        epochs_seen: u32,
        fail_at: Option<usize>,
    }

    impl Recommender for Noisy {
        fn name(&self) -> &'static str {
            "noisy"
        }
        fn n_items(&self) -> usize {
            self.scores.len()
        }
        fn score_users(&self, users: &[u32], _input: &InteractionMatrix, out: &mut [f32]) {
            for row in out.chunks_mut(self.scores.len()).take(users.len()) {
                row.copy_from_slice(&self.scores);
            }
        }
        fn score_history(&self, _h: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
            out.copy_from_slice(&self.scores);
            Ok(())
        }
        fn save(&self, dir: &Path) -> Result<(), ModelError> {
            Ok(encore_io::write_bytes(
                &dir.join("scores.json"),
                serde_json::to_string(&(&self.scores, self.epochs_seen))
                    .unwrap()
                    .as_bytes(),
            )?)
        }
    }

    impl Trainable for Noisy {
        fn train_epoch(
            &mut self,
            ctx: EpochContext<'_>,
        ) -> Result<BTreeMap<String, f64>, ModelError> {
            if self.fail_at == Some(ctx.epoch) {
                return Err(ModelError::Input("killed".into()));
            }
            self.epochs_seen += 1;
            let counts = ctx.train.item_counts();
            let noise = 20.0 / self.epochs_seen as f32;
            for (s, &c) in self.scores.iter_mut().zip(&counts) {
                *s = c as f32 + noise * ctx.rng.random::<f32>();
            }
            (ctx.progress)(ctx.train.n_users() as u64);
            Ok(BTreeMap::from([("loss".to_string(), noise as f64)]))
        }
        fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
            self.save(dir)
        }
        fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
            let p = dir.join("scores.json");
            let (scores, seen): (Vec<f32>, u32) =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            self.scores = scores;
            self.epochs_seen = seen;
            Ok(())
        }
    }

    fn data() -> (InteractionMatrix, InteractionMatrix) {
        // 40 users, 30 items; popularity decreasing with the item index, validation items
        // drawn from the same popularity.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut train = Vec::new();
        let mut valid = Vec::new();
        for _ in 0..40 {
            let mut t = Vec::new();
            let mut v = Vec::new();
            for i in 0..30u32 {
                let p = 0.9 / (1.0 + i as f64 / 3.0);
                if rng.random::<f64>() < p {
                    if rng.random::<f64>() < 0.8 {
                        t.push(i)
                    } else {
                        v.push(i)
                    }
                }
            }
            train.push(t);
            valid.push(v);
        }
        (
            InteractionMatrix::from_rows(30, &train),
            InteractionMatrix::from_rows(30, &valid),
        )
    }

    fn cfg(epochs: usize, patience: usize) -> TrainerConfig {
        TrainerConfig {
            epochs,
            patience,
            ks: vec![5, 10],
            seed: 11,
            ..TrainerConfig::default()
        }
    }

    fn model() -> Noisy {
        Noisy {
            scores: vec![0.0; 30],
            epochs_seen: 0,
            fail_at: None,
        }
    }

    #[test]
    fn runs_logs_checkpoints_and_plots() {
        let (train, valid) = data();
        let d = TrainData {
            train: &train,
            input: &train,
            valid: &valid,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut m = model();
        let out = train_fn(&mut m, &d, &cfg(6, 10), dir.path(), false).unwrap();
        assert_eq!(out.epochs_run, 6);
        assert!(!out.stopped_early);
        let log = read_log(&dir.path().join("log.jsonl")).unwrap();
        assert_eq!(log.len(), 6);
        assert!(log
            .iter()
            .all(|l| l.valid.as_ref().unwrap().contains_key("ndcg@10")));
        assert!(log
            .windows(2)
            .all(|w| w[1].wall_seconds >= w[0].wall_seconds));
        let best = out.best_epoch.unwrap();
        assert!(log[best].best);
        for name in [
            "model/scores.json",
            "checkpoint/trainer.json",
            "checkpoint/model/scores.json",
            "valid_epochs.png",
            "valid_minutes.png",
        ] {
            assert!(dir.path().join(name).is_file(), "{name}");
        }
        assert!(!dir.path().join("checkpoint.tmp").exists());
        // The best model folder holds the scores of the best epoch: its validation ndcg@10
        // equals the reported best.
        let (scores, _): (Vec<f32>, u32) = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("model/scores.json")).unwrap(),
        )
        .unwrap();
        let best_model = Noisy { scores, ..model() };
        let r = evaluate(
            &TrainableScorer {
                model: &best_model,
                input: &train,
            },
            &[&train],
            &valid,
            &EvalOptions {
                ks: vec![5, 10],
                batch_size: 7,
                keep_per_user: false,
            },
        );
        assert_eq!(r.metrics, out.best_valid.unwrap().metrics);
    }

    use super::train as train_fn;

    /// Train 8 epochs straight, versus a run killed at epoch 5 and resumed: identical log
    /// (apart from timings), best epoch and best metrics.
    #[test]
    fn killed_and_resumed_equals_straight() {
        let (train, valid) = data();
        let d = TrainData {
            train: &train,
            input: &train,
            valid: &valid,
        };
        let c = cfg(8, 10);
        let a = tempfile::tempdir().unwrap();
        let straight = train_fn(&mut model(), &d, &c, a.path(), false).unwrap();

        let b = tempfile::tempdir().unwrap();
        let mut killed = Noisy {
            fail_at: Some(5),
            ..model()
        };
        assert!(train_fn(&mut killed, &d, &c, b.path(), false).is_err());
        // Everything in memory is dropped; a fresh model resumes from disk.
        let resumed = train_fn(&mut model(), &d, &c, b.path(), true).unwrap();
        assert_eq!(resumed.epochs_run, 8);
        assert_eq!(resumed.best_epoch, straight.best_epoch);
        assert_eq!(
            resumed.best_valid.unwrap().metrics,
            straight.best_valid.unwrap().metrics
        );
        let la = read_log(&a.path().join("log.jsonl")).unwrap();
        let lb = read_log(&b.path().join("log.jsonl")).unwrap();
        assert_eq!(la.len(), lb.len());
        for (x, y) in la.iter().zip(&lb) {
            assert_eq!(
                (x.epoch, &x.train, &x.valid, x.best),
                (y.epoch, &y.train, &y.valid, y.best)
            );
        }
        // Resuming a finished run returns at once; growing `epochs` continues it.
        let again = train_fn(&mut model(), &d, &c, b.path(), true).unwrap();
        assert_eq!(again.epochs_run, 8);
        let more = train_fn(&mut model(), &d, &cfg(9, 10), b.path(), true).unwrap();
        assert_eq!(more.epochs_run, 9);
        // Another trainer configuration is refused.
        let e = train_fn(&mut model(), &d, &cfg(9, 3), b.path(), true).unwrap_err();
        assert!(matches!(e, ModelError::Config { .. }), "{e}");
    }

    /// RecBole's early stopping: once the model stops changing, every evaluation ties the
    /// best (an improvement under `>=`); with a model that gets worse, the run stops after
    /// `patience + 1` evaluations without improvement.
    #[test]
    fn early_stopping_counts_like_recbole() {
        #[derive(Clone)]
        struct Worse(Noisy);
        impl Recommender for Worse {
            fn name(&self) -> &'static str {
                "worse"
            }
            fn n_items(&self) -> usize {
                self.0.n_items()
            }
            fn score_users(&self, u: &[u32], i: &InteractionMatrix, o: &mut [f32]) {
                self.0.score_users(u, i, o)
            }
            fn score_history(&self, h: &[u32], o: &mut [f32]) -> Result<(), ModelError> {
                self.0.score_history(h, o)
            }
            fn save(&self, d: &Path) -> Result<(), ModelError> {
                self.0.save(d)
            }
        }
        impl Trainable for Worse {
            fn train_epoch(
                &mut self,
                ctx: EpochContext<'_>,
            ) -> Result<BTreeMap<String, f64>, ModelError> {
                // Popularity first, then reversed popularity: strictly worse from epoch 1 on.
                let counts = ctx.train.item_counts();
                let sign = if ctx.epoch == 0 { 1.0 } else { -1.0 };
                for (s, &c) in self.0.scores.iter_mut().zip(&counts) {
                    *s = sign * c as f32 - ctx.epoch as f32 * 1e-3 * sign;
                }
                Ok(BTreeMap::from([("loss".to_string(), 0.0)]))
            }
            fn save_state(&self, d: &Path) -> Result<(), ModelError> {
                self.0.save_state(d)
            }
            fn load_state(&mut self, d: &Path) -> Result<(), ModelError> {
                self.0.load_state(d)
            }
        }
        let (train, valid) = data();
        let d = TrainData {
            train: &train,
            input: &train,
            valid: &valid,
        };
        let dir = tempfile::tempdir().unwrap();
        let out = train_fn(&mut Worse(model()), &d, &cfg(50, 3), dir.path(), false).unwrap();
        assert!(out.stopped_early);
        assert_eq!(out.best_epoch, Some(0));
        // Epoch 0 best, epochs 1..=4 bad: the 4th bad evaluation exceeds patience 3.
        assert_eq!(out.epochs_run, 5);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let (train, valid) = data();
        let small = InteractionMatrix::from_rows(30, &[vec![1u32]]);
        let d = TrainData {
            train: &train,
            input: &train,
            valid: &small,
        };
        let dir = tempfile::tempdir().unwrap();
        let e = train_fn(&mut model(), &d, &cfg(2, 1), dir.path(), false).unwrap_err();
        assert!(e.to_string().contains("valid"), "{e}");
        let _ = valid;
    }
}

//! `trials.png`: the objective of each trial as a point, the best so far as a line, failed
//! trials as red crosses along the bottom. Set in DejaVu Sans embedded from the `dejavu` crate
//! (nothing read from the system), written through `encore_io` (temporary file, synced,
//! renamed), like the trainer's validation plots.

use std::path::Path;

use plotters::prelude::*;

use crate::study::TrialRecord;
use crate::TuneError;

/// Draw the trials of a tune for `metric` into `path`. Nothing is drawn before a trial ends.
pub fn draw_trials(path: &Path, trials: &[TrialRecord], metric: &str) -> Result<(), TuneError> {
    if trials.is_empty() {
        return Ok(());
    }
    draw(path, trials, metric).map_err(|message| TuneError::Plot {
        path: path.to_path_buf(),
        message,
    })
}

/// The running best after each finished trial: `(trial, best value so far)`.
fn running_best(trials: &[TrialRecord]) -> Vec<(f64, f64)> {
    let mut best = f64::NEG_INFINITY;
    let mut line = Vec::new();
    for t in trials {
        if let Some(v) = t.value.filter(|v| v.is_finite()) {
            best = best.max(v);
        }
        if best.is_finite() {
            line.push((t.trial as f64, best));
        }
    }
    line
}

fn register_font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font could not be loaded".to_string())
        })
        .clone()
}

fn draw(path: &Path, trials: &[TrialRecord], metric: &str) -> Result<(), String> {
    register_font()?;
    let points: Vec<(f64, f64)> = trials
        .iter()
        .filter_map(|t| Some((t.trial as f64, t.value.filter(|v| v.is_finite())?)))
        .collect();
    let failed: Vec<f64> = trials
        .iter()
        .filter(|t| !t.value.is_some_and(f64::is_finite))
        .map(|t| t.trial as f64)
        .collect();
    let best = running_best(trials);
    let (mut y0, mut y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if points.is_empty() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let last = trials.last().map_or(0, |t| t.trial) as f64;
    let (x0, x1) = (-0.5, last.max(1.0) + 0.5);

    let tmp = encore_io::with_suffix(path, ".tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Tuning: validation {metric} per trial"),
                ("sans-serif", 24),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("trial")
            .y_desc(format!("valid {metric}"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.4}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        let best_color = RGBColor(230, 120, 20);
        // A step: the best so far holds until a trial beats it.
        let steps = best.iter().enumerate().flat_map(|(i, &(x, y))| {
            let before = (i > 0 && best[i - 1].1 != y).then(|| (x, best[i - 1].1));
            before.into_iter().chain([(x, y)])
        });
        chart
            .draw_series(LineSeries::new(steps, best_color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("best so far")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], best_color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
            .map_err(|e| e.to_string())?
            .label("trial")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.filled()));
        if !failed.is_empty() {
            let y = y0 + pad * 0.5;
            chart
                .draw_series(
                    failed
                        .iter()
                        .map(|&x| Cross::new((x, y), 5, RED.stroke_width(2))),
                )
                .map_err(|e| e.to_string())?
                .label("failed trial")
                .legend(|(x, y)| Cross::new((x + 10, y), 5, RED.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    encore_io::install_file(&tmp, path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::study::Study;

    fn trial(trial: usize, value: Option<f64>) -> TrialRecord {
        TrialRecord {
            trial,
            params: Default::default(),
            value,
            error: None,
            seconds: 1.0,
            run_dir: Study::trial_run_dir(trial),
        }
    }

    #[test]
    fn the_running_best_only_rises_and_skips_failures() {
        let trials = [
            trial(0, None),
            trial(1, Some(0.2)),
            trial(2, Some(0.1)),
            trial(3, None),
            trial(4, Some(0.3)),
        ];
        assert_eq!(
            running_best(&trials),
            [(1.0, 0.2), (2.0, 0.2), (3.0, 0.2), (4.0, 0.3)]
        );
    }

    #[test]
    fn draws_a_png() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("trials.png");
        let trials: Vec<TrialRecord> = (0..12)
            .map(|i| trial(i, (i != 5).then(|| 0.1 + 0.02 * ((i * 7) % 5) as f64)))
            .collect();
        draw_trials(&path, &trials, "ndcg@10").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let files: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temporary file left behind");
    }
}

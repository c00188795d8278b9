//! `encore experiment`: a small experiment file on the tiny synthetic world runs every table,
//! writes the report (tables, paired tests, CSV, plots, cold start), reuses finished runs,
//! goes on past a failed run, continues after a kill, and refuses a bad file before running.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{encore, fails, ok, s, tiny_data};

/// An experiment file in `tmp` over the tiny world in `data` (with its feature tables in
/// `world`); `extra_rows` is added to the first table.
fn write_file(tmp: &Path, data: &Path, lyrics: &Path, extra_rows: &str) -> PathBuf {
    let file = tmp.join("exp.toml");
    let text = format!(
        r#"seeds = [1, 2]
ks = [5, 10]
metric = "ndcg@10"
tune_trials = 2

[set]
"train.epochs" = 3

[datasets.tiny]
data = "{data}"
split = "ratio"
lyrics = "{lyrics}"

[datasets.tiny-users]
synth = {{ preset = "tiny", seed = 5 }}
split = "users"

[[tables]]
id = "main"
title = "Baselines and a VAE"
datasets = ["tiny"]
baseline = "Pop"
curves = true
cold_start = true
valid_at = [3]
rows = [
  {{ label = "Pop", model = "pop" }},
  {{ label = "EASE", model = "ease" }},
  {{ label = "MultiVAE", model = "multivae", set = {{ latent_dim = 16, hidden_dims = [32] }}, baseline = "EASE" }},
  {{ label = "MultiVAE-C (audio)", model = "multivae", set = {{ conditioning = "audio" }} }},
  {{ label = "EASE (tuned)", model = "ease", tuned = true }},
{extra_rows}]

[[tables]]
id = "cold"
title = "New listeners"
datasets = ["tiny-users"]
baseline = "Pop"
cold_start = true
rows = [
  {{ label = "Pop", model = "pop" }},
  {{ label = "EASE", model = "ease" }},
]
"#,
        data = data.display(),
        lyrics = lyrics.display(),
    );
    std::fs::write(&file, text).unwrap();
    file
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The finished runs' metrics, by run directory.
fn all_metrics(out: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for ds in std::fs::read_dir(out.join("runs")).unwrap() {
        for run in std::fs::read_dir(ds.unwrap().path()).unwrap() {
            let run = run.unwrap().path();
            let m = run.join("metrics.json");
            if m.exists() {
                let v: serde_json::Value = serde_json::from_str(&read(&m)).unwrap();
                found.push((
                    run.file_name().unwrap().to_string_lossy().into_owned(),
                    format!("{} {}", v["valid"], v["test"]),
                ));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn an_experiment_runs_every_table_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 5);
    let lyrics = tmp.path().join("world").join("id_lyrics_bert.tsv");
    let file = write_file(tmp.path(), &data, &lyrics, "");
    let out = tmp.path().join("out");

    let plan = ok(&["experiment", s(&file), "--out", s(&out), "--dry-run"]);
    // 4 runnable rows x 2 seeds on `tiny` (one tuned), 2 x 2 on `tiny-users`; the audio row
    // is noted.
    assert!(plan.contains("12 runs (0 finished), 1 tunings"), "{plan}");
    assert!(plan.contains("no audio features"), "{plan}");
    assert!(!out.exists(), "a dry run writes nothing");

    let stdout = ok(&[
        "--threads",
        "2",
        "experiment",
        s(&file),
        "--out",
        s(&out),
        "--parallel",
        "2",
    ]);
    assert!(
        stdout.contains("2 run(s) at once, 1 thread(s) each"),
        "{stdout}"
    );
    assert!(stdout.contains("12 of 12 runs finished"), "{stdout}");
    // Without a terminal, one line per finished job (runs and the tuning) instead of the bar.
    assert_eq!(stdout.matches(" done in ").count(), 13, "{stdout}");
    assert!(stdout.contains("[13/13] "), "{stdout}");
    assert!(
        stdout.contains("tune EASE (tuned) on tiny done in"),
        "{stdout}"
    );
    let tuned = std::fs::read_dir(out.join("tune"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(tuned.join("best.toml").exists() && tuned.join("trials.png").exists());
    assert!(
        stdout.contains("bookkeeping (plan, report, plots)"),
        "{stdout}"
    );
    let report = read(&out.join("report/report.md"));
    for needle in [
        "## Baselines and a VAE — tiny (ratio split)",
        "| MultiVAE | 2/2 |",
        "| Pop | 2/2 |",
        "(baseline)",
        "vs its baseline: ΔNDCG@10 [95% CI]",
        "valid NDCG@10 @ epoch 3",
        "MultiVAE-C (audio): tiny has no audio features, which `audio` conditioning needs",
        "### Cold start: Baselines and a VAE",
        "### Cold start: New listeners",
        "new listener, 1 item",
        "main-tiny-curves-epochs.png",
    ] {
        assert!(
            report.contains(needle),
            "report.md lacks {needle:?}:\n{report}"
        );
    }
    // EASE against the table's baseline, MultiVAE against its own: a p-value in both test
    // columns (n = 2 seeds x the test users).
    let ease = report.lines().find(|l| l.starts_with("| EASE |")).unwrap();
    assert!(
        ease.contains("vs Pop: ") && ease.contains("(n = "),
        "{ease}"
    );
    let mv = report
        .lines()
        .find(|l| l.starts_with("| MultiVAE |"))
        .unwrap();
    assert!(mv.contains("vs EASE: "), "{mv}");
    assert!(
        ease.matches(" | 0.").count() + ease.matches("e-").count() >= 2,
        "{ease}"
    );
    // The synthetic world was generated and imported into the experiment's folder.
    assert!(out.join("world/tiny-users/id_ivec512.tsv").exists());
    assert!(out.join("data/tiny-users").is_dir());
    for png in [
        "main-tiny.png",
        "cold-tiny-users.png",
        "main-tiny-curves-minutes.png",
    ] {
        let bytes = std::fs::read(out.join("report").join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    let csv = read(&out.join("report/results.csv"));
    assert_eq!(csv.lines().count(), 13, "{csv}");
    assert!(csv.lines().next().unwrap().contains("test_ndcg@10"));
    assert_eq!(csv.matches(",finished,").count(), 12);

    // The CSV's NDCG@10 of each run is its metrics.json value; the table's mean is theirs.
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "test_ndcg@10").unwrap();
    let pop: Vec<f64> = csv
        .lines()
        .filter(|l| l.starts_with("tiny,ratio,,Pop,"))
        .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
        .collect();
    assert_eq!(pop.len(), 2);
    let mean = (pop[0] + pop[1]) / 2.0;
    let pop_row = report
        .lines()
        .find(|l| l.starts_with("| Pop | 2/2 |"))
        .unwrap();
    assert!(
        pop_row.contains(&format!("{mean:.4}")),
        "{pop_row} vs {mean}"
    );

    // A second invocation reuses every run.
    let before = all_metrics(&out);
    let again = ok(&["experiment", s(&file), "--out", s(&out)]);
    assert!(again.contains("12 runs (12 finished)"), "{again}");
    // Runs are found by their hash, whatever label their folder was named after.
    let relabelled = tmp.path().join("relabelled.toml");
    std::fs::write(
        &relabelled,
        read(&file).replace("\"EASE\"", "\"EASE, plain\""),
    )
    .unwrap();
    let dry = ok(&["experiment", s(&relabelled), "--out", s(&out), "--dry-run"]);
    assert!(dry.contains("12 runs (12 finished)"), "{dry}");
    assert_eq!(all_metrics(&out), before);

    // `encore report --experiment` rebuilds the same report from the folder.
    std::fs::remove_dir_all(out.join("report")).unwrap();
    let printed = ok(&["report", "--experiment", s(&out)]);
    assert!(printed.contains("| EASE | 2/2 |"), "{printed}");
    assert_eq!(read(&out.join("report/report.md")), report);
    let e = fails(&["report", "--experiment", s(&data)]);
    assert!(e.contains("not an experiment folder"), "{e}");
}

#[test]
fn a_failed_run_is_reported_and_the_others_finish_and_a_killed_experiment_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 6);
    // A feature table that exists but is not one: the conditioned row fails when it runs.
    let bad = tmp.path().join("bad_lyrics.tsv");
    std::fs::write(&bad, "id\tx\nnot\ta number\n").unwrap();
    let file = write_file(
        tmp.path(),
        &data,
        &bad,
        "  { label = \"MultiVAE-C (lyrics)\", model = \"multivae\", set = { conditioning = \"lyrics\" } },\n",
    );
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap().to_string();

    // Kill the experiment once its first run has finished; then let it fail on the bad table.
    let mut child = Command::new(env!("CARGO_BIN_EXE_encore"))
        .args(["--threads", "1", "experiment", s(&file), "--out", &out_s])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while all_metrics_if_any(&out) == 0 && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = all_metrics_if_any(&out);
    assert!(
        (1..12).contains(&partial),
        "{partial} runs had finished at the kill"
    );

    let run = encore(&["--threads", "1", "experiment", s(&file), "--out", &out_s]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success());
    assert!(
        stderr.contains("MultiVAE-C (lyrics) on tiny seed 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 of the experiment's jobs failed"),
        "{stderr}"
    );
    assert!(stdout.contains("12 of 14 runs finished"), "{stdout}");
    let report = read(&out.join("report/report.md"));
    assert!(
        report.contains("| MultiVAE-C (lyrics) | 0/2 | —"),
        "{report}"
    );

    // The killed and continued experiment's runs equal a straight experiment's.
    let straight = tmp.path().join("straight");
    let _ = encore(&[
        "--threads",
        "1",
        "experiment",
        s(&file),
        "--out",
        s(&straight),
    ]);
    assert_eq!(all_metrics(&out), all_metrics(&straight));
}

fn all_metrics_if_any(out: &Path) -> usize {
    if !out.join("runs").exists() {
        return 0;
    }
    let mut n = 0;
    for ds in std::fs::read_dir(out.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for run in std::fs::read_dir(ds.path()).into_iter().flatten().flatten() {
            n += run.path().join("metrics.json").exists() as usize;
        }
    }
    n
}

#[test]
fn a_bad_experiment_file_is_refused_naming_the_line_and_key_before_any_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("no-data-needed");
    let lyrics = tmp.path().join("l.tsv");
    let good = read(&write_file(tmp.path(), &data, &lyrics, ""));
    let out = tmp.path().join("out");
    let cases = [
        (
            good.replace("model = \"ease\"", "model = \"easy\""),
            "line 28",
            "unknown model",
        ),
        (
            good.replace("latent_dim = 16", "latent_dimension = 16"),
            "line 29",
            "latent_dimension",
        ),
        (
            good.replace("datasets = [\"tiny-users\"]", "datasets = [\"tiny-user\"]"),
            "line 37",
            "no dataset `tiny-user`",
        ),
        (
            good.replace(
                "baseline = \"Pop\"\ncurves",
                "baseline = \"Popular\"\ncurves",
            ),
            "line 22",
            "`Popular` is not a row label",
        ),
        (
            good.replace("seeds = [1, 2]", "seed = [1, 2]"),
            "line 1",
            "unknown field `seed`",
        ),
        (
            good.replace("baseline = \"EASE\"", "baseline = \"EAS\""),
            "line 29",
            "`EAS` is not another row label",
        ),
        (
            good.replace("preset = \"tiny\"", "preset = \"tiny2\""),
            "line 14",
            "unknown preset `tiny2`",
        ),
        (
            good.replace("split = \"users\"", "split = \"user\""),
            "line 16",
            "unknown split `user`",
        ),
        (
            good.replace("metric = \"ndcg@10\"", "metric = \"ndcg@50\""),
            "line 3",
            "k among ks",
        ),
        (
            good.replace(
                "set = { latent_dim = 16, hidden_dims = [32] }",
                "set = { dropout = 1.5 }",
            ),
            "line 29",
            "dropout",
        ),
    ];
    for (text, line, what) in cases {
        let file = tmp.path().join("bad.toml");
        std::fs::write(&file, &text).unwrap();
        let e = fails(&["experiment", s(&file), "--out", s(&out)]);
        assert!(
            e.contains("bad.toml") && e.contains(line) && e.contains(what),
            "{what}: {e}"
        );
        assert!(!out.exists(), "{what}: nothing may be written");
    }
}

/// `encore ... | head` ends quietly when the reader goes away, without a panic.
#[test]
fn a_closed_pipe_ends_the_listing_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = write_file(tmp.path(), &data, &tmp.path().join("l.tsv"), "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_encore"))
        .args(["experiment", s(&file), "--dry-run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

//! End-to-end tests of `encore tune` on the tiny synthetic world.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{encore, fails, ok, s, tiny_data};

fn trials(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metrics(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap()
}

/// `encore tune` arguments as owned strings.
fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

fn run_ok(args: &[String]) -> String {
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_tune_writes_its_trials_the_best_config_and_the_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 9);
    let out = tmp.path().join("tune");
    let stdout = ok(&[
        "tune",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--trials",
        "4",
        "--startup-trials",
        "2",
        "--metric",
        "recall@20",
        "--set",
        "train.epochs=3",
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains("rank  trial  recall@20"), "{stdout}");
    let log = trials(&out);
    assert_eq!(log.len(), 4);
    for (i, t) in log.iter().enumerate() {
        assert_eq!(t["trial"], i);
        let keys: Vec<&str> = t["params"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["anneal_cap", "batch_size", "dropout", "latent_dim", "lr"]
        );
        let lr = t["params"]["lr"].as_f64().unwrap();
        assert!((1e-4..=1e-2).contains(&lr));
        let run = out.join(t["run_dir"].as_str().unwrap());
        assert_eq!(run, out.join(format!("trials/{i:03}")));
        // The objective is the trial's validation value of the tuned metric, and the trial
        // selected its best checkpoint by that metric.
        assert_eq!(t["value"], metrics(&run)["valid"]["recall@20"]);
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains("valid_metric = \"recall@20\""), "{config}");
    }
    assert!(out.join("tune.json").exists());
    let png = std::fs::read(out.join("trials.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // best.toml is the best trial's configuration: training it again gives the same model.
    let best = log
        .iter()
        .max_by(|a, b| {
            a["value"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["value"].as_f64().unwrap())
        })
        .unwrap();
    let again = tmp.path().join("again");
    ok(&[
        "train",
        "--model",
        "multivae",
        "--config",
        s(&out.join("best.toml")),
        "--data",
        s(&data),
        "--out",
        s(&again),
    ]);
    assert_eq!(metrics(&again)["valid"]["recall@20"], best["value"]);

    // Asking for more trials continues the same tune; the same count again runs nothing.
    let more = args(&[
        "tune",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--trials",
        "5",
        "--startup-trials",
        "2",
        "--metric",
        "recall@20",
        "--set",
        "train.epochs=3",
        "--out",
        s(&out),
    ]);
    run_ok(&more);
    assert_eq!(trials(&out).len(), 5);
    assert_eq!(trials(&out)[..4], log[..]);
    let stdout = run_ok(&more);
    assert!(stdout.contains("5 trials (0 failed)"), "{stdout}");
    assert_eq!(trials(&out).len(), 5);

    // A key fixed by --set leaves the built-in space.
    let fixed = tmp.path().join("fixed");
    ok(&[
        "tune",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--trials",
        "1",
        "--set",
        "train.epochs=1",
        "--set",
        "lr=0.002",
        "--set",
        "dropout=0.3",
        "--out",
        s(&fixed),
    ]);
    let t = &trials(&fixed)[0];
    let keys: Vec<&str> = t["params"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["anneal_cap", "batch_size", "latent_dim"]);
    let config = std::fs::read_to_string(fixed.join("trials/000/config.toml")).unwrap();
    assert!(config.contains("lr = 0.002\n"), "{config}");
}

/// A tune killed (SIGKILL) during a trial, then run again with the same command, proposes for
/// every later trial exactly what an uninterrupted tune proposes, and gets the same results.
#[test]
fn a_killed_tune_continues_with_the_proposals_of_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 9);
    let command = |out: &Path| {
        args(&[
            "tune",
            "--model",
            "multivae",
            "--data",
            s(&data),
            "--trials",
            "6",
            "--startup-trials",
            "2",
            "--seed",
            "5",
            "--set",
            "train.epochs=12",
            "--set",
            "train.patience=100",
            "--out",
            s(out),
        ])
    };
    let straight = tmp.path().join("straight");
    run_ok(&command(&straight));

    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_encore"))
        .args(command(&killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill during the second trial, once it has trained a few epochs (so its run directory
    // holds a training checkpoint).
    let log = killed.join("trials.jsonl");
    let second = killed.join("trials/001/log.jsonl");
    let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        if lines(&log) >= 1 && lines(&second) >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert_eq!(
        lines(&log),
        1,
        "the kill should land in the second trial; make the trials longer"
    );
    assert!(!killed.join("trials/001/metrics.json").exists());
    let first_epoch = std::fs::read_to_string(&second)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    run_ok(&command(&killed));

    let (a, b) = (trials(&straight), trials(&killed));
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["params"], y["params"], "trial {}", x["trial"]);
        assert_eq!(x["value"], y["value"], "trial {}", x["trial"]);
    }
    assert_eq!(
        std::fs::read_to_string(straight.join("best.toml")).unwrap(),
        std::fs::read_to_string(killed.join("best.toml")).unwrap()
    );
    // The half-done trial was continued from its checkpoint, not started again.
    let log_after = std::fs::read_to_string(&second).unwrap();
    assert_eq!(log_after.lines().next().unwrap(), first_epoch);
    assert_eq!(log_after.lines().count(), 12);
}

#[test]
fn a_failed_trial_is_recorded_and_the_tune_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 9);
    // Conditioning on audio needs --audio, which is not given: those trials fail when they
    // start training.
    let space = tmp.path().join("space.toml");
    std::fs::write(
        &space,
        "[conditioning]\nkind = \"categorical\"\nvalues = [\"none\", \"audio\"]\n\n\
         [lr]\nkind = \"log_uniform\"\nlow = 1e-3\nhigh = 1e-2\n",
    )
    .unwrap();
    let out = tmp.path().join("tune");
    let stdout = ok(&[
        "tune",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--space",
        s(&space),
        "--trials",
        "4",
        "--seed",
        "12",
        "--set",
        "train.epochs=2",
        "--out",
        s(&out),
    ]);
    let log = trials(&out);
    assert_eq!(log.len(), 4);
    let failed: Vec<usize> = log
        .iter()
        .filter(|t| t["error"].is_string())
        .map(|t| t["trial"].as_u64().unwrap() as usize)
        .collect();
    assert!(
        !failed.is_empty() && failed[0] < 3 && failed.len() < 4,
        "this seed's draws should fail a trial before others finish: {log:?}"
    );
    for t in &log {
        if t["error"].is_string() {
            assert_eq!(t["params"]["conditioning"], "audio");
            assert!(t["error"]
                .as_str()
                .unwrap()
                .contains("needs an audio feature table"));
            assert!(t.get("value").is_none());
        } else {
            assert_eq!(t["params"]["conditioning"], "none");
            assert!(t["value"].as_f64().unwrap() > 0.0);
        }
    }
    assert!(
        stdout.contains(&format!("({} failed)", failed.len())),
        "{stdout}"
    );
    assert!(out.join("best.toml").exists());
}

#[test]
fn bad_spaces_and_settings_are_refused_before_any_trial() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 9);
    let out = tmp.path().join("tune");
    let refused = |model: &str, space: &str, extra: &[&str]| -> String {
        let file = tmp.path().join("space.toml");
        std::fs::write(&file, space).unwrap();
        let mut a = args(&[
            "tune",
            "--model",
            model,
            "--data",
            s(&data),
            "--trials",
            "2",
        ]);
        a.extend(args(&["--space", s(&file), "--out", s(&out)]));
        a.extend(args(extra));
        let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.exists(), "nothing may be written: {err}");
        err
    };
    let cases: [(&str, &str, &[&str], &str); 8] = [
        (
            "multivae",
            "[lr]\nkind = \"loguniform\"\nlow = 1e-4\nhigh = 1e-2\n",
            &[],
            "space.toml:2: `lr`: unknown kind `loguniform`",
        ),
        (
            "multivae",
            "[dropout]\nkind = \"uniform\"\nlow = 0.8\nhigh = 0.1\n",
            &[],
            "space.toml:3: `dropout`: low 0.8 must be below high 0.1",
        ),
        (
            "multivae",
            "[lr]\nkind = \"log_uniform\"\nlow = 0\nhigh = 1e-2\n",
            &[],
            "space.toml:3: `lr`: a log range must be above 0",
        ),
        (
            "macridvae",
            "[tau]\nkind = \"uniform\"\nlow = 0.1\nhigh = 1.0\n\n[diffusion]\nkind = \"categorical\"\nvalues = []\n",
            &[],
            "space.toml:8: `diffusion`: `values` is empty",
        ),
        (
            "multivae",
            "[lr]\nkind = \"uniform\"\nlow = 1e-4\nhigh = 1e-2\n\n[latnet_dim]\nkind = \"int\"\nlow = 8\nhigh = 64\n",
            &[],
            "space.toml:6: `latnet_dim`: the model's configuration refuses it: config key `latnet_dim`",
        ),
        (
            "ease",
            "[reg_weight]\nkind = \"uniform\"\nlow = \"ten\"\nhigh = 100\n",
            &[],
            "space.toml:3: `reg_weight`: `low` must be a number, got the string \"ten\"",
        ),
        (
            // A bound the model refuses (dropout must be below 1).
            "multivae",
            "[dropout]\nkind = \"uniform\"\nlow = 0.5\nhigh = 1.5\n",
            &[],
            "space.toml:1: `dropout`: the model's configuration refuses it: config key `dropout`: must be in [0, 1), got 1.5",
        ),
        (
            "ease",
            "[reg_weight]\nkind = \"log_uniform\"\nlow = 10\nhigh = 100\n",
            &["--set", "reg_weight=5"],
            "space.toml:1: `reg_weight`: also fixed by --set reg_weight=5",
        ),
    ];
    for (model, space, extra, expected) in cases {
        let err = refused(model, space, extra);
        assert!(err.contains(expected), "expected `{expected}` in:\n{err}");
    }
    let err = refused(
        "ease",
        "[reg_weight]\nkind = \"log_uniform\"\nlow = 10\nhigh = 100\n",
        &["--metric", "ndcg"],
    );
    assert!(err.contains("--metric ndcg: expected `name@k`"), "{err}");
    let err = refused(
        "ease",
        "[reg_weight]\nkind = \"log_uniform\"\nlow = 10\nhigh = 100\n",
        &["--metric", "nddcg@10"],
    );
    assert!(err.contains("unknown metric `nddcg`"), "{err}");

    // Pop has nothing to tune.
    let err = fails(&[
        "tune",
        "--model",
        "pop",
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("--model pop: nothing to tune"), "{err}");
    assert!(!out.exists());

    // A tune continues only under its own settings, and says which differ.
    let first = args(&[
        "tune",
        "--model",
        "ease",
        "--data",
        s(&data),
        "--trials",
        "2",
        "--out",
        s(&out),
    ]);
    run_ok(&first);
    let mut other = first.clone();
    other.extend(args(&["--seed", "7", "--metric", "recall@20"]));
    let err = fails(&other.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("holds a tune made with other settings"),
        "{err}"
    );
    assert!(
        err.contains("metric: recorded \"ndcg@10\", given \"recall@20\""),
        "{err}"
    );
    assert!(err.contains("seed: recorded 2020, given 7"), "{err}");
    assert_eq!(trials(&out).len(), 2);
}

/// Every built-in space is accepted by its model and runs a trial (the latent-diffusion keys
/// join MultiVAE's when it diffuses).
#[test]
fn every_default_space_runs_a_trial() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 9);
    let models: [(&str, &[&str], &[&str]); 8] = [
        ("itemknn", &[], &["k", "shrink"]),
        ("ease", &[], &["reg_weight"]),
        (
            "bpr",
            &[],
            &["batch_size", "embedding_size", "lr", "reg_weight"],
        ),
        (
            "lightgcn",
            &[],
            &[
                "batch_size",
                "embedding_size",
                "lr",
                "n_layers",
                "reg_weight",
            ],
        ),
        (
            "multivae",
            &[],
            &["anneal_cap", "batch_size", "dropout", "latent_dim", "lr"],
        ),
        (
            "macridvae",
            &["--set", "hidden_dims=[32]"],
            &[
                "anneal_cap",
                "batch_size",
                "dropout",
                "latent_dim",
                "lr",
                "n_facets",
                "tau",
            ],
        ),
        (
            "diffrec",
            &["--set", "dims=[24]"],
            &["batch_size", "lr", "noise_min", "noise_scale", "steps"],
        ),
        (
            "multivae",
            &[
                "--set",
                "diffusion=diffrec",
                "--set",
                "denoiser_hidden=[16]",
            ],
            &[
                "anneal_cap",
                "batch_size",
                "dropout",
                "lambda_diff",
                "latent_dim",
                "lr",
                "mean_type",
                "reverse_steps",
            ],
        ),
    ];
    for (i, (model, extra, keys)) in models.iter().enumerate() {
        let out: PathBuf = tmp.path().join(format!("tune-{i}"));
        let mut a = args(&[
            "tune",
            "--model",
            model,
            "--data",
            s(&data),
            "--trials",
            "1",
            "--set",
            "train.epochs=1",
            "--out",
            s(&out),
        ]);
        a.extend(args(extra));
        let result = encore(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            result.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let t = &trials(&out)[0];
        let got: Vec<&str> = t["params"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(got, *keys, "{model}");
        assert!(t["value"].is_number(), "{model}: {t}");
    }
}

//! `encore serve`, `encore recommend` and `encore bench serve` through the binary: the service
//! answers a history with exactly what `encore recommend --history` prints, stops cleanly on
//! SIGTERM, and `recommend --all-users` exports lists that `encore evaluate
//! --recommendations` turns back into the run's own test metrics, to the last digit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::{encore, fails, ok, s};

/// The tiny synthetic world, prepared, and runs of `models` trained on one split.
fn tiny_runs(tmp: &Path, models: &[(&str, &[&str])]) -> Vec<PathBuf> {
    let data = common::tiny_data(tmp, 3);
    models
        .iter()
        .map(|(model, sets)| {
            let run = tmp.join(model);
            let mut args = vec![
                "train",
                "--model",
                model,
                "--data",
                s(&data),
                "--split",
                "ratio",
                "--seed",
                "5",
                "--k",
                "5,10,20",
                "--out",
                s(&run),
            ];
            for set in *sets {
                args.extend(["--set", set]);
            }
            ok(&args);
            run
        })
        .collect()
}

/// The items and scores `encore recommend` printed.
fn printed_list(out: &str) -> Vec<(String, String)> {
    out.lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split_whitespace();
            let _rank = f.next().unwrap();
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

/// The first item ids of the run's catalogue (split/items.txt).
fn catalogue(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("split/items.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn recommend_skips_unknown_history_items_and_refuses_k_0() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tiny_runs(tmp.path(), &[("ease", &[])]);
    let run = s(&runs[0]);
    let items = catalogue(&runs[0]);
    let (a, b) = (items[3].as_str(), items[40].as_str());

    let err = fails(&["recommend", "--run", run, "--history", a, "-k", "0"]);
    assert!(err.contains("-k: expected a positive number"), "{err}");

    let clean = ok(&[
        "recommend",
        "--run",
        run,
        "--history",
        &format!("{a},{b}"),
        "-k",
        "5",
    ]);
    let out = encore(&[
        "recommend",
        "--run",
        run,
        "--history",
        &format!("{a},no-such,{b},{a}"),
        "-k",
        "5",
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped 1 id(s)") && stderr.contains("no-such"),
        "{stderr}"
    );
    // The unknown id changes nothing, nor does the repeat.
    assert_eq!(String::from_utf8_lossy(&out.stdout), clean);
    let listed = printed_list(&clean);
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|(i, _)| i != a && i != b));

    let err = fails(&["recommend", "--run", run, "--history", "x,y", "-k", "5"]);
    assert!(
        err.contains("none of the 2 ids is in the catalogue"),
        "{err}"
    );
    let err = fails(&["recommend", "--run", run]);
    assert!(err.contains("--all-users"), "{err}");
    let err = fails(&["recommend", "--run", run, "--all-users"]);
    assert!(err.contains("--out"), "{err}");
}

/// `recommend --all-users` writes what `evaluate --recommendations` reads, and evaluating it
/// gives the run's recorded metrics exactly, on test and on validation.
#[test]
fn the_batch_export_reproduces_the_runs_metrics_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tiny_runs(
        tmp.path(),
        &[
            ("ease", &[]),
            ("multivae", &["train.epochs=4"]),
            ("bpr", &["train.epochs=3"]),
        ],
    );
    for run in &runs {
        let recorded: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap())
                .unwrap();
        for part in ["test", "valid"] {
            let recs = tmp.path().join(format!("recs-{part}.tsv"));
            let out = ok(&[
                "recommend",
                "--run",
                s(run),
                "--all-users",
                "--on",
                part,
                "-k",
                "100",
                "--out",
                s(&recs),
            ]);
            assert!(out.contains("of 200 users"), "{out}");
            let text = std::fs::read_to_string(&recs).unwrap();
            assert!(text.starts_with("user_id\titem_id\trank\tscore\n"));
            let lines: usize = out
                .split('(')
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(text.lines().count(), 1 + lines);
            // 150 items: a list is shorter than 100 only when fewer candidates are left.
            assert!(lines > 200 * 80, "{out}");
            let metrics = tmp.path().join("m.json");
            let per_user = tmp.path().join("per_user.tsv");
            ok(&[
                "evaluate",
                "--split",
                s(&run.join("split")),
                "--recommendations",
                s(&recs),
                "--on",
                part,
                "--k",
                "5,10,20",
                "--out",
                s(&metrics),
                "--per-user",
                s(&per_user),
            ]);
            if part == "test" {
                // Each user's values too: the run's per_user_test.tsv, line for line (its
                // rows in the dataset's user order, these in the split's).
                let sorted = |p: &std::path::Path| {
                    let mut l: Vec<String> = std::fs::read_to_string(p)
                        .unwrap()
                        .lines()
                        .map(String::from)
                        .collect();
                    l.sort();
                    l
                };
                let (got, want) = (sorted(&per_user), sorted(&run.join("per_user_test.tsv")));
                assert!(want.len() > 100, "{} users", want.len());
                assert_eq!(got, want, "{}", run.display());
            }
            let got: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
            let want = recorded[part].as_object().unwrap();
            assert_eq!(want.len(), 18, "{want:?}");
            for (key, value) in want {
                assert_eq!(&got[key], value, "{} {part} {key}", run.display());
            }
        }
    }
}

/// A running `encore serve` on a free loopback port.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_encore"))
            .arg("serve")
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Served { child, addr }
    }

    /// One request over a fresh connection: (status, body).
    fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer[9..12].parse().unwrap();
        let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    /// SIGTERM, then the exit status and what it printed.
    fn terminate(mut self) -> (std::process::ExitStatus, String, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (self.child.wait().unwrap(), out, err)
    }
}

/// The service answers a history exactly as `encore recommend --history` does, and stops on
/// SIGTERM with a zero exit status, its access log on stderr.
#[test]
fn serve_answers_like_recommend_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tiny_runs(
        tmp.path(),
        &[("multivae", &["train.epochs=3"]), ("itemknn", &[])],
    );
    let items = catalogue(&runs[0]);
    let picks = [
        items[7].as_str(),
        items[19].as_str(),
        items[88].as_str(),
        "unknown-id",
    ];
    let spec = [
        format!("mv={}", s(&runs[0])),
        format!("knn={}", s(&runs[1])),
    ];
    let server = Served::start(&["--run", &spec[0], "--run", &spec[1]]);
    for (name, run) in [("mv", &runs[0]), ("knn", &runs[1])] {
        let body = serde_json::json!({"model": name, "history": picks, "k": 8}).to_string();
        let (status, answer) = server.http("POST", "/v1/recommend", &body);
        assert_eq!(status, 200, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["ignored_items"], serde_json::json!(["unknown-id"]));
        let served: Vec<(String, String)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["item_id"].as_str().unwrap().to_string(),
                    format!("{:.4}", i["score"].as_f64().unwrap() as f32),
                )
            })
            .collect();
        let printed = ok(&[
            "recommend",
            "--run",
            s(run),
            "--history",
            &picks.join(","),
            "-k",
            "8",
        ]);
        assert_eq!(served, printed_list(&printed), "{name}");
    }
    let (status, answer) = server.http("POST", "/v1/recommend", r#"{"history": ["x"], "k": 0}"#);
    assert_eq!(status, 400);
    assert!(answer.contains("\"field\":\"k\""), "{answer}");
    let (status, answer) = server.http("GET", "/health", "");
    assert_eq!(status, 200);
    assert!(answer.contains("\"ok\""));

    let (exit, out, err) = server.terminate();
    assert!(exit.success(), "{exit:?}\n{err}");
    assert!(out.contains("stopped"), "{out}");
    assert!(
        err.contains("encore_serve::access") && err.contains("/v1/recommend"),
        "{err}"
    );
    assert!(err.contains("shutting down"), "{err}");
}

/// A run trained with a relative `--data` still finds its dataset, and so its item names,
/// from another working directory (the service is rarely started where training ran).
#[test]
fn a_run_finds_its_dataset_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let run_in = |dir: &Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_encore"))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run_in(
        tmp.path(),
        &[
            "data", "synth", "--preset", "tiny", "--seed", "3", "--out", "world",
        ],
    );
    run_in(
        tmp.path(),
        &[
            "data", "import", "--format", "onion", "--input", "world", "--out", "data",
        ],
    );
    run_in(
        tmp.path(),
        &[
            "train", "--model", "pop", "--data", "data", "--split", "ratio", "--out", "pop",
        ],
    );
    let item = catalogue(&tmp.path().join("pop"))[0].clone();
    let elsewhere = tempfile::tempdir().unwrap();
    let run = tmp.path().join("pop");
    let out = run_in(
        elsewhere.path(),
        &["recommend", "--run", s(&run), "--history", &item, "-k", "3"],
    );
    // Each line ends with the track's name (`Artist - Song`), which only the dataset has.
    for line in out.lines().skip(1) {
        assert!(line.contains(" - "), "no name in {line:?}");
    }
}

#[test]
fn serve_refuses_bad_options_before_listening() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tiny_runs(tmp.path(), &[("pop", &[])]);
    let run = s(&runs[0]);
    let err = fails(&["serve", "--run", run, "--addr", "localhost"]);
    assert!(
        err.contains("--addr `localhost`: expected IP:PORT"),
        "{err}"
    );
    let err = fails(&["serve", "--run", run, "--run", run]);
    assert!(err.contains("two runs are named `pop`"), "{err}");
    let err = fails(&["serve", "--run", s(tmp.path())]);
    assert!(err.contains("not a run directory"), "{err}");
    let err = fails(&["serve", "--run", run, "--max-k", "0"]);
    assert!(err.contains("--max-k: expected a positive number"), "{err}");
}

/// A short bounded load run through the command: every request answered, no 5xx, a report.
#[test]
fn bench_serve_reports_a_bounded_load_run() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tiny_runs(tmp.path(), &[("ease", &[])]);
    let report = tmp.path().join("report.json");
    let out = ok(&[
        "bench",
        "serve",
        "--run",
        s(&runs[0]),
        "--clients",
        "3",
        "--requests",
        "200",
        "--warmup",
        "20",
        "--history-len",
        "20",
        "--out",
        s(&report),
    ]);
    assert!(out.contains("200 requests in"), "{out}");
    assert!(out.contains("5xx: 0"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["report"]["requests"], 200);
    assert_eq!(v["report"]["server_errors"], 0);
    assert!(v["report"]["valid"]["p99_ms"].as_f64().unwrap() > 0.0);
}

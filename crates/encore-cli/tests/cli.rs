//! End-to-end tests of the `encore` command: every step a user takes, through the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{fails, ok, s};

/// The folder with the real datasets beside the repository, if present.
fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("ENCORE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    dir.is_dir().then_some(dir)
}

fn metric(json: &serde_json::Value, part: &str, key: &str) -> f64 {
    json[part][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{part}.{key} missing in {json}"))
}

#[test]
fn synth_import_train_evaluate_recommend() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    ok(&[
        "data",
        "synth",
        "--preset",
        "tiny",
        "--seed",
        "3",
        "--out",
        s(&world),
    ]);
    for f in [
        "userid_trackid_count.tsv",
        "userid_trackid_timestamp.tsv",
        "id_ivec512.tsv",
    ] {
        assert!(world.join(f).exists(), "{f} missing");
    }
    let out = ok(&[
        "data",
        "import",
        "--format",
        "onion",
        "--input",
        s(&world),
        "--out",
        s(&data),
    ]);
    assert!(out.contains("interactions"), "{out}");
    let stats = ok(&["data", "stats", s(&data)]);
    assert!(
        stats.contains("timestamps     yes") && stats.contains("per user"),
        "{stats}"
    );

    let out = ok(&[
        "train",
        "--model",
        "pop",
        "--data",
        s(&data),
        "--split",
        "ratio",
        "--seed",
        "5",
        "--out",
        s(&run),
        "--k",
        "5,10",
    ]);
    assert!(out.contains("ndcg@10") && out.contains("test"), "{out}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    let ndcg = metric(&metrics, "test", "ndcg@10");
    assert!(ndcg > 0.0 && ndcg < 1.0, "{ndcg}");
    for f in [
        "run.json",
        "split/train.tsv",
        "split/valid.tsv",
        "split/test.tsv",
        "split/split.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing from the run directory");
    }

    // Evaluating the run again reproduces the recorded numbers to the digit.
    let again = tmp.path().join("again.json");
    ok(&[
        "evaluate",
        "--run",
        s(&run),
        "--k",
        "5,10",
        "--out",
        s(&again),
    ]);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(metric(&again, "test", "ndcg@10"), ndcg);

    // The same split used through --split-dir gives the same metrics.
    let run2 = tmp.path().join("run2");
    ok(&[
        "train",
        "--model",
        "pop",
        "--split-dir",
        s(&run.join("split")),
        "--out",
        s(&run2),
        "--k",
        "5,10",
    ]);
    let m2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run2.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(
        metric(&m2, "test", "recall@10"),
        metric(&metrics, "test", "recall@10")
    );

    // Recommendations never repeat what the listener already heard.
    let train = std::fs::read_to_string(run.join("split/train.tsv")).unwrap();
    let first = train.lines().nth(1).unwrap();
    let (user, item) = first.split_once('\t').unwrap();
    let recs = ok(&["recommend", "--run", s(&run), "--user", user, "-k", "5"]);
    let listed: Vec<&str> = recs
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(listed.len(), 5, "{recs}");
    let heard: Vec<&str> = train
        .lines()
        .filter(|l| l.split('\t').next() == Some(user))
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    assert!(listed.iter().all(|i| !heard.contains(i)), "{recs}");
    let recs = ok(&["recommend", "--run", s(&run), "--history", item, "-k", "3"]);
    assert!(!recs.contains(&format!(" {item} ")), "{recs}");
    assert!(
        fails(&["recommend", "--run", s(&run), "--user", "no-such-user"]).contains("no-such-user")
    );
}

#[test]
fn external_ranked_lists_are_scored_under_our_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let split = tmp.path().join("split");
    std::fs::create_dir_all(&split).unwrap();
    std::fs::write(split.join("train.tsv"), "user_id\titem_id\nu1\ta\nu2\tb\n").unwrap();
    std::fs::write(split.join("valid.tsv"), "user_id\titem_id\nu1\tb\n").unwrap();
    std::fs::write(
        split.join("test.tsv"),
        "user_id\titem_id\nu1\tc\nu2\tc\nu2\td\n",
    )
    .unwrap();
    std::fs::write(
        split.join("split.json"),
        r#"{"kind":"ratio","seed":1,"dataset_fingerprint":"x","fingerprints":{},"counts":{}}"#,
    )
    .unwrap();
    // u1's list starts with its train item and its valid item: both are removed, so c is
    // rank 1. u2 has no list: scores zero.
    let recs = tmp.path().join("recs.tsv");
    std::fs::write(
        &recs,
        "user_id\titem_id\trank\nu1\ta\t1\nu1\tb\t2\nu1\tc\t3\n",
    )
    .unwrap();
    let out_json = tmp.path().join("m.json");
    ok(&[
        "evaluate",
        "--split",
        s(&split),
        "--recommendations",
        s(&recs),
        "--k",
        "1",
        "--out",
        s(&out_json),
    ]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    assert_eq!(m["hit@1"].as_f64(), Some(0.5));
    assert_eq!(m["ndcg@1"].as_f64(), Some(0.5));

    std::fs::write(&recs, "user_id\titem_id\trank\nu1\ta\tfirst\n").unwrap();
    let err = fails(&[
        "evaluate",
        "--split",
        s(&split),
        "--recommendations",
        s(&recs),
    ]);
    assert!(err.contains("recs.tsv") && err.contains('2'), "{err}");
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("plays.csv");
    std::fs::write(&bad, "listener,track\n1,a\n2\n").unwrap();
    let out = tmp.path().join("out");
    let err = fails(&[
        "data",
        "import",
        "--format",
        "csv",
        "--input",
        s(&bad),
        "--user-col",
        "listener",
        "--item-col",
        "track",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("plays.csv:3"), "{err}");
    assert!(
        !out.exists(),
        "a failed import must leave no output directory"
    );
    // Nothing temporary is left beside it either.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".encore-tmp"))
        .collect();
    assert!(leftovers.is_empty());

    let err = fails(&[
        "data",
        "import",
        "--format",
        "csv",
        "--input",
        s(&bad),
        "--user-col",
        "user",
        "--item-col",
        "track",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("user"), "{err}");
    let err = fails(&["train", "--model", "nope", "--data", s(tmp.path())]);
    assert!(err.contains("unknown model `nope`"), "{err}");
    let err = fails(&["data", "stats", s(tmp.path())]);
    assert!(err.contains("not a prepared dataset"), "{err}");
    let err = fails(&["data", "synth", "--preset", "huge", "--out", s(&out)]);
    assert!(err.contains("huge"), "{err}");
}

#[test]
fn real_datasets_import_and_split() {
    let Some(shared) = shared_data() else {
        eprintln!("skipping: ../shared/data not found (set ENCORE_SHARED_DATA to run this test)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ml = tmp.path().join("ml");
    ok(&[
        "data",
        "import",
        "--format",
        "recbole",
        "--input",
        s(&shared.join("ml-100k")),
        "--out",
        s(&ml),
    ]);
    let stats = ok(&["data", "stats", s(&ml)]);
    assert!(
        stats.contains("users          943") && stats.contains("items          1682"),
        "{stats}"
    );
    assert!(stats.contains("interactions   100000"), "{stats}");
    let split = tmp.path().join("ml-split");
    let out = ok(&[
        "data",
        "split",
        "--data",
        s(&ml),
        "--split",
        "ratio",
        "--seed",
        "2020",
        "--out",
        s(&split),
    ]);
    assert!(out.contains("train"), "{out}");
    let lines = |f: &str| {
        std::fs::read_to_string(split.join(f))
            .unwrap()
            .lines()
            .count()
            - 1
    };
    assert_eq!(
        lines("train.tsv") + lines("valid.tsv") + lines("test.tsv"),
        100_000
    );

    let lastfm = tmp.path().join("lastfm");
    ok(&[
        "data",
        "import",
        "--format",
        "hetrec-lastfm",
        "--input",
        s(&shared.join("hetrec-lastfm-2k")),
        "--min-user-interactions",
        "5",
        "--min-item-interactions",
        "5",
        "--out",
        s(&lastfm),
    ]);
    let stats = ok(&["data", "stats", s(&lastfm)]);
    assert!(stats.contains("item names     yes"), "{stats}");
    let split = tmp.path().join("lastfm-split");
    ok(&[
        "data",
        "split",
        "--data",
        s(&lastfm),
        "--split",
        "users",
        "--seed",
        "1",
        "--out",
        s(&split),
    ]);
    assert!(split.join("foldin.tsv").exists());
}

/// A prepared tiny synthetic world, shared by the training tests of one test function.
fn tiny_data(tmp: &Path) -> PathBuf {
    common::tiny_data(tmp, 9)
}

fn read_metrics(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn a_run_killed_mid_training_resumes_to_the_same_result() {
    killed_run_resumes("multivae", &[]);
}

/// The same with latent diffusion: the denoiser's weights and moments are part of the
/// checkpoint, its draws part of the trainer's stream.
#[test]
fn a_diffusion_run_killed_mid_training_resumes_to_the_same_result() {
    killed_run_resumes(
        "multivae",
        &[
            "--set",
            "diffusion=diffrec",
            "--set",
            "denoiser_hidden=[32]",
        ],
    );
}

/// Diff-MacridVAE too (the facet embedding with the denoiser), with a chain start set
/// through the config (`reverse_steps`), which the run's saved config must carry back.
#[test]
fn a_diff_macridvae_run_killed_mid_training_resumes_to_the_same_result() {
    killed_run_resumes(
        "macridvae",
        &[
            "--set",
            "n_facets=3",
            "--set",
            "hidden_dims=[32]",
            "--set",
            "latent_dim=8",
            "--set",
            "diffusion=diffrec",
            "--set",
            "denoiser_hidden=[32]",
            "--set",
            "reverse_steps=20",
        ],
    );
}

/// DiffRec: its importance sampler's loss history is part of the checkpoint (validation
/// every epoch, so the best checkpoint is chosen among all of them).
#[test]
fn a_diffrec_run_killed_mid_training_resumes_to_the_same_result() {
    killed_run_resumes(
        "diffrec",
        &[
            "--set",
            "dims=[24]",
            "--set",
            "steps=8",
            "--set",
            "train.eval_every=1",
        ],
    );
}

fn killed_run_resumes(model: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path());
    let args = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--model",
            model,
            "--data",
            s(&data),
            "--split",
            "ratio",
            "--seed",
            "4",
            "--set",
            "train.epochs=12",
            "--set",
            "train.patience=100",
            "--set",
            "batch_size=16",
            "--out",
            s(out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let straight = tmp.path().join("straight");
    let a: Vec<String> = args(&straight);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_encore"))
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as some epochs are done and logged: mid-way through a later epoch.
    let log = killed.join("log.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let epochs = std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if epochs >= 3 || std::time::Instant::now() > deadline {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !killed.join("metrics.json").exists(),
        "the run finished before it could be killed; make the test's run longer"
    );
    let mut resume = args(&killed);
    resume.push("--resume".into());
    ok(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    let (m1, m2) = (read_metrics(&straight), read_metrics(&killed));
    assert_eq!(
        m1["test"], m2["test"],
        "resumed run differs from the straight one"
    );
    assert_eq!(m1["best_epoch"], m2["best_epoch"]);
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(lines, 12, "one log line per epoch after resuming");
}

#[test]
fn config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path());
    let err = fails(&[
        "train",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--set",
        "learning_rat=0.1",
        "--out",
        s(&tmp.path().join("r1")),
    ]);
    assert!(err.contains("learning_rat"), "{err}");
    let err = fails(&[
        "train",
        "--model",
        "bpr",
        "--data",
        s(&data),
        "--set",
        "train.epochs=0",
        "--out",
        s(&tmp.path().join("r2")),
    ]);
    assert!(err.contains("train.epochs"), "{err}");
    // Every shipped config resolves.
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    for model in [
        "bpr",
        "lightgcn",
        "ease",
        "itemknn",
        "multivae",
        "macridvae",
        "diffrec",
    ] {
        let file = configs.join(format!("{model}.toml"));
        let out = tmp.path().join(format!("cfg-{model}"));
        ok(&[
            "train",
            "--model",
            model,
            "--config",
            s(&file),
            "--data",
            s(&data),
            "--set",
            "train.epochs=1",
            "--out",
            s(&out),
        ]);
        assert!(out.join("config.toml").exists());
    }
}

/// The multi-modal path end to end through the binary (SPEC §3, MODELS.md "Conditioning"):
/// fuse the tiny world's audio and lyrics tables, re-apply the saved projection, train
/// MultiVAE-C and MacridVAE-C with tensor conditioning, evaluate the runs again, fold in a
/// new listener, and get clear errors for a missing or unused feature table.
#[test]
fn conditioned_vaes_fuse_train_evaluate_and_fold_in() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path());
    let world = tmp.path().join("world");
    let (audio, lyrics) = (
        world.join("id_ivec512.tsv"),
        world.join("id_lyrics_bert.tsv"),
    );
    let fused = tmp.path().join("fused.tsv");
    let out = ok(&[
        "features",
        "fuse",
        "--audio",
        s(&audio),
        "--lyrics",
        s(&lyrics),
        "--method",
        "tensor",
        "--dim",
        "8",
        "--modality-dim",
        "16",
        "--data",
        s(&data),
        "--out",
        s(&fused),
    ]);
    assert!(out.contains("8 dimensions"), "{out}");
    let text = std::fs::read_to_string(&fused).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split('\t').collect();
    assert_eq!(header.len(), 9, "id + 8 columns: {header:?}");
    // The saved projection applied to the same items reproduces the fitted vectors.
    let again = tmp.path().join("again.tsv");
    ok(&[
        "features",
        "fuse",
        "--audio",
        s(&audio),
        "--lyrics",
        s(&lyrics),
        "--data",
        s(&data),
        "--apply",
        s(&tmp.path().join("fused.tsv.fusion.safetensors")),
        "--out",
        s(&again),
    ]);
    let parse = |t: &str| -> Vec<f64> {
        t.lines()
            .skip(1)
            .flat_map(|l| {
                l.split('\t')
                    .skip(1)
                    .map(|v| v.parse::<f64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (a, b) = (
        parse(&text),
        parse(&std::fs::read_to_string(&again).unwrap()),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4));

    for model in ["multivae", "macridvae"] {
        let run = tmp.path().join(format!("run-{model}"));
        ok(&[
            "train",
            "--model",
            model,
            "--data",
            s(&data),
            "--set",
            "conditioning=tensor",
            "--set",
            "cond_dim=8",
            "--set",
            "train.epochs=3",
            "--set",
            "batch_size=32",
            "--audio",
            s(&audio),
            "--lyrics",
            s(&lyrics),
            "--out",
            s(&run),
        ]);
        assert!(run.join("conditioning/report.json").exists());
        let metrics = read_metrics(&run);
        let ndcg = metric(&metrics, "test", "ndcg@10");
        assert!(ndcg > 0.0 && ndcg <= 1.0, "{model}: {ndcg}");
        // The saved run scores the same again (the conditioning travels with the model).
        let again = tmp.path().join(format!("again-{model}.json"));
        ok(&["evaluate", "--run", s(&run), "--out", s(&again)]);
        let again: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
        assert_eq!(metric(&again, "test", "ndcg@10"), ndcg, "{model}");
        // A listener the model never saw, from a history of catalogue tracks.
        let train = std::fs::read_to_string(run.join("split/train.tsv")).unwrap();
        let items: Vec<&str> = train
            .lines()
            .skip(1)
            .take(3)
            .map(|l| l.split('\t').nth(1).unwrap())
            .collect();
        let recs = ok(&[
            "recommend",
            "--run",
            s(&run),
            "--history",
            &items.join(","),
            "-k",
            "4",
        ]);
        assert_eq!(
            recs.lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .count(),
            4,
            "{recs}"
        );
    }
    // Both runs in one table, labelled with model and conditioning.
    let csv = tmp.path().join("report.csv");
    let table = ok(&[
        "report",
        s(&tmp.path().join("run-multivae")),
        s(&tmp.path().join("run-macridvae")),
        "--markdown",
        "--csv",
        s(&csv),
    ]);
    assert!(
        table.contains("| ndcg@10") && table.contains("macridvae, tensor"),
        "{table}"
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3);

    let err = fails(&[
        "train",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--set",
        "conditioning=tensor",
        "--lyrics",
        s(&lyrics),
        "--out",
        s(&tmp.path().join("r-missing")),
    ]);
    assert!(err.contains("--audio"), "{err}");
    let err = fails(&[
        "train",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--audio",
        s(&audio),
        "--out",
        s(&tmp.path().join("r-unused")),
    ]);
    assert!(err.contains("conditioning"), "{err}");
    // A feature table of another catalogue: a clear error, and no run directory left behind.
    let foreign = tmp.path().join("foreign.tsv");
    std::fs::write(&foreign, "id\ta\tb\nnot-a-track\t1\t2\n").unwrap();
    let out = tmp.path().join("r-foreign");
    let err = fails(&[
        "train",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--set",
        "conditioning=lyrics",
        "--lyrics",
        s(&foreign),
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains("foreign.tsv") && err.contains("catalogue"),
        "{err}"
    );
    assert!(!out.exists(), "a failed run left {} behind", out.display());
}

/// Last.fm-2k's text modality: each artist's tags as one text, ISO-8859-1 decoded.
#[test]
fn lastfm_tags_become_texts() {
    let Some(shared) = shared_data() else {
        eprintln!("skipped: ../shared/data is absent");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tags.tsv");
    ok(&[
        "features",
        "tags-text",
        "--input",
        s(&shared.join("hetrec-lastfm-2k")),
        "--out",
        s(&out),
        "--max-tags",
        "5",
    ]);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id\ttext"));
    let rows: Vec<(&str, &str)> = lines.map(|l| l.split_once('\t').unwrap()).collect();
    assert!(rows.len() > 10_000, "{} artists", rows.len());
    // Artist 1 (MALICE MIZER): j-rock is applied by 5 users, more than any other tag.
    let first = rows.iter().find(|(id, _)| *id == "1").unwrap();
    assert!(first.1.starts_with("j-rock, "), "{first:?}");
}

/// The lyrics path with the real MiniLM model: embed the tiny world's lyric texts, then train
/// a MultiVAE conditioned on them. Skipped (with a message) when the model folder is absent.
#[test]
fn embedded_lyrics_condition_a_multivae() {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/all-MiniLM-L6-v2");
    if !model.join("model.safetensors").exists() {
        eprintln!("skipped: {} is absent", model.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path());
    let emb = tmp.path().join("id_lyrics_emb.tsv");
    let out = ok(&[
        "features",
        "embed-text",
        "--model",
        s(&model),
        "--texts",
        s(&tmp.path().join("world/lyrics.tsv")),
        "--out",
        s(&emb),
    ]);
    assert!(out.contains("384 dimensions"), "{out}");
    let text = std::fs::read_to_string(&emb).unwrap();
    assert_eq!(text.lines().next().unwrap().split('\t').count(), 385);
    let lyrics = std::fs::read_to_string(tmp.path().join("world/lyrics.tsv")).unwrap();
    assert_eq!(
        text.lines().count(),
        lyrics.lines().count(),
        "one row per text"
    );
    let run = tmp.path().join("run");
    ok(&[
        "train",
        "--model",
        "multivae",
        "--data",
        s(&data),
        "--set",
        "conditioning=lyrics",
        "--set",
        "cond_dim=16",
        "--set",
        "train.epochs=2",
        "--lyrics",
        s(&emb),
        "--out",
        s(&run),
    ]);
    let report = std::fs::read_to_string(run.join("conditioning/report.json")).unwrap();
    assert!(report.contains("\"items_with_features\""), "{report}");
}

/// Rewrite an Encore split file in another tool's layout: RecBole's atomic-file header
/// (`user_id:token<TAB>item_id:token`, a rating column), DiffRec-style integer pairs
/// without a header (ids mapped to integers by `ids`, first appearance), or Encore's own
/// pairs ordered by item (`shuffled`: not grouped by user, as a log export may be).
fn export_split_file(src: &Path, dst: &Path, style: &str, ids: &mut Vec<String>) {
    let text = std::fs::read_to_string(src).unwrap();
    let mut out = String::new();
    if style == "recbole" {
        out.push_str("user_id:token\titem_id:token\trating:float\n");
    }
    if style == "shuffled" {
        out.push_str("user_id\titem_id\n");
        let mut lines: Vec<&str> = text.lines().skip(1).collect();
        // Ordered by item id: each user's lines are spread over the file.
        lines.sort_by_key(|l| (l.split('\t').nth(1).unwrap().to_string(), l.to_string()));
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        std::fs::write(dst, out).unwrap();
        return;
    }
    let mut index = |id: &str| match ids.iter().position(|x| x == id) {
        Some(p) => p,
        None => {
            ids.push(id.to_string());
            ids.len() - 1
        }
    };
    for line in text.lines().skip(1) {
        let (u, i) = line.split_once('\t').unwrap();
        match style {
            "recbole" => out.push_str(&format!("{u}\t{i}\t1.0\n")),
            _ => out.push_str(&format!("{}\t{}\n", index(&format!("u{u}")), index(i))),
        }
    }
    std::fs::write(dst, out).unwrap();
}

#[test]
fn external_split_directories_train_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path());
    let run = tmp.path().join("run");
    ok(&[
        "train",
        "--model",
        "itemknn",
        "--data",
        s(&data),
        "--split",
        "ratio",
        "--seed",
        "4",
        "--out",
        s(&run),
        "--k",
        "10",
    ]);
    // The reference: Encore's own split files with split.json but without the catalogue
    // lists, read without --data, so that the catalogue is built from the files in the same
    // order as for the exports (ranking ties fall by catalogue index).
    let own_split = tmp.path().join("own-split");
    std::fs::create_dir_all(&own_split).unwrap();
    for name in ["train.tsv", "valid.tsv", "test.tsv", "split.json"] {
        std::fs::copy(run.join("split").join(name), own_split.join(name)).unwrap();
    }
    let own = tmp.path().join("run-own");
    ok(&[
        "train",
        "--model",
        "itemknn",
        "--split-dir",
        s(&own_split),
        "--out",
        s(&own),
        "--k",
        "10",
    ]);
    let reference = read_metrics(&own);
    for style in ["recbole", "diffrec", "shuffled"] {
        // Only the three files another tool would write: no split.json.
        let ext = tmp.path().join(format!("ext-{style}"));
        std::fs::create_dir_all(&ext).unwrap();
        let mut ids = Vec::new();
        for part in ["train", "valid", "test"] {
            let name = format!("{part}.tsv");
            export_split_file(
                &run.join("split").join(&name),
                &ext.join(&name),
                style,
                &mut ids,
            );
        }
        let out = tmp.path().join(format!("run-{style}"));
        ok(&[
            "train",
            "--model",
            "itemknn",
            "--split-dir",
            s(&ext),
            "--out",
            s(&out),
            "--k",
            "10",
        ]);
        // The same interactions give the same metrics, whatever the ids look like (the
        // shuffled files list items in another first-appearance order, so ranking ties fall
        // differently: only their re-evaluation is checked below).
        let m = read_metrics(&out);
        let compared: &[&str] = if style == "shuffled" {
            &[]
        } else {
            &["ndcg@10", "recall@10", "mrr@10", "hit@10"]
        };
        for &key in compared {
            assert_eq!(
                metric(&m, "test", key),
                metric(&reference, "test", key),
                "{style} {key}"
            );
        }
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(info["split"]["kind"], "external", "{info}");
        assert_eq!(
            info["split"]["fingerprints"].as_object().unwrap().len(),
            4,
            "{info}"
        );
        // The run keeps the split with its computed record and its catalogue order, and
        // re-evaluates from it to the metrics of training (indices read back unchanged).
        assert!(out.join("split/split.json").exists());
        let again = tmp.path().join(format!("again-{style}.json"));
        ok(&[
            "evaluate",
            "--run",
            s(&out),
            "--k",
            "10",
            "--out",
            s(&again),
        ]);
        let again: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
        for key in ["ndcg@10", "recall@10"] {
            assert_eq!(
                metric(&again, "test", key),
                metric(&m, "test", key),
                "{style} {key} re-evaluated"
            );
        }

        // Ranked lists made elsewhere are scored on the external split too.
        let recs = tmp.path().join(format!("recs-{style}.tsv"));
        let first_user = std::fs::read_to_string(ext.join("test.tsv")).unwrap();
        let first = first_user
            .lines()
            .find(|l| !l.starts_with("user_id"))
            .unwrap()
            .to_string();
        let (u, i) = first.split_once('\t').unwrap();
        let i = i.split('\t').next().unwrap();
        std::fs::write(&recs, format!("user_id\titem_id\trank\n{u}\t{i}\t1\n")).unwrap();
        let out_json = tmp.path().join(format!("m-{style}.json"));
        ok(&[
            "evaluate",
            "--split",
            s(&ext),
            "--recommendations",
            s(&recs),
            "--k",
            "1",
            "--out",
            s(&out_json),
        ]);
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
        assert!(m["hit@1"].as_f64().unwrap() > 0.0, "{m}");
    }
}

#[test]
fn itemknn_trains_evaluates_and_recommends_through_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path());
    let run = tmp.path().join("knn");
    ok(&[
        "train",
        "--model",
        "itemknn",
        "--data",
        s(&data),
        "--seed",
        "2",
        "--set",
        "k=20",
        "--out",
        s(&run),
        "--k",
        "10",
    ]);
    let trained = read_metrics(&run);
    assert!(metric(&trained, "test", "ndcg@10") > 0.0);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("model = \"itemknn\"") && config.contains("k = 20"),
        "{config}"
    );
    // Re-evaluating the saved model reproduces the run's test metrics exactly.
    let again = tmp.path().join("again.json");
    ok(&[
        "evaluate",
        "--run",
        s(&run),
        "--k",
        "10",
        "--out",
        s(&again),
    ]);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(
        metric(&again, "test", "ndcg@10"),
        metric(&trained, "test", "ndcg@10")
    );
    // A new listener folds in from a history; what they heard is never recommended.
    let train = std::fs::read_to_string(run.join("split/train.tsv")).unwrap();
    let items: Vec<&str> = train
        .lines()
        .skip(1)
        .take(3)
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    let recs = ok(&[
        "recommend",
        "--run",
        s(&run),
        "--history",
        &items.join(","),
        "-k",
        "5",
    ]);
    let listed: Vec<&str> = recs
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(listed.len(), 5, "{recs}");
    assert!(listed.iter().all(|i| !items.contains(i)), "{recs}");
    // Bad configuration names the key.
    let err = fails(&[
        "train",
        "--model",
        "itemknn",
        "--data",
        s(&data),
        "--set",
        "k=0",
        "--out",
        s(&tmp.path().join("bad")),
    ]);
    assert!(err.contains("`k`"), "{err}");
    assert!(!tmp.path().join("bad").exists());
    let err = fails(&["train", "--model", "knn", "--data", s(&data)]);
    assert!(
        err.contains("itemknn") && err.contains("unknown model"),
        "{err}"
    );
}

/// `encore report --curves`: one pair of learning-curve PNGs per model, one line per run;
/// closed-form runs are left out, and runs with no curve at all are an error.
#[test]
fn report_draws_learning_curves_per_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path());
    let mut runs = Vec::new();
    for (model, seed) in [("multivae", "1"), ("multivae", "2"), ("pop", "1")] {
        let run = tmp.path().join(format!("{model}-{seed}"));
        let mut args = vec![
            "train",
            "--model",
            model,
            "--data",
            s(&data),
            "--seed",
            seed,
            "--out",
            s(&run),
        ];
        if model != "pop" {
            args.extend(["--set", "train.epochs=3"]);
        }
        ok(&args);
        runs.push(run);
    }
    let plots = tmp.path().join("plots");
    let mut args = vec!["report"];
    args.extend(runs.iter().map(|r| s(r)));
    args.extend(["--curves", s(&plots)]);
    let out = ok(&args);
    for name in ["multivae-epochs.png", "multivae-minutes.png"] {
        let bytes = std::fs::read(plots.join(name)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name} is a PNG");
        assert!(bytes.len() > 10_000, "{name}: {} bytes", bytes.len());
        assert!(out.contains(name), "{out}");
    }
    assert!(!plots.join("pop-epochs.png").exists());
    // A closed-form run alone has no curve to draw.
    let err = fails(&["report", s(&runs[2]), "--curves", s(&plots)]);
    assert!(err.contains("--curves") && err.contains("ndcg@10"), "{err}");
}

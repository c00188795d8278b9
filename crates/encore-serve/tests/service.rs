//! The HTTP service end to end on 127.0.0.1: runs trained and saved through the run
//! lifecycle, loaded by `ServedRun::load`, served by `encore_serve::serve`, asked by the
//! loopback client. Every error the API promises (status, field and message), the token, the
//! size limit, the timeout, a panicking model, graceful shutdown, metrics, and concurrent
//! answers equal to sequential ones.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use encore_core::registry::ModelEntry;
use encore_core::run::{self, NewRun, RunFit};
use encore_core::{ModelError, Recommender};
use encore_data::{Dataset, IdMap, InteractionMatrix, Split, SplitKind};
use encore_serve::{Client, Limits, ServedRun, Service};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// 150 listeners x 60 named tracks; taste follows two clusters of tracks, popularity falls
/// with the index.
fn dataset() -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let rows: Vec<Vec<u32>> = (0..150)
        .map(|u| {
            let cluster = u % 2;
            (0..60u32)
                .filter(|&i| {
                    let near = (i % 2) as usize == cluster;
                    let p = if near { 0.5 } else { 0.08 } / (1.0 + i as f64 / 30.0);
                    rng.random::<f64>() < p
                })
                .collect()
        })
        .collect();
    let ids = |prefix: &str, n: usize| {
        IdMap::from_ids((0..n).map(|i| format!("{prefix}{i:03}")).collect()).unwrap()
    };
    let names = (0..60)
        .map(|i| {
            let mood = ["Blue", "Golden", "Quiet", "Electric", "Paper"][i % 5];
            format!("{mood} Song {i} - Artist {}", i % 7)
        })
        .collect();
    Dataset {
        name: "tiny-named".into(),
        users: ids("u", 150),
        items: ids("t", 60),
        matrix: InteractionMatrix::from_rows(60, &rows),
        item_names: Some(names),
        ..Dataset::default()
    }
}

fn registry() -> Vec<ModelEntry> {
    vec![
        encore_baselines::pop::entry(),
        encore_baselines::knn::entry(),
        encore_baselines::ease::entry(),
        encore_baselines::bpr::entry(),
        encore_vae::multivae::entry(),
    ]
}

struct Fixture {
    _tmp: tempfile::TempDir,
    runs: Vec<(String, PathBuf)>,
}

/// One run of each model kind, trained once per test binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dataset();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        encore_data::cache::save(&ds, &data.join(encore_data::cache::FILE_NAME)).unwrap();
        let split = Split::make(&ds, SplitKind::Ratio, 7).unwrap();
        let registry = registry();
        let plans: [(&str, &str, &[&str]); 5] = [
            ("ease", "ease", &[]),
            ("pop", "pop", &[]),
            ("knn", "itemknn", &[]),
            ("bpr", "bpr", &["train.epochs=3"]),
            (
                "mvae",
                "multivae",
                &["train.epochs=3", "hidden_dims=[32]", "latent_dim=8"],
            ),
        ];
        let mut runs = Vec::new();
        for (name, model, sets) in plans {
            let entry = encore_core::registry::find(&registry, model).unwrap();
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let config = (entry.resolve)(None, &sets, Some(7)).unwrap();
            let dir = tmp.path().join(name);
            run::create(&NewRun {
                dir: &dir,
                model: entry.name,
                config: config.as_ref(),
                dataset: &ds,
                data: Some(&data),
                split: &split,
                seed: 7,
                features: None,
            })
            .unwrap();
            run::fit_and_evaluate(
                RunFit {
                    dir: &dir,
                    split: &split,
                    config: config.as_ref(),
                    conditioning: None,
                    resume: false,
                    ks: &[5, 10],
                    user_ids: Some(&ds.users),
                },
                &|_| {},
            )
            .unwrap();
            runs.push((name.to_string(), dir));
        }
        Fixture { _tmp: tmp, runs }
    })
}

fn run_dir(name: &str) -> &'static Path {
    &fixture().runs.iter().find(|(n, _)| n == name).unwrap().1
}

fn load(name: &str) -> ServedRun {
    ServedRun::load(name, run_dir(name), &registry()).unwrap()
}

/// A service on 127.0.0.1 and a client of it.
struct Server {
    client: Client,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(runs: Vec<ServedRun>, limits: Limits, token: Option<&str>) -> Server {
        let service = Arc::new(Service::new(runs, limits, token.map(str::to_string)).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(encore_serve::serve(listener, service, async {
            let _ = rx.await;
        }));
        let client = Client::new(&format!("http://{addr}"), token.map(str::to_string)).unwrap();
        Server {
            client,
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn standard(token: Option<&str>) -> Server {
        let runs = ["ease", "pop", "mvae", "knn", "bpr"].map(load).into();
        Server::start(runs, Limits::default(), token).await
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn post(c: &Client, body: &str) -> (u16, Value) {
    let a = c.post("/v1/recommend", body).await.unwrap();
    (a.status, a.json())
}

async fn get(c: &Client, path: &str) -> (u16, Value) {
    let a = c.get(path).await.unwrap();
    (a.status, a.json())
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {v}"))
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_string())
        .collect()
}

/// A posted history gets exactly the library's fold-in (the path `encore recommend
/// --history` takes): same items, same order, same scores, names attached; unknown ids are
/// skipped and listed, repeats count once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_gets_the_fold_in_of_the_library_with_names() {
    let server = Server::standard(None).await;
    let reference = load("mvae");
    let history = ["t004", "t010", "nope", "t004", "t022"];
    let (status, v) = post(
        &server.client,
        &json!({"model": "mvae", "history": history, "k": 7}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let known = reference.resolve_history(&history);
    assert_eq!(known.ignored, ["nope"]);
    let expected = reference.recommend_history(&known.items, &[], 7).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 7);
    for (i, (got, want)) in v["items"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&expected)
        .enumerate()
    {
        assert_eq!(got["rank"], json!(i + 1));
        assert_eq!(got["item_id"], json!(reference.item_id(want.item)));
        assert_eq!(got["score"].as_f64().unwrap() as f32, want.score);
        assert_eq!(got["name"], json!(reference.item_name(want.item).unwrap()));
    }
    assert_eq!(v["ignored_items"], json!(["nope"]));
    assert_eq!(v["history_items"], json!(3));
    // Nothing from the history, nor the excluded items, comes back.
    let (_, v) = post(
        &server.client,
        &json!({"model": "mvae", "history": history, "k": 7, "exclude": [expected[0].item_id(&reference)]})
            .to_string(),
    )
    .await;
    let got = ids(&v);
    assert!(!got.contains(&reference.item_id(expected[0].item).to_string()));
    assert!(
        got.iter().all(|i| !history.contains(&i.as_str())),
        "{got:?}"
    );
    server.stop().await;
}

trait ItemId {
    fn item_id(&self, run: &ServedRun) -> String;
}

impl ItemId for encore_serve::Scored {
    fn item_id(&self, run: &ServedRun) -> String {
        run.item_id(self.item).to_string()
    }
}

/// A known user gets the model's scores from their input, without anything they heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_user_never_gets_what_they_heard() {
    let server = Server::standard(None).await;
    let reference = load("ease");
    for user in ["u000", "u017", "u101"] {
        let (status, v) = post(
            &server.client,
            &json!({"user_id": user, "k": 20}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], json!("ease"));
        let u = reference.dataset.users.get(user).unwrap() as usize;
        let s = &reference.split;
        let heard: Vec<&str> = [s.input.row(u), s.valid.row(u), s.test.row(u)]
            .concat()
            .iter()
            .map(|&i| reference.item_id(i))
            .collect();
        let got = ids(&v);
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|i| !heard.contains(&i.as_str())), "{user}");
        let expected: Vec<String> = reference
            .recommend_user(u as u32, &[], 20)
            .iter()
            .map(|r| r.item_id(&reference))
            .collect();
        assert_eq!(got, expected);
    }
    server.stop().await;
}

/// Every kind of bad input gets a 4xx whose JSON body names the field and what was expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_4xx_naming_the_field() {
    let limits = Limits {
        max_k: 50,
        max_history: 20,
        max_body_bytes: 2_000,
        ..Limits::default()
    };
    let runs = ["ease", "pop"].map(load).into();
    let server = Server::start(runs, limits, None).await;
    let c = &server.client;
    let long: Vec<String> = (0..21).map(|i| format!("t{i:03}")).collect();
    let posts: Vec<(String, u16, Option<&str>, &str)> = vec![
        ("".into(), 400, Some("body"), "empty body"),
        (
            "{\"history\": [\"t001\"".into(),
            400,
            Some("body"),
            "malformed JSON",
        ),
        (
            "\"t001\"".into(),
            400,
            Some("body"),
            "expected a JSON object",
        ),
        (
            r#"{"history": ["t001"], "k": 0}"#.into(),
            400,
            Some("k"),
            "from 1 to 50, got 0",
        ),
        (
            r#"{"history": ["t001"], "k": 51}"#.into(),
            400,
            Some("k"),
            "got 51",
        ),
        (
            r#"{"history": ["t001"], "k": "5"}"#.into(),
            400,
            Some("k"),
            "expected an integer",
        ),
        (
            r#"{"history": "t001"}"#.into(),
            400,
            Some("history"),
            "expected an array",
        ),
        (
            r#"{"history": [1.5]}"#.into(),
            400,
            Some("history[0]"),
            "expected an item id",
        ),
        (
            r#"{"history": ["t001"], "top": 3}"#.into(),
            400,
            Some("top"),
            "unknown field",
        ),
        (
            r#"{"user_id": "u001", "history": ["t001"]}"#.into(),
            400,
            Some("user_id"),
            "not both",
        ),
        (r#"{}"#.into(), 400, Some("history"), "expected `history`"),
        (
            json!({ "history": long }).to_string(),
            400,
            Some("history"),
            "at most 20 item ids, got 21",
        ),
        (
            r#"{"user_id": "u999"}"#.into(),
            404,
            Some("user_id"),
            "unknown user `u999`",
        ),
        (
            r#"{"history": ["t001"], "model": "gpt"}"#.into(),
            404,
            Some("model"),
            "unknown model `gpt`; expected one of ease, pop",
        ),
        (
            r#"{"history": ["x", "y"]}"#.into(),
            422,
            Some("history"),
            "none of the 2 item ids",
        ),
        (
            format!("{{\"history\": [\"{}\"]}}", "t".repeat(3000)),
            413,
            Some("body"),
            "at most 2000 bytes",
        ),
    ];
    for (body, status, field, needle) in posts {
        let (got, v) = post(c, &body).await;
        let shown = &body[..body.len().min(60)];
        assert_eq!(got, status, "{shown}: {v}");
        assert_eq!(v["error"]["status"], json!(status), "{v}");
        assert_eq!(v["error"]["field"].as_str(), field, "{shown}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{shown}: {message}");
    }
    let gets: Vec<(&str, u16, Option<&str>, &str)> = vec![
        (
            "/v1/items/t999/similar",
            404,
            Some("id"),
            "unknown item `t999`",
        ),
        (
            "/v1/items/t001/similar?model=pop",
            404,
            Some("model"),
            "has no item representation",
        ),
        ("/v1/items/t001/similar?k=0", 400, Some("k"), "from 1 to 50"),
        (
            "/v1/items/t001/similar?k=many",
            400,
            Some("k"),
            "got \"many\"",
        ),
        (
            "/v1/items/t001/similar?n=3",
            400,
            Some("n"),
            "unknown query parameter",
        ),
        ("/v1/items?limit=0", 400, Some("limit"), "from 1 to 50"),
        ("/v1/items?q=a&q=b", 400, Some("q"), "given twice"),
        ("/v1/items?model=x", 404, Some("model"), "unknown model `x`"),
        ("/v1/nothing", 404, None, "no route GET /v1/nothing"),
        ("/index.html", 404, None, "no route GET /index.html"),
        ("/../Cargo.toml", 404, None, "no route"),
    ];
    for (path, status, field, needle) in gets {
        let (got, v) = get(c, path).await;
        assert_eq!(got, status, "{path}: {v}");
        assert_eq!(v["error"]["field"].as_str(), field, "{path}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{path}: {message}");
    }
    let a = c.get("/v1/recommend").await.unwrap();
    assert_eq!(a.status, 405);
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expected POST"));
    let a = c.post("/v1/models", "{}").await.unwrap();
    assert_eq!(a.status, 405);
    server.stop().await;
}

/// A body without a declared length (chunked) is cut at the limit too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_gets_413() {
    let limits = Limits {
        max_body_bytes: 1_000,
        ..Limits::default()
    };
    let server = Server::start(vec![load("ease")], limits, None).await;
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let chunk = "x".repeat(600);
        let req = format!(
            "POST /v1/recommend HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len(),
            chunk.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("at most 1000 bytes"), "{answer}");
    server.stop().await;
}

/// With a token, `/v1/*` needs `Authorization: Bearer TOKEN`; the page, health and metrics do
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_the_api_only() {
    let server = Server::start(vec![load("ease")], Limits::default(), Some("s3cret")).await;
    let base = format!("http://{}", server.addr);
    let anonymous = Client::new(&base, None).unwrap();
    let wrong = Client::new(&base, Some("guess".into())).unwrap();
    for c in [&anonymous, &wrong] {
        let a = c.get("/v1/models").await.unwrap();
        assert_eq!(a.status, 401);
        let v = a.json();
        assert_eq!(v["error"]["field"], json!("Authorization"));
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"));
        assert_eq!(
            c.post("/v1/recommend", r#"{"history": ["t001"]}"#)
                .await
                .unwrap()
                .status,
            401
        );
    }
    let basic = anonymous
        .send(
            "GET",
            "/v1/models",
            None,
            &[("authorization", "Basic czNjcmV0")],
        )
        .await
        .unwrap();
    assert_eq!(basic.status, 401);
    assert!(basic.text().contains("not a bearer token"));
    for path in ["/", "/health", "/metrics", "/assets/app.js"] {
        assert_eq!(anonymous.get(path).await.unwrap().status, 200, "{path}");
    }
    let (status, v) = get(&server.client, "/v1/models").await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = post(&server.client, r#"{"history": ["t001"]}"#).await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// Many clients at once get exactly the answers one client gets one request at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_answers_equal_sequential_ones() {
    let server = Server::standard(None).await;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let models = ["ease", "mvae", "knn", "bpr", "pop"];
    let bodies: Vec<String> = (0..150)
        .map(|i| {
            let history: Vec<String> = (0..1 + i % 6)
                .map(|_| format!("t{:03}", rng.random_range(0..60)))
                .collect();
            if i % 5 == 4 {
                json!({"model": models[i % 5], "user_id": format!("u{:03}", i % 150), "k": 10})
                    .to_string()
            } else {
                json!({"model": models[i % 5], "history": history, "k": 1 + i % 15}).to_string()
            }
        })
        .collect();
    let mut sequential = Vec::new();
    for b in &bodies {
        let a = server
            .client
            .post("/v1/recommend", b.clone())
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        sequential.push(a.body);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, b) in bodies.iter().enumerate() {
        let (c, b) = (server.client.clone(), b.clone());
        tasks.spawn(async move { (i, c.post("/v1/recommend", b).await.unwrap().body) });
    }
    let mut concurrent = vec![Vec::new(); bodies.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, body) = r.unwrap();
        concurrent[i] = body;
    }
    assert_eq!(concurrent, sequential);
    // The concurrent fold-ins were scored in shared passes (sequentially: one pass each).
    let fold_ins = bodies.iter().filter(|b| b.contains("history")).count() as f64;
    let text = server.client.get("/metrics").await.unwrap().text();
    let passes = encore_serve::metrics::sample(&text, "encore_fold_in_passes_total").unwrap();
    let scored = encore_serve::metrics::sample(&text, "encore_fold_ins_total").unwrap();
    assert_eq!(scored, 2.0 * fold_ins, "{text}");
    assert!(
        passes < scored,
        "no fold-ins were scored together: {passes} passes"
    );
    server.stop().await;
}

/// Similar items come from each model's own item representation, best first, without the
/// item itself; the answer says what they were compared by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_items_name_the_representation_they_come_from() {
    let server = Server::standard(None).await;
    let expected = [
        ("ease", "item-item weights B"),
        ("mvae", "decoder's output weights"),
        ("knn", "cosine similarities"),
        ("bpr", "item embeddings"),
    ];
    for (model, source) in expected {
        let (status, v) = get(
            &server.client,
            &format!("/v1/items/t004/similar?k=8&model={model}"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert!(v["similarity"].as_str().unwrap().contains(source), "{v}");
        let got = ids(&v);
        assert!(!got.contains(&"t004".to_string()), "{model}: {got:?}");
        assert!(!got.is_empty() && got.len() <= 8);
        let scores: Vec<f64> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["score"].as_f64().unwrap())
            .collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "{model}: {scores:?}"
        );
        assert_eq!(v["name"], json!("Paper Song 4 - Artist 4"));
    }
    // MultiVAE: the cosine of the decoder's item columns, recomputed here from the saved
    // weights.
    let w = encore_io::read_f32_tensors(&run_dir("mvae").join("model/model.safetensors")).unwrap();
    // hidden_dims = [32]: the decoder is decoder.0 (8 -> 32) and decoder.1 (32 -> items).
    let (shape, values) = w.map["decoder.1.weight"].clone();
    let (rows, n) = (shape[0], shape[1]);
    let values = &values;
    let col = |j: usize| (0..rows).map(move |r| values[r * n + j] as f64);
    let norm = |j: usize| col(j).map(|x| x * x).sum::<f64>().sqrt();
    let cos = |a: usize, b: usize| {
        col(a).zip(col(b)).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
    };
    let mut best: Vec<usize> = (0..n).filter(|&j| j != 4).collect();
    best.sort_by(|&a, &b| cos(4, b).total_cmp(&cos(4, a)));
    let (_, v) = get(&server.client, "/v1/items/t004/similar?k=3&model=mvae").await;
    let reference = load("mvae");
    let want: Vec<String> = best[..3]
        .iter()
        .map(|&j| reference.item_id(j as u32).to_string())
        .collect();
    assert_eq!(ids(&v), want);
    server.stop().await;
}

/// Search finds items by name or id, names starting with the query first, then by
/// popularity; an empty query lists the most popular.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_tracks_by_name() {
    let server = Server::standard(None).await;
    let (status, v) = get(&server.client, "/v1/items?q=golden%20song&limit=5").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], json!(12));
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(items
        .iter()
        .all(|i| i["name"].as_str().unwrap().starts_with("Golden Song")));
    let pops: Vec<u64> = items
        .iter()
        .map(|i| i["popularity"].as_u64().unwrap())
        .collect();
    assert!(pops.windows(2).all(|w| w[0] >= w[1]), "{pops:?}");
    // "artist 6" is inside every matching name: none starts with it.
    let (_, v) = get(&server.client, "/v1/items?q=ARTIST%206&limit=50").await;
    assert!(ids(&v)
        .iter()
        .all(|id| id[1..].parse::<usize>().unwrap() % 7 == 6));
    let (_, v) = get(&server.client, "/v1/items?q=t05").await;
    assert_eq!(v["total"], json!(10));
    let (_, v) = get(&server.client, "/v1/items?limit=3").await;
    let reference = load("ease");
    let counts = reference.split.train.item_counts();
    let top = *counts.iter().max().unwrap();
    assert_eq!(v["items"][0]["popularity"], json!(top));
    server.stop().await;
}

/// `/v1/models`, `/health`, the page and its assets, and the metrics after some traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_page_and_metrics() {
    let server = Server::standard(None).await;
    let c = &server.client;
    let (status, v) = get(c, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(v["default"], json!("ease"));
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 5);
    let mvae = models.iter().find(|m| m["name"] == "mvae").unwrap();
    assert_eq!(mvae["model"], json!("multivae"));
    assert_eq!(mvae["dataset"], json!("tiny-named"));
    assert_eq!(mvae["items"], json!(60));
    let recorded: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir("mvae").join("metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        mvae["metrics"]["test"]["ndcg@10"],
        recorded["test"]["ndcg@10"]
    );
    let pop = models.iter().find(|m| m["name"] == "pop").unwrap();
    assert_eq!(pop["similarity"], Value::Null);

    let (status, v) = get(c, "/health").await;
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    let page = c.get("/").await.unwrap();
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("<title>Encore") && html.contains("/assets/app.js"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    let js = c.get("/assets/app.js").await.unwrap().text();
    assert!(js.contains("/v1/recommend"));
    assert!(c
        .get("/assets/style.css")
        .await
        .unwrap()
        .text()
        .contains(":root"));

    for _ in 0..3 {
        post(c, r#"{"history": ["t001"]}"#).await;
    }
    post(c, r#"{"history": ["t001"], "k": 0}"#).await;
    get(c, "/no/such/route").await;
    let text = c.get("/metrics").await.unwrap().text();
    let sample = |name: &str| encore_serve::metrics::sample(&text, name);
    assert_eq!(
        sample(r#"encore_requests_total{route="/v1/recommend",status="200"}"#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(r#"encore_requests_total{route="/v1/recommend",status="400"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"encore_requests_total{route="unmatched",status="404"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"encore_request_duration_seconds_count{route="/v1/recommend"}"#),
        Some(4.0)
    );
    assert_eq!(sample("encore_models_loaded"), Some(5.0));
    assert!(sample("process_resident_memory_bytes").unwrap() > 1e6);
    server.stop().await;
}

/// A model that misbehaves on purpose: it panics on a history holding item 0 and takes
/// 400 ms on one holding item 1.
struct Misbehaving {
    n_items: usize,
}

impl Recommender for Misbehaving {
    fn name(&self) -> &'static str {
        "misbehaving"
    }
    fn n_items(&self) -> usize {
        self.n_items
    }
    fn score_users(&self, _users: &[u32], _input: &InteractionMatrix, out: &mut [f32]) {
        out.fill(0.0);
    }
    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
        if history.contains(&0) {
            panic!("deliberate failure for the test");
        }
        if history.contains(&1) {
            std::thread::sleep(Duration::from_millis(400));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = i as f32;
        }
        Ok(())
    }
    fn save(&self, _dir: &Path) -> Result<(), ModelError> {
        Ok(())
    }
}

fn misbehaving() -> ServedRun {
    let loaded = run::load(run_dir("ease")).unwrap();
    let n_items = loaded.dataset.items.len();
    ServedRun::new("odd", loaded, Box::new(Misbehaving { n_items }), None, None)
}

/// A panic while answering is a logged 500 for that request only; the service goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_500_and_the_service_goes_on() {
    let server = Server::start(vec![misbehaving()], Limits::default(), None).await;
    let (status, v) = post(&server.client, r#"{"history": ["t000"]}"#).await;
    assert_eq!(status, 500, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("logged"));
    let (status, v) = post(&server.client, r#"{"history": ["t005"], "k": 2}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(ids(&v), ["t059", "t058"]);
    server.stop().await;
}

/// A request over the time limit is answered with 503 when the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_times_out_with_503() {
    let limits = Limits {
        timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let server = Server::start(vec![misbehaving()], limits, None).await;
    let a = server
        .client
        .post("/v1/recommend", r#"{"history": ["t001"]}"#)
        .await
        .unwrap();
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.text().contains("limit of 100 ms"));
    assert!(a.elapsed < Duration::from_millis(390), "{:?}", a.elapsed);
    server.stop().await;
}

/// On shutdown the service stops accepting and answers the requests in flight first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_in_flight() {
    let mut server = Server::start(vec![misbehaving()], Limits::default(), None).await;
    let c = server.client.clone();
    let slow =
        tokio::spawn(async move { c.post("/v1/recommend", r#"{"history": ["t001"]}"#).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.take().unwrap().send(()).unwrap();
    let answer = slow.await.unwrap().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("the service stops once the request is answered")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

/// A bounded load run against the service: every request answered, malformed ones with
/// their 4xx, no 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_gets_no_5xx() {
    let server = Server::standard(None).await;
    let catalogue: Vec<String> = (0..60).map(|i| format!("t{i:03}")).collect();
    let opts = encore_serve::load::LoadOptions {
        clients: 4,
        requests: 300,
        history_len: 10,
        malformed: 0.1,
        k: 10,
        model: Some("mvae".into()),
        seed: 3,
        max_duration: Duration::from_secs(60),
    };
    let report = encore_serve::load::run(&server.client, &catalogue, &opts, Arc::new(|_| {})).await;
    assert_eq!(report.requests, 300);
    assert_eq!((report.failed, report.not_sent), (0, 0));
    assert_eq!(report.server_errors, 0);
    assert_eq!(report.unexpected, 0, "{:?}", report.statuses);
    assert!(report.malformed.count > 10 && report.valid.count > 200);
    assert!(report.rss_after_mib.is_some());
    // Four clients' fold-ins were scored in passes of at least one each.
    assert!(
        report.fold_ins_per_pass.is_some_and(|b| b >= 1.0),
        "{:?}",
        report.fold_ins_per_pass
    );
    server.stop().await;
}

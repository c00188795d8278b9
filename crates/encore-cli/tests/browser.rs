//! The page of `encore serve` in a real browser: Debian's `chromium`, driven over WebDriver
//! by `chromium-driver` (`chromedriver`), both on 127.0.0.1. The test searches the
//! catalogue, picks tracks, asks for recommendations, and checks that each panel shows exactly
//! the items `encore recommend --history` prints for the same picks, in the same order with
//! the same scores; then that a bad request shows the service's message. A screenshot is kept
//! as a test artifact (`target/tmp/serve-page.png`).
//!
//! It needs `chromium` and `chromium-driver` (`scripts/test` installs them on Debian/Ubuntu
//! when run as root). Without them it fails with a message saying so, unless
//! `ENCORE_SKIP_BROWSER=1` asks to skip it. `ENCORE_BROWSER_RUNS=NAME=DIR,NAME=DIR` points it
//! at other runs than the tiny world's (the README's screenshot comes from ml-100k runs) and
//! `ENCORE_SCREENSHOT=FILE` saves a copy of the screenshot there.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

mod common;
use common::ok;

/// A program on the PATH (or in /usr/bin, /usr/lib/chromium).
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/bin".into(), "/usr/lib/chromium".into()]);
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// A child process killed (by its id) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver in a process group of its own, with the chromium it starts: the whole group
/// is ended (by its id) when dropped, so a failing test leaves no browser behind.
struct DriverGroup(Child);

impl Drop for DriverGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not listen on 127.0.0.1:{port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The runs to serve, by name: ENCORE_BROWSER_RUNS, or a MultiVAE and an EASE run trained
/// here on the tiny synthetic world (whose tracks have names).
fn runs(tmp: &Path) -> Vec<(String, PathBuf)> {
    if let Ok(spec) = std::env::var("ENCORE_BROWSER_RUNS") {
        return spec
            .split(',')
            .map(|s| {
                let (name, dir) = s
                    .split_once('=')
                    .expect("ENCORE_BROWSER_RUNS: NAME=DIR,...");
                (name.to_string(), PathBuf::from(dir))
            })
            .collect();
    }
    let data = common::tiny_data(tmp, 3);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    [("multivae", "train.epochs=4"), ("ease", "preset=original")]
        .iter()
        .map(|(model, set)| {
            let run = tmp.join(model);
            ok(&[
                "train",
                "--model",
                model,
                "--data",
                &s(&data),
                "--split",
                "ratio",
                "--seed",
                "5",
                "--set",
                set,
                "--out",
                &s(&run),
            ]);
            (model.to_string(), run)
        })
        .collect()
}

/// `encore recommend --history` for the picks: (item id, score to 4 decimals).
fn recommend(run: &Path, picks: &[String], k: usize) -> Vec<(String, String)> {
    ok(&[
        "recommend",
        "--run",
        run.to_str().unwrap(),
        "--history",
        &picks.join(","),
        "-k",
        &k.to_string(),
    ])
    .lines()
    .skip(1)
    .map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[1].to_string(), f[2].to_string())
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_recommend_prints_for_the_same_picks() {
    let (Some(chromium), Some(driver)) = (
        find_program(&["chromium", "chromium-browser"]),
        find_program(&["chromedriver", "chromium-driver"]),
    ) else {
        let message = "chromium and chromium-driver (chromedriver) are needed for the browser test: \
                       run scripts/test (it installs them as root on Debian/Ubuntu) or \
                       `apt-get install chromium chromium-driver`; ENCORE_SKIP_BROWSER=1 skips this test";
        if std::env::var("ENCORE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("skipped: {message}");
            return;
        }
        panic!("{message}");
    };
    let tmp = tempfile::tempdir().unwrap();
    let runs = runs(tmp.path());

    // The service, on a free loopback port.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_encore"));
    serve.args(["serve", "--addr", "127.0.0.1:0"]);
    for (name, dir) in &runs {
        serve.args(["--run", &format!("{name}={}", dir.display())]);
    }
    let mut server = Killed(
        serve
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();

    // chromedriver, on another free loopback port, accepting local connections only.
    let port = free_port();
    let _driver = DriverGroup(
        Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, "chromedriver");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1000", "--hide-scrollbars", "--force-device-scale-factor=1"],
        }),
    );
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromium session through chromedriver");

    browser.goto(&format!("{base}/")).await.unwrap();
    let wait = || browser.wait().at_most(Duration::from_secs(30));
    wait()
        .for_element(Locator::Css("#status.ok"))
        .await
        .expect("the page loads the models");

    // Pick three tracks by searching for each one's name, among the most popular listed.
    let popular = wait()
        .for_element(Locator::Css("#search-results li[data-item-id]"))
        .await
        .unwrap();
    drop(popular);
    let listed = browser
        .find_all(Locator::Css("#search-results li[data-item-id]"))
        .await
        .unwrap();
    let mut targets = Vec::new();
    for i in [0, 4, 9] {
        let li = &listed[i];
        let id = li.attr("data-item-id").await.unwrap().unwrap();
        let name = li
            .find(Locator::Css(".name"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        targets.push((id, name));
    }
    let search = browser.find(Locator::Css("#search")).await.unwrap();
    let mut picks = Vec::new();
    for (id, name) in &targets {
        search.clear().await.unwrap();
        search.send_keys(name).await.unwrap();
        // The list answering this very query (`data-query`), not the one before it.
        let query = name.replace('\\', "\\\\").replace('"', "\\\"");
        let hit = wait()
            .for_element(Locator::Css(&format!(
                "#search-results[data-query=\"{query}\"] li[data-item-id=\"{id}\"]:not(.picked)"
            )))
            .await
            .unwrap_or_else(|_| panic!("searching `{name}` lists {id}"));
        hit.click().await.unwrap();
        wait()
            .for_element(Locator::Css(&format!("#picks li[data-item-id=\"{id}\"]")))
            .await
            .unwrap();
        picks.push(id.clone());
    }
    let count = browser.find(Locator::Css("#pick-count")).await.unwrap();
    assert_eq!(count.text().await.unwrap(), "3");

    browser
        .find(Locator::Css("#recommend"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for panel in ["#panel-a", "#panel-b"] {
        wait()
            .for_element(Locator::Css(&format!("{panel}[data-state=\"done\"]")))
            .await
            .unwrap_or_else(|_| panic!("{panel} shows recommendations"));
    }
    let panel_models = [runs[0].clone(), runs[runs.len().min(2) - 1].clone()];
    for (panel, (name, dir)) in ["#panel-a", "#panel-b"].iter().zip(&panel_models) {
        let select = browser
            .find(Locator::Css(&format!("{panel} select")))
            .await
            .unwrap();
        assert_eq!(
            select.prop("value").await.unwrap().as_deref(),
            Some(name.as_str())
        );
        let mut shown = Vec::new();
        for li in browser
            .find_all(Locator::Css(&format!("{panel} .recs li")))
            .await
            .unwrap()
        {
            let id = li.attr("data-item-id").await.unwrap().unwrap();
            let score = li.find(Locator::Css(".score span")).await.unwrap();
            shown.push((id, score.text().await.unwrap()));
        }
        let printed = recommend(dir, &picks, 10);
        assert_eq!(printed.len(), 10);
        assert_eq!(
            shown, printed,
            "{panel} ({name}) against encore recommend --history"
        );
    }

    // The screenshot, with both panels filled.
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&artifact, &png).unwrap();
    eprintln!("screenshot: {}", artifact.display());
    if let Ok(copy) = std::env::var("ENCORE_SCREENSHOT") {
        std::fs::write(&copy, &png).unwrap();
    }

    // A bad request shows the service's message in the panel.
    let k = browser.find(Locator::Css("#k")).await.unwrap();
    k.clear().await.unwrap();
    k.send_keys("0").await.unwrap();
    browser
        .find(Locator::Css("#recommend"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let error = wait()
        .for_element(Locator::Css("#panel-a[data-state=\"error\"] .error"))
        .await
        .unwrap();
    let message = error.text().await.unwrap();
    assert!(
        message.contains("k: expected an integer from 1 to"),
        "{message}"
    );
    assert!(error.is_displayed().await.unwrap());

    browser.close().await.unwrap();
    // The service stops cleanly on SIGTERM.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    server
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert!(server.0.wait().unwrap().success());
    assert!(rest.contains("stopped"), "{rest}");
}

//! The HTTP service: its state ([`Service`]: the served runs, the limits, the token, the
//! counters), its routes and handlers, and the middleware every request goes through
//! (authorisation on `/v1/*`, the request timeout, metrics and the access log).
//!
//! Handlers answer on tokio's blocking pool (scoring is CPU work): a panic there becomes a
//! logged 500 and never takes the process down. At most one answer per core is computed at a
//! time; further requests wait their turn in arrival order (within the request timeout), so
//! a burst queues instead of spawning a thread per request and having them all compete for
//! the cores and the memory bandwidth. Fold-ins (posted histories) wait in their run's queue
//! and are scored together, one pass per worker permit ([`crate::batch`]): each answer is
//! exactly the one its listener gets alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::api::{self, Limits, Listener, RecommendRequest};
use crate::batch::FoldInQueue;
use crate::error::{json_response, ApiError, ServeError};
use crate::metrics::Metrics;
use crate::page;
use crate::served::{FoldIn, Scored, ServedRun};

/// What the service serves and how.
pub struct Service {
    runs: Vec<ServedRun>,
    limits: Limits,
    token: Option<String>,
    metrics: Metrics,
    /// One permit per core: the answers computed at once.
    workers: Arc<tokio::sync::Semaphore>,
    /// Per run, the fold-ins waiting to be scored together ([`crate::batch`]).
    fold_ins: Vec<FoldInQueue>,
}

impl Service {
    /// A service over `runs` (the first is the default model); `token`, when given, is
    /// required as `Authorization: Bearer TOKEN` on `/v1/*`.
    pub fn new(
        runs: Vec<ServedRun>,
        limits: Limits,
        token: Option<String>,
    ) -> Result<Service, ServeError> {
        if runs.is_empty() {
            return Err(ServeError::NoRuns);
        }
        for (i, r) in runs.iter().enumerate() {
            if runs[..i].iter().any(|o| o.name == r.name) {
                return Err(ServeError::DuplicateName {
                    name: r.name.clone(),
                });
            }
        }
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ServeError::Option {
                field: "--token",
                message: "expected a non-empty token".into(),
            });
        }
        let metrics = Metrics::new(runs.len());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Service {
            fold_ins: runs.iter().map(|_| FoldInQueue::default()).collect(),
            runs,
            limits,
            token,
            metrics,
            workers: Arc::new(tokio::sync::Semaphore::new(cores)),
        })
    }

    /// The served runs, the default first.
    pub fn runs(&self) -> &[ServedRun] {
        &self.runs
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The run named `name`, or the default one.
    fn run(&self, name: Option<&str>) -> Result<&ServedRun, ApiError> {
        Ok(&self.runs[self.run_index(name)?])
    }

    /// The index of the run named `name`, or of the default one.
    fn run_index(&self, name: Option<&str>) -> Result<usize, ApiError> {
        let Some(name) = name else {
            return Ok(0);
        };
        self.runs
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| {
                ApiError::not_found(
                    Some("model"),
                    format!(
                        "unknown model `{name}`; expected one of {} (GET /v1/models lists them)",
                        self.names().join(", ")
                    ),
                )
            })
    }

    fn names(&self) -> Vec<&str> {
        self.runs.iter().map(|r| r.name.as_str()).collect()
    }

    /// The routes, with the middleware, ready for [`axum::serve`].
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(page::index))
            .route("/assets/app.js", get(page::app_js))
            .route("/assets/style.css", get(page::style_css))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/v1/models", get(models))
            .route("/v1/items", get(search))
            .route("/v1/items/{id}/similar", get(similar))
            .route("/v1/recommend", post(recommend))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self)
    }

    /// Whether the request carries the token (always, without one).
    fn authorised(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let unauthorised = |m: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                Some("Authorization"),
                format!("{m}; expected the header `Authorization: Bearer <token>` with the token the service was started with"),
            )
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorised("missing"))?
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorised("not a bearer token"))?;
        if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(unauthorised("wrong token"))
        }
    }

    /// `POST /v1/recommend`.
    pub fn recommend(&self, body: &[u8]) -> Result<Value, ApiError> {
        self.answer(RecommendRequest::parse(body, &self.limits)?)
    }

    /// A parsed `POST /v1/recommend`, answered on the calling thread.
    pub fn answer(&self, req: RecommendRequest) -> Result<Value, ApiError> {
        self.complete(self.prepare(req)?)
    }

    /// A parsed `POST /v1/recommend` resolved against its run: the listener and the items to
    /// leave out looked up, the answer's fields so far, the scoring left to do.
    fn prepare(&self, req: RecommendRequest) -> Result<Prepared, ApiError> {
        let index = self.run_index(req.model.as_deref())?;
        let run = &self.runs[index];
        let exclude = run.known_items(&req.exclude);
        let mut answer = json!({"model": run.name, "k": req.k});
        let work = match &req.listener {
            Listener::User(id) => {
                let u = run.dataset.users.get(id).ok_or_else(|| {
                    ApiError::not_found(
                        Some("user_id"),
                        format!(
                            "unknown user `{id}`: not a user of model `{}`'s dataset {} ({} users); post a `history` instead for a new listener",
                            run.name,
                            run.dataset.name,
                            run.dataset.users.len()
                        ),
                    )
                })?;
                answer["user_id"] = json!(id);
                Work::User(u, exclude, req.k)
            }
            Listener::History(ids) => {
                let history = run.resolve_history(ids);
                if history.items.is_empty() {
                    return Err(ApiError::unprocessable(
                        "history",
                        format!(
                            "none of the {} item ids is in the catalogue of model `{}` ({} items); nothing to recommend from",
                            history.ignored.len(),
                            run.name,
                            run.n_items()
                        ),
                    ));
                }
                answer["history_items"] = json!(history.items.len());
                answer["ignored_items"] = json!(history.ignored);
                Work::FoldIn(FoldIn {
                    history: history.items,
                    exclude,
                    k: req.k,
                })
            }
        };
        Ok(Prepared {
            run: index,
            answer,
            work,
        })
    }

    /// Score a prepared request alone and answer it.
    fn complete(&self, p: Prepared) -> Result<Value, ApiError> {
        let run = &self.runs[p.run];
        let items = match p.work {
            Work::User(u, exclude, k) => run.recommend_user(u, &exclude, k),
            Work::FoldIn(f) => run
                .recommend_history(&f.history, &f.exclude, f.k)
                .map_err(|e| fold_in_failed(run, e))?,
        };
        Ok(self.finish(p.run, p.answer, &items))
    }

    /// The answer with its items.
    fn finish(&self, run: usize, mut answer: Value, items: &[Scored]) -> Value {
        answer["items"] = items_json(&self.runs[run], items);
        answer
    }

    /// `GET /v1/items/{id}/similar?k=&model=`.
    pub fn similar(&self, id: &str, query: Option<&str>) -> Result<Value, ApiError> {
        let params = api::query_params(query, &["k", "model"])?;
        let k = match api::param(&params, "k") {
            Some(t) => api::count_text(t, "k", self.limits.max_k)?,
            None => api::DEFAULT_K,
        };
        let run = self.run(api::param(&params, "model"))?;
        let item = run.dataset.items.get(id).ok_or_else(|| {
            ApiError::not_found(
                Some("id"),
                format!(
                    "unknown item `{id}`: not in the catalogue of model `{}` ({} items; GET /v1/items?q= searches it)",
                    run.name,
                    run.n_items()
                ),
            )
        })?;
        let Some(repr) = run.item_representation() else {
            return Err(ApiError::not_found(
                Some("model"),
                format!(
                    "model `{}` ({}) has no item representation to compare items by; ask a model that has one ({})",
                    run.name,
                    run.info.model,
                    self.runs
                        .iter()
                        .filter(|r| r.item_representation().is_some())
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let source = repr.source;
        let items = run.similar_items(item, k).unwrap_or_default();
        Ok(json!({
            "model": run.name,
            "item_id": id,
            "name": run.item_name(item),
            "similarity": source,
            "k": k,
            "items": items_json(run, &items),
        }))
    }

    /// `GET /v1/items?q=&limit=&model=`.
    pub fn search(&self, query: Option<&str>) -> Result<Value, ApiError> {
        let params = api::query_params(query, &["q", "limit", "model"])?;
        let limit = match api::param(&params, "limit") {
            Some(t) => api::count_text(t, "limit", self.limits.max_k)?,
            None => api::DEFAULT_SEARCH_LIMIT,
        };
        let run = self.run(api::param(&params, "model"))?;
        let q = api::param(&params, "q").unwrap_or("");
        let (hits, total) = run.search(q, limit);
        let items: Vec<Value> = hits
            .iter()
            .map(|&i| {
                json!({
                    "item_id": run.item_id(i),
                    "name": run.item_name(i),
                    "popularity": run.popularity(i),
                })
            })
            .collect();
        Ok(json!({"model": run.name, "q": q, "total": total, "items": items}))
    }

    /// `GET /v1/models`.
    pub fn models(&self) -> Value {
        let models: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "model": r.info.model,
                    "dataset": r.dataset.name,
                    "users": r.dataset.users.len(),
                    "items": r.n_items(),
                    "split": {"kind": r.info.split.kind, "seed": r.info.split.seed},
                    "seed": r.info.seed,
                    "conditioning": r.conditioning,
                    "similarity": r.item_representation().map(|s| s.source),
                    "metrics": r.metrics.as_ref().map(|m| json!({"valid": m.valid, "test": m.test})),
                })
            })
            .collect();
        json!({"default": self.runs[0].name, "models": models, "limits": {
            "max_k": self.limits.max_k,
            "max_history": self.limits.max_history,
            "max_body_bytes": self.limits.max_body_bytes,
        }})
    }
}

/// A `POST /v1/recommend` resolved against run `run` ([`Service::prepare`]).
struct Prepared {
    run: usize,
    /// The answer's fields but its items.
    answer: Value,
    work: Work,
}

/// The scoring a prepared request needs.
enum Work {
    /// A known user (index), the items to leave out besides what they heard, `k`.
    User(u32, Vec<u32>, usize),
    /// A posted history: fold-in, batched with the others waiting ([`crate::batch`]).
    FoldIn(FoldIn),
}

/// The 500 for a fold-in the model refused (logged).
fn fold_in_failed(run: &ServedRun, e: encore_core::ModelError) -> ApiError {
    tracing::error!(model = %run.name, "fold-in failed: {e}");
    ApiError::internal(format!("the model could not fold the history in: {e}"))
}

/// The items of an answer, best first.
fn items_json(run: &ServedRun, items: &[Scored]) -> Value {
    Value::Array(
        items
            .iter()
            .enumerate()
            .map(|(r, s)| {
                json!({
                    "rank": r + 1,
                    "item_id": run.item_id(s.item),
                    "name": run.item_name(s.item),
                    "score": s.score,
                })
            })
            .collect(),
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answer on the blocking pool once a worker permit is free; a panic there is logged and
/// answered with 500.
async fn blocking<F>(service: Arc<Service>, f: F) -> Response
where
    F: FnOnce(&Service) -> Result<Value, ApiError> + Send + 'static,
{
    let permit = match service.workers.clone().acquire_owned().await {
        Ok(p) => p,
        Err(_) => return ApiError::internal("the service is shutting down").into_response(),
    };
    // The permit goes with the work: a request that times out while it runs still holds it
    // until the work ends.
    let answer = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&service)
    })
    .await;
    match answer {
        Ok(Ok(value)) => json_response(StatusCode::OK, &value),
        Ok(Err(e)) => e.into_response(),
        Err(join) => handler_failed(join).into_response(),
    }
}

/// The 500 for work that panicked on the blocking pool (the panic logged).
fn handler_failed(join: tokio::task::JoinError) -> ApiError {
    let what = match join.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    };
    tracing::error!("a request handler failed: {what}");
    ApiError::internal(
        "the service failed while answering (a bug, logged on the server); the request itself may be fine",
    )
}

/// A fold-in answered through its run's queue: scored with the others waiting (each answer
/// exactly its own alone).
async fn fold_in(service: Arc<Service>, run: usize, answer: Value, job: FoldIn) -> Response {
    let (rx, start) = service.fold_ins[run].push(job);
    if start {
        tokio::spawn(drain_fold_ins(service.clone(), run));
    }
    match rx.await {
        Ok(Ok(items)) => json_response(StatusCode::OK, &service.finish(run, answer, &items)),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::internal("the service stopped before answering").into_response(),
    }
}

/// Score run `run`'s waiting fold-ins, a pass at a time, each pass on the blocking pool with a
/// worker permit, until none waits.
async fn drain_fold_ins(service: Arc<Service>, run: usize) {
    loop {
        let Ok(permit) = service.workers.clone().acquire_owned().await else {
            // Shutting down: answer what waits.
            while let Some(batch) = service.fold_ins[run].take() {
                for w in batch {
                    let _ = w
                        .reply
                        .send(Err(ApiError::internal("the service is shutting down")));
                }
            }
            return;
        };
        let Some(batch) = service.fold_ins[run].take() else {
            return;
        };
        let (jobs, replies): (Vec<FoldIn>, Vec<_>) =
            batch.into_iter().map(|w| (w.job, w.reply)).unzip();
        service.metrics.observe_fold_in_pass(jobs.len());
        let s = service.clone();
        let scored = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let r = &s.runs[run];
            r.recommend_histories(&jobs)
                .map_err(|e| fold_in_failed(r, e))
        })
        .await;
        match scored {
            Ok(Ok(lists)) => {
                for (reply, items) in replies.into_iter().zip(lists) {
                    let _ = reply.send(Ok(items));
                }
            }
            Ok(Err(e)) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(join) => {
                let e = handler_failed(join);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Read a request body of at most `limit` bytes (413 above).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = |size: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body"),
            format!("the body is {size}; expected at most {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        return Err(too_large(format!("{n} bytes")));
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(e) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                Err(too_large("larger".into()))
            } else {
                Err(ApiError::bad_request(
                    "body",
                    format!("could not be read: {e}"),
                ))
            }
        }
    }
}

async fn recommend(State(s): State<Arc<Service>>, headers: HeaderMap, body: Body) -> Response {
    // A malformed request is answered at once, without waiting for a worker.
    let req = match read_body(&headers, body, s.limits.max_body_bytes).await {
        Ok(bytes) => RecommendRequest::parse(&bytes, &s.limits),
        Err(e) => Err(e),
    };
    match req.and_then(|req| s.prepare(req)) {
        Ok(Prepared {
            run,
            answer,
            work: Work::FoldIn(job),
        }) => fold_in(s, run, answer, job).await,
        Ok(p) => blocking(s, move |s| s.complete(p)).await,
        Err(e) => e.into_response(),
    }
}

async fn similar(
    State(s): State<Arc<Service>>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    match id {
        Ok(Path(id)) => blocking(s, move |s| s.similar(&id, query.as_deref())).await,
        Err(e) => ApiError::bad_request("id", format!("expected an item id in the path: {e}"))
            .into_response(),
    }
}

async fn search(State(s): State<Arc<Service>>, RawQuery(query): RawQuery) -> Response {
    blocking(s, move |s| s.search(query.as_deref())).await
}

async fn models(State(s): State<Arc<Service>>) -> Response {
    json_response(StatusCode::OK, &s.models())
}

async fn health(State(s): State<Arc<Service>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "models": s.names(),
            "uptime_seconds": s.metrics.uptime_seconds(),
        }),
    )
}

async fn metrics(State(s): State<Arc<Service>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::not_found(
        None,
        format!(
            "no route {method} {}; the API is under /v1 (GET /v1/models, GET /v1/items?q=, GET /v1/items/{{id}}/similar, POST /v1/recommend), health at /health, metrics at /metrics, the page at /",
            uri.path()
        ),
    )
    .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = if uri.path() == "/v1/recommend" {
        "POST"
    } else {
        "GET"
    };
    let mut r = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        format!(
            "method {method} is not allowed on {}; expected {allowed}",
            uri.path()
        ),
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    r
}

/// Every request: the token on `/v1/*`, the timeout, the counters and the access log.
async fn guard(State(s): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let api = path == "/v1" || path.starts_with("/v1/");
    let response = match if api {
        s.authorised(req.headers())
    } else {
        Ok(())
    } {
        Err(e) => e.into_response(),
        Ok(()) => match tokio::time::timeout(s.limits.timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                format!(
                    "the request took longer than the service's limit of {} ms (--timeout-ms)",
                    s.limits.timeout.as_millis()
                ),
            )
            .into_response(),
        },
    };
    let status = response.status().as_u16();
    let seconds = start.elapsed().as_secs_f64();
    s.metrics.observe(&route, status, seconds);
    tracing::info!(
        target: "encore_serve::access",
        method = %method,
        path = %path,
        status,
        ms = format_args!("{:.3}", seconds * 1e3),
    );
    response
}

/// Serve on `listener` until `shutdown` completes; requests in flight then are answered
/// before this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, service.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

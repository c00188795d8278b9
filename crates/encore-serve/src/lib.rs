//! Encore's HTTP service (SPEC §7, issue #15): one process serving several trained runs by
//! name, over a JSON API under `/v1`, with health and Prometheus metrics endpoints and a web
//! page to try the models.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/recommend` | `{model?, user_id? \| history?: [ids], k?, exclude?: [ids]}`: top-k with names and scores, for a known user or a posted history (fold-in) |
//! | `GET /v1/items/{id}/similar?k=&model=` | the most similar items by the model's item representation |
//! | `GET /v1/items?q=&limit=&model=` | catalogue search by name or id |
//! | `GET /v1/models` | the served runs: name, model, dataset, metrics, conditioning |
//! | `GET /health` | `{"status": "ok", ...}` |
//! | `GET /metrics` | Prometheus text: requests by route and status, latency histogram, models loaded, resident memory |
//! | `GET /` | the page (embedded: [`page`]) |
//!
//! - [`served`]: one loaded run and every query on it, shared with `encore recommend` so the
//!   command line and the service answer alike.
//! - [`api`]: request parsing and limits; [`error`]: the error types and the JSON error body.
//! - [`service`]: the state, routes, handlers and middleware; [`metrics`]: the counters;
//!   `batch`: the queue that scores the fold-ins waiting together in one pass.
//! - [`client`] and [`load`]: a loopback-only client and the bounded load generator behind
//!   `encore bench serve`.
//!
//! Models are loaded only through the run lifecycle (`encore_core::run::load`) and the
//! registry the binary passes in ([`ServedRun::load`]).

pub mod api;
mod batch;
pub mod client;
pub mod error;
pub mod load;
pub mod metrics;
pub mod page;
pub mod served;
pub mod service;

pub use api::Limits;
pub use client::Client;
pub use error::{ApiError, ServeError};
pub use served::{ExportPart, FoldIn, History, Scored, ServedRun};
pub use service::{serve, shutdown_signal, Service};

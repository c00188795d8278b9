//! A small HTTP/1 client for the service (the load generator and the tests), that talks to
//! loopback addresses only.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An answer: its status, body and how long it took from sending to the last byte.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client of one service at a loopback address.
#[derive(Clone)]
pub struct Client {
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of `base` (`http://127.0.0.1:PORT`); refuses any address that is not
    /// loopback, so that a benchmark can never send traffic anywhere else.
    pub fn new(base: &str, token: Option<String>) -> Result<Client, String> {
        let base = base.trim_end_matches('/').to_string();
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{base}`: expected an http:// URL of a loopback address"))?;
        let host = host.split('/').next().unwrap_or_default();
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => h,
            _ => host,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "`{base}`: expected a loopback address (127.0.0.0/8, [::1] or localhost); load is never sent elsewhere"
            ));
        }
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Ok(Client { http, base, token })
    }

    /// The service's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Send a request with optional extra headers; the token, when the client has one, goes
    /// in `Authorization`.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let start = Instant::now();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let response = self
            .http
            .request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Answer {
            status,
            body,
            elapsed: start.elapsed(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        self.send("GET", path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> Result<Answer, String> {
        self.send("POST", path, Some(body.into()), &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.2:1/",
            "http://localhost:9",
            "http://[::1]:8080",
        ] {
            assert!(Client::new(ok, None).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.2:80",
            "http://example.org",
            "https://127.0.0.1:8080",
            "127.0.0.1:8080",
        ] {
            assert!(Client::new(bad, None).is_err(), "{bad}");
        }
    }
}

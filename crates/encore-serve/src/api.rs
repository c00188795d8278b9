//! The requests of the JSON API, parsed and checked by hand so that every error names the
//! field and says what was expected (`k: expected an integer from 1 to 1000, got 0`), and the
//! limits they are checked against.

use std::time::Duration;

use serde_json::Value;

use crate::error::ApiError;

/// The limits on requests (`encore serve --max-k`, `--max-history`, `--max-body-bytes`,
/// `--timeout-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest `k` (and search `limit`) a request may ask for.
    pub max_k: usize,
    /// The most items a posted history (or `exclude` list) may hold.
    pub max_history: usize,
    /// The largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// How long a request may take before it is answered with 503.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_k: 1000,
            max_history: 10_000,
            max_body_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The `k` of a request when it gives none.
pub const DEFAULT_K: usize = 10;
/// The `limit` of a search when it gives none.
pub const DEFAULT_SEARCH_LIMIT: usize = 20;

/// Who `POST /v1/recommend` recommends for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// A user of the run's dataset (external id).
    User(String),
    /// A listening history (external item ids): fold-in.
    History(Vec<String>),
}

/// `POST /v1/recommend`: `{"model"?: name, "user_id"?: id | "history"?: [ids], "k"?: n,
/// "exclude"?: [ids]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecommendRequest {
    pub model: Option<String>,
    pub listener: Listener,
    pub k: usize,
    pub exclude: Vec<String>,
}

const RECOMMEND_FIELDS: [&str; 5] = ["model", "user_id", "history", "k", "exclude"];

/// A JSON value's kind, for messages.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("a string \"{}...\"", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// An id given as a string, or as an integer (MovieLens ids are numbers, and clients send
/// them as such).
fn id_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn id_list(v: &Value, field: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let Value::Array(items) = v else {
        return Err(ApiError::bad_request(
            field,
            format!("expected an array of item ids, got {}", kind(v)),
        ));
    };
    if items.len() > max {
        return Err(ApiError::bad_request(
            field,
            format!("expected at most {max} item ids, got {}", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            id_value(v).ok_or_else(|| {
                ApiError::bad_request(
                    &format!("{field}[{i}]"),
                    format!(
                        "expected an item id (a non-empty string or an integer), got {}",
                        kind(v)
                    ),
                )
            })
        })
        .collect()
}

/// Check a count (`k`, `limit`) given as a JSON value.
fn count_value(v: &Value, field: &str, max: usize) -> Result<usize, ApiError> {
    let expected = format!("expected an integer from 1 to {max}");
    match v.as_u64() {
        Some(n) if n >= 1 && n <= max as u64 => Ok(n as usize),
        _ => Err(ApiError::bad_request(
            field,
            format!("{expected}, got {}", kind(v)),
        )),
    }
}

/// Check a count (`k`, `limit`) given as query text.
pub fn count_text(text: &str, field: &str, max: usize) -> Result<usize, ApiError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n >= 1 && n <= max as u64 => Ok(n as usize),
        _ => Err(ApiError::bad_request(
            field,
            format!("expected an integer from 1 to {max}, got \"{text}\""),
        )),
    }
}

impl RecommendRequest {
    /// Parse and check a request body.
    pub fn parse(body: &[u8], limits: &Limits) -> Result<RecommendRequest, ApiError> {
        let example = r#"{"history": ["item id", ...], "k": 10} or {"user_id": "id", "k": 10}"#;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "body",
                format!("empty body; expected a JSON object such as {example}"),
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "body",
                format!("malformed JSON ({e}); expected a JSON object such as {example}"),
            )
        })?;
        let Value::Object(map) = value else {
            return Err(ApiError::bad_request(
                "body",
                format!(
                    "expected a JSON object such as {example}, got {}",
                    kind(&value)
                ),
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !RECOMMEND_FIELDS.contains(&k.as_str())) {
            return Err(ApiError::bad_request(
                unknown,
                format!(
                    "unknown field; expected one of {}",
                    RECOMMEND_FIELDS.join(", ")
                ),
            ));
        }
        let present = |k: &str| map.get(k).filter(|v| !v.is_null());
        let model = match present("model") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                return Err(ApiError::bad_request(
                    "model",
                    format!("expected a model name (a string), got {}", kind(v)),
                ))
            }
        };
        let listener = match (present("user_id"), present("history")) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "user_id",
                    "give either `user_id` (a known user) or `history` (item ids), not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "history",
                    "expected `history` (an array of item ids) or `user_id` (a known user)",
                ))
            }
            (Some(v), None) => Listener::User(id_value(v).ok_or_else(|| {
                ApiError::bad_request(
                    "user_id",
                    format!(
                        "expected a user id (a non-empty string or an integer), got {}",
                        kind(v)
                    ),
                )
            })?),
            (None, Some(v)) => {
                let ids = id_list(v, "history", limits.max_history)?;
                if ids.is_empty() {
                    return Err(ApiError::bad_request(
                        "history",
                        "expected at least one item id, got an empty array",
                    ));
                }
                Listener::History(ids)
            }
        };
        let k = match present("k") {
            None => DEFAULT_K,
            Some(v) => count_value(v, "k", limits.max_k)?,
        };
        let exclude = match present("exclude") {
            None => Vec::new(),
            Some(v) => id_list(v, "exclude", limits.max_history)?,
        };
        Ok(RecommendRequest {
            model,
            listener,
            k,
            exclude,
        })
    }
}

/// The query parameters of a GET request: `name=value` pairs, percent-decoded, each name
/// allowed once and only the names in `allowed`.
pub fn query_params(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(ApiError::bad_request(
                &name,
                format!(
                    "unknown query parameter; expected {}",
                    allowed
                        .iter()
                        .map(|a| format!("`{a}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if params.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_request(
                &name,
                "given twice; expected it once",
            ));
        }
        params.push((name.into_owned(), value.into_owned()));
    }
    Ok(params)
}

/// The value of `name` among parsed query parameters.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<RecommendRequest, ApiError> {
        RecommendRequest::parse(body.as_bytes(), &Limits::default())
    }

    fn err(body: &str) -> (String, String) {
        let e = parse(body).unwrap_err();
        assert_eq!(e.status.as_u16(), 400, "{body}: {e}");
        (e.field.unwrap_or_default(), e.message)
    }

    #[test]
    fn a_history_request_is_read_with_defaults() {
        let r = parse(r#"{"history": ["a", 7, " b "]}"#).unwrap();
        assert_eq!(
            r.listener,
            Listener::History(vec!["a".into(), "7".into(), "b".into()])
        );
        assert_eq!((r.k, r.model, r.exclude.len()), (DEFAULT_K, None, 0));
        let r = parse(r#"{"user_id": 196, "k": 3, "model": "m", "exclude": ["x"]}"#).unwrap();
        assert_eq!(r.listener, Listener::User("196".into()));
        assert_eq!((r.k, r.model.as_deref()), (3, Some("m")));
    }

    #[test]
    fn every_bad_request_names_its_field() {
        let cases = [
            ("", "body", "empty body"),
            ("{\"history\": [", "body", "malformed JSON"),
            ("[1, 2]", "body", "expected a JSON object"),
            (r#"{"history": ["a"], "kk": 3}"#, "kk", "unknown field"),
            (
                r#"{"history": ["a"], "k": 0}"#,
                "k",
                "from 1 to 1000, got 0",
            ),
            (r#"{"history": ["a"], "k": 1001}"#, "k", "got 1001"),
            (r#"{"history": ["a"], "k": "10"}"#, "k", "got \"10\""),
            (r#"{"history": ["a"], "k": 2.5}"#, "k", "got 2.5"),
            (r#"{"history": ["a"], "k": -1}"#, "k", "got -1"),
            (r#"{"history": "a"}"#, "history", "expected an array"),
            (r#"{"history": []}"#, "history", "at least one"),
            (r#"{"history": ["a", true]}"#, "history[1]", "got true"),
            (r#"{"history": ["a", ""]}"#, "history[1]", "non-empty"),
            (r#"{"user_id": [1]}"#, "user_id", "expected a user id"),
            (
                r#"{"user_id": "u", "history": ["a"]}"#,
                "user_id",
                "not both",
            ),
            (r#"{"k": 5}"#, "history", "or `user_id`"),
            (r#"{"history": ["a"], "model": 3}"#, "model", "a string"),
            (
                r#"{"history": ["a"], "exclude": {}}"#,
                "exclude",
                "an array",
            ),
        ];
        for (body, field, needle) in cases {
            let (f, m) = err(body);
            assert_eq!(f, field, "{body}: {m}");
            assert!(m.contains(needle), "{body}: {m}");
        }
    }

    #[test]
    fn a_history_over_the_limit_is_refused() {
        let limits = Limits {
            max_history: 3,
            ..Limits::default()
        };
        let e =
            RecommendRequest::parse(br#"{"history": ["a", "b", "c", "d"]}"#, &limits).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("history"));
        assert!(e.message.contains("at most 3 item ids, got 4"), "{e}");
    }

    #[test]
    fn query_parameters_are_decoded_and_checked() {
        let p = query_params(Some("q=hey%20jude&limit=5"), &["q", "limit"]).unwrap();
        assert_eq!(param(&p, "q"), Some("hey jude"));
        assert_eq!(count_text(param(&p, "limit").unwrap(), "limit", 100), Ok(5));
        let e = query_params(Some("q=a&x=1"), &["q", "limit"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x"));
        let e = query_params(Some("q=a&q=b"), &["q"]).unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
        let e = count_text("ten", "k", 100).unwrap_err();
        assert!(e.message.contains("from 1 to 100, got \"ten\""), "{e}");
    }
}

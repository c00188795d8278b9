//! The search space: which configuration keys a tune varies, and over what.
//!
//! A space is a TOML document with one table per tuned key, the key spelled as `--set` takes
//! it (`lr`, `batch_size`, `train.epochs`, `latent_dim`):
//!
//! ```toml
//! [lr]
//! kind = "log_uniform"      # ln(x) uniform on [ln low, ln high]
//! low = 1e-4
//! high = 1e-2
//!
//! [batch_size]
//! kind = "int"              # an integer in low..=high; `log = true` draws it on a log scale
//! low = 64
//! high = 1024
//! log = true
//!
//! [dropout]
//! kind = "uniform"          # uniform on [low, high]
//! low = 0.0
//! high = 0.8
//!
//! [diffusion]
//! kind = "categorical"      # one of the values (any TOML values but dates: strings, numbers,
//! values = ["none", "diffrec"]  # booleans, arrays such as hidden_dims = [[600], [200, 200]])
//!
//! [train.epochs]            # a trainer key: a dotted table, or "train.epochs" = { ... }
//! kind = "int"
//! low = 20
//! high = 200
//! ```
//!
//! [`SearchSpace::parse`] refuses, naming the file, the line and the key: an unknown `kind`
//! or field, a missing or non-numeric bound, `low > high` (or `low == high` for a real
//! range), a log range reaching 0 or below, a non-integer bound of an `int`, an empty or
//! repeated categorical value. Whether the model accepts each key (and its bounds) is the
//! caller's to say, through [`SearchSpace::check_values`].

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Value;
use toml_edit::{ImDocument, Item, TableLike};

use crate::TuneError;

/// One trial's values, by key (sorted, so that every walk over them has one order).
pub type Params = BTreeMap<String, Value>;

/// How one key is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Distribution {
    /// A real number, uniform on `[low, high]`.
    Uniform { low: f64, high: f64 },
    /// A positive real number whose logarithm is uniform on `[ln low, ln high]`.
    LogUniform { low: f64, high: f64 },
    /// An integer in `low..=high`, uniform, or on a log scale (`low >= 1`) with `log`.
    Int { low: i64, high: i64, log: bool },
    /// One of the values.
    Categorical { values: Vec<Value> },
}

/// One tuned key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// The configuration key, as `--set` takes it (`train.epochs`).
    pub key: String,
    #[serde(flatten)]
    pub distribution: Distribution,
    /// Where the key was declared (file and 1-based line), for error messages; not part of
    /// what the space means.
    #[serde(skip)]
    pub origin: Origin,
}

/// A key's place in its file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

/// A whole search space: its parameters sorted by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SearchSpace {
    pub params: Vec<Param>,
}

/// The kinds a space file may name.
const KINDS: &[&str] = &["uniform", "log_uniform", "int", "categorical"];

impl SearchSpace {
    /// Parse the space file `text`; `file` names it in errors (a path, or the built-in
    /// space's name).
    pub fn parse(text: &str, file: &str) -> Result<SearchSpace, TuneError> {
        let doc = ImDocument::parse(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let (line, column) = line_column(text, at);
            TuneError::SpaceSyntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        let mut reader = Reader {
            text,
            file,
            params: Vec::new(),
        };
        reader.group(doc.as_table(), "")?;
        let mut params = reader.params;
        params.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(SearchSpace { params })
    }

    /// The union of two spaces (e.g. a model's default space and the latent-diffusion one);
    /// a key declared in both is an error naming the second declaration.
    pub fn merge(mut self, other: SearchSpace) -> Result<SearchSpace, TuneError> {
        for p in other.params {
            if let Some(first) = self.params.iter().find(|q| q.key == p.key) {
                return Err(p.error(format!(
                    "already declared at {}:{}",
                    first.origin.file, first.origin.line
                )));
            }
            self.params.push(p);
        }
        self.params.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(self)
    }

    /// The parameter of `key`.
    pub fn get(&self, key: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.key == key)
    }

    /// Call `check(key, value)` with each key's bounds (both ends of a range, every
    /// categorical value); an error it returns becomes one naming the file, line and key.
    /// The command line resolves the model's configuration with the value, so that a key the
    /// model does not have, or a bound it refuses, stops the tune before any trial runs.
    pub fn check_values(
        &self,
        mut check: impl FnMut(&str, &Value) -> Result<(), String>,
    ) -> Result<(), TuneError> {
        for p in &self.params {
            for v in p.distribution.sample_values() {
                check(&p.key, &v).map_err(|m| p.error(format!("{m} (with {} = {v})", p.key)))?;
            }
        }
        Ok(())
    }
}

impl Param {
    /// An error about this key, naming its file and line.
    pub fn error(&self, message: impl Into<String>) -> TuneError {
        TuneError::Space {
            file: self.origin.file.clone(),
            line: self.origin.line,
            key: self.key.clone(),
            message: message.into(),
        }
    }
}

impl Distribution {
    /// The values [`SearchSpace::check_values`] tries: the ends of a range, or every category.
    pub fn sample_values(&self) -> Vec<Value> {
        match self {
            Distribution::Uniform { low, high } | Distribution::LogUniform { low, high } => {
                vec![Value::Float(*low), Value::Float(*high)]
            }
            Distribution::Int { low, high, .. } => {
                vec![Value::Integer(*low), Value::Integer(*high)]
            }
            Distribution::Categorical { values } => values.clone(),
        }
    }

    /// The interval `[start, end)` the sampler draws in: the range itself, its logarithm,
    /// an integer range widened by half a step on each side (so that rounding gives every
    /// integer the same share), or the category indices `[0, n)`.
    pub(crate) fn internal_range(&self) -> Range<f64> {
        match self {
            Distribution::Uniform { low, high } => *low..*high,
            Distribution::LogUniform { low, high } => low.ln()..high.ln(),
            Distribution::Int { low, high, log } => {
                let (a, b) = (*low as f64 - 0.5, *high as f64 + 0.5);
                if *log {
                    a.ln()..b.ln()
                } else {
                    a..b
                }
            }
            Distribution::Categorical { values } => 0.0..values.len() as f64,
        }
    }

    /// The value at the internal coordinate `u` (clamped into the range).
    pub(crate) fn value_at(&self, u: f64) -> Value {
        match self {
            Distribution::Uniform { low, high } => Value::Float(u.clamp(*low, *high)),
            Distribution::LogUniform { low, high } => Value::Float(u.exp().clamp(*low, *high)),
            Distribution::Int { low, high, log } => {
                let x = if *log { u.exp() } else { u };
                Value::Integer((x.round() as i64).clamp(*low, *high))
            }
            Distribution::Categorical { values } => {
                let i = (u.max(0.0) as usize).min(values.len() - 1);
                values[i].clone()
            }
        }
    }

    /// The internal coordinate of `value`, inside `[start, end)`; `None` for a value this
    /// distribution cannot have produced.
    pub(crate) fn coordinate_of(&self, value: &Value) -> Option<f64> {
        let number = || match value {
            Value::Float(x) => Some(*x),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        };
        let u = match self {
            Distribution::Uniform { .. } => number()?,
            Distribution::LogUniform { .. } => number()?.ln(),
            Distribution::Int { log, .. } => {
                let i = value.as_integer()? as f64;
                if *log {
                    i.ln()
                } else {
                    i
                }
            }
            Distribution::Categorical { values } => {
                return values.iter().position(|v| v == value).map(|i| i as f64);
            }
        };
        let r = self.internal_range();
        if !u.is_finite() {
            return None;
        }
        Some(u.clamp(r.start, below(r.end)))
    }
}

/// The largest float below `x` (finite `x`): the top of a half-open range.
fn below(x: f64) -> f64 {
    if x > 0.0 {
        f64::from_bits(x.to_bits() - 1)
    } else if x < 0.0 {
        f64::from_bits(x.to_bits() + 1)
    } else {
        -f64::from_bits(1)
    }
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Walks a parsed space document, collecting parameters with their lines.
struct Reader<'a> {
    text: &'a str,
    file: &'a str,
    params: Vec<Param>,
}

impl Reader<'_> {
    fn line_of(&self, span: Option<Range<usize>>) -> usize {
        span.map_or(0, |s| line_column(self.text, s.start).0)
    }

    fn error(&self, line: usize, key: &str, message: impl Into<String>) -> TuneError {
        TuneError::Space {
            file: self.file.to_string(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A table of parameters, or of groups of them (`[train.epochs]` is the group `train`).
    fn group(&mut self, table: &dyn TableLike, prefix: &str) -> Result<(), TuneError> {
        for (name, item) in table.iter() {
            let key = format!("{prefix}{name}");
            let line = self.line_of(table.get_key_value(name).and_then(|(k, _)| k.span()));
            let Some(inner) = item.as_table_like() else {
                return Err(self.error(
                    line,
                    &key,
                    format!(
                        "expected a table with a `kind` (one of {}), e.g. [{key}] kind = \
                         \"uniform\", low = 0.0, high = 1.0; a fixed value goes in --set",
                        KINDS.join(", ")
                    ),
                ));
            };
            if inner.contains_key("kind") {
                let param = self.param(inner, &key, line)?;
                self.params.push(param);
            } else if inner.is_empty() {
                return Err(self.error(line, &key, "an empty table: expected a `kind`"));
            } else {
                self.group(inner, &format!("{key}."))?;
            }
        }
        Ok(())
    }

    fn param(&self, t: &dyn TableLike, key: &str, line: usize) -> Result<Param, TuneError> {
        for (field, item) in t.iter() {
            if !["kind", "low", "high", "log", "values"].contains(&field) {
                let at = self.line_of(item.span()).max(line);
                return Err(self.error(
                    at,
                    key,
                    format!("unknown field `{field}`; expected kind, low, high, log or values"),
                ));
            }
        }
        let field_line = |f: &str| {
            t.get_key_value(f)
                .and_then(|(k, _)| k.span())
                .map_or(line, |s| line_column(self.text, s.start).0)
        };
        let kind_item = t.get("kind").expect("checked by the caller");
        let kind = kind_item
            .as_str()
            .ok_or_else(|| self.error(field_line("kind"), key, "`kind` must be a string"))?;
        let allowed: &[&str] = match kind {
            "uniform" | "log_uniform" => &["kind", "low", "high"],
            "int" => &["kind", "low", "high", "log"],
            "categorical" => &["kind", "values"],
            other => {
                return Err(self.error(
                    field_line("kind"),
                    key,
                    format!(
                        "unknown kind `{other}`; expected one of {}",
                        KINDS.join(", ")
                    ),
                ))
            }
        };
        for (field, _) in t.iter() {
            if !allowed.contains(&field) {
                return Err(self.error(
                    field_line(field),
                    key,
                    format!(
                        "`{field}` does not apply to kind = \"{kind}\" (it takes {})",
                        allowed[1..].join(", ")
                    ),
                ));
            }
        }
        let origin = Origin {
            file: self.file.to_string(),
            line,
        };
        let distribution = match kind {
            "uniform" | "log_uniform" => {
                let low = self.real(t, "low", key, line)?;
                let high = self.real(t, "high", key, line)?;
                if low >= high {
                    return Err(self.error(
                        field_line("low"),
                        key,
                        format!("low {low} must be below high {high}"),
                    ));
                }
                if !(high - low).is_finite() {
                    return Err(self.error(
                        field_line("low"),
                        key,
                        format!("the range {low}..{high} is too wide to draw from"),
                    ));
                }
                if kind == "log_uniform" {
                    if low <= 0.0 {
                        return Err(self.error(
                            field_line("low"),
                            key,
                            format!("a log range must be above 0; low is {low}"),
                        ));
                    }
                    Distribution::LogUniform { low, high }
                } else {
                    Distribution::Uniform { low, high }
                }
            }
            "int" => {
                let low = self.integer(t, "low", key, line)?;
                let high = self.integer(t, "high", key, line)?;
                let log = match t.get("log") {
                    None => false,
                    Some(item) => item.as_bool().ok_or_else(|| {
                        self.error(field_line("log"), key, "`log` must be true or false")
                    })?,
                };
                if low > high {
                    return Err(self.error(
                        field_line("low"),
                        key,
                        format!("low {low} is above high {high}"),
                    ));
                }
                if log && low < 1 {
                    return Err(self.error(
                        field_line("low"),
                        key,
                        format!("a log range must be above 0; low is {low} (use low >= 1)"),
                    ));
                }
                Distribution::Int { low, high, log }
            }
            _ => Distribution::Categorical {
                values: self.values(t, key, line)?,
            },
        };
        Ok(Param {
            key: key.to_string(),
            distribution,
            origin,
        })
    }

    /// A numeric bound (integer or float, finite).
    fn real(
        &self,
        t: &dyn TableLike,
        field: &str,
        key: &str,
        line: usize,
    ) -> Result<f64, TuneError> {
        let (at, item) = self.field(t, field, key, line)?;
        let x = match item.as_value() {
            Some(toml_edit::Value::Float(f)) => *f.value(),
            Some(toml_edit::Value::Integer(i)) => *i.value() as f64,
            _ => {
                return Err(self.error(
                    at,
                    key,
                    format!("`{field}` must be a number, got {}", describe(item)),
                ))
            }
        };
        if !x.is_finite() {
            return Err(self.error(at, key, format!("`{field}` must be finite, got {x}")));
        }
        Ok(x)
    }

    /// An integer bound (a float with no fractional part is accepted).
    fn integer(
        &self,
        t: &dyn TableLike,
        field: &str,
        key: &str,
        line: usize,
    ) -> Result<i64, TuneError> {
        let (at, item) = self.field(t, field, key, line)?;
        match item.as_value() {
            Some(toml_edit::Value::Integer(i)) => Ok(*i.value()),
            Some(toml_edit::Value::Float(f))
                if f.value().fract() == 0.0 && f.value().abs() < 9.0e15 =>
            {
                Ok(*f.value() as i64)
            }
            _ => Err(self.error(
                at,
                key,
                format!(
                    "`{field}` of an int must be an integer, got {}",
                    describe(item)
                ),
            )),
        }
    }

    fn field<'t>(
        &self,
        t: &'t dyn TableLike,
        field: &str,
        key: &str,
        line: usize,
    ) -> Result<(usize, &'t Item), TuneError> {
        let (k, item) = t
            .get_key_value(field)
            .ok_or_else(|| self.error(line, key, format!("missing `{field}`")))?;
        Ok((self.line_of(k.span()).max(line), item))
    }

    fn values(&self, t: &dyn TableLike, key: &str, line: usize) -> Result<Vec<Value>, TuneError> {
        let (at, item) = self.field(t, "values", key, line)?;
        let Some(array) = item.as_array() else {
            return Err(self.error(
                at,
                key,
                format!("`values` must be an array, got {}", describe(item)),
            ));
        };
        if array.is_empty() {
            return Err(self.error(at, key, "`values` is empty: list at least one value"));
        }
        let mut values: Vec<Value> = Vec::with_capacity(array.len());
        for v in array.iter() {
            let value = plain_value(v).ok_or_else(|| {
                self.error(
                    at,
                    key,
                    format!(
                        "`values` holds {}: expected strings, numbers, booleans or arrays of them",
                        v.type_name()
                    ),
                )
            })?;
            if values.contains(&value) {
                return Err(self.error(at, key, format!("`values` lists {value} twice")));
            }
            values.push(value);
        }
        Ok(values)
    }
}

/// A TOML value as plain data; `None` for dates and tables, which a `--set` value cannot be.
fn plain_value(v: &toml_edit::Value) -> Option<Value> {
    Some(match v {
        toml_edit::Value::String(s) => Value::String(s.value().clone()),
        toml_edit::Value::Integer(i) => Value::Integer(*i.value()),
        toml_edit::Value::Float(f) if f.value().is_finite() => Value::Float(*f.value()),
        toml_edit::Value::Boolean(b) => Value::Boolean(*b.value()),
        toml_edit::Value::Array(a) => {
            Value::Array(a.iter().map(plain_value).collect::<Option<_>>()?)
        }
        _ => return None,
    })
}

fn describe(item: &Item) -> String {
    match item.as_value() {
        Some(toml_edit::Value::String(s)) => format!("the string {:?}", s.value()),
        Some(v) => v.type_name().to_string(),
        None => "a table".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SearchSpace, TuneError> {
        SearchSpace::parse(text, "space.toml")
    }

    fn error(text: &str) -> String {
        parse(text)
            .expect_err("the space should be refused")
            .to_string()
    }

    #[test]
    fn reads_every_kind_with_nested_and_quoted_keys() {
        let space = parse(
            "\"train.patience\" = { kind = \"categorical\", values = [5, 10] }\n\
             [lr]\nkind = \"log_uniform\"\nlow = 1e-4\nhigh = 1e-2\n\n\
             [batch_size]\nkind = \"int\"\nlow = 64\nhigh = 1024\nlog = true\n\n\
             [dropout]\nkind = \"uniform\"\nlow = 0\nhigh = 0.8\n\n\
             [train.epochs]\nkind = \"int\"\nlow = 5\nhigh = 50\n\n\
             [hidden_dims]\nkind = \"categorical\"\nvalues = [[600], [200, 200]]\n",
        )
        .unwrap();
        let keys: Vec<&str> = space.params.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "batch_size",
                "dropout",
                "hidden_dims",
                "lr",
                "train.epochs",
                "train.patience"
            ]
        );
        assert_eq!(
            space.get("lr").unwrap().distribution,
            Distribution::LogUniform {
                low: 1e-4,
                high: 1e-2
            }
        );
        assert_eq!(
            space.get("batch_size").unwrap().distribution,
            Distribution::Int {
                low: 64,
                high: 1024,
                log: true
            }
        );
        assert_eq!(
            space.get("dropout").unwrap().distribution,
            Distribution::Uniform {
                low: 0.0,
                high: 0.8
            }
        );
        assert_eq!(space.get("train.patience").unwrap().origin.line, 1);
        assert_eq!(space.get("lr").unwrap().origin.line, 2);
        assert_eq!(space.get("train.epochs").unwrap().origin.line, 18);
        let Distribution::Categorical { values } = &space.get("hidden_dims").unwrap().distribution
        else {
            panic!("categorical expected")
        };
        assert_eq!(values[1].to_string(), "[200, 200]");
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let cases = [
            (
                "[lr]\nkind = \"loguniform\"\nlow = 1\nhigh = 2\n",
                "space.toml:2: `lr`: unknown kind `loguniform`",
            ),
            (
                "\n[lr]\nkind = \"uniform\"\nlow = 0.5\nhigh = 0.1\n",
                "space.toml:4: `lr`: low 0.5 must be below high 0.1",
            ),
            (
                "[a]\nkind = \"int\"\nlow = 9\nhigh = 3\n",
                "space.toml:3: `a`: low 9 is above high 3",
            ),
            (
                "[lr]\nkind = \"log_uniform\"\nlow = 0.0\nhigh = 1.0\n",
                "space.toml:3: `lr`: a log range must be above 0",
            ),
            (
                "[n]\nkind = \"int\"\nlog = true\nlow = 0\nhigh = 8\n",
                "space.toml:4: `n`: a log range must be above 0",
            ),
            (
                "[c]\nkind = \"categorical\"\nvalues = []\n",
                "space.toml:3: `c`: `values` is empty",
            ),
            (
                "[lr]\nkind = \"uniform\"\nlow = \"small\"\nhigh = 1.0\n",
                "space.toml:3: `lr`: `low` must be a number, got the string \"small\"",
            ),
            (
                "[lr]\nkind = \"uniform\"\nhigh = 1.0\n",
                "space.toml:1: `lr`: missing `low`",
            ),
            (
                "[n]\nkind = \"int\"\nlow = 1.5\nhigh = 4\n",
                "space.toml:3: `n`: `low` of an int must be an integer",
            ),
            (
                "[lr]\nkind = \"uniform\"\nlow = 0\nhigh = 1\nlog = true\n",
                "space.toml:5: `lr`: `log` does not apply to kind = \"uniform\"",
            ),
            (
                "[lr]\nkind = \"uniform\"\nlow = 0\nhihg = 1\n",
                "space.toml:4: `lr`: unknown field `hihg`",
            ),
            (
                "lr = 0.01\n",
                "space.toml:1: `lr`: expected a table with a `kind`",
            ),
            (
                "[train.epochs]\nkind = \"int\"\nlow = 1\nhigh = nan\n",
                "space.toml:4: `train.epochs`: `high` of an int must be an integer",
            ),
            (
                "[c]\nkind = \"categorical\"\nvalues = [1, 1]\n",
                "space.toml:3: `c`: `values` lists 1 twice",
            ),
        ];
        for (text, expected) in cases {
            let got = error(text);
            assert!(
                got.starts_with(expected),
                "for {text:?}:\n got {got}\nwant {expected}"
            );
        }
        let syntax = error("[lr]\nkind = = 1\n");
        assert!(syntax.starts_with("space.toml:2: column"), "{syntax}");
    }

    #[test]
    fn check_values_names_the_key_its_line_and_the_value() {
        let space = parse("[lr]\nkind = \"uniform\"\nlow = 0\nhigh = 1\n\n[latnet_dim]\nkind = \"int\"\nlow = 8\nhigh = 64\n").unwrap();
        let err = space
            .check_values(|key, _| {
                if key == "lr" {
                    Ok(())
                } else {
                    Err(format!("unknown key `{key}`"))
                }
            })
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "space.toml:6: `latnet_dim`: unknown key `latnet_dim` (with latnet_dim = 8)"
        );
    }

    #[test]
    fn merging_refuses_a_key_declared_twice() {
        let a =
            SearchSpace::parse("[lr]\nkind = \"uniform\"\nlow = 0\nhigh = 1\n", "a.toml").unwrap();
        let b = SearchSpace::parse("\n[lr]\nkind = \"uniform\"\nlow = 0\nhigh = 1\n", "b.toml")
            .unwrap();
        let err = a.merge(b).unwrap_err().to_string();
        assert_eq!(err, "b.toml:2: `lr`: already declared at a.toml:1");
    }

    #[test]
    fn coordinates_round_trip_and_stay_in_range() {
        let dists = [
            Distribution::Uniform {
                low: -1.0,
                high: 2.0,
            },
            Distribution::LogUniform {
                low: 1e-4,
                high: 1e-2,
            },
            Distribution::Int {
                low: 64,
                high: 1024,
                log: true,
            },
            Distribution::Int {
                low: -3,
                high: 3,
                log: false,
            },
            Distribution::Categorical {
                values: vec![Value::String("a".into()), Value::Integer(2)],
            },
        ];
        for d in &dists {
            let r = d.internal_range();
            // Every coordinate the sampler can draw: [start, end).
            for i in 0..100 {
                let u = r.start + (r.end - r.start) * i as f64 / 100.0;
                let v = d.value_at(u);
                let c = d.coordinate_of(&v).expect("a value it produced");
                assert!(r.start <= c && c < r.end, "{d:?}: {c} outside {r:?}");
                assert_eq!(d.value_at(c), v, "{d:?} at {u}");
            }
        }
        let log_int = &dists[2];
        assert_eq!(
            log_int.value_at(log_int.internal_range().start),
            Value::Integer(64)
        );
        let top = below(log_int.internal_range().end);
        assert_eq!(log_int.value_at(top), Value::Integer(1024));
    }
}

//! The configuration mechanism shared by every trained model (STYLE.md "Inside a model",
//! MODELS.md: "every default below is a config value; every config value is validated before
//! training (name the bad key and the allowed range)").
//!
//! # One TOML document per run
//!
//! A run's configuration is one TOML document: the model's keys at the top level, and the
//! trainer's keys in a `[train]` table:
//!
//! ```toml
//! model = "multivae"      # optional; checked against the model being configured
//! preset = "recbole"      # picks the defaults below it; "original" when absent
//! latent_dim = 64
//! lr = 1e-3
//!
//! [train]
//! epochs = 300
//! patience = 10
//! ```
//!
//! # Resolution order ([`resolve`])
//!
//! 1. the optional TOML file;
//! 2. `--set key=value` overrides, applied in order over the file (`train.epochs=5` for a trainer
//!    key). The value is parsed as a TOML literal (`5`, `1e-3`, `true`, `[10, 20]`, `"x"`); when it
//!    is not one it is taken as a bare string, so `--set preset=recbole` works unquoted;
//! 3. the preset is read first (from the overrides, else the file, else `"original"`), and its
//!    defaults fill every key neither the file nor the overrides set;
//! 4. any key the model (or trainer) does not have is an error naming the key and listing the
//!    known ones; a value of the wrong type is an error naming the key; then
//!    [`ModelConfig::check`] and [`TrainerConfig::check`] validate ranges.
//!
//! The resolved [`RunConfig`] serialises back to a complete TOML document
//! ([`RunConfig::to_toml`]) that is written into the run directory and, read back through
//! [`resolve`], gives the same configuration.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::ModelError;

/// A model's configuration: a serde struct with `#[serde(deny_unknown_fields)]` whose defaults
/// depend on a named preset (`"original"`: the paper's reference code, `"recbole"`: RecBole's
/// defaults, which the paper's numbers were produced with).
pub trait ModelConfig: Serialize + DeserializeOwned + Clone {
    /// The registry name of the model (`"multivae"`), accepted in the document's `model` key.
    const MODEL: &'static str;

    /// Keys besides `train.seed` that a run's `--seed` sets (e.g. a model's `init_seed`).
    const SEED_KEYS: &'static [&'static str] = &[];

    /// The full default configuration of a preset. Its `preset` field must hold `preset`.
    fn preset(preset: Preset) -> Self;

    /// The conditioning kind and fused dimension of a conditioned model (MODELS.md
    /// "Conditioning"); `None` for a model that takes no item features or is configured
    /// without them.
    fn conditioning(&self) -> Option<(crate::conditioning::ConditioningKind, usize)> {
        None
    }

    /// Validate every value; the error names the first bad key and its allowed range.
    fn check(&self) -> Result<(), ModelError>;

    /// The trainer's defaults for this configuration (e.g. RecBole trains for up to 300 epochs,
    /// Liang et al.'s notebook for 200).
    fn trainer_defaults(&self) -> TrainerConfig {
        TrainerConfig::default()
    }
}

/// Which reference implementation's defaults a configuration starts from (MODELS.md: the
/// original is the default, RecBole's settings must be reachable). Written in TOML as
/// `preset = "original"` or `preset = "recbole"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The paper's own code / the original authors' settings.
    #[default]
    Original,
    /// RecBole 1.2.1's defaults (the tool the paper's numbers came from).
    Recbole,
}

impl Preset {
    /// Every preset, the default first.
    pub const ALL: [Preset; 2] = [Preset::Original, Preset::Recbole];

    /// The preset's name in config files.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Original => "original",
            Preset::Recbole => "recbole",
        }
    }

    /// The preset of a name (`None` for an unknown one).
    pub fn from_name(name: &str) -> Option<Self> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The generic trainer's settings (the `[train]` table).
///
/// Model selection follows RecBole (EVALUATION.md "Protocol", PEERS.md): evaluate on validation
/// every `eval_every` epochs, compare `valid_metric` rounded to `metric_decimals` decimals, count
/// an evaluation at least as good as the best as an improvement (RecBole's `value >= best`, so a
/// tie moves the best checkpoint forward), and stop once more than `patience` evaluations in a
/// row failed to improve (RecBole's `cur_step > stopping_step`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Maximum number of epochs (>= 1).
    pub epochs: usize,
    /// Evaluations without improvement tolerated before stopping; 0 disables early stopping.
    pub patience: usize,
    /// Evaluate on validation every this many epochs (>= 1); the last epoch is always evaluated.
    pub eval_every: usize,
    /// The metric that selects the best checkpoint, `name@k` (`ndcg@10`); its `k` must be in `ks`.
    pub valid_metric: String,
    /// Decimals the validation metric is rounded to before comparing (RecBole: 4); 0..=15.
    pub metric_decimals: u32,
    /// Users per evaluation batch (>= 1).
    pub eval_batch_size: usize,
    /// Cut-offs evaluated on validation (each >= 1).
    pub ks: Vec<usize>,
    /// Seed of the trainer's random stream (shuffling, dropout, noise).
    pub seed: u64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            epochs: 300,
            patience: 10,
            eval_every: 1,
            valid_metric: "ndcg@10".to_string(),
            metric_decimals: 4,
            eval_batch_size: 1024,
            ks: vec![10],
            seed: 2020,
        }
    }
}

/// The metric names the evaluator reports (EVALUATION.md).
const METRIC_NAMES: &[&str] = &["hit", "mrr", "recall", "recall_liang", "precision", "ndcg"];

impl TrainerConfig {
    /// Validate every value; the error names the key (as `train.<key>`).
    pub fn check(&self) -> Result<(), ModelError> {
        if self.epochs == 0 {
            return Err(ModelError::config("train.epochs", "must be at least 1"));
        }
        if self.eval_every == 0 {
            return Err(ModelError::config("train.eval_every", "must be at least 1"));
        }
        if self.metric_decimals > 15 {
            return Err(ModelError::config(
                "train.metric_decimals",
                format!("must be in 0..=15, got {}", self.metric_decimals),
            ));
        }
        if self.eval_batch_size == 0 {
            return Err(ModelError::config(
                "train.eval_batch_size",
                "must be at least 1",
            ));
        }
        if self.ks.is_empty() || self.ks.contains(&0) {
            return Err(ModelError::config(
                "train.ks",
                "must be a non-empty list of cut-offs, each at least 1",
            ));
        }
        let (name, k) = self.valid_metric_parts().ok_or_else(|| {
            ModelError::config(
                "train.valid_metric",
                format!(
                    "expected `name@k` with name one of {METRIC_NAMES:?}, got `{}`",
                    self.valid_metric
                ),
            )
        })?;
        if !METRIC_NAMES.contains(&name) {
            return Err(ModelError::config(
                "train.valid_metric",
                format!("unknown metric `{name}`, expected one of {METRIC_NAMES:?}"),
            ));
        }
        if !self.ks.contains(&k) {
            return Err(ModelError::config(
                "train.valid_metric",
                format!("its cut-off {k} is not among train.ks {:?}", self.ks),
            ));
        }
        Ok(())
    }

    /// `valid_metric` split into its name and cut-off.
    pub fn valid_metric_parts(&self) -> Option<(&str, usize)> {
        let (name, k) = self.valid_metric.split_once('@')?;
        Some((name, k.parse().ok()?))
    }

    /// `value` rounded to `metric_decimals` decimals, as RecBole rounds before comparing.
    pub fn round_metric(&self, value: f64) -> f64 {
        let scale = 10f64.powi(self.metric_decimals as i32);
        (value * scale).round() / scale
    }
}

/// A fully resolved run configuration: the model's and the trainer's.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig<T> {
    pub model: T,
    pub train: TrainerConfig,
}

impl<T: ModelConfig> RunConfig<T> {
    /// The complete TOML document (`model = ...`, the model's keys, then `[train]`).
    pub fn to_toml(&self) -> Result<String, ModelError> {
        let mut table = Table::new();
        table.insert("model".into(), Value::String(T::MODEL.into()));
        let model = Table::try_from(&self.model)
            .map_err(|e| ModelError::config("model", format!("cannot serialise: {e}")))?;
        table.extend(model);
        let train = Table::try_from(&self.train)
            .map_err(|e| ModelError::config("train", format!("cannot serialise: {e}")))?;
        table.insert("train".into(), Value::Table(train));
        toml::to_string_pretty(&table)
            .map_err(|e| ModelError::config("model", format!("cannot serialise: {e}")))
    }

    /// Write [`RunConfig::to_toml`] to `path` atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        Ok(encore_io::write_bytes(path, self.to_toml()?.as_bytes())?)
    }
}

/// Read the document's `model` key, if any, so that a caller can pick the model type before
/// resolving (`encore train --config multivae.toml`).
pub fn model_name_in(file: &Path) -> Result<Option<String>, ModelError> {
    let table = read_table(file)?;
    match table.get("model") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ModelError::config(
            "model",
            format!("expected a string, got {}", other.type_str()),
        )),
    }
}

fn read_table(file: &Path) -> Result<Table, ModelError> {
    let text = std::fs::read_to_string(file).map_err(|e| ModelError::io(file, e))?;
    text.parse::<Table>()
        .map_err(|e| ModelError::format(file, format!("not a valid TOML document: {e}")))
}

/// Parse one `--set key=value` override into a dotted key and a TOML value.
pub fn parse_set(set: &str) -> Result<(Vec<String>, Value), ModelError> {
    let (key, raw) = set
        .split_once('=')
        .ok_or_else(|| ModelError::config(set, "an override must have the form `key=value`"))?;
    let key = key.trim();
    let path: Vec<String> = key.split('.').map(|p| p.trim().to_string()).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ModelError::config(key, "empty key in `--set`"));
    }
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()));
    Ok((path, value))
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), ModelError> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = table;
    for (depth, p) in parents.iter().enumerate() {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(ModelError::config(
                    path[..=depth].join("."),
                    "is not a table, cannot set a key inside it",
                ))
            }
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// Resolve a run configuration from an optional TOML file and `--set key=value` overrides (see
/// the module documentation for the order and the errors).
pub fn resolve<T: ModelConfig>(
    file: Option<&Path>,
    sets: &[String],
) -> Result<RunConfig<T>, ModelError> {
    let mut user = match file {
        Some(f) => read_table(f)?,
        None => Table::new(),
    };
    for set in sets {
        let (path, value) = parse_set(set)?;
        set_path(&mut user, &path, value)?;
    }
    resolve_table(user)
}

/// [`resolve`] from an already parsed document.
pub fn resolve_table<T: ModelConfig>(mut user: Table) -> Result<RunConfig<T>, ModelError> {
    if let Some(model) = user.remove("model") {
        match model {
            Value::String(s) if s == T::MODEL => {}
            other => {
                return Err(ModelError::config(
                    "model",
                    format!("this configuration is for `{}`, got {other}", T::MODEL),
                ))
            }
        }
    }
    let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
    let preset = match user.get("preset") {
        None => Preset::default(),
        Some(Value::String(s)) => Preset::from_name(s).ok_or_else(|| {
            ModelError::config("preset", format!("expected one of {names:?}, got `{s}`"))
        })?,
        Some(other) => {
            return Err(ModelError::config(
                "preset",
                format!("expected one of {names:?}, got {other}"),
            ))
        }
    };
    let defaults = T::preset(preset);
    let train_user = match user.remove("train") {
        None => Table::new(),
        Some(Value::Table(t)) => t,
        Some(other) => {
            return Err(ModelError::config(
                "train",
                format!("expected a table, got {}", other.type_str()),
            ))
        }
    };
    let train_defaults = defaults.trainer_defaults();
    let model: T = merge_into(&defaults, &user, "")?;
    let train: TrainerConfig = merge_into(&train_defaults, &train_user, "train.")?;
    model.check()?;
    train.check()?;
    Ok(RunConfig { model, train })
}

/// Overlay `user` on `defaults` (serialised to a table), refusing unknown keys and naming the
/// key whose value has the wrong type.
fn merge_into<T: Serialize + DeserializeOwned>(
    defaults: &T,
    user: &Table,
    prefix: &str,
) -> Result<T, ModelError> {
    let base = Table::try_from(defaults)
        .map_err(|e| ModelError::config(prefix, format!("cannot serialise defaults: {e}")))?;
    for (key, value) in user {
        if !base.contains_key(key) && !accepts_key::<T>(&base, key, value) {
            let known: Vec<&str> = base.keys().map(String::as_str).collect();
            return Err(ModelError::config(
                format!("{prefix}{key}"),
                format!("unknown key; known keys are {known:?}"),
            ));
        }
    }
    let mut merged = base.clone();
    for (k, v) in user {
        merged.insert(k.clone(), v.clone());
    }
    match Value::Table(merged).try_into::<T>() {
        Ok(t) => Ok(t),
        Err(err) => {
            // Find the key at fault: overlay the user's keys one at a time.
            for (k, v) in user {
                let mut one = base.clone();
                one.insert(k.clone(), v.clone());
                if let Err(e) = Value::Table(one).try_into::<T>() {
                    let expected = base
                        .get(k)
                        .map(|d| format!(" (the default is {d})"))
                        .unwrap_or_default();
                    return Err(ModelError::config(
                        format!("{prefix}{k}"),
                        format!("bad value {v}: {}{expected}", e.message().trim()),
                    ));
                }
            }
            Err(ModelError::config(prefix, err.message().trim().to_string()))
        }
    }
}

/// Whether `T` has the field `key` although its serialised defaults leave it out (an optional
/// key whose default is `None`, which TOML cannot write, such as the VAEs' `reverse_steps`):
/// `T` takes the key with `value`, or refuses the value rather than the key.
fn accepts_key<T: DeserializeOwned>(base: &Table, key: &str, value: &Value) -> bool {
    let mut one = base.clone();
    one.insert(key.to_string(), value.clone());
    match Value::Table(one).try_into::<T>() {
        Ok(_) => true,
        Err(e) => !e.message().contains("unknown field"),
    }
}

/// Check helper for model configs: `value` must lie in `lo..=hi`.
pub fn check_range<V: PartialOrd + std::fmt::Display>(
    key: &str,
    value: V,
    lo: V,
    hi: V,
) -> Result<(), ModelError> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(ModelError::config(
            key,
            format!("must be in [{lo}, {hi}], got {value}"),
        ))
    }
}

/// Check helper for model configs: `value` must be finite and > 0.
pub fn check_positive_finite(key: &str, value: f64) -> Result<(), ModelError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ModelError::config(
            key,
            format!("must be a finite number > 0, got {value}"),
        ))
    }
}

/// Check helper for model configs: `value` must be finite and >= 0.
pub fn check_nonnegative_finite(key: &str, value: f64) -> Result<(), ModelError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ModelError::config(
            key,
            format!("must be a finite number >= 0, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Toy {
        preset: Preset,
        dim: usize,
        lr: f64,
        hidden: Vec<usize>,
        flag: bool,
        /// Optional, absent from the serialised defaults.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start: Option<usize>,
    }

    impl ModelConfig for Toy {
        const MODEL: &'static str = "toy";
        fn preset(preset: Preset) -> Self {
            let recbole = preset == Preset::Recbole;
            Toy {
                preset,
                dim: if recbole { 64 } else { 200 },
                lr: 1e-3,
                hidden: vec![600],
                flag: recbole,
                start: None,
            }
        }
        fn check(&self) -> Result<(), ModelError> {
            check_range("dim", self.dim, 1, 10_000)?;
            check_range("lr", self.lr, 0.0, 1.0)
        }
        fn trainer_defaults(&self) -> TrainerConfig {
            TrainerConfig {
                epochs: if self.preset == Preset::Recbole {
                    300
                } else {
                    200
                },
                ..TrainerConfig::default()
            }
        }
    }

    fn sets(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn key_of(e: ModelError) -> String {
        match e {
            ModelError::Config { key, .. } => key,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn defaults_come_from_the_preset_picked_first() {
        let c: RunConfig<Toy> = resolve(None, &[]).unwrap();
        assert_eq!(c.model, Toy::preset(Preset::Original));
        assert_eq!(c.train.epochs, 200);
        // The preset set after another key still supplies the defaults of the other keys.
        let c: RunConfig<Toy> = resolve(None, &sets(&["lr=0.01", "preset=recbole"])).unwrap();
        assert_eq!(c.model.dim, 64);
        assert!(c.model.flag);
        assert_eq!(c.model.lr, 0.01);
        assert_eq!(c.train.epochs, 300);
    }

    /// A key the defaults leave out (`None`) can still be set, and a bad value for it is
    /// named as such, not as an unknown key.
    #[test]
    fn optional_keys_can_be_set() {
        let c: RunConfig<Toy> = resolve(None, &sets(&["start=7"])).unwrap();
        assert_eq!(c.model.start, Some(7));
        let e = resolve::<Toy>(None, &sets(&["start=-1"])).unwrap_err();
        assert!(e.to_string().contains("bad value"), "{e}");
        assert_eq!(key_of(e), "start");
        let e = resolve::<Toy>(None, &sets(&["stat=7"])).unwrap_err();
        assert!(e.to_string().contains("unknown key"), "{e}");
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("toy.toml");
        std::fs::write(
            &f,
            "model = \"toy\"\npreset = \"recbole\"\ndim = 32\n[train]\nepochs = 7\nks = [5, 10]\n",
        )
        .unwrap();
        let c: RunConfig<Toy> = resolve(
            Some(&f),
            &sets(&["dim=16", "train.patience=3", "hidden=[8, 4]"]),
        )
        .unwrap();
        assert_eq!(c.model.dim, 16);
        assert_eq!(c.model.hidden, vec![8, 4]);
        assert_eq!(c.train.epochs, 7);
        assert_eq!(c.train.patience, 3);
        assert_eq!(c.train.ks, vec![5, 10]);
        assert_eq!(model_name_in(&f).unwrap().as_deref(), Some("toy"));
    }

    #[test]
    fn round_trip_through_toml() {
        let c: RunConfig<Toy> =
            resolve(None, &sets(&["preset=recbole", "lr=0.005", "train.seed=7"])).unwrap();
        let text = c.to_toml().unwrap();
        let back: RunConfig<Toy> = resolve_table(text.parse::<Table>().unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn errors_name_the_key() {
        let e = resolve::<Toy>(None, &sets(&["dimm=3"])).unwrap_err();
        assert_eq!(key_of(e), "dimm");
        let e = resolve::<Toy>(None, &sets(&["train.epoch=3"])).unwrap_err();
        assert_eq!(key_of(e), "train.epoch");
        let e = resolve::<Toy>(None, &sets(&["dim=abc"])).unwrap_err();
        assert_eq!(key_of(e), "dim");
        let e = resolve::<Toy>(None, &sets(&["dim=0"])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`dim`") && msg.contains("[1, 10000]"), "{msg}");
        let e = resolve::<Toy>(None, &sets(&["preset=paper"])).unwrap_err();
        assert_eq!(key_of(e), "preset");
        let e = resolve::<Toy>(None, &sets(&["train.valid_metric=ndcg@20"])).unwrap_err();
        assert_eq!(key_of(e), "train.valid_metric");
        let e = resolve::<Toy>(None, &sets(&["train.epochs=0"])).unwrap_err();
        assert_eq!(key_of(e), "train.epochs");
        let e = resolve::<Toy>(None, &sets(&["model=bpr"])).unwrap_err();
        assert_eq!(key_of(e), "model");
        let e = resolve::<Toy>(None, &sets(&["novalue"])).unwrap_err();
        assert_eq!(key_of(e), "novalue");
    }

    #[test]
    fn bad_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "dim = = 3\n").unwrap();
        let e = resolve::<Toy>(Some(&f), &[]).unwrap_err();
        assert!(e.to_string().contains("bad.toml"), "{e}");
    }

    #[test]
    fn set_values_parse_as_toml_else_string() {
        assert_eq!(parse_set("a=5").unwrap().1, Value::Integer(5));
        assert_eq!(parse_set("a=1e-3").unwrap().1, Value::Float(1e-3));
        assert_eq!(
            parse_set("a = recbole").unwrap().1,
            Value::String("recbole".into())
        );
        assert_eq!(
            parse_set("a=\"x y\"").unwrap().1,
            Value::String("x y".into())
        );
        assert_eq!(parse_set("t.k=true").unwrap().0, vec!["t", "k"]);
    }

    #[test]
    fn metric_rounding_is_recbole_s() {
        let t = TrainerConfig::default();
        assert_eq!(t.round_metric(0.123_449), 0.1234);
        assert_eq!(t.round_metric(0.123_46), 0.1235);
        assert_eq!(t.valid_metric_parts(), Some(("ndcg", 10)));
    }
}

//! The model side of multi-modal user conditioning for MultiVAE-C and MacridVAE-C (MODELS.md
//! "Conditioning", SPEC §3, paper §3.2.1 and §4.3.3): checking the features against the
//! configuration, and the conditioning block of a layer's product. The features themselves,
//! and each user's vector `c_u`, are [`Conditioning`] in `encore-core`.

pub use encore_core::conditioning::{Conditioning, ConditioningKind, CONDITIONING_FILE};
use encore_core::ModelError;

/// Serde default of the `cond_dim` config key: the 128 dimensions SPEC §3 fuses to.
pub(crate) fn default_dim() -> usize {
    128
}

/// Check `cond_dim` (the kind is checked by its type when the config is parsed).
pub(crate) fn check_config(cond_dim: usize) -> Result<(), ModelError> {
    encore_core::config::check_range("cond_dim", cond_dim, 1, 1 << 16)
}

/// The width the conditioning adds to the model's layers: `cond_dim`, or 0 for `none`.
pub(crate) fn width(kind: ConditioningKind, cond_dim: usize) -> usize {
    if kind == ConditioningKind::None {
        0
    } else {
        cond_dim
    }
}

/// The conditioning of a configuration, as [`encore_core::config::ModelConfig::conditioning`]
/// reports it: `None` for `none`.
pub(crate) fn reported(
    kind: ConditioningKind,
    cond_dim: usize,
) -> Option<(ConditioningKind, usize)> {
    (kind != ConditioningKind::None).then_some((kind, cond_dim))
}

/// Check the features given to a model against its configuration (see
/// `MultiVae::with_conditioning`).
pub(crate) fn check_for_model(
    kind: ConditioningKind,
    cond_dim: usize,
    n_items: usize,
    cond: Option<&Conditioning>,
) -> Result<(), ModelError> {
    match (kind, cond) {
        (ConditioningKind::None, None) => Ok(()),
        (ConditioningKind::None, Some(_)) => Err(ModelError::config(
            "conditioning",
            "is `none`, but conditioning features were given (set it to the fusion kind they \
             come from)",
        )),
        (kind, None) => Err(ModelError::config(
            "conditioning",
            format!("is `{kind}`: the model needs conditioning features, none were given"),
        )),
        (_, Some(c)) => {
            if c.dim() != cond_dim {
                return Err(ModelError::config(
                    "cond_dim",
                    format!(
                        "is {cond_dim}, but the conditioning features have {} dimensions",
                        c.dim()
                    ),
                ));
            }
            if c.n_items() != n_items {
                return Err(ModelError::Input(format!(
                    "the conditioning features cover {} items, the catalogue has {n_items}",
                    c.n_items()
                )));
            }
            Ok(())
        }
    }
}

/// What both conditioned models check before building their weights: a non-empty catalogue
/// and features that fit the configuration ([`check_for_model`]). Returns the width the
/// conditioning adds to the conditioned layers ([`width`]).
pub(crate) fn prepare_model(
    kind: ConditioningKind,
    cond_dim: usize,
    n_items: usize,
    cond: Option<&Conditioning>,
) -> Result<usize, ModelError> {
    if n_items == 0 {
        return Err(ModelError::Input("the catalogue is empty".into()));
    }
    check_for_model(kind, cond_dim, n_items, cond)?;
    Ok(width(kind, cond_dim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_model_checks_name_the_key() {
        assert!(check_config(128).is_ok());
        match check_config(0).unwrap_err() {
            ModelError::Config { key, .. } => assert_eq!(key, "cond_dim"),
            other => panic!("{other}"),
        }
        let c = Conditioning::new(4, 2, vec![0.5; 8], vec![true, true, false, true]).unwrap();
        let (none, audio) = (ConditioningKind::None, ConditioningKind::Audio);
        assert!(check_for_model(none, 2, 4, None).is_ok());
        assert!(check_for_model(audio, 2, 4, Some(&c)).is_ok());
        assert!(check_for_model(none, 2, 4, Some(&c)).is_err());
        assert!(check_for_model(audio, 2, 4, None).is_err());
        assert!(check_for_model(audio, 3, 4, Some(&c)).is_err());
        assert!(check_for_model(audio, 2, 5, Some(&c)).is_err());
    }
}

//! The model manifest: `manifest.json` next to `model.onnx`.
//!
//! The manifest is what the release key signs; it names the model's sha256, so one signature covers both files.
//! Unknown fields are tolerated (the training pipeline adds metrics, dates, a model card path, …), the fields below
//! are required and checked.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name, e.g. `deterioration`. Every prediction carries it.
    pub name: String,
    /// Model version, e.g. `1.0.0`. Every prediction carries it.
    pub version: String,
    /// Lower-case hex sha256 of `model.onnx`.
    pub sha256: String,
    /// ONNX default-domain opset the model was exported with; checked against the model when present.
    #[serde(default)]
    pub opset: Option<i64>,
    /// The single input: `{"name": "features", "shape": [null, F], "dtype": "float32"}`.
    pub input: InputSpec,
    /// The output used: `{"name": "probability", "shape": [batch, 1]}`.
    pub output: OutputSpec,
    /// Names of the F input columns, in order. The edge's feature extraction must produce exactly this layout.
    /// Each entry is a name, or an object with a `name` (and any other fields, e.g. `unit`, `description`).
    /// Also read from `features` (the training pipeline writes `"features": [{"name", "unit"}, ...]`).
    #[serde(alias = "features", deserialize_with = "feature_names")]
    pub feature_names: Vec<String>,
    /// The operating point the pipeline chose (`decision_threshold`, a probability in 0..1), if any. Signed with
    /// the rest of the manifest, so the edge may act on it.
    #[serde(default)]
    pub decision_threshold: Option<f64>,
    /// A stricter operating point for raising an alarm (`alarm_threshold`, a probability in 0..1), if the pipeline
    /// chose one; without it an alarm uses `decision_threshold`. Signed with the rest of the manifest.
    #[serde(default)]
    pub alarm_threshold: Option<f64>,
    /// What the model predicts, in words (`outcome`), if given; carried on every prediction.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// A `feature_names` entry: `"hr_last"` or `{"name": "hr_last", "unit": "/min", ...}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum FeatureName {
    Plain(String),
    Described { name: String },
}

fn feature_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<FeatureName>::deserialize(d)?;
    Ok(names
        .into_iter()
        .map(|n| match n {
            FeatureName::Plain(name) | FeatureName::Described { name } => name,
        })
        .collect())
}

/// The model input as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<Option<Dim>>,
    pub dtype: String,
}

/// The model output as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    pub name: String,
    pub shape: Vec<Option<Dim>>,
    #[serde(default)]
    pub dtype: Option<String>,
}

/// One dimension of a declared shape: a number, or a symbol such as `"batch"`. `null` (no dimension given) is
/// `None` around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Symbol(String),
}

/// Formats a shape the way the errors print it: `[batch, 8]`, `[?, 6]`.
pub(crate) struct ShapeDisplay<'a>(pub &'a [Option<Dim>]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match d {
                Some(Dim::Fixed(n)) => write!(f, "{n}")?,
                Some(Dim::Symbol(s)) => f.write_str(s)?,
                None => f.write_str("?")?,
            }
        }
        f.write_str("]")
    }
}

impl Manifest {
    /// Parses and validates the manifest bytes (call this only on bytes whose signature has been verified).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, LoadError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| LoadError::BadManifest(format!("not a manifest: {e}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Number of input features F.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// The fixed batch size the manifest declares, if any (most exports leave it symbolic).
    pub fn fixed_batch(&self) -> Option<usize> {
        match self.input.shape.first() {
            Some(Some(Dim::Fixed(n))) => usize::try_from(*n).ok(),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::BadManifest(m));
        if let Some(t) = self.decision_threshold
            && !(t.is_finite() && t > 0.0 && t < 1.0)
        {
            return bad(format!(
                "decision_threshold {t} must be a probability in (0, 1)"
            ));
        }
        if let Some(t) = self.alarm_threshold
            && !(t.is_finite() && t > 0.0 && t < 1.0)
        {
            return bad(format!(
                "alarm_threshold {t} must be a probability in (0, 1)"
            ));
        }
        if self.outcome.as_ref().is_some_and(|o| o.len() > 512) {
            return bad("outcome must be at most 512 bytes".into());
        }
        if self.name.trim().is_empty()
            || self.name.len() > 128
            || self.name.chars().any(char::is_control)
        {
            return bad(format!(
                "name {:?} must be 1-128 printable characters",
                self.name
            ));
        }
        if self.version.trim().is_empty()
            || self.version.len() > 64
            || self.version.chars().any(char::is_control)
        {
            return bad(format!(
                "version {:?} must be 1-64 printable characters",
                self.version
            ));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return bad(format!(
                "sha256 {:?} must be 64 lower-case hex digits",
                self.sha256
            ));
        }
        if self.input.dtype != "float32" {
            return bad(format!(
                "input dtype {:?} is not supported (only float32)",
                self.input.dtype
            ));
        }
        if let Some(dt) = &self.output.dtype
            && dt != "float32"
        {
            return bad(format!(
                "output dtype {dt:?} is not supported (only float32)"
            ));
        }
        if self.feature_names.is_empty() {
            return bad("feature_names is empty".to_string());
        }
        let mut seen = std::collections::HashSet::new();
        for name in &self.feature_names {
            if !seen.insert(name.as_str()) {
                return bad(format!("feature name {name:?} appears twice"));
            }
        }
        let f = self.n_features();
        // The input must be [batch, F] with F equal to the number of feature names.
        match self.input.shape.as_slice() {
            [batch, Some(Dim::Fixed(n))] if *n as usize == f => {
                if let Some(Dim::Fixed(0)) = batch {
                    return bad("input batch dimension is 0".to_string());
                }
            }
            _ => {
                return Err(LoadError::ShapeMismatch {
                    tensor: format!("manifest input {:?}", self.input.name),
                    expected: format!("[batch, {f}] ({f} feature names)"),
                    found: ShapeDisplay(&self.input.shape).to_string(),
                });
            }
        }
        // The output must be [batch, 1]: one probability per row.
        match self.output.shape.as_slice() {
            [_, Some(Dim::Fixed(1))] => {}
            _ => {
                return Err(LoadError::ShapeMismatch {
                    tensor: format!("manifest output {:?}", self.output.name),
                    expected: "[batch, 1]".to_string(),
                    found: ShapeDisplay(&self.output.shape).to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(shape: &str, features: &str) -> String {
        format!(
            r#"{{"name":"m","version":"1","sha256":"{}","opset":14,
            "input":{{"name":"features","shape":{shape},"dtype":"float32"}},
            "output":{{"name":"probability","shape":["batch",1]}},
            "feature_names":{features},"model_card":"tolerated"}}"#,
            "ab".repeat(32)
        )
    }

    #[test]
    fn accepts_the_contract_and_tolerates_extra_fields() {
        let m =
            Manifest::parse(manifest_json("[null, 2]", r#"["a","b"]"#).as_bytes()).expect("valid");
        assert_eq!(m.n_features(), 2);
        assert_eq!(m.fixed_batch(), None);
        let m = Manifest::parse(manifest_json(r#"["batch", 2]"#, r#"["a","b"]"#).as_bytes())
            .expect("valid");
        assert_eq!(m.input.shape[0], Some(Dim::Symbol("batch".into())));
        let m = Manifest::parse(manifest_json("[1, 2]", r#"["a","b"]"#).as_bytes()).expect("valid");
        assert_eq!(m.fixed_batch(), Some(1));
    }

    #[test]
    fn feature_names_may_be_described_objects() {
        let json = manifest_json(
            "[null, 2]",
            r#"[{"name":"hr_last","unit":"/min","description":"newest"},"rr_last"]"#,
        );
        let m = Manifest::parse(json.as_bytes()).expect("valid");
        assert_eq!(
            m.feature_names,
            vec!["hr_last".to_string(), "rr_last".to_string()]
        );
    }

    #[test]
    fn the_training_pipeline_layout_is_read() {
        // As models/report.py writes it: `features` objects, a `batch` symbol, an output dtype, extra fields.
        let json = format!(
            r#"{{"name":"wardwatch-deterioration","version":"1.0.0","file":"model.onnx","sha256":"{}",
            "opset":17,"onnx_ops":["Gemm"],"input":{{"name":"features","shape":["batch",2],"dtype":"float32"}},
            "output":{{"name":"probability","shape":["batch",1],"dtype":"float32"}},
            "features":[{{"name":"hr_last","unit":"/min"}},{{"name":"rr_last","unit":"/min"}}],
            "simulated_data_only":true}}"#,
            "0f".repeat(32)
        );
        let m = Manifest::parse(json.as_bytes()).expect("valid");
        assert_eq!(
            m.feature_names,
            vec!["hr_last".to_string(), "rr_last".to_string()]
        );
        assert_eq!(m.opset, Some(17));
    }

    #[test]
    fn feature_count_must_match_the_names() {
        let err =
            Manifest::parse(manifest_json("[null, 3]", r#"["a","b"]"#).as_bytes()).unwrap_err();
        assert!(matches!(err, LoadError::ShapeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("[?, 3]"), "{err}");
    }

    #[test]
    fn rejects_duplicates_bad_hash_and_garbage() {
        let err =
            Manifest::parse(manifest_json("[null, 2]", r#"["a","a"]"#).as_bytes()).unwrap_err();
        assert!(matches!(err, LoadError::BadManifest(_)), "{err}");
        let bad_hash = manifest_json("[null, 2]", r#"["a","b"]"#).replace(&"ab".repeat(32), "XYZ");
        assert!(matches!(
            Manifest::parse(bad_hash.as_bytes()),
            Err(LoadError::BadManifest(_))
        ));
        assert!(matches!(
            Manifest::parse(b"\xff\x00not json"),
            Err(LoadError::BadManifest(_))
        ));
    }
}

//! The model pipeline's own Python checks, so that CI runs them with the Rust suite: the evaluation's alert-onset
//! counting (`models/test_report.py`), the deterioration model's selection rule, candidates and training weights
//! (`models/test_selection.py`) and the committed golden vectors against `models/features.py` and the
//! committed ONNX files under onnxruntime (`models/check_golden.py`; the Rust side of the same vectors is
//! `edge/tests/ml_golden.rs`). Needs the pinned packages of `models/requirements.txt`; skipped loudly without them,
//! except on CI, where `.ci/run` installs them.

use anyhow::{Context, Result, bail};

fn run_python(script: &str) -> Result<()> {
    let path = format!("{}/../models/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(&path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .with_context(|| format!("running {path}"))?;
    if !out.status.success() {
        bail!(
            "{script} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn pipeline_packages() -> Result<bool> {
    wardwatch::python_modules_available(
        &["numpy", "sklearn", "onnx", "onnxruntime"],
        "model pipeline checks (pip install -r models/requirements.txt)",
    )
}

#[test]
fn the_evaluation_counts_alert_onsets_as_pre_registered() -> Result<()> {
    if pipeline_packages()? {
        run_python("test_report.py")?;
    }
    Ok(())
}

#[test]
fn the_selection_rule_candidates_and_training_weights_behave_as_documented() -> Result<()> {
    if pipeline_packages()? {
        run_python("test_selection.py")?;
    }
    Ok(())
}

#[test]
fn the_golden_vectors_match_the_python_features_and_the_committed_models() -> Result<()> {
    if pipeline_packages()? {
        run_python("check_golden.py")?;
    }
    Ok(())
}

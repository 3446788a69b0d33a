//! A verified, compiled model: [`ModelBundle`].
//!
//! A bundle is a directory with `model.onnx`, `manifest.json` and `model.onnx.sig` (see [`crate::signature`] for
//! what is signed). [`ModelBundle::from_files`] is the only way to make one, and it runs every check in this order,
//! cheapest and most security-relevant first, so a tampered file is never handed to the ONNX parser:
//!
//! 1. size limits on the files (nothing huge is hashed or parsed);
//! 2. the signature over the manifest, by a trusted release key ([`LoadError::UnknownKey`],
//!    [`LoadError::BadSignature`]);
//! 3. the manifest contract ([`LoadError::BadManifest`]);
//! 4. the sha256 of the model bytes against the signed manifest ([`LoadError::HashMismatch`]);
//! 5. the slot's expectations: model name and feature layout ([`LoadError::WrongModel`]);
//! 6. the ONNX graph against the manifest: input/output names, declared shapes, element type, opset
//!    ([`LoadError::NameMismatch`], [`LoadError::ShapeMismatch`], …);
//! 7. tract compiles one plan per fixed batch size (inputs get concrete shapes, then `into_optimized`,
//!    `into_runnable`) and runs each once on zeros: the output must be `[batch, 1]` probabilities.
//!
//! Steps 6 and 7 run inside `catch_unwind`: tract returns errors for almost every bad graph, but on some malformed
//! ones it panics (an `unwrap` deep in shape inference, e.g. RNNs with a symbolic batch). A model file arrives from
//! the network, so a bad one must be refused, not take the edge down (tests/data/panics is such a file: a Slice
//! with step 0 makes tract 0.23 divide by zero). This relies on `panic = "unwind"`, Rust's default: a binary
//! embedding this crate must not set `panic = "abort"`. Models are parsed from memory, never from a
//! path, so ONNX "external data" (weights in side files that the hash would not cover) is refused by tract.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{LoadError, ScoreError, panic_message};
use crate::manifest::{Dim, Manifest, ShapeDisplay};
use crate::signature::TrustedKeys;
pub use crate::verify::{MANIFEST_FILE, MODEL_FILE, ModelFiles, SIGNATURE_FILE};

/// How to load a model, and what the slot it is for expects of it.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Batch sizes to compile a plan for (each plan has a fixed input shape `[batch, F]`). A request of n rows
    /// runs as many full largest batches as fit, then the remainder padded with zeros up to the smallest plan that
    /// holds it. Ignored when the model itself fixes its batch size.
    pub batch_sizes: Vec<usize>,
    /// Largest `model.onnx` accepted, in bytes.
    pub max_model_bytes: u64,
    /// If set, the manifest's `name` must equal it (a deterioration slot never runs the artifact model).
    pub expect_name: Option<String>,
    /// If set, the manifest's `feature_names` must equal it: the feature layout the edge's extraction produces.
    /// A new model version with another layout would otherwise score misaligned columns without any error.
    pub expect_features: Option<Vec<String>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            batch_sizes: vec![1, 16, 256],
            max_model_bytes: 64 << 20,
            expect_name: None,
            expect_features: None,
        }
    }
}

/// Which model made a prediction: name, version and the sha256 of its ONNX file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl fmt::Display for ModelIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (sha256 {})",
            self.name,
            self.version,
            self.sha256.get(..12).unwrap_or(&self.sha256)
        )
    }
}

/// One compiled plan with a fixed batch size.
pub(crate) struct Plan {
    pub(crate) batch: usize,
    pub(crate) runnable: Arc<TypedRunnableModel>,
}

/// A model that passed every check and is compiled for its batch sizes. Immutable; shared as `Arc<ModelBundle>`.
pub struct ModelBundle {
    identity: Arc<ModelIdentity>,
    manifest: Manifest,
    signed_by: String,
    /// Ascending by batch size, at least one.
    plans: Vec<Plan>,
}

impl fmt::Debug for ModelBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelBundle")
            .field("identity", &self.identity)
            .field("signed_by", &self.signed_by)
            .field("n_features", &self.n_features())
            .field("batch_sizes", &self.batch_sizes())
            .finish()
    }
}

impl ModelBundle {
    /// Loads and verifies the bundle in `dir`. Blocking (reads files, compiles): call it from a blocking context.
    pub fn load_dir(
        dir: &Path,
        keys: &TrustedKeys,
        options: &LoadOptions,
    ) -> Result<ModelBundle, LoadError> {
        let files = ModelFiles::read_dir(dir, options.max_model_bytes)?;
        ModelBundle::from_files(&files, keys, options)
    }

    /// Verifies and compiles a bundle held in memory. Blocking (CPU-bound compile).
    pub fn from_files(
        files: &ModelFiles,
        keys: &TrustedKeys,
        options: &LoadOptions,
    ) -> Result<ModelBundle, LoadError> {
        let crate::verify::VerifiedManifest {
            manifest,
            signed_by,
        } = crate::verify::verify_files(files, keys, options.max_model_bytes)?;
        check_expectations(&manifest, options)?;
        let plans = match catch_unwind(AssertUnwindSafe(|| {
            compile(&files.model, &manifest, options)
        })) {
            Ok(result) => result?,
            Err(payload) => {
                return Err(LoadError::Panicked {
                    stage: "compiling the model",
                    message: panic_message(&*payload),
                });
            }
        };
        let identity = Arc::new(ModelIdentity {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            sha256: manifest.sha256.clone(),
        });
        Ok(ModelBundle {
            identity,
            manifest,
            signed_by,
            plans,
        })
    }

    /// Name, version and sha256.
    pub fn identity(&self) -> &Arc<ModelIdentity> {
        &self.identity
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Hex public key of the release key that signed this model.
    pub fn signed_by(&self) -> &str {
        &self.signed_by
    }

    /// Number of input features F (width of a row).
    pub fn n_features(&self) -> usize {
        self.manifest.n_features()
    }

    /// Input column names, in order.
    pub fn feature_names(&self) -> &[String] {
        &self.manifest.feature_names
    }

    /// The batch sizes a plan was compiled for, ascending.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.plans.iter().map(|p| p.batch).collect()
    }

    /// Scores `rows` (row-major, `n * F` values) on the calling thread. Blocking and CPU-bound: async code goes
    /// through [`crate::Scorer`] instead. Use a [`ModelRunner`] to score repeatedly without re-allocating state.
    pub fn score_blocking(self: &Arc<Self>, rows: &[f32]) -> Result<Vec<f32>, ScoreError> {
        ModelRunner::new(self.clone()).score(rows)
    }
}

pub(crate) fn check_expectations(
    manifest: &Manifest,
    options: &LoadOptions,
) -> Result<(), LoadError> {
    if let Some(name) = &options.expect_name
        && &manifest.name != name
    {
        return Err(LoadError::WrongModel(format!(
            "expected model {name:?}, the manifest is for {:?}",
            manifest.name
        )));
    }
    if let Some(features) = &options.expect_features
        && &manifest.feature_names != features
    {
        let first_difference = features
            .iter()
            .zip(&manifest.feature_names)
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| features.len().min(manifest.feature_names.len()));
        return Err(LoadError::WrongModel(format!(
            "feature layout differs from the edge's ({} features expected, {} in the manifest; first difference at \
             column {first_difference})",
            features.len(),
            manifest.feature_names.len()
        )));
    }
    Ok(())
}

fn corrupt(e: impl fmt::Display) -> LoadError {
    LoadError::CorruptModel(e.to_string())
}

/// Declared element type and shape of an ONNX graph input or output.
fn declared(vi: &pb::ValueInfoProto) -> (Option<i32>, Option<Vec<Option<Dim>>>) {
    let Some(pb::type_proto::Value::TensorType(t)) =
        vi.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return (None, None);
    };
    let shape = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) => {
                    u64::try_from(*n).ok().map(Dim::Fixed)
                }
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(s)) if !s.is_empty() => {
                    Some(Dim::Symbol(s.clone()))
                }
                _ => None,
            })
            .collect()
    });
    (Some(t.elem_type), shape)
}

/// ONNX `TensorProto.DataType.FLOAT`.
const ONNX_FLOAT: i32 = 1;

/// Checks the ONNX graph's declared interface against the manifest, before tract analyses anything. Returns the
/// fixed batch size the model declares, if any.
fn check_graph(proto: &pb::ModelProto, manifest: &Manifest) -> Result<Option<usize>, LoadError> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| corrupt("the ONNX file has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(LoadError::NameMismatch {
            tensor: "input",
            expected: manifest.input.name.clone(),
            found: inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    if input.name != manifest.input.name {
        return Err(LoadError::NameMismatch {
            tensor: "input",
            expected: manifest.input.name.clone(),
            found: input.name.clone(),
        });
    }
    let Some(output) = graph.output.iter().find(|o| o.name == manifest.output.name) else {
        return Err(LoadError::NameMismatch {
            tensor: "output",
            expected: manifest.output.name.clone(),
            found: graph
                .output
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };

    let f = manifest.n_features();
    let (elem, shape) = declared(input);
    if let Some(elem) = elem
        && elem != ONNX_FLOAT
    {
        return Err(LoadError::DtypeMismatch {
            tensor: format!("input {:?}", input.name),
            expected: "float32".into(),
            found: format!("ONNX data type {elem}"),
        });
    }
    let mut fixed_batch = None;
    if let Some(shape) = &shape {
        let expected = format!("[batch, {f}] (from the manifest)");
        let mismatch = || LoadError::ShapeMismatch {
            tensor: format!("input {:?}", input.name),
            expected: expected.clone(),
            found: ShapeDisplay(shape).to_string(),
        };
        let [batch, width] = shape.as_slice() else {
            return Err(mismatch());
        };
        if let Some(Dim::Fixed(w)) = width
            && *w as usize != f
        {
            return Err(mismatch());
        }
        if let Some(Dim::Fixed(b)) = batch {
            if *b == 0 {
                return Err(mismatch());
            }
            fixed_batch = Some(*b as usize);
        }
    }
    if let (Some(model_batch), Some(manifest_batch)) = (fixed_batch, manifest.fixed_batch())
        && model_batch != manifest_batch
    {
        return Err(LoadError::ManifestMismatch {
            field: "the input batch size",
            manifest: manifest_batch.to_string(),
            model: model_batch.to_string(),
        });
    }

    let (elem, shape) = declared(output);
    if let Some(elem) = elem
        && elem != ONNX_FLOAT
    {
        return Err(LoadError::DtypeMismatch {
            tensor: format!("output {:?}", output.name),
            expected: "float32".into(),
            found: format!("ONNX data type {elem}"),
        });
    }
    if let Some(shape) = &shape {
        // The width may be left symbolic in the file; the compiled plan's concrete output shape is checked later.
        if !matches!(
            shape.as_slice(),
            [_, None | Some(Dim::Fixed(1)) | Some(Dim::Symbol(_))]
        ) {
            return Err(LoadError::ShapeMismatch {
                tensor: format!("output {:?}", output.name),
                expected: "[batch, 1]".into(),
                found: ShapeDisplay(shape).to_string(),
            });
        }
    }

    // The ONNX spec requires a default-domain opset import; without it tract guesses one, and a file cut short
    // just before its trailing opset_import field would still load.
    let model_opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .ok_or_else(|| corrupt("the model imports no default-domain (ai.onnx) opset"))?;
    if let Some(opset) = manifest.opset
        && model_opset.version != opset
    {
        return Err(LoadError::ManifestMismatch {
            field: "the opset",
            manifest: opset.to_string(),
            model: model_opset.version.to_string(),
        });
    }
    Ok(fixed_batch.or(manifest.fixed_batch()))
}

/// Parses, checks and compiles one plan per batch size, and warms each up. May panic inside tract: the caller
/// wraps it in `catch_unwind`.
fn compile(
    bytes: &[u8],
    manifest: &Manifest,
    options: &LoadOptions,
) -> Result<Vec<Plan>, LoadError> {
    let onnx = tract_onnx::onnx();
    let proto = onnx
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| corrupt(format!("{e:#}")))?;
    let fixed_batch = check_graph(&proto, manifest)?;
    let model = onnx
        .model_for_proto_model(&proto)
        .map_err(|e| corrupt(format!("{e:#}")))?;

    let mut batches: Vec<usize> = match fixed_batch {
        Some(b) => vec![b],
        None => options
            .batch_sizes
            .iter()
            .copied()
            .filter(|b| *b > 0)
            .collect(),
    };
    batches.sort_unstable();
    batches.dedup();
    if batches.is_empty() {
        batches.push(1);
    }

    let f = manifest.n_features();
    let mut plans = Vec::with_capacity(batches.len());
    for batch in batches {
        let fail = |e: TractError| LoadError::Compile {
            batch,
            message: format!("{e:#}"),
        };
        let typed = model
            .clone()
            .with_input_fact(0, f32::fact([batch, f]).into())
            .map_err(fail)?
            .with_outputs_by_name([manifest.output.name.as_str()])
            .map_err(fail)?
            .into_optimized()
            .map_err(fail)?;
        let output_fact = typed.output_fact(0).map_err(fail)?;
        let found_shape = output_fact.shape.as_concrete().map(<[usize]>::to_vec);
        if found_shape.as_deref() != Some(&[batch, 1][..]) {
            return Err(LoadError::ShapeMismatch {
                tensor: format!("output {:?} (batch {batch})", manifest.output.name),
                expected: format!("[{batch}, 1]"),
                found: format!("{:?}", output_fact.shape),
            });
        }
        if output_fact.datum_type != f32::datum_type() {
            return Err(LoadError::DtypeMismatch {
                tensor: format!("output {:?}", manifest.output.name),
                expected: "float32".into(),
                found: format!("{:?}", output_fact.datum_type),
            });
        }
        let runnable = typed.into_runnable().map_err(fail)?;
        let plan = Plan { batch, runnable };
        // Warm-up: whatever the input, a probability is finite and in [0, 1].
        let zeros = vec![0f32; batch * f];
        let out = run_plan(&plan, &mut None, &zeros, f, batch).map_err(|e| LoadError::Compile {
            batch,
            message: format!("warm-up run failed: {e}"),
        })?;
        if let Some(bad) = out.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            return Err(LoadError::BadOutput(format!(
                "{bad} on an all-zero input (batch {batch})"
            )));
        }
        plans.push(plan);
    }
    Ok(plans)
}

/// Runs `plan` on `rows` (`n <= plan.batch` rows, padded with zeros) and returns n outputs.
fn run_plan(
    plan: &Plan,
    state: &mut Option<TypedSimpleState>,
    rows: &[f32],
    f: usize,
    n: usize,
) -> Result<Vec<f32>, ScoreError> {
    let inference = |e: TractError| ScoreError::Inference(format!("{e:#}"));
    let input = if n == plan.batch {
        Tensor::from_shape(&[plan.batch, f], rows).map_err(inference)?
    } else {
        let mut padded = vec![0f32; plan.batch * f];
        padded[..rows.len()].copy_from_slice(rows);
        Tensor::from_shape(&[plan.batch, f], &padded).map_err(inference)?
    };
    let state = match state {
        Some(state) => state,
        None => state.insert(plan.runnable.spawn().map_err(inference)?),
    };
    let outputs = state.run(tvec!(input.into_tvalue())).map_err(inference)?;
    let output = outputs
        .first()
        .ok_or_else(|| ScoreError::Inference("the model produced no output".into()))?;
    let view = output.to_plain_array_view::<f32>().map_err(inference)?;
    if view.len() != plan.batch {
        return Err(ScoreError::Inference(format!(
            "{} outputs for a batch of {}",
            view.len(),
            plan.batch
        )));
    }
    Ok(view.iter().take(n).copied().collect())
}

/// Scores rows with one bundle, keeping tract's per-plan run state between calls (no re-allocation per run).
/// Not `Sync`: one runner per scoring thread.
pub struct ModelRunner {
    bundle: Arc<ModelBundle>,
    states: Vec<Option<TypedSimpleState>>,
}

impl ModelRunner {
    /// A runner for `bundle`.
    pub fn new(bundle: Arc<ModelBundle>) -> ModelRunner {
        let states = bundle.plans.iter().map(|_| None).collect();
        ModelRunner { bundle, states }
    }

    /// The bundle this runner scores with.
    pub fn bundle(&self) -> &Arc<ModelBundle> {
        &self.bundle
    }

    /// Scores `rows` (row-major, `n * F` values): full batches of the largest plan, then the rest padded up to the
    /// smallest plan that holds it. Returns n probabilities. Panics inside tract are caught and returned as
    /// [`ScoreError::Panicked`].
    pub fn score(&mut self, rows: &[f32]) -> Result<Vec<f32>, ScoreError> {
        let f = self.bundle.n_features();
        if f == 0 || !rows.len().is_multiple_of(f) {
            return Err(ScoreError::RaggedRows {
                len: rows.len(),
                width: f,
            });
        }
        let n = rows.len() / f;
        let mut out = Vec::with_capacity(n);
        let plans = &self.bundle.plans;
        let largest = plans.len() - 1;
        let mut done = 0;
        while done < n {
            let left = n - done;
            let ix = if left >= plans[largest].batch {
                largest
            } else {
                plans
                    .iter()
                    .position(|p| p.batch >= left)
                    .unwrap_or(largest)
            };
            let take = left.min(plans[ix].batch);
            let chunk = &rows[done * f..(done + take) * f];
            let plan = &plans[ix];
            let state = &mut self.states[ix];
            let result = catch_unwind(AssertUnwindSafe(|| run_plan(plan, state, chunk, f, take)));
            match result {
                Ok(Ok(scores)) => out.extend(scores),
                Ok(Err(e)) => {
                    self.states[ix] = None;
                    return Err(e);
                }
                Err(payload) => {
                    // The state may be half-updated: drop it, a fresh one is spawned on the next call.
                    self.states[ix] = None;
                    return Err(ScoreError::Panicked(panic_message(&*payload)));
                }
            }
            done += take;
        }
        Ok(out)
    }
}

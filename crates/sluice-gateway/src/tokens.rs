//! Token counting for estimates (and for settlement when an upstream omits
//! `usage`): tiktoken's BPEs approximate most chat models well enough to
//! hold; settlement uses the upstream's own counts whenever it reports them.

use std::sync::{Arc, OnceLock};

use tiktoken_rs::CoreBPE;

use crate::config::TokenizerKind;

/// Tokens OpenAI's chat format adds per message (role and separators).
const PER_MESSAGE: u64 = 4;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u64 = 3;

fn bpe(kind: TokenizerKind) -> Option<Arc<CoreBPE>> {
    static CL100K: OnceLock<Option<Arc<CoreBPE>>> = OnceLock::new();
    static O200K: OnceLock<Option<Arc<CoreBPE>>> = OnceLock::new();
    match kind {
        TokenizerKind::Cl100k => CL100K
            .get_or_init(|| tiktoken_rs::cl100k_base().ok().map(Arc::new))
            .clone(),
        TokenizerKind::O200k => O200K
            .get_or_init(|| tiktoken_rs::o200k_base().ok().map(Arc::new))
            .clone(),
    }
}

/// Load the tokenizers now (so the first request does not pay for it).
pub fn warm(kind: TokenizerKind) {
    let _ = bpe(kind);
}

/// Tokens in `text`. Falls back to a conservative 1 token per 2 bytes if the
/// BPE could not be built (it is compiled in, so this does not happen in practice).
pub fn count_text(kind: TokenizerKind, text: &str) -> u64 {
    match bpe(kind) {
        Some(b) => b.encode_with_special_tokens(text).len() as u64,
        None => (text.len() as u64).div_ceil(2),
    }
}

/// Tokens of a chat prompt: each message's role, name and text, plus the
/// chat format's overhead.
pub fn count_messages(kind: TokenizerKind, messages: &[(String, String)]) -> u64 {
    let mut n = REPLY_PRIMING;
    for (role, content) in messages {
        n += PER_MESSAGE + count_text(kind, role) + count_text(kind, content);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_real_tokens() {
        assert_eq!(count_text(TokenizerKind::Cl100k, "hello world"), 2);
        assert_eq!(count_text(TokenizerKind::O200k, "hello world"), 2);
        let m = vec![("user".to_owned(), "hello world".to_owned())];
        assert_eq!(count_messages(TokenizerKind::Cl100k, &m), 3 + 4 + 1 + 2);
    }
}

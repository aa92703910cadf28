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

/// Tokens of generated `text`: the upstream's own count when it has one (a
/// local model), else the configured tokenizer's.
pub fn count_output(
    upstream: &dyn crate::upstream::Upstream,
    kind: TokenizerKind,
    text: &str,
) -> u64 {
    upstream
        .count_completion(text)
        .unwrap_or_else(|| count_text(kind, text))
}

/// Tokens `text`'s digits may take beyond [`count_text`]'s count: the BPEs
/// here group digits three at a time, while many open models' tokenizers
/// (Llama 2, Mistral, Qwen, Gemma) make one token of each digit. A run of `n`
/// digits counts `n - ceil(n / 3)` more, so holds cover either; settlement
/// without the upstream's usage still charges the plain count.
pub fn digit_allowance(text: &str) -> u64 {
    let (mut extra, mut run) = (0u64, 0u64);
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run += 1;
        } else if run > 0 {
            extra += run - run.div_ceil(3);
            run = 0;
        }
    }
    extra
}

/// The longest prefix of `text` (at a character boundary) that `count` says
/// has at most `max` tokens: where a stream's last chunk is cut when it would
/// run past the limit.
pub fn prefix_within(text: &str, max: u64, count: impl Fn(&str) -> u64) -> &str {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .chain(std::iter::once(text.len()))
        .collect();
    // The number of boundaries whose prefix fits (counts only grow with length).
    let fits = bounds.partition_point(|&b| count(&text[..b]) <= max);
    match fits {
        0 => "",
        n => &text[..bounds[n - 1]],
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

    #[test]
    fn a_prefix_within_a_token_budget_is_the_longest_that_fits() {
        let text = "one two three four five six";
        let count = |t: &str| count_text(TokenizerKind::Cl100k, t);
        assert_eq!(prefix_within(text, 3, count), "one two three");
        assert_eq!(prefix_within(text, 0, count), "");
        assert_eq!(prefix_within(text, 100, count), text);
        let cut = prefix_within("héllo wörld", 1, count);
        assert!("héllo wörld".starts_with(cut) && count(cut) <= 1, "{cut}");
    }

    /// A prompt of digits was held at a third of what a per-digit tokenizer
    /// bills; the allowance brings the count up to one token per digit.
    #[test]
    fn digits_are_held_as_one_token_each() {
        let digits = "1234567890".repeat(300);
        let counted = count_text(TokenizerKind::Cl100k, &digits);
        assert_eq!(counted, 1000, "cl100k groups digits in threes");
        assert_eq!(counted + digit_allowance(&digits), 3000);
        assert_eq!(digit_allowance("a 12 b 3 c 1234"), 3, "1 + 0 + 2");
        assert_eq!(digit_allowance("no digits at all"), 0);
    }
}

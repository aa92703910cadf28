//! Turning generated token ids back into text that is safe to stream.
//!
//! Tokens of a byte-level BPE are byte strings that may end in the middle of a multibyte UTF-8
//! character, and a stop string may straddle several tokens. [`Utf8Buffer`] holds back incomplete
//! characters and [`StopMatcher`] holds back text that might still turn into a stop string, so
//! every piece handed to the client is final.

/// GPT-2's byte-level alphabet: the printable character that stands for each byte in the vocab.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next_extra).unwrap_or('\u{FFFD}');
            next_extra += 1;
            c
        };
    }
    table
}

/// Maps byte-level vocab strings back to the raw bytes they stand for.
pub(crate) struct ByteLevelDecoder {
    char_to_byte: std::collections::HashMap<char, u8>,
}

impl ByteLevelDecoder {
    pub(crate) fn new() -> Self {
        let char_to_byte = byte_to_char_table()
            .iter()
            .zip(0..=255u8)
            .map(|(c, b)| (*c, b))
            .collect();
        ByteLevelDecoder { char_to_byte }
    }

    /// The raw bytes of a vocab entry; characters outside the byte-level alphabet (which a
    /// well-formed gpt2 vocab does not contain) are kept as their own UTF-8.
    pub(crate) fn token_bytes(&self, token: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(token.len());
        for c in token.chars() {
            match self.char_to_byte.get(&c) {
                Some(b) => out.push(*b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out
    }
}

/// Accumulates bytes and releases only complete UTF-8 characters.
#[derive(Debug, Default)]
pub(crate) struct Utf8Buffer {
    pending: Vec<u8>,
}

impl Utf8Buffer {
    /// Adds `bytes` and returns every complete character now available; invalid sequences become
    /// U+FFFD, an incomplete trailing character waits for the next call.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_end = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = valid_end + bad;
                        }
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Whatever is left at the end of generation (an incomplete character becomes U+FFFD).
    pub(crate) fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StopStep {
    /// Text that is final and can be sent to the client.
    pub(crate) emit: String,
    /// A stop string was reached: `emit` ends right before it and generation must end.
    pub(crate) stopped: bool,
}

/// Finds caller-supplied stop strings in streamed text without ever emitting part of one.
#[derive(Debug)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored (they would stop before the first token).
    pub(crate) fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds newly decoded text.
    pub(crate) fn push(&mut self, text: &str) -> StopStep {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopStep {
                emit: std::mem::take(&mut self.pending),
                stopped: false,
            };
        }
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(pos) = first_stop {
            let emit = self.pending[..pos].to_owned();
            self.pending.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that could still grow into a stop string.
        let hold_from = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let rest = self.pending.split_off(hold_from);
        let emit = std::mem::replace(&mut self.pending, rest);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// The held-back text once generation ended for another reason (it was not a stop string).
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips_every_byte() {
        let table = byte_to_char_table();
        let dec = ByteLevelDecoder::new();
        for b in 0..=255u8 {
            let s = table[usize::from(b)].to_string();
            assert_eq!(dec.token_bytes(&s), vec![b]);
        }
        // GPT-2's well-known spellings: space is 'Ġ', newline is 'Ċ'.
        assert_eq!(dec.token_bytes("Ġthe"), b" the");
        assert_eq!(dec.token_bytes("Ċ"), b"\n");
    }

    #[test]
    fn multibyte_char_split_across_tokens_is_held_back() {
        let mut buf = Utf8Buffer::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(buf.push(b"price: "), "price: ");
        assert_eq!(buf.push(&euro[..1]), "");
        assert_eq!(buf.push(&euro[1..2]), "");
        assert_eq!(buf.push(&[euro[2], b'5']), "€5");
        assert_eq!(buf.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_chars_and_text_continues() {
        let mut buf = Utf8Buffer::default();
        assert_eq!(buf.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        // A dangling lead byte at the very end is flushed lossily.
        assert_eq!(buf.push(&[0xE2, 0x82]), "");
        assert_eq!(buf.finish(), "\u{FFFD}");
    }

    #[test]
    fn emoji_in_four_single_byte_pieces() {
        let mut buf = Utf8Buffer::default();
        let mut out = String::new();
        for b in "🦀".as_bytes() {
            out.push_str(&buf.push(&[*b]));
        }
        assert_eq!(out, "🦀");
    }

    #[test]
    fn stop_string_across_pieces_is_not_emitted() {
        let mut m = StopMatcher::new(&["\n\nUser:".to_owned()]);
        let mut out = String::new();
        let mut stopped = false;
        for piece in ["Paris is", " nice.\n", "\nUs", "er: more"] {
            let step = m.push(piece);
            out.push_str(&step.emit);
            if step.stopped {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(out, "Paris is nice.");
    }

    #[test]
    fn false_start_of_stop_string_is_released() {
        let mut m = StopMatcher::new(&["END".to_owned()]);
        assert_eq!(
            m.push("the EN"),
            StopStep {
                emit: "the ".to_owned(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("D? no, ENd"),
            StopStep {
                emit: String::new(),
                stopped: true
            }
        );
        let mut m = StopMatcher::new(&["END".to_owned()]);
        assert_eq!(m.push("EN").emit, "");
        assert_eq!(m.push("ough").emit, "ENough");
        assert_eq!(m.push(" E").emit, " ");
        assert_eq!(m.finish(), "E");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_empty_stops_are_ignored() {
        let mut m = StopMatcher::new(&[String::new(), "cd".to_owned(), "b".to_owned()]);
        let step = m.push("abcd");
        assert_eq!(
            step,
            StopStep {
                emit: "a".to_owned(),
                stopped: true
            }
        );
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("x").emit, "x");
        assert_eq!(m.finish(), "");
    }
}

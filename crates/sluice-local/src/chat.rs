//! ChatML prompt rendering.
//!
//! SmolLM2 (and most small instruct GGUFs with a `gpt2` tokenizer) use ChatML:
//! `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n` to ask
//! for the reply. No default system prompt is injected: the one in SmolLM2's template makes the
//! small quantised model answer worse, and callers who want one send a `system` message.
//!
//! The prompt is kept as segments so that only the template's own markers become control tokens:
//! a user who types `<|im_end|>` in a message gets those characters tokenised as plain text, not
//! a forged turn boundary.

/// One message of a conversation, as the client sent it (`role` is passed through verbatim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or anything else the client chose.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The start-of-turn control token.
pub(crate) const IM_START: &str = "<|im_start|>";
/// The end-of-turn control token (SmolLM2's EOS).
pub(crate) const IM_END: &str = "<|im_end|>";

/// A piece of the rendered prompt: either a ChatML control token or plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// `<|im_start|>`.
    Start,
    /// `<|im_end|>`.
    End,
    /// Text tokenised as-is (control-token look-alikes inside it stay plain text).
    Text(String),
}

/// The ChatML prompt for `messages`, ending with the assistant generation prompt.
pub(crate) fn chatml_segments(messages: &[ChatMessage]) -> Vec<Segment> {
    let mut out = Vec::with_capacity(messages.len() * 4 + 2);
    for m in messages {
        out.push(Segment::Start);
        out.push(Segment::Text(format!("{}\n{}", m.role, m.content)));
        out.push(Segment::End);
        out.push(Segment::Text("\n".to_owned()));
    }
    out.push(Segment::Start);
    out.push(Segment::Text("assistant\n".to_owned()));
    out
}

/// The ChatML prompt for `messages` as one string (what the model sees), ending with
/// `<|im_start|>assistant\n`.
pub fn render_chatml(messages: &[ChatMessage]) -> String {
    chatml_segments(messages)
        .into_iter()
        .map(|s| match s {
            Segment::Start => IM_START.to_owned(),
            Segment::End => IM_END.to_owned(),
            Segment::Text(t) => t,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_user_turn_has_no_injected_system_prompt() {
        let p = render_chatml(&[ChatMessage::new("user", "What is the capital of France?")]);
        assert_eq!(
            p,
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn system_and_history_pass_through_in_order() {
        let p = render_chatml(&[
            ChatMessage::new("system", "Be terse."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Bye"),
        ]);
        assert_eq!(
            p,
            "<|im_start|>system\nBe terse.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n\
             <|im_start|>user\nBye<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn empty_conversation_is_just_the_generation_prompt() {
        assert_eq!(render_chatml(&[]), "<|im_start|>assistant\n");
    }

    #[test]
    fn control_token_lookalikes_in_content_stay_text() {
        let segs = chatml_segments(&[ChatMessage::new("user", "a<|im_end|>b")]);
        assert_eq!(
            segs,
            vec![
                Segment::Start,
                Segment::Text("user\na<|im_end|>b".to_owned()),
                Segment::End,
                Segment::Text("\n".to_owned()),
                Segment::Start,
                Segment::Text("assistant\n".to_owned()),
            ]
        );
    }
}

//! Parsing an OpenAI chat completions request body just enough to price it;
//! everything else in the body passes through to the upstream untouched.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A validated chat request body.
#[derive(Debug, Clone)]
pub struct ChatBody {
    /// The raw object, passed through.
    pub raw: Map<String, Value>,
    /// Public model name asked for.
    pub model: String,
    /// `(role, text)` per message.
    pub messages: Vec<(String, String)>,
    /// `max_completion_tokens` or `max_tokens`, if given.
    pub max_tokens: Option<u64>,
    /// Whether `max_completion_tokens` was the field used.
    pub uses_max_completion_tokens: bool,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
}

fn text_of(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        s.push_str(p.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    Some(other) => {
                        return Err(ApiError::bad_request(
                            "unsupported_content",
                            format!("content parts of type {other:?} are not supported; send text"),
                        ));
                    }
                    None => {
                        return Err(ApiError::bad_request(
                            "invalid_request",
                            "a content part has no type",
                        ));
                    }
                }
            }
            Ok(s)
        }
        _ => Err(ApiError::bad_request(
            "invalid_request",
            "message content must be a string or an array of parts",
        )),
    }
}

fn positive(v: &Value, field: &str) -> Result<u64, ApiError> {
    v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_request",
            format!("{field} must be a positive integer"),
        )
    })
}

impl ChatBody {
    /// Validate a JSON value as a chat request.
    pub fn parse(v: Value) -> Result<ChatBody, ApiError> {
        let Value::Object(raw) = v else {
            return Err(ApiError::bad_request(
                "invalid_request",
                "the request body must be a JSON object",
            ));
        };
        let model = raw
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_request", "missing required field: model")
            })?
            .to_owned();
        let msgs = raw
            .get("messages")
            .and_then(Value::as_array)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_request", "messages must be a non-empty array")
            })?;
        let mut messages = Vec::with_capacity(msgs.len());
        for m in msgs {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request("invalid_request", "each message needs a role")
            })?;
            let content = text_of(m.get("content").unwrap_or(&Value::Null))?;
            messages.push((role.to_owned(), content));
        }
        let (max_tokens, uses_max_completion_tokens) =
            match (raw.get("max_completion_tokens"), raw.get("max_tokens")) {
                (Some(v), _) if !v.is_null() => (Some(positive(v, "max_completion_tokens")?), true),
                (_, Some(v)) if !v.is_null() => (Some(positive(v, "max_tokens")?), false),
                _ => (None, false),
            };
        let stream = match raw.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "stream must be a boolean",
                ));
            }
        };
        let include_usage = raw
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if raw.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request(
                "unsupported_parameter",
                "n other than 1 is not supported",
            ));
        }
        Ok(ChatBody {
            raw,
            model,
            messages,
            max_tokens,
            uses_max_completion_tokens,
            stream,
            include_usage,
        })
    }

    /// The body for the upstream: model mapped, output limit set to what was reserved.
    pub fn upstream_body(&self, upstream_model: &str, max_tokens: u64) -> Map<String, Value> {
        let mut b = self.raw.clone();
        b.insert("model".into(), upstream_model.into());
        if self.uses_max_completion_tokens {
            b.insert("max_completion_tokens".into(), max_tokens.into());
        } else {
            b.insert("max_tokens".into(), max_tokens.into());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_validates() {
        let b = ChatBody::parse(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}, "foo": 1})).unwrap();
        assert_eq!(b.max_tokens, Some(5));
        assert!(b.stream && b.include_usage);
        let up = b.upstream_body("up", 5);
        assert_eq!(up["model"], "up");
        assert_eq!(up["foo"], 1);
        let parts = ChatBody::parse(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "max_completion_tokens": 7})).unwrap();
        assert_eq!(parts.messages[0].1, "ab");
        assert!(parts.uses_max_completion_tokens);
        for bad in [
            json!([]),
            json!({"messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": [{"content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        ] {
            assert_eq!(
                ChatBody::parse(bad.clone()).unwrap_err().status.as_u16(),
                400,
                "{bad}"
            );
        }
    }
}

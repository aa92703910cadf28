//! Parsing an OpenAI chat completions request body: what it costs is read
//! from everything the upstream will tokenize, and what is forwarded is what
//! was priced.
//!
//! - **Input.** Message text is counted with the model's tokenizer. Every
//!   other part of the body the upstream may render into its prompt — tool
//!   definitions, a response schema, a message's `name`, assistant
//!   `tool_calls`, extra keys in content parts, any field sluice does not know
//!   — is counted as the JSON text it is sent as ([`ChatBody::extra_text`]).
//!   Only the fields sluice itself sets and sampling settings with a number
//!   or boolean value ([`SAMPLING_PARAMETERS`]) are left out.
//! - **Output.** Every field that limits output (`max_tokens`,
//!   `max_completion_tokens`, llama.cpp's `n_predict`, Ollama's `num_predict`,
//!   …) is read (the smallest wins) and removed; the body sent upstream
//!   carries exactly one limit, in the field the model's upstream reads, set
//!   to what the hold pays for ([`ChatBody::upstream_body`]).
//! - **Multipliers.** `n` and `best_of` must be absent or exactly the integer 1
//!   (`5.0` or `"5"` would be read as 5 by the upstream).

use serde_json::{Map, Value};

use crate::{config::OutputLimitField, error::ServiceError};

/// Fields that limit the output, in every dialect sluice knows of. All are
/// removed from the body sent upstream, and exactly one is written back.
pub const OUTPUT_LIMIT_FIELDS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "max_new_tokens",
    "n_predict",
    "num_predict",
    "maxTokens",
    "maxOutputTokens",
];

/// Fields that multiply the output; each must be absent or exactly 1.
const MULTIPLIER_FIELDS: &[&str] = &["n", "best_of"];

/// Fields that make an upstream bill for something other than the tokens the
/// gateway meters (built-in tools, audio, routing to another model or
/// provider, a faster tier): each must be absent, null, or the one value
/// given here (`None`: no value is allowed).
const COST_FIELDS: &[(&str, Option<&[&str]>)] = &[
    ("service_tier", Some(&["auto", "default"])),
    ("audio", None),
    ("web_search_options", None),
    ("prediction", None),
    ("models", None),
    ("plugins", None),
    ("provider", None),
    ("route", None),
    ("transforms", None),
    // Log-probabilities of the prompt, or more per token than the answer's
    // size allowance covers.
    ("n_probs", None),
    ("prompt_logprobs", None),
];

/// Tool types an upstream runs as plain model output; any other (a hosted
/// search, a code interpreter) is billed per call by the upstream.
const OUTPUT_TOOL_TYPES: &[&str] = &["function", "custom"];

fn unsupported(message: String) -> ServiceError {
    ServiceError::bad_request("unsupported_parameter", message)
}

/// Refuse what would have the upstream charge for more than the gateway
/// meters (see [`COST_FIELDS`]).
fn refuse_unmetered_costs(raw: &Map<String, Value>) -> Result<(), ServiceError> {
    for (field, allowed) in COST_FIELDS {
        match (raw.get(*field), allowed) {
            (None | Some(Value::Null), _) => {}
            (Some(Value::String(v)), Some(allowed)) if allowed.contains(&v.as_str()) => {}
            (Some(_), Some(allowed)) => {
                return Err(unsupported(format!(
                    "{field} may only be one of {allowed:?} or left out: another value is billed beyond the metered tokens"
                )));
            }
            (Some(_), None) => {
                return Err(unsupported(format!(
                    "{field} is not supported: the upstream would bill it beyond the metered tokens"
                )));
            }
        }
    }
    match raw.get("top_logprobs") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some_and(|n| n <= MAX_TOP_LOGPROBS) => {}
        Some(_) => {
            return Err(unsupported(format!(
                "top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}"
            )));
        }
    }
    match raw.get("echo") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(_) => {
            return Err(unsupported(
                "echo is not supported: the prompt would come back as output".into(),
            ));
        }
    }
    match raw.get("modalities") {
        None | Some(Value::Null) => {}
        Some(Value::Array(m)) if m.iter().all(|x| x.as_str() == Some("text")) => {}
        Some(_) => {
            return Err(unsupported(
                "modalities may only be [\"text\"]: audio output is not metered".into(),
            ));
        }
    }
    if let Some(Value::Array(tools)) = raw.get("tools") {
        for tool in tools {
            let kind = tool
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            if !OUTPUT_TOOL_TYPES.contains(&kind) {
                return Err(unsupported(format!(
                    "tools of type {kind:?} are not supported: only function tools, which are model output, are metered"
                )));
            }
        }
    }
    Ok(())
}

/// Top-level fields that are never tokenized into the prompt: the model, the
/// messages (counted on their own), streaming switches and the limits above.
const NOT_PROMPT_FIELDS: &[&str] = &["model", "messages", "stream", "stream_options"];

/// A validated chat request body.
#[derive(Debug, Clone)]
pub struct ChatBody {
    /// The raw object, limit fields removed; passed through otherwise.
    pub raw: Map<String, Value>,
    /// Public model name asked for.
    pub model: String,
    /// `(role, text)` per message.
    pub messages: Vec<(String, String)>,
    /// Everything else the upstream may tokenize, as the JSON text it is sent
    /// as: counted as input on top of `messages`.
    pub extra_text: String,
    /// The smallest output limit the body gave, if any.
    pub max_tokens: Option<u64>,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
}

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::bad_request("invalid_request", message)
}

/// Append `key` and `value` to the extra text, as the JSON the upstream receives.
fn push_json(extra: &mut String, key: &str, value: &Value) {
    if !extra.is_empty() {
        extra.push('\n');
    }
    extra.push_str(key);
    extra.push_str(": ");
    extra.push_str(&value.to_string());
}

/// Top-level parameters whose number, boolean or null value is not prompt
/// text (sampling settings): not counted. Any other field the upstream
/// receives is counted, key and value.
const SAMPLING_PARAMETERS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "repeat_penalty",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "store",
    "n",
    "best_of",
    "echo",
];

/// The most log-probabilities per token a request may ask for (OpenAI's own limit).
const MAX_TOP_LOGPROBS: u64 = 20;

/// A message's content as text; extra keys of content parts go to `extra`.
fn text_of(content: &Value, extra: &mut String) -> Result<String, ServiceError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                let Some(part) = p.as_object() else {
                    return Err(invalid("each content part must be an object"));
                };
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = match part.get("text") {
                            Some(Value::String(t)) => t,
                            None | Some(Value::Null) => "",
                            Some(_) => return Err(invalid("a text part's text must be a string")),
                        };
                        s.push_str(text);
                    }
                    Some(other) => {
                        return Err(ServiceError::bad_request(
                            "unsupported_content",
                            format!("content parts of type {other:?} are not supported; send text"),
                        ));
                    }
                    None => return Err(invalid("a content part has no type")),
                }
                for (k, v) in part {
                    if k != "type" && k != "text" {
                        push_json(extra, k, v);
                    }
                }
            }
            Ok(s)
        }
        _ => Err(invalid(
            "message content must be a string or an array of parts",
        )),
    }
}

/// Numbers, booleans and null: never rendered into a prompt, and small.
/// (Strings, arrays and objects may be: they are counted.)
fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::Number(_) | Value::Bool(_) | Value::Null)
}

/// An output limit as the upstream reads it: a positive JSON integer.
fn positive(v: &Value, field: &str) -> Result<u64, ServiceError> {
    v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
        ServiceError::bad_request(
            "invalid_request",
            format!("{field} must be a positive integer"),
        )
    })
}

impl ChatBody {
    /// Validate a JSON value as a chat request.
    pub fn parse(v: Value) -> Result<ChatBody, ServiceError> {
        let Value::Object(mut raw) = v else {
            return Err(invalid("the request body must be a JSON object"));
        };
        let model = match raw.get("model") {
            None | Some(Value::Null) => return Err(invalid("missing required field: model")),
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(Value::String(_)) => return Err(invalid("model must not be empty")),
            Some(_) => return Err(invalid("model must be a string")),
        };
        let msgs = raw
            .get("messages")
            .and_then(Value::as_array)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| invalid("messages must be a non-empty array"))?;
        let mut extra = String::new();
        let mut messages = Vec::with_capacity(msgs.len());
        for m in msgs {
            let Some(m) = m.as_object() else {
                return Err(invalid("each message must be an object"));
            };
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("each message needs a role"))?;
            let content = text_of(m.get("content").unwrap_or(&Value::Null), &mut extra)?;
            // `name`, `tool_calls`, `tool_call_id`, `function_call`, ...: rendered too.
            for (k, v) in m {
                if k != "role" && k != "content" {
                    push_json(&mut extra, k, v);
                }
            }
            messages.push((role.to_owned(), content));
        }
        let mut max_tokens: Option<u64> = None;
        for field in OUTPUT_LIMIT_FIELDS {
            if let Some(v) = raw.remove(*field)
                && !v.is_null()
            {
                let n = positive(&v, field)?;
                max_tokens = Some(max_tokens.map_or(n, |m| m.min(n)));
            }
        }
        // Ollama's native options carry a limit too.
        if let Some(Value::Object(options)) = raw.get_mut("options")
            && let Some(v) = options.remove("num_predict")
            && !v.is_null()
        {
            let n = positive(&v, "options.num_predict")?;
            max_tokens = Some(max_tokens.map_or(n, |m| m.min(n)));
        }
        for field in MULTIPLIER_FIELDS {
            match raw.get(*field) {
                None | Some(Value::Null) => {}
                Some(v) if v.as_u64() == Some(1) => {}
                Some(_) => {
                    return Err(unsupported(format!(
                        "{field} must be 1 (the integer) or left out: one answer per request"
                    )));
                }
            }
        }
        refuse_unmetered_costs(&raw)?;
        let stream = match raw.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("stream must be a boolean")),
        };
        let include_usage = raw
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        for (k, v) in &raw {
            let sampling = is_scalar(v) && SAMPLING_PARAMETERS.contains(&k.as_str());
            if !NOT_PROMPT_FIELDS.contains(&k.as_str()) && !sampling {
                push_json(&mut extra, k, v);
            }
        }
        Ok(ChatBody {
            raw,
            model,
            messages,
            extra_text: extra,
            max_tokens,
            stream,
            include_usage,
        })
    }

    /// The body for the upstream: the model mapped, and exactly one output
    /// limit, `max_tokens`, in the field the upstream reads.
    pub fn upstream_body(
        &self,
        upstream_model: &str,
        field: OutputLimitField,
        max_tokens: u64,
    ) -> Map<String, Value> {
        let mut b = self.raw.clone();
        b.insert("model".into(), upstream_model.into());
        b.insert(field.as_str().into(), max_tokens.into());
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
        let up = b.upstream_body("up", OutputLimitField::MaxTokens, 5);
        assert_eq!(up["model"], "up");
        assert_eq!(up["foo"], 1);
        assert_eq!(
            b.extra_text, "foo: 1",
            "an unknown field is counted, key and value"
        );
        let parts = ChatBody::parse(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "max_completion_tokens": 7})).unwrap();
        assert_eq!(parts.messages[0].1, "ab");
        assert_eq!(parts.max_tokens, Some(7));
        for bad in [
            json!([]),
            json!({"messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": [{"content": "x"}]}),
            json!({"model": "m", "messages": ["x"]}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n_predict": 4.5}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        ] {
            assert_eq!(
                ChatBody::parse(bad.clone()).unwrap_err().kind,
                crate::ErrorKind::Invalid,
                "{bad}"
            );
        }
    }

    /// `"model": 5` was answered "missing required field: model".
    #[test]
    fn a_model_that_is_not_a_string_is_named_as_such() {
        let e =
            ChatBody::parse(json!({"model": 5, "messages": [{"role": "user", "content": "x"}]}))
                .unwrap_err();
        assert_eq!(e.message, "model must be a string");
    }

    /// Tool definitions, a response schema, a message's name and assistant
    /// tool calls were forwarded but not counted: a megabyte of tool
    /// description was held and charged as 9 input tokens.
    #[test]
    fn everything_the_upstream_tokenizes_is_counted_as_input() {
        let b = ChatBody::parse(json!({
            "model": "m",
            "messages": [
                {"role": "user", "name": "alice", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": \"ARGS\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "result"},
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "description": "DESCRIPTION", "parameters": {}}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "SCHEMA"}},
            "vendor_extension": {"anything": "UNKNOWN"},
            "temperature": 0.5,
        }))
        .unwrap();
        for needle in [
            "alice",
            "ARGS",
            "c1",
            "DESCRIPTION",
            "SCHEMA",
            "UNKNOWN",
            "ephemeral",
        ] {
            assert!(
                b.extra_text.contains(needle),
                "{needle} not counted: {}",
                b.extra_text
            );
        }
        assert!(!b.extra_text.contains("temperature"));
        assert!(
            !b.extra_text.contains("hi\""),
            "message text is counted once, as messages"
        );
    }

    /// With `max_completion_tokens: 1, max_tokens: 4000` the hold covered one
    /// token and an upstream honouring `max_tokens` produced 4,000.
    #[test]
    fn the_body_sent_upstream_carries_exactly_one_output_limit() {
        let b = ChatBody::parse(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 1, "max_tokens": 4000, "n_predict": 9000, "num_predict": 50,
            "options": {"num_predict": 7000, "temperature": 0},
        }))
        .unwrap();
        assert_eq!(
            b.max_tokens,
            Some(1),
            "the smallest limit given is the one held for"
        );
        for field in [
            OutputLimitField::MaxTokens,
            OutputLimitField::MaxCompletionTokens,
        ] {
            let up = b.upstream_body("up", field, 1);
            let limits: Vec<&str> = OUTPUT_LIMIT_FIELDS
                .iter()
                .copied()
                .filter(|f| up.contains_key(*f))
                .collect();
            assert_eq!(limits, vec![field.as_str()]);
            assert_eq!(up[field.as_str()], 1);
            assert!(up["options"].get("num_predict").is_none());
            assert_eq!(up["options"]["temperature"], 0);
        }
    }

    /// `n: 5.0` and `n: "5"` slipped past the `n = 1` check and 5 choices came back.
    #[test]
    fn output_multipliers_must_be_the_integer_one() {
        for n in [
            json!(5.0),
            json!("5"),
            json!(2),
            json!(1.0),
            json!(true),
            json!("1"),
        ] {
            for field in ["n", "best_of"] {
                let r = ChatBody::parse(
                    json!({"model": "m", "messages": [{"role": "user", "content": "x"}], field: n.clone()}),
                );
                assert_eq!(r.unwrap_err().code, "unsupported_parameter", "{field}: {n}");
            }
        }
        assert!(ChatBody::parse(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1, "best_of": null})).is_ok());
    }

    /// A priority tier, audio output, hosted web search or a fallback model
    /// list are billed by the upstream beyond the tokens the gateway meters.
    #[test]
    fn what_the_upstream_would_bill_beyond_metered_tokens_is_refused() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            ChatBody::parse(b)
        };
        for (k, v) in [
            ("service_tier", json!("priority")),
            ("service_tier", json!("flex")),
            ("service_tier", json!(1)),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("modalities", json!(["text", "audio"])),
            ("modalities", json!("audio")),
            ("web_search_options", json!({})),
            ("prediction", json!({"type": "content", "content": "x"})),
            ("models", json!(["openai/gpt-4o", "anthropic/claude-opus"])),
            ("plugins", json!([{"id": "web"}])),
            ("provider", json!({"order": ["x"]})),
            ("route", json!("fallback")),
            ("tools", json!([{"type": "web_search_preview"}])),
            ("top_logprobs", json!(21)),
            ("top_logprobs", json!(5.5)),
            ("n_probs", json!(10)),
            ("prompt_logprobs", json!(1)),
            ("echo", json!(true)),
        ] {
            let r = with(k, v.clone());
            assert_eq!(r.unwrap_err().code, "unsupported_parameter", "{k}: {v}");
        }
        for (k, v) in [
            ("service_tier", json!("auto")),
            ("service_tier", json!("default")),
            ("service_tier", Value::Null),
            ("modalities", json!(["text"])),
            ("audio", Value::Null),
            ("top_logprobs", json!(20)),
            ("echo", json!(false)),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
            ),
            ("tools", json!([{"function": {"name": "f"}}])),
        ] {
            assert!(with(k, v.clone()).is_ok(), "{k}: {v}");
        }
    }

    /// A 400 KB key with a number for its value, at the top level, on a
    /// message or on a content part, was forwarded and priced as nothing.
    #[test]
    fn long_keys_of_number_fields_are_counted() {
        let key = "k".repeat(400_000);
        for body in [
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], key.clone(): 1}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x", key.clone(): 1}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x", key.clone(): true}]}]}),
        ] {
            let b = ChatBody::parse(body).unwrap();
            assert!(b.extra_text.len() > 400_000, "{}", b.extra_text.len());
        }
        let plain = ChatBody::parse(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "seed": 7})).unwrap();
        assert_eq!(
            plain.extra_text, "",
            "sampling parameters are not prompt text"
        );
        // Many short unknown keys are counted too.
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        for i in 0..1000 {
            body[format!("k{i:030}")] = json!(1);
        }
        assert!(ChatBody::parse(body).unwrap().extra_text.len() > 30_000);
    }
}

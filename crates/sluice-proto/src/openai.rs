//! The subset of OpenAI's chat completions API that sluice serves, on the
//! wire. A request body is passed through to the upstream as it came (the
//! gateway validates and prices it field by field, and forwards what it
//! priced), so [`ChatCompletionRequest`] names the fields sluice reads and
//! keeps every other one in `extra`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::{PriceCard, Receipt};

/// Body of `POST /v1/chat/completions` and `POST /v1/estimate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A model `GET /v1/models` lists.
    pub model: String,
    /// The conversation, at least one message.
    pub messages: Vec<ChatMessage>,
    /// The most output to pay for (`max_completion_tokens`, `n_predict`,
    /// `num_predict`, … are read too; the smallest wins). Default: the
    /// model's `default_max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// `{"include_usage": true}`: a final chunk carries the usage (sluice always sends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    /// Every other field, passed to the upstream. Text in it is counted as
    /// input; fields the upstream would bill beyond the metered tokens
    /// (`audio`, hosted tools, `n` > 1, …) are refused.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or an array of `{"type": "text", "text": …}` parts.
    #[serde(default)]
    pub content: Value,
    /// `name`, `tool_calls`, `tool_call_id`, …: passed through and counted as input.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Token counts and the charge, in every answer's `usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Input.
    pub prompt_tokens: u64,
    /// Output.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
    /// What the request cost.
    pub cost_msat: u64,
}

impl Usage {
    /// The usage of `input` and `output` tokens that cost `cost_msat`.
    pub fn new(input: u64, output: u64, cost_msat: u64) -> Usage {
        Usage {
            prompt_tokens: input,
            completion_tokens: output,
            total_tokens: input.saturating_add(output),
            cost_msat,
        }
    }
}

/// `200` to a non-streaming chat request: the upstream's completion, its
/// usage replaced by the metered one, and sluice's receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    /// The completion's id.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model asked for.
    pub model: String,
    /// The answer (one).
    pub choices: Vec<ChatChoice>,
    /// The metered usage and its cost.
    pub usage: Usage,
    /// sluice's receipt.
    pub sluice: Receipt,
    /// Present only when the free tier paid: the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_tier: Option<String>,
    /// Present only when the free tier paid: what the pool absorbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absorbed_msat: Option<u64>,
    /// The upstream's other fields, as it sent them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One answer of a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    /// Always 0.
    pub index: u32,
    /// The answer.
    pub message: ChatMessage,
    /// `stop`, `length`, `tool_calls`, …
    pub finish_reason: Option<String>,
}

/// One server-sent event of a streamed answer (`data: <chunk>`; the stream
/// ends with `data: [DONE]`). The last chunk before `[DONE]` carries
/// `usage` and the `sluice` receipt; a failure mid-stream is an
/// `{"error": …}` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// The completion's id.
    pub id: Value,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: Value,
    /// The model asked for.
    pub model: String,
    /// The deltas.
    pub choices: Vec<Value>,
    /// Present only on the last chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Present only on the last chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sluice: Option<Receipt>,
}

/// A model sluice sells, with its price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    /// Its name.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Always 0.
    pub created: u64,
    /// Always `sluice`.
    pub owned_by: String,
    /// Its price at the current BTC/USD.
    pub pricing: PriceCard,
    /// The most output a request may pay for.
    pub max_output_tokens: u64,
    /// The output paid for when a request gives no limit.
    pub default_max_tokens: u64,
    /// Input and output together, at most.
    pub context_length: u64,
}

/// `200` to `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<Model>,
    /// The BTC/USD price the prices are at (a decimal string).
    pub btc_usd: String,
    /// Where the price came from.
    pub btc_usd_source: String,
}

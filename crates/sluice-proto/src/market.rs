//! The market protocol between a provider node (`sluice node`, which sells inference) and the
//! gateway. Everything here is pure: no I/O, no async, and no clock (`now` is always passed
//! in, in unix seconds).
//!
//! # Transport
//!
//! The node dials out to the gateway and keeps one long-lived WebSocket open; every text
//! frame is one [`Envelope`]: the JSON of a Nostr event (NIP-01, see [`crate::nostr`]). A
//! provider's identity is its Nostr key (BIP-340), shown as its `npub`.
//!
//! # Envelopes ([`seal`], [`open`])
//!
//! An envelope is an event of kind [`ENVELOPE_KIND`] (25932, in NIP-01's ephemeral range
//! 20000–29999, so relays never store one) whose `content` is the JSON of a [`Message`] and
//! whose tags are:
//!
//! | tag | value | rule |
//! |---|---|---|
//! | `t` | the message's type ([`MessageType::as_str`]) | exactly one; equals the body's `type` |
//! | `p` | the recipient's lowercase hex pubkey | at most one; required on every type but [`Challenge`] |
//!
//! [`open`] refuses, each with its own [`MarketError`] variant (so each can be counted,
//! [`MarketError::label`]), in this order: a frame over [`MAX_FRAME_BYTES`] (before any JSON
//! is parsed); a frame that is not an event's JSON; an event without a signature; another
//! kind; a missing, repeated or unknown `t` tag; a frame over its type's limit
//! ([`MessageType::max_bytes`], before the body is parsed); a `created_at` more than
//! [`MESSAGE_WINDOW_SECS`] before or after `now`; another recipient; a bad id or signature;
//! a body whose `type` is not the `t` tag; a body that is not a valid message of its type.
//! Cheap checks come first, so a flood of junk costs no Schnorr verification.
//!
//! The `p` tag binds a message to one party: a message signed for gateway A is refused by
//! gateway B. Only a [`Challenge`] goes unaddressed, because the gateway does not know who
//! dialed in until the [`Hello`]; an addressed challenge must still be addressed to the
//! opener.
//!
//! # Replays
//!
//! [`open`] returns the event id in [`Opened::id`]. The caller records it in its seen-set
//! (the store does that) and refuses a message whose id it has seen, with
//! [`MarketError::Replayed`] ([`Opened::unseen`]). An id need only be kept until
//! [`Opened::forget_after`]: after that a replay is refused as [`MarketError::TooOld`]. Two
//! messages with the same body, recipient and second have the same id, so every message
//! carries something that differs (a `seq`, a request id and chunk index, a nonce, a payout
//! id).
//!
//! # Handshake
//!
//! The gateway sends a [`Challenge`] (a fresh nonce and its own public URL). The node checks
//! that the URL is the one it dialed ([`Hello::answering`]), and answers with a [`Hello`]
//! repeating the nonce and that URL, addressed to the gateway's pubkey. The gateway checks
//! both against what it issued and what it is ([`verify_hello`]), so an answer for one
//! gateway cannot be replayed at another, nor relayed by a gateway in the middle: the node
//! signs the URL it dialed, never one it was told.
//!
//! # Unknown fields
//!
//! Bodies that move money or decide what is billed ([`Request`], [`Chunk`], [`Receipt`],
//! [`Failed`], [`Cancel`], [`InvoiceRequest`], [`Invoice`], [`Price`]) and the handshake
//! refuse unknown fields: a field the reader would ignore could change what the writer meant
//! (a discount, another unit). Descriptive bodies ([`Ad`], [`AdModel`], [`Hardware`],
//! [`Heartbeat`]) ignore them, so a newer node can describe more than an older gateway knows
//! without being shut out; a model's [`Price`] inside an ad is still strict.
//!
//! # Money and numbers
//!
//! Amounts are integer millisatoshis (`u64`); there are no floats anywhere in the protocol
//! (throughput is in milli-tokens per second).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::macaroon::quote_untrusted;
use crate::nostr::{Event, Keys, NostrError};

/// Kind of every market envelope. Ephemeral (20000–29999: relays do not store it) and not
/// taken by a NIP or by an application we know of (22242 is NIP-42 AUTH, 27235 NIP-98,
/// 23194/23195 NIP-47, 24133 NIP-46, 24242 Blossom, 25050 and 25910 other applications).
pub const ENVELOPE_KIND: u32 = 25932;
/// Largest accepted difference between a message's `created_at` and `now`, either way.
pub const MESSAGE_WINDOW_SECS: u64 = 60;
/// Largest frame of every type but [`Request`].
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest [`Request`] frame: a chat body of the gateway's default 1 MiB limit, whose
/// escaping as a JSON string inside `content` can at most double it, with room to spare.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest frame of any type: anything longer is refused before any JSON is parsed. A
/// gateway, which is never sent a [`Request`], may cap its WebSocket frames at
/// [`MAX_MESSAGE_BYTES`].
pub const MAX_FRAME_BYTES: usize = MAX_REQUEST_BYTES;

/// A signed envelope on the wire: a Nostr event of kind [`ENVELOPE_KIND`].
pub type Envelope = Event;

/// Everything that makes [`open`] (or a handshake check) refuse a message. Each variant is
/// one reason, so refusals can be counted by [`label`](Self::label). Strings taken from the
/// message are quoted, escaped and truncated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    /// The frame is longer than the limit (the frame limit, or its type's).
    #[error("message too large: {size} bytes, limit {limit}")]
    Oversized {
        /// The frame's length in bytes.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The frame is not the JSON of a Nostr event.
    #[error("not a JSON event: {0}")]
    NotJson(String),
    /// The event carries no signature.
    #[error("unsigned message")]
    Unsigned,
    /// The event is not of kind [`ENVELOPE_KIND`].
    #[error("wrong kind {found}, expected {}", ENVELOPE_KIND)]
    WrongKind {
        /// The event's kind.
        found: u32,
    },
    /// The tags break the envelope's rules (no `t` tag, several `t` or `p` tags).
    #[error("bad envelope: {0}")]
    BadEnvelope(&'static str),
    /// The `t` tag or the body's `type` names no message type of this protocol.
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// `created_at` is more than the window before `now`.
    #[error("message too old (created_at {created_at}, now {now}, window {window} s)")]
    TooOld {
        /// The message's `created_at`.
        created_at: u64,
        /// The time it was checked against.
        now: u64,
        /// Largest accepted difference, in seconds.
        window: u64,
    },
    /// `created_at` is more than the window after `now`.
    #[error("message from the future (created_at {created_at}, now {now}, window {window} s)")]
    TooFarInFuture {
        /// The message's `created_at`.
        created_at: u64,
        /// The time it was checked against.
        now: u64,
        /// Largest accepted difference, in seconds.
        window: u64,
    },
    /// The message is addressed to someone else, or not addressed when it must be.
    #[error("wrong recipient: addressed to {found:?}, expected {expected:?}")]
    WrongRecipient {
        /// The recipient the opener expected (lowercase hex), if any.
        expected: Option<String>,
        /// The `p` tag's value, quoted, if any.
        found: Option<String>,
    },
    /// The id is not the hash of the event, or the signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(#[source] NostrError),
    /// The `t` tag and the body's `type` disagree.
    #[error("type mismatch: tagged {tag}, body is {body}")]
    TypeMismatch {
        /// The `t` tag's type.
        tag: String,
        /// The body's `type`, quoted.
        body: String,
    },
    /// The body is not a valid message of its type.
    #[error("bad message body: {0}")]
    BadBody(String),
    /// The message's id is already in the seen-set.
    #[error("replayed message {id}")]
    Replayed {
        /// The event id seen before.
        id: String,
    },
    /// A [`Hello`] answers another nonce than the one issued.
    #[error("wrong challenge nonce")]
    WrongChallenge,
    /// A [`Hello`] or [`Challenge`] names another gateway URL.
    #[error("wrong gateway: message names {found}, expected {expected}")]
    WrongGateway {
        /// The URL in the message, quoted.
        found: String,
        /// The URL expected, quoted.
        expected: String,
    },
}

impl MarketError {
    /// A stable snake_case name of the reason, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            MarketError::Oversized { .. } => "oversized",
            MarketError::NotJson(_) => "not_json",
            MarketError::Unsigned => "unsigned",
            MarketError::WrongKind { .. } => "wrong_kind",
            MarketError::BadEnvelope(_) => "bad_envelope",
            MarketError::UnknownType(_) => "unknown_type",
            MarketError::TooOld { .. } => "too_old",
            MarketError::TooFarInFuture { .. } => "too_far_in_future",
            MarketError::WrongRecipient { .. } => "wrong_recipient",
            MarketError::BadSignature(_) => "bad_signature",
            MarketError::TypeMismatch { .. } => "type_mismatch",
            MarketError::BadBody(_) => "bad_body",
            MarketError::Replayed { .. } => "replayed",
            MarketError::WrongChallenge => "wrong_challenge",
            MarketError::WrongGateway { .. } => "wrong_gateway",
        }
    }
}

/// The type of a [`Message`]: its `type` field and its envelope's `t` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// [`Challenge`], gateway → node.
    Challenge,
    /// [`Hello`], node → gateway.
    Hello,
    /// [`Ad`], node → gateway.
    Ad,
    /// [`Heartbeat`], node → gateway.
    Heartbeat,
    /// [`Request`], gateway → node.
    Request,
    /// [`Chunk`], node → gateway.
    Chunk,
    /// [`Receipt`], node → gateway.
    Receipt,
    /// [`Failed`], node → gateway.
    Failed,
    /// [`Cancel`], gateway → node.
    Cancel,
    /// [`InvoiceRequest`], gateway → node.
    InvoiceRequest,
    /// [`Invoice`], node → gateway.
    Invoice,
}

impl MessageType {
    /// Every message type.
    pub const ALL: [MessageType; 11] = [
        MessageType::Challenge,
        MessageType::Hello,
        MessageType::Ad,
        MessageType::Heartbeat,
        MessageType::Request,
        MessageType::Chunk,
        MessageType::Receipt,
        MessageType::Failed,
        MessageType::Cancel,
        MessageType::InvoiceRequest,
        MessageType::Invoice,
    ];

    /// The wire name (snake_case), as in the body's `type` and the `t` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Challenge => "challenge",
            MessageType::Hello => "hello",
            MessageType::Ad => "ad",
            MessageType::Heartbeat => "heartbeat",
            MessageType::Request => "request",
            MessageType::Chunk => "chunk",
            MessageType::Receipt => "receipt",
            MessageType::Failed => "failed",
            MessageType::Cancel => "cancel",
            MessageType::InvoiceRequest => "invoice_request",
            MessageType::Invoice => "invoice",
        }
    }

    /// The type of a wire name, if it is one.
    pub fn from_wire(name: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The largest frame accepted for this type.
    pub fn max_bytes(self) -> usize {
        match self {
            MessageType::Request => MAX_REQUEST_BYTES,
            _ => MAX_MESSAGE_BYTES,
        }
    }

    /// Whether an envelope of this type must carry a `p` tag. Only a [`Challenge`] may go
    /// without: the gateway does not yet know who dialed in.
    pub fn must_be_addressed(self) -> bool {
        self != MessageType::Challenge
    }
}

/// Every message of the protocol, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Gateway → node: prove who you are.
    Challenge(Challenge),
    /// Node → gateway: the signed answer to a challenge.
    Hello(Hello),
    /// Node → gateway: what the node sells; replaces its previous ad.
    Ad(Ad),
    /// Node → gateway: current load, every few seconds.
    Heartbeat(Heartbeat),
    /// Gateway → node: run a chat completion.
    Request(Request),
    /// Node → gateway: a piece of a request's output.
    Chunk(Chunk),
    /// Node → gateway: the account of a finished request.
    Receipt(Receipt),
    /// Node → gateway: a request could not be served.
    Failed(Failed),
    /// Gateway → node: stop working on a request.
    Cancel(Cancel),
    /// Gateway → node: send an invoice for a payout.
    InvoiceRequest(InvoiceRequest),
    /// Node → gateway: the invoice for a payout.
    Invoice(Invoice),
}

impl Message {
    /// The message's type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Challenge(_) => MessageType::Challenge,
            Message::Hello(_) => MessageType::Hello,
            Message::Ad(_) => MessageType::Ad,
            Message::Heartbeat(_) => MessageType::Heartbeat,
            Message::Request(_) => MessageType::Request,
            Message::Chunk(_) => MessageType::Chunk,
            Message::Receipt(_) => MessageType::Receipt,
            Message::Failed(_) => MessageType::Failed,
            Message::Cancel(_) => MessageType::Cancel,
            Message::InvoiceRequest(_) => MessageType::InvoiceRequest,
            Message::Invoice(_) => MessageType::Invoice,
        }
    }
}

/// Gateway → node, first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// A fresh random nonce, used once.
    pub nonce: String,
    /// The gateway's own public URL, as nodes dial it.
    pub gateway: String,
}

/// Node → gateway: the answer to a [`Challenge`], addressed to the gateway's pubkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The challenge's nonce.
    pub nonce: String,
    /// The URL the node dialed (equal to the challenge's).
    pub gateway: String,
    /// The node's software version.
    pub software: String,
}

impl Hello {
    /// The answer to `challenge` from a node that dialed `dialed_url`. Refuses a challenge
    /// naming another URL: signing the URL one was told would let a gateway in the middle
    /// relay another gateway's challenge and log in as this node there.
    pub fn answering(
        challenge: &Challenge,
        dialed_url: &str,
        software: &str,
    ) -> Result<Hello, MarketError> {
        if challenge.gateway != dialed_url {
            return Err(MarketError::WrongGateway {
                found: quote_untrusted(challenge.gateway.as_bytes()),
                expected: quote_untrusted(dialed_url.as_bytes()),
            });
        }
        Ok(Hello {
            nonce: challenge.nonce.clone(),
            gateway: dialed_url.to_owned(),
            software: software.to_owned(),
        })
    }
}

/// The gateway's check of an opened [`Hello`]: it answers `issued_nonce` (compared in
/// constant time; an empty nonce never matches) and names `own_url`, exactly. The nonce must
/// then be used up by the caller; the sender is the node's identity.
pub fn verify_hello(hello: &Hello, issued_nonce: &str, own_url: &str) -> Result<(), MarketError> {
    if issued_nonce.is_empty() || !bool::from(hello.nonce.as_bytes().ct_eq(issued_nonce.as_bytes()))
    {
        return Err(MarketError::WrongChallenge);
    }
    if hello.gateway != own_url {
        return Err(MarketError::WrongGateway {
            found: quote_untrusted(hello.gateway.as_bytes()),
            expected: quote_untrusted(own_url.as_bytes()),
        });
    }
    Ok(())
}

/// Node → gateway: what the node sells. Replaces the node's previous ad if its `seq` is
/// higher ([`ad_supersedes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ad {
    /// Increases with every ad the node sends.
    pub seq: u64,
    /// The models on offer.
    pub models: Vec<AdModel>,
    /// The machine they run on.
    pub hardware: Hardware,
    /// The node's software version.
    pub software: String,
}

/// One model in an [`Ad`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdModel {
    /// The model's name, as requests name it.
    pub name: String,
    /// Its family (e.g. `llama`, `qwen2`).
    pub family: String,
    /// Its quantization (e.g. `Q4_K_M`, `f16`).
    pub quantization: String,
    /// Context window, in tokens.
    pub context_window: u64,
    /// Requests the node runs on it at once.
    pub max_concurrency: u32,
    /// What the node charges.
    pub price: Price,
}

/// A model's price, in millisatoshis per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million input tokens.
    pub input_msat_per_mtok: u64,
    /// Per million output tokens.
    pub output_msat_per_mtok: u64,
}

/// The machine behind an [`Ad`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// Memory available to models, in bytes.
    pub memory_bytes: u64,
    /// The accelerator (e.g. `cuda:RTX 4090`, `metal`), if any.
    pub accelerator: Option<String>,
    /// CPU cores.
    pub cores: u32,
}

/// Node → gateway, every few seconds: the node's load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Requests running.
    pub in_flight: u32,
    /// Requests waiting.
    pub queued: u32,
    /// Recent output throughput, in **milli**-tokens per second (12.5 tok/s is 12500).
    pub tokens_per_sec_recent: u64,
    /// Increases with every heartbeat the node sends.
    pub seq: u64,
}

/// Gateway → node: run a chat completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The gateway's id of the request; every answer names it.
    pub request_id: String,
    /// The model to run (an [`AdModel::name`]).
    pub model: String,
    /// The OpenAI chat completion body.
    pub body: serde_json::Value,
    /// The most output tokens the request may produce: what its payment covers.
    pub max_tokens: u64,
    /// Whether to answer in [`Chunk`]s as tokens come.
    pub stream: bool,
}

/// Node → gateway: a piece of a request's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// The request it belongs to.
    pub request_id: String,
    /// 0 for the first chunk of a request, then consecutive.
    pub index: u32,
    /// The output text it adds.
    pub delta: String,
}

/// Node → gateway, at the end of every request: what was done, to be checked
/// ([`receipt_matches`]) and paid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The request it accounts for.
    pub request_id: String,
    /// The model that ran.
    pub model: String,
    /// Input tokens the model read.
    pub input_tokens: u64,
    /// Output tokens it produced.
    pub output_tokens: u64,
    /// [`output_hash`] of the exact concatenated output text sent.
    pub output_sha256: String,
    /// Milliseconds from the request to the first token.
    pub first_token_ms: u64,
    /// Milliseconds from the request to the last token.
    pub total_ms: u64,
    /// Why generation stopped (OpenAI's `finish_reason`: `stop`, `length`, …).
    pub finish_reason: String,
}

/// Node → gateway: a request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failed {
    /// The request.
    pub request_id: String,
    /// Why, for logs.
    pub reason: String,
}

/// Gateway → node: stop working on a request (its client is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// The request.
    pub request_id: String,
}

/// Gateway → node: send a BOLT11 invoice for a payout of `amount_msat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRequest {
    /// The gateway's id of the payout; the answer names it.
    pub payout_id: String,
    /// The amount the invoice must be for, in millisatoshis.
    pub amount_msat: u64,
}

/// Node → gateway: the invoice answering an [`InvoiceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invoice {
    /// The payout it answers.
    pub payout_id: String,
    /// The BOLT11 invoice.
    pub bolt11: String,
}

/// Whether an ad (or heartbeat) numbered `new_seq` replaces one numbered `old_seq`: only a
/// strictly higher number does, so a delayed or replayed older one is stale.
pub fn ad_supersedes(old_seq: u64, new_seq: u64) -> bool {
    new_seq > old_seq
}

/// Signs `message` into an envelope at `now`, addressed to `recipient` (a lowercase hex
/// pubkey, as [`Keys::public_hex`]; lower-cased here) when given.
pub fn seal(keys: &Keys, message: &Message, recipient: Option<&str>, now: u64) -> Envelope {
    let mut tags = vec![vec![
        "t".to_owned(),
        message.message_type().as_str().to_owned(),
    ]];
    if let Some(recipient) = recipient {
        tags.push(vec!["p".to_owned(), recipient.trim().to_ascii_lowercase()]);
    }
    // Strings, integers, booleans and JSON values always serialise.
    let content = serde_json::to_string(message).unwrap_or_default();
    Event::sign(keys, now, ENVELOPE_KIND, tags, content)
}

/// A message [`open`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The signer (lowercase hex): the node's or the gateway's identity.
    pub sender_pubkey: String,
    /// The event id: record it in the seen-set, and refuse the message if it was there.
    pub id: String,
    /// The envelope's `created_at`.
    pub created_at: u64,
    /// The message.
    pub message: Message,
}

impl Opened {
    /// The sender as a NIP-19 `npub`.
    pub fn sender_npub(&self) -> Result<String, NostrError> {
        crate::nostr::npub(&self.sender_pubkey)
    }

    /// The message, if recording its id found it new (`first_sighting`); else
    /// [`MarketError::Replayed`].
    pub fn unseen(self, first_sighting: bool) -> Result<Opened, MarketError> {
        if first_sighting {
            Ok(self)
        } else {
            Err(MarketError::Replayed { id: self.id })
        }
    }

    /// The time after which the seen-set may forget this id: from then on [`open`] refuses
    /// a replay as too old.
    pub fn forget_after(&self) -> u64 {
        self.created_at.saturating_add(MESSAGE_WINDOW_SECS)
    }
}

/// An event as it arrives: `id` and `sig` may be missing, so that an unsigned message is
/// told apart from a malformed one.
#[derive(Deserialize)]
struct ArrivingEvent {
    #[serde(default)]
    id: String,
    pubkey: String,
    created_at: u64,
    kind: u32,
    tags: Vec<Vec<String>>,
    content: String,
    #[serde(default)]
    sig: String,
}

/// Just the `type` of a body.
#[derive(Deserialize)]
struct BodyType {
    #[serde(rename = "type")]
    ty: String,
}

/// Opens an envelope received as the frame `raw`, at `now`, by `expected_recipient` (the
/// opener's lowercase hex pubkey). The checks and their order are in the module docs. The
/// caller must then record [`Opened::id`] and refuse the message if it was seen
/// ([`Opened::unseen`]).
pub fn open(raw: &str, expected_recipient: Option<&str>, now: u64) -> Result<Opened, MarketError> {
    if raw.len() > MAX_FRAME_BYTES {
        return Err(MarketError::Oversized {
            size: raw.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let arriving: ArrivingEvent = serde_json::from_str(raw)
        .map_err(|e| MarketError::NotJson(quote_untrusted(e.to_string().as_bytes())))?;
    if arriving.sig.is_empty() {
        return Err(MarketError::Unsigned);
    }
    if arriving.kind != ENVELOPE_KIND {
        return Err(MarketError::WrongKind {
            found: arriving.kind,
        });
    }
    let event = Event {
        id: arriving.id,
        pubkey: arriving.pubkey,
        created_at: arriving.created_at,
        kind: arriving.kind,
        tags: arriving.tags,
        content: arriving.content,
        sig: arriving.sig,
    };

    let tagged = single_tag(&event, "t", "several `t` tags")?
        .ok_or(MarketError::BadEnvelope("no `t` tag"))?;
    let ty = MessageType::from_wire(tagged)
        .ok_or_else(|| MarketError::UnknownType(quote_untrusted(tagged.as_bytes())))?;
    if raw.len() > ty.max_bytes() {
        return Err(MarketError::Oversized {
            size: raw.len(),
            limit: ty.max_bytes(),
        });
    }

    check_window(event.created_at, now)?;
    check_recipient(&event, ty, expected_recipient)?;
    event.verify().map_err(MarketError::BadSignature)?;

    let body: BodyType = serde_json::from_str(&event.content)
        .map_err(|e| MarketError::BadBody(quote_untrusted(e.to_string().as_bytes())))?;
    let body_ty = MessageType::from_wire(&body.ty)
        .ok_or_else(|| MarketError::UnknownType(quote_untrusted(body.ty.as_bytes())))?;
    if body_ty != ty {
        return Err(MarketError::TypeMismatch {
            tag: ty.as_str().to_owned(),
            body: quote_untrusted(body.ty.as_bytes()),
        });
    }
    let message: Message = serde_json::from_str(&event.content)
        .map_err(|e| MarketError::BadBody(quote_untrusted(e.to_string().as_bytes())))?;

    Ok(Opened {
        sender_pubkey: event.pubkey,
        id: event.id,
        created_at: event.created_at,
        message,
    })
}

/// The value of the one tag named `name`, if there is one; an error if there are several.
fn single_tag<'e>(
    event: &'e Event,
    name: &str,
    several: &'static str,
) -> Result<Option<&'e str>, MarketError> {
    let mut found = event
        .tags
        .iter()
        .filter(|t| t.first().is_some_and(|n| n == name));
    let first = found.next();
    if found.next().is_some() {
        return Err(MarketError::BadEnvelope(several));
    }
    match first {
        None => Ok(None),
        Some(tag) => tag
            .get(1)
            .map(|v| Some(v.as_str()))
            .ok_or(MarketError::BadEnvelope("a tag without a value")),
    }
}

fn check_window(created_at: u64, now: u64) -> Result<(), MarketError> {
    let window = MESSAGE_WINDOW_SECS;
    if now.saturating_sub(created_at) > window {
        return Err(MarketError::TooOld {
            created_at,
            now,
            window,
        });
    }
    if created_at.saturating_sub(now) > window {
        return Err(MarketError::TooFarInFuture {
            created_at,
            now,
            window,
        });
    }
    Ok(())
}

/// A `p` tag must name the opener; no `p` tag is allowed only on types that need none.
fn check_recipient(
    event: &Event,
    ty: MessageType,
    expected: Option<&str>,
) -> Result<(), MarketError> {
    let found = single_tag(event, "p", "several `p` tags")?;
    let expected = expected.map(|e| e.trim().to_ascii_lowercase());
    let ok = match (found, expected.as_deref()) {
        (Some(found), Some(expected)) => found == expected,
        (None, _) => !ty.must_be_addressed(),
        (Some(_), None) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(MarketError::WrongRecipient {
            expected,
            found: found.map(|f| quote_untrusted(f.as_bytes())),
        })
    }
}

/// Lowercase hex SHA-256 of `text`'s UTF-8 bytes: a [`Receipt::output_sha256`].
pub fn output_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// How far a node's output token count may be from the gateway's own: the larger of
/// `absolute` tokens and `per_mille` thousandths of the gateway's count (tokenizers differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTolerance {
    /// Tokens of difference always allowed.
    pub absolute: u64,
    /// Thousandths of the gateway's count allowed (rounded down).
    pub per_mille: u64,
}

impl TokenTolerance {
    /// No difference allowed.
    pub const EXACT: TokenTolerance = TokenTolerance {
        absolute: 0,
        per_mille: 0,
    };

    /// The largest difference allowed around a count of `counted`.
    pub fn allowed(&self, counted: u64) -> u64 {
        let relative = u128::from(counted) * u128::from(self.per_mille) / 1000;
        self.absolute
            .max(u64::try_from(relative).unwrap_or(u64::MAX))
    }
}

/// One way a [`Receipt`] disagrees with what the gateway saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptFailure {
    /// `output_sha256` is not the hash of the text the gateway delivered.
    OutputHashMismatch {
        /// The receipt's hash, as the receipt has it.
        claimed: String,
        /// [`output_hash`] of the delivered text.
        delivered: String,
    },
    /// The receipt claims more output tokens than the gateway counted, beyond tolerance.
    OutputTokensInflated {
        /// The receipt's count.
        claimed: u64,
        /// The gateway's count.
        counted: u64,
        /// The difference allowed.
        allowed: u64,
    },
    /// The receipt claims fewer output tokens than the gateway counted, beyond tolerance.
    OutputTokensDeflated {
        /// The receipt's count.
        claimed: u64,
        /// The gateway's count.
        counted: u64,
        /// The difference allowed.
        allowed: u64,
    },
}

impl ReceiptFailure {
    /// A stable snake_case name, for dispute records and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ReceiptFailure::OutputHashMismatch { .. } => "output_hash_mismatch",
            ReceiptFailure::OutputTokensInflated { .. } => "output_tokens_inflated",
            ReceiptFailure::OutputTokensDeflated { .. } => "output_tokens_deflated",
        }
    }
}

/// The outcome of [`receipt_matches`]: every check that failed, in a fixed order (hash,
/// then count).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiptCheck {
    /// The failed checks; empty when the receipt matches.
    pub failures: Vec<ReceiptFailure>,
}

impl ReceiptCheck {
    /// Whether every check passed.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Compares a node's receipt with what the gateway delivered: the hash of
/// `delivered_text` (the concatenated deltas, exactly), and the output token count against
/// the gateway's `counted_output_tokens` within `tolerance`. The request id and model are
/// the caller's to match.
pub fn receipt_matches(
    receipt: &Receipt,
    delivered_text: &str,
    counted_output_tokens: u64,
    tolerance: TokenTolerance,
) -> ReceiptCheck {
    let mut failures = Vec::new();
    let delivered = output_hash(delivered_text);
    if receipt.output_sha256 != delivered {
        failures.push(ReceiptFailure::OutputHashMismatch {
            claimed: receipt.output_sha256.clone(),
            delivered,
        });
    }
    let (claimed, counted) = (receipt.output_tokens, counted_output_tokens);
    let allowed = tolerance.allowed(counted);
    if claimed.saturating_sub(counted) > allowed {
        failures.push(ReceiptFailure::OutputTokensInflated {
            claimed,
            counted,
            allowed,
        });
    } else if counted.saturating_sub(claimed) > allowed {
        failures.push(ReceiptFailure::OutputTokensDeflated {
            claimed,
            counted,
            allowed,
        });
    }
    ReceiptCheck { failures }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

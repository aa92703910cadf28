//! The Nostr wire formats sluice uses for identity: NIP-01 events, NIP-19 `npub`, a
//! challenge login, NIP-98 HTTP auth and vouches. Everything here is pure: no I/O, and no
//! clock (`now` is always passed in, in unix seconds).
//!
//! # Events (NIP-01)
//!
//! An event's `id` is the lowercase hex SHA-256 of the UTF-8 JSON array
//! `[0,<pubkey>,<created_at>,<kind>,<tags>,<content>]`, written without whitespace and with
//! JSON.stringify's escaping (`\n \" \\ \r \t \b \f` in short form, other control characters
//! as `\u00xx`, everything else verbatim, `/` not escaped). Its `sig` is a BIP-340 Schnorr
//! signature of the 32 id bytes by `pubkey`, an x-only secp256k1 key. [`Event::verify`]
//! requires `pubkey` (64) and `sig` (128) to be lowercase hex, `pubkey` to be a curve
//! point, `id` to equal the recomputed id, and the signature to verify.
//!
//! # Time window
//!
//! Every check below takes `window_secs` and refuses an event whose `created_at` differs from
//! `now` by more than that, in either direction (clocks drift both ways).
//!
//! # Challenge login ([`verify_login`])
//!
//! The server hands out a random nonce; a NIP-07 browser extension signs an event of kind
//! [`LOGIN_KIND`] (22242, as NIP-42 AUTH) carrying the tag `["challenge", <nonce>]`. Clients
//! that can only sign text may instead put the nonce in `content`. When a `challenge` tag is
//! present it decides, whatever the content says.
//!
//! # HTTP auth (NIP-98, [`verify_http_auth`])
//!
//! Header `Authorization: Nostr <base64 of the event JSON>` (scheme case-insensitive,
//! standard or URL-safe base64, padding optional, at most [`MAX_HTTP_AUTH_EVENT_BYTES`]
//! decoded). The event must be of kind [`HTTP_AUTH_KIND`] (27235) and carry:
//!
//! | tag | value | rule |
//! |---|---|---|
//! | `u` | absolute request URL | equals the request URL exactly, except that one trailing `/` may differ |
//! | `method` | HTTP method | equals the request method, ignoring ASCII case |
//! | `payload` | lowercase hex SHA-256 of the body | required when the body is non-empty; if present on an empty body it must be the hash of nothing |
//!
//! Replay protection is the caller's job: [`HttpAuth::event_id`] is the key to remember for
//! the window.
//!
//! # Vouches ([`verify_vouch`])
//!
//! One identity vouches for another with a NIP-32 label event of kind [`VOUCH_KIND`] (1985)
//! carrying `["L", "sluice.trust"]`, `["l", "vouch", "sluice.trust"]` and exactly one
//! `["p", <vouchee hex>]`. Vouching for oneself is refused.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use secp256k1::schnorr::Signature;
use secp256k1::{Keypair, Message, SECP256K1, SecretKey, XOnlyPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::macaroon::quote_untrusted;

/// Kind of a challenge-login event (the NIP-42 AUTH kind).
pub const LOGIN_KIND: u32 = 22242;
/// Kind of a NIP-98 HTTP auth event.
pub const HTTP_AUTH_KIND: u32 = 27235;
/// Kind of a NIP-32 label event, used for vouches.
pub const VOUCH_KIND: u32 = 1985;
/// NIP-32 label namespace of sluice vouches.
pub const VOUCH_NAMESPACE: &str = "sluice.trust";
/// The NIP-32 label that marks a vouch.
pub const VOUCH_LABEL: &str = "vouch";
/// Largest decoded event accepted in a NIP-98 `Authorization` header.
pub const MAX_HTTP_AUTH_EVENT_BYTES: usize = 64 * 1024;

/// NIP-19 human-readable part of a public key.
const NPUB_HRP: &str = "npub";

/// Standard alphabet, padding optional; URL-safe input is translated to it first.
const FLEXIBLE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Everything that can be wrong with a Nostr event or credential. Messages are meant for
/// the client: strings taken from the event are quoted, escaped and truncated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NostrError {
    /// The event (or header) does not parse, or a field has the wrong shape.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// A public key is not 64 hex characters (or an `npub`) naming a secp256k1 point.
    #[error("bad pubkey: {0}")]
    BadPubkey(&'static str),
    /// A secret key is not 64 hex characters naming a valid scalar.
    #[error("bad secret key: must be 64 hex characters, a non-zero scalar below the curve order")]
    BadSecretKey,
    /// `id` is not the hash of the event's content.
    #[error("event id does not match its content")]
    IdMismatch,
    /// `sig` is not a valid signature of `id` by `pubkey`.
    #[error("bad signature")]
    BadSignature,
    /// `created_at` is outside the accepted window around `now`.
    #[error(
        "event is too old or too far in the future (created_at {created_at}, now {now}, window {window} s)"
    )]
    OutOfWindow {
        /// The event's `created_at`.
        created_at: u64,
        /// The time it was checked against.
        now: u64,
        /// Largest accepted difference, in seconds.
        window: u64,
    },
    /// The event has another kind than the check expects.
    #[error("wrong kind {found}, expected {expected}")]
    WrongKind {
        /// The event's kind.
        found: u32,
        /// The kind required.
        expected: u32,
    },
    /// A tag the check requires is absent.
    #[error("missing `{0}` tag")]
    MissingTag(&'static str),
    /// The NIP-98 `u` tag names another URL than the request's.
    #[error("url mismatch: signed for {signed}, request is {request}")]
    UrlMismatch {
        /// The signed URL, quoted.
        signed: String,
        /// The request URL, quoted.
        request: String,
    },
    /// The NIP-98 `method` tag names another method than the request's.
    #[error("method mismatch: signed for {signed}, request is {request}")]
    MethodMismatch {
        /// The signed method, quoted.
        signed: String,
        /// The request method, quoted.
        request: String,
    },
    /// The NIP-98 `payload` tag is not the SHA-256 of the request body.
    #[error("payload hash mismatch")]
    PayloadMismatch,
    /// The request has a body but the NIP-98 event does not commit to it.
    #[error("missing payload tag for a request with a body")]
    MissingPayload,
    /// The `Authorization` header does not use the `Nostr` scheme.
    #[error("not a Nostr authorization header")]
    NotNostrAuth,
    /// The `Authorization` header carries more than [`MAX_HTTP_AUTH_EVENT_BYTES`].
    #[error("Nostr authorization header is too large (limit {limit} bytes of event JSON)")]
    TooLarge {
        /// The limit on the decoded event.
        limit: usize,
    },
    /// The login event answers another challenge.
    #[error("wrong challenge")]
    WrongChallenge,
    /// A vouch names its own author.
    #[error("an identity cannot vouch for itself")]
    SelfVouch,
}

/// A Nostr event (NIP-01). Unknown JSON fields are ignored when parsing (they are not signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Lowercase hex SHA-256 of the serialised event (see [`Event::compute_id`]).
    pub id: String,
    /// Author: lowercase hex x-only public key.
    pub pubkey: String,
    /// Unix seconds, as the author claims.
    pub created_at: u64,
    /// Event kind.
    pub kind: u32,
    /// Tags: each a name followed by values.
    pub tags: Vec<Vec<String>>,
    /// Free text.
    pub content: String,
    /// Lowercase hex BIP-340 signature of the id bytes.
    pub sig: String,
}

impl Event {
    /// NIP-01 id: lowercase hex SHA-256 of the UTF-8 JSON
    /// `[0,<pubkey>,<created_at>,<kind>,<tags>,<content>]` with no whitespace and serde_json's
    /// escaping, which is JSON.stringify's: `\n \" \\ \r \t \b \f` in short form, other
    /// control characters as `\u00xx`, everything else (including `/` and non-ASCII) verbatim.
    pub fn compute_id(&self) -> String {
        hex::encode(Sha256::digest(self.id_preimage()))
    }

    /// The JSON array whose hash is the id.
    fn id_preimage(&self) -> Vec<u8> {
        let array = (
            0u8,
            &self.pubkey,
            self.created_at,
            self.kind,
            &self.tags,
            &self.content,
        );
        // Strings, integers and vectors of strings always serialise.
        serde_json::to_vec(&array).unwrap_or_default()
    }

    /// Checks that `pubkey` is 64 lowercase hex naming a valid x-only key, that `id` equals
    /// [`compute_id`](Self::compute_id), and that `sig` is 128 lowercase hex forming a valid
    /// BIP-340 signature of the id bytes by `pubkey`.
    pub fn verify(&self) -> Result<(), NostrError> {
        let pubkey = xonly_from_lower_hex(&self.pubkey)?;
        let id = self.compute_id();
        if !bool::from(id.as_bytes().ct_eq(self.id.as_bytes())) {
            return Err(NostrError::IdMismatch);
        }
        let sig_bytes: [u8; 64] = lower_hex_array(&self.sig).ok_or_else(|| {
            NostrError::Malformed("sig is not 128 lowercase hex characters".into())
        })?;
        let sig = Signature::from_slice(&sig_bytes).map_err(|_| NostrError::BadSignature)?;
        let id_bytes: [u8; 32] = lower_hex_array(&id).ok_or(NostrError::IdMismatch)?;
        SECP256K1
            .verify_schnorr(&sig, &Message::from_digest(id_bytes), &pubkey)
            .map_err(|_| NostrError::BadSignature)
    }

    /// The first value of the first tag named `name`, if that tag has a value.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.first().is_some_and(|n| n == name))
            .and_then(|t| t.get(1))
            .map(String::as_str)
    }

    /// Builds and signs an event (for clients, tests and the demo).
    pub fn sign(
        keys: &Keys,
        created_at: u64,
        kind: u32,
        tags: Vec<Vec<String>>,
        content: String,
    ) -> Event {
        let mut event = Event {
            id: String::new(),
            pubkey: keys.public_hex(),
            created_at,
            kind,
            tags,
            content,
            sig: String::new(),
        };
        let digest: [u8; 32] = Sha256::digest(event.id_preimage()).into();
        event.id = hex::encode(digest);
        let sig = SECP256K1.sign_schnorr(&Message::from_digest(digest), &keys.keypair);
        event.sig = hex::encode(sig.serialize());
        event
    }

    /// The event as compact JSON (field order: id, pubkey, created_at, kind, tags, content, sig).
    pub fn to_json(&self) -> String {
        // Strings, integers and vectors of strings always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A secp256k1 key pair for signing events. `Debug` shows only the public key.
#[derive(Clone)]
pub struct Keys {
    keypair: Keypair,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("public", &self.public_hex())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Keys {
    /// A fresh random key pair.
    pub fn generate() -> Keys {
        // All but a 2^-128 share of 32 random bytes are a valid key.
        loop {
            let bytes = sluice_env::secret::<32>();
            if let Ok(keypair) = Keypair::from_seckey_slice(SECP256K1, &bytes) {
                return Keys { keypair };
            }
        }
    }

    /// Keys from a 64-hex-character secret key (either case).
    pub fn from_secret_hex(hex: &str) -> Result<Keys, NostrError> {
        let bytes: [u8; 32] = hex_array_any_case(hex.trim()).ok_or(NostrError::BadSecretKey)?;
        let secret = SecretKey::from_slice(&bytes).map_err(|_| NostrError::BadSecretKey)?;
        Ok(Keys {
            keypair: Keypair::from_secret_key(SECP256K1, &secret),
        })
    }

    /// The secret key as lowercase hex. Handle with care.
    pub fn secret_hex(&self) -> String {
        hex::encode(self.keypair.secret_bytes())
    }

    /// The x-only public key as lowercase hex: the Nostr `pubkey`.
    pub fn public_hex(&self) -> String {
        hex::encode(self.keypair.x_only_public_key().0.serialize())
    }
}

/// NIP-19 `npub1…` (bech32) encoding of a public key given as hex or `npub`.
pub fn npub(pubkey_hex: &str) -> Result<String, NostrError> {
    let hex_key = parse_pubkey(pubkey_hex)?;
    let bytes: [u8; 32] =
        lower_hex_array(&hex_key).ok_or(NostrError::BadPubkey("not 64 hex characters"))?;
    bech32::encode::<Bech32>(Hrp::parse_unchecked(NPUB_HRP), &bytes)
        .map_err(|_| NostrError::BadPubkey("cannot be bech32-encoded"))
}

/// Parses a public key written as 64 hex characters (either case) or as NIP-19 `npub1…`,
/// checks it is a point on the curve, and returns it as lowercase hex.
pub fn parse_pubkey(s: &str) -> Result<String, NostrError> {
    let s = s.trim();
    let bytes: [u8; 32] = if s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("npub1")) {
        let checked = CheckedHrpstring::new::<Bech32>(s)
            .map_err(|_| NostrError::BadPubkey("not a valid bech32 npub"))?;
        if !checked.hrp().as_str().eq_ignore_ascii_case(NPUB_HRP) {
            return Err(NostrError::BadPubkey("not an npub"));
        }
        let data: Vec<u8> = checked.byte_iter().collect();
        data.try_into()
            .map_err(|_| NostrError::BadPubkey("npub does not hold 32 bytes"))?
    } else {
        hex_array_any_case(s).ok_or(NostrError::BadPubkey(
            "must be 64 hex characters or an npub1 string",
        ))?
    };
    XOnlyPublicKey::from_slice(&bytes)
        .map_err(|_| NostrError::BadPubkey("not a point on the secp256k1 curve"))?;
    Ok(hex::encode(bytes))
}

/// Verifies a challenge-login event and returns the author's pubkey (lowercase hex).
///
/// The event must be of kind [`LOGIN_KIND`], carry the tag `["challenge", <nonce>]` (or, for
/// clients that only sign text and only when no `challenge` tag is present, have
/// `content == nonce`), be created within `window_secs` of `now` in either direction, and
/// [`verify`](Event::verify). An empty nonce never matches.
pub fn verify_login(
    event: &Event,
    nonce: &str,
    now: u64,
    window_secs: u64,
) -> Result<String, NostrError> {
    check_kind(event, LOGIN_KIND)?;
    let has_challenge_tag = event
        .tags
        .iter()
        .any(|t| t.first().is_some_and(|n| n == "challenge"));
    let answer = if has_challenge_tag {
        event.tag("challenge").unwrap_or_default()
    } else {
        event.content.as_str()
    };
    if nonce.is_empty() || !bool::from(answer.as_bytes().ct_eq(nonce.as_bytes())) {
        return Err(NostrError::WrongChallenge);
    }
    check_window(event.created_at, now, window_secs)?;
    event.verify()?;
    Ok(event.pubkey.clone())
}

/// The facts about an HTTP request that a NIP-98 event must commit to.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequestFacts<'a> {
    /// The absolute URL the request was sent to, as the server reconstructs it.
    pub url: &'a str,
    /// The HTTP method.
    pub method: &'a str,
    /// The request body (empty when there is none).
    pub body: &'a [u8],
}

/// A verified NIP-98 authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAuth {
    /// Author (lowercase hex).
    pub pubkey: String,
    /// The event id: remember it for the window to refuse replays.
    pub event_id: String,
    /// The event's `created_at`.
    pub created_at: u64,
}

/// Verifies a NIP-98 `Authorization` header value (`Nostr <base64 event JSON>`) against the
/// request. The rules are in the module docs; replay protection is left to the caller.
pub fn verify_http_auth(
    header: &str,
    req: &HttpRequestFacts<'_>,
    now: u64,
    window_secs: u64,
) -> Result<HttpAuth, NostrError> {
    let header = header.trim_ascii();
    let (scheme, token) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or(NostrError::NotNostrAuth)?;
    if !scheme.eq_ignore_ascii_case("Nostr") {
        return Err(NostrError::NotNostrAuth);
    }
    let token = token.trim_ascii();
    let too_large = NostrError::TooLarge {
        limit: MAX_HTTP_AUTH_EVENT_BYTES,
    };
    if token.len() > MAX_HTTP_AUTH_EVENT_BYTES.div_ceil(3) * 4 {
        return Err(too_large);
    }
    let normalized: String = token
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    let json = FLEXIBLE_BASE64
        .decode(normalized)
        .map_err(|_| NostrError::Malformed("authorization token is not base64".into()))?;
    if json.len() > MAX_HTTP_AUTH_EVENT_BYTES {
        return Err(too_large);
    }
    let event: Event = serde_json::from_slice(&json).map_err(|e| {
        NostrError::Malformed(format!(
            "not a Nostr event JSON object: {}",
            quote_untrusted(e.to_string().as_bytes())
        ))
    })?;

    check_kind(&event, HTTP_AUTH_KIND)?;
    check_window(event.created_at, now, window_secs)?;

    let signed_url = event.tag("u").ok_or(NostrError::MissingTag("u"))?;
    if !urls_match(signed_url, req.url) {
        return Err(NostrError::UrlMismatch {
            signed: quote_untrusted(signed_url.as_bytes()),
            request: quote_untrusted(req.url.as_bytes()),
        });
    }
    let signed_method = event
        .tag("method")
        .ok_or(NostrError::MissingTag("method"))?;
    if !signed_method.eq_ignore_ascii_case(req.method) {
        return Err(NostrError::MethodMismatch {
            signed: quote_untrusted(signed_method.as_bytes()),
            request: quote_untrusted(req.method.as_bytes()),
        });
    }
    match event.tag("payload") {
        None if !req.body.is_empty() => return Err(NostrError::MissingPayload),
        Some(payload) if !payload.eq_ignore_ascii_case(&sha256_hex(req.body)) => {
            return Err(NostrError::PayloadMismatch);
        }
        _ => {}
    }

    event.verify()?;
    Ok(HttpAuth {
        pubkey: event.pubkey,
        event_id: event.id,
        created_at: event.created_at,
    })
}

/// Builds the NIP-98 `Authorization` header value for a request (client side): a kind
/// 27235 event with `u`, `method` (upper-cased) and, for a non-empty body, `payload` tags.
pub fn http_auth_header(keys: &Keys, url: &str, method: &str, body: &[u8], now: u64) -> String {
    let mut tags = vec![
        vec!["u".to_owned(), url.to_owned()],
        vec!["method".to_owned(), method.to_ascii_uppercase()],
    ];
    if !body.is_empty() {
        tags.push(vec!["payload".to_owned(), sha256_hex(body)]);
    }
    let event = Event::sign(keys, now, HTTP_AUTH_KIND, tags, String::new());
    format!("Nostr {}", STANDARD.encode(event.to_json()))
}

/// A verified vouch: `voucher` vouches for `vouchee` (both lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouch {
    /// The author of the vouch.
    pub voucher: String,
    /// The identity vouched for.
    pub vouchee: String,
    /// The vouch event's id.
    pub event_id: String,
}

/// Verifies a vouch event (kind [`VOUCH_KIND`], tags `["L", "sluice.trust"]`,
/// `["l", "vouch", "sluice.trust"]` and exactly one `["p", <vouchee hex>]`), created within
/// `window_secs` of `now`. Refuses self-vouching.
pub fn verify_vouch(event: &Event, now: u64, window_secs: u64) -> Result<Vouch, NostrError> {
    check_kind(event, VOUCH_KIND)?;
    let has_tag = |wanted: &[&str]| {
        event
            .tags
            .iter()
            .any(|t| t.len() >= wanted.len() && t.iter().zip(wanted).all(|(a, b)| a == b))
    };
    if !has_tag(&["L", VOUCH_NAMESPACE]) {
        return Err(NostrError::MissingTag(r#"["L", "sluice.trust"]"#));
    }
    if !has_tag(&["l", VOUCH_LABEL, VOUCH_NAMESPACE]) {
        return Err(NostrError::MissingTag(r#"["l", "vouch", "sluice.trust"]"#));
    }
    let mut p_tags = event
        .tags
        .iter()
        .filter(|t| t.first().is_some_and(|n| n == "p"));
    let vouchee = p_tags
        .next()
        .and_then(|t| t.get(1))
        .ok_or(NostrError::MissingTag("p"))?;
    if p_tags.next().is_some() {
        return Err(NostrError::Malformed(
            "a vouch must name exactly one `p` tag".into(),
        ));
    }
    xonly_from_lower_hex(vouchee)?;
    if *vouchee == event.pubkey {
        return Err(NostrError::SelfVouch);
    }
    check_window(event.created_at, now, window_secs)?;
    event.verify()?;
    Ok(Vouch {
        voucher: event.pubkey.clone(),
        vouchee: vouchee.clone(),
        event_id: event.id.clone(),
    })
}

/// Builds and signs a vouch for `vouchee_hex` (lower-cased) at `now`.
pub fn vouch_event(keys: &Keys, vouchee_hex: &str, now: u64) -> Event {
    let tags = vec![
        vec!["L".to_owned(), VOUCH_NAMESPACE.to_owned()],
        vec![
            "l".to_owned(),
            VOUCH_LABEL.to_owned(),
            VOUCH_NAMESPACE.to_owned(),
        ],
        vec!["p".to_owned(), vouchee_hex.trim().to_ascii_lowercase()],
    ];
    Event::sign(keys, now, VOUCH_KIND, tags, String::new())
}

fn check_kind(event: &Event, expected: u32) -> Result<(), NostrError> {
    if event.kind == expected {
        Ok(())
    } else {
        Err(NostrError::WrongKind {
            found: event.kind,
            expected,
        })
    }
}

fn check_window(created_at: u64, now: u64, window: u64) -> Result<(), NostrError> {
    if created_at.abs_diff(now) > window {
        return Err(NostrError::OutOfWindow {
            created_at,
            now,
            window,
        });
    }
    Ok(())
}

/// Equal, or equal once one trailing `/` is removed from one side.
fn urls_match(signed: &str, request: &str) -> bool {
    signed == request
        || signed.strip_suffix('/') == Some(request)
        || request.strip_suffix('/') == Some(signed)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Exactly `2 * N` lowercase hex digits.
fn lower_hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex_array_any_case(s)
}

/// Exactly `2 * N` hex digits of either case.
fn hex_array_any_case<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A key in the strict event form: 64 lowercase hex, and a point on the curve.
fn xonly_from_lower_hex(s: &str) -> Result<XOnlyPublicKey, NostrError> {
    let bytes: [u8; 32] =
        lower_hex_array(s).ok_or(NostrError::BadPubkey("must be 64 lowercase hex characters"))?;
    XOnlyPublicKey::from_slice(&bytes)
        .map_err(|_| NostrError::BadPubkey("not a point on the secp256k1 curve"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

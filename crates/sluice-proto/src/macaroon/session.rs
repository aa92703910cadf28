//! sluice's session credential: a macaroon naming a prepaid session, which its holder may
//! narrow (fewer models, a spend cap, an earlier expiry) before handing it to someone else.
//!
//! # Identifier (version 0)
//!
//! ```text
//! offset  size  field
//! 0       2     version, u16 big-endian = 0
//! 2       1     n = length of the session id
//! 3       n     session id: printable ASCII (0x21..=0x7e), 1..=255 bytes
//! 3+n     16    random nonce, so two macaroons for one session never coincide
//! ```
//!
//! Location: `"sluice"`. Root key: per session, [`session_root_key`] (an HMAC of a server
//! secret), so no per-macaroon key storage is needed and closing the session in the store
//! is what revokes its macaroons.
//!
//! # Caveats (`cond=value`, split at the first `=`)
//!
//! | condition | written by | value | meaning |
//! |---|---|---|---|
//! | `session_id` | sluice at mint | the session id | must equal the identifier's |
//! | `expires` | sluice at mint, holders | unix seconds | valid while `now < value` |
//! | `models` | holders | comma-separated model names | only these models |
//! | `max_spend_msat` | holders | u64 msat | this macaroon and its descendants may spend at most this much |
//!
//! Repeats can only narrow: every caveat must hold, so the earliest `expires` and the
//! intersection of all `models` lists apply, and every spend cap is enforced separately.
//! Any other condition is refused (fail closed): a caveat this code does not understand may
//! be a restriction its author relied on.
//!
//! # Spend-cap keys
//!
//! The gateway meters each `max_spend_msat` caveat under a key derived from the chain
//! signature just after that caveat. A descendant macaroon (the same one with more caveats)
//! shares that signature, so spending through any descendant counts against the same cap.
//! The key is a hash of that signature, not the signature itself, because the raw prefix
//! signature is a working credential for the truncated macaroon and must not sit in a
//! database or a log.

use sha2::{Digest, Sha256};
use sluice_core::Msat;

use super::{
    Macaroon, MacaroonError, SIGNATURE_LEN, hmac_sha256, parse_condition, quote_untrusted,
};

/// Location written into session macaroons.
pub const SESSION_LOCATION: &str = "sluice";

/// Identifier layout version this code writes and accepts.
const IDENTIFIER_VERSION: u16 = 0;
/// Random bytes at the end of the identifier.
const NONCE_LEN: usize = 16;

/// Condition naming the session; written at mint.
pub const COND_SESSION_ID: &str = "session_id";
/// Condition bounding validity, in unix seconds.
pub const COND_EXPIRES: &str = "expires";
/// Condition restricting the models that may be used.
pub const COND_MODELS: &str = "models";
/// Condition capping what this macaroon and its descendants may spend, in msat.
pub const COND_MAX_SPEND_MSAT: &str = "max_spend_msat";

/// Domain label for [`session_root_key`], so the server secret's HMACs for other purposes
/// can never collide with a session's root key.
const ROOT_KEY_LABEL: &[u8] = b"sluice/session-root-key/v1\0";
/// Domain label for spend-cap keys.
const SPEND_CAP_LABEL: &[u8] = b"sluice/spend-cap/v1\0";

/// The decoded identifier of a session macaroon. Construction validates the session id, so
/// every value of this type encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIdentifier {
    session_id: String,
    nonce: [u8; NONCE_LEN],
}

impl SessionIdentifier {
    /// An identifier for `session_id` with the given nonce.
    pub fn new(session_id: &str, nonce: [u8; 16]) -> Result<SessionIdentifier, MacaroonError> {
        if !is_valid_session_id(session_id) {
            return Err(MacaroonError::InvalidSessionId);
        }
        Ok(SessionIdentifier {
            session_id: session_id.to_owned(),
            nonce,
        })
    }

    /// An identifier for `session_id` with a fresh random nonce.
    pub fn random(session_id: &str) -> Result<SessionIdentifier, MacaroonError> {
        SessionIdentifier::new(session_id, sluice_env::secret())
    }

    /// The session this identifier names.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The random nonce.
    pub fn nonce(&self) -> &[u8; 16] {
        &self.nonce
    }

    /// The identifier bytes (layout in the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let id = self.session_id.as_bytes();
        let mut out = Vec::with_capacity(3 + id.len() + NONCE_LEN);
        out.extend_from_slice(&IDENTIFIER_VERSION.to_be_bytes());
        // Validated at construction: 1..=255 bytes, so the length fits in a u8.
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id);
        out.extend_from_slice(&self.nonce);
        out
    }

    /// Parses identifier bytes, refusing unknown versions and any deviation in length.
    pub fn decode(bytes: &[u8]) -> Result<SessionIdentifier, MacaroonError> {
        let invalid = MacaroonError::InvalidIdentifier;
        let (version, rest) = bytes.split_first_chunk::<2>().ok_or(invalid("too short"))?;
        if u16::from_be_bytes(*version) != IDENTIFIER_VERSION {
            return Err(invalid("unsupported identifier version"));
        }
        let (&len, rest) = rest.split_first().ok_or(invalid("too short"))?;
        let len = usize::from(len);
        if rest.len() != len + NONCE_LEN {
            return Err(invalid("wrong length"));
        }
        let (id, nonce) = rest.split_at(len);
        let session_id = std::str::from_utf8(id)
            .ok()
            .filter(|s| is_valid_session_id(s))
            .ok_or(invalid(
                "session id is not 1 to 255 printable ASCII characters",
            ))?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| invalid("wrong length"))?;
        Ok(SessionIdentifier {
            session_id: session_id.to_owned(),
            nonce,
        })
    }

    /// Mints a session macaroon with this identifier: location `"sluice"` and the caveats
    /// `session_id=<id>` and `expires=<expires_at>`.
    pub fn mint(&self, root_key: &[u8; 32], expires_at: u64) -> Macaroon {
        Macaroon::mint(root_key, &self.encode(), Some(SESSION_LOCATION))
            .with_first_party_caveat(format!("{COND_SESSION_ID}={}", self.session_id).as_bytes())
            .with_first_party_caveat(&expires_caveat(expires_at))
    }
}

/// Session ids are 1..=255 bytes of printable ASCII without spaces, so they fit the
/// identifier's length byte and survive the whitespace trimming of caveat values.
fn is_valid_session_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The root key for a session's macaroons: `HMAC-SHA256(server_secret, label || session_id)`
/// with a fixed domain label, so the gateway stores one secret rather than a key per session.
pub fn session_root_key(server_secret: &[u8; 32], session_id: &str) -> [u8; 32] {
    let mut msg = Vec::with_capacity(ROOT_KEY_LABEL.len() + session_id.len());
    msg.extend_from_slice(ROOT_KEY_LABEL);
    msg.extend_from_slice(session_id.as_bytes());
    hmac_sha256(server_secret, &msg)
}

/// Mints a macaroon for `session_id`, valid while `now < expires_at`, with a random nonce.
/// Fails only if the session id breaks the identifier's rules (see [`SessionIdentifier`]).
pub fn mint_session_macaroon(
    root_key: &[u8; 32],
    session_id: &str,
    expires_at: u64,
) -> Result<Macaroon, MacaroonError> {
    Ok(SessionIdentifier::random(session_id)?.mint(root_key, expires_at))
}

/// The session a macaroon claims to belong to, read from its identifier *without* checking
/// anything else: use it only to pick the root key for [`verify_session_macaroon`].
pub fn session_id_of(m: &Macaroon) -> Result<String, MacaroonError> {
    SessionIdentifier::decode(m.identifier()).map(|id| id.session_id)
}

/// The caveat `expires=<unix seconds>`.
pub fn expires_caveat(expires_at: u64) -> Vec<u8> {
    format!("{COND_EXPIRES}={expires_at}").into_bytes()
}

/// The caveat `max_spend_msat=<msat>`.
pub fn max_spend_caveat(limit: Msat) -> Vec<u8> {
    format!("{COND_MAX_SPEND_MSAT}={}", limit.msat()).into_bytes()
}

/// The caveat `models=a,b,c`. Refuses an empty list and names that are empty, contain a
/// comma, or have surrounding whitespace, since those would not read back as written.
pub fn models_caveat(models: &[&str]) -> Result<Vec<u8>, MacaroonError> {
    let malformed = |reason| MacaroonError::MalformedCaveat {
        condition: COND_MODELS.to_owned(),
        reason,
    };
    if models.is_empty() {
        return Err(malformed("the model list is empty"));
    }
    if models
        .iter()
        .any(|m| m.is_empty() || m.contains(',') || m.trim_ascii() != *m)
    {
        return Err(malformed(
            "a model name is empty, contains a comma or has surrounding spaces",
        ));
    }
    Ok(format!("{COND_MODELS}={}", models.join(",")).into_bytes())
}

/// A parsed session caveat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCaveat {
    /// `session_id=<id>`.
    SessionId(String),
    /// `expires=<unix seconds>`.
    Expires(u64),
    /// `models=<a,b,...>`, trimmed, duplicates removed, order kept.
    Models(Vec<String>),
    /// `max_spend_msat=<msat>`.
    MaxSpend(Msat),
}

impl SessionCaveat {
    /// Parses one caveat predicate, refusing unknown conditions and malformed values.
    pub fn parse(predicate: &[u8]) -> Result<SessionCaveat, MacaroonError> {
        let Some((cond, value)) = parse_condition(predicate) else {
            return Err(MacaroonError::MalformedCaveat {
                condition: quote_untrusted(predicate),
                reason: "not of the form condition=value",
            });
        };
        let malformed = |reason| MacaroonError::MalformedCaveat {
            condition: cond.to_owned(),
            reason,
        };
        match cond {
            COND_SESSION_ID => {
                if !is_valid_session_id(value) {
                    return Err(malformed("not a valid session id"));
                }
                Ok(SessionCaveat::SessionId(value.to_owned()))
            }
            COND_EXPIRES => parse_decimal(value)
                .map(SessionCaveat::Expires)
                .ok_or(malformed("not a unix time in decimal seconds")),
            COND_MAX_SPEND_MSAT => parse_decimal(value)
                .map(|v| SessionCaveat::MaxSpend(Msat::from_msat(v)))
                .ok_or(malformed("not a decimal amount of msat")),
            COND_MODELS => {
                let mut models: Vec<String> = Vec::new();
                for name in value.split(',').map(str::trim_ascii) {
                    if name.is_empty() {
                        return Err(malformed("empty model name"));
                    }
                    if !models.iter().any(|m| m == name) {
                        models.push(name.to_owned());
                    }
                }
                Ok(SessionCaveat::Models(models))
            }
            _ => Err(MacaroonError::UnknownCaveat {
                condition: quote_untrusted(cond.as_bytes()),
            }),
        }
    }
}

/// Plain decimal digits only: no sign, no spaces inside, no overflow.
fn parse_decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// A spend cap found in a verified session macaroon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendCap {
    /// Opaque, stable key to meter this cap under: lowercase hex of
    /// `SHA-256("sluice/spend-cap/v1\0" || chain signature just after the caveat)`.
    /// Every descendant of the macaroon that added the caveat reports the same key.
    pub key: String,
    /// The most that may be spent under this key.
    pub limit: Msat,
    /// Position of the caveat in the macaroon, from 0.
    pub caveat_index: usize,
}

/// What a verified session macaroon allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    /// The session whose balance pays.
    pub session_id: String,
    /// The earliest `expires`: valid while `now < expires_at`.
    pub expires_at: u64,
    /// The models allowed (intersection of every `models` caveat, in the first caveat's
    /// order), or `None` when no caveat restricts models. `Some(empty)` allows none.
    pub models: Option<Vec<String>>,
    /// Every spend cap, oldest caveat first. All of them must hold.
    pub spend_caps: Vec<SpendCap>,
}

impl SessionClaims {
    /// Whether the claims allow `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == model))
    }
}

/// Verifies a session macaroon and returns what it allows.
///
/// Checks, in order: the identifier decodes; the signature chain under `root_key` (third-party
/// caveats refused, constant-time comparison); every caveat parses and is known; every
/// `session_id` caveat names the identifier's session; `session_id` and `expires` caveats are
/// present; `now_unix` is before every `expires`. Spend caps are reported, not enforced: the
/// gateway meters them.
pub fn verify_session_macaroon(
    m: &Macaroon,
    root_key: &[u8; 32],
    now_unix: u64,
) -> Result<SessionClaims, MacaroonError> {
    let ident = SessionIdentifier::decode(m.identifier())?;
    let chain = m.verified_signature_chain(root_key)?;

    let mut saw_session_id = false;
    let mut expires_at: Option<u64> = None;
    let mut models: Option<Vec<String>> = None;
    let mut spend_caps = Vec::new();
    for (index, caveat) in m.caveats().iter().enumerate() {
        match SessionCaveat::parse(&caveat.id)? {
            SessionCaveat::SessionId(id) => {
                if id != ident.session_id {
                    return Err(MacaroonError::SessionMismatch {
                        expected: ident.session_id,
                        found: quote_untrusted(id.as_bytes()),
                    });
                }
                saw_session_id = true;
            }
            SessionCaveat::Expires(t) => {
                expires_at = Some(expires_at.map_or(t, |e| e.min(t)));
            }
            SessionCaveat::Models(list) => {
                models = Some(match models {
                    None => list,
                    Some(mut current) => {
                        current.retain(|m| list.contains(m));
                        current
                    }
                });
            }
            SessionCaveat::MaxSpend(limit) => {
                // chain[0] signs the identifier, so chain[index + 1] follows this caveat.
                let sig = chain.get(index + 1).ok_or(MacaroonError::BadSignature)?;
                spend_caps.push(SpendCap {
                    key: spend_cap_key(sig),
                    limit,
                    caveat_index: index,
                });
            }
        }
    }

    if !saw_session_id {
        return Err(MacaroonError::MissingCaveat(COND_SESSION_ID));
    }
    let expires_at = expires_at.ok_or(MacaroonError::MissingCaveat(COND_EXPIRES))?;
    if now_unix >= expires_at {
        return Err(MacaroonError::Expired {
            expires_at,
            now: now_unix,
        });
    }
    Ok(SessionClaims {
        session_id: ident.session_id,
        expires_at,
        models,
        spend_caps,
    })
}

/// [`verify_session_macaroon`] with the root key derived from the server secret and the
/// session named in the identifier (see [`session_root_key`]).
pub fn verify_session_with_server_secret(
    m: &Macaroon,
    server_secret: &[u8; 32],
    now_unix: u64,
) -> Result<SessionClaims, MacaroonError> {
    let session_id = session_id_of(m)?;
    verify_session_macaroon(m, &session_root_key(server_secret, &session_id), now_unix)
}

pub(crate) fn spend_cap_key(prefix_signature: &[u8; SIGNATURE_LEN]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(SPEND_CAP_LABEL);
    hasher.update(prefix_signature);
    hex::encode(hasher.finalize())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identifier_layout_is_as_documented() {
        let ident = SessionIdentifier::new("s-1", [9; 16]).unwrap();
        let bytes = ident.encode();
        assert_eq!(&bytes[..6], &[0, 0, 3, b's', b'-', b'1']);
        assert_eq!(&bytes[6..], &[9; 16]);
        assert_eq!(SessionIdentifier::decode(&bytes).unwrap(), ident);
    }

    #[test]
    fn identifier_decode_refuses_deviations() {
        let good = SessionIdentifier::new("abc", [1; 16]).unwrap().encode();
        let mut other_version = good.clone();
        other_version[1] = 1;
        let mut bad_len = good.clone();
        bad_len[2] = 4;
        let mut space_in_id = good.clone();
        space_in_id[3] = b' ';
        let mut longer = good.clone();
        longer.push(0);
        for bad in [
            &b""[..],
            &good[..2],
            &good[..good.len() - 1],
            &other_version,
            &bad_len,
            &space_in_id,
            &longer,
        ] {
            assert!(
                matches!(
                    SessionIdentifier::decode(bad),
                    Err(MacaroonError::InvalidIdentifier(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn session_ids_must_be_printable_ascii_up_to_255_bytes() {
        assert!(SessionIdentifier::new(&"a".repeat(255), [0; 16]).is_ok());
        for bad in [
            String::new(),
            "a".repeat(256),
            "has space".into(),
            "tab\t".into(),
            "é".into(),
        ] {
            assert_eq!(
                SessionIdentifier::new(&bad, [0; 16]),
                Err(MacaroonError::InvalidSessionId)
            );
        }
    }

    #[test]
    fn decimal_values_are_strict() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "+1", "-1", "1 2", "18446744073709551616", "0x10", "1e3"] {
            assert_eq!(parse_decimal(bad), None, "{bad}");
        }
    }
}

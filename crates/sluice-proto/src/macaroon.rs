//! Macaroons as libmacaroons, go-macaroon (`gopkg.in/macaroon.v2`) and Aperture speak them.
//!
//! A macaroon is a bearer credential: an identifier, a list of caveats and an HMAC chain
//! over both. Anyone holding one can *attenuate* it (append a caveat, which re-keys the
//! chain) but nobody without the root key can remove a caveat or forge a signature.
//!
//! Signature derivation (libmacaroons; the L402 spec's plain `HMAC(root_key, id)` is wrong):
//!
//! ```text
//! k     = HMAC-SHA256(key = "macaroons-key-generator", msg = root_key)
//! sig_0 = HMAC-SHA256(k, identifier)
//! sig_i = HMAC-SHA256(sig_{i-1}, caveat_i)        first-party caveats
//! ```
//!
//! Only first-party caveats are supported. Third-party caveats found in decoded input are
//! kept (so a macaroon round-trips byte for byte) but every verification refuses them:
//! this service never discharges them, and accepting one unchecked would widen authority.
//!
//! Wire format: libmacaroons V2 binary (`doc/format.txt`), carried as standard base64 like
//! Aperture sends it. V1 (base64url text packets) can be decoded for interoperability and
//! test vectors, but is never produced.
//!
//! The sluice session credential built on top lives in [`session`], the identity token
//! (a Nostr pubkey the server has authenticated) in [`identity`].

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub mod identity;
pub mod session;

pub use identity::{
    IDENTITY_LOCATION, IdentityClaims, IdentityIdentifier, identity_root_key, mint_identity_token,
    verify_identity_token,
};
pub use session::{
    SESSION_LOCATION, SessionCaveat, SessionClaims, SessionIdentifier, SpendCap, expires_caveat,
    max_spend_caveat, mint_session_macaroon, models_caveat, session_id_of, session_root_key,
    verify_session_macaroon, verify_session_with_server_secret,
};

/// Length in bytes of a macaroon signature (HMAC-SHA256 output).
pub const SIGNATURE_LEN: usize = 32;

/// HMAC key libmacaroons uses to turn a caller's root key into the chain's first key.
const KEY_GENERATOR: &[u8] = b"macaroons-key-generator";

/// Leading byte of every V2 binary macaroon.
const V2_VERSION: u8 = 2;
const FIELD_EOS: u64 = 0;
const FIELD_LOCATION: u64 = 1;
const FIELD_IDENTIFIER: u64 = 2;
const FIELD_VID: u64 = 4;
const FIELD_SIGNATURE: u64 = 6;

/// Decodes standard or URL-safe base64 (after translation), padded or not. Padding, when
/// present, must be exactly right: go-macaroon rejects `"Z29+IQ==="`, and so do we.
const FLEXIBLE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// Everything that can go wrong decoding or verifying a macaroon.
///
/// The variants are deliberately specific so a gateway can tell the client *why*:
/// [`Base64`](Self::Base64), [`Encoding`](Self::Encoding), [`BadSignature`](Self::BadSignature),
/// [`InvalidIdentifier`](Self::InvalidIdentifier) and [`Expired`](Self::Expired) mean "this
/// credential is not (or no longer) valid" (HTTP 401); the caveat variants mean "valid
/// credential, but it carries a restriction this service refuses to interpret" (401 or 403
/// at the gateway's choice). Strings taken from the macaroon are quoted with escapes and
/// truncated, so messages are safe to return to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacaroonError {
    /// The text is not base64 (standard or URL-safe, padded or not).
    #[error("macaroon is not valid base64")]
    Base64,
    /// The bytes are not a well-formed serialised macaroon.
    #[error("malformed macaroon at byte {offset}: {reason}")]
    Encoding {
        /// Byte offset (in the decoded binary) where parsing failed.
        offset: usize,
        /// What was wrong there.
        reason: &'static str,
    },
    /// The HMAC chain does not end in the macaroon's signature: wrong root key, or the
    /// identifier or a caveat was altered, removed or reordered.
    #[error("macaroon signature does not verify")]
    BadSignature,
    /// The macaroon carries a third-party caveat, which this service never discharges.
    #[error("macaroon has a third-party caveat (caveat {index}), which is not supported")]
    ThirdPartyCaveat {
        /// Position of the caveat, from 0.
        index: usize,
    },
    /// The identifier is not one this service issues.
    #[error("macaroon identifier is invalid: {0}")]
    InvalidIdentifier(&'static str),
    /// A session id handed to the minting functions breaks the identifier's rules.
    #[error("session id must be 1 to 255 printable ASCII characters without spaces")]
    InvalidSessionId,
    /// An `expires` caveat has passed.
    #[error("macaroon expired at unix time {expires_at} (now {now})")]
    Expired {
        /// The earliest `expires` value in the macaroon.
        expires_at: u64,
        /// The time it was checked against.
        now: u64,
    },
    /// A caveat's condition is unknown to this service. Caveats can only narrow authority,
    /// so ignoring one could grant what its author meant to deny: fail closed.
    #[error("macaroon has a caveat with unknown condition {condition}")]
    UnknownCaveat {
        /// The condition, quoted and truncated for display.
        condition: String,
    },
    /// A caveat's condition is known but its value (or the caveat's shape) is invalid.
    #[error("macaroon caveat {condition} is malformed: {reason}")]
    MalformedCaveat {
        /// The known condition, or the raw caveat (quoted and truncated) when it is not `cond=value`.
        condition: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `session_id` caveat names another session than the identifier does.
    #[error(
        "macaroon caveat names session {found}, but the macaroon was issued for session {expected}"
    )]
    SessionMismatch {
        /// The session in the identifier.
        expected: String,
        /// The session in the caveat, quoted and truncated.
        found: String,
    },
    /// A pubkey handed to the identity-token minting function is not a valid Nostr key.
    #[error("pubkey must be 64 hex characters (or an npub) naming a secp256k1 x-only key")]
    InvalidPubkey,
    /// A `pubkey` caveat names another key than the identity token's identifier.
    #[error(
        "macaroon caveat names pubkey {found}, but the macaroon was issued for pubkey {expected}"
    )]
    PubkeyMismatch {
        /// The pubkey in the identifier (lowercase hex).
        expected: String,
        /// The pubkey in the caveat, quoted and truncated.
        found: String,
    },
    /// A caveat every credential of this kind must carry is absent.
    #[error("macaroon lacks the required {0} caveat")]
    MissingCaveat(&'static str),
}

/// Quotes untrusted bytes for an error message: escaped, and cut at 64 characters so a
/// hostile caveat cannot flood logs or responses.
pub(crate) fn quote_untrusted(bytes: &[u8]) -> String {
    const MAX_CHARS: usize = 64;
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::from("\"");
    for (n, c) in text.chars().enumerate() {
        if n == MAX_CHARS {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

/// One caveat. First-party caveats have only an `id` (the predicate); third-party caveats
/// also carry a verification id and usually a location.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Caveat {
    /// The caveat identifier: the predicate for a first-party caveat.
    pub id: Vec<u8>,
    /// The verification id; present only on third-party caveats.
    pub verification_id: Option<Vec<u8>>,
    /// A hint where to discharge a third-party caveat.
    pub location: Option<String>,
}

impl Caveat {
    /// A first-party caveat with the given predicate.
    pub fn first_party(predicate: &[u8]) -> Caveat {
        Caveat {
            id: predicate.to_vec(),
            verification_id: None,
            location: None,
        }
    }

    /// Whether this is a first-party caveat (no verification id).
    pub fn is_first_party(&self) -> bool {
        self.verification_id.is_none()
    }

    /// The caveat's `(condition, value)` if it is written `cond=value`; see [`parse_condition`].
    pub fn condition(&self) -> Option<(&str, &str)> {
        parse_condition(&self.id)
    }
}

impl std::fmt::Debug for Caveat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Caveat");
        s.field("id", &String::from_utf8_lossy(&self.id));
        if let Some(vid) = &self.verification_id {
            s.field("verification_id", &hex::encode(vid));
        }
        if let Some(loc) = &self.location {
            s.field("location", loc);
        }
        s.finish()
    }
}

/// Splits an Aperture-style predicate `cond=value` at the first `=`, trimming ASCII
/// whitespace around both parts (libmacaroons examples write `account = 3735928559`).
///
/// Returns `None` when the predicate is not UTF-8, has no `=`, or has an empty condition.
/// The value may be empty and may itself contain `=`.
pub fn parse_condition(predicate: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(predicate).ok()?;
    let (cond, value) = text.split_once('=')?;
    let cond = cond.trim_ascii();
    if cond.is_empty() {
        return None;
    }
    Some((cond, value.trim_ascii()))
}

/// A macaroon: location hint, identifier, caveats and the signature over them.
///
/// `Debug` redacts the signature: it is the bearer secret (whoever knows it can present or
/// attenuate the macaroon), so it must not end up in logs.
#[derive(Clone)]
pub struct Macaroon {
    location: Option<String>,
    identifier: Vec<u8>,
    caveats: Vec<Caveat>,
    signature: [u8; SIGNATURE_LEN],
}

impl PartialEq for Macaroon {
    fn eq(&self, other: &Self) -> bool {
        // Constant time on the signature, so equality can never become a signature oracle.
        let sig_eq: bool = self.signature.ct_eq(&other.signature).into();
        sig_eq
            && self.location == other.location
            && self.identifier == other.identifier
            && self.caveats == other.caveats
    }
}

impl Eq for Macaroon {}

impl std::fmt::Debug for Macaroon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Macaroon")
            .field("location", &self.location)
            .field("identifier", &hex::encode(&self.identifier))
            .field("caveats", &self.caveats)
            .field("signature", &"<redacted>")
            .finish()
    }
}

impl Macaroon {
    /// Mints a macaroon with no caveats, signed by `root_key` (any length).
    pub fn mint(root_key: &[u8], identifier: &[u8], location: Option<&str>) -> Macaroon {
        Macaroon {
            location: location.map(str::to_owned),
            identifier: identifier.to_vec(),
            caveats: Vec::new(),
            signature: initial_signature(root_key, identifier),
        }
    }

    /// Appends a first-party caveat. Needs no key: any holder may narrow a macaroon,
    /// and the new signature is `HMAC(old signature, predicate)`.
    pub fn add_first_party_caveat(&mut self, predicate: &[u8]) {
        self.signature = hmac_sha256(&self.signature, predicate);
        self.caveats.push(Caveat::first_party(predicate));
    }

    /// [`add_first_party_caveat`](Self::add_first_party_caveat) in builder style.
    #[must_use]
    pub fn with_first_party_caveat(mut self, predicate: &[u8]) -> Macaroon {
        self.add_first_party_caveat(predicate);
        self
    }

    /// The location hint (not covered by the signature; never trust it).
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// The identifier, which tells the issuer which root key signed this macaroon.
    pub fn identifier(&self) -> &[u8] {
        &self.identifier
    }

    /// The caveats, oldest first.
    pub fn caveats(&self) -> &[Caveat] {
        &self.caveats
    }

    /// The signature: the bearer secret. Do not log it.
    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    /// Serialises to libmacaroons V2 binary.
    pub fn encode_v2(&self) -> Vec<u8> {
        let caveat_bytes: usize = self.caveats.iter().map(|c| c.id.len() + 8).sum();
        let mut out = Vec::with_capacity(self.identifier.len() + caveat_bytes + 64);
        out.push(V2_VERSION);
        if let Some(loc) = &self.location {
            put_field(&mut out, FIELD_LOCATION, loc.as_bytes());
        }
        put_field(&mut out, FIELD_IDENTIFIER, &self.identifier);
        put_varint(&mut out, FIELD_EOS);
        for caveat in &self.caveats {
            if let Some(loc) = &caveat.location {
                put_field(&mut out, FIELD_LOCATION, loc.as_bytes());
            }
            put_field(&mut out, FIELD_IDENTIFIER, &caveat.id);
            if let Some(vid) = &caveat.verification_id {
                put_field(&mut out, FIELD_VID, vid);
            }
            put_varint(&mut out, FIELD_EOS);
        }
        put_varint(&mut out, FIELD_EOS);
        put_field(&mut out, FIELD_SIGNATURE, &self.signature);
        out
    }

    /// Parses libmacaroons V2 binary, strictly: fields in grammar order, minimal varints,
    /// a 32-byte signature, UTF-8 locations and nothing after the signature. Whatever
    /// decodes re-encodes to the same bytes. Never panics, whatever the input.
    pub fn decode_v2(bytes: &[u8]) -> Result<Macaroon, MacaroonError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        if r.byte("empty input")? != V2_VERSION {
            return Err(r.err_at(0, "not a version 2 macaroon"));
        }

        let mut ty = r.field_type()?;
        let location = if ty == FIELD_LOCATION {
            let loc = r.utf8_field("location is not UTF-8")?;
            ty = r.field_type()?;
            Some(loc)
        } else {
            None
        };
        if ty != FIELD_IDENTIFIER {
            return Err(r.err_before_type("expected the identifier"));
        }
        let identifier = r.field_data()?.to_vec();
        if r.field_type()? != FIELD_EOS {
            return Err(r.err_before_type("expected end of header"));
        }

        let mut caveats = Vec::new();
        loop {
            let mut ty = r.field_type()?;
            if ty == FIELD_EOS {
                break;
            }
            let location = if ty == FIELD_LOCATION {
                let loc = r.utf8_field("caveat location is not UTF-8")?;
                ty = r.field_type()?;
                Some(loc)
            } else {
                None
            };
            if ty != FIELD_IDENTIFIER {
                return Err(r.err_before_type("expected a caveat identifier"));
            }
            let id = r.field_data()?.to_vec();
            ty = r.field_type()?;
            let verification_id = if ty == FIELD_VID {
                let vid = r.field_data()?.to_vec();
                ty = r.field_type()?;
                Some(vid)
            } else {
                None
            };
            if ty != FIELD_EOS {
                return Err(r.err_before_type("expected end of caveat"));
            }
            if location.is_some() && verification_id.is_none() {
                // libmacaroons and go-macaroon only write a caveat location for third-party
                // caveats; a located first-party caveat is ambiguous, so refuse it.
                return Err(r.err_before_type("caveat has a location but no verification id"));
            }
            caveats.push(Caveat {
                id,
                verification_id,
                location,
            });
        }

        if r.field_type()? != FIELD_SIGNATURE {
            return Err(r.err_before_type("expected the signature"));
        }
        let sig_start = r.pos;
        let sig = r.field_data()?;
        let signature: [u8; SIGNATURE_LEN] = sig
            .try_into()
            .map_err(|_| r.err_at(sig_start, "signature is not 32 bytes"))?;
        if r.pos != bytes.len() {
            return Err(r.err_at(r.pos, "trailing bytes after the signature"));
        }
        Ok(Macaroon {
            location,
            identifier,
            caveats,
            signature,
        })
    }

    /// Parses a libmacaroons V1 macaroon: base64 (either alphabet) of `%04x`-length-prefixed
    /// `key value\n` packets. Decode-only, for interoperability with old tokens and vectors.
    pub fn decode_v1(text: &[u8]) -> Result<Macaroon, MacaroonError> {
        let text = std::str::from_utf8(text).map_err(|_| MacaroonError::Base64)?;
        let raw = decode_base64_any(text)?;
        let mut packets = V1Packets { buf: &raw, pos: 0 };

        let mut next = packets.next()?;
        let mut location = None;
        if let Some((b"location", value)) = next {
            let loc =
                std::str::from_utf8(value).map_err(|_| packets.err("location is not UTF-8"))?;
            // V1 always writes a location packet; an empty one means "no location".
            location = (!loc.is_empty()).then(|| loc.to_owned());
            next = packets.next()?;
        }
        let identifier = match next {
            Some((b"identifier", value)) => value.to_vec(),
            _ => return Err(packets.err("expected the identifier")),
        };

        let mut caveats: Vec<Caveat> = Vec::new();
        loop {
            match packets.next()? {
                Some((b"cid", value)) => caveats.push(Caveat::first_party(value)),
                Some((b"vid", value)) => match caveats.last_mut() {
                    Some(c) if c.verification_id.is_none() => {
                        c.verification_id = Some(value.to_vec())
                    }
                    _ => return Err(packets.err("verification id without a caveat")),
                },
                Some((b"cl", value)) => {
                    let loc = std::str::from_utf8(value)
                        .map_err(|_| packets.err("caveat location is not UTF-8"))?;
                    match caveats.last_mut() {
                        Some(c) if c.location.is_none() => c.location = Some(loc.to_owned()),
                        _ => return Err(packets.err("caveat location without a caveat")),
                    }
                }
                Some((b"signature", value)) => {
                    let signature: [u8; SIGNATURE_LEN] = value
                        .try_into()
                        .map_err(|_| packets.err("signature is not 32 bytes"))?;
                    if packets.pos != raw.len() {
                        return Err(packets.err("trailing bytes after the signature"));
                    }
                    if caveats
                        .iter()
                        .any(|c| c.location.is_some() && c.verification_id.is_none())
                    {
                        return Err(packets.err("caveat has a location but no verification id"));
                    }
                    return Ok(Macaroon {
                        location,
                        identifier,
                        caveats,
                        signature,
                    });
                }
                Some(_) => return Err(packets.err("unexpected packet")),
                None => return Err(packets.err("missing signature")),
            }
        }
    }

    /// V2 binary as standard, padded base64: the form Aperture puts in headers.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.encode_v2())
    }

    /// Parses base64 of V2 binary. Accepts standard and URL-safe alphabets, padded or not,
    /// and ignores surrounding whitespace, as clients differ on all three.
    pub fn from_base64(text: &str) -> Result<Macaroon, MacaroonError> {
        Macaroon::decode_v2(&decode_base64_any(text)?)
    }

    /// The HMAC chain under `root_key`: element 0 signs the identifier, element `i + 1` is
    /// the signature just after caveat `i`, and the last should equal [`signature`](Self::signature).
    /// This does not compare anything; use [`verified_signature_chain`](Self::verified_signature_chain)
    /// to rely on the values.
    ///
    /// A descendant macaroon (this one plus more caveats) shares every element of this chain,
    /// which makes element `i + 1` a stable name for "the macaroon as it was after caveat `i`".
    pub fn signature_chain(
        &self,
        root_key: &[u8],
    ) -> Result<Vec<[u8; SIGNATURE_LEN]>, MacaroonError> {
        let mut chain = Vec::with_capacity(self.caveats.len() + 1);
        let mut sig = initial_signature(root_key, &self.identifier);
        chain.push(sig);
        for (index, caveat) in self.caveats.iter().enumerate() {
            if !caveat.is_first_party() {
                return Err(MacaroonError::ThirdPartyCaveat { index });
            }
            sig = hmac_sha256(&sig, &caveat.id);
            chain.push(sig);
        }
        Ok(chain)
    }

    /// Checks the signature chain under `root_key` and returns it (see
    /// [`signature_chain`](Self::signature_chain)). The final comparison is constant time.
    pub fn verified_signature_chain(
        &self,
        root_key: &[u8],
    ) -> Result<Vec<[u8; SIGNATURE_LEN]>, MacaroonError> {
        let chain = self.signature_chain(root_key)?;
        let matches = chain
            .last()
            .is_some_and(|last| bool::from(last.ct_eq(&self.signature)));
        if matches {
            Ok(chain)
        } else {
            Err(MacaroonError::BadSignature)
        }
    }

    /// Checks that `root_key` signed this identifier and these caveats, in this order.
    /// Refuses third-party caveats. Says nothing about whether the caveats hold.
    pub fn verify_signature(&self, root_key: &[u8]) -> Result<(), MacaroonError> {
        self.verified_signature_chain(root_key).map(|_| ())
    }
}

/// `HMAC(HMAC("macaroons-key-generator", root_key), identifier)`.
fn initial_signature(root_key: &[u8], identifier: &[u8]) -> [u8; SIGNATURE_LEN] {
    let derived = hmac_sha256(KEY_GENERATOR, root_key);
    hmac_sha256(&derived, identifier)
}

/// HMAC-SHA256 for a key of any length, without a fallible constructor.
///
/// RFC 2104 defines HMAC on a block-sized key: shorter keys are zero-padded and longer ones
/// replaced by their hash first. Doing that here lets us call the infallible fixed-size
/// constructor instead of `new_from_slice`, whose error case cannot happen for HMAC.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; SIGNATURE_LEN] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..SIGNATURE_LEN].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new(&block.into());
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn decode_base64_any(text: &str) -> Result<Vec<u8>, MacaroonError> {
    let normalized: String = text
        .trim_ascii()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    FLEXIBLE_BASE64
        .decode(normalized)
        .map_err(|_| MacaroonError::Base64)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Truncation is the point: emit the low seven bits with the continuation flag.
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_field(out: &mut Vec<u8>, ty: u64, data: &[u8]) {
    put_varint(out, ty);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Cursor over V2 binary. Every read is bounds-checked and reports its offset.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err_at(&self, offset: usize, reason: &'static str) -> MacaroonError {
        MacaroonError::Encoding { offset, reason }
    }

    /// An error about the field type just read; field types are one byte in valid input.
    fn err_before_type(&self, reason: &'static str) -> MacaroonError {
        self.err_at(self.pos.saturating_sub(1), reason)
    }

    fn byte(&mut self, reason_if_missing: &'static str) -> Result<u8, MacaroonError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(self.err_at(self.pos, reason_if_missing))?;
        self.pos += 1;
        Ok(b)
    }

    /// An unsigned LEB128 varint, refusing overlong (non-minimal) encodings and overflow so
    /// that each value has exactly one encoding.
    fn varint(&mut self) -> Result<u64, MacaroonError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte("truncated varint")?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.err_at(start, "varint overflows 64 bits"));
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(self.err_at(start, "varint is not minimally encoded"));
                }
                return Ok(value);
            }
        }
        Err(self.err_at(start, "varint overflows 64 bits"))
    }

    fn field_type(&mut self) -> Result<u64, MacaroonError> {
        let start = self.pos;
        if start >= self.buf.len() {
            return Err(self.err_at(start, "unexpected end of input"));
        }
        let ty = self.varint()?;
        if !matches!(
            ty,
            FIELD_EOS | FIELD_LOCATION | FIELD_IDENTIFIER | FIELD_VID | FIELD_SIGNATURE
        ) {
            return Err(self.err_at(start, "unknown field type"));
        }
        Ok(ty)
    }

    fn field_data(&mut self) -> Result<&'a [u8], MacaroonError> {
        let start = self.pos;
        let len = self.varint()?;
        let remaining = self.buf.len() - self.pos;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= remaining)
            .ok_or(self.err_at(start, "field length runs past the end of input"))?;
        let data = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(data)
    }

    fn utf8_field(&mut self, reason: &'static str) -> Result<String, MacaroonError> {
        let start = self.pos;
        let data = self.field_data()?;
        std::str::from_utf8(data)
            .map(str::to_owned)
            .map_err(|_| self.err_at(start, reason))
    }
}

/// A V1 packet's key and value.
type V1Packet<'a> = (&'a [u8], &'a [u8]);

/// Cursor over V1 packets: four hex digits giving the packet's total length (header and
/// trailing newline included), then `key value\n`.
struct V1Packets<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> V1Packets<'a> {
    fn err(&self, reason: &'static str) -> MacaroonError {
        MacaroonError::Encoding {
            offset: self.pos,
            reason,
        }
    }

    /// The next `(key, value)` packet, or `None` at the end of input.
    fn next(&mut self) -> Result<Option<V1Packet<'a>>, MacaroonError> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        let header = rest.get(..4).ok_or(self.err("truncated packet header"))?;
        let len = std::str::from_utf8(header)
            .ok()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or(self.err("packet header is not four hex digits"))?;
        let packet = rest
            .get(..len)
            .ok_or(self.err("packet runs past the end of input"))?;
        let body = packet
            .get(4..)
            .and_then(|b| b.strip_suffix(b"\n"))
            .ok_or(self.err("packet does not end in a newline"))?;
        let space = body
            .iter()
            .position(|&b| b == b' ')
            .ok_or(self.err("packet has no key"))?;
        self.pos += len;
        Ok(Some((&body[..space], &body[space + 1..])))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_including_long_keys() {
        // RFC 4231 test case 2 (short key) and test case 6 (131-byte key, hashed first).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // Exactly one block: used as is, not hashed.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&[7u8; 64]).unwrap();
        mac.update(b"x");
        assert_eq!(
            hmac_sha256(&[7u8; 64], b"x"),
            <[u8; 32]>::from(mac.finalize().into_bytes())
        );
    }

    #[test]
    fn varints_round_trip_and_reject_overlong_forms() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader { buf: &out, pos: 0 };
            assert_eq!(r.varint().unwrap(), v);
            assert_eq!(r.pos, out.len());
        }
        for bad in [
            &[0x80u8, 0x00][..],
            &[0xff; 11][..],
            &[0x80][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..],
        ] {
            let mut r = Reader { buf: bad, pos: 0 };
            assert!(r.varint().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn quoting_escapes_and_truncates() {
        assert_eq!(quote_untrusted(b"a\nb"), "\"a\\nb\"");
        let long = quote_untrusted(&[b'x'; 200]);
        assert!(long.len() < 80 && long.ends_with("...\""));
    }
}

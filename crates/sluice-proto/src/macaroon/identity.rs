//! sluice's identity token: a macaroon saying "the server has authenticated this Nostr
//! pubkey" (after a challenge login or NIP-98 request), so later requests need no signature.
//! Its holder may narrow it with an earlier `expires` before handing it on.
//!
//! # Identifier (version 0)
//!
//! ```text
//! offset  size  field
//! 0       2     version, u16 big-endian = 0
//! 2       1     kind tag 'I' (0x49)
//! 3       32    x-only secp256k1 public key (the Nostr pubkey)
//! 35      16    random nonce, so two tokens for one key never coincide
//! ```
//!
//! A session identifier ([`super::session`]) of the same version never decodes as an identity
//! identifier, nor the reverse: this one is exactly 51 bytes with 'I' at offset 2, while a
//! session identifier with length byte 0x49 is 92 bytes long.
//!
//! Location: `"sluice"`. Root key: one for all identity tokens, [`identity_root_key`], an HMAC
//! of the server secret under its own domain label, so it never equals a session's root key.
//!
//! # Caveats (`cond=value`)
//!
//! | condition | written by | value | meaning |
//! |---|---|---|---|
//! | `pubkey` | sluice at mint | lowercase hex pubkey | must equal the identifier's |
//! | `expires` | sluice at mint, holders | unix seconds | valid while `now < value` |
//!
//! Both are required; every `expires` must hold, so the earliest applies. Any other condition
//! is refused (fail closed), as is every third-party caveat.

use secp256k1::XOnlyPublicKey;

use super::session::{COND_EXPIRES, SessionCaveat, expires_caveat};
use super::{Macaroon, MacaroonError, hmac_sha256, parse_condition, quote_untrusted};

/// Location written into identity tokens.
pub const IDENTITY_LOCATION: &str = "sluice";
/// Condition naming the authenticated pubkey; written at mint.
pub const COND_PUBKEY: &str = "pubkey";

/// Identifier layout version this code writes and accepts.
const IDENTIFIER_VERSION: u16 = 0;
/// Byte at offset 2 marking an identity identifier.
const KIND_TAG: u8 = b'I';
/// Length of an x-only public key.
const PUBKEY_LEN: usize = 32;
/// Random bytes at the end of the identifier.
const NONCE_LEN: usize = 16;
/// Total identifier length.
const IDENTIFIER_LEN: usize = 3 + PUBKEY_LEN + NONCE_LEN;

/// Domain label for [`identity_root_key`].
const ROOT_KEY_LABEL: &[u8] = b"sluice/identity-root-key/v1\0";

/// The decoded identifier of an identity token. Construction checks the pubkey is a valid
/// x-only key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityIdentifier {
    pubkey: [u8; PUBKEY_LEN],
    nonce: [u8; NONCE_LEN],
}

impl IdentityIdentifier {
    /// An identifier for `pubkey` (64 hex characters of either case, or an `npub`) with the
    /// given nonce.
    pub fn new(pubkey: &str, nonce: [u8; 16]) -> Result<IdentityIdentifier, MacaroonError> {
        let hex_key =
            crate::nostr::parse_pubkey(pubkey).map_err(|_| MacaroonError::InvalidPubkey)?;
        let mut bytes = [0u8; PUBKEY_LEN];
        hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| MacaroonError::InvalidPubkey)?;
        Ok(IdentityIdentifier {
            pubkey: bytes,
            nonce,
        })
    }

    /// The pubkey as lowercase hex.
    pub fn pubkey_hex(&self) -> String {
        hex::encode(self.pubkey)
    }

    /// The identifier bytes (layout in the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(IDENTIFIER_LEN);
        out.extend_from_slice(&IDENTIFIER_VERSION.to_be_bytes());
        out.push(KIND_TAG);
        out.extend_from_slice(&self.pubkey);
        out.extend_from_slice(&self.nonce);
        out
    }

    /// Parses identifier bytes, refusing other versions, other kinds, any other length and
    /// a pubkey that is not a curve point.
    pub fn decode(bytes: &[u8]) -> Result<IdentityIdentifier, MacaroonError> {
        let invalid = MacaroonError::InvalidIdentifier;
        let (version, rest) = bytes.split_first_chunk::<2>().ok_or(invalid("too short"))?;
        if u16::from_be_bytes(*version) != IDENTIFIER_VERSION {
            return Err(invalid("unsupported identifier version"));
        }
        let (&kind, rest) = rest.split_first().ok_or(invalid("too short"))?;
        if kind != KIND_TAG {
            return Err(invalid("not an identity token"));
        }
        let (pubkey, nonce) = rest
            .split_first_chunk::<PUBKEY_LEN>()
            .ok_or(invalid("wrong length"))?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| invalid("wrong length"))?;
        XOnlyPublicKey::from_slice(pubkey)
            .map_err(|_| invalid("pubkey is not a secp256k1 x-only key"))?;
        Ok(IdentityIdentifier {
            pubkey: *pubkey,
            nonce,
        })
    }
}

/// The root key of identity tokens: `HMAC-SHA256(server_secret, "sluice/identity-root-key/v1\0")`.
pub fn identity_root_key(server_secret: &[u8; 32]) -> [u8; 32] {
    hmac_sha256(server_secret, ROOT_KEY_LABEL)
}

/// Mints an identity token for `pubkey_hex` (64 hex characters or an `npub`), valid while
/// `now < expires_at`: location `"sluice"`, a random nonce, and the caveats
/// `pubkey=<lowercase hex>` and `expires=<expires_at>`.
pub fn mint_identity_token(
    server_secret: &[u8; 32],
    pubkey_hex: &str,
    expires_at: u64,
) -> Result<Macaroon, MacaroonError> {
    let ident = IdentityIdentifier::new(pubkey_hex, sluice_env::secret())?;
    Ok(Macaroon::mint(
        &identity_root_key(server_secret),
        &ident.encode(),
        Some(IDENTITY_LOCATION),
    )
    .with_first_party_caveat(format!("{COND_PUBKEY}={}", ident.pubkey_hex()).as_bytes())
    .with_first_party_caveat(&expires_caveat(expires_at)))
}

/// What a verified identity token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityClaims {
    /// The authenticated pubkey, lowercase hex.
    pub pubkey: String,
    /// The earliest `expires`: valid while `now < expires_at`.
    pub expires_at: u64,
}

/// Verifies an identity token (base64 of a V2 macaroon, either alphabet) at `now`.
///
/// Checks, in order: the identifier is an identity identifier (a session macaroon is
/// refused); the signature chain under [`identity_root_key`] (third-party caveats refused);
/// every caveat is `pubkey` (equal to the identifier's) or `expires`; both are present; `now`
/// is before every `expires`. Only a token that passes everything else is reported as
/// [`MacaroonError::Expired`]; anything else wrong is "invalid".
pub fn verify_identity_token(
    server_secret: &[u8; 32],
    token_b64: &str,
    now: u64,
) -> Result<IdentityClaims, MacaroonError> {
    let m = Macaroon::from_base64(token_b64)?;
    let ident = IdentityIdentifier::decode(m.identifier())?;
    m.verify_signature(&identity_root_key(server_secret))?;

    let pubkey = ident.pubkey_hex();
    let mut saw_pubkey = false;
    let mut expires_at: Option<u64> = None;
    for caveat in m.caveats() {
        let Some((cond, value)) = parse_condition(&caveat.id) else {
            return Err(MacaroonError::MalformedCaveat {
                condition: quote_untrusted(&caveat.id),
                reason: "not of the form condition=value",
            });
        };
        match cond {
            COND_PUBKEY => {
                if value != pubkey {
                    return Err(MacaroonError::PubkeyMismatch {
                        expected: pubkey,
                        found: quote_untrusted(value.as_bytes()),
                    });
                }
                saw_pubkey = true;
            }
            COND_EXPIRES => {
                // The session parser knows `expires`' strict decimal form.
                let SessionCaveat::Expires(t) = SessionCaveat::parse(&caveat.id)? else {
                    return Err(MacaroonError::MalformedCaveat {
                        condition: COND_EXPIRES.to_owned(),
                        reason: "not a unix time in decimal seconds",
                    });
                };
                expires_at = Some(expires_at.map_or(t, |e| e.min(t)));
            }
            _ => {
                return Err(MacaroonError::UnknownCaveat {
                    condition: quote_untrusted(cond.as_bytes()),
                });
            }
        }
    }

    if !saw_pubkey {
        return Err(MacaroonError::MissingCaveat(COND_PUBKEY));
    }
    let expires_at = expires_at.ok_or(MacaroonError::MissingCaveat(COND_EXPIRES))?;
    if now >= expires_at {
        return Err(MacaroonError::Expired { expires_at, now });
    }
    Ok(IdentityClaims { pubkey, expires_at })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::macaroon::{
        mint_session_macaroon, session_root_key, verify_session_with_server_secret,
    };
    use crate::nostr::Keys;

    const SECRET: [u8; 32] = [7; 32];
    const NOW: u64 = 1_700_000_000;

    #[test]
    fn identifier_layout_is_as_documented() {
        let pk = Keys::generate().public_hex();
        let ident = IdentityIdentifier::new(&pk, [9; 16]).unwrap();
        let bytes = ident.encode();
        assert_eq!(bytes.len(), 51);
        assert_eq!(&bytes[..3], &[0, 0, b'I']);
        assert_eq!(hex::encode(&bytes[3..35]), pk);
        assert_eq!(&bytes[35..], &[9; 16]);
        assert_eq!(IdentityIdentifier::decode(&bytes).unwrap(), ident);

        let mut longer = bytes.clone();
        longer.push(0);
        let mut other_kind = bytes.clone();
        other_kind[2] = b'S';
        let mut not_a_point = bytes.clone();
        not_a_point[3..35].copy_from_slice(&[0xff; 32]);
        for bad in [&bytes[..50], &longer, &other_kind, &not_a_point] {
            assert!(
                matches!(
                    IdentityIdentifier::decode(bad),
                    Err(MacaroonError::InvalidIdentifier(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            IdentityIdentifier::new("not a key", [0; 16]),
            Err(MacaroonError::InvalidPubkey)
        );
    }

    #[test]
    fn round_trip() {
        let pk = Keys::generate().public_hex();
        let token = mint_identity_token(&SECRET, &pk.to_ascii_uppercase(), NOW + 3600).unwrap();
        assert_eq!(token.location(), Some(IDENTITY_LOCATION));
        let claims = verify_identity_token(&SECRET, &token.to_base64(), NOW).unwrap();
        assert_eq!(
            claims,
            IdentityClaims {
                pubkey: pk,
                expires_at: NOW + 3600
            }
        );
        // Two tokens for one key differ (random nonce).
        let again = mint_identity_token(&SECRET, &claims.pubkey, NOW + 3600).unwrap();
        assert_ne!(again.identifier(), token.identifier());
    }

    #[test]
    fn expired_is_distinguished_from_invalid() {
        let pk = Keys::generate().public_hex();
        let token = mint_identity_token(&SECRET, &pk, NOW + 10)
            .unwrap()
            .to_base64();
        assert_eq!(
            verify_identity_token(&SECRET, &token, NOW + 10),
            Err(MacaroonError::Expired {
                expires_at: NOW + 10,
                now: NOW + 10
            })
        );
        // A forged token is invalid, not expired, even past its expiry.
        assert_eq!(
            verify_identity_token(&[8; 32], &token, NOW + 10),
            Err(MacaroonError::BadSignature)
        );
    }

    #[test]
    fn forged_or_altered_tokens_are_refused() {
        let pk = Keys::generate().public_hex();
        let token = mint_identity_token(&[8; 32], &pk, NOW + 3600).unwrap();
        assert_eq!(
            verify_identity_token(&SECRET, &token.to_base64(), NOW),
            Err(MacaroonError::BadSignature)
        );
        // Minted under the real secret for A, with a second pubkey caveat naming B.
        let real = mint_identity_token(&SECRET, &pk, NOW + 3600).unwrap();
        let other = Keys::generate().public_hex();
        let widened = real.with_first_party_caveat(format!("pubkey={other}").as_bytes());
        assert!(matches!(
            verify_identity_token(&SECRET, &widened.to_base64(), NOW),
            Err(MacaroonError::PubkeyMismatch { .. })
        ));
        assert_eq!(
            verify_identity_token(&SECRET, "not base64 !!", NOW),
            Err(MacaroonError::Base64)
        );
    }

    #[test]
    fn holders_can_only_shorten_expiry() {
        let pk = Keys::generate().public_hex();
        let token = mint_identity_token(&SECRET, &pk, NOW + 3600).unwrap();
        let shorter = token
            .clone()
            .with_first_party_caveat(&expires_caveat(NOW + 60));
        let claims = verify_identity_token(&SECRET, &shorter.to_base64(), NOW).unwrap();
        assert_eq!(claims.expires_at, NOW + 60);
        assert!(matches!(
            verify_identity_token(&SECRET, &shorter.to_base64(), NOW + 60),
            Err(MacaroonError::Expired { .. })
        ));
        let longer = token.with_first_party_caveat(&expires_caveat(NOW + 999_999));
        assert_eq!(
            verify_identity_token(&SECRET, &longer.to_base64(), NOW)
                .unwrap()
                .expires_at,
            NOW + 3600
        );
    }

    #[test]
    fn unknown_or_malformed_caveats_are_refused() {
        let pk = Keys::generate().public_hex();
        let token = mint_identity_token(&SECRET, &pk, NOW + 3600).unwrap();
        let unknown = token.clone().with_first_party_caveat(b"models=gpt");
        assert_eq!(
            verify_identity_token(&SECRET, &unknown.to_base64(), NOW),
            Err(MacaroonError::UnknownCaveat {
                condition: "\"models\"".into()
            })
        );
        for bad in [&b"expires=soon"[..], b"no equals sign"] {
            let m = token.clone().with_first_party_caveat(bad);
            assert!(matches!(
                verify_identity_token(&SECRET, &m.to_base64(), NOW),
                Err(MacaroonError::MalformedCaveat { .. })
            ));
        }
        // Without the mint caveats the token says nothing: refused.
        let ident = IdentityIdentifier::new(&pk, [1; 16]).unwrap();
        let bare = Macaroon::mint(&identity_root_key(&SECRET), &ident.encode(), None);
        assert_eq!(
            verify_identity_token(&SECRET, &bare.to_base64(), NOW),
            Err(MacaroonError::MissingCaveat(COND_PUBKEY))
        );
        let no_expiry = bare.with_first_party_caveat(format!("pubkey={pk}").as_bytes());
        assert_eq!(
            verify_identity_token(&SECRET, &no_expiry.to_base64(), NOW),
            Err(MacaroonError::MissingCaveat(COND_EXPIRES))
        );
    }

    #[test]
    fn session_and_identity_tokens_are_not_interchangeable() {
        let session =
            mint_session_macaroon(&session_root_key(&SECRET, "s-1"), "s-1", NOW + 3600).unwrap();
        assert!(matches!(
            verify_identity_token(&SECRET, &session.to_base64(), NOW),
            Err(MacaroonError::InvalidIdentifier(_))
        ));
        // A session id of 32 characters gives a 51-byte identifier too: still refused.
        let id32 = "a".repeat(32);
        let session =
            mint_session_macaroon(&session_root_key(&SECRET, &id32), &id32, NOW + 3600).unwrap();
        assert_eq!(session.identifier().len(), 51);
        assert!(matches!(
            verify_identity_token(&SECRET, &session.to_base64(), NOW),
            Err(MacaroonError::InvalidIdentifier(_))
        ));

        let identity =
            mint_identity_token(&SECRET, &Keys::generate().public_hex(), NOW + 3600).unwrap();
        assert!(matches!(
            verify_session_with_server_secret(&identity, &SECRET, NOW),
            Err(MacaroonError::InvalidIdentifier(_))
        ));
    }
}

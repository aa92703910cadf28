//! L402 (formerly LSAT) as deployed clients speak it (Aperture, lnget, Alby).
//!
//! - Identifier: 66 bytes, big-endian: `version u16 = 0 | payment_hash [32] | token_id [32]`.
//! - Location `"lsat"`; standard base64 of the V2 binary macaroon.
//! - Challenge: `WWW-Authenticate: LSAT macaroon="…", invoice="…"` and the same with `L402`.
//! - Credential: `Authorization: L402 <macaroon>:<preimage hex>` (or `LSAT …`).
//! - Verification order (Aperture's `VerifyL402`): decode the identifier →
//!   `sha256(preimage) == payment_hash` → root key by `sha256(identifier)` → HMAC chain
//!   (constant time) → caveats.
//!
//! Caveats are `cond=value`: `services=<name>:<tier>,…` must name this service,
//! `<service>_capabilities=a,b` must include the capability used, `<service>_valid_until`
//! must lie ahead; sluice's own `models=a,b` narrows the models, `max_spend_msat=N` caps
//! spending (keyed like session spend caps, stable across descendants) and `expires=<unix s>`
//! bounds validity as it does on session macaroons. `<other>_capabilities` and
//! `<other>_valid_until` of another service are skipped, as Aperture does (a token may serve
//! several services). Any other condition is refused: a caveat this code does not understand
//! may be a restriction its author relied on. Repeated caveats can only narrow.

use sha2::{Digest, Sha256};
use sluice_core::Msat;

use crate::macaroon::{
    Macaroon, MacaroonError, SIGNATURE_LEN, SpendCap, quote_untrusted, session::spend_cap_key,
};

/// The macaroon location Aperture writes.
pub const LOCATION: &str = "lsat";
/// Identifier version.
pub const VERSION: u16 = 0;
/// Identifier length.
pub const IDENTIFIER_LEN: usize = 66;

/// Errors reading or verifying an L402 credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L402Error {
    /// The Authorization header is not `L402|LSAT <macaroon>:<64 hex>`.
    #[error("malformed L402 credential: {0}")]
    Malformed(&'static str),
    /// The identifier is not the 66-byte version-0 layout.
    #[error("the macaroon's identifier is not an L402 identifier")]
    BadIdentifier,
    /// The preimage does not hash to the identifier's payment hash.
    #[error("the preimage does not match the invoice this token was issued for")]
    WrongPreimage,
    /// No root key: unknown or revoked token.
    #[error("unknown or revoked token")]
    UnknownToken,
    /// The macaroon itself is invalid (signature, encoding).
    #[error(transparent)]
    Macaroon(#[from] MacaroonError),
    /// A caveat does not allow this request.
    #[error("caveat not satisfied: {0}")]
    Caveat(String),
    /// `<service>_valid_until` has passed.
    #[error("token expired at {valid_until}")]
    Expired {
        /// The earliest expiry among the caveats.
        valid_until: u64,
    },
}

/// The identifier of an L402 macaroon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identifier {
    /// The hash of the invoice that pays for the token.
    pub payment_hash: [u8; 32],
    /// Random token id.
    pub token_id: [u8; 32],
}

impl Identifier {
    /// The 66 identifier bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(IDENTIFIER_LEN);
        v.extend_from_slice(&VERSION.to_be_bytes());
        v.extend_from_slice(&self.payment_hash);
        v.extend_from_slice(&self.token_id);
        v
    }

    /// Parse 66 identifier bytes of version 0.
    pub fn decode(bytes: &[u8]) -> Result<Identifier, L402Error> {
        if bytes.len() != IDENTIFIER_LEN || bytes[..2] != VERSION.to_be_bytes() {
            return Err(L402Error::BadIdentifier);
        }
        let mut payment_hash = [0u8; 32];
        let mut token_id = [0u8; 32];
        payment_hash.copy_from_slice(&bytes[2..34]);
        token_id.copy_from_slice(&bytes[34..66]);
        Ok(Identifier {
            payment_hash,
            token_id,
        })
    }

    /// `sha256(identifier)`: the key under which the token's root key is stored.
    pub fn key_id(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// Mint an L402 macaroon for `service` with `capabilities`, valid until `valid_until` (unix s).
pub fn mint(
    root_key: &[u8; 32],
    id: &Identifier,
    service: &str,
    capabilities: &[&str],
    valid_until: u64,
) -> Macaroon {
    let mut m = Macaroon::mint(root_key, &id.encode(), Some(LOCATION));
    m.add_first_party_caveat(format!("services={service}:0").as_bytes());
    if !capabilities.is_empty() {
        m.add_first_party_caveat(
            format!("{service}_capabilities={}", capabilities.join(",")).as_bytes(),
        );
    }
    m.add_first_party_caveat(format!("{service}_valid_until={valid_until}").as_bytes());
    m
}

/// The two challenge header values (LSAT first, for old clients).
pub fn challenge_headers(macaroon_b64: &str, bolt11: &str) -> [String; 2] {
    [
        format!("LSAT macaroon=\"{macaroon_b64}\", invoice=\"{bolt11}\""),
        format!("L402 macaroon=\"{macaroon_b64}\", invoice=\"{bolt11}\""),
    ]
}

/// Whether an `Authorization` value uses the L402/LSAT scheme.
pub fn is_l402(header: &str) -> bool {
    let scheme = header.split_whitespace().next().unwrap_or_default();
    scheme.eq_ignore_ascii_case("L402") || scheme.eq_ignore_ascii_case("LSAT")
}

/// Parse `L402 <macaroon>:<preimage>` (or `LSAT …`; also `token=`/`macaroon=` prefixed forms).
pub fn parse_authorization(header: &str) -> Result<(Macaroon, [u8; 32]), L402Error> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .ok_or(L402Error::Malformed("no credential"))?;
    if !(scheme.eq_ignore_ascii_case("L402") || scheme.eq_ignore_ascii_case("LSAT")) {
        return Err(L402Error::Malformed("scheme must be L402 or LSAT"));
    }
    let rest = rest.trim();
    let rest = rest
        .strip_prefix("token=")
        .or_else(|| rest.strip_prefix("macaroon="))
        .unwrap_or(rest);
    let (mac, preimage) = rest
        .rsplit_once(':')
        .ok_or(L402Error::Malformed("expected <macaroon>:<preimage>"))?;
    if preimage.len() != 64 {
        return Err(L402Error::Malformed(
            "the preimage must be 64 hex characters",
        ));
    }
    let mut p = [0u8; 32];
    hex::decode_to_slice(preimage, &mut p)
        .map_err(|_| L402Error::Malformed("the preimage must be hex"))?;
    let m = Macaroon::from_base64(mac.trim().trim_matches('"'))?;
    Ok((m, p))
}

/// The first verification steps, before any root key is looked up: decode the
/// identifier and check the preimage pays its hash.
pub fn check_preimage(m: &Macaroon, preimage: &[u8; 32]) -> Result<Identifier, L402Error> {
    let id = Identifier::decode(m.identifier())?;
    let hash: [u8; 32] = Sha256::digest(preimage).into();
    // Not secret material (the hash is public), so plain comparison is fine.
    if hash != id.payment_hash {
        return Err(L402Error::WrongPreimage);
    }
    Ok(id)
}

/// What a verified L402 token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L402Claims {
    /// The identifier.
    pub id: Identifier,
    /// Earliest `<service>_valid_until`, if any.
    pub valid_until: Option<u64>,
    /// Models allowed (intersection of `models` caveats), `None` = all.
    pub models: Option<Vec<String>>,
    /// Spend caps.
    pub spend_caps: Vec<SpendCap>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Verify the HMAC chain under `root_key` and every caveat for `service` and `capability` at `now`.
pub fn verify(
    m: &Macaroon,
    id: Identifier,
    root_key: &[u8; 32],
    service: &str,
    capability: &str,
    now: u64,
) -> Result<L402Claims, L402Error> {
    let chain = m.verified_signature_chain(root_key)?;
    let caps_cond = format!("{service}_capabilities");
    let until_cond = format!("{service}_valid_until");
    let mut valid_until: Option<u64> = None;
    let mut models: Option<Vec<String>> = None;
    let mut spend_caps = Vec::new();
    for (index, caveat) in m.caveats().iter().enumerate() {
        if !caveat.is_first_party() {
            return Err(MacaroonError::ThirdPartyCaveat { index }.into());
        }
        let Some((cond, value)) = caveat.condition() else {
            return Err(L402Error::Caveat(format!(
                "unreadable caveat {}",
                quote_untrusted(&caveat.id)
            )));
        };
        match cond {
            "services" => {
                let ok = value
                    .split(',')
                    .any(|s| s.trim().split(':').next() == Some(service));
                if !ok {
                    return Err(L402Error::Caveat(format!(
                        "this token is for services {}",
                        quote_untrusted(value.as_bytes())
                    )));
                }
            }
            c if c == caps_cond && !list(value).iter().any(|c| c == capability) => {
                return Err(L402Error::Caveat(format!(
                    "this token does not allow {capability}"
                )));
            }
            c if c == caps_cond => {}
            c if c == until_cond => {
                let t: u64 = value
                    .parse()
                    .map_err(|_| L402Error::Caveat(format!("bad {until_cond}")))?;
                valid_until = Some(valid_until.map_or(t, |v| v.min(t)));
            }
            "models" => {
                let l = list(value);
                models = Some(match models {
                    None => l,
                    Some(mut cur) => {
                        cur.retain(|m| l.contains(m));
                        cur
                    }
                });
            }
            "max_spend_msat" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| L402Error::Caveat("bad max_spend_msat".into()))?;
                let sig: &[u8; SIGNATURE_LEN] =
                    chain.get(index + 1).ok_or(MacaroonError::BadSignature)?;
                spend_caps.push(SpendCap {
                    key: spend_cap_key(sig),
                    limit: Msat::from_msat(n),
                    caveat_index: index,
                });
            }
            "expires" => {
                let t: u64 = value
                    .parse()
                    .map_err(|_| L402Error::Caveat("bad expires".into()))?;
                valid_until = Some(valid_until.map_or(t, |v| v.min(t)));
            }
            // Another service's conditions (Aperture's per-service satisfiers): skipped.
            c if is_other_service_condition(c) => {}
            other => {
                return Err(L402Error::Caveat(format!(
                    "unknown caveat {}",
                    quote_untrusted(other.as_bytes())
                )));
            }
        }
    }
    if let Some(v) = valid_until
        && now >= v
    {
        return Err(L402Error::Expired { valid_until: v });
    }
    Ok(L402Claims {
        id,
        valid_until,
        models,
        spend_caps,
    })
}

/// `<service>_capabilities` or `<service>_valid_until` of some service: the
/// conditions Aperture defines per service, which another service's verifier skips.
fn is_other_service_condition(cond: &str) -> bool {
    ["_capabilities", "_valid_until"].iter().any(|suffix| {
        cond.strip_suffix(suffix).is_some_and(|service| {
            !service.is_empty()
                && service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn setup() -> (Macaroon, [u8; 32], [u8; 32], Identifier) {
        let preimage = [7u8; 32];
        let id = Identifier {
            payment_hash: Sha256::digest(preimage).into(),
            token_id: [9; 32],
        };
        let root = [1u8; 32];
        (
            mint(&root, &id, "sluice", &["chat"], 2_000),
            preimage,
            root,
            id,
        )
    }

    #[test]
    fn identifier_layout_is_aperture_s() {
        let (m, ..) = setup();
        let bytes = m.identifier();
        assert_eq!(bytes.len(), 66);
        assert_eq!(&bytes[..2], &[0, 0]);
        assert_eq!(m.location(), Some("lsat"));
    }

    #[test]
    fn a_paid_token_verifies_in_aperture_s_order() {
        let (m, preimage, root, _) = setup();
        for scheme in ["L402", "LSAT", "l402"] {
            let header = format!("{scheme} {}:{}", m.to_base64(), hex::encode(preimage));
            let (parsed, p) = parse_authorization(&header).unwrap();
            let id = check_preimage(&parsed, &p).unwrap();
            let claims = verify(&parsed, id, &root, "sluice", "chat", 1_000).unwrap();
            assert_eq!(claims.valid_until, Some(2_000));
        }
    }

    #[test]
    fn wrong_preimage_expiry_service_and_capability_are_refused() {
        let (m, preimage, root, id) = setup();
        assert_eq!(check_preimage(&m, &[8; 32]), Err(L402Error::WrongPreimage));
        assert_eq!(
            verify(&m, id, &root, "sluice", "chat", 2_000),
            Err(L402Error::Expired { valid_until: 2_000 })
        );
        assert!(matches!(
            verify(&m, id, &root, "other", "chat", 1),
            Err(L402Error::Caveat(_))
        ));
        assert!(matches!(
            verify(&m, id, &root, "sluice", "jobs", 1),
            Err(L402Error::Caveat(_))
        ));
        assert!(matches!(
            verify(&m, id, &[2; 32], "sluice", "chat", 1),
            Err(L402Error::Macaroon(_))
        ));
        let _ = preimage;
    }

    #[test]
    fn attenuation_narrows_and_widening_breaks_the_signature() {
        let (m, _, root, id) = setup();
        let narrowed = m
            .clone()
            .with_first_party_caveat(b"sluice_valid_until=1500")
            .with_first_party_caveat(b"models=a,b")
            .with_first_party_caveat(b"max_spend_msat=5000");
        let c = verify(&narrowed, id, &root, "sluice", "chat", 1_000).unwrap();
        assert_eq!(c.valid_until, Some(1_500));
        assert_eq!(c.models, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(c.spend_caps.len(), 1);
        assert_eq!(
            verify(&narrowed, id, &root, "sluice", "chat", 1_600),
            Err(L402Error::Expired { valid_until: 1_500 })
        );
        // Another service's caveats are skipped.
        let foreign = m
            .clone()
            .with_first_party_caveat(b"otherservice_valid_until=1");
        assert!(verify(&foreign, id, &root, "sluice", "chat", 1_000).is_ok());
        // sluice's `expires` is enforced as on session macaroons.
        let expiring = m.clone().with_first_party_caveat(b"expires=1000");
        assert_eq!(
            verify(&expiring, id, &root, "sluice", "chat", 1_000),
            Err(L402Error::Expired { valid_until: 1_000 })
        );
        assert!(verify(&expiring, id, &root, "sluice", "chat", 999).is_ok());
        // Dropping a caveat (keeping the narrowed signature) fails.
        let mut bytes = m.encode_v2();
        let at = bytes.len() - 32;
        bytes[at..].copy_from_slice(narrowed.signature());
        let widened = Macaroon::decode_v2(&bytes).unwrap();
        assert!(matches!(
            verify(&widened, id, &root, "sluice", "chat", 1_000),
            Err(L402Error::Macaroon(_))
        ));
    }

    #[test]
    fn unknown_caveats_on_an_l402_token_are_refused() {
        let (m, _, root, id) = setup();
        for bad in [
            &b"foo=bar"[..],
            b"sluice_valid_untill=5000",
            b"max_spend=1",
            b"noequals",
        ] {
            let attenuated = m.clone().with_first_party_caveat(bad);
            assert!(
                matches!(
                    verify(&attenuated, id, &root, "sluice", "chat", 1_000),
                    Err(L402Error::Caveat(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for skipped in [&b"other_capabilities=x"[..], b"other-svc_valid_until=1"] {
            let attenuated = m.clone().with_first_party_caveat(skipped);
            assert!(verify(&attenuated, id, &root, "sluice", "chat", 1_000).is_ok());
        }
    }

    /// Macaroons minted by Go implementations, as published in lsat-js's test
    /// data (Tierion/lsat-js): an Aperture-originated challenge (service
    /// `meme`) and a Go-generated macaroon, each with its payment hash. Their
    /// root keys are the minting servers' secrets, so their signatures cannot
    /// be checked here; everything else a verifier reads must match.
    #[test]
    fn go_minted_macaroons_decode_to_their_published_payment_hashes() {
        let aperture = "AgEEbHNhdAJCAAAwpHpumws6ufQoDwiTLNcge0QPUIWA0+tVY+tKPYAJ/zSfmEGlIpNm3VzxuzCqLhEp5KGiyPLUM9L+kcB7uzS+AAIPc2VydmljZXM9bWVtZTowAAISbWVtZV9jYXBhYmlsaXRpZXM9AAAGILA1VCEIExukt4nG+XR9tX8WJ2BVMiHG3UNt1uYJ+NRD";
        let m = Macaroon::from_base64(aperture).unwrap();
        assert_eq!(m.location(), Some(LOCATION));
        assert_eq!(m.to_base64(), aperture, "re-encodes byte for byte");
        let id = Identifier::decode(m.identifier()).unwrap();
        assert_eq!(
            hex::encode(id.payment_hash),
            "30a47a6e9b0b3ab9f4280f08932cd7207b440f508580d3eb5563eb4a3d8009ff"
        );
        let conds: Vec<(&str, &str)> = m.caveats().iter().filter_map(|c| c.condition()).collect();
        assert_eq!(
            conds,
            vec![("services", "meme:0"), ("meme_capabilities", "")]
        );
        // The challenge header Aperture sent parses as clients parse it...
        let header = format!(
            "LSAT {aperture}:{}",
            "2ca931a1c36b48f54948b898a271a53ed91ff7d0081939a5fa511249e81cba5c"
        );
        let (parsed, preimage) = parse_authorization(&header).unwrap();
        assert_eq!(parsed, m);
        // ...and the published preimage is not this invoice's: refused before any key is looked up.
        assert_eq!(
            check_preimage(&parsed, &preimage),
            Err(L402Error::WrongPreimage)
        );

        let go = "AgESMy4xMzYuMTc4LjE1OjM0MjM4AkIAAD2b0rX78LATiVo8bKgHuurefeF5OeX2H5ZuacBIK3+RAR1PKU1oZpfCZFib4zdDoj0pOpgPmhtuzNllU+y//D0AAAYgcWFs9FIteCzpCcEPSwmXKBpcx97hyL5Yt99cbLjRHzU=";
        let m = Macaroon::from_base64(go).unwrap();
        assert_eq!(m.location(), Some("3.136.178.15:34238"));
        assert_eq!(m.to_base64(), go);
        let id = Identifier::decode(m.identifier()).unwrap();
        assert_eq!(
            hex::encode(id.payment_hash),
            "3d9bd2b5fbf0b013895a3c6ca807baeade7de17939e5f61f966e69c0482b7f91"
        );
        assert!(m.caveats().is_empty());
    }

    #[test]
    fn malformed_credentials_are_refused_with_a_reason() {
        for bad in [
            "Bearer x",
            "L402",
            "L402 abc",
            "L402 abc:1234",
            "L402 !!!:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
        assert!(is_l402("LSAT x:y") && is_l402("L402 x") && !is_l402("Bearer x"));
        let [lsat, l402] = challenge_headers("AgE=", "lnbc1");
        assert_eq!(lsat, "LSAT macaroon=\"AgE=\", invoice=\"lnbc1\"");
        assert!(l402.starts_with("L402 "));
    }
}

//! Identity by Nostr key, no accounts: identity tokens and NIP-98 requests
//! verified, challenge login, an identity's standing, vouches.
//!
//! Each login nonce works once and only until it expires; each NIP-98
//! event works once on every process sharing the database.

use sluice_core::Tier;
use sluice_proto::{
    macaroon::{self, MacaroonError},
    nostr::{self, Event, HttpRequestFacts, NostrError},
};
use sluice_store::{ChallengeUse, NewVouch, VouchOutcome};

use crate::{ServiceError, Sluice, free::Standing};

fn nostr_error(e: NostrError) -> ServiceError {
    ServiceError::unauthorized(
        "invalid_signature",
        format!("Nostr authentication failed: {e}"),
    )
}

fn token_error(e: MacaroonError) -> ServiceError {
    match e {
        MacaroonError::Expired { .. } => ServiceError::unauthorized(
            "identity_token_expired",
            "this identity token has expired; log in again with POST /v1/identity/challenge",
        ),
        other => ServiceError::unauthorized(
            "invalid_identity_token",
            format!("invalid identity token: {other}"),
        ),
    }
}

/// A login challenge: sign `nonce` before `expires_at`.
#[derive(Debug, Clone)]
pub struct LoginChallenge {
    /// The nonce to sign.
    pub nonce: String,
    /// When it expires, unix seconds.
    pub expires_at: u64,
    /// How long it is valid, seconds.
    pub ttl_secs: u64,
}

/// A login: the identity token and who it names.
#[derive(Debug, Clone)]
pub struct Login {
    /// The identity token (base64 macaroon).
    pub token: String,
    /// The identity's public key (lowercase hex).
    pub pubkey: String,
    /// When the token expires, unix seconds.
    pub expires_at: u64,
    /// Its standing now.
    pub standing: Standing,
}

/// A vouch recorded.
#[derive(Debug, Clone)]
pub struct Vouched {
    /// Who vouched.
    pub voucher: String,
    /// For whom.
    pub vouchee: String,
    /// The vouchee's tier now.
    pub vouchee_tier: Tier,
}

impl Sluice {
    /// The pubkey an identity token (`X-Nostr-Token`) names, if it is valid now.
    pub fn verify_identity_token(&self, token: &str) -> Result<String, ServiceError> {
        let claims =
            macaroon::verify_identity_token(&self.root_secret, token, self.clock.now_secs())
                .map_err(token_error)?;
        Ok(claims.pubkey)
    }

    /// The pubkey a NIP-98 `Authorization: Nostr …` value signs for this
    /// request, if it is valid now and was never used before.
    pub async fn verify_nip98(
        &self,
        header_value: &str,
        request: &HttpRequestFacts<'_>,
    ) -> Result<String, ServiceError> {
        let window = self.identity.event_window_secs;
        let auth = nostr::verify_http_auth(header_value, request, self.clock.now_secs(), window)
            .map_err(nostr_error)?;
        // Each signed event works once, on every process sharing the database.
        let keep_until = i64::try_from(auth.created_at.saturating_add(window).saturating_add(60))
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        if !self
            .store
            .remember_event(&auth.event_id, keep_until, self.now_ms())
            .await?
        {
            return Err(ServiceError::unauthorized(
                "replayed_event",
                "this signed Nostr event was used before; sign a new one for each request",
            ));
        }
        Ok(auth.pubkey)
    }

    /// A nonce to sign for challenge login.
    pub async fn login_challenge(&self) -> Result<LoginChallenge, ServiceError> {
        let nonce = hex::encode(sluice_env::secret::<32>());
        let ttl_secs = self.identity.challenge_ttl_secs;
        let expires_at = self.clock.now_secs().saturating_add(ttl_secs);
        self.store
            .create_challenge(
                &nonce,
                i64::try_from(expires_at)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            )
            .await?;
        Ok(LoginChallenge {
            nonce,
            expires_at,
            ttl_secs,
        })
    }

    /// A signed challenge → an identity token. The signature is checked
    /// before the challenge is used up, so nobody can burn another's nonce
    /// with a forged event.
    pub async fn login(&self, event: &Event) -> Result<Login, ServiceError> {
        let nonce = event
            .tag("challenge")
            .map(str::to_owned)
            .unwrap_or_else(|| event.content.clone());
        let now = self.clock.now_secs();
        let pubkey = nostr::verify_login(
            event,
            &nonce,
            now,
            self.identity
                .challenge_ttl_secs
                .max(self.identity.event_window_secs),
        )
        .map_err(nostr_error)?;
        match self.store.consume_challenge(&nonce, self.now_ms()).await? {
            ChallengeUse::Consumed => {}
            ChallengeUse::Expired => {
                return Err(ServiceError::unauthorized(
                    "challenge_expired",
                    "this challenge has expired; ask for a new one with POST /v1/identity/challenge",
                ));
            }
            ChallengeUse::Unknown => {
                return Err(ServiceError::unauthorized(
                    "challenge_unknown",
                    "this challenge was never issued here or was already used; ask for a new one",
                ));
            }
        }
        let expires_at = now.saturating_add(self.identity.token_ttl_secs);
        let token = macaroon::mint_identity_token(&self.root_secret, &pubkey, expires_at)
            .map_err(|e| ServiceError::internal(&e))?;
        // Marks the identity seen (created the first time).
        let standing = crate::free::standing(self, &pubkey, self.now_ms()).await?;
        tracing::info!(tier = standing.tier.as_str(), "identity logged in");
        Ok(Login {
            token: token.to_base64(),
            pubkey,
            expires_at,
            standing,
        })
    }

    /// An identity's standing, and the keys it vouches for.
    pub async fn standing_of(&self, pubkey: &str) -> Result<(Standing, Vec<String>), ServiceError> {
        let s = crate::free::standing(self, pubkey, self.now_ms()).await?;
        let vouchees = self.store.vouchees_of(pubkey).await?;
        Ok((s, vouchees))
    }

    /// Record an elite identity's signed vouch.
    pub async fn vouch(&self, event: &Event) -> Result<Vouched, ServiceError> {
        let vouch = nostr::verify_vouch(
            event,
            self.clock.now_secs(),
            self.identity.challenge_ttl_secs,
        )
        .map_err(nostr_error)?;
        let now = self.now_ms();
        let voucher = crate::free::standing(self, &vouch.voucher, now).await?;
        if voucher.own_tier != Tier::Elite {
            return Err(ServiceError::forbidden(
                "not_elite",
                format!(
                    "only elite identities may vouch; this one is {}",
                    voucher.own_tier.as_str()
                ),
            ));
        }
        let outcome = self
            .store
            .add_vouch(
                &NewVouch {
                    voucher: vouch.voucher.clone(),
                    vouchee: vouch.vouchee.clone(),
                    event_id: vouch.event_id.clone(),
                    now_ms: now,
                },
                self.identity.max_vouches,
            )
            .await?;
        match outcome {
            VouchOutcome::Added => {}
            VouchOutcome::AlreadyVouched => {
                return Err(ServiceError::conflict(
                    "already_vouched",
                    "this identity already vouches for that key",
                ));
            }
            VouchOutcome::TooMany { max } => {
                return Err(ServiceError::conflict(
                    "too_many_vouches",
                    format!("an identity may vouch for at most {max} keys"),
                ));
            }
        }
        let vouchee = crate::free::standing(self, &vouch.vouchee, now).await?;
        Ok(Vouched {
            voucher: vouch.voucher,
            vouchee: vouch.vouchee,
            vouchee_tier: vouchee.tier,
        })
    }
}

//! Identity by Nostr key, no accounts.
//!
//! - Challenge login: `POST /v1/identity/challenge` gives a nonce; the client
//!   signs a kind-22242 event carrying it (a NIP-07 browser extension does
//!   this) and sends it to `POST /v1/identity/verify`, which answers with an
//!   identity token (a macaroon with `pubkey` and `expires` caveats). Each
//!   nonce works once and only until it expires.
//! - On any endpoint, an identity is presented with `X-Nostr-Token: <token>`
//!   or with NIP-98 `Authorization: Nostr <base64 event>` (URL, method and
//!   body hash checked, `created_at` within the window, each event once).
//!   [`identify`] checks either and puts an [`Identity`] in the request's
//!   extensions; a bad one is refused with 401, never ignored.
//! - `GET /v1/identity/me` shows the identity's standing;
//!   `POST /v1/identity/vouch` takes an elite identity's signed vouch.

use axum::{
    Extension, Json,
    body::Body,
    extract::{Request, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use sluice_core::Tier;
use sluice_proto::{
    macaroon::{self, MacaroonError},
    nostr::{self, Event, HttpRequestFacts, NostrError},
};
use sluice_store::{ChallengeUse, NewVouch, VouchOutcome};

use crate::{error::ApiError, state::AppState};

/// The header carrying an identity token.
pub const TOKEN_HEADER: &str = "x-nostr-token";

/// How the identity was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An identity token from challenge login.
    Token,
    /// A NIP-98 signed HTTP request.
    Nip98,
}

/// A verified identity on a request.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Lowercase hex public key.
    pub pubkey: String,
    /// How it was shown.
    pub via: Via,
}

fn nostr_error(e: NostrError) -> ApiError {
    ApiError::unauthorized(
        "invalid_signature",
        format!("Nostr authentication failed: {e}"),
    )
}

fn token_error(e: MacaroonError) -> ApiError {
    match e {
        MacaroonError::Expired { .. } => ApiError::unauthorized(
            "identity_token_expired",
            "this identity token has expired; log in again with POST /v1/identity/challenge",
        ),
        other => ApiError::unauthorized(
            "invalid_identity_token",
            format!("invalid identity token: {other}"),
        ),
    }
}

/// Whether an `Authorization` value uses the `Nostr` scheme (NIP-98).
pub fn is_nostr_auth(value: &str) -> bool {
    value
        .split_once(' ')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("nostr"))
}

/// The absolute URL a client signed for: the configured public URL, or the
/// request's `Host` (with `X-Forwarded-Proto` if a proxy set it), plus the
/// path and query.
fn request_url(state: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(base) = &state.public_url {
        return format!("{}{path}", base.trim_end_matches('/'));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|s| *s == "https" || *s == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}{path}")
}

/// Middleware: verify an identity token or a NIP-98 header when one is
/// present and record the [`Identity`]; refuse the request when it is bad.
pub async fn identify(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Anyone can make keys and sign: each signed request costs the gateway a
    // stored event id and perhaps a new identity, so they are limited per IP.
    let nip98 = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_nostr_auth(v))
        .map(str::to_owned);
    if nip98.is_some()
        && let Err(wait) = state.nip98_limiter.check(crate::ratelimit::client_ip(&req))
    {
        return crate::ratelimit::too_many(
            wait,
            format!(
                "too many NIP-98 signed requests from this address; retry in {wait} s, or log in once and send X-Nostr-Token"
            ),
        );
    }
    match identify_inner(&state, req, nip98).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `nip98`: the request's `Authorization: Nostr …` value, if any.
async fn identify_inner(
    state: &AppState,
    req: Request,
    nip98: Option<String>,
) -> Result<Request, ApiError> {
    let token = req
        .headers()
        .get(TOKEN_HEADER)
        .map(|v| {
            v.to_str().map(|s| s.trim().to_owned()).map_err(|_| {
                ApiError::unauthorized("invalid_identity_token", "malformed X-Nostr-Token header")
            })
        })
        .transpose()?;
    if token.is_some() && nip98.is_some() {
        return Err(ApiError::bad_request(
            "two_identities",
            "send either X-Nostr-Token or Authorization: Nostr, not both",
        ));
    }
    if let Some(token) = token {
        let claims =
            macaroon::verify_identity_token(&state.root_secret, &token, state.clock.now_secs())
                .map_err(token_error)?;
        let mut req = req;
        req.extensions_mut().insert(Identity {
            pubkey: claims.pubkey,
            via: Via::Token,
        });
        return Ok(req);
    }
    let Some(header_value) = nip98 else {
        return Ok(req);
    };
    // NIP-98 signs the body's hash: read it (bounded like every body), check,
    // and hand the same bytes on.
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| ApiError::too_large("the request body is too large"))?;
    let url = request_url(state, &parts.headers, &parts.uri);
    let now = state.clock.now_secs();
    let window = state.identity.event_window_secs;
    let auth = nostr::verify_http_auth(
        &header_value,
        &HttpRequestFacts {
            url: &url,
            method: parts.method.as_str(),
            body: &bytes,
        },
        now,
        window,
    )
    .map_err(nostr_error)?;
    // Each signed event works once, on every process sharing the database.
    let keep_until = i64::try_from(auth.created_at.saturating_add(window).saturating_add(60))
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    if !state
        .store
        .remember_event(&auth.event_id, keep_until, state.now_ms())
        .await?
    {
        return Err(ApiError::unauthorized(
            "replayed_event",
            "this signed Nostr event was used before; sign a new one for each request",
        ));
    }
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(Identity {
        pubkey: auth.pubkey,
        via: Via::Nip98,
    });
    Ok(req)
}

/// `POST /v1/identity/challenge`: a nonce to sign.
pub async fn challenge(State(state): State<AppState>) -> Result<Response, ApiError> {
    let nonce = hex::encode(sluice_env::secret::<32>());
    let ttl = state.identity.challenge_ttl_secs;
    let expires_at = state.clock.now_secs().saturating_add(ttl);
    state
        .store
        .create_challenge(
            &nonce,
            i64::try_from(expires_at)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "nonce": nonce,
            "expires_at": expires_at,
            "kind": nostr::LOGIN_KIND,
            "sign": format!(
                "sign an event of kind {} with the tag [\"challenge\", \"{nonce}\"] (NIP-07: window.nostr.signEvent) and POST it as {{\"event\": ...}} to /v1/identity/verify within {ttl} s",
                nostr::LOGIN_KIND
            ),
        })),
    )
        .into_response())
}

/// `POST /v1/identity/verify`: a signed challenge → an identity token.
pub async fn verify(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(v) = body?;
    let ev = v.get("event").cloned().unwrap_or(v);
    let event: Event = serde_json::from_value(ev).map_err(|e| {
        ApiError::bad_request(
            "invalid_event",
            format!("expected {{\"event\": <signed Nostr event>}}: {e}"),
        )
    })?;
    let nonce = event
        .tag("challenge")
        .map(str::to_owned)
        .unwrap_or_else(|| event.content.clone());
    let now = state.clock.now_secs();
    // Check the signature before using up the challenge, so nobody can burn
    // another's nonce with a forged event.
    let pubkey = nostr::verify_login(
        &event,
        &nonce,
        now,
        state
            .identity
            .challenge_ttl_secs
            .max(state.identity.event_window_secs),
    )
    .map_err(nostr_error)?;
    match state
        .store
        .consume_challenge(&nonce, state.now_ms())
        .await?
    {
        ChallengeUse::Consumed => {}
        ChallengeUse::Expired => {
            return Err(ApiError::unauthorized(
                "challenge_expired",
                "this challenge has expired; ask for a new one with POST /v1/identity/challenge",
            ));
        }
        ChallengeUse::Unknown => {
            return Err(ApiError::unauthorized(
                "challenge_unknown",
                "this challenge was never issued here or was already used; ask for a new one",
            ));
        }
    }
    let expires_at = now.saturating_add(state.identity.token_ttl_secs);
    let token = macaroon::mint_identity_token(&state.root_secret, &pubkey, expires_at)
        .map_err(|e| ApiError::internal(&e))?;
    // Marks the identity seen (created the first time).
    let standing = crate::free::standing(&state, &pubkey, state.now_ms()).await?;
    tracing::info!(tier = standing.tier.as_str(), "identity logged in");
    Ok(Json(json!({
        "token": token.to_base64(),
        "pubkey": pubkey,
        "npub": nostr::npub(&pubkey).ok(),
        "expires_at": expires_at,
        "tier": standing.tier.as_str(),
        "use": "send it as X-Nostr-Token on any request",
    })))
}

fn required(identity: Option<Extension<Identity>>) -> Result<Identity, ApiError> {
    identity.map(|Extension(i)| i).ok_or_else(|| {
        ApiError::unauthorized(
            "identity_required",
            "present an identity: X-Nostr-Token from POST /v1/identity/verify, or NIP-98 Authorization: Nostr",
        )
    })
}

/// `GET /v1/identity/me`
pub async fn me(
    State(state): State<AppState>,
    identity: Option<Extension<Identity>>,
) -> Result<Json<Value>, ApiError> {
    let id = required(identity)?;
    let s = crate::free::standing(&state, &id.pubkey, state.now_ms()).await?;
    let vouchees = state.store.vouchees_of(&id.pubkey).await?;
    Ok(Json(json!({
        "pubkey": id.pubkey,
        "npub": nostr::npub(&id.pubkey).ok(),
        "tier": s.tier.as_str(),
        "own_tier": s.own_tier.as_str(),
        "trust_score": s.score,
        "paid_days": s.row.paid_days,
        "vouched_by": s.vouchers,
        "vouches_for": vouchees,
        "interactions": {
            "total": s.row.successes + s.row.failures,
            "successful": s.row.successes,
            "failed": s.row.failures,
        },
        "sats_paid": s.row.paid.to_sats_floor(),
        "paid_msat": s.row.paid.msat(),
        "absorbed_msat": s.row.absorbed.msat(),
        "free_allowance": {
            "daily_sats": s.allowance.to_sats_floor(),
            "left_today_msat": s.left_today.msat(),
            "left_today_sats": s.left_today.to_sats_floor(),
        },
        "first_seen": s.row.first_seen_ms / 1000,
        "last_seen": s.row.last_seen_ms / 1000,
    })))
}

/// `POST /v1/identity/vouch`: `{"event": <signed kind-1985 vouch>}` from an
/// elite identity.
pub async fn vouch(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(v) = body?;
    let ev = v.get("event").cloned().unwrap_or(v);
    let event: Event = serde_json::from_value(ev).map_err(|e| {
        ApiError::bad_request(
            "invalid_event",
            format!("expected {{\"event\": <signed Nostr vouch event>}}: {e}"),
        )
    })?;
    let vouch = nostr::verify_vouch(
        &event,
        state.clock.now_secs(),
        state.identity.challenge_ttl_secs,
    )
    .map_err(nostr_error)?;
    let now = state.now_ms();
    let voucher = crate::free::standing(&state, &vouch.voucher, now).await?;
    if voucher.own_tier != Tier::Elite {
        return Err(ApiError::forbidden(
            "not_elite",
            format!(
                "only elite identities may vouch; this one is {}",
                voucher.own_tier.as_str()
            ),
        ));
    }
    let outcome = state
        .store
        .add_vouch(
            &NewVouch {
                voucher: vouch.voucher.clone(),
                vouchee: vouch.vouchee.clone(),
                event_id: vouch.event_id.clone(),
                now_ms: now,
            },
            state.identity.max_vouches,
        )
        .await?;
    match outcome {
        VouchOutcome::Added => {}
        VouchOutcome::AlreadyVouched => {
            return Err(ApiError::conflict(
                "already_vouched",
                "this identity already vouches for that key",
            ));
        }
        VouchOutcome::TooMany { max } => {
            return Err(ApiError::conflict(
                "too_many_vouches",
                format!("an identity may vouch for at most {max} keys"),
            ));
        }
    }
    let vouchee = crate::free::standing(&state, &vouch.vouchee, now).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "voucher": vouch.voucher,
            "vouchee": vouch.vouchee,
            "vouchee_tier": vouchee.tier.as_str(),
            "rules": "a vouch lifts the vouchee one tier (never to elite) while the voucher stays elite; each failure of the vouchee costs the voucher trust points",
        })),
    )
        .into_response())
}

/// The identity's pubkey, for binding to sessions, jobs and requests.
pub fn pubkey_of(identity: &Option<Extension<Identity>>) -> Option<String> {
    identity.as_ref().map(|Extension(i)| i.pubkey.clone())
}

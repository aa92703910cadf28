//! Identity by Nostr key on the wire (the rules are the service's,
//! `sluice_service::identity`).
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
use serde_json::Value;
use sluice_proto::api::{ErrorBody, Login, LoginChallenge, Me, SignedEvent, Vouched};
use sluice_proto::nostr::{self, Event, HttpRequestFacts};

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

pub use crate::auth::is_nostr_auth;

/// The absolute URL a client signed for: the configured public URL, or the
/// request's `Host` (with `X-Forwarded-Proto` if a proxy set it), plus the
/// path and query.
fn request_url(state: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(base) = &state.sluice.public_url {
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
        let pubkey = state.sluice.verify_identity_token(&token)?;
        let mut req = req;
        req.extensions_mut().insert(Identity {
            pubkey,
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
    let facts = HttpRequestFacts {
        url: &url,
        method: parts.method.as_str(),
        body: &bytes,
    };
    let pubkey = state.sluice.verify_nip98(&header_value, &facts).await?;
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(Identity {
        pubkey,
        via: Via::Nip98,
    });
    Ok(req)
}

/// A nonce to sign: the first step of a challenge login.
#[utoipa::path(post, path = "/v1/identity/challenge", tag = "identity",
    responses((status = 201, body = LoginChallenge), (status = "4XX", body = ErrorBody)))]
pub async fn challenge(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<LoginChallenge>), ApiError> {
    let c = state.sluice.login_challenge().await?;
    let sign = format!(
        "sign an event of kind {} with the tag [\"challenge\", \"{}\"] (NIP-07: window.nostr.signEvent) and POST it as {{\"event\": ...}} to /v1/identity/verify within {} s",
        nostr::LOGIN_KIND,
        c.nonce,
        c.ttl_secs
    );
    let kind = u64::from(nostr::LOGIN_KIND);
    let body = LoginChallenge {
        nonce: c.nonce,
        expires_at: c.expires_at,
        kind,
        sign,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// A signed event from `{"event": …}` (or the bare event); `what` names it in the error.
fn event_of(v: Value, what: &str) -> Result<Event, ApiError> {
    let ev = v.get("event").cloned().unwrap_or(v);
    serde_json::from_value(ev).map_err(|e| {
        ApiError::bad_request(
            "invalid_event",
            format!("expected {{\"event\": <signed Nostr {what}>}}: {e}"),
        )
    })
}

/// A signed challenge → an identity token, to send as `X-Nostr-Token`.
#[utoipa::path(post, path = "/v1/identity/verify", tag = "identity",
    request_body = SignedEvent,
    responses((status = 200, body = Login), (status = "4XX", body = ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Login>, ApiError> {
    let Json(v) = body?;
    let login = state.sluice.login(&event_of(v, "event")?).await?;
    Ok(Json(Login {
        npub: nostr::npub(&login.pubkey).ok(),
        token: login.token,
        pubkey: login.pubkey,
        expires_at: login.expires_at,
        tier: login.standing.tier.as_str().to_owned(),
        how: "send it as X-Nostr-Token on any request".into(),
    }))
}

/// The request's identity, or 401.
fn required(identity: Option<Extension<Identity>>) -> Result<Identity, ApiError> {
    identity.map(|Extension(i)| i).ok_or_else(|| {
        ApiError::unauthorized(
            "identity_required",
            "present an identity: X-Nostr-Token from POST /v1/identity/verify, or NIP-98 Authorization: Nostr",
        )
    })
}

/// The identity's standing: tier, trust, vouches, its free allowance.
#[utoipa::path(get, path = "/v1/identity/me", tag = "identity",
    security(("nostr_token" = []), ("nip98" = [])),
    responses((status = 200, body = Me), (status = "4XX", body = ErrorBody)))]
pub async fn me(
    State(state): State<AppState>,
    identity: Option<Extension<Identity>>,
) -> Result<Json<Me>, ApiError> {
    let id = required(identity)?;
    let (s, vouchees) = state.sluice.standing_of(&id.pubkey).await?;
    Ok(Json(crate::views::me(&id.pubkey, &s, vouchees)))
}

/// An elite identity's signed vouch (kind 1985) for another.
#[utoipa::path(post, path = "/v1/identity/vouch", tag = "identity",
    request_body = SignedEvent,
    responses((status = 201, body = Vouched), (status = "4XX", body = ErrorBody)))]
pub async fn vouch(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Vouched>), ApiError> {
    let Json(v) = body?;
    let v = state.sluice.vouch(&event_of(v, "vouch event")?).await?;
    Ok((
        StatusCode::CREATED,
        Json(Vouched {
            voucher: v.voucher,
            vouchee: v.vouchee,
            vouchee_tier: v.vouchee_tier.as_str().to_owned(),
            rules: "a vouch lifts the vouchee one tier (never to elite) while the voucher stays elite; each failure of the vouchee costs the voucher trust points".into(),
        }),
    ))
}

/// The identity's pubkey, for binding to sessions, jobs and requests.
pub fn pubkey_of(identity: &Option<Extension<Identity>>) -> Option<String> {
    identity.as_ref().map(|Extension(i)| i.pubkey.clone())
}

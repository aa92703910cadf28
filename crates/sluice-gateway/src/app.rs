//! The router (`app`) apart from serving (`serve`), so tests and the
//! simulator can run many gateways in one process.

use std::{future::Future, time::Duration};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State, rejection::JsonRejection},
    http::{HeaderName, Request, StatusCode},
    middleware,
    response::{IntoResponse, Response},
};
use sluice_proto::{
    api::{
        DEV_WALLET_WARNING, DevInvoice, DevInvoiceBody, DevInvoiceStatus, DevPaid, ErrorBody,
        PayBody,
    },
    openai::ModelList,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    trace::TraceLayer,
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{chat, error::ApiError, ratelimit, sessions, state::AppState};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The gateway's HTTP API, and its OpenAPI document (served at `GET /openapi.json`).
///
/// Every route is mounted through `routes!` from a handler's
/// `#[utoipa::path]`, so what is mounted is what is documented (clippy
/// refuses `Router::route` in this crate; `tests/api/openapi.rs` checks both
/// directions against the running router).
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let (router, mut doc) = routes(&state).split_for_parts();
    describe_responses(&mut doc);
    let doc = OpenApiJson(doc.to_json().unwrap_or_default().into());
    let router = router.layer(axum::Extension(doc));
    finish(router, state, max_body_bytes)
}

/// The routes, each with its documentation, for what `state` enables.
pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    let limit = || middleware::from_fn_with_state(state.clone(), ratelimit::limit);
    // Endpoints that write for a caller who has not paid: limited per client IP.
    let public = OpenApiRouter::new()
        .routes(routes!(sessions::create))
        .routes(routes!(crate::pricing::estimate))
        .routes(routes!(crate::jobs::create))
        .routes(routes!(crate::identity::challenge))
        .routes(routes!(crate::identity::verify))
        .routes(routes!(crate::identity::vouch))
        // Looking an identity up marks it seen (a write), for anyone holding a free token.
        .routes(routes!(crate::identity::me))
        .route_layer(limit());
    let (schemas, paths, chat) = routes!(chat::chat_completions);
    let chat = chat.route_layer(middleware::from_fn_with_state(
        state.clone(),
        ratelimit::limit_anonymous,
    ));
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi_json))
        .routes(routes!(crate::health::healthz))
        .routes(routes!(models))
        .routes(routes!(metrics))
        .routes((schemas, paths, chat))
        .routes(routes!(sessions::get))
        .routes(routes!(sessions::topup))
        .routes(routes!(crate::refunds::close_session))
        .routes(routes!(crate::refunds::claim_session))
        .routes(routes!(crate::refunds::claim_l402))
        .routes(routes!(crate::jobs::get))
        .routes(routes!(crate::jobs::claim_refund))
        .routes(routes!(crate::free::pool))
        .merge(public);
    if state.sluice.demo.enabled {
        router = router.routes(routes!(crate::free::demo));
    }
    if state.sluice.lnbits.is_some() {
        router = router.merge(
            OpenApiRouter::new()
                .routes(routes!(lnbits_webhook))
                .route_layer(limit()),
        );
    }
    if state.sluice.dev_wallet.is_some() {
        router = router.merge(
            OpenApiRouter::new()
                .routes(routes!(dev_pay))
                .routes(routes!(dev_invoice))
                .routes(routes!(dev_invoice_status))
                .route_layer(limit()),
        );
    }
    router
}

/// The document's frame: what the API is and how a caller authenticates.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sluice",
        description = "An OpenAI-compatible API whose answers are paid in sats over Lightning: from a pre-funded session (bearer macaroon), per request with L402, as a two-phase job, or from the free tier's pool for a Nostr identity. Amounts are integer msat unless a field says sats.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&Credentials),
    tags(
        (name = "chat", description = "Paid answers"),
        (name = "sessions", description = "Pre-funded balances"),
        (name = "l402", description = "Pay per request"),
        (name = "jobs", description = "Evaluate, then pay for the work"),
        (name = "identity", description = "Nostr identity and trust"),
        (name = "free tier", description = "The generosity pool"),
        (name = "lightning", description = "Lightning backends' callbacks"),
        (name = "dev wallet", description = "Not real money"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

/// The credentials the API accepts, as security schemes.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let c = doc.components.get_or_insert_with(Default::default);
        // OpenAPI has no scheme for `Authorization: L402 …` or `Authorization: Nostr …`.
        let scheme = |what: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                what,
            )))
        };
        c.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("a session's macaroon, from POST /v1/sessions"))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "l402",
            scheme("L402 <macaroon>:<preimage>, after paying a 402's invoice"),
        );
        c.add_security_scheme("nip98", scheme("Nostr <base64 event>: NIP-98, a signed kind-27235 event over the URL, method and body"));
        c.add_security_scheme(
            "nostr_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::identity::TOKEN_HEADER,
                "an identity token from POST /v1/identity/verify",
            ))),
        );
    }
}

/// Give every response the handler did not describe the meaning of its
/// status (OpenAPI requires a description on each).
fn describe_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ];
        for op in ops.into_iter().flatten() {
            for (status, r) in &mut op.responses.responses {
                if let RefOr::T(r) = r
                    && r.description.is_empty()
                {
                    r.description = meaning(status).into();
                }
            }
        }
    }
}

/// What a status means in this API.
fn meaning(status: &str) -> &'static str {
    match status {
        "200" => "done",
        "201" => "created",
        "202" => "accepted: the outcome is not known yet",
        "402" => "payment required: pay the invoice, then retry with the credential",
        "409" => "already done: nothing was done twice",
        "502" => "the upstream or the payout failed; nothing was charged or paid",
        "503" => "a dependency of money is down; try again shortly",
        "4XX" => "refused: the error body says why and what to do",
        "5XX" => "the gateway or a dependency failed: nothing was charged that was not delivered",
        _ => "see the body",
    }
}

/// The OpenAPI document, rendered once per router (cloning it shares the bytes).
#[derive(Clone)]
struct OpenApiJson(axum::body::Bytes);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3.1 document of this gateway", content_type = "application/json")))]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<OpenApiJson>,
) -> ([(HeaderName, &'static str); 1], axum::body::Bytes) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.0.clone(),
    )
}

/// The HTTP layers around the routes: identity, CORS, limits, tracing, request ids.
fn finish(router: Router<AppState>, state: AppState, max_body_bytes: usize) -> Router {
    let cors = cors(&state.cors_origins);
    let body_timeout = state.body_timeout;
    let max_header_bytes = state.limits.max_header_buffer / 2;
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::identity::identify,
        ))
        .with_state(state);
    let router = match cors {
        Some(c) => router.layer(c),
        None => router,
    };
    router
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_timeout))
        .layer(middleware::from_fn(move |req: Request<axum::body::Body>, next: middleware::Next| {
            header_limit(max_header_bytes, req, next)
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                // The route, not the path: a path may carry a capability (a job id), and
                // query strings and bodies may carry prompts or secrets.
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or("(no route)", |m| m.as_str())
                    .to_owned();
                tracing::info_span!("http", request_id = %id, method = %req.method(), route = %route)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static(crate::identity::TOKEN_HEADER),
        ]))
        .layer(CatchPanicLayer::custom(|_| ApiError::internal(&"handler panicked").into_response()))
}

/// The CORS layer for browser clients on other origins (a page logging in
/// with a NIP-07 extension), when any origin is configured.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(crate::identity::TOKEN_HEADER),
            ])
            .expose_headers([
                header::WWW_AUTHENTICATE,
                header::RETRY_AFTER,
                HeaderName::from_static("x-sluice-cost-msat"),
                HeaderName::from_static("x-sluice-balance-msat"),
                HeaderName::from_static("x-sluice-hold-msat"),
                HeaderName::from_static("x-sluice-request-id"),
                HeaderName::from_static("x-sluice-free-tier"),
                HeaderName::from_static("x-sluice-absorbed-msat"),
            ]),
    )
}

/// Serve `app` on `listener` until `shutdown` resolves, then wait for
/// in-flight settlements and background loops to finish.
///
/// This process keeps saying it is alive until that work is done, and
/// retires its instance row only then: a peer must not take its open holds
/// for abandoned ones while it is still settling them. If the work outlives
/// the 30 s allowed, the row is left to go stale, and the holds are released
/// by whichever process notices first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let running = state.sluice.start().await;
    let router = app(state.clone(), max_body_bytes);
    let stop = state.sluice.shutdown.clone();
    let result = crate::server::run(listener, router, state.limits, async move {
        tokio::select! {
            _ = shutdown => {},
            _ = stop.cancelled() => {},
        }
    })
    .await;
    running.shutdown(Duration::from_secs(30)).await;
    result
}

/// Answer 431 in the API's error shape when the request's headers are larger
/// than `max` bytes (hyper's own 431, for headers past its buffer, has no body).
async fn header_limit(
    max: usize,
    req: Request<axum::body::Body>,
    next: middleware::Next,
) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if size > max {
        return ApiError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            kind: "invalid_request_error",
            code: "headers_too_large",
            message: format!(
                "the request line and headers are {size} bytes; at most {max} are accepted"
            ),
        }
        .into_response();
    }
    next.run(req).await
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        kind: "invalid_request_error",
        code: "method_not_allowed",
        message: "this endpoint does not accept this method".into(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

/// The estimators' figures, in Prometheus's text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.sluice.estimates.metrics(),
    )
}

/// The models sold, each with its price in msat at the current BTC/USD.
#[utoipa::path(get, path = "/v1/models", tag = "chat",
    responses((status = 200, body = ModelList), (status = "5XX", body = ErrorBody)))]
async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let (btc, source) = state.sluice.oracle.btc_usd().await;
    crate::views::models(&state.sluice, btc, source.as_str()).map(Json)
}

/// LNbits says an invoice settled; the answer comes at once and the
/// service looks the invoice up after it (the callback is never trusted).
#[utoipa::path(post, path = "/v1/lightning/lnbits/webhook", tag = "lightning",
    request_body(content = String, description = "LNbits's payment callback (only its payment hash is read)", content_type = "application/json"),
    responses((status = 202, description = "the invoice will be looked up"), (status = 404, description = "not an invoice of this gateway")))]
async fn lnbits_webhook(State(state): State<AppState>, body: axum::body::Bytes) -> StatusCode {
    if state.sluice.lnbits_webhook(body) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::NOT_FOUND
    }
}

/// The customer pays one of the gateway's dev invoices (not real money).
#[utoipa::path(post, path = "/v1/dev/pay", tag = "dev wallet",
    request_body = PayBody,
    responses((status = 200, body = DevPaid), (status = "4XX", body = ErrorBody)))]
async fn dev_pay(
    State(state): State<AppState>,
    body: Result<Json<PayBody>, JsonRejection>,
) -> Result<Json<DevPaid>, ApiError> {
    let Json(b) = body?;
    let p = state.sluice.dev_pay(&b.bolt11).await?;
    Ok(Json(DevPaid {
        payment_hash: p.payment_hash.to_hex(),
        preimage: p.preimage,
        real_money: false,
        warning: DEV_WALLET_WARNING.into(),
    }))
}

/// An invoice of the customer's own dev wallet, for the gateway to pay (a refund claim).
#[utoipa::path(post, path = "/v1/dev/invoice", tag = "dev wallet",
    request_body = DevInvoiceBody,
    responses((status = 201, body = DevInvoice), (status = "4XX", body = ErrorBody)))]
async fn dev_invoice(
    State(state): State<AppState>,
    body: Result<Json<DevInvoiceBody>, JsonRejection>,
) -> Result<(StatusCode, Json<DevInvoice>), ApiError> {
    let Json(b) = body?;
    let inv = state
        .sluice
        .dev_invoice(b.amount_sats, b.memo, b.expiry_secs)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DevInvoice {
            bolt11: inv.bolt11,
            payment_hash: inv.payment_hash.to_hex(),
            amount_sats: b.amount_sats,
            expires_at: inv.expires_at,
            real_money: false,
            warning: DEV_WALLET_WARNING.into(),
        }),
    ))
}

/// Whether a customer dev invoice was paid.
#[utoipa::path(get, path = "/v1/dev/invoices/{hash}", tag = "dev wallet",
    params(("hash" = String, Path, description = "the invoice's payment hash")),
    responses((status = 200, body = DevInvoiceStatus), (status = "4XX", body = ErrorBody)))]
async fn dev_invoice_status(
    State(state): State<AppState>,
    crate::extract::ApiPath(hash): crate::extract::ApiPath<String>,
) -> Result<Json<DevInvoiceStatus>, ApiError> {
    let h = sluice_lightning::PaymentHash::from_hex(hash.trim())
        .map_err(|_| ApiError::bad_request("invalid_payment_hash", "expected 64 hex characters"))?;
    let state_name = state.sluice.dev_invoice_status(&h).await?;
    Ok(Json(DevInvoiceStatus {
        payment_hash: h.to_hex(),
        state: state_name.to_string(),
        real_money: false,
    }))
}

//! The router (`app`) apart from serving (`serve`), so tests and the
//! simulator can run many gateways in one process.

use std::{future::Future, time::Duration};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State, rejection::JsonRejection},
    http::{HeaderName, Request, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    trace::TraceLayer,
};

use crate::{chat, error::ApiError, ratelimit, sessions, state::AppState};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The gateway's HTTP API.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let public = Router::new()
        .route("/v1/sessions", post(sessions::create))
        .route("/v1/estimate", post(crate::pricing::estimate))
        .route("/v1/jobs", post(crate::jobs::create))
        .route("/v1/identity/challenge", post(crate::identity::challenge))
        .route("/v1/identity/verify", post(crate::identity::verify))
        .route("/v1/identity/vouch", post(crate::identity::vouch))
        // Looking an identity up marks it seen (a write), for anyone holding a free token.
        .route("/v1/identity/me", get(crate::identity::me))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ));
    let mut router = Router::new()
        .route("/healthz", get(crate::health::healthz))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route(
            "/v1/chat/completions",
            post(chat::chat_completions).route_layer(middleware::from_fn_with_state(
                state.clone(),
                ratelimit::limit_anonymous,
            )),
        )
        .route("/v1/sessions/{id}", get(sessions::get))
        .route("/v1/jobs/{id}", get(crate::jobs::get))
        .route("/v1/jobs/{id}/refund", post(crate::jobs::claim_refund))
        .route(
            "/v1/sessions/{id}/close",
            post(crate::refunds::close_session),
        )
        .route(
            "/v1/sessions/{id}/refund",
            post(crate::refunds::claim_session),
        )
        .route("/v1/l402/refund", post(crate::refunds::claim_l402))
        .route("/v1/sessions/{id}/topup", post(sessions::topup))
        .route("/v1/pool", get(crate::free::pool))
        .merge(public);
    if state.demo.enabled {
        router = router.route("/v1/demo", get(crate::free::demo));
    }
    if state.lnbits.is_some() {
        router = router.merge(
            Router::new()
                .route("/v1/lightning/lnbits/webhook", post(lnbits_webhook))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    ratelimit::limit,
                )),
        );
    }
    if state.dev_wallet.is_some() {
        router = router.merge(
            Router::new()
                .route("/v1/dev/pay", post(dev_pay))
                .route("/v1/dev/invoice", post(dev_invoice))
                .route("/v1/dev/invoices/{hash}", get(dev_invoice_status))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    ratelimit::limit,
                )),
        );
    }
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
    let stop = state.shutdown.clone();
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

async fn metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.estimates.metrics(),
    )
}

async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (btc, source) = state.oracle.btc_usd().await;
    let mut data = Vec::new();
    for m in state.models.values() {
        data.push(json!({
            "id": m.name,
            "object": "model",
            "created": 0,
            "owned_by": "sluice",
            "pricing": crate::pricing::price_card(m, btc)?,
            "max_output_tokens": m.budget.max_output,
            "default_max_tokens": m.budget.default_max_output,
            "context_length": m.budget.context_length,
        }));
    }
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "btc_usd": sluice_core::UsdMicros(btc.micros()).to_decimal_string(),
        "btc_usd_source": source.as_str(),
    })))
}

/// `POST /v1/lightning/lnbits/webhook`: LNbits says an invoice settled; the
/// answer comes at once and the service looks the invoice up after it.
async fn lnbits_webhook(State(state): State<AppState>, body: axum::body::Bytes) -> StatusCode {
    if state.sluice.lnbits_webhook(body) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayBody {
    bolt11: String,
}

/// `POST /v1/dev/pay`: the customer pays one of the gateway's dev invoices.
async fn dev_pay(
    State(state): State<AppState>,
    body: Result<Json<PayBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let p = state.sluice.dev_pay(&b.bolt11).await?;
    let body = json!({
        "payment_hash": p.payment_hash.to_hex(),
        "preimage": p.preimage,
        "real_money": false,
        "warning": "dev wallet: NOT real money",
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevInvoiceBody {
    amount_sats: u64,
    memo: Option<String>,
    /// Seconds the invoice stays payable (default: `lightning.invoice_expiry_secs`).
    expiry_secs: Option<u64>,
}

/// `POST /v1/dev/invoice`: an invoice of the customer's own dev wallet, for
/// the gateway to pay (a refund claim).
async fn dev_invoice(
    State(state): State<AppState>,
    body: Result<Json<DevInvoiceBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let inv = state
        .dev_invoice(b.amount_sats, b.memo, b.expiry_secs)
        .await?;
    let body = json!({
        "bolt11": inv.bolt11,
        "payment_hash": inv.payment_hash.to_hex(),
        "amount_sats": b.amount_sats,
        "expires_at": inv.expires_at,
        "real_money": false,
        "warning": "dev wallet: NOT real money",
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/dev/invoices/{hash}`: whether a customer dev invoice was paid.
async fn dev_invoice_status(
    State(state): State<AppState>,
    crate::extract::ApiPath(hash): crate::extract::ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let h = sluice_lightning::PaymentHash::from_hex(hash.trim())
        .map_err(|_| ApiError::bad_request("invalid_payment_hash", "expected 64 hex characters"))?;
    let state_name = state.dev_invoice_status(&h).await?;
    Ok(Json(
        json!({"payment_hash": h.to_hex(), "state": state_name, "real_money": false}),
    ))
}

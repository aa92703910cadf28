//! Prices on the wire: `POST /v1/estimate`. Pricing itself is the service's
//! (`sluice_service::pricing`); the price card is shaped in [`crate::views`].

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
};
use serde_json::Value;
use sluice_proto::{
    api::{ErrorBody, Estimate},
    openai::ChatCompletionRequest,
};

use sluice_service::request::ChatBody;

use crate::{error::ApiError, identity::Identity, state::AppState, views};

/// What a chat request would cost, without paying: the hold, the expected
/// output and cost, and (with an identity) the free tier's decision.
#[utoipa::path(post, path = "/v1/estimate", tag = "chat",
    request_body = ChatCompletionRequest,
    responses((status = 200, body = Estimate), (status = "4XX", body = ErrorBody)))]
pub async fn estimate(
    State(state): State<AppState>,
    identity: Option<axum::Extension<Identity>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Estimate>, ApiError> {
    let Json(v) = body?;
    let req = ChatBody::parse(v)?;
    let pubkey = crate::identity::pubkey_of(&identity);
    let q = state.sluice.quote(&req, pubkey.as_deref()).await?;
    views::estimate(&q).map(Json)
}

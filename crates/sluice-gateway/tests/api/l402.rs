//! L402 pay-per-request, as a deployed client would do it: read the challenge
//! from `WWW-Authenticate`, pay the invoice, retry with `macaroon:preimage`.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sluice_proto::{
    l402::Identifier,
    macaroon::{Macaroon, models_caveat},
};

use super::helpers::{Db, TestApp, error_code, user};

/// `(macaroon, invoice)` from the `L402` challenge header, as clients parse it.
fn challenge(r: &Response) -> (String, String) {
    let headers: Vec<&str> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(headers.len(), 2, "{headers:?}");
    assert!(
        headers[0].starts_with("LSAT "),
        "LSAT first for old clients: {headers:?}"
    );
    let l402 = headers[1].strip_prefix("L402 ").unwrap();
    let field = |name: &str| {
        let start = l402.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        l402[start..start + l402[start..].find('"').unwrap()].to_owned()
    };
    (field("macaroon"), field("invoice"))
}

async fn chat_l402(
    app: &TestApp,
    scheme: &str,
    mac: &str,
    preimage: &str,
    body: Value,
) -> Response {
    app.http
        .post(app.url("/v1/chat/completions"))
        .header("authorization", format!("{scheme} {mac}:{preimage}"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn body(max_tokens: u64) -> Value {
    json!({"model": "fake-model", "max_tokens": max_tokens, "messages": user("hi")})
}

#[tokio::test]
async fn a_client_pays_the_challenge_and_reuses_then_tops_up_its_token() {
    let app = TestApp::spawn(Db::Sqlite).await;

    // 1. No credential: 402 with an invoice for this request's estimate.
    let r = app.post("/v1/chat/completions", body(100), None).await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    let (mac, bolt11) = challenge(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payment_required");
    // 9 input tokens * 100 + 100 output * 200 = 20,900 msat, invoiced as 21 sats.
    assert_eq!(v["l402"]["invoice"]["amount_sats"], 21);
    let m = Macaroon::from_base64(&mac).unwrap();
    assert_eq!(m.location(), Some("lsat"));
    let id = Identifier::decode(m.identifier()).unwrap();

    // 2. Pay, retry: served, charged the actual cost.
    let preimage = app.pay(&bolt11).await["preimage"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = chat_l402(&app, "L402", &mac, &preimage, body(100)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cost: u64 = r.headers()["x-sluice-cost-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let balance: u64 = r.headers()["x-sluice-balance-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(cost, 4 * 100 + 7 * 200);
    assert_eq!(balance, 21_000 - cost);

    // 3. What is left is reused (here with the LSAT scheme) while it covers the hold.
    let r = chat_l402(&app, "LSAT", &mac, &preimage, body(20)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let balance: u64 = r.headers()["x-sluice-balance-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    // 4. Too little left: a fresh 402 tops up the same token, with a macaroon for the new invoice.
    let r = chat_l402(&app, "L402", &mac, &preimage, body(100)).await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    let (mac2, bolt11_2) = challenge(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["l402"]["invoice"]["amount_sats"],
        (20_900 - balance).div_ceil(1000)
    );
    let id2 = Identifier::decode(Macaroon::from_base64(&mac2).unwrap().identifier()).unwrap();
    assert_eq!(id2.token_id, id.token_id, "the same token");
    assert_ne!(id2.payment_hash, id.payment_hash);
    let preimage2 = app.pay(&bolt11_2).await["preimage"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = chat_l402(&app, "L402", &mac2, &preimage2, body(100)).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Either credential spends the one balance.
    let r = chat_l402(&app, "L402", &mac, &preimage, body(10)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let report = app.assert_ledger_consistent().await;
    assert_eq!(report.held.msat(), 0);
    app.stop().await;
}

#[tokio::test]
async fn forged_revoked_narrowed_and_expired_tokens_are_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let r = app.post("/v1/chat/completions", body(10), None).await;
    let (mac, bolt11) = challenge(&r);
    let preimage = app.pay(&bolt11).await["preimage"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = Macaroon::from_base64(&mac).unwrap();

    let wrong = "00".repeat(32);
    let r = chat_l402(&app, "L402", &mac, &wrong, body(10)).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_credential".into())
    );

    let other_model = m
        .clone()
        .with_first_party_caveat(&models_caveat(&["other"]).unwrap())
        .to_base64();
    let r = chat_l402(&app, "L402", &other_model, &preimage, body(10)).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "model_not_allowed".into())
    );

    let expired = m
        .clone()
        .with_first_party_caveat(b"sluice_valid_until=1")
        .to_base64();
    let r = chat_l402(&app, "L402", &expired, &preimage, body(10)).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "credential_expired".into())
    );

    let other_service = m
        .clone()
        .with_first_party_caveat(b"services=elsewhere:0")
        .to_base64();
    let r = chat_l402(&app, "L402", &other_service, &preimage, body(10)).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "caveat_not_satisfied".into())
    );

    // Still good, until its root key is deleted.
    assert_eq!(
        chat_l402(&app, "L402", &mac, &preimage, body(10))
            .await
            .status(),
        StatusCode::OK
    );
    let id = Identifier::decode(m.identifier()).unwrap();
    assert!(
        app.state
            .sluice
            .store
            .secret_delete(&sluice_gateway::l402::root_key_name(&id))
            .await
            .unwrap()
    );
    let r = chat_l402(&app, "L402", &mac, &preimage, body(10)).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_credential".into())
    );
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// A delegate holding a model-restricted L402 credential asked for a top-up
/// and got a fresh, unrestricted macaroon for the whole token.
#[tokio::test]
async fn a_restricted_credential_tops_up_without_getting_a_wider_one() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let r = app.post("/v1/chat/completions", body(10), None).await;
    let (mac, bolt11) = challenge(&r);
    let preimage = app.pay(&bolt11).await["preimage"]
        .as_str()
        .unwrap()
        .to_owned();
    let narrowed = Macaroon::from_base64(&mac)
        .unwrap()
        .with_first_party_caveat(&models_caveat(&["fake-model"]).unwrap())
        .to_base64();
    // Spend what the token holds, then ask for more than is left.
    let r = chat_l402(&app, "L402", &narrowed, &preimage, body(10)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = chat_l402(&app, "L402", &narrowed, &preimage, body(100)).await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "no new macaroon for a restricted credential: {:?}",
        r.headers()
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payment_required");
    assert!(v["l402"].get("macaroon").is_none(), "{v}");
    let top_up = v["l402"]["invoice"]["bolt11"].as_str().unwrap().to_owned();
    app.pay(&top_up).await;
    // The delegate goes on with the credential it has.
    let r = chat_l402(&app, "L402", &narrowed, &preimage, body(100)).await;
    assert_eq!(r.status(), StatusCode::OK);
    // An unrestricted credential still gets a macaroon for its top-up.
    let r = chat_l402(&app, "L402", &mac, &preimage, body(1000)).await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    challenge(&r);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

//! Identity by Nostr key: challenge login, identity tokens, NIP-98, vouching.
//! Forged, replayed and expired signatures and tokens are refused with clear
//! errors.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_core::Interaction;
use sluice_proto::nostr::{self, Event, Keys};

use super::helpers::{Db, TestApp, error_code, now_secs, sign_login};

async fn challenge(app: &TestApp) -> String {
    let r = app.post("/v1/identity/challenge", json!({}), None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["kind"], 22242);
    v["nonce"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn challenge_login_gives_a_token_that_shows_the_identity() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let keys = Keys::generate();
    let nonce = challenge(&app).await;
    let ev = sign_login(&keys, &nonce);
    let r = app
        .post("/v1/identity/verify", json!({ "event": ev }), None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["pubkey"], keys.public_hex());
    assert!(v["npub"].as_str().unwrap().starts_with("npub1"));
    assert_eq!(v["tier"], "new");
    let token = v["token"].as_str().unwrap();

    let me = app.me(token).await;
    assert_eq!(me["pubkey"], keys.public_hex());
    assert_eq!(me["tier"], "new");
    assert_eq!(me["trust_score"], 0);
    assert_eq!(me["interactions"]["total"], 0);
    assert_eq!(me["sats_paid"], 0);
    assert_eq!(
        me["free_allowance"]["daily_sats"], 0,
        "new identities get no free allowance"
    );

    // The same signed challenge again: refused, the nonce is used up.
    let r = app
        .post("/v1/identity/verify", json!({ "event": ev }), None)
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "challenge_unknown".into())
    );
    // A nonce the gateway never issued.
    let r = app
        .post(
            "/v1/identity/verify",
            json!({ "event": sign_login(&keys, &"ab".repeat(32)) }),
            None,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "challenge_unknown".into())
    );
    // `me` without an identity.
    let r = app.get("/v1/identity/me", None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "identity_required".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn forged_and_expired_logins_and_tokens_are_refused() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.identity.challenge_ttl_secs = 1;
    })
    .await;
    let keys = Keys::generate();

    // A forged signature: the content changed after signing.
    let nonce = challenge(&app).await;
    let mut ev = sign_login(&keys, &nonce);
    ev.content = "changed".into();
    let r = app
        .post("/v1/identity/verify", json!({ "event": ev }), None)
        .await;
    let (status, code) = error_code(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );
    // Someone else's key claimed with a valid signature of another: refused too.
    let other = Keys::generate();
    let mut ev = sign_login(&keys, &nonce);
    ev.pubkey = other.public_hex();
    let r = app
        .post("/v1/identity/verify", json!({ "event": ev }), None)
        .await;
    assert_eq!(error_code(r).await.0, StatusCode::UNAUTHORIZED);
    // The forged attempts did not burn the nonce: the real signer still logs in.
    let r = app
        .post(
            "/v1/identity/verify",
            json!({ "event": sign_login(&keys, &nonce) }),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // An expired challenge.
    let nonce = challenge(&app).await;
    app.advance(std::time::Duration::from_millis(2_100)).await;
    let r = app
        .post(
            "/v1/identity/verify",
            json!({ "event": sign_login(&keys, &nonce) }),
            None,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "challenge_expired".into())
    );

    // Tokens: garbage, another gateway's, expired.
    let r = app.get_as("/v1/identity/me", "not-a-token").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_identity_token".into())
    );
    let foreign = sluice_proto::macaroon::mint_identity_token(
        &[7u8; 32],
        &keys.public_hex(),
        now_secs() + 3600,
    )
    .unwrap()
    .to_base64();
    let r = app.get_as("/v1/identity/me", &foreign).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_identity_token".into())
    );
    let expired = sluice_proto::macaroon::mint_identity_token(
        &app.state.sluice.root_secret,
        &keys.public_hex(),
        now_secs() - 1,
    )
    .unwrap()
    .to_base64();
    let r = app.get_as("/v1/identity/me", &expired).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "identity_token_expired".into())
    );
    // A bad identity is refused even where identity is optional.
    let r = app
        .post_as(
            "/v1/estimate",
            json!({"model": "fake-model", "messages": super::helpers::user("hi")}),
            None,
            Some(&expired),
        )
        .await;
    assert_eq!(error_code(r).await.0, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

fn nip98(keys: &Keys, url: &str, method: &str, body: &[u8], at: u64) -> String {
    nostr::http_auth_header(keys, url, method, body, at)
}

#[tokio::test]
async fn nip98_checks_url_method_payload_time_and_replays() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let keys = Keys::generate();
    let me_url = app.url("/v1/identity/me");

    // A good header identifies.
    let h = nip98(&keys, &me_url, "GET", b"", now_secs());
    let r = app
        .http
        .get(&me_url)
        .header("Authorization", &h)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["pubkey"], keys.public_hex());
    // The same header again: a replay.
    let r = app
        .http
        .get(&me_url)
        .header("Authorization", &h)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "replayed_event".into())
    );

    let refused = |h: String, url: String| {
        let http = app.http.clone();
        async move {
            let r = http
                .get(&url)
                .header("Authorization", h)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            (status, v["error"]["message"].as_str().unwrap().to_owned())
        }
    };
    // Signed for another URL.
    let (s, m) = refused(
        nip98(&keys, &app.url("/v1/pool"), "GET", b"", now_secs()),
        me_url.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(m.contains("url"), "{m}");
    // Signed for another method.
    let (s, m) = refused(
        nip98(&keys, &me_url, "POST", b"", now_secs()),
        me_url.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(m.contains("method"), "{m}");
    // Too old.
    let (s, m) = refused(
        nip98(&keys, &me_url, "GET", b"", now_secs() - 600),
        me_url.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(m.contains("window") || m.contains("old"), "{m}");
    // A forged signature.
    let mut ev: Event = {
        let raw = nip98(&keys, &me_url, "GET", b"", now_secs());
        let b64 = raw.split_once(' ').unwrap().1;
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    ev.created_at += 1;
    let forged = {
        use base64::Engine;
        format!(
            "Nostr {}",
            base64::engine::general_purpose::STANDARD.encode(ev.to_json())
        )
    };
    let (s, _) = refused(forged, me_url.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A body is bound by its hash: the estimate with the signed body works,
    // another body under the same kind of header does not.
    let est_url = app.url("/v1/estimate");
    let body =
        serde_json::to_vec(&json!({"model": "fake-model", "messages": super::helpers::user("hi")}))
            .unwrap();
    let r = app
        .http
        .post(&est_url)
        .header(
            "Authorization",
            nip98(&keys, &est_url, "POST", &body, now_secs()),
        )
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["free_tier"]["decision"], "gate");
    assert_eq!(v["free_tier"]["reason"], "no_allowance");
    let other =
        serde_json::to_vec(&json!({"model": "fake-model", "messages": super::helpers::user("ho")}))
            .unwrap();
    let r = app
        .http
        .post(&est_url)
        .header(
            "Authorization",
            nip98(&keys, &est_url, "POST", &body, now_secs()),
        )
        .header("Content-Type", "application/json")
        .body(other)
        .send()
        .await
        .unwrap();
    let (s, _) = error_code(r).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn an_elite_identity_vouches_and_the_vouchee_rises_one_tier() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let trust = app.state.sluice.free.accounting.trust;
    let elite = Keys::generate();
    let newbie = Keys::generate();
    let now = app.state.sluice.now_ms();
    // Earn elite standing by paying: 42,000 sats over the last 14 days.
    for day in (0..14).rev() {
        app.state
            .sluice
            .store
            .record_interaction(
                &elite.public_hex(),
                Interaction::Paid {
                    paid: sluice_core::Msat::from_sats(3_000).unwrap(),
                },
                &trust,
                now - day * sluice_core::DAY_MS,
            )
            .await
            .unwrap();
    }
    let elite_token = app.login(&elite).await;
    assert_eq!(app.me(&elite_token).await["tier"], "elite");

    // A non-elite cannot vouch.
    let r = app
        .post(
            "/v1/identity/vouch",
            json!({ "event": nostr::vouch_event(&newbie, &elite.public_hex(), now_secs()) }),
            None,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "not_elite".into())
    );

    let ev = nostr::vouch_event(&elite, &newbie.public_hex(), now_secs());
    let r = app
        .post("/v1/identity/vouch", json!({ "event": ev }), None)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["vouchee_tier"], "established");
    let newbie_token = app.login(&newbie).await;
    let me = app.me(&newbie_token).await;
    assert_eq!(me["tier"], "established");
    assert_eq!(me["own_tier"], "new");
    assert_eq!(me["vouched_by"][0], elite.public_hex());
    assert_eq!(me["free_allowance"]["daily_sats"], 50);
    // Vouching twice is refused.
    let r = app
        .post(
            "/v1/identity/vouch",
            json!({ "event": nostr::vouch_event(&elite, &newbie.public_hex(), now_secs()) }),
            None,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "already_vouched".into())
    );
    // The vouchee misbehaves: the voucher pays for it in standing.
    let before = app.me(&elite_token).await["trust_score"].as_u64().unwrap();
    app.state
        .sluice
        .store
        .record_interaction(&newbie.public_hex(), Interaction::Failed, &trust, now)
        .await
        .unwrap();
    let after = app.me(&elite_token).await["trust_score"].as_u64().unwrap();
    assert_eq!(after, before - trust.vouch_penalty);
    app.stop().await;
}

#[tokio::test]
async fn signed_requests_are_limited_per_address() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.identity.nip98_per_minute = 2;
    })
    .await;
    let url = app.url("/v1/identity/me");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        // A fresh key each time: new keys are exactly what the limit is for.
        let keys = Keys::generate();
        let r = app
            .http
            .get(&url)
            .header("Authorization", nip98(&keys, &url, "GET", b"", now_secs()))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(wait > 0 && wait <= 60);
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Identity tokens are not limited this way.
    let keys = Keys::generate();
    let token = app.login(&keys).await;
    assert_eq!(app.me(&token).await["pubkey"], keys.public_hex());
    app.stop().await;
}

#[tokio::test]
async fn browser_pages_on_allowed_origins_may_send_identities() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.server.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    let preflight = |origin: &'static str| {
        let http = app.http.clone();
        let url = app.url("/v1/identity/me");
        async move {
            http.request(reqwest::Method::OPTIONS, url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "GET")
                .header("Access-Control-Request-Headers", "x-nostr-token")
                .send()
                .await
                .unwrap()
        }
    };
    let r = preflight("https://app.example").await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-nostr-token"), "{allowed}");
    let r = preflight("https://evil.example").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    app.stop().await;

    // A malformed origin is a configuration error, not a silent no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = super::helpers::test_config("http://127.0.0.1:9/v1");
    cfg.server.cors_origins = vec!["app.example/".into()];
    let store = sluice_store::connect("sqlite::memory:").await.unwrap();
    let err = sluice_gateway::build_state_with_store(&cfg, store, Default::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("cors_origins"), "{err}");
}

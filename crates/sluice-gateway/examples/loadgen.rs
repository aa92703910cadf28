//! Load generator for the paid HTTP path.
//!
//! ```sh
//! cargo run --release -p sluice-gateway --example loadgen -- sqlite
//! SLUICE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p sluice-gateway --example loadgen -- postgres
//! ```
//!
//! Everything runs in this process on loopback (2 cores are shared by the client, the gateway
//! and the fake upstream): a fast fake OpenAI upstream, a gateway with a pre-funded session on
//! the chosen database and the dev wallet, and a client. It reports
//! 1. latency (p50/p99) of a non-streaming request sent straight to the upstream, and the same
//!    request paid from the session through the gateway, one at a time — the difference is the
//!    latency the gateway adds (auth, estimate, hold, settle: two database transactions);
//! 2. paid requests per second at saturation (64 concurrent clients);
//! 3. the same request answered free for a Nostr identity (`X-Nostr-Token`, no payment):
//!    its added latency one at a time (identity token, standing, decision, grant after the work).
#![allow(
    clippy::disallowed_methods,
    reason = "a load generator measures with the host's clock and runs clients on bare tasks"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice_gateway::{
    Config,
    config::{ModelConfig, ModelKind},
    testing::{FakeBehaviour, spawn_fake_openai},
};

const LATENCY_REQUESTS: usize = 2000;
const SATURATION_SECS: u64 = 10;
const CONCURRENCY: usize = 64;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// How a request presents itself.
#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    /// A session macaroon.
    Bearer(&'a str),
    /// An identity token.
    Nostr(&'a str),
}

async fn latencies(
    http: &reqwest::Client,
    url: &str,
    cred: Cred<'_>,
    body: &Value,
    n: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut r = http.post(url).json(body);
        match cred {
            Cred::None => {}
            Cred::Bearer(t) => r = r.bearer_auth(t),
            Cred::Nostr(t) => r = r.header("X-Nostr-Token", t),
        }
        let t0 = Instant::now();
        let resp = r.send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let _ = resp.bytes().await.unwrap();
        out.push(t0.elapsed());
    }
    out.sort();
    out
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = std::env::args().nth(1).unwrap_or_else(|| "sqlite".into());
    let upstream = spawn_fake_openai(FakeBehaviour::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.oracle.fixed_btc_usd = Some(100_000.0);
    cfg.sessions.max_deposit_sats = 100_000_000;
    cfg.server.public_rate_per_minute = 0;
    // Every identity gets a free allowance, from a pool large enough for the run.
    cfg.free_tier.allowance_new_sats = 10_000_000;
    cfg.free_tier.pool_seed_sats = 10_000_000;
    cfg.models = vec![ModelConfig {
        name: "fake-model".into(),
        kind: ModelKind::Openai,
        base_url: Some(upstream.base_url.clone()),
        input_usd_per_mtok: 1.0,
        output_usd_per_mtok: 2.0,
        default_max_tokens: 16,
        ..ModelConfig::default_local(None)
    }];
    let mut pg = None;
    let store: Arc<dyn sluice_store::Store> = match db.as_str() {
        "sqlite" => sluice_store::connect(&format!(
            "sqlite://{}",
            dir.path().join("bench.db").display()
        ))
        .await
        .unwrap(),
        "postgres" => {
            let url = std::env::var("SLUICE_TEST_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let (s, _) = sluice_store::postgres::PgStore::connect_isolated(&url)
                .await
                .unwrap();
            pg = Some(s.clone());
            Arc::new(s)
        }
        other => panic!("unknown database {other}: use sqlite or postgres"),
    };
    let state = sluice_gateway::build_state_with_store(&cfg, store, BTreeMap::new())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let s2 = stop.clone();
    let server = tokio::spawn(sluice_gateway::serve(
        listener,
        state,
        cfg.server.max_body_bytes,
        async move { s2.cancelled().await },
    ));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    let v: Value = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"amount_sats": 50_000_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mac = v["macaroon"].as_str().unwrap().to_owned();
    let id = v["session_id"].as_str().unwrap().to_owned();
    http.post(format!("{base}/v1/dev/pay"))
        .json(&json!({"bolt11": v["invoice"]["bolt11"]}))
        .send()
        .await
        .unwrap();

    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let direct_body =
        json!({"model": "fake-model", "max_tokens": 16, "messages": body["messages"]});
    let direct_url = format!("{}/chat/completions", upstream.base_url);
    let paid_url = format!("{base}/v1/chat/completions");

    // Warm up both paths.
    latencies(&http, &direct_url, Cred::None, &direct_body, 200).await;
    latencies(&http, &paid_url, Cred::Bearer(&mac), &body, 200).await;

    let d = latencies(
        &http,
        &direct_url,
        Cred::None,
        &direct_body,
        LATENCY_REQUESTS,
    )
    .await;
    let g = latencies(
        &http,
        &paid_url,
        Cred::Bearer(&mac),
        &body,
        LATENCY_REQUESTS,
    )
    .await;
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    println!("database: {db}");
    println!("latency, one request at a time ({LATENCY_REQUESTS} requests each):");
    println!(
        "  direct to upstream   p50 {:>8.0} µs   p99 {:>8.0} µs",
        us(pct(&d, 0.5)),
        us(pct(&d, 0.99))
    );
    println!(
        "  paid via gateway     p50 {:>8.0} µs   p99 {:>8.0} µs",
        us(pct(&g, 0.5)),
        us(pct(&g, 0.99))
    );
    println!(
        "  added by sluice      p50 {:>8.0} µs   p99 {:>8.0} µs",
        us(pct(&g, 0.5)) - us(pct(&d, 0.5)),
        us(pct(&g, 0.99)) - us(pct(&d, 0.99))
    );

    let deadline = Instant::now() + Duration::from_secs(SATURATION_SECS);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url, mac, body) = (http.clone(), paid_url.clone(), mac.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&mac)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await.unwrap();
                lat.push(t0.elapsed());
                n += 1;
            }
            (n, lat)
        }));
    }
    let t0 = Instant::now();
    let mut total = 0;
    let mut all = Vec::new();
    for t in tasks {
        let (n, lat) = t.await.unwrap();
        total += n;
        all.extend(lat);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort();
    println!("saturation ({CONCURRENCY} concurrent clients, {SATURATION_SECS} s):");
    println!(
        "  {:.0} paid requests/s   (p50 {:.1} ms, p99 {:.1} ms)",
        total as f64 / secs,
        us(pct(&all, 0.5)) / 1000.0,
        us(pct(&all, 0.99)) / 1000.0
    );

    // Free answers for a Nostr identity.
    let keys = sluice_proto::nostr::Keys::generate();
    let c: Value = http
        .post(format!("{base}/v1/identity/challenge"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let event = sluice_proto::nostr::Event::sign(
        &keys,
        now,
        sluice_proto::nostr::LOGIN_KIND,
        vec![vec![
            "challenge".into(),
            c["nonce"].as_str().unwrap().into(),
        ]],
        String::new(),
    );
    let v: Value = http
        .post(format!("{base}/v1/identity/verify"))
        .json(&json!({ "event": event }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    latencies(&http, &paid_url, Cred::Nostr(&token), &body, 200).await;
    let f = latencies(
        &http,
        &paid_url,
        Cred::Nostr(&token),
        &body,
        LATENCY_REQUESTS,
    )
    .await;
    println!("free for a Nostr identity, one request at a time ({LATENCY_REQUESTS} requests):");
    println!(
        "  added by sluice      p50 {:>8.0} µs   p99 {:>8.0} µs",
        us(pct(&f, 0.5)) - us(pct(&d, 0.5)),
        us(pct(&f, 0.99)) - us(pct(&d, 0.99))
    );

    let s: Value = http
        .get(format!("{base}/v1/sessions/{id}"))
        .bearer_auth(&mac)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["held_msat"], 0);
    stop.cancel();
    server.await.unwrap().unwrap();
    if let Some(p) = pg {
        p.cleanup().await.unwrap();
    }
}

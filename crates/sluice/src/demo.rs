//! `sluice demo`: the whole paid path in one process on loopback — a temporary
//! SQLite store, the dev wallet and the local model.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use sluice_gateway::config::Config;

use crate::{local, serve::with_models};

fn qr(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.to_uppercase().as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
    )
}

async fn json_ok(resp: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .with_context(|| format!("{what}: answer was not JSON"))?;
    if !status.is_success() {
        bail!(
            "{what} failed ({status}): {}",
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("?")
        );
    }
    Ok(v)
}

/// Run the demo.
pub async fn run(prompt: String, model: Option<PathBuf>, deposit_sats: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("could not create a temporary directory")?;
    let mut cfg = Config::default();
    cfg.database.url = format!("sqlite://{}", dir.path().join("demo.db").display());
    cfg.server.listen = "127.0.0.1:0".parse()?;
    cfg.oracle.fixed_btc_usd = Some(100_000.0);
    let cfg = with_models(cfg, model);
    let model_name = cfg
        .models
        .first()
        .map(|m| m.name.clone())
        .context("no model")?;

    println!("sluice demo — everything runs in this process on loopback.");
    println!("Store: temporary SQLite. Lightning: the dev wallet (real BOLT11, NOT real money).\n");
    let prebuilt = local::load_local_models(&cfg).await?;
    let state = sluice_gateway::build_state(&cfg, prebuilt).await?;
    let listener = tokio::net::TcpListener::bind(cfg.server.listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let server = {
        let stop = stop.clone();
        tokio_util::task::TaskTracker::new().spawn(sluice_gateway::serve(
            listener,
            state,
            cfg.server.max_body_bytes,
            async move { stop.cancelled().await },
        ))
    };
    let http = reqwest::Client::new();

    // 1. A session and its deposit invoice.
    let s = json_ok(
        http.post(format!("{base}/v1/sessions"))
            .json(&json!({"amount_sats": deposit_sats}))
            .send()
            .await?,
        "creating a session",
    )
    .await?;
    let id = s["session_id"]
        .as_str()
        .context("no session id")?
        .to_owned();
    let mac = s["macaroon"].as_str().context("no macaroon")?.to_owned();
    let bolt11 = s
        .pointer("/invoice/bolt11")
        .and_then(Value::as_str)
        .context("no invoice")?
        .to_owned();
    println!("1. Session {id} created. Deposit invoice for {deposit_sats} sats:\n");
    if let Some(q) = qr(&bolt11) {
        println!("{q}");
    }
    println!("{bolt11}\n");

    // 2. Pay it with the dev wallet.
    let paid = json_ok(
        http.post(format!("{base}/v1/dev/pay"))
            .json(&json!({"bolt11": bolt11}))
            .send()
            .await?,
        "paying the invoice",
    )
    .await?;
    println!(
        "2. Paid with the dev wallet. Preimage: {}",
        paid["preimage"].as_str().unwrap_or("?")
    );
    let mut session = Value::Null;
    for _ in 0..50 {
        session = json_ok(
            http.get(format!("{base}/v1/sessions/{id}"))
                .bearer_auth(&mac)
                .send()
                .await?,
            "reading the session",
        )
        .await?;
        if session["state"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if session["state"] != "active" {
        bail!("the session did not become active: {session}");
    }
    println!("   Session active with {} msat.\n", session["balance_msat"]);

    // 3. Stream an answer through the OpenAI-compatible API.
    println!("3. POST /v1/chat/completions (stream) — model {model_name}\n   Q: {prompt}");
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&mac)
        .json(&json!({"model": model_name, "stream": true, "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        bail!("the request failed ({status}): {v}");
    }
    let hold = resp
        .headers()
        .get("x-sluice-hold-msat")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let mut events = resp.bytes_stream().eventsource();
    let mut receipt = Value::Null;
    let mut usage = Value::Null;
    let mut out = std::io::stdout();
    print!("   A: ");
    while let Some(ev) = events.next().await {
        let ev = ev.context("the stream broke")?;
        if ev.data.trim() == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&ev.data)?;
        if let Some(e) = v.get("error") {
            bail!("the stream reported an error: {e}");
        }
        if let Some(t) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            print!("{}", t.replace('\n', "\n      "));
            let _ = out.flush();
        }
        if v.get("sluice").is_some() {
            receipt = v["sluice"].clone();
            usage = v["usage"].clone();
        }
    }
    println!("\n");

    // 4. The receipt.
    let after = json_ok(
        http.get(format!("{base}/v1/sessions/{id}"))
            .bearer_auth(&mac)
            .send()
            .await?,
        "reading the session",
    )
    .await?;
    println!("4. Receipt (dev sats — not real money)");
    println!(
        "   estimated input tokens   {}",
        receipt["input_tokens_estimated"]
    );
    println!("   held before the call     {hold} msat");
    println!(
        "   actual tokens            {} in + {} out",
        usage["prompt_tokens"], usage["completion_tokens"]
    );
    println!(
        "   cost (at BTC {} USD)  {} msat",
        receipt["btc_usd"].as_str().unwrap_or("?"),
        usage["cost_msat"]
    );
    println!(
        "   released back            {} msat",
        receipt["released_msat"]
    );
    println!(
        "   balance left             {} msat (held: {} msat)\n",
        after["balance_msat"], after["held_msat"]
    );

    println!(
        "Do the same against a running gateway (`sluice serve`, default http://127.0.0.1:8080):"
    );
    println!(
        "  curl -s -X POST localhost:8080/v1/sessions -H 'content-type: application/json' -d '{{\"amount_sats\": 1000}}'"
    );
    println!(
        "  sluice wallet pay <bolt11>          # dev wallet only; with LNbits pay from any wallet"
    );
    println!(
        "  curl -s localhost:8080/v1/chat/completions -H \"Authorization: Bearer $MACAROON\" \\"
    );
    println!(
        "       -H 'content-type: application/json' -d '{{\"model\": \"{model_name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'"
    );
    println!(
        "Or with an OpenAI SDK: OpenAI(base_url=\"http://127.0.0.1:8080/v1\", api_key=MACAROON)."
    );

    stop.cancel();
    server.await??;
    Ok(())
}

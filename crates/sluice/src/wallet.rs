//! `sluice wallet pay|invoice|status`: the payer's side of the dev wallet,
//! through the gateway that runs it — pay the gateway's invoices, make
//! invoices of one's own to claim refunds with, and see whether they were paid.

use anyhow::Context;
use serde_json::Value;

/// Send `req` to the gateway's dev wallet and read its JSON answer; `what`
/// names the action in errors.
async fn call(req: reqwest::RequestBuilder, gateway: &str, what: &str) -> anyhow::Result<Value> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("could not reach the gateway at {gateway}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .context("the gateway's answer was not JSON")?;
    let msg = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("unknown error");
    if status == reqwest::StatusCode::NOT_FOUND
        && body.pointer("/error/code") == Some(&"not_found".into())
    {
        anyhow::bail!(
            "{gateway} has no dev wallet (is it running with lightning.backend = \"dev\"?)"
        );
    }
    if !status.is_success() {
        anyhow::bail!("{what} refused ({status}): {msg}");
    }
    Ok(body)
}

fn url(gateway: &str, path: &str) -> String {
    format!("{}{path}", gateway.trim_end_matches('/'))
}

/// Pay `bolt11` via `gateway`'s `/v1/dev/pay` and print the preimage.
pub async fn pay(bolt11: &str, gateway: &str) -> anyhow::Result<()> {
    let req = reqwest::Client::new()
        .post(url(gateway, "/v1/dev/pay"))
        .json(&serde_json::json!({"bolt11": bolt11}));
    let body = call(req, gateway, "payment").await?;
    let preimage = body
        .get("preimage")
        .and_then(Value::as_str)
        .context("no preimage in the answer")?;
    eprintln!("paid (dev wallet: NOT real money)");
    println!("{preimage}");
    Ok(())
}

/// Make an invoice of the payer's own dev wallet for `sats` (to claim a
/// refund with) and print it: the BOLT11 on stdout, its hash on stderr.
pub async fn invoice(sats: u64, gateway: &str) -> anyhow::Result<()> {
    let req = reqwest::Client::new()
        .post(url(gateway, "/v1/dev/invoice"))
        .json(&serde_json::json!({"amount_sats": sats}));
    let body = call(req, gateway, "invoice").await?;
    let bolt11 = body
        .get("bolt11")
        .and_then(Value::as_str)
        .context("no bolt11 in the answer")?;
    let hash = body
        .get("payment_hash")
        .and_then(Value::as_str)
        .unwrap_or_default();
    eprintln!("your dev wallet's invoice for {sats} sats (NOT real money); payment hash {hash}");
    println!("{bolt11}");
    Ok(())
}

/// Print whether the payer's dev invoice `payment_hash` was paid.
pub async fn status(payment_hash: &str, gateway: &str) -> anyhow::Result<()> {
    let req = reqwest::Client::new().get(url(
        gateway,
        &format!("/v1/dev/invoices/{}", payment_hash.trim()),
    ));
    let body = call(req, gateway, "lookup").await?;
    println!(
        "{}",
        body.get("state")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
    );
    Ok(())
}

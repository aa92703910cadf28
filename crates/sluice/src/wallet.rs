//! `sluice wallet pay`: pay a dev-wallet invoice through the gateway that issued it.

use anyhow::Context;
use serde_json::Value;

/// Pay `bolt11` via `gateway`'s `/v1/dev/pay` and print the preimage.
pub async fn pay(bolt11: &str, gateway: &str) -> anyhow::Result<()> {
    let url = format!("{}/v1/dev/pay", gateway.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({"bolt11": bolt11}))
        .send()
        .await
        .with_context(|| format!("could not reach the gateway at {gateway}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .context("the gateway's answer was not JSON")?;
    if status == reqwest::StatusCode::NOT_FOUND {
        anyhow::bail!(
            "{gateway} has no dev wallet (is it running with lightning.backend = \"dev\"?)"
        );
    }
    if !status.is_success() {
        let msg = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        anyhow::bail!("payment refused ({status}): {msg}");
    }
    let preimage = body
        .get("preimage")
        .and_then(Value::as_str)
        .context("no preimage in the answer")?;
    eprintln!("paid (dev wallet: NOT real money)");
    println!("{preimage}");
    Ok(())
}

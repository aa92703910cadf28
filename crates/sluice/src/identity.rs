//! `sluice identity`: a Nostr key for the command line, without a browser
//! extension: make a key, log in to a gateway (challenge → signed event →
//! identity token), show the key's standing (a NIP-98 signed request), vouch.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sluice_proto::nostr::{self, Keys};

/// Where the secret key comes from: a file holding its hex, or the
/// `SLUICE_NOSTR_KEY` environment variable.
fn load_keys(key_file: Option<&Path>) -> anyhow::Result<Keys> {
    let hex = match key_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("could not read the key file {}", p.display()))?,
        None => std::env::var("SLUICE_NOSTR_KEY")
            .context("give --key <file> or set SLUICE_NOSTR_KEY to a hex secret key (make one with `sluice identity keygen`)")?,
    };
    Keys::from_secret_hex(hex.trim())
        .context("the secret key is not 64 hex characters of a valid key")
}

fn now() -> u64 {
    sluice_env::Clock::now_secs(&sluice_env::SystemClock)
}

/// `sluice identity keygen`: a new key; the secret goes to `out` (created
/// with owner-only permissions) or, without `out`, to stdout.
pub fn keygen(out: Option<PathBuf>) -> anyhow::Result<()> {
    let keys = Keys::generate();
    match out {
        Some(p) => {
            write_secret(&p, &keys.secret_hex())?;
            println!("secret key: written to {}", p.display());
        }
        None => println!("secret key: {}", keys.secret_hex()),
    }
    println!("public key: {}", keys.public_hex());
    println!("npub:       {}", nostr::npub(&keys.public_hex())?);
    Ok(())
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| {
        format!(
            "could not create {} (it must not exist yet)",
            path.display()
        )
    })?;
    writeln!(f, "{secret}")?;
    Ok(())
}

async fn answer(r: reqwest::Response) -> anyhow::Result<Value> {
    let status = r.status();
    let v: Value = r.json().await.context("the gateway did not answer JSON")?;
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        bail!("the gateway answered {status}: {msg}");
    }
    Ok(v)
}

/// `sluice identity login`: prints the identity token and the key's tier.
pub async fn login(key_file: Option<PathBuf>, gateway: &str) -> anyhow::Result<()> {
    let keys = load_keys(key_file.as_deref())?;
    let base = gateway.trim_end_matches('/');
    let http = reqwest::Client::new();
    let c = answer(
        http.post(format!("{base}/v1/identity/challenge"))
            .send()
            .await
            .with_context(|| format!("could not reach {base}"))?,
    )
    .await?;
    let nonce = c["nonce"].as_str().context("the challenge has no nonce")?;
    let event = nostr::Event::sign(
        &keys,
        now(),
        nostr::LOGIN_KIND,
        vec![vec!["challenge".into(), nonce.into()]],
        String::new(),
    );
    let v = answer(
        http.post(format!("{base}/v1/identity/verify"))
            .json(&json!({ "event": event }))
            .send()
            .await?,
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `sluice identity me`: the key's standing, asked with a NIP-98 signed request.
pub async fn me(key_file: Option<PathBuf>, gateway: &str) -> anyhow::Result<()> {
    let keys = load_keys(key_file.as_deref())?;
    let url = format!("{}/v1/identity/me", gateway.trim_end_matches('/'));
    let header = nostr::http_auth_header(&keys, &url, "GET", b"", now());
    let v = answer(
        reqwest::Client::new()
            .get(&url)
            .header("Authorization", header)
            .send()
            .await
            .with_context(|| format!("could not reach {url}"))?,
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `sluice identity vouch`: an elite key vouches for another (npub or hex).
pub async fn vouch(key_file: Option<PathBuf>, gateway: &str, vouchee: &str) -> anyhow::Result<()> {
    let keys = load_keys(key_file.as_deref())?;
    let vouchee =
        nostr::parse_pubkey(vouchee).context("--for must be an npub or a hex public key")?;
    let event = nostr::vouch_event(&keys, &vouchee, now());
    let v = answer(
        reqwest::Client::new()
            .post(format!(
                "{}/v1/identity/vouch",
                gateway.trim_end_matches('/')
            ))
            .json(&json!({ "event": event }))
            .send()
            .await?,
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

//! `sluice`: a Lightning-native market for AI inference — the one binary.

mod cli_config;
mod demo;
mod identity;
mod local;
mod serve;
mod wallet;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sell and buy AI inference for sats over Lightning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: an OpenAI-compatible API paid from Lightning-funded sessions.
    Serve {
        /// Configuration file (see example.config.toml). Without one: SQLite in the
        /// working directory, the dev wallet and the bundled local model.
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// A GGUF model to serve in-process instead of the bundled default.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Listen address (overrides the configuration).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Everything in one process on loopback: create a session, pay its invoice with
    /// the dev wallet, stream a real answer from the local model, print the receipt.
    Demo {
        /// The question to ask.
        #[arg(long, default_value = "What is the capital of France?")]
        prompt: String,
        /// A GGUF model instead of the bundled default.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Sats to deposit.
        #[arg(long, default_value_t = 1000)]
        deposit_sats: u64,
    },
    /// Dev wallet tools.
    Wallet {
        #[command(subcommand)]
        command: WalletCommand,
    },
    /// Check that the ledger balances and matches every session's balance.
    CheckLedger {
        /// Configuration file naming the database.
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Fetch the bundled default model into the cache (done on first use otherwise).
    FetchModel,
    /// A Nostr identity for the command line: make a key, log in, show its standing, vouch.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Make a new key; prints its public key and npub.
    Keygen {
        /// Write the secret key (hex) to this new file, readable by its owner only.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Log in to a gateway: prints an identity token to send as X-Nostr-Token.
    Login {
        /// File holding the secret key (hex); default: the SLUICE_NOSTR_KEY variable.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The gateway.
        #[arg(long, env = "SLUICE_GATEWAY", default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
    /// The key's standing at a gateway (tier, score, free allowance), asked with NIP-98.
    Me {
        /// File holding the secret key (hex); default: the SLUICE_NOSTR_KEY variable.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The gateway.
        #[arg(long, env = "SLUICE_GATEWAY", default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
    /// Vouch for another key (only elite identities may).
    Vouch {
        /// File holding the secret key (hex); default: the SLUICE_NOSTR_KEY variable.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The key vouched for: npub or hex.
        #[arg(long = "for")]
        vouchee: String,
        /// The gateway.
        #[arg(long, env = "SLUICE_GATEWAY", default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
}

#[derive(Subcommand)]
enum WalletCommand {
    /// Pay a dev-wallet invoice through a gateway running the dev wallet; prints the preimage.
    Pay {
        /// The BOLT11 invoice.
        bolt11: String,
        /// The gateway that issued it.
        #[arg(long, env = "SLUICE_GATEWAY", default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
    /// Make an invoice of your own dev wallet (to claim a refund with); prints the BOLT11.
    Invoice {
        /// Its amount, in sats.
        sats: u64,
        /// The gateway running the dev wallet.
        #[arg(long, env = "SLUICE_GATEWAY", default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
    /// Whether an invoice of your dev wallet was paid (a refund arrived): pending, paid or expired.
    Status {
        /// The invoice's payment hash.
        payment_hash: String,
        /// The gateway running the dev wallet.
        #[arg(long, env = "SLUICE_GATEWAY", default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
}

fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest is built without a crypto provider; rustls needs exactly one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            model,
            listen,
        } => {
            init_tracing();
            serve::run(config, model, listen).await
        }
        Command::Demo {
            prompt,
            model,
            deposit_sats,
        } => demo::run(prompt, model, deposit_sats).await,
        Command::Wallet { command } => match command {
            WalletCommand::Pay { bolt11, gateway } => wallet::pay(&bolt11, &gateway).await,
            WalletCommand::Invoice { sats, gateway } => wallet::invoice(sats, &gateway).await,
            WalletCommand::Status {
                payment_hash,
                gateway,
            } => wallet::status(&payment_hash, &gateway).await,
        },
        Command::CheckLedger { config } => serve::check_ledger(config).await,
        Command::Identity { command } => match command {
            IdentityCommand::Keygen { out } => identity::keygen(out),
            IdentityCommand::Login { key, gateway } => identity::login(key, &gateway).await,
            IdentityCommand::Me { key, gateway } => identity::me(key, &gateway).await,
            IdentityCommand::Vouch {
                key,
                vouchee,
                gateway,
            } => identity::vouch(key, &gateway, &vouchee).await,
        },
        Command::FetchModel => {
            let path = tokio::task::spawn_blocking(local::ensure_default_model).await??;
            println!("{}", path.display());
            Ok(())
        }
    }
}

//! `viralclip-bot`: the bot alone (the same as `viralclip bot`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "viralclip-bot", about = "viralclip's Telegram bot", version)]
struct Cli {
    #[command(flatten)]
    config: viralclip_bot::BotConfig,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(viralclip_bot::run(cli.config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "viralclip-bot: {}",
                viralclip_bot::telegram::redact(&format!("{e:#}"))
            );
            std::process::ExitCode::FAILURE
        }
    }
}

//! viralclip's Telegram bot: a thin layer that turns updates into durable jobs, runs them through
//! the engine, and replies.
//!
//! # Layout
//! - [`config`]: everything from flags and the environment (`viralclip bot --help`).
//! - [`store`]: the durable job queue ([`store::JobStore`], SQLite by default): a job is committed
//!   before the user hears "queued"; sent clips are recorded so a resumed job never repeats one.
//! - [`app`]: the update handlers and the workers.
//! - [`failure`]: why a job failed, whether to retry it, what its user reads (never a raw error).
//! - [`budget`]: each job's wall-clock and memory budget, watched while it runs.
//! - [`clipper`]: the engine behind a trait ([`clipper::Clipper`]), with model switching.
//! - [`telegram`]: calls with `retry_after` honoured; token redaction.
//! - [`format`], [`settings`], [`timeline`]: pure pieces (captions, `/clip` arguments, keyboard,
//!   the PNG).

pub mod app;
pub mod budget;
pub mod clipper;
pub mod config;
pub mod failure;
pub mod format;
pub mod settings;
pub mod store;
pub mod telegram;
pub mod timeline;

pub use app::run;
pub use config::BotConfig;

//! viralclip's Telegram bot: a thin layer that turns updates into durable jobs, runs them through
//! the engine, and replies.
//!
//! # Layout
//! - [`config`]: everything from flags and the environment (`viralclip bot --help`).
//! - [`store`]: the durable job queue ([`store::JobStore`], SQLite by default): a job is committed
//!   before the user hears "queued"; sent clips are recorded so a resumed job never repeats one.
//! - [`app`]: the running bot's state and its start; [`handlers`]: the update handlers, one dptree
//!   schema over the [`commands`] (teloxide's `BotCommands`); [`worker`]: the workers;
//!   [`upload`]: clips fitted to the upload limit; [`admin`]: `/train`, `/rollback`, `/data`.
//! - [`job`]: a job's stored payload and the files a message carries.
//! - [`failure`]: why a job failed, whether to retry it, what its user reads (never a raw error).
//! - [`budget`]: each job's wall-clock and memory budget, watched while it runs.
//! - [`clipper`]: the engine behind a trait ([`clipper::Clipper`]), with model switching;
//!   [`training`]: `/train`'s run behind one ([`training::Trainer`]).
//! - [`error`]: the library's error type.
//! - [`telegram`]: calls with `retry_after` honoured; token redaction.
//! - [`format`], [`settings`], [`timeline`]: pure pieces (captions, `/clip` arguments, keyboard,
//!   the PNG).

mod admin;
pub mod app;
pub mod budget;
pub mod clipper;
pub mod commands;
pub mod config;
pub mod error;
pub mod failure;
pub mod format;
pub mod handlers;
pub mod job;
pub mod recut;
pub mod retention;
pub mod settings;
pub mod store;
pub mod telegram;
pub mod timeline;
pub mod training;
mod upload;
mod worker;

pub use app::run;
pub use config::BotConfig;
pub use error::{Error, Result};

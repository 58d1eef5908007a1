//! viralclip's Telegram bot. So far: its durable job queue ([`store`]), the piece that makes
//! "queued" a promise: a job is committed before the user is told, survives a crash, and records
//! each clip it sent so a resumed job never sends one twice. The Telegram side (teloxide) comes
//! with issue #4.

pub mod store;

pub use store::{Job, JobId, JobState, JobStore, NewJob, SqliteStore, StoreError};

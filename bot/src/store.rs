//! Durable jobs. [`JobStore`] is the seam (a shared server database can implement it when one
//! host is not enough); [`SqliteStore`] is the embedded default: WAL, `synchronous=FULL`, one
//! transaction per state change.
//!
//! Life of a job: `queued` → (claimed) `running` → `done` | `failed` | `cancelled`. A `running` job
//! whose worker died is put back to `queued` by [`JobStore::recover`] at start-up; after
//! `max_attempts` claims it fails with the last error instead.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

pub type JobId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("job store: bad stored data: {0}")]
    Data(#[from] serde_json::Error),
    #[error("job {0} does not exist")]
    NoSuchJob(JobId),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Failed,
        }
    }
}

/// What a user asked for, as the bot received it. `payload` is the bot's own JSON (file ids,
/// settings, where to reply); the store does not interpret it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    pub chat_id: i64,
    pub user_id: i64,
    pub payload: serde_json::Value,
    /// Seconds no worker may claim it (the rest of an album may still be on its way).
    pub hold_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub chat_id: i64,
    pub user_id: i64,
    pub payload: serde_json::Value,
    pub state: JobState,
    /// How many times a worker has claimed it.
    pub attempts: u32,
    pub stage: Option<String>,
    pub error: Option<String>,
}

/// Durable job queue.
pub trait JobStore: Send + Sync {
    /// Commits a job; only after this returns may the user be told it is queued.
    fn enqueue(&self, job: &NewJob) -> Result<JobId>;
    /// Takes the oldest queued job, marks it running and counts the attempt.
    fn claim(&self) -> Result<Option<Job>>;
    /// Like [`JobStore::claim`], skipping users who already have `max_running` jobs running.
    fn claim_fair(&self, max_running: u32) -> Result<Option<Job>>;
    /// Puts a running job back in the queue without counting the attempt (graceful shutdown).
    fn requeue(&self, id: JobId) -> Result<()>;
    /// Failed jobs whose users have not been told yet; each is returned once.
    fn take_unreported_failures(&self) -> Result<Vec<Job>>;
    /// A chat's settings, if it saved any.
    fn settings(&self, chat_id: i64) -> Result<Option<serde_json::Value>>;
    fn set_settings(&self, chat_id: i64, settings: &serde_json::Value) -> Result<()>;
    /// Merges `patch`'s fields into the job's payload (e.g. the status message's id).
    fn update_payload(&self, id: JobId, payload: &serde_json::Value) -> Result<()>;
    /// Merges `patch` into the payload of a job that is still queued, in one transaction; false
    /// (and nothing changed) when a worker has taken it or it has ended.
    fn amend_queued(&self, id: JobId, patch: &serde_json::Value) -> Result<bool>;
    /// Records progress (a stage name) of a running job.
    fn set_stage(&self, id: JobId, stage: &str) -> Result<()>;
    /// Records that clip `rank` was delivered; false if it already was (do not send it again).
    fn mark_sent(&self, id: JobId, rank: u32, message_id: i64) -> Result<bool>;
    /// Clips already delivered for a job.
    fn sent(&self, id: JobId) -> Result<Vec<u32>>;
    fn finish(&self, id: JobId) -> Result<()>;
    /// A failed attempt: back to the queue while attempts remain, else failed for good. Returns
    /// the new state.
    fn fail(&self, id: JobId, error: &str, max_attempts: u32) -> Result<JobState>;
    /// Cancels a queued or running job; false if it had already ended.
    fn cancel(&self, id: JobId) -> Result<bool>;
    /// At start-up: jobs left running by a dead process go back to the queue (or fail when out of
    /// attempts). Returns how many were requeued.
    fn recover(&self, max_attempts: u32) -> Result<usize>;
    /// A user's unfinished jobs, oldest first.
    fn pending_for(&self, user_id: i64) -> Result<Vec<Job>>;
    fn get(&self, id: JobId) -> Result<Job>;
    /// The job made from message `message_id` of chat `chat_id` (its payload's `reply_to`), if
    /// any: an update Telegram delivers again after a crash finds its job instead of making a
    /// second one.
    fn by_message(&self, chat_id: i64, message_id: i64) -> Result<Option<Job>>;
}

/// The embedded SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id   INTEGER NOT NULL,
    user_id   INTEGER NOT NULL,
    payload   TEXT NOT NULL,
    state     TEXT NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    stage     TEXT,
    error     TEXT,
    created   TEXT NOT NULL DEFAULT (datetime('now')),
    updated   TEXT NOT NULL DEFAULT (datetime('now')),
    not_before INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user_id, state);
CREATE TABLE IF NOT EXISTS chat_settings (
    chat_id  INTEGER PRIMARY KEY,
    settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS failure_reports (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id)
);
CREATE TABLE IF NOT EXISTS sent_clips (
    job_id     INTEGER NOT NULL REFERENCES jobs(id),
    rank       INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, rank)
);
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // Stores made before `not_before` existed get the column (0: claimable at once).
        let has_hold: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'not_before'")?
            .exists([])?;
        if !has_hold {
            conn.execute_batch("ALTER TABLE jobs ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0")?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn row(r: &rusqlite::Row) -> rusqlite::Result<(Job, String)> {
        let payload: String = r.get(3)?;
        let state: String = r.get(4)?;
        Ok((
            Job {
                id: r.get(0)?,
                chat_id: r.get(1)?,
                user_id: r.get(2)?,
                payload: serde_json::Value::Null,
                state: JobState::parse(&state),
                attempts: r.get(5)?,
                stage: r.get(6)?,
                error: r.get(7)?,
            },
            payload,
        ))
    }

    fn decode(pair: (Job, String)) -> Result<Job> {
        let (mut job, payload) = pair;
        job.payload = serde_json::from_str(&payload)?;
        Ok(job)
    }

    /// Merges `patch` into a job's payload (only while it is queued, if `only_queued`); false
    /// when it was not queued.
    fn patch(&self, id: JobId, patch: &serde_json::Value, only_queued: bool) -> Result<bool> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (text, state): (String, String) = tx
            .query_row(
                "SELECT payload, state FROM jobs WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or(StoreError::NoSuchJob(id))?;
        if only_queued && JobState::parse(&state) != JobState::Queued {
            return Ok(false);
        }
        let mut payload: serde_json::Value = serde_json::from_str(&text)?;
        if let (Some(obj), Some(p)) = (payload.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                obj.insert(k.clone(), v.clone());
            }
        }
        tx.execute(
            "UPDATE jobs SET payload = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(&payload)?],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const COLUMNS: &str = "id, chat_id, user_id, payload, state, attempts, stage, error";

impl JobStore for SqliteStore {
    fn enqueue(&self, job: &NewJob) -> Result<JobId> {
        let c = self.conn();
        c.execute(
            "INSERT INTO jobs (chat_id, user_id, payload, state, not_before) \
             VALUES (?1, ?2, ?3, 'queued', CAST(strftime('%s', 'now') AS INTEGER) + ?4)",
            params![
                job.chat_id,
                job.user_id,
                serde_json::to_string(&job.payload)?,
                job.hold_secs
            ],
        )?;
        Ok(c.last_insert_rowid())
    }

    fn claim(&self) -> Result<Option<Job>> {
        self.claim_fair(u32::MAX)
    }

    fn claim_fair(&self, max_running: u32) -> Result<Option<Job>> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found = tx
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM jobs WHERE state = 'queued' \
                     AND not_before <= CAST(strftime('%s', 'now') AS INTEGER) AND user_id NOT IN \
                     (SELECT user_id FROM jobs WHERE state = 'running' GROUP BY user_id HAVING COUNT(*) >= ?1) \
                     ORDER BY id LIMIT 1"
                ),
                params![max_running],
                Self::row,
            )
            .optional()?;
        let Some(pair) = found else { return Ok(None) };
        tx.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated = datetime('now') WHERE id = ?1",
            params![pair.0.id],
        )?;
        tx.commit()?;
        let mut job = Self::decode(pair)?;
        job.state = JobState::Running;
        job.attempts += 1;
        Ok(Some(job))
    }

    fn requeue(&self, id: JobId) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), updated = datetime('now') \
             WHERE id = ?1 AND state = 'running'",
            params![id],
        )?;
        Ok(())
    }

    fn take_unreported_failures(&self) -> Result<Vec<Job>> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows = {
            let mut st = tx.prepare(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE state = 'failed' \
                 AND id NOT IN (SELECT job_id FROM failure_reports) ORDER BY id"
            ))?;
            let rows = st
                .query_map([], Self::row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        for (j, _) in &rows {
            tx.execute("INSERT INTO failure_reports (job_id) VALUES (?1)", params![j.id])?;
        }
        tx.commit()?;
        rows.into_iter().map(Self::decode).collect()
    }

    fn settings(&self, chat_id: i64) -> Result<Option<serde_json::Value>> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT settings FROM chat_settings WHERE chat_id = ?1",
                params![chat_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match text {
            Some(t) => Some(serde_json::from_str(&t)?),
            None => None,
        })
    }

    fn set_settings(&self, chat_id: i64, settings: &serde_json::Value) -> Result<()> {
        self.conn().execute(
            "INSERT INTO chat_settings (chat_id, settings) VALUES (?1, ?2) \
             ON CONFLICT(chat_id) DO UPDATE SET settings = excluded.settings",
            params![chat_id, serde_json::to_string(settings)?],
        )?;
        Ok(())
    }

    fn update_payload(&self, id: JobId, patch: &serde_json::Value) -> Result<()> {
        self.patch(id, patch, false).map(|_| ())
    }

    fn amend_queued(&self, id: JobId, patch: &serde_json::Value) -> Result<bool> {
        self.patch(id, patch, true)
    }

    fn set_stage(&self, id: JobId, stage: &str) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE jobs SET stage = ?2, updated = datetime('now') WHERE id = ?1",
            params![id, stage],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchJob(id));
        }
        Ok(())
    }

    fn by_message(&self, chat_id: i64, message_id: i64) -> Result<Option<Job>> {
        let c = self.conn();
        let pair = c
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM jobs WHERE chat_id = ?1 AND json_extract(payload, '$.reply_to') = ?2 \
                     ORDER BY id LIMIT 1"
                ),
                params![chat_id, message_id],
                Self::row,
            )
            .optional()?;
        pair.map(Self::decode).transpose()
    }

    fn mark_sent(&self, id: JobId, rank: u32, message_id: i64) -> Result<bool> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO sent_clips (job_id, rank, message_id) VALUES (?1, ?2, ?3)",
            params![id, rank, message_id],
        )?;
        Ok(n == 1)
    }

    fn sent(&self, id: JobId) -> Result<Vec<u32>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT rank FROM sent_clips WHERE job_id = ?1 ORDER BY rank")?;
        let ranks = st
            .query_map(params![id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<u32>>>()?;
        Ok(ranks)
    }

    fn finish(&self, id: JobId) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET state = 'done', error = NULL, updated = datetime('now') WHERE id = ?1 AND state = 'running'",
            params![id],
        )?;
        Ok(())
    }

    fn fail(&self, id: JobId, error: &str, max_attempts: u32) -> Result<JobState> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let attempts: u32 = tx
            .query_row("SELECT attempts FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or(StoreError::NoSuchJob(id))?;
        let state = if attempts >= max_attempts {
            JobState::Failed
        } else {
            JobState::Queued
        };
        tx.execute(
            "UPDATE jobs SET state = ?2, error = ?3, updated = datetime('now') WHERE id = ?1 AND state = 'running'",
            params![id, state.as_str(), error],
        )?;
        tx.commit()?;
        Ok(state)
    }

    fn cancel(&self, id: JobId) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET state = 'cancelled', updated = datetime('now') WHERE id = ?1 AND state IN ('queued', 'running')",
            params![id],
        )?;
        Ok(n == 1)
    }

    fn recover(&self, max_attempts: u32) -> Result<usize> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE jobs SET state = 'failed', error = COALESCE(error, 'interrupted too many times') \
             WHERE state = 'running' AND attempts >= ?1",
            params![max_attempts],
        )?;
        let n = tx.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'", [])?;
        tx.commit()?;
        Ok(n)
    }

    fn pending_for(&self, user_id: i64) -> Result<Vec<Job>> {
        let c = self.conn();
        let mut st = c.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE user_id = ?1 AND state IN ('queued', 'running') ORDER BY id"
        ))?;
        let rows = st
            .query_map(params![user_id], Self::row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(Self::decode).collect()
    }

    fn get(&self, id: JobId) -> Result<Job> {
        let pair = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                Self::row,
            )
            .optional()?
            .ok_or(StoreError::NoSuchJob(id))?;
        Self::decode(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user: i64) -> NewJob {
        NewJob {
            chat_id: user * 10,
            user_id: user,
            payload: serde_json::json!({"file_id": format!("f{user}")}),
            hold_secs: 0,
        }
    }

    #[test]
    fn held_jobs_wait_and_only_queued_jobs_are_amended() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        let held = s
            .enqueue(&NewJob {
                hold_secs: 2,
                ..job(1)
            })
            .unwrap();
        assert!(s.claim().unwrap().is_none(), "claimed while held");
        assert!(s
            .amend_queued(held, &serde_json::json!({"subs_file_id": "s1"}))
            .unwrap());
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let j = s.claim().unwrap().expect("claimable after the hold");
        assert_eq!(j.id, held);
        assert_eq!(j.payload["subs_file_id"], "s1");
        assert_eq!(j.payload["file_id"], "f1", "other fields kept");
        // Running now: too late to amend, and nothing changes.
        assert!(!s
            .amend_queued(held, &serde_json::json!({"subs_file_id": "s2"}))
            .unwrap());
        assert_eq!(s.get(held).unwrap().payload["subs_file_id"], "s1");
    }

    #[test]
    fn a_store_from_before_holds_gets_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.sqlite");
        {
            let c = Connection::open(&db).unwrap();
            c.execute_batch(
                "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, chat_id INTEGER NOT NULL, \
                 user_id INTEGER NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL, \
                 attempts INTEGER NOT NULL DEFAULT 0, stage TEXT, error TEXT, \
                 created TEXT NOT NULL DEFAULT (datetime('now')), updated TEXT NOT NULL DEFAULT (datetime('now')));
                 INSERT INTO jobs (chat_id, user_id, payload, state) VALUES (10, 1, '{\"file_id\":\"old\"}', 'queued');",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&db).unwrap();
        let j = s.claim().unwrap().expect("the old queued job");
        assert_eq!(j.payload["file_id"], "old");
        s.enqueue(&job(2)).unwrap();
        assert!(s.claim().unwrap().is_some());
    }

    #[test]
    fn a_job_survives_a_crash_and_each_clip_is_sent_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.sqlite");
        let id = {
            let s = SqliteStore::open(&db).unwrap();
            let id = s.enqueue(&job(1)).unwrap();
            let j = s.claim().unwrap().unwrap();
            assert_eq!((j.id, j.state, j.attempts), (id, JobState::Running, 1));
            s.set_stage(id, "cutting").unwrap();
            assert!(s.mark_sent(id, 1, 501).unwrap());
            id
            // The process dies here: the store is dropped with the job running.
        };
        let s = SqliteStore::open(&db).unwrap();
        assert_eq!(s.recover(3).unwrap(), 1);
        let j = s.claim().unwrap().unwrap();
        assert_eq!((j.id, j.attempts, j.stage.as_deref()), (id, 2, Some("cutting")));
        assert_eq!(j.payload["file_id"], "f1");
        assert_eq!(s.sent(id).unwrap(), [1]);
        assert!(!s.mark_sent(id, 1, 502).unwrap(), "clip 1 was already sent");
        assert!(s.mark_sent(id, 2, 503).unwrap());
        s.finish(id).unwrap();
        assert_eq!(s.get(id).unwrap().state, JobState::Done);
        assert!(s.claim().unwrap().is_none());
    }

    #[test]
    fn a_job_is_found_by_the_message_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        let mut j = job(1);
        j.payload["reply_to"] = serde_json::json!(77);
        let id = s.enqueue(&j).unwrap();
        assert_eq!(s.by_message(j.chat_id, 77).unwrap().map(|j| j.id), Some(id));
        assert!(s.by_message(j.chat_id, 78).unwrap().is_none(), "another message");
        assert!(s.by_message(j.chat_id + 1, 77).unwrap().is_none(), "another chat");
    }

    #[test]
    fn failures_retry_a_bounded_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("j.sqlite")).unwrap();
        let id = s.enqueue(&job(2)).unwrap();
        for attempt in 1..=3 {
            let j = s.claim().unwrap().unwrap();
            assert_eq!(j.attempts, attempt);
            let state = s.fail(id, "ffmpeg exploded", 3).unwrap();
            assert_eq!(
                state,
                if attempt < 3 {
                    JobState::Queued
                } else {
                    JobState::Failed
                }
            );
        }
        let j = s.get(id).unwrap();
        assert_eq!(
            (j.state, j.error.as_deref()),
            (JobState::Failed, Some("ffmpeg exploded"))
        );
        assert!(s.claim().unwrap().is_none());
        // Interrupted too often: recover() fails it instead of looping forever.
        let id2 = s.enqueue(&job(2)).unwrap();
        for _ in 0..3 {
            s.claim().unwrap().unwrap();
            s.recover(3).unwrap();
        }
        assert_eq!(s.get(id2).unwrap().state, JobState::Failed);
    }

    #[test]
    fn fair_claims_settings_requeue_and_failure_reports() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        let a1 = s.enqueue(&job(1)).unwrap();
        let a2 = s.enqueue(&job(1)).unwrap();
        let b1 = s.enqueue(&job(2)).unwrap();
        assert_eq!(s.claim_fair(1).unwrap().unwrap().id, a1);
        // User 1 has one running: the next claim skips a2 for user 2's job.
        assert_eq!(s.claim_fair(1).unwrap().unwrap().id, b1);
        assert!(s.claim_fair(1).unwrap().is_none());
        // A graceful shutdown puts the job back without spending an attempt.
        s.requeue(a1).unwrap();
        let j = s.get(a1).unwrap();
        assert_eq!((j.state, j.attempts), (JobState::Queued, 0));
        assert_eq!(s.claim_fair(2).unwrap().unwrap().id, a1);
        assert_eq!(s.claim_fair(2).unwrap().unwrap().id, a2);
        assert_eq!(s.fail(a2, "broken", 1).unwrap(), JobState::Failed);
        let f = s.take_unreported_failures().unwrap();
        assert_eq!(f.iter().map(|j| j.id).collect::<Vec<_>>(), [a2]);
        assert!(s.take_unreported_failures().unwrap().is_empty());
        // Settings persist across reopening.
        s.set_settings(-100, &serde_json::json!({"count": 4})).unwrap();
        s.set_settings(-100, &serde_json::json!({"count": 5})).unwrap();
        s.update_payload(b1, &serde_json::json!({"status": 77})).unwrap();
        drop(s);
        let s = SqliteStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        assert_eq!(s.settings(-100).unwrap().unwrap()["count"], 5);
        assert!(s.settings(5).unwrap().is_none());
        assert_eq!(s.get(b1).unwrap().payload["status"], 77);
    }

    #[test]
    fn queue_order_users_and_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("j.sqlite")).unwrap();
        let a = s.enqueue(&job(1)).unwrap();
        let b = s.enqueue(&job(2)).unwrap();
        let c = s.enqueue(&job(1)).unwrap();
        assert_eq!(
            s.pending_for(1).unwrap().iter().map(|j| j.id).collect::<Vec<_>>(),
            [a, c]
        );
        assert!(s.cancel(c).unwrap());
        assert!(!s.cancel(c).unwrap());
        assert_eq!(s.claim().unwrap().unwrap().id, a);
        assert_eq!(s.claim().unwrap().unwrap().id, b);
        assert!(s.claim().unwrap().is_none(), "cancelled jobs are not claimed");
        assert!(matches!(s.get(999), Err(StoreError::NoSuchJob(999))));
    }
}

//! How long a job's files stay: a finished job's folder (input, report with its transcript,
//! clips) is kept `--keep-hours` after it was last used (its end, or its last re-cut: the
//! `last-used` file's time), so the buttons under its clips can re-cut them; then the sweeper
//! deletes it, and a button pressed later says so.

use crate::store::{JobState, JobStore};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use viralclip_engine::report::Report;

const MARK: &str = "last-used";

/// A job's folder.
pub fn job_dir(data_dir: &Path, id: i64) -> PathBuf {
    data_dir.join("jobs").join(id.to_string())
}

/// Records that the job's files were used now (its end, a re-cut).
pub fn touch(dir: &Path) {
    let _ = std::fs::write(dir.join(MARK), b"");
}

/// Whether the folder's files are past `keep` since last used.
pub fn expired(dir: &Path, keep: Duration) -> bool {
    let used = [dir.join(MARK), dir.join("out/report.json")]
        .iter()
        .find_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    match used {
        Some(t) => SystemTime::now().duration_since(t).unwrap_or_default() > keep,
        None => true,
    }
}

/// A finished job's report and input, when its files are still kept.
pub fn kept(dir: &Path, keep: Duration) -> Option<(Report, PathBuf)> {
    if expired(dir, keep) {
        return None;
    }
    let report: Report = serde_json::from_slice(&std::fs::read(dir.join("out/report.json")).ok()?).ok()?;
    let input = report.input.path.clone();
    input.is_file().then_some((report, input))
}

/// Deletes the folders of ended jobs past `keep`; returns how many.
pub fn sweep(data_dir: &Path, store: &dyn JobStore, keep: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(data_dir.join("jobs")) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let Some(id) = e.file_name().to_str().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        let ended = store
            .get(id)
            .map(|j| matches!(j.state, JobState::Done | JobState::Failed | JobState::Cancelled))
            .unwrap_or(true);
        if ended && expired(&e.path(), keep) && std::fs::remove_dir_all(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Sweeps now and then every `keep / 4` (between 1 s and 10 min) until the process ends.
pub async fn sweeper(data_dir: PathBuf, store: std::sync::Arc<dyn JobStore>, keep: Duration) {
    let every = (keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        let (d, s) = (data_dir.clone(), store.clone());
        let n = tokio::task::spawn_blocking(move || sweep(&d, s.as_ref(), keep))
            .await
            .unwrap_or(0);
        if n > 0 {
            tracing::info!("deleted the files of {n} job(s) past their retention");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewJob, SqliteStore};

    #[test]
    fn only_ended_jobs_past_their_retention_are_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("jobs.sqlite")).unwrap();
        let new = || NewJob {
            chat_id: 1,
            user_id: 1,
            payload: serde_json::json!({}),
            hold_secs: 0,
        };
        let (old_done, fresh_done, old_running) = (
            store.enqueue(&new()).unwrap(),
            store.enqueue(&new()).unwrap(),
            store.enqueue(&new()).unwrap(),
        );
        for id in [old_done, fresh_done] {
            store.claim().unwrap();
            store.finish(id).unwrap();
        }
        store.claim().unwrap();
        let week_ago = SystemTime::now() - Duration::from_secs(7 * 24 * 3600);
        for id in [old_done, fresh_done, old_running] {
            let d = job_dir(tmp.path(), id);
            std::fs::create_dir_all(&d).unwrap();
            touch(&d);
            if id != fresh_done {
                let f = std::fs::File::options().write(true).open(d.join(MARK)).unwrap();
                f.set_modified(week_ago).unwrap();
            }
        }
        let keep = Duration::from_secs(48 * 3600);
        assert!(expired(&job_dir(tmp.path(), old_done), keep));
        assert!(!expired(&job_dir(tmp.path(), fresh_done), keep));
        assert_eq!(sweep(tmp.path(), &store, keep), 1);
        assert!(!job_dir(tmp.path(), old_done).exists());
        assert!(job_dir(tmp.path(), fresh_done).exists());
        assert!(
            job_dir(tmp.path(), old_running).exists(),
            "a running job's files stay"
        );
        assert!(
            kept(&job_dir(tmp.path(), fresh_done), keep).is_none(),
            "no report: nothing to re-cut"
        );
    }
}

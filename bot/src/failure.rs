//! Why a job failed: whether retrying can help, and what its user is told. Users only ever hear
//! a short reason in their own terms; the details (error chains, panic messages, paths) go to
//! the log and, where the bot's side is at fault, to the admins.

use crate::budget::Exceeded;
use crate::error::Error;
use crate::telegram::redact;

/// What a user hears when a job fails because of the bot's setup.
pub const MISCONFIGURED: &str = "this bot is misconfigured; the admin has been told";
/// What a user hears when the bot itself broke on their file (a panic).
pub const CRASHED: &str =
    "something went wrong inside the bot while working on this file; the admin has been told";

/// A panic inside a job, carried as an error so it is classified like one.
#[derive(Debug, thiserror::Error)]
#[error("panicked: {0}")]
pub struct Panicked(pub String);

impl Panicked {
    /// The message of a task that panicked, or `None` when it was cancelled instead.
    pub fn from_join(e: tokio::task::JoinError) -> Option<Self> {
        let p = e.try_into_panic().ok()?;
        let text = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Some(Panicked(text))
    }
}

/// A failed job's classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The user's file (retrying cannot help; the user is told why, in these words).
    BadInput(String),
    /// The job ran past its time or memory budget (not retried).
    OverBudget(Exceeded),
    /// The bot's installation: a model missing or broken (not retried; the admins get details).
    Config,
    /// The bot panicked on this job (not retried: the same input panics again; admins told).
    Crash,
    /// Anything else, such as the network (retried; after the last try the user is told
    /// [`Cause::user_text`]'s generic line).
    Other,
}

impl Cause {
    /// Classifies a job's error. `exceeded`: the budget its watchdog saw run out, which wins
    /// over whatever error the cancelled job returned.
    pub fn of(error: &Error, exceeded: Option<Exceeded>) -> Cause {
        if let Some(e) = exceeded {
            return Cause::OverBudget(e);
        }
        match error {
            Error::Panicked(_) => Cause::Crash,
            Error::Engine(e) if e.is_bad_input() => Cause::BadInput(e.for_user()),
            Error::Engine(e) if e.is_config() => Cause::Config,
            Error::Config(_) => Cause::Config,
            Error::Gone(why) => Cause::BadInput(why.clone()),
            _ => Cause::Other,
        }
    }

    /// How many attempts the job gets in all.
    pub fn attempts(&self, max_attempts: u32) -> u32 {
        match self {
            Cause::Other => max_attempts,
            _ => 0,
        }
    }

    /// The line the user reads after "Job #N failed: ".
    pub fn user_text(&self, attempts: u32) -> String {
        match self {
            Cause::BadInput(why) => redact(why),
            Cause::OverBudget(e) => e.user_text(),
            Cause::Config => MISCONFIGURED.into(),
            Cause::Crash => CRASHED.into(),
            Cause::Other => format!(
                "it could not be finished after {attempts} tries (a network or server problem); please send it again later"
            ),
        }
    }

    /// Whether the admins should hear of it (the bot's side is at fault).
    pub fn tells_admins(&self) -> bool {
        matches!(self, Cause::Config | Cause::Crash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use viralclip_engine::Error as EngineError;

    #[test]
    fn causes_and_what_users_read() {
        let panic = Error::from(Panicked("byte index 3 is not a char boundary".into()));
        assert_eq!(Cause::of(&panic, None), Cause::Crash);
        assert!(!Cause::Crash.user_text(3).contains("byte index"));
        let bad = Error::from(EngineError::Subtitle {
            path: Some("/srv/viralclip/jobs/1/input.srt".into()),
            line: 5,
            message: "not an SRT cue".into(),
        });
        let c = Cause::of(&bad, None);
        assert!(
            matches!(&c, Cause::BadInput(t) if t.contains("line 5") && !t.contains("/srv")),
            "{c:?}"
        );
        assert_eq!(c.attempts(3), 0);
        let gone = Error::from(EngineError::TooLarge {
            path: "/srv/viralclip/jobs/1/input.mkv".into(),
            limit: "too long".into(),
        });
        match Cause::of(&gone, None) {
            Cause::BadInput(t) => assert!(!t.contains("/srv"), "no server paths for users: {t}"),
            c => panic!("{c:?}"),
        }
        let over = Exceeded::Memory { limit_mb: 100 };
        assert_eq!(
            Cause::of(&Error::from(EngineError::Cancelled), Some(over)),
            Cause::OverBudget(over)
        );
        let net = Error::Telegram("sendVideo: connection reset".into());
        assert_eq!(Cause::of(&net, None), Cause::Other);
        assert_eq!(Cause::Other.attempts(3), 3);
        assert!(!Cause::Other.user_text(3).contains("connection"));
    }
}

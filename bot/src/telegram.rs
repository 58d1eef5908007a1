//! Calling the Bot API: flood control (`retry_after`) waited out, network hiccups retried a few
//! times, and the token kept out of every message.

use std::future::Future;
use std::time::Duration;
use teloxide::RequestError;

/// Runs `call` until it succeeds, waiting out 429 `retry_after` (up to `max_tries` times) and
/// retrying network errors with backoff. Other errors return at once.
pub async fn retrying<T, F, Fut>(max_tries: u32, mut call: F) -> Result<T, RequestError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RequestError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Err(RequestError::RetryAfter(s)) if tries < max_tries => {
                let wait = s.duration();
                tracing::warn!(secs = wait.as_secs(), "flood control: waiting as Telegram asked");
                tokio::time::sleep(wait).await;
            }
            Err(RequestError::Network(e)) if tries < max_tries.min(4) => {
                tracing::warn!("network error, retrying: {}", redact(&e.to_string()));
                tokio::time::sleep(Duration::from_millis(500 * (1 << tries))).await;
            }
            r => return r,
        }
    }
}

/// Removes anything that looks like a bot token (`123456:AA...`) from `s`.
pub fn redact(s: &str) -> String {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\d{5,}:[A-Za-z0-9_-]{30,}").expect("valid regex"))
        .replace_all(s, "<token>")
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted() {
        let t = "https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_x/getMe failed";
        let r = redact(t);
        assert!(!r.contains("AAHdqTcv"), "{r}");
        assert!(r.contains("bot<token>/getMe"), "{r}");
        assert_eq!(redact("clip 12:30 of 1234567"), "clip 12:30 of 1234567");
        assert_eq!(redact("Привет, 42"), "Привет, 42");
    }
}

//! Who a request is: the access token (when the page listens beyond loopback) and the browser's
//! session, a random id in a cookie that owns the jobs it made (no other session sees them).

use axum::http::{header, HeaderMap};

pub(crate) const SESSION: &str = "vc_session";
pub(crate) const TOKEN: &str = "vc_token";

/// A cookie's value from the request's headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session's id (a job's owner), if the request has a well-formed session cookie.
pub(crate) fn session_of(headers: &HeaderMap) -> Option<i64> {
    let v = cookie(headers, SESSION)?;
    (v.len() == 16)
        .then(|| u64::from_str_radix(v, 16).ok())
        .flatten()
        .map(|n| (n >> 1) as i64)
}

/// A new session cookie's value: 64 random bits as hex.
pub(crate) fn new_session() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS gives random bytes");
    format!("{:016x}", u64::from_le_bytes(b))
}

/// Equality that takes as long whatever the first difference (tokens).
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the access token: its cookie, a bearer header, or `?token=`.
pub(crate) fn has_token(headers: &HeaderMap, query: Option<&str>, token: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let from_query = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v)
    });
    [cookie(headers, TOKEN), bearer, from_query]
        .into_iter()
        .flatten()
        .any(|t| same(t, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_and_tokens_come_from_cookies_headers_or_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(session_of(&h), None);
        let s = new_session();
        assert_ne!(s, new_session());
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {SESSION}={s}")).unwrap(),
        );
        assert_eq!(
            session_of(&h),
            Some((u64::from_str_radix(&s, 16).unwrap() >> 1) as i64)
        );
        assert!(!has_token(&h, None, "secret"));
        assert!(has_token(&h, Some("x=1&token=secret"), "secret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer secret"));
        assert!(has_token(&h, None, "secret"));
        assert!(!has_token(&h, None, "secreT"));
        let mut bad = HeaderMap::new();
        bad.insert(header::COOKIE, HeaderValue::from_static("vc_session=../../etc"));
        assert_eq!(session_of(&bad), None);
    }
}

use super::*;
use serde_json::json;

fn policy(hosts: &[&str]) -> LinkPolicy {
    LinkPolicy {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..LinkPolicy::default()
    }
}

#[test]
fn links_are_found_in_messages_and_told_from_paths() {
    assert_eq!(
        find_link("смотри (https://youtu.be/abc?t=1), круто"),
        Some("https://youtu.be/abc?t=1")
    );
    assert_eq!(
        find_link("/clip 3 HTTPS://Example.com/v.mp4 fast"),
        Some("HTTPS://Example.com/v.mp4")
    );
    assert_eq!(find_link("no link here, http:// alone"), None);
    assert_eq!(find_link("ftp://x/y"), None);
    assert!(is_link("https://vimeo.com/1"));
    assert!(!is_link("video.mp4"));
    assert!(!is_link("https:/not"));
}

#[test]
fn hosts_are_allow_listed_with_their_subdomains() {
    let hosts: Vec<String> = ["youtube.com", "127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(host_allowed("youtube.com", &hosts));
    assert!(host_allowed("m.youtube.com", &hosts));
    assert!(!host_allowed("evilyoutube.com", &hosts));
    assert!(!host_allowed("youtube.com.evil.net", &hosts));
    assert!(host_allowed("127.0.0.1", &hosts));
    assert!(host_allowed("anything.net", &["*".to_string()]));
    let e = check_url("https://evil.example/v", &policy(&["youtube.com"])).unwrap_err();
    assert!(e.to_string().contains("evil.example") && e.is_bad_input(), "{e}");
    let e = check_url("file:///etc/passwd", &policy(&["*"])).unwrap_err();
    assert!(e.to_string().contains("http"), "{e}");
}

#[test]
fn private_loopback_and_link_local_addresses_are_refused_unless_allowed() {
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
    ] {
        assert!(!is_public(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["93.184.216.34", "8.8.8.8", "2a00:1450:4010:c0e::8a"] {
        assert!(is_public(ip.parse().unwrap()), "{ip}");
    }
    let p = policy(&["*"]);
    for link in [
        "http://127.0.0.1:8080/v.mp4",
        "http://[::1]/v.mp4",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost/v.mp4",
    ] {
        let e = check_url(link, &p).unwrap_err();
        assert!(e.to_string().contains("private or local address"), "{link}: {e}");
    }
    let allowed = LinkPolicy {
        allow_private: true,
        ..p
    };
    assert!(check_url("http://127.0.0.1:8080/v.mp4", &allowed).is_ok());
}

#[test]
fn the_probe_refuses_live_long_big_playlists_and_private_media_before_downloading() {
    let link = "https://youtube.com/watch?v=x";
    let p = LinkPolicy {
        max_duration_secs: 3600.0,
        max_bytes: 500_000_000,
        ..LinkPolicy::default()
    };
    let ok = Probe::parse(&json!({"title": "t", "duration": 600.0, "filesize_approx": 1e8,
        "url": "https://rr1.googlevideo.com/x", "live_status": "not_live"}));
    assert!(ok.check(link, &p).is_ok());
    let e = Probe::parse(&json!({"duration": 11100}))
        .check(link, &p)
        .unwrap_err();
    assert!(
        e.to_string().contains("3 h 05 min") && e.to_string().contains("1 h 00 min"),
        "{e}"
    );
    let e = Probe::parse(&json!({"requested_formats": [{"filesize": 4e8}, {"filesize_approx": 2e8}]}))
        .check(link, &p)
        .unwrap_err();
    assert!(e.to_string().contains("600 MB"), "{e}");
    let e = Probe::parse(&json!({"is_live": true}))
        .check(link, &p)
        .unwrap_err();
    assert!(e.to_string().contains("live stream"), "{e}");
    let e = Probe::parse(&json!({"live_status": "is_upcoming"}))
        .check(link, &p)
        .unwrap_err();
    assert!(e.to_string().contains("not started"), "{e}");
    let e = Probe::parse(&json!({"_type": "playlist"}))
        .check(link, &p)
        .unwrap_err();
    assert!(e.to_string().contains("playlist"), "{e}");
    // A public page whose video is served from this machine's own network.
    let e = Probe::parse(&json!({"url": "http://10.0.0.5/v.mp4"}))
        .check(link, &p)
        .unwrap_err();
    assert!(e.to_string().contains("10.0.0.5"), "{e}");
}

#[test]
fn subtitles_in_the_asked_language_the_sites_own_before_automatic() {
    let p = Probe::parse(&json!({
        "language": "ru",
        "subtitles": {"en": [{"ext": "vtt"}], "ru": [{"ext": "vtt"}], "live_chat": [{"ext": "json"}]},
        "automatic_captions": {"ru-orig": [{"ext": "vtt"}], "de": [{"ext": "vtt"}], "fr": []}
    }));
    assert_eq!(p.subtitle_choice(None), Some(("ru".into(), false)));
    assert_eq!(p.subtitle_choice(Some("en")), Some(("en".into(), false)));
    assert_eq!(p.subtitle_choice(Some("de")), Some(("de".into(), true)));
    assert_eq!(p.subtitle_choice(Some("fr")), None);
    let auto = Probe::parse(&json!({"automatic_captions": {"ru-orig": [{}], "ru": [{}], "en": [{}]}}));
    assert_eq!(auto.subtitle_choice(Some("ru")), Some(("ru-orig".into(), true)));
    assert_eq!(auto.subtitle_choice(None), Some(("ru-orig".into(), true)));
    let none = Probe::parse(&json!({"subtitles": {}}));
    assert_eq!(none.subtitle_choice(Some("ru")), None);
}

#[test]
fn yt_dlp_errors_become_one_answer_each() {
    let link = "https://youtube.com/watch?v=x";
    let case = |stderr: &str| failure(link, stderr);
    let dead = case("WARNING: x\nERROR: [generic] v: Unable to download webpage: HTTP Error 404: Not Found");
    assert!(
        dead.to_string().contains("leads nowhere") && dead.is_bad_input(),
        "{dead}"
    );
    let private = case("ERROR: [youtube] x: Private video. Sign in if you've been granted access");
    assert!(private.to_string().contains("private"), "{private}");
    let login = case("ERROR: [youtube] x: Sign in to confirm your age. This video may be inappropriate");
    assert!(login.to_string().contains("cookies"), "{login}");
    let bot = case("ERROR: [youtube] x: Sign in to confirm you're not a bot. Use --cookies");
    assert!(bot.to_string().contains("not a bot"), "{bot}");
    let upcoming = case("ERROR: [youtube] x: This live event will begin in 3 hours.");
    assert!(upcoming.to_string().contains("not started"), "{upcoming}");
    let net =
        case("ERROR: [generic] Unable to download webpage: <urlopen error [Errno 111] Connection refused>");
    assert!(
        matches!(net, Error::LinkNetwork(_)) && !net.is_bad_input(),
        "{net}"
    );
    let other = case(&format!("ERROR: {}", "щ".repeat(400)));
    assert!(
        other.is_bad_input() && other.to_string().chars().count() < 400,
        "{other}"
    );
}

#[test]
fn durations_read_as_a_clock() {
    assert_eq!(clock(11100.0), "3 h 05 min");
    assert_eq!(clock(200.0), "3 min 20 s");
    assert_eq!(clock(7.4), "7 s");
}

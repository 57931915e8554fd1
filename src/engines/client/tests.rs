//! Unit tests of `engines/client.rs`, beside it so the module file reads as the code.

use super::*;

/// A key reads back as it was written; anything else is not a key.
#[test]
fn content_keys_parse_from_their_display() {
    let hex = "AB".repeat(20);
    let id = ContentKey::parse_key(&hex).unwrap();
    assert_eq!(
        (id.kind, id.value.as_str()),
        (ContentKind::ContentId, "ab".repeat(20).as_str())
    );
    let ih = ContentKey::parse_key(&format!("infohash:{hex}")).unwrap();
    assert_eq!(ih.kind, ContentKind::Infohash);
    assert_eq!(ContentKey::parse_key(&ih.to_string()), Some(ih));
    for bad in ["", "abc", "infohash:", &format!("{hex}0"), &"zz".repeat(20)] {
        assert_eq!(ContentKey::parse_key(bad), None, "{bad}");
    }
}

/// An engine error keeps its source, and a client sees it as refused or unreachable.
#[test]
fn engine_errors_map_to_client_errors() {
    use std::error::Error as _;
    let io = EngineError::Io {
        engine: "e:1".into(),
        what: "/ace/getstream".into(),
        source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
    };
    assert!(io.source().is_some());
    assert_eq!(
        EdgeError::from(io),
        EdgeError::EngineUnreachable {
            engine: "e:1".into(),
            reason: "/ace/getstream: refused".into()
        }
    );
    let refused = EngineError::Refused {
        engine: "e:1".into(),
        reason: "failed to load content".into(),
    };
    assert_eq!(EdgeError::from(refused).status(), 503);
}

/// The engine's host is dropped; path and query are kept.
#[test]
fn returned_urls_keep_only_path_and_query() {
    assert_eq!(
        path_of("http://172.17.0.5:6878/ace/r/abc/def?x=1").as_deref(),
        Some("/ace/r/abc/def?x=1")
    );
    assert_eq!(
        path_of("/content/ab/0.123").as_deref(),
        Some("/content/ab/0.123")
    );
    assert_eq!(path_of("not a url"), None);
}

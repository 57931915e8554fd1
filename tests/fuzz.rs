//! Property tests (bounded, run by `make test`): the request and configuration parsers never
//! panic on arbitrary input, and accept exactly what they should.

use acestream_edge::config::load_str;
use acestream_edge::routes::getstream::content_id;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any query string: no panic; accepted ids are exactly 40 lower-case hex characters.
    #[test]
    fn content_id_never_panics(query in ".{0,120}") {
        if let Ok(key) = content_id(Some(&query)) {
            let id = key.value;
            prop_assert_eq!(id.len(), 40);
            prop_assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }

    /// Every 40-hex id is accepted, whatever its case and whatever else the query carries.
    #[test]
    fn valid_ids_are_accepted(id in "[0-9a-fA-F]{40}", junk in "x[a-z]{0,7}=[a-z0-9]{0,8}") {
        let q = format!("{junk}&id={id}");
        prop_assert_eq!(content_id(Some(&q)).unwrap().value, id.to_ascii_lowercase());
    }

    /// Any text as a config file: no panic, either a config or errors that name a path.
    #[test]
    fn config_loader_never_panics(text in "(?s).{0,300}") {
        if let Err(e) = load_str(&text) {
            prop_assert!(!e.problems.is_empty());
            prop_assert!(e.problems.iter().all(|p| !p.path.is_empty() && !p.reason.is_empty()));
        }
    }

    /// YAML-shaped input built from real keys and random values: every accepted file validates
    /// into a consistent config, and every rejected one names the key (unless the text is not
    /// even YAML, which is reported for the whole document).
    #[test]
    fn config_loader_survives_random_values(
        key in prop::sample::select(vec!["listen", "engines", "client_timeout", "stream_buffer_size", "copy_chunk_size", "orchestrator", "max_streams_per_engine", "admin_token", "keepalive_interval", "live_lead", "stream_buffer_seconds", "stream_buffer_max_bytes"]),
        value in prop_oneof![Just("[]".to_string()), Just("-1".to_string()), Just("\"5m\"".to_string()), "[a-z0-9:.\\[\\]{}\" -]{0,30}"],
    ) {
        let text = format!("acestream:\n  {key}: {value}\n");
        match load_str(&text) {
            Ok(c) => {
                let c = c.acestream;
                prop_assert!(!c.listen.is_empty());
                prop_assert!(c.buffers.copy_chunk_size > 0 && c.buffers.copy_chunk_size % 188 == 0);
                prop_assert!(c.buffers.stream_buffer_size >= 2 * c.buffers.copy_chunk_size);
                prop_assert!(c.buffers.stream_buffer_max_bytes >= c.buffers.stream_buffer_size);
                prop_assert!(!c.viewers.client_timeout.is_zero());
            }
            Err(e) => {
                let is_yaml = serde_yaml::from_str::<serde_yaml::Value>(&text).is_ok();
                let named = e.problems.iter().any(|p| p.path.starts_with(&format!("acestream.{key}")));
                prop_assert!(named || !is_yaml, "{key}: {value:?} -> {e}");
            }
        }
    }
}

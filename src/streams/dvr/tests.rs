//! Unit tests of `streams/dvr.rs`: what a spill writes it reads back, where a rewind starts, and
//! the window and the budget dropping whole files, oldest first.

use super::*;
use crate::config::Dvr;
use std::path::Path;

fn store(dir: &Path, window: Duration, max_bytes: u64) -> Arc<DvrStore> {
    let config = Dvr {
        dvr_window: window,
        dvr_dir: dir.to_path_buf(),
        dvr_max_bytes: max_bytes,
        dvr_pause_timeout: Duration::from_secs(300),
    };
    DvrStore::open(&config, 4.0, Arc::new(Metrics::new())).expect("a usable directory")
}

/// A chunk of `len` bytes whose every byte is its offset's low byte (so reads can be checked).
fn chunk(offset: u64, len: usize) -> Bytes {
    (0..len).map(|i| (offset + i as u64) as u8).collect()
}

/// Appends `count` chunks of `len` bytes, one second of stream and of wall time each from
/// `unix0`, a keyframe at every chunk's start; waits until all are written.
fn feed(spill: &Spill, metrics: &Metrics, count: u64, len: usize, unix0: f64) {
    for i in 0..count {
        let offset = i * len as u64;
        let psi = Bytes::from(format!("psi{i}"));
        let media = (i as f64, (i + 1) as f64);
        spill.append_at(
            metrics,
            (offset, chunk(offset, len)),
            (media, unix0 + i as f64),
            false,
            vec![(offset, psi)],
        );
    }
    let end = count * len as u64;
    let mut w = spill.written();
    while *w.borrow_and_update() < end && spill.is_live() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn reads_back_what_it_wrote_and_starts_on_keyframes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), Duration::from_secs(3600), 1 << 30);
    let metrics = Metrics::new();
    let spill = store.spill("a").unwrap();
    feed(&spill, &metrics, 100, 100_000, 1_000.0);
    // At a file boundary: a file takes chunks until it holds 8 MiB, so the first one ends after
    // 84 chunks of 100 kB.
    let at = 8_400_000 - 10;
    let SpillRead::Data(b) = spill.read(at, 64).unwrap() else {
        panic!("written data");
    };
    assert_eq!(b.len(), 10, "a read ends at its file's end");
    assert!(b
        .iter()
        .enumerate()
        .all(|(i, x)| *x == (at + i as u64) as u8));
    assert!(matches!(
        spill.read(12_000_000, 10).unwrap(),
        SpillRead::Pending
    ));
    // 100 s held; 10 s back from the edge (100) is the keyframe at 90 s.
    assert_eq!(spill.held().0, 100.0);
    let (off, psi) = spill.start_for(Rewind::Back(10.0)).unwrap();
    assert_eq!((off, &psi[..]), (9_000_000, &b"psi90"[..]));
    let (off, _) = spill.start_for(Rewind::Back(9.5)).unwrap();
    assert_eq!(off, 9_000_000, "the keyframe at or before the time");
    assert_eq!(spill.start_for(Rewind::Back(0.0)), None, "live");
    let (off, _) = spill.start_for(Rewind::Back(500.0)).unwrap();
    assert_eq!(off, 0, "before the window: its oldest keyframe");
    let (off, _) = spill.start_for(Rewind::At(1_012.5)).unwrap();
    assert_eq!(off, 1_200_000, "by wall time");
    assert!((spill.lag_seconds(9_050_000) - 9.5).abs() < 1e-9);
    spill.close();
    let mut w = spill.written();
    while spill.is_live() {
        let _ = w.borrow_and_update();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(spill.read(0, 10).unwrap(), SpillRead::Gone));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the spill is deleted"
    );
}

/// The window drops whole files once the chunk after them is older than it: a 30 s window of
/// 120 one-second 200 kB chunks keeps the files that hold the last 30 s.
#[test]
fn the_window_drops_whole_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), Duration::from_secs(30), 1 << 30);
    let metrics = Metrics::new();
    let spill = store.spill("w").unwrap();
    feed(&spill, &metrics, 120, 200_000, 1_000.0);
    let (seconds, bytes) = spill.held();
    assert!((30.0..=30.0 + 42.0).contains(&seconds), "{seconds} s held");
    assert!(bytes <= 2 * SPILL_FILE_BYTES + 30 * 200_000, "{bytes}");
    assert!(matches!(spill.read(0, 10).unwrap(), SpillRead::Gone));
    assert!(matches!(
        spill.read(119 * 200_000, 10).unwrap(),
        SpillRead::Data(_)
    ));
}

/// Over `dvr_max_bytes`, the longest spill loses its oldest file first.
#[test]
fn the_budget_takes_from_the_longest_spill() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), Duration::from_secs(3600), 3 * SPILL_FILE_BYTES);
    let metrics = Metrics::new();
    let long = store.spill("long").unwrap();
    let short = store.spill("short").unwrap();
    feed(&short, &metrics, 10, 100_000, 1_000.0); // 1 MB
    feed(&long, &metrics, 30, 1_000_000, 1_000.0); // 30 MB: over 24 MiB with the other
    let total = long.held().1 + short.held().1;
    assert!(total <= 3 * SPILL_FILE_BYTES, "{total}");
    assert_eq!(short.held().1, 1_000_000, "the short spill is untouched");
    assert!(matches!(long.read(0, 10).unwrap(), SpillRead::Gone));
    assert!(store.metrics.dvr_budget_drops.get() >= 1);
}

/// A start removes the spills of processes that are gone (a dead pid, or a live pid whose start
/// time differs: a reused pid) and keeps those of running ones (this process's other stores).
#[test]
fn a_start_removes_only_what_dead_processes_left() {
    let dir = tempfile::tempdir().unwrap();
    let me = process_tag(std::process::id()).unwrap();
    assert_eq!(
        process_tag(std::process::id()).as_deref(),
        Some(me.as_str())
    );
    let pid = std::process::id();
    for name in [
        format!("spill-{me}-a-0"),
        format!("spill-{pid}.1-b-0"),
        "spill-4194304999.7-c-0".to_string(),
        "other".to_string(),
    ] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
    }
    let _store = store(dir.path(), Duration::from_secs(60), 1 << 30);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, vec!["other".to_string(), format!("spill-{me}-a-0")]);
}

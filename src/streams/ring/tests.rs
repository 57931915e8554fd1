//! Unit tests of `streams/ring.rs`, beside it so the module file reads as the code.

use super::*;

fn chunk(n: usize, fill: u8) -> Bytes {
    Bytes::from(vec![fill; n])
}

fn span(start: f64, end: f64) -> MediaSpan {
    MediaSpan {
        start,
        end,
        clocked: true,
    }
}

/// A reader within capacity gets every chunk in order, shared not copied.
#[test]
fn reader_within_capacity_gets_every_chunk() {
    let ring = Ring::new(Retention::bytes(1000));
    let a = chunk(100, 1);
    ring.publish_bytes(a.clone());
    ring.publish_bytes(chunk(100, 2));
    match ring.read(0, 10) {
        Read::Chunks(v) => {
            assert_eq!(v.len(), 2);
            assert_eq!(v[0].as_ptr(), a.as_ptr(), "chunk is shared, not copied");
            assert_eq!(v[1][0], 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ring.read(2, 10), Read::Pending);
}

/// Overflow evicts the oldest chunks; a reader behind them is told it lagged.
#[test]
fn overflow_evicts_oldest_and_reports_lag() {
    let ring = Ring::new(Retention::bytes(250)); // holds 2 chunks of 100
    for i in 0..5 {
        ring.publish_bytes(chunk(100, i));
    }
    assert_eq!(ring.held_bytes(), 200);
    assert_eq!(ring.read(0, 10), Read::Lagged);
    assert_eq!(ring.published_bytes(), 500);
    match ring.read(3, 10) {
        Read::Chunks(v) => assert_eq!(v.iter().map(|c| c[0]).collect::<Vec<_>>(), vec![3, 4]),
        other => panic!("{other:?}"),
    }
}

/// The time rule keeps more than the byte minimum when the stream time asks for it (for a
/// reader that needs it), the byte cap wins over both, and `evicts_through` predicts exactly
/// what a publish evicts.
#[test]
fn retention_in_time_and_bytes() {
    let ring = Ring::new(Retention {
        min_bytes: 200,
        min_seconds: 5.0,
        max_bytes: 1000,
    });
    ring.needed_from(Some(0));
    // 100-byte chunks of 1 s each: 5 s of stream needs 500 bytes, more than the 200 minimum.
    for i in 0..8 {
        let t = i as f64;
        let predicted = ring.evicts_through(100, span(t, t + 1.0));
        ring.publish(chunk(100, i as u8), span(t, t + 1.0));
        assert_eq!(ring.first_seq(), predicted, "prediction at chunk {i}");
    }
    assert_eq!(ring.held_bytes(), 500, "5 s of stream kept");
    assert!((ring.lag_seconds(ring.first_seq()) - 5.0).abs() < 1e-9);
    assert_eq!(ring.bitrate_bps(), Some(800.0), "500 bytes over 5 s");
    // 0.1 s chunks: the byte minimum (200) decides.
    let ring = Ring::new(Retention {
        min_bytes: 200,
        min_seconds: 0.15,
        max_bytes: 1000,
    });
    ring.needed_from(Some(0));
    for i in 0..10 {
        let t = i as f64 / 10.0;
        ring.publish(chunk(100, i as u8), span(t, t + 0.1));
    }
    assert_eq!(ring.held_bytes(), 200);
    // The cap: 10 s per chunk would keep everything, but 300 bytes is the most.
    let ring = Ring::new(Retention {
        min_bytes: 100,
        min_seconds: 100.0,
        max_bytes: 300,
    });
    ring.needed_from(Some(0));
    for i in 0..10 {
        let t = i as f64 * 10.0;
        let predicted = ring.evicts_through(100, span(t, t + 10.0));
        ring.publish(chunk(100, i as u8), span(t, t + 10.0));
        assert_eq!(ring.first_seq(), predicted);
    }
    assert_eq!(ring.held_bytes(), 300);
}

/// The time floor holds only what a reader still needs: with every reader at the edge (or
/// none) the ring shrinks to the byte minimum, and a reader behind keeps its chunks until it
/// is `min_seconds` behind.
#[test]
fn time_floor_holds_only_needed_chunks() {
    let ring = Ring::new(Retention {
        min_bytes: 200,
        min_seconds: 5.0,
        max_bytes: 1000,
    });
    let publish = |i: u64| {
        let t = i as f64;
        let predicted = ring.evicts_through(100, span(t, t + 1.0));
        ring.publish(chunk(100, i as u8), span(t, t + 1.0));
        assert_eq!(ring.first_seq(), predicted, "prediction at chunk {i}");
    };
    for i in 0..8 {
        publish(i);
    }
    assert_eq!(ring.held_bytes(), 200, "nobody reads: the byte minimum");
    // A reader at chunk 7 stops reading; the ring keeps its chunks until it is 5 s behind.
    ring.needed_from(Some(7));
    for i in 8..11 {
        publish(i);
    }
    assert_eq!((ring.first_seq(), ring.held_bytes()), (7, 400));
    for i in 11..15 {
        publish(i);
    }
    assert_eq!(
        ring.held_bytes(),
        500,
        "5 s of stream for the reader behind"
    );
    assert_eq!(ring.read(7, 1), Read::Lagged, "it fell off after 5 s");
    // It caught up: what it read goes.
    ring.needed_from(Some(14));
    publish(15);
    assert_eq!(ring.held_bytes(), 200);
}

/// A joiner gets the newest chunks up to the burst, and always at least one.
#[test]
fn join_cursor_takes_a_bounded_burst() {
    let ring = Ring::new(Retention::bytes(10_000));
    assert_eq!(
        ring.join_cursor(1000),
        0,
        "empty ring: start at the next chunk"
    );
    for i in 0..10 {
        ring.publish_bytes(chunk(100, i));
    }
    assert_eq!(ring.join_cursor(250), 8, "two chunks fit in 250 bytes");
    assert_eq!(ring.join_cursor(0), 9, "at least the newest chunk");
    assert_eq!(ring.join_cursor(100_000), 0, "never before the oldest");
}

/// A join starts at the earliest keyframe within the burst, else the newest one, with its
/// PSI first and the keyframe's chunk cut at the keyframe; without keyframes, on a chunk
/// boundary with the newest PSI in front.
#[test]
fn join_point_prefers_keyframes() {
    let ring = Ring::new(Retention::bytes(10_000));
    let plain = ring.join_point(250);
    assert!(plain.lead_in.is_empty() && !plain.keyframe);
    for i in 0..10 {
        ring.publish_bytes(chunk(100, i));
    }
    let psi = |n: u8| Bytes::from(vec![n; 4]);
    ring.add_keyframes(vec![
        KeyframeMark {
            offset: 250,
            psi: psi(1),
            pts: None,
        },
        KeyframeMark {
            offset: 650,
            psi: psi(2),
            pts: None,
        },
        KeyframeMark {
            offset: 820,
            psi: psi(3),
            pts: None,
        },
    ]);
    // Within 400 bytes of the edge (1000): 650 and 820; the earliest wins.
    let j = ring.join_point(400);
    assert!(j.keyframe);
    assert_eq!(j.lead_in[0], psi(2));
    assert_eq!(j.lead_in[1], chunk(50, 6), "chunk 6 from byte 50 on");
    assert_eq!((j.cursor, j.offset), (7, 700));
    // Nothing within 100 bytes: the newest keyframe.
    let j = ring.join_point(100);
    assert_eq!(j.lead_in[0], psi(3));
    assert_eq!((j.cursor, j.offset), (9, 900));
    // Evicted keyframes are forgotten; without any, a chunk boundary with the newest PSI.
    let small = Ring::new(Retention::bytes(200));
    small.publish_bytes(chunk(100, 0));
    small.add_keyframes(vec![KeyframeMark {
        offset: 0,
        psi: psi(7),
        pts: None,
    }]);
    for i in 1..5 {
        small.publish_bytes(chunk(100, i));
    }
    let j = small.join_point(100);
    assert!(!j.keyframe);
    assert_eq!(j.lead_in, vec![psi(7)]);
    assert_eq!((j.cursor, j.offset), (4, 400));
    // A client that waited for the start begins at the oldest keyframe held.
    let j = ring.first_keyframe_join().expect("a keyframe");
    assert_eq!(j.lead_in[0], psi(1));
    assert_eq!((j.cursor, j.offset), (3, 300));
    assert_eq!(small.first_keyframe_join(), None);
}

/// On a stream without a clock, a needed chunk is kept past the byte minimum, but never past
/// the byte cap.
#[test]
fn clockless_needed_chunks_are_held_up_to_the_cap() {
    let ring = Ring::new(Retention {
        min_bytes: 200,
        min_seconds: 0.0,
        max_bytes: 500,
    });
    ring.needed_from(Some(1));
    for i in 0..4 {
        ring.publish_bytes(chunk(100, i));
    }
    assert_eq!(
        (ring.first_seq(), ring.held_bytes()),
        (1, 300),
        "chunk 1 on is kept"
    );
    assert_eq!(ring.evicts_through(100, MediaSpan::default()), 1);
    for i in 4..8 {
        ring.publish_bytes(chunk(100, i));
    }
    assert_eq!(ring.held_bytes(), 500, "the cap wins");
    ring.needed_from(None);
    ring.publish_bytes(chunk(100, 8));
    assert_eq!(ring.held_bytes(), 200);
}

/// After close, readers drain what is left and then see Closed.
#[test]
fn close_drains_then_ends() {
    let ring = Ring::new(Retention::bytes(1000));
    ring.publish_bytes(chunk(10, 7));
    ring.close();
    assert!(matches!(ring.read(0, 10), Read::Chunks(v) if v.len() == 1));
    assert_eq!(ring.read(1, 10), Read::Closed);
}

/// Publishing wakes subscribers.
#[tokio::test]
async fn publish_wakes_waiters() {
    let ring = std::sync::Arc::new(Ring::new(Retention::bytes(1000)));
    let mut rx = ring.subscribe();
    let r2 = ring.clone();
    let waiter = tokio::spawn(async move {
        rx.changed().await.unwrap();
        *rx.borrow()
    });
    r2.publish_bytes(chunk(10, 1));
    assert_eq!(waiter.await.unwrap(), 1);
}

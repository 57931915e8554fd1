//! Micro-benchmarks of the hot paths: the ring's publish and read, and engine scoring.

use acestream_edge::engines::score::{choose, Candidate};
use acestream_edge::streams::ring::{Read, Retention, Ring};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::net::SocketAddr;

fn ring(c: &mut Criterion) {
    let chunk = Bytes::from(vec![0x47u8; 65424]);
    c.bench_function("ring publish (4 MiB ring, 64 KiB chunks)", |b| {
        let ring = Ring::new(Retention::bytes(4 << 20));
        b.iter(|| ring.publish_bytes(black_box(chunk.clone())))
    });
    c.bench_function("ring read 1 chunk at the live edge", |b| {
        let ring = Ring::new(Retention::bytes(4 << 20));
        for _ in 0..64 {
            ring.publish_bytes(chunk.clone());
        }
        let cursor = ring.join_cursor(0);
        b.iter(|| match ring.read(black_box(cursor), 16) {
            Read::Chunks(v) => v.len(),
            _ => 0,
        })
    });
    c.bench_function("ring join cursor (256 KiB burst)", |b| {
        let ring = Ring::new(Retention::bytes(4 << 20));
        for _ in 0..64 {
            ring.publish_bytes(chunk.clone());
        }
        b.iter(|| ring.join_cursor(black_box(256 * 1024)))
    });
}

fn scoring(c: &mut Criterion) {
    let pool: Vec<Candidate> = (0..32u16)
        .map(|i| Candidate {
            addr: SocketAddr::from(([127, 0, 0, 1], 6000 + i)),
            forwarded: i % 4 == 0,
            healthy: i % 7 != 0,
            eligible: i % 13 != 0,
            active_streams: (i % 5) as usize,
            recently_failed: i % 11 == 0,
            node_load: (i % 3) as usize,
            last_assigned: None,
        })
        .collect();
    let mut rotation = 0usize;
    c.bench_function("choose among 32 engines", |b| {
        b.iter(|| {
            rotation += 1;
            choose(black_box(&pool), 10, rotation, true)
        })
    });
}

criterion_group!(benches, ring, scoring);
criterion_main!(benches);

//! Where a new reader starts: a burst of recent bytes, or a keyframe with the PAT/PMT in front
//! (see [`JoinPoint`]).

use super::*;

impl Ring {
    /// The cursor of the newest chunks whose total is at most `burst_bytes`, but at least the
    /// newest chunk. An empty ring gives the next sequence.
    pub fn join_cursor(&self, burst_bytes: usize) -> u64 {
        let s = self.lock();
        Self::burst_cursor(&s, burst_bytes)
    }

    fn burst_cursor(s: &State, burst_bytes: usize) -> u64 {
        let mut taken = 0usize;
        let mut back = 0u64;
        for e in s.entries.iter().rev() {
            if back > 0 && taken + e.data.len() > burst_bytes {
                break;
            }
            taken += e.data.len();
            back += 1;
        }
        s.first_seq + s.entries.len() as u64 - back
    }

    /// Where a client joining now starts. On a keyframe when the ring has one: the earliest
    /// keyframe within `burst_bytes` of the live edge (the biggest burst that still starts
    /// clean), else the newest keyframe (at most one GOP back); the PAT and PMT current there come
    /// first. Without a keyframe (audio only, a GOP longer than the ring): the newest chunks
    /// within `burst_bytes`, with the newest PAT and PMT in front if known.
    pub fn join_point(&self, burst_bytes: usize) -> JoinPoint {
        let s = self.lock();
        let edge = s.first_offset + s.held as u64;
        // Marks may arrive just before their chunk: only published ones count.
        let published = || s.keyframes.iter().filter(|k| k.offset < edge);
        let pick = published()
            .find(|k| edge - k.offset <= burst_bytes as u64)
            .or_else(|| published().last());
        if let Some(join) = pick.and_then(|k| Self::keyframe_join(&s, k)) {
            return join;
        }
        let cursor = Self::burst_cursor(&s, burst_bytes);
        let offset = s.first_offset
            + s.entries
                .iter()
                .take((cursor - s.first_seq) as usize)
                .map(|e| e.data.len() as u64)
                .sum::<u64>();
        JoinPoint {
            lead_in: s.psi.iter().cloned().collect(),
            cursor,
            offset,
            keyframe: false,
        }
    }

    /// A join at the oldest keyframe the ring holds (for a client that waited for the session's
    /// start: its first picture must be decodable too). `None` until the ring has one.
    pub fn first_keyframe_join(&self) -> Option<JoinPoint> {
        let s = self.lock();
        let k = s.keyframes.front()?;
        Self::keyframe_join(&s, k)
    }

    fn keyframe_join(s: &State, k: &KeyframeMark) -> Option<JoinPoint> {
        let (i, skip) = s.locate(k.offset)?;
        let e = &s.entries[i];
        Some(JoinPoint {
            lead_in: vec![k.psi.clone(), e.data.slice(skip..)],
            cursor: s.first_seq + i as u64 + 1,
            offset: k.offset - skip as u64 + e.data.len() as u64,
            keyframe: true,
        })
    }
}

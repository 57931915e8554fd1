//! What the ring tells about itself without reading it: a snapshot for a late segmenter, and the
//! figures the status and limits read (held bytes, lag, bitrate).

use super::*;

impl Ring {
    /// Everything the ring holds, for a segmenter starting late: each chunk with its stream
    /// offset and media span, the keyframe marks inside, the newest PAT + PMT, and whether the
    /// stream has video keyframes.
    pub fn snapshot(&self) -> RingSnapshot {
        let s = self.lock();
        let mut offset = s.first_offset;
        let chunks = s
            .entries
            .iter()
            .map(|e| {
                let c = (offset, e.data.clone(), e.media);
                offset += e.data.len() as u64;
                c
            })
            .collect();
        RingSnapshot {
            chunks,
            keyframes: s.keyframes.iter().cloned().collect(),
            psi: s.psi.clone(),
            has_video: s.video.unwrap_or(false),
        }
    }

    /// Whether the stream's PMT names a video stream with findable keyframes.
    pub fn has_video(&self) -> bool {
        self.lock().video.unwrap_or(false)
    }

    /// Whether the chunk at `cursor` has been evicted (a reader there fell off the tail).
    pub fn is_evicted(&self, cursor: u64) -> bool {
        cursor < self.lock().first_seq
    }

    /// Sequence number of the oldest chunk held.
    pub fn first_seq(&self) -> u64 {
        self.lock().first_seq
    }

    /// Bytes published since the ring was created (the stream offset of the live edge).
    pub fn published_bytes(&self) -> u64 {
        let s = self.lock();
        s.first_offset + s.held as u64
    }

    /// Bytes currently held.
    pub fn held_bytes(&self) -> usize {
        self.lock().held
    }

    /// Media time of the live edge.
    pub fn edge_media(&self) -> f64 {
        self.lock().edge_media()
    }

    /// Stream seconds between the live edge and a reader at `cursor` (for an evicted cursor: at
    /// least the whole ring's span).
    pub fn lag_seconds(&self, cursor: u64) -> f64 {
        let s = self.lock();
        let edge = s.edge_media();
        let i = cursor.saturating_sub(s.first_seq) as usize;
        match s.entries.get(i) {
            Some(e) => (edge - e.media.start).max(0.0),
            None => 0.0,
        }
    }

    /// The stream's bitrate measured over the ring: bits held per second of stream time held.
    /// `None` while the ring spans less than half a second of stream time.
    pub fn bitrate_bps(&self) -> Option<f64> {
        let s = self.lock();
        let span = s.edge_media() - s.entries.front()?.media.start;
        (span >= 0.5).then(|| s.held as f64 * 8.0 / span)
    }
}

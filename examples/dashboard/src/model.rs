//! A slow stand-in for a model API (the seed's OpenAI call): it streams its answer as
//! server-sent events, taking about `--model-latency-ms` in all, and counts its calls.
//!
//! The answer is a pure function of the assistant, the thread context and the new message,
//! so asking again produces the same bytes: what makes a cached reply indistinguishable from a
//! new one, and a reply worth caching.

use std::{
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use axum::body::Body;
use futures_util::StreamExt;
use serde_json::json;

use crate::assistant::{Assistant, ThreadContext};

/// How many `delta` events an answer is split into (a pause before each).
pub const CHUNKS: usize = 8;

/// The event that ends every answer.
pub const DONE: &str = "data: [DONE]\n\n";

/// The model stand-in: its latency and the number of calls it has served.
#[derive(Debug)]
pub struct Model {
    latency: Duration,
    calls: AtomicU64,
}

impl Model {
    /// A model that takes about `latency` to stream an answer.
    pub fn new(latency: Duration) -> Model {
        Model {
            latency,
            calls: AtomicU64::new(0),
        }
    }

    /// Calls made so far (each one a paid request to the real API it stands for).
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    /// Sets the call count back to zero (`POST /_origin/stats/reset`).
    pub fn reset_calls(&self) {
        self.calls.store(0, Relaxed);
    }

    /// Calls the model: counts the call and returns the answer as a body of server-sent
    /// events, `data: {"delta":"..."}\n\n` in [`CHUNKS`] pieces, each after a pause (about
    /// the latency in all), then [`DONE`].
    pub fn reply(&self, assistant: &Assistant, context: &ThreadContext, content: &str) -> Body {
        self.calls.fetch_add(1, Relaxed);
        let text = answer(assistant, context, content);
        let pause = self.latency / CHUNKS as u32;
        let mut events: Vec<(Duration, String)> = pieces(&text, CHUNKS)
            .into_iter()
            .map(|piece| (pause, format!("data: {}\n\n", json!({ "delta": piece }))))
            .collect();
        events.push((Duration::ZERO, DONE.to_owned()));
        let stream = futures_util::stream::iter(events).then(|(pause, event)| async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Ok::<_, Infallible>(event)
        });
        Body::from_stream(stream)
    }
}

/// The whole answer to `content` in this thread: deterministic, different for a different
/// message, thread or assistant.
pub fn answer(assistant: &Assistant, context: &ThreadContext, content: &str) -> String {
    let mut hash = Fnv::new();
    hash.write(assistant.id.as_bytes());
    hash.write(assistant.instructions.as_bytes());
    hash.write(assistant.model.as_bytes());
    for message in &context.messages {
        hash.write(message.role.as_bytes());
        hash.write(message.content.as_bytes());
        hash.write(&message.created_at.to_le_bytes());
    }
    hash.write(content.as_bytes());
    let h = hash.finish();
    const OPENINGS: [&str; 4] = [
        "Good question.",
        "Here is what the data says.",
        "Looking at your numbers:",
        "Short answer first.",
    ];
    const FINDINGS: [&str; 4] = [
        "the trend is up on last quarter",
        "the figures are flat, with a dip mid-period",
        "the last month carries most of the change",
        "two sources disagree, so treat this as an estimate",
    ];
    let source = assistant
        .sources
        .get((h >> 8) as usize % assistant.sources.len().max(1))
        .map_or("your data", |s| s.name.as_str());
    let excerpt: String = content.chars().take(60).collect();
    format!(
        "{} {} read {} earlier messages and `{source}` for \"{excerpt}\": {}. \
         Ask me to break it down by week. [{h:016x}]",
        OPENINGS[(h % 4) as usize],
        assistant.name,
        context.messages.len(),
        FINDINGS[((h >> 4) % 4) as usize],
    )
}

/// `text` cut into `n` pieces of about equal length, on character boundaries (the last ones
/// may be empty for a very short text).
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n).max(1);
    let mut out: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
    out.resize(n, String::new());
    out
}

/// FNV-1a, 64 bits: a stable hash (the same in every process and build, unlike std's).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_in_order() {
        let text = "héllo, wörld: a reply of some length";
        let parts = pieces(text, CHUNKS);
        assert_eq!(parts.len(), CHUNKS);
        assert_eq!(parts.concat(), text);
        assert_eq!(pieces("ab", 4), ["a", "b", "", ""]);
    }
}

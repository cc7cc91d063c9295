//! A stream of futures run a few at a time, the extra ones only while a
//! condition allows: `buffered`, with its width decided as it goes.
//!
//! An upload seals its chunks in batches. A second batch sealing beside
//! the first lets a lone file use both cores, but each batch sealed ahead
//! is memory, and when the mirrors are the slower side it only waits for
//! room in the upload window. So the second slot is used while the window
//! has room, and not while it is full (docs/PERFORMANCE.md, "Where a
//! written GiB's CPU goes, by process").

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FusedStream, FuturesOrdered, Stream, StreamExt};

/// The outputs of the futures `stream` yields, in its order. One future
/// is always run as soon as the stream yields it; up to `max` are while
/// `more()` holds when the next one could start.
pub struct Adaptive<S: Stream>
where
    S::Item: Future,
{
    stream: Pin<Box<futures_util::stream::Fuse<S>>>,
    running: FuturesOrdered<S::Item>,
    max: usize,
    more: Box<dyn Fn() -> bool + Send + Sync>,
}

impl<S: Stream> Adaptive<S>
where
    S::Item: Future,
{
    pub fn new(stream: S, max: usize, more: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Adaptive {
            stream: Box::pin(stream.fuse()),
            running: FuturesOrdered::new(),
            max: max.max(1),
            more: Box::new(more),
        }
    }
}

impl<S: Stream> Stream for Adaptive<S>
where
    S::Item: Future,
{
    type Item = <S::Item as Future>::Output;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.stream.is_terminated()
            && (this.running.is_empty() || (this.running.len() < this.max && (this.more)()))
        {
            match this.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(fut)) => this.running.push_back(fut),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        match this.running.poll_next_unpin(cx) {
            Poll::Ready(Some(out)) => Poll::Ready(Some(out)),
            Poll::Ready(None) if this.stream.is_terminated() => Poll::Ready(None),
            // Nothing running: the stream was polled above and will wake us.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// Outputs come in the stream's order whatever order the futures end
    /// in; at most `max` run at once, and only one while `more` is false.
    #[tokio::test]
    async fn keeps_order_and_runs_extra_futures_only_when_allowed() {
        for allow in [true, false] {
            let running = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let more = Arc::new(AtomicBool::new(allow));
            let futs = futures_util::stream::iter(0..12u64).map(|i| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Later items end sooner, so order is the adapter's work.
                    tokio::time::sleep(std::time::Duration::from_millis(12 - i)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                }
            });
            let flag = more.clone();
            let out: Vec<u64> = Adaptive::new(futs, 3, move || flag.load(Ordering::SeqCst))
                .collect()
                .await;
            assert_eq!(out, (0..12).collect::<Vec<_>>(), "allow {allow}");
            let want = if allow { 3 } else { 1 };
            assert_eq!(peak.load(Ordering::SeqCst), want, "allow {allow}");
        }
    }
}

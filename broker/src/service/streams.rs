//! Server streams with bounded buffers: a producer task fills a small
//! channel; if the client does not read for the stall timeout, the producer
//! gives up and the stream ends with a status saying why, after whatever
//! was already buffered. A slow client therefore never holds up the broker
//! or anyone else, and catches up when it reconnects.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::BrokerError;

/// The receiving end, handed to tonic.
#[derive(Debug)]
pub struct BoundedStream<T> {
    rx: mpsc::Receiver<T>,
    ending: Arc<Mutex<Option<Status>>>,
    done: bool,
}

/// The producing end.
#[derive(Debug)]
pub struct Producer<T> {
    tx: mpsc::Sender<T>,
    ending: Arc<Mutex<Option<Status>>>,
    stall: Duration,
}

/// Why a producer stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The client went away.
    Closed,
    /// The client stopped reading; the stream was ended with a status.
    Stalled,
}

pub fn bounded<T>(capacity: usize, stall: Duration) -> (Producer<T>, BoundedStream<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    let ending = Arc::new(Mutex::new(None));
    (Producer { tx, ending: ending.clone(), stall }, BoundedStream { rx, ending, done: false })
}

impl<T> Producer<T> {
    /// Sends one item, waiting at most the stall timeout for room.
    pub async fn send(&self, item: T) -> Result<(), Stop> {
        match tokio::time::timeout(self.stall, self.tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Closed),
            Err(_) => {
                self.end(BrokerError::SubscriberStalled(self.stall.as_secs()).into());
                Err(Stop::Stalled)
            }
        }
    }

    /// Waits (at most the stall timeout) for room for one item. Check what
    /// depends on the current state after this, then send with the permit:
    /// the item then goes out reflecting the state at the moment it was
    /// queued, however long the wait for room was.
    pub async fn reserve(&self) -> Result<mpsc::Permit<'_, T>, Stop> {
        match tokio::time::timeout(self.stall, self.tx.reserve()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Stop::Closed),
            Err(_) => {
                self.end(BrokerError::SubscriberStalled(self.stall.as_secs()).into());
                Err(Stop::Stalled)
            }
        }
    }

    /// [`Producer::reserve`], with a permit that owns its place in the
    /// stream, so that another thread (the committer) can fill it.
    pub async fn reserve_owned(&self) -> Result<mpsc::OwnedPermit<T>, Stop> {
        match tokio::time::timeout(self.stall, self.tx.clone().reserve_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Stop::Closed),
            Err(_) => {
                self.end(BrokerError::SubscriberStalled(self.stall.as_secs()).into());
                Err(Stop::Stalled)
            }
        }
    }

    /// Ends the stream with `status` once buffered items are read.
    pub fn end(&self, status: Status) {
        *self.ending.lock().expect("stream lock") = Some(status);
    }

    pub(crate) fn ending_handle(&self) -> Arc<Mutex<Option<Status>>> {
        self.ending.clone()
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl<T> Stream for BoundedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(self.ending.lock().expect("stream lock").take().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_never_reads_is_ended_with_a_status() {
        let (p, mut s) = bounded::<u32>(2, Duration::from_secs(30));
        p.send(1).await.unwrap();
        p.send(2).await.unwrap();
        assert_eq!(p.send(3).await, Err(Stop::Stalled));
        drop(p);
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        assert_eq!(s.next().await.unwrap().unwrap(), 2);
        let status = s.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("did not read for 30 s"), "{}", status.message());
        assert!(s.next().await.is_none());
    }
}

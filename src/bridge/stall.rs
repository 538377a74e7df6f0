//! The write deadline of every connection (`--write-stall-timeout`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

/// A TCP connection that is shut down when a write (or flush) has waited
/// `timeout` without progress. From then on every read and write fails at
/// once, so whoever holds it — hyper, or the WebSocket writer with its
/// queue of packets — lets go of it instead of waiting for each packet in
/// turn.
///
/// Why: a socket that reads nothing first fills its send buffer, then is
/// marked stalled and skipped (see `feed`), and its Socket.IO session ends
/// at the next heartbeat. But the task writing to its WebSocket stays
/// blocked on the full TCP window, holding the connection and every queued
/// packet, until the client reads. The deadline ends that.
pub struct StallLimited {
    stream: TcpStream,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    /// Its place under the connection cap, given back when it closes.
    _slot: Option<OwnedSemaphorePermit>,
}

impl StallLimited {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream, timeout: Duration) -> StallLimited {
        StallLimited {
            stream,
            timeout,
            deadline: None,
            stalled: false,
            _slot: None,
        }
    }

    /// The connection holds `slot` for as long as it lives.
    pub fn holding(mut self, slot: OwnedSemaphorePermit) -> StallLimited {
        self._slot = Some(slot);
        self
    }

    fn stalled_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the write-stall timeout",
        )
    }

    /// Passes a write-side poll through, starting the deadline when it
    /// waits and clearing it when it makes progress.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.deadline = None;
            return poll;
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = true;
        metrics::counter!("notify_bridge_write_stall_closes_total").increment(1);
        tracing::info!("closing a connection that read nothing for {timeout:?}");
        // Readers waiting on it see the end at once, not at the heartbeat.
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
        Poll::Ready(Err(Self::stalled_error()))
    }
}

impl AsyncRead for StallLimited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stalled {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallLimited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.stalled {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.stalled {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stalled {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stalled {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_connection_that_reads_nothing_is_shut_down_after_the_stall_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut server = StallLimited::new(accepted, Duration::from_millis(300));
        // The client never reads: writes succeed until both buffers are
        // full, then one waits out the timeout and fails.
        let chunk = vec![7u8; 64 * 1024];
        let started = Instant::now();
        let error = loop {
            match server.write(&chunk).await {
                Ok(_) => assert!(started.elapsed() < Duration::from_secs(30), "never stalled"),
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        // Everything after fails at once.
        assert!(server.write(b"x").await.is_err());
        let mut byte = [0u8; 1];
        assert!(server.read(&mut byte).await.is_err());
        drop(client);
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_is_never_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut server = StallLimited::new(accepted, Duration::from_millis(300));
        let reader = tokio::spawn(async move {
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            while total < 64 * 1024 * 1024 {
                // A slow but steady reader: pauses shorter than the timeout.
                tokio::time::sleep(Duration::from_millis(1)).await;
                total += client.read(&mut buf).await.unwrap();
            }
            total
        });
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..1024 {
            server.write_all(&chunk).await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), 64 * 1024 * 1024);
    }
}

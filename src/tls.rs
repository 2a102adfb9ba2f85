//! TLS on gantry's connections, end to end ours: the acceptor in front of
//! every gRPC server (gateway and hub) and the connector behind every
//! client channel. tonic only sees byte streams.
//!
//! Why not tonic's own TLS: its server identity and client CA are fixed
//! when the server is built and it offers no custom verifier, but
//! certificates renew while the gateway runs and gateways verify each
//! other against key pins from the replicated state. Both configs here sit
//! behind a lock that a renewal swaps; a connection takes the config of the
//! moment it opens, so open connections (a `logs --follow` stream) carry
//! on with the old certificate while new ones get the new.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// What the policy layer knows about the other end of a connection.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, leaf first, when it sent one.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl PeerInfo {
    pub fn leaf(&self) -> Option<&[u8]> {
        self.certs
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }
}

/// A server-side TLS connection that tells tonic who is on the other end.
pub struct TlsIo {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A TLS config that a renewal can replace while connections use it.
#[derive(Clone)]
pub struct Swappable<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Swappable<T> {
    pub fn new(config: Arc<T>) -> Self {
        Self {
            current: Arc::new(RwLock::new(config)),
        }
    }

    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, config: Arc<T>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

pub type ServerTls = Swappable<ServerConfig>;
pub type ClientTls = Swappable<ClientConfig>;

/// Bounds on what an unauthenticated caller can make a listener spend.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// A connection must finish its handshake this soon.
    pub handshake_timeout: Duration,
    /// Handshakes in flight at once; beyond it new connections are shed at
    /// once rather than queued, so a pile of idle sockets cannot make real
    /// clients wait behind it.
    pub max_handshakes: usize,
    /// Kernel TCP keepalive: probe a connection silent this long, and drop
    /// it after three unanswered probes 10 s apart. `None` leaves it off.
    pub keepalive_idle: Option<Duration>,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            keepalive_idle: None,
        }
    }
}

const KEEPALIVE_PROBE_EVERY: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// Turns on the kernel's keepalive probes for one accepted socket.
fn set_keepalive(tcp: &TcpStream, idle: Duration) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_tcp_keepidle(tcp, idle)?;
    sockopt::set_tcp_keepintvl(tcp, KEEPALIVE_PROBE_EVERY)?;
    sockopt::set_tcp_keepcnt(tcp, KEEPALIVE_PROBES)?;
    sockopt::set_socket_keepalive(tcp, true)?;
    Ok(())
}

/// Accepts TCP connections and runs their TLS handshakes concurrently (one
/// slow client cannot hold up the others); yields the finished ones to the
/// gRPC server. Failed handshakes are logged, at most one line a second.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    limits: AcceptLimits,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsIo, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, limits, shutdown, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    limits: AcceptLimits,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Result<TlsIo, io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let complaints = Arc::new(RateLimit::default());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off a little.
                if complaints.allow() {
                    tracing::warn!(error = %e, "cannot accept a connection");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            if complaints.allow() {
                tracing::warn!(%remote, limit = limits.max_handshakes, "too many TLS handshakes in flight; connection shed");
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        if let Some(idle) = limits.keepalive_idle {
            if let Err(e) = set_keepalive(&tcp, idle) {
                if complaints.allow() {
                    tracing::warn!(%remote, error = %e, "cannot turn on TCP keepalive");
                }
            }
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
        let tx = tx.clone();
        let complaints = complaints.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            match handshake.await {
                Ok(Ok(stream)) => {
                    let certs = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
                    let info = PeerInfo {
                        remote_addr: Some(remote),
                        certs,
                    };
                    let _ = tx.send(Ok(TlsIo { stream, info })).await;
                }
                Ok(Err(e)) => {
                    if complaints.allow() {
                        tracing::info!(%remote, error = %e, "TLS handshake failed");
                    }
                }
                Err(_) => {
                    if complaints.allow() {
                        tracing::info!(%remote, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
                    }
                }
            }
        });
    }
}

/// At most one log line a second for things an attacker can trigger.
#[derive(Default)]
pub struct RateLimit {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RateLimit {
    pub fn allow(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Dials TCP, then TLS with the current client config, checking the server
/// as `server_name`. tonic uses it in place of its own connector.
#[derive(Clone)]
pub struct TlsConnector {
    tls: ClientTls,
    server_name: ServerName<'static>,
}

impl TlsConnector {
    pub fn new(tls: ClientTls, server_name: &str) -> Result<Self, String> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("'{server_name}' is not a valid server name: {e}"))?;
        Ok(Self { tls, server_name })
    }
}

type ConnectFuture =
    Pin<Box<dyn std::future::Future<Output = io::Result<ClientIo>> + Send + 'static>>;
pub type ClientIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = ClientIo;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.tls.get());
        let name = self.server_name.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::other(format!("no address in {uri}")))?
                .to_string();
            let tcp = TcpStream::connect(&authority).await?;
            let _ = tcp.set_nodelay(true);
            let stream = connector.connect(name, tcp).await.map_err(explain)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The endpoint for `address` (the connector does the TLS; tonic sees an
/// `http` URI over it).
fn endpoint(address: &str) -> Result<tonic::transport::Endpoint, String> {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("'{address}' is not HOST:PORT: {e}"))
}

/// A channel to `address` over TLS, connected on first use.
pub fn lazy_channel(
    address: &str,
    connector: TlsConnector,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, String> {
    Ok(configure(endpoint(address)?).connect_with_connector_lazy(connector))
}

/// A channel to `address` over TLS, connected now (clients report a failure
/// to connect as such, not as a failed call).
pub async fn connect_channel(
    address: &str,
    connector: TlsConnector,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, String> {
    configure(endpoint(address)?)
        .connect_with_connector(connector)
        .await
        .map_err(|e| describe_connect_error(&e))
}

/// TLS failures in words an operator can act on.
fn explain(e: io::Error) -> io::Error {
    let text = e.to_string();
    let hint = if text.contains("UnknownIssuer") || text.contains("does not match the pinned") {
        "its certificate is not from the expected CA (check the token or --ca-file)"
    } else if text.contains("NotValidForName") {
        "its certificate does not name the expected server"
    } else if text.contains("Expired") {
        "its certificate has expired (or this machine's clock is off)"
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        "it does not speak TLS (an older gantry without TLS?)"
    } else if text.contains("no pinned key") {
        "its key is not the one the cluster pinned for it"
    } else {
        return e;
    };
    io::Error::new(e.kind(), format!("TLS: {hint} ({text})"))
}

/// The innermost useful message of a tonic transport error.
pub fn describe_connect_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        message = inner.to_string();
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_settings_reach_the_kernel() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!rustix::net::sockopt::socket_keepalive(&accepted).unwrap());
        set_keepalive(&accepted, Duration::from_secs(120)).unwrap();
        use rustix::net::sockopt;
        assert!(sockopt::socket_keepalive(&accepted).unwrap());
        assert_eq!(
            sockopt::tcp_keepidle(&accepted).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            sockopt::tcp_keepintvl(&accepted).unwrap(),
            KEEPALIVE_PROBE_EVERY
        );
        assert_eq!(sockopt::tcp_keepcnt(&accepted).unwrap(), KEEPALIVE_PROBES);
    }
}

//! The private-address guard at work: the check of a destination URL at creation, and
//! the resolvers and connectors that apply the same rule ([`super::address`]) at every
//! connection, for host names and IP literals alike.
//!
//! hyper's connector never asks the resolver about an IP literal, so a resolver alone
//! would let `http://10.0.0.1/` through: the connectors check literals themselves before
//! connecting, names resolve to public addresses only, and the webhook connector checks
//! the peer address of the connected socket before a byte is written, whatever led to it.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::address::{Special, special};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the check at creation may spend resolving a destination's host.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a destination URL cannot be a destination.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DestinationError {
    #[error("{0:?} is not an absolute http(s) URL")]
    InvalidUrl(String),
    #[error("the host of {0:?} does not resolve")]
    Unresolvable(String),
    #[error("resolving the host of {0:?} took longer than {RESOLVE_TIMEOUT:?}")]
    TimedOut(String),
    /// The message names the block, not the address a name resolved to: a tenant
    /// should not learn the inside of the network from the answer.
    #[error(
        "{url:?} {how} {special}, not a public address; the server must be started with --allow-private-destinations to allow it"
    )]
    PrivateAddress {
        url: String,
        how: &'static str,
        special: Special,
    },
}

/// Checks that `url` is an http(s) URL whose host is, or resolves to, public addresses
/// only (unless private destinations are allowed), so a tenant cannot make Reelay call
/// services inside its own network. Every address of a name must be public here; at
/// delivery, a name with some private addresses reaches only its public ones.
pub async fn check_destination(url: &str, allow_private: bool) -> Result<(), DestinationError> {
    let invalid = || DestinationError::InvalidUrl(url.to_owned());
    let parsed = url::Url::parse(url).map_err(|_| invalid())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid());
    }
    check_host(&parsed, allow_private).await
}

/// The same rule for the host of a URL of any scheme (a message bus's `nats://` or
/// `amqp://` URL): it is, or resolves to, public addresses only.
pub async fn check_host(parsed: &url::Url, allow_private: bool) -> Result<(), DestinationError> {
    let url = parsed.as_str();
    let invalid = || DestinationError::InvalidUrl(url.to_owned());
    let host = parsed.host().ok_or_else(invalid)?;
    if allow_private {
        return Ok(());
    }
    let refused = |how, special| DestinationError::PrivateAddress {
        url: url.to_owned(),
        how,
        special,
    };
    let name = match host {
        url::Host::Ipv4(v4) => {
            return special(IpAddr::V4(v4)).map_or(Ok(()), |s| Err(refused("is in", s)));
        }
        url::Host::Ipv6(v6) => {
            return special(IpAddr::V6(v6)).map_or(Ok(()), |s| Err(refused("is in", s)));
        }
        url::Host::Domain(name) => name,
    };
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, 0)));
    let addresses: Vec<IpAddr> = lookup
        .await
        .map_err(|_| DestinationError::TimedOut(url.to_owned()))?
        .map_err(|_| DestinationError::Unresolvable(url.to_owned()))?
        .map(|address| address.ip())
        .collect();
    if addresses.is_empty() {
        return Err(DestinationError::Unresolvable(url.to_owned()));
    }
    match addresses.iter().find_map(|address| special(*address)) {
        Some(found) => {
            tracing::info!(url, ?addresses, "destination refused: a private address");
            Err(refused("resolves to an address in", found))
        }
        None => Ok(()),
    }
}

/// Why a connection was not made (or was dropped before a byte was written).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "refused: {host} resolves to no public address (the server allows private ones only with --allow-private-destinations)"
    )]
    NoPublicAddress { host: String },
    #[error(
        "refused: {address} is in {special} (the server allows private addresses only with --allow-private-destinations)"
    )]
    Literal { address: IpAddr, special: Special },
    #[error(
        "refused: the connection to {host} reached an address in {special} (the server allows private addresses only with --allow-private-destinations)"
    )]
    Connected { host: String, special: Special },
}

/// The refusal an error was caused by, if it was. `io::Error` hides the error it
/// carries from `source()`, so it is looked into as well.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        if let Some(refused) = error
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Refused>())
        {
            return Some(refused);
        }
        cause = error.source();
    }
    None
}

/// The refusal of a URL's host when it is an IP literal outside the rule.
fn literal_refusal(host: &str) -> Option<Refused> {
    let address: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    special(address).map(|special| Refused::Literal { address, special })
}

/// The addresses `host` resolves to, less the private ones unless they are allowed; an
/// error when none is left.
async fn resolve(host: &str, allow_private: bool) -> io::Result<Vec<IpAddr>> {
    let all: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await?
        .map(|address| address.ip())
        .collect();
    let kept: Vec<IpAddr> = all
        .iter()
        .copied()
        .filter(|address| allow_private || special(*address).is_none())
        .collect();
    if kept.is_empty() {
        tracing::info!(host, addresses = ?all, "connection refused: no public address");
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            Refused::NoPublicAddress {
                host: host.to_owned(),
            },
        ));
    }
    Ok(kept)
}

/// The webhook client's DNS resolver: the system's, minus the addresses the rule
/// refuses unless private destinations are allowed.
#[derive(Clone)]
pub struct Resolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addresses = resolve(name.as_str(), allow_private).await?;
            let addresses: Vec<SocketAddr> = addresses
                .into_iter()
                .map(|address| SocketAddr::new(address, 0))
                .collect();
            Ok(addresses.into_iter())
        })
    }
}

/// The webhook client's TCP connector: hyper's, with the rule applied to IP literals
/// before connecting (hyper does not resolve them), to names through [`Resolver`], and
/// to the peer address of every connected socket.
#[derive(Clone)]
pub struct GuardedConnector {
    http: HttpConnector<Resolver>,
    allow_private: bool,
}

impl GuardedConnector {
    pub fn new(allow_private: bool) -> GuardedConnector {
        let mut http = HttpConnector::new_with_resolver(Resolver { allow_private });
        // TLS is added on top (hyper-rustls): this layer sees https URLs too.
        http.enforce_http(false);
        GuardedConnector {
            http,
            allow_private,
        }
    }

    /// hyper's connector, for its socket settings.
    pub fn http(&mut self) -> &mut HttpConnector<Resolver> {
        &mut self.http
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let allow_private = self.allow_private;
        let host = uri.host().unwrap_or_default().to_owned();
        if !allow_private && let Some(refused) = literal_refusal(&host) {
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            if !allow_private {
                let peer = io.inner().peer_addr()?;
                if let Some(special) = special(peer.ip()) {
                    tracing::warn!(%host, %peer, "connection dropped: it reached a private address");
                    return Err(Refused::Connected { host, special }.into());
                }
            }
            Ok(io)
        })
    }
}

/// The AWS SDK's HTTP client for destinations with their own `endpointUrl`: names
/// resolve through the rule, IP literals are checked before connecting.
pub mod aws {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
    use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
    use aws_smithy_runtime_api::client::http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
        SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

    use super::{literal_refusal, resolve};

    /// A client for every guarded AWS destination (one connection pool).
    pub fn http_client() -> SharedHttpClient {
        let inner = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .build_with_resolver(PublicOnly);
        SharedHttpClient::new(Guarded { inner })
    }

    #[derive(Debug, Clone)]
    struct PublicOnly;

    impl ResolveDns for PublicOnly {
        fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
            DnsFuture::new(async move { resolve(name, false).await.map_err(ResolveDnsError::new) })
        }
    }

    #[derive(Debug)]
    struct Guarded {
        inner: SharedHttpClient,
    }

    impl HttpClient for Guarded {
        fn http_connector(
            &self,
            settings: &HttpConnectorSettings,
            components: &RuntimeComponents,
        ) -> SharedHttpConnector {
            let inner = self.inner.http_connector(settings, components);
            SharedHttpConnector::new(GuardedConnector { inner })
        }

        fn connector_metadata(&self) -> Option<ConnectorMetadata> {
            self.inner.connector_metadata()
        }
    }

    #[derive(Debug)]
    struct GuardedConnector {
        inner: SharedHttpConnector,
    }

    impl HttpConnector for GuardedConnector {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            let host = url::Url::parse(request.uri())
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned));
            match host.as_deref().and_then(literal_refusal) {
                Some(refused) => {
                    HttpConnectorFuture::ready(Err(ConnectorError::other(refused.into(), None)))
                }
                None => self.inner.call(request),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_destinations_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/hook",
            "http://10.1.2.3/hook",
            "http://192.168.0.10/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://0.1.2.3/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "http://224.0.0.1/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:a00:1::1]/",
            "http://[fec0::1]/",
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            // Numeric forms the URL standard turns into 127.0.0.1.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://localhost:8080/",
        ] {
            assert!(
                matches!(
                    check_destination(url, false).await,
                    Err(DestinationError::PrivateAddress { .. })
                ),
                "{url} should be refused"
            );
            assert_eq!(check_destination(url, true).await, Ok(()));
        }
        assert!(matches!(
            check_destination("ftp://example.com/", true).await,
            Err(DestinationError::InvalidUrl(_))
        ));
        assert!(matches!(
            check_destination("not a url", true).await,
            Err(DestinationError::InvalidUrl(_))
        ));
        assert_eq!(
            check_destination("http://93.184.215.14/hook", false).await,
            Ok(())
        );
        assert_eq!(
            check_destination("http://[2606:4700:4700::1111]/hook", false).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_name_is_refused_without_naming_its_address() {
        let refused = check_destination("http://localhost:1/", false)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("127.0.0.0/8 (loopback)"), "{refused}");
        assert!(!refused.contains("127.0.0.1"), "{refused}");
    }

    /// A listener on 127.0.0.1 that records the peer port of each connection it
    /// accepts, in order.
    async fn recording_listener() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u16>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer.port());
                drop(socket);
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn the_connector_refuses_literals_and_names_before_connecting() {
        use tower_service::Service;
        let (port, accepted) = recording_listener().await;
        for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost"] {
            let uri: Uri = format!("http://{host}:{port}/").parse().unwrap();
            let mut connector = GuardedConnector::new(false);
            let error = match connector.call(uri).await {
                Ok(_) => panic!("{host}: connected"),
                Err(error) => error,
            };
            assert!(refusal_in(&*error).is_some(), "{host}: {error}");
        }
        // Allowed, the same connector connects; the listener accepts in arrival order,
        // so once it has seen this connection it would have seen any earlier one.
        let uri: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let allowed = GuardedConnector::new(true).call(uri).await.unwrap();
        let own_port = allowed.inner().local_addr().unwrap().port();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !accepted.lock().unwrap().contains(&own_port) {
            assert!(tokio::time::Instant::now() < deadline, "never accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*accepted.lock().unwrap(), vec![own_port]);
    }
}

//! The exporter's HTTP client: the server's own `reqwest`, its requests run on the
//! server's Tokio runtime. The batch span processor exports from a thread of its own,
//! where no runtime runs, so each request is spawned onto the runtime and awaited there.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use tokio::runtime::Handle;

/// The most one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(super) struct Client {
    http: reqwest::Client,
    runtime: Handle,
}

impl Client {
    pub(super) fn new(runtime: Handle) -> Result<Client, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
        Ok(Client { http, runtime })
    }
}

impl HttpClient for Client {
    // The trait is `#[async_trait]`: this is the signature it expands to.
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let http = self.http.clone();
        let call = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut answer = Response::builder().status(status).body(body)?;
            *answer.headers_mut() = headers;
            Ok::<_, HttpError>(answer)
        });
        Box::pin(async move { call.await.map_err(|error| Box::new(error) as HttpError)? })
    }
}

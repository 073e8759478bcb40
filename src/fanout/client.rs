//! The connection to Pub/Sub: google-cloud-googleapis's generated gRPC clients over one
//! HTTP/2 channel, with Application Default Credentials, or the emulator protocol.
//!
//! As Google's own client libraries do, `PUBSUB_EMULATOR_HOST=host:port` switches to the
//! emulator: plaintext HTTP/2 to that address and no credentials. Otherwise the channel goes to
//! `pubsub.googleapis.com:443` (or `$MESHDNS_PUBSUB_ENDPOINT`, e.g. a regional endpoint) over
//! TLS and every call carries an OAuth token from Application Default Credentials (gcp_auth: `GOOGLE_APPLICATION_CREDENTIALS` key file,
//! gcloud's user credentials, or the metadata server, which is Workload Identity on GKE).

use std::sync::Arc;
use std::time::Duration;

use google_cloud_googleapis::pubsub::v1::publisher_client::PublisherClient;
use google_cloud_googleapis::pubsub::v1::subscriber_client::SubscriberClient;
use tokio::sync::OnceCell;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

const ENDPOINT: &str = "https://pubsub.googleapis.com";
const DOMAIN: &str = "pubsub.googleapis.com";
/// Overrides [`ENDPOINT`] (credentials are sent all the same).
pub const ENDPOINT_ENV: &str = "MESHDNS_PUBSUB_ENDPOINT";
const SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
/// Pub/Sub's own limit for one publish request and one message.
pub const MAX_REQUEST_BYTES: usize = 10_000_000;

/// A cheap-to-clone handle on the Pub/Sub API.
#[derive(Clone)]
pub struct PubSub {
    channel: Channel,
    /// `None`: the emulator (no credentials).
    auth: Option<Arc<dyn gcp_auth::TokenProvider>>,
    target: Arc<str>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PubSub({})", self.target)
    }
}

/// Credentials are looked up once per process: they do not change while it runs.
static ADC: OnceCell<Arc<dyn gcp_auth::TokenProvider>> = OnceCell::const_new();

impl PubSub {
    /// Connects as the environment says. The channel connects lazily (and reconnects by
    /// itself), so a Pub/Sub outage at start is an error of the first call, not of this.
    pub async fn from_env() -> Result<PubSub, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(host) = env("PUBSUB_EMULATOR_HOST") {
            return PubSub::emulator(host.trim());
        }
        let auth = ADC
            .get_or_try_init(gcp_auth::provider)
            .await
            .map_err(|e| format!("Application Default Credentials: {e}"))?
            .clone();
        // Another endpoint: a regional one, or Private Service Connect (`https://…`); the
        // tests give a plaintext `http://` one to check the credentials sent.
        let url = env(ENDPOINT_ENV).unwrap_or_else(|| ENDPOINT.to_string());
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("{ENDPOINT_ENV}={url:?}: {e}"))?;
        if let Some(domain) = url.strip_prefix("https://") {
            let domain = domain
                .split([':', '/'])
                .next()
                .unwrap_or(DOMAIN)
                .to_string();
            endpoint = endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .with_webpki_roots()
                        .domain_name(domain.clone()),
                )
                .map_err(|e| format!("TLS for {domain}: {e}"))?;
        }
        Ok(PubSub {
            channel: tune(endpoint).connect_lazy(),
            auth: Some(auth),
            target: url.into(),
        })
    }

    /// Plaintext, unauthenticated: the emulator (or the tests' fake) at `host:port`.
    pub fn emulator(host: &str) -> Result<PubSub, String> {
        let endpoint = Endpoint::from_shared(format!("http://{host}"))
            .map_err(|e| format!("PUBSUB_EMULATOR_HOST={host:?}: {e}"))?;
        Ok(PubSub {
            channel: tune(endpoint).connect_lazy(),
            auth: None,
            target: host.into(),
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn publisher(&self) -> PublisherClient<Channel> {
        PublisherClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    pub fn subscriber(&self) -> SubscriberClient<Channel> {
        SubscriberClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    /// `message` as a request, with a bearer token unless this is the emulator.
    pub async fn request<T>(&self, message: T) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        if let Some(auth) = &self.auth {
            let token = auth
                .token(&[SCOPE])
                .await
                .map_err(|e| Status::unauthenticated(format!("no access token: {e}")))?;
            let value = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| Status::unauthenticated("access token is not a header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

fn tune(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
}

/// Whether a failed call is worth retrying as it is (the service, not the request, failed).
pub fn retryable(status: &Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | Internal
            | Unknown
            | Cancelled
    )
}

//! `fetch` from code: the host makes each request under the egress policy ([`NetPolicy`]).
//!
//! Nothing is reachable unless `--allow-net` names it, or `--ask-net` does and the client's
//! user says yes (asked once per host per run, [`crate::approval`]). A request's URL is checked before it
//! is sent, and so is every redirect it follows; a name is resolved by the host and every
//! address of it checked before a connection is made (so a name that resolves, or later
//! re-resolves, to 127.0.0.1 or 169.254.169.254 reaches nothing); IP addresses outside the
//! public internet are reached only when named. Secrets stay in the host: code writes a
//! placeholder, the host fills it in on requests to the secret's hosts only, and puts the
//! placeholder back wherever the value comes back. Each run has its own count of requests
//! and of requests in flight ([`RunNet`]); each request its timeout and response size.

pub mod policy;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::Semaphore;

use crate::approval::{self, Ask, RunApprovals};
use crate::metrics::FetchMetrics;

use crate::host_call::{
    FetchRequest, FetchResponse, HostError, HostErrorKind, HostReply, PendingReply, Redirect,
};
pub use policy::{HostPattern, NetPolicy, Reach, Secret, Secrets, PLACEHOLDER_PREFIX};

/// Most redirects one request follows.
const MAX_REDIRECTS: usize = 20;

/// The limits of the network's use.
#[derive(Debug, Clone)]
pub struct NetLimits {
    /// Most requests one run may make.
    pub requests_per_run: usize,
    /// Most requests of one run in flight at once.
    pub concurrent_requests: usize,
    /// Longest one request may take, redirects and body included.
    pub timeout: Duration,
    /// Largest response body.
    pub response_bytes: usize,
}

/// The host's side of `fetch`: the policy, the secrets, the limits and one HTTP client.
pub struct Net {
    policy: Arc<NetPolicy>,
    secrets: Secrets,
    limits: NetLimits,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>,
    metrics: FetchMetrics,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("policy", &self.policy)
            .field("secrets", &self.secrets)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Resolves names for the client and refuses, before any connection, a name with an address
/// the policy refuses.
#[derive(Clone, Debug)]
struct Resolver {
    policy: Arc<NetPolicy>,
}

/// A name resolved to an address the policy refuses.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for address in &addresses {
                let ip: IpAddr = address.ip();
                if let Some(kind) = policy.refuses_address(ip) {
                    return Err(Box::new(Refused(format!(
                        "{host} resolves to {ip}, {kind}, which --allow-net-addresses does not allow"
                    ))) as Self::Error);
                }
            }
            Ok(addresses.into_iter())
        })
    }
}

impl Net {
    /// The network as `policy` allows it, with `secrets` and `limits`.
    pub fn new(policy: NetPolicy, secrets: Secrets, limits: NetLimits) -> Self {
        let policy = Arc::new(policy);
        let mut http = HttpConnector::new_with_resolver(Resolver {
            policy: Arc::clone(&policy),
        });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(limits.timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_native_roots() {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(
                    "fetch: no trusted root certificates found ({e}); https requests will fail"
                );
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            }
        };
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            policy,
            secrets,
            limits,
            client,
            metrics: FetchMetrics::default(),
        }
    }

    /// The hosts code may reach, as `--allow-net` named them.
    pub fn hosts(&self) -> Vec<String> {
        self.policy.allow.iter().map(ToString::to_string).collect()
    }

    /// The hosts code may reach once a person says yes, as `--ask-net` named them.
    pub fn asked_hosts(&self) -> Vec<String> {
        self.policy.ask.iter().map(ToString::to_string).collect()
    }

    /// Whether the policy leaves any host to a person (`--ask-net`).
    pub fn asks(&self) -> bool {
        !self.policy.ask.is_empty()
    }

    /// What was counted about requests.
    pub fn metrics(&self) -> &FetchMetrics {
        &self.metrics
    }

    /// The secrets' names.
    pub fn secret_names(&self) -> Vec<String> {
        self.secrets.names().map(str::to_string).collect()
    }

    /// A run's way to the network: its own count of requests, and its answers about hosts
    /// left to a person, asked through `approvals`.
    pub fn for_run(self: &Arc<Self>, approvals: Option<RunApprovals>) -> RunNet {
        RunNet {
            net: Arc::clone(self),
            requests: AtomicUsize::new(0),
            in_flight: Arc::new(Semaphore::new(self.limits.concurrent_requests)),
            gate: Arc::new(Gate {
                approvals,
                decided: tokio::sync::Mutex::default(),
            }),
        }
    }

    /// Makes `request` and its redirects within the time limit (not counting the time a
    /// person takes to answer `gate`'s questions); every failure names what refused it.
    async fn fetch(&self, request: FetchRequest, gate: &Gate) -> Result<FetchResponse, HostError> {
        let denied = |message: String| HostError::new(HostErrorKind::Denied, message);
        let invalid = |message: String| HostError::new(HostErrorKind::Invalid, message);
        let timeout = self.limits.timeout;
        let late = |_| {
            HostError::new(
                HostErrorKind::Timeout,
                format!("no complete response in {timeout:?} (--fetch-timeout-secs)"),
            )
        };
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut url =
            url::Url::parse(&request.url).map_err(|e| invalid(format!("bad URL: {e}")))?;
        let mut method = hyper::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| invalid(format!("{:?} is not a method", request.method)))?;
        let mut headers = request.headers;
        let mut body = Bytes::from(request.body);
        let first_origin = url.origin();
        for hop in 0..=MAX_REDIRECTS {
            match self.policy.reach(&url) {
                Reach::Allowed => {}
                Reach::Ask(host) => {
                    let asked = tokio::time::Instant::now();
                    gate.pass(&host, &method, &url, hop > 0).await?;
                    deadline += asked.elapsed();
                }
                Reach::Refused(why) => {
                    return Err(denied(if hop == 0 {
                        why
                    } else {
                        format!("a redirect to {url}: {why}")
                    }));
                }
            }
            let uri: hyper::Uri = url
                .as_str()
                .parse()
                .map_err(|e| invalid(format!("bad URL: {e}")))?;
            let mut builder = hyper::Request::builder().method(method.clone()).uri(uri);
            let mut has = (false, false);
            for (name, value) in &headers {
                if FORBIDDEN.contains(&name.as_str()) {
                    continue;
                }
                has.0 |= name == "user-agent";
                has.1 |= name == "accept";
                let value = self.secrets.fill(value, &url).map_err(denied)?;
                let value = hyper::header::HeaderValue::from_bytes(&latin1(&value))
                    .map_err(|_| invalid(format!("the value of header {name} is not valid")))?;
                builder = builder.header(name.as_str(), value);
            }
            if !has.0 {
                builder =
                    builder.header("user-agent", concat!("mcp-v8/", env!("CARGO_PKG_VERSION")));
            }
            if !has.1 {
                builder = builder.header("accept", "*/*");
            }
            let outgoing = builder
                .body(Full::new(body.clone()))
                .map_err(|e| invalid(format!("bad request: {e}")))?;
            let response = tokio::time::timeout_at(deadline, self.client.request(outgoing))
                .await
                .map_err(late)?
                .map_err(|e| self.failure(&url, &e))?;
            let status = response.status();
            let location = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string);
            if status.is_redirection() && location.is_some() && request.redirect != Redirect::Manual
            {
                let Some(location) = location else { break };
                let next = url.join(&location).map_err(|e| {
                    HostError::new(
                        HostErrorKind::Protocol,
                        format!("a redirect to a bad URL: {e}"),
                    )
                })?;
                if request.redirect == Redirect::Error {
                    return Err(HostError::new(
                        HostErrorKind::Protocol,
                        format!("the server redirects to {next}, and redirect is \"error\""),
                    ));
                }
                // As the fetch standard does: 303 (and 301/302 after a POST) go on as GET
                // without a body; credentials do not go to another origin.
                let code = status.as_u16();
                if (code == 303 && method != hyper::Method::HEAD)
                    || ((code == 301 || code == 302) && method == hyper::Method::POST)
                {
                    method = hyper::Method::GET;
                    body = Bytes::new();
                    headers.retain(|(n, _)| !n.starts_with("content-"));
                }
                if next.origin() != first_origin {
                    headers.retain(|(n, _)| {
                        !matches!(
                            n.as_str(),
                            "authorization" | "cookie" | "proxy-authorization"
                        )
                    });
                }
                url = next;
                continue;
            }
            let read = self.read(response, &url, hop > 0);
            return tokio::time::timeout_at(deadline, read)
                .await
                .map_err(late)?;
        }
        Err(HostError::new(
            HostErrorKind::Protocol,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    /// Reads a response to its end, within the size limit, with the secrets taken out.
    async fn read(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
        url: &url::Url,
        redirected: bool,
    ) -> Result<FetchResponse, HostError> {
        let limit = self.limits.response_bytes;
        let too_large = || {
            HostError::new(
                HostErrorKind::TooLarge,
                format!(
                    "the response is larger than {} (--fetch-response-bytes)",
                    crate::storage::human_bytes(limit as u64)
                ),
            )
        };
        let (parts, mut incoming) = response.into_parts();
        let announced = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| self.failure(url, &e))?;
            if let Ok(data) = frame.into_data() {
                if body.len() + data.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&data);
            }
        }
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = value.as_bytes().iter().map(|&b| char::from(b)).collect();
                (name.as_str().to_string(), self.secrets.redact_text(value))
            })
            .collect();
        Ok(FetchResponse {
            status: parts.status.as_u16(),
            status_text: parts.status.canonical_reason().unwrap_or("").to_string(),
            url: self.secrets.redact_text(url.to_string()),
            redirected,
            headers,
            body: self.secrets.redact(body),
        })
    }

    /// A client error as the code sees it: a refusal by the resolver names its rule.
    fn failure(&self, url: &url::Url, error: &(dyn std::error::Error + 'static)) -> HostError {
        let mut source = Some(error);
        let mut deepest = error.to_string();
        while let Some(e) = source {
            if let Some(refused) = e.downcast_ref::<Refused>() {
                return HostError::new(HostErrorKind::Denied, refused.0.clone());
            }
            deepest = e.to_string();
            source = e.source();
        }
        let host = url.host_str().unwrap_or("");
        HostError::new(
            HostErrorKind::Unavailable,
            self.secrets.redact_text(format!("{host}: {deepest}")),
        )
    }
}

/// Headers the host sets itself, or that belong to a connection, not a request.
const FORBIDDEN: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// A header value as bytes: code's header values are byte strings (each character below
/// 256, checked by `Headers`), secrets' values UTF-8.
fn latin1(value: &str) -> Vec<u8> {
    if value.chars().all(|c| u32::from(c) < 256) {
        value.chars().map(|c| c as u8).collect()
    } else {
        value.as_bytes().to_vec()
    }
}

/// One run's way to the network: counts its requests and keeps to the limits.
#[derive(Debug)]
pub struct RunNet {
    net: Arc<Net>,
    requests: AtomicUsize,
    in_flight: Arc<Semaphore>,
    gate: Arc<Gate>,
}

/// One run's answers about the hosts left to a person (`--ask-net`): each host is asked about
/// once, and the answer holds for the rest of the run.
#[derive(Debug)]
struct Gate {
    approvals: Option<RunApprovals>,
    /// Each host asked about (`host:port`), and the answer. Held while asking, so that the
    /// run's other requests wait for the one answer rather than ask again.
    decided: tokio::sync::Mutex<HashMap<String, Result<(), HostError>>>,
}

impl Gate {
    /// Lets a request (`method` to `url`, a redirect if `redirected`) go to `host` once a
    /// person has said yes to it in this run.
    async fn pass(
        &self,
        host: &str,
        method: &hyper::Method,
        url: &url::Url,
        redirected: bool,
    ) -> Result<(), HostError> {
        let mut decided = self.decided.lock().await;
        if let Some(decision) = decided.get(host) {
            return decision.clone().map_err(|e| HostError {
                message: format!("{} (asked earlier in this run)", e.message),
                ..e
            });
        }
        let target = approval::shown(&format!("{method} {url}"));
        let what = if redirected {
            "follow a redirect to"
        } else {
            "fetch"
        };
        let ask = Ask {
            action: format!("{what} `{target}` (a yes lets this run reach {host})"),
            by: "--ask-net",
            allow: format!("--allow-net {host}"),
        };
        let decision = approval::approve(self.approvals.as_ref(), &ask).await;
        decided.insert(host.to_string(), decision.clone());
        decision
    }
}

impl RunNet {
    /// Makes `request`; the future resolves to its reply.
    pub fn fetch(&self, request: FetchRequest) -> PendingReply {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let net = Arc::clone(&self.net);
        let in_flight = Arc::clone(&self.in_flight);
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            let limits = &net.limits;
            if n > limits.requests_per_run {
                net.metrics
                    .record(HostErrorKind::Denied.as_str(), Duration::ZERO);
                return HostReply::Failed(HostError::new(
                    HostErrorKind::Denied,
                    format!(
                        "this run has made its {} requests (--fetch-requests-per-run)",
                        limits.requests_per_run
                    ),
                ));
            }
            let Ok(_slot) = in_flight.acquire_owned().await else {
                return HostReply::Failed(HostError::new(
                    HostErrorKind::Unavailable,
                    "the server is stopping",
                ));
            };
            let started = Instant::now();
            let method = request.method.clone();
            let target = request.url.clone();
            let result = net.fetch(request, &gate).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.kind.as_str(),
            };
            net.metrics.record(outcome, started.elapsed());
            match &result {
                Ok(response) => tracing::debug!(
                    "fetch {method} {target}: {} in {:?}",
                    response.status,
                    started.elapsed()
                ),
                Err(e) => tracing::info!("fetch {method} {target}: {}", e.message),
            }
            match result {
                Ok(response) => HostReply::Response(response),
                Err(e) => HostReply::Failed(e),
            }
        })
    }
}

//! Who may talk to the HTTP transports: `Host` and `Origin` checks against DNS rebinding and
//! hostile web pages, then who the caller is: the static bearer token (the server's own
//! heaps), an OAuth access token (a tenant's heaps, [`super::oauth`]), or, with neither
//! configured, anyone (the server's own heaps). The owner found is put on the request for the
//! tools; a tenant's request also needs the scope its method calls for. One policy, applied
//! to both transports.
//!
//! Browser pages on an allowed origin get CORS: a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here, before the token check (browsers send
//! no credentials with it), and every answer to an allowed origin names it in
//! `Access-Control-Allow-Origin` and exposes `Mcp-Session-Id`. Other origins get 403.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::oauth::{Grant, OAuth, TokenError, SCOPE_READ, SCOPE_WRITE};
use crate::runtime::Owner;

/// The access policy.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// Acceptable `Host` values: names (any port) or `name:port`.
    pub allowed_hosts: Vec<String>,
    /// Acceptable `Origin` values: `scheme://host:port`, or `scheme://host:*` for any port.
    /// Requests without `Origin` (not from a browser) are not affected.
    pub allowed_origins: Vec<String>,
    /// The static bearer token: it grants the server's own heaps.
    pub token: Option<String>,
    /// OAuth access tokens: each grants its tenant's heaps.
    pub oauth: Option<Arc<OAuth>>,
    /// Largest request body (a tenant's is read to learn the scope it needs).
    pub max_body_bytes: usize,
    /// Who opened each session.
    pub sessions: Arc<SessionOwners>,
}

/// Host names that mean this machine.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl AccessPolicy {
    /// The defaults for a server bound to `bind`: loopback names, plus `bind` itself when it
    /// is a specific address; browser pages served from loopback.
    pub fn defaults(bind: &str) -> (Vec<String>, Vec<String>) {
        let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
        let bind = bracket_ipv6(bind);
        if !hosts.contains(&bind) && bind != "0.0.0.0" && bind != "[::]" {
            hosts.push(bind);
        }
        let origins = LOOPBACK_HOSTS
            .iter()
            .flat_map(|h| [format!("http://{h}:*"), format!("https://{h}:*")])
            .collect();
        (hosts, origins)
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let name = strip_port(&host);
        self.allowed_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            allowed == host || (strip_port(&allowed) == allowed && allowed == name)
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        let (without_port, _) = split_origin_port(&origin);
        self.allowed_origins.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match allowed.strip_suffix(":*") {
                Some(prefix) => prefix == without_port,
                None => allowed == origin,
            }
        })
    }

    /// Who the request's credentials name, with what scopes.
    async fn grant(&self, headers: &HeaderMap) -> Result<Grant, TokenError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty());
        if let (Some(token), Some(presented)) = (&self.token, presented) {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Ok(Grant::server());
            }
        }
        match (&self.oauth, presented) {
            (Some(oauth), Some(presented)) => oauth.verify(presented).await,
            (Some(_), None) => Err(TokenError::Missing),
            (None, _) if self.token.is_some() => Err(TokenError::Invalid(
                "the bearer token is not this server's".into(),
            )),
            (None, _) => Ok(Grant::server()),
        }
    }

    /// The answer to a request without acceptable credentials (401) or scope (403): with
    /// OAuth, a `WWW-Authenticate` challenge that points at the resource's metadata.
    fn refusal(&self, status: StatusCode, error: Option<(&str, String)>) -> Response {
        let Some(oauth) = &self.oauth else {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a valid bearer token is required (Authorization: Bearer <token>)",
            )
                .into_response();
        };
        let quote = |s: &str| s.replace(['"', '\\'], "'");
        let mut challenge = format!(
            "Bearer resource_metadata=\"{}\", scope=\"{SCOPE_READ} {SCOPE_WRITE}\"",
            oauth.metadata_url()
        );
        let body = match &error {
            Some((code, description)) => {
                challenge.push_str(&format!(
                    ", error=\"{code}\", error_description=\"{}\"",
                    quote(description)
                ));
                description.clone()
            }
            None => "a bearer token is required: see the resource metadata".to_string(),
        };
        let mut response = (status, body).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The scope an MCP request needs: `heaps:write` to call a tool that runs code or changes
/// heaps, `heaps:read` for anything else.
fn scope_needed(method: &axum::http::Method, body: &[u8]) -> &'static str {
    if method != axum::http::Method::POST {
        return SCOPE_READ;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return SCOPE_READ;
    };
    let messages = match value {
        serde_json::Value::Array(messages) => messages,
        message => vec![message],
    };
    let writes = messages.iter().any(|message| {
        message.get("method").and_then(|m| m.as_str()) == Some("tools/call")
            && message
                .pointer("/params/name")
                .and_then(|name| name.as_str())
                .is_none_or(|name| crate::server::WRITE_TOOLS.contains(&name))
    });
    if writes {
        SCOPE_WRITE
    } else {
        SCOPE_READ
    }
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `example.com:80` → `example.com`, `[::1]:80` → `[::1]`.
fn strip_port(authority: &str) -> &str {
    if let Some(end) = authority.find(']') {
        return &authority[..=end];
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(name, _)| name)
}

/// `http://h:1` → (`http://h`, Some(`1`)).
fn split_origin_port(origin: &str) -> (&str, Option<&str>) {
    let after_scheme = origin.find("://").map_or(0, |i| i + 3);
    let authority = &origin[after_scheme..];
    let name = strip_port(authority);
    if name.len() == authority.len() {
        (origin, None)
    } else {
        (
            &origin[..after_scheme + name.len()],
            Some(&authority[name.len() + 1..]),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The middleware: checks `Host`, then `Origin`, then the token.
pub async fn check(
    State(policy): State<Arc<AccessPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    // Several Host (or Origin, or Authorization) headers are never legitimate, and servers
    // and proxies disagree on which one counts: refuse rather than pick.
    for name in [header::HOST, header::ORIGIN, header::AUTHORIZATION] {
        if headers.get_all(&name).iter().nth(1).is_some() {
            tracing::warn!(header = %name, "refused a request with a repeated header");
            return (
                StatusCode::BAD_REQUEST,
                format!("the request has more than one {name} header"),
            )
                .into_response();
        }
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !policy.host_allowed(host) {
        tracing::warn!(host, "refused a request for a host that is not allowed");
        return (
            StatusCode::FORBIDDEN,
            format!("Host '{host}' is not allowed (see --allowed-hosts)"),
        )
            .into_response();
    }
    let origin = headers.get(header::ORIGIN).cloned();
    if let Some(origin) = &origin {
        let origin = origin.to_str().unwrap_or("");
        if !policy.origin_allowed(origin) {
            tracing::warn!(
                origin,
                "refused a request from an origin that is not allowed"
            );
            return (
                StatusCode::FORBIDDEN,
                format!("Origin '{origin}' is not allowed (see --allowed-origins)"),
            )
                .into_response();
        }
    }
    let preflight = request.method() == axum::http::Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if let (Some(origin), true) = (&origin, preflight) {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let cors = response.headers_mut();
        allow(cors, origin);
        cors.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        cors.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Authorization, Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, \
                 Last-Event-ID",
            ),
        );
        cors.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return response;
    }
    let mut response = match policy.grant(headers).await {
        Ok(grant) => admit(&policy, grant, request, next).await,
        Err(TokenError::Missing) => policy.refusal(StatusCode::UNAUTHORIZED, None),
        Err(TokenError::Invalid(why)) => {
            tracing::info!("refused a request with a token that is not valid: {why}");
            policy.refusal(StatusCode::UNAUTHORIZED, Some(("invalid_token", why)))
        }
    };
    if let Some(origin) = &origin {
        let cors = response.headers_mut();
        allow(cors, origin);
        cors.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            // A page's MCP client reads the 401's challenge to find the resource metadata.
            HeaderValue::from_static("Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate"),
        );
    }
    response
}

/// Passes on a request whose credentials were accepted, naming its owner, once a tenant's
/// request is seen to have the scope it needs (`/metrics` is the server's alone).
async fn admit(policy: &AccessPolicy, grant: Grant, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if grant.owner != Owner::Server {
        if parts.uri.path() == "/metrics" {
            return (
                StatusCode::FORBIDDEN,
                "/metrics is for the server's operator (the static --auth-token)",
            )
                .into_response();
        }
        let bytes = match axum::body::to_bytes(body, policy.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(e) => {
                return (StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}"))
                    .into_response()
            }
        };
        let needed = scope_needed(&parts.method, &bytes);
        if !grant.allows(needed) {
            tracing::info!(
                scope = needed,
                "refused a request whose token lacks a scope"
            );
            return policy.refusal(
                StatusCode::FORBIDDEN,
                Some((
                    "insufficient_scope",
                    format!("this request needs the scope '{needed}', which the token lacks"),
                )),
            );
        }
        let request = Request::from_parts(parts, axum::body::Body::from(bytes));
        return in_session(policy, grant.owner, request, next).await;
    }
    in_session(policy, grant.owner, Request::from_parts(parts, body), next).await
}

/// Passes on a request for `owner`, unless it names a Streamable HTTP session another owner
/// opened (answered as if there were no such session); remembers who opens a session.
async fn in_session(
    policy: &AccessPolicy,
    owner: Owner,
    mut request: Request,
    next: Next,
) -> Response {
    let session = request
        .headers()
        .get(SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = &session {
        if policy
            .sessions
            .owner(id)
            .is_some_and(|opener| opener != owner)
        {
            tracing::info!("refused a request for a session another owner opened");
            return (StatusCode::NOT_FOUND, "no such session").into_response();
        }
    }
    request.extensions_mut().insert(owner.clone());
    let response = next.run(request).await;
    if session.is_none() {
        if let Some(id) = response
            .headers()
            .get(SESSION_ID)
            .and_then(|v| v.to_str().ok())
        {
            policy.sessions.opened(id, owner);
        }
    }
    response
}

const SESSION_ID: &str = "mcp-session-id";

/// Who opened each Streamable HTTP session (2025-11-25 sessions), the most recent ones: a
/// session's id is good only with its opener's credentials.
#[derive(Debug)]
pub struct SessionOwners(std::sync::Mutex<lru::LruCache<String, Owner>>);

impl Default for SessionOwners {
    fn default() -> Self {
        let most = std::num::NonZeroUsize::new(100_000).unwrap_or(std::num::NonZeroUsize::MIN);
        Self(std::sync::Mutex::new(lru::LruCache::new(most)))
    }
}

impl SessionOwners {
    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, Owner>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn owner(&self, id: &str) -> Option<Owner> {
        self.lock().get(id).cloned()
    }

    fn opened(&self, id: &str, owner: Owner) {
        self.lock().put(id.to_string(), owner);
    }
}

/// Lets the page at `origin` (an allowed one) read the answer.
fn allow(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(token: Option<&str>) -> AccessPolicy {
        let (allowed_hosts, allowed_origins) = AccessPolicy::defaults("127.0.0.1");
        AccessPolicy {
            allowed_hosts,
            allowed_origins,
            token: token.map(Into::into),
            oauth: None,
            max_body_bytes: 1 << 20,
            sessions: Arc::default(),
        }
    }

    #[test]
    fn loopback_hosts_on_any_port_by_default() {
        let p = policy(None);
        for host in [
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:3000",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert!(p.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "127.0.0.2:80",
            "localhost.evil.example",
            "",
        ] {
            assert!(!p.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn explicit_hosts_may_pin_a_port() {
        let p = AccessPolicy {
            allowed_hosts: vec!["mcp.example.com:443".into(), "internal".into()],
            allowed_origins: vec![],
            ..policy(None)
        };
        assert!(p.host_allowed("mcp.example.com:443"));
        assert!(!p.host_allowed("mcp.example.com:444"));
        assert!(p.host_allowed("internal:9000"));
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let p = policy(None);
        assert!(p.origin_allowed("http://localhost:6274"));
        assert!(p.origin_allowed("https://127.0.0.1:443"));
        assert!(!p.origin_allowed("http://evil.example"));
        assert!(!p.origin_allowed("http://localhost.evil.example:80"));
        assert!(!p.origin_allowed("null"));
        let exact = AccessPolicy {
            allowed_hosts: vec![],
            allowed_origins: vec!["https://app.example.com".into()],
            ..policy(None)
        };
        assert!(exact.origin_allowed("https://app.example.com"));
        assert!(!exact.origin_allowed("https://app.example.com:8443"));
    }

    #[tokio::test]
    async fn tokens_compare_exactly() {
        let p = policy(Some("s3cret"));
        let mut headers = HeaderMap::new();
        assert!(p.grant(&headers).await.is_err());
        headers.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(p.grant(&headers).await.is_err());
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(p.grant(&headers).await, Ok(Grant::server()));
        assert_eq!(
            policy(None).grant(&HeaderMap::new()).await,
            Ok(Grant::server())
        );
    }

    #[test]
    fn tools_that_run_code_or_change_heaps_need_write() {
        let post = axum::http::Method::POST;
        let call = |name: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#
            )
        };
        for tool in ["run_js", "copy_heap", "delete_heap"] {
            assert_eq!(
                scope_needed(&post, call(tool).as_bytes()),
                SCOPE_WRITE,
                "{tool}"
            );
        }
        for tool in ["list_heaps", "heap_history", "storage_stats", "read_output"] {
            assert_eq!(
                scope_needed(&post, call(tool).as_bytes()),
                SCOPE_READ,
                "{tool}"
            );
        }
        let batch = format!("[{}, {}]", call("list_heaps"), call("run_js"));
        assert_eq!(scope_needed(&post, batch.as_bytes()), SCOPE_WRITE);
        let nameless = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#;
        assert_eq!(scope_needed(&post, nameless.as_bytes()), SCOPE_WRITE);
        assert_eq!(scope_needed(&axum::http::Method::GET, b""), SCOPE_READ);
    }
}

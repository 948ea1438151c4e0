//! The HTTP transports as an OAuth 2.1 resource server: access tokens are JWTs an
//! authorisation server signed, checked against its published keys (a JWKS found through its
//! metadata, RFC 8414 or OpenID discovery, or read from a file), for this server's resource
//! URL as audience (RFC 8707), its issuer, their expiry and not-before (with a small leeway),
//! and the scopes a request needs. The tenant is the token's subject, or another claim.
//! Clients find the authorisation server in this server's Protected Resource Metadata
//! (RFC 9728), which 401 answers point at.
//!
//! Keys are cached: a token whose key id is unknown makes one reload (at most one a second),
//! and the set is reloaded when older than [`KEYS_MAX_AGE`], so a rotation at the issuer is
//! followed without a restart. A reload that fails keeps the keys there were. Tokens that
//! passed are remembered until they expire or the keys are reloaded, so a client's next
//! request costs a lookup, not a signature check.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::runtime::{Owner, Tenant};
use crate::start::StartError;

/// The scope to read heaps (list, history, resources, completions, stats).
pub const SCOPE_READ: &str = "heaps:read";
/// The scope to run code and change heaps (`run_js`, `copy_heap`, `delete_heap`).
pub const SCOPE_WRITE: &str = "heaps:write";

/// Reload the keys when they are older than this.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// At most one reload for an unknown key id this often.
const RELOAD_COOLDOWN: Duration = Duration::from_secs(1);
/// Largest metadata document or key set read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Time for one request to the authorisation server.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Tokens remembered as checked, at most.
const VERIFIED: usize = 10_000;

/// Signatures accepted: asymmetric ones only (a shared secret would let anyone holding the
/// key set sign).
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The authorisation server's issuer identifier (`iss`).
    pub issuer: String,
    /// This server's resource URL as clients reach it (`aud`).
    pub resource: String,
    /// Where the keys are: `None` to discover them from the issuer.
    pub jwks_file: Option<PathBuf>,
    /// The claim that names the tenant.
    pub tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Where the keys come from.
#[derive(Debug)]
enum KeySource {
    Url(String),
    File(PathBuf),
}

#[derive(Debug)]
struct Keys {
    set: Vec<Jwk>,
    loaded: Instant,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No bearer token was sent.
    #[error("a bearer token is required")]
    Missing,
    /// The token is not valid for this server.
    #[error("{0}")]
    Invalid(String),
}

/// A token accepted: whose heaps its requests see, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The tenant, or the server for the static token.
    pub owner: Owner,
    /// The scopes granted.
    pub scopes: HashSet<String>,
}

impl Grant {
    /// The static `--auth-token`: the server's own heaps, every scope.
    pub fn server() -> Self {
        Self {
            owner: Owner::Server,
            scopes: [SCOPE_READ, SCOPE_WRITE].map(String::from).into(),
        }
    }

    /// Whether it allows `scope`.
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A token that passed: what it grants, and the times it is good between (Unix seconds).
#[derive(Debug, Clone)]
struct Verified {
    grant: Grant,
    not_before: u64,
    expires: u64,
}

/// The resource server's token checks.
pub struct OAuth {
    settings: OAuthSettings,
    source: KeySource,
    keys: Mutex<Keys>,
    client: HttpClient,
    verified: std::sync::Mutex<lru::LruCache<String, Verified>>,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("settings", &self.settings)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl OAuth {
    /// Finds the keys (discovery, or the file) and loads them: a server that cannot check
    /// tokens does not start.
    pub async fn start(settings: OAuthSettings) -> Result<Self, StartError> {
        let config = |message: String| StartError::Config(message);
        for (flag, value) in [
            ("--oauth-issuer", &settings.issuer),
            ("--oauth-resource", &settings.resource),
        ] {
            let url = url::Url::parse(value)
                .map_err(|e| config(format!("{flag} '{value}' is not a URL: {e}")))?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err(config(format!("{flag} '{value}' must be an http(s) URL")));
            }
        }
        let client = http_client();
        let source = match &settings.jwks_file {
            Some(path) => KeySource::File(path.clone()),
            None => KeySource::Url(discover(&client, &settings.issuer).await.map_err(config)?),
        };
        let set = load(&client, &source).await.map_err(config)?;
        tracing::info!(
            issuer = %settings.issuer,
            resource = %settings.resource,
            keys = set.len(),
            "OAuth: accepting tokens of this issuer for this resource"
        );
        Ok(Self {
            settings,
            source,
            keys: Mutex::new(Keys {
                set,
                loaded: Instant::now(),
            }),
            client,
            verified: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(VERIFIED).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        })
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, Verified>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The settings.
    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// Checks a bearer token.
    pub async fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let leeway = self.settings.leeway.as_secs();
        let seen = self.remembered().get(token).cloned();
        if let Some(seen) = seen {
            if now <= seen.expires.saturating_add(leeway)
                && now.saturating_add(leeway) >= seen.not_before
            {
                return Ok(seen.grant);
            }
            self.remembered().pop(token);
        }
        let invalid = |why: &str| TokenError::Invalid(why.to_string());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(&format!("the token is not a JWT ({e})")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(invalid(&format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.resource]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway.as_secs();
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "the token has expired",
                K::ImmatureSignature => "the token is not valid yet (nbf)",
                K::InvalidAudience => "the token is not for this resource (aud)",
                K::InvalidIssuer => "the token is from another issuer (iss)",
                K::InvalidSignature => "the token's signature does not verify",
                K::MissingRequiredClaim(_) => "the token lacks exp, iss or aud",
                K::InvalidAlgorithm => "the token's algorithm does not match its key",
                _ => "the token cannot be read",
            })
        })?;
        let claims = data.claims;
        let claim = &self.settings.tenant_claim;
        let tenant = match claims.get(claim) {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => {
                return Err(TokenError::Invalid(format!(
                    "the token has no '{claim}' claim naming its tenant"
                )))
            }
        };
        let grant = Grant {
            owner: Owner::Tenant(Tenant::new(&tenant)),
            scopes: scopes(&claims),
        };
        let time = |claim: &str| claims.get(claim).and_then(Value::as_u64);
        let verified = Verified {
            grant: grant.clone(),
            not_before: time("nbf").unwrap_or(0),
            expires: time("exp").unwrap_or(0),
        };
        self.remembered().put(token.to_string(), verified);
        Ok(grant)
    }

    /// The key `kid` names (the only key, for a token without one), reloading the set once
    /// when it is unknown or old.
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, TokenError> {
        let mut keys = self.keys.lock().await;
        let stale = keys.loaded.elapsed() > KEYS_MAX_AGE;
        let unknown = find(&keys.set, kid).is_none();
        if stale || (unknown && keys.loaded.elapsed() >= RELOAD_COOLDOWN) {
            match load(&self.client, &self.source).await {
                Ok(set) => {
                    *keys = Keys {
                        set,
                        loaded: Instant::now(),
                    };
                    // A key dropped from the set takes its tokens with it.
                    self.remembered().clear();
                }
                Err(e) => tracing::warn!("OAuth: reloading the keys failed, keeping them: {e}"),
            }
        }
        let jwk = find(&keys.set, kid).ok_or_else(|| {
            TokenError::Invalid(match kid {
                Some(kid) => format!("the token's key '{kid}' is not among the issuer's keys"),
                None => "the token names no key (kid) and the issuer has several".into(),
            })
        })?;
        DecodingKey::from_jwk(jwk)
            .map_err(|e| TokenError::Invalid(format!("the issuer's key cannot be used: {e}")))
    }

    /// The URL of this resource's metadata (RFC 9728 §3.1: the well-known path, then the
    /// resource URL's path).
    pub fn metadata_url(&self) -> String {
        match url::Url::parse(&self.settings.resource) {
            Ok(url) => {
                let path = url.path().trim_end_matches('/');
                format!(
                    "{}/.well-known/oauth-protected-resource{path}",
                    url.origin().ascii_serialization()
                )
            }
            Err(_) => "/.well-known/oauth-protected-resource".into(),
        }
    }

    /// The paths the metadata is served at: the exact one, and the bare well-known one.
    pub fn metadata_paths(&self) -> Vec<String> {
        let exact = url::Url::parse(&self.metadata_url())
            .map(|url| url.path().to_string())
            .unwrap_or_default();
        let bare = "/.well-known/oauth-protected-resource".to_string();
        if exact.is_empty() || exact == bare {
            vec![bare]
        } else {
            vec![exact, bare]
        }
    }

    /// The Protected Resource Metadata document (RFC 9728).
    pub fn metadata(&self) -> Value {
        json!({
            "resource": self.settings.resource,
            "authorization_servers": [self.settings.issuer],
            "scopes_supported": [SCOPE_READ, SCOPE_WRITE],
            "bearer_methods_supported": ["header"],
            "resource_name": "mcp-v8",
        })
    }
}

/// The scopes a token grants: `scope` (space-separated, RFC 9068) or `scp` (a list or a
/// string, as some providers write it).
fn scopes(claims: &Value) -> HashSet<String> {
    let mut scopes = HashSet::new();
    for claim in ["scope", "scp"] {
        match claims.get(claim) {
            Some(Value::String(list)) => {
                scopes.extend(list.split_whitespace().map(str::to_string));
            }
            Some(Value::Array(list)) => {
                scopes.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
            }
            _ => {}
        }
    }
    scopes
}

fn find<'k>(set: &'k [Jwk], kid: Option<&str>) -> Option<&'k Jwk> {
    match kid {
        Some(kid) => set.iter().find(|k| k.common.key_id.as_deref() == Some(kid)),
        None if set.len() == 1 => set.first(),
        None => None,
    }
}

fn http_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!("OAuth: no trusted root certificates found ({e}); https will fail");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    };
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

/// GETs a JSON document.
async fn get_json(client: &HttpClient, url: &str) -> Result<Value, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("'{url}': {e}"))?;
    let request = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("'{url}': {e}"))?;
    let fetched = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("cannot reach '{url}': {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("'{url}' answered {status}"));
        }
        Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| format!("reading '{url}': {e}"))
    };
    let body = tokio::time::timeout(FETCH_TIMEOUT, fetched)
        .await
        .map_err(|_| {
            format!(
                "'{url}' did not answer within {} s",
                FETCH_TIMEOUT.as_secs()
            )
        })??;
    serde_json::from_slice(&body).map_err(|e| format!("'{url}' is not JSON: {e}"))
}

/// The issuer's `jwks_uri`: from its OAuth metadata (RFC 8414, the well-known path before
/// the issuer's path) or, failing that, its OpenID configuration (after it). The document
/// must name the same issuer.
async fn discover(client: &HttpClient, issuer: &str) -> Result<String, String> {
    let url = url::Url::parse(issuer).map_err(|e| format!("'{issuer}': {e}"))?;
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    let candidates = [
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}{path}/.well-known/openid-configuration"),
    ];
    let mut failures = Vec::new();
    for candidate in &candidates {
        match get_json(client, candidate).await {
            Ok(document) => {
                let named = document.get("issuer").and_then(Value::as_str);
                if named != Some(issuer) {
                    failures.push(format!(
                        "'{candidate}' names issuer {named:?}, not '{issuer}'"
                    ));
                    continue;
                }
                return document
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| format!("'{candidate}' has no jwks_uri"));
            }
            Err(e) => failures.push(e),
        }
    }
    Err(format!(
        "cannot discover the keys of OAuth issuer '{issuer}': {}",
        failures.join("; ")
    ))
}

/// The signing keys of a key set: the ones this server can use (a key of another kind, or
/// meant for encryption, is left out rather than failing the set).
async fn load(client: &HttpClient, source: &KeySource) -> Result<Vec<Jwk>, String> {
    let (document, from) = match source {
        KeySource::Url(url) => (get_json(client, url).await?, url.clone()),
        KeySource::File(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read --jwks {}: {e}", path.display()))?;
            let document = serde_json::from_str(&text)
                .map_err(|e| format!("--jwks {} is not JSON: {e}", path.display()))?;
            (document, path.display().to_string())
        }
    };
    let keys = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{from} is not a JWK set (no \"keys\")"))?;
    let set: Vec<Jwk> = keys
        .iter()
        .filter_map(|key| serde_json::from_value::<Jwk>(key.clone()).ok())
        .filter(|jwk| {
            !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
                && !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
        })
        .collect();
    if set.is_empty() {
        return Err(format!("{from} holds no signing key this server can use"));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let s = scopes(&json!({"scope": "heaps:read  heaps:write openid"}));
        assert!(s.contains(SCOPE_READ) && s.contains(SCOPE_WRITE) && s.contains("openid"));
        let s = scopes(&json!({"scp": ["heaps:read"]}));
        assert_eq!(s, HashSet::from([SCOPE_READ.to_string()]));
        assert!(scopes(&json!({"scope": 3})).is_empty());
    }

    #[tokio::test]
    async fn a_remembered_token_is_good_only_while_its_times_are() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let key = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        std::fs::write(&jwks, json!({ "keys": [key] }).to_string()).unwrap();
        let oauth = OAuth::start(OAuthSettings {
            issuer: "https://issuer.test".into(),
            resource: "https://mcp.test/mcp".into(),
            jwks_file: Some(jwks),
            tenant_claim: "sub".into(),
            leeway: Duration::from_secs(60),
        })
        .await
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let remember = |token: &str, not_before: u64, expires: u64| {
            oauth.remembered().put(
                token.into(),
                Verified {
                    grant: Grant::server(),
                    not_before,
                    expires,
                },
            );
        };
        remember("good", now - 10, now + 600);
        remember("expired", now - 7200, now - 3600);
        remember("early", now + 3600, now + 7200);
        assert_eq!(oauth.verify("good").await, Ok(Grant::server()));
        // Past their times they are checked again, and these are not even JWTs.
        assert!(oauth.verify("expired").await.is_err());
        assert!(oauth.verify("early").await.is_err());
        assert!(oauth.remembered().peek("expired").is_none());
        assert_eq!(
            oauth.metadata_paths(),
            [
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
    }

    #[test]
    fn a_token_without_kid_needs_a_single_key() {
        let key: Jwk = serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }))
        .unwrap();
        assert!(find(std::slice::from_ref(&key), None).is_some());
        assert!(find(&[key.clone(), key.clone()], None).is_none());
        assert!(find(&[key], Some("other")).is_none());
    }
}

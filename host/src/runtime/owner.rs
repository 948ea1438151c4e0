//! Whose heaps a call sees. Without OAuth every call acts for the server and heap names are
//! store keys as they are. With OAuth a call acts for the tenant its token names, and each of
//! that tenant's heap names is stored under a key prefix of its own, the same on every host,
//! so that several hosts on one store agree and no tenant can name another's heaps.

use std::fmt;
use std::sync::Arc;

use mcp_v8_plugin_api::MAX_HEAP_NAME_LEN;

use super::CallError;
use crate::storage::{validate_caller_name, StoreError};

/// The start of every tenant's stored keys; a name a caller gives may not start with it.
pub const TENANT_PREFIX: &str = "_mcp-v8-tenant.";

/// Hex digits of the tenant's digest in its key prefix (96 bits).
const DIGEST_HEX: usize = 24;

/// Who a call acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Owner {
    /// The server's own heaps: stdio, the static `--auth-token`, or no authentication.
    #[default]
    Server,
    /// A tenant's heaps.
    Tenant(Tenant),
}

/// A tenant: the value of the token claim that identifies it, and its stored keys' prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tenant {
    id: Arc<str>,
    prefix: Arc<str>,
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tenant").field(&self.id).finish()
    }
}

impl Tenant {
    /// The tenant named `id` (a subject, or whatever claim `--oauth-tenant-claim` names).
    pub fn new(id: &str) -> Self {
        // A digest, not the id: ids may hold any character and be any length; keys may not.
        let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Self {
            id: id.into(),
            prefix: format!("{TENANT_PREFIX}{}.", &hex[..DIGEST_HEX]).into(),
        }
    }

    /// The claim's value.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The start of its stored keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Owner {
    /// The stored key of the heap a caller names `name`; a clear error for a name the caller
    /// may not use (bad characters, reserved, too long once the tenant's prefix is added).
    pub fn key(&self, name: &str) -> Result<String, CallError> {
        validate_caller_name(name).map_err(CallError::InvalidName)?;
        if name.starts_with(TENANT_PREFIX) {
            return Err(CallError::InvalidName(StoreError::invalid_name(format!(
                "invalid heap name '{name}': names starting with '{TENANT_PREFIX}' are reserved \
                 for tenants' heaps"
            ))));
        }
        match self {
            Owner::Server => Ok(name.to_string()),
            Owner::Tenant(tenant) => {
                let most = MAX_HEAP_NAME_LEN - tenant.prefix.len();
                if name.len() > most {
                    return Err(CallError::InvalidName(StoreError::invalid_name(format!(
                        "invalid heap name: {} characters, at most {most} are allowed on this \
                         server",
                        name.len()
                    ))));
                }
                Ok(format!("{}{name}", tenant.prefix))
            }
        }
    }

    /// The name its owner knows a stored key by, or `None` when the key is not this owner's.
    pub fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        match self {
            Owner::Server => (!key.starts_with(TENANT_PREFIX)).then_some(key),
            Owner::Tenant(tenant) => key.strip_prefix(&*tenant.prefix),
        }
    }

    /// The store prefix that lists this owner's heaps whose names start with `prefix`.
    pub fn list_prefix(&self, prefix: &str) -> String {
        match self {
            Owner::Server => prefix.to_string(),
            Owner::Tenant(tenant) => format!("{}{prefix}", tenant.prefix),
        }
    }

    /// `text` with this owner's keys turned back into names (stores' messages name keys).
    pub fn unkey(&self, text: &str) -> String {
        match self {
            Owner::Server => text.to_string(),
            Owner::Tenant(tenant) => text.replace(&*tenant.prefix, ""),
        }
    }

    /// The tenant, if the owner is one.
    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            Owner::Server => None,
            Owner::Tenant(tenant) => Some(tenant),
        }
    }

    /// An error about this owner's keys as the caller should read it: names, not keys.
    pub fn unkey_error(&self, error: CallError) -> CallError {
        if matches!(self, Owner::Server) {
            return error;
        }
        let name = |heap: String| self.unkey(&heap);
        let store = |e: StoreError| StoreError::new(e.kind(), self.unkey(e.message()));
        match error {
            CallError::InvalidName(e) => CallError::InvalidName(store(e)),
            CallError::Envelope { heap, error } => CallError::Envelope {
                heap: name(heap),
                error,
            },
            CallError::Unrestorable { heap, reason } => CallError::Unrestorable {
                heap: name(heap),
                reason,
            },
            CallError::Conflict { heap, attempts } => CallError::Conflict {
                heap: name(heap),
                attempts,
            },
            CallError::Journal { heap, seq, error } => CallError::Journal {
                heap: name(heap),
                seq,
                error: self.unkey(&error),
            },
            CallError::Replaced { heap } => CallError::Replaced { heap: name(heap) },
            CallError::Exists { heap } => CallError::Exists { heap: name(heap) },
            CallError::Missing { heap } => CallError::Missing { heap: name(heap) },
            CallError::NoSuchRecord {
                heap,
                record,
                first,
                last,
            } => CallError::NoSuchRecord {
                heap: name(heap),
                record,
                first,
                last,
            },
            CallError::SameHeap { heap } => CallError::SameHeap { heap: name(heap) },
            CallError::Storage { heap, error } => CallError::Storage {
                heap: name(heap),
                error: store(error),
            },
            CallError::Listing(e) => CallError::Listing(store(e)),
            CallError::Internal(text) => CallError::Internal(self.unkey(&text)),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_keys_are_their_own_and_map_back() {
        let (a, b) = (
            Owner::Tenant(Tenant::new("alice")),
            Owner::Tenant(Tenant::new("bob")),
        );
        let key = a.key("notes").unwrap();
        assert_ne!(key, b.key("notes").unwrap());
        assert!(key.starts_with(TENANT_PREFIX) && key.ends_with(".notes"));
        assert_eq!(a.name_of(&key), Some("notes"));
        assert_eq!(b.name_of(&key), None);
        assert_eq!(Owner::Server.name_of(&key), None);
        assert_eq!(Owner::Server.key("notes").unwrap(), "notes");
        assert_eq!(Owner::Server.name_of("notes"), Some("notes"));
        assert!(a
            .list_prefix("no")
            .starts_with(a.tenant().unwrap().prefix()));
        // The same id always gives the same key: hosts on one store agree.
        assert_eq!(
            Owner::Tenant(Tenant::new("alice")).key("x").unwrap(),
            a.key("x").unwrap()
        );
    }

    #[test]
    fn reserved_and_overlong_names_are_refused() {
        let a = Owner::Tenant(Tenant::new("auth0|user@example.com"));
        for owner in [&Owner::Server, &a] {
            let e = owner.key(&format!("{TENANT_PREFIX}x")).unwrap_err();
            assert!(e.to_string().contains("reserved"), "{e}");
            assert!(owner.key("../x").is_err());
        }
        let longest = MAX_HEAP_NAME_LEN - a.tenant().unwrap().prefix().len();
        assert!(a.key(&"n".repeat(longest)).unwrap().len() <= MAX_HEAP_NAME_LEN);
        let e = a.key(&"n".repeat(longest + 1)).unwrap_err();
        assert!(e.to_string().contains(&format!("at most {longest}")), "{e}");
    }

    #[test]
    fn errors_name_heaps_not_keys() {
        let a = Owner::Tenant(Tenant::new("alice"));
        let key = a.key("notes").unwrap();
        let e = a.unkey_error(CallError::Storage {
            heap: key.clone(),
            error: StoreError::unavailable(format!("cannot read '{key}'")),
        });
        let text = e.to_string();
        assert!(!text.contains(TENANT_PREFIX), "{text}");
        assert!(text.contains("'notes'"), "{text}");
        assert_eq!(e.kind(), "storage");
    }
}

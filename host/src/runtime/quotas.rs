//! Quotas per tenant: heaps, stored bytes, calls at once and calls per minute, each off unless
//! set, and the figures counted per tenant for `storage_stats` and `/metrics`. The server's
//! own calls (stdio, the static token) have none.
//!
//! Heaps and stored bytes are measured from the store (a listing of the tenant's keys, kept
//! for [`LISTING_TTL`] unless this host adds or removes one of its heaps) before a call that
//! writes, so a call is refused once a tenant is at its limit; the call that crosses it is not
//! (its size is known only once it has run). With several hosts on one store the two call
//! limits are per host.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::owner::Tenant;
use crate::metrics::escape;

/// The limits every tenant has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Heaps a tenant may keep.
    pub heaps: Option<u64>,
    /// Bytes a tenant's heaps may take in the store (snapshots as stored).
    pub stored_bytes: Option<u64>,
    /// `run_js` calls of one tenant running at once.
    pub concurrent_calls: Option<u64>,
    /// `run_js` calls of one tenant started in any minute.
    pub calls_per_minute: Option<u64>,
}

/// One of the quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quota {
    /// [`Quotas::heaps`].
    Heaps,
    /// [`Quotas::stored_bytes`].
    StoredBytes,
    /// [`Quotas::concurrent_calls`].
    ConcurrentCalls,
    /// [`Quotas::calls_per_minute`].
    CallsPerMinute,
}

impl Quota {
    /// Its label in metrics and errors.
    pub fn label(self) -> &'static str {
        match self {
            Quota::Heaps => "heaps",
            Quota::StoredBytes => "stored_bytes",
            Quota::ConcurrentCalls => "concurrent_calls",
            Quota::CallsPerMinute => "calls_per_minute",
        }
    }

    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Quota::Heaps => "--tenant-max-heaps",
            Quota::StoredBytes => "--tenant-max-stored-bytes",
            Quota::ConcurrentCalls => "--tenant-max-concurrent-calls",
            Quota::CallsPerMinute => "--tenant-calls-per-minute",
        }
    }

    /// Whether the same call may succeed later as it is (a call ends, a minute passes).
    pub fn passes(self) -> bool {
        matches!(self, Quota::ConcurrentCalls | Quota::CallsPerMinute)
    }
}

/// A call refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: {what} ({flag} is {limit} per tenant); {then}", flag = quota.flag())]
pub struct QuotaExceeded {
    /// Which.
    pub quota: Quota,
    /// Its limit.
    pub limit: u64,
    /// Where the tenant stands.
    pub what: String,
    /// What the caller can do.
    pub then: &'static str,
}

/// One tenant's figures, as `storage_stats` shows them to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TenantStats {
    /// The tenant (the token claim's value).
    pub id: String,
    /// Its heaps.
    pub heaps: u64,
    /// Bytes its heaps take in the store.
    pub stored_bytes: u64,
    /// Its `run_js` calls running now on this host.
    pub calls_in_flight: u64,
    /// Its `run_js` calls started in the last minute on this host.
    pub calls_last_minute: u64,
    /// Its limits; `null` where there is none.
    pub quotas: QuotaLimits,
}

/// The quotas as `storage_stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct QuotaLimits {
    /// [`Quotas::heaps`].
    pub heaps: Option<u64>,
    /// [`Quotas::stored_bytes`].
    pub stored_bytes: Option<u64>,
    /// [`Quotas::concurrent_calls`].
    pub concurrent_calls: Option<u64>,
    /// [`Quotas::calls_per_minute`].
    pub calls_per_minute: Option<u64>,
}

/// What is counted of one tenant.
#[derive(Debug, Default)]
struct Usage {
    in_flight: AtomicU64,
    calls: AtomicU64,
    /// Starts of the calls in the last minute.
    recent: Mutex<VecDeque<Instant>>,
    refused: Mutex<BTreeMap<Quota, u64>>,
    /// Heaps and stored bytes when last measured.
    stored: Mutex<(u64, u64)>,
    /// Its heaps' keys and stored sizes, as last listed, and when.
    listing: Mutex<Option<(Instant, Listing)>>,
}

/// A tenant's heaps as listed: stored key and size.
pub(super) type Listing = Arc<HashMap<String, u64>>;

/// How long a tenant's listing is taken as it is, for the storage quotas.
pub(super) const LISTING_TTL: Duration = Duration::from_secs(1);

/// A call admitted under the call quotas; it counts as running until dropped.
#[derive(Debug)]
pub(super) struct Admitted(Option<Arc<Usage>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(usage) = &self.0 {
            usage.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// The quotas and every tenant's usage.
#[derive(Debug, Default)]
pub(super) struct Tenants {
    quotas: Quotas,
    usage: Mutex<HashMap<Tenant, Arc<Usage>>>,
}

impl Tenants {
    /// Tenants limited by `quotas`.
    pub(super) fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            usage: Mutex::default(),
        }
    }

    /// The quotas.
    pub(super) fn quotas(&self) -> Quotas {
        self.quotas
    }

    fn usage(&self, tenant: &Tenant) -> Arc<Usage> {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(usage.entry(tenant.clone()).or_default())
    }

    fn refuse(&self, usage: &Usage, exceeded: QuotaExceeded) -> QuotaExceeded {
        *usage
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(exceeded.quota)
            .or_default() += 1;
        tracing::info!(
            quota = exceeded.quota.label(),
            "a tenant's call was refused: {exceeded}"
        );
        exceeded
    }

    /// Admits a `run_js` call of `tenant` (none: the server's own) under the call quotas.
    pub(super) fn admit(&self, tenant: Option<&Tenant>) -> Result<Admitted, QuotaExceeded> {
        let Some(tenant) = tenant else {
            return Ok(Admitted(None));
        };
        let usage = self.usage(tenant);
        if let Some(limit) = self.quotas.concurrent_calls {
            let running = usage.in_flight.load(Ordering::Relaxed);
            if running >= limit {
                return Err(self.refuse(
                    &usage,
                    QuotaExceeded {
                        quota: Quota::ConcurrentCalls,
                        limit,
                        what: format!("{running} calls of this tenant are running"),
                        then: "retry once one has ended",
                    },
                ));
            }
        }
        let now = Instant::now();
        {
            let mut recent = usage.recent.lock().unwrap_or_else(PoisonError::into_inner);
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= MINUTE)
            {
                recent.pop_front();
            }
            if let Some(limit) = self.quotas.calls_per_minute {
                if recent.len() as u64 >= limit {
                    let wait = recent.front().map_or(MINUTE, |first| {
                        MINUTE.saturating_sub(now.duration_since(*first))
                    });
                    drop(recent);
                    return Err(self.refuse(
                        &usage,
                        QuotaExceeded {
                            quota: Quota::CallsPerMinute,
                            limit,
                            what: format!(
                                "{limit} calls started in the last minute; the next is possible \
                                 in {} s",
                                wait.as_secs() + 1
                            ),
                            then: "retry later",
                        },
                    ));
                }
            }
            recent.push_back(now);
        }
        usage.in_flight.fetch_add(1, Ordering::Relaxed);
        usage.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted(Some(usage)))
    }

    /// Whether `tenant`, holding `heaps` heaps of `bytes` in all, may write: a new heap when
    /// `creates`, or any heap.
    pub(super) fn may_store(
        &self,
        tenant: &Tenant,
        heaps: u64,
        bytes: u64,
        creates: bool,
    ) -> Result<(), QuotaExceeded> {
        let usage = self.usage(tenant);
        *usage.stored.lock().unwrap_or_else(PoisonError::into_inner) = (heaps, bytes);
        if let Some(limit) = self.quotas.stored_bytes {
            if bytes >= limit {
                return Err(self.refuse(
                    &usage,
                    QuotaExceeded {
                        quota: Quota::StoredBytes,
                        limit,
                        what: format!("this tenant's heaps take {bytes} bytes"),
                        then: "delete_heap frees space",
                    },
                ));
            }
        }
        if let (Some(limit), true) = (self.quotas.heaps, creates) {
            if heaps >= limit {
                return Err(self.refuse(
                    &usage,
                    QuotaExceeded {
                        quota: Quota::Heaps,
                        limit,
                        what: format!("this tenant has {heaps} heaps"),
                        then: "delete_heap frees one, or run on an existing heap",
                    },
                ));
            }
        }
        Ok(())
    }

    /// `tenant`'s heaps as listed less than [`LISTING_TTL`] ago, if they were.
    pub(super) fn listing(&self, tenant: &Tenant) -> Option<Listing> {
        let usage = self.usage(tenant);
        let listing = usage.listing.lock().unwrap_or_else(PoisonError::into_inner);
        match &*listing {
            Some((at, listing)) if at.elapsed() < LISTING_TTL => Some(Arc::clone(listing)),
            _ => None,
        }
    }

    /// Keeps `tenant`'s heaps as just listed.
    pub(super) fn listed(&self, tenant: &Tenant, listing: Listing) {
        let bytes = listing
            .values()
            .fold(0u64, |sum, size| sum.saturating_add(*size));
        self.measured(tenant, listing.len() as u64, bytes);
        *self
            .usage(tenant)
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), listing));
    }

    /// Forgets `tenant`'s listing: this host is adding or removing one of its heaps.
    pub(super) fn forget_listing(&self, tenant: &Tenant) {
        *self
            .usage(tenant)
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Records `tenant`'s heaps and stored bytes as just measured.
    pub(super) fn measured(&self, tenant: &Tenant, heaps: u64, bytes: u64) {
        *self
            .usage(tenant)
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (heaps, bytes);
    }

    /// `tenant`'s figures, with its heaps and bytes as just measured.
    pub(super) fn stats(&self, tenant: &Tenant, heaps: u64, bytes: u64) -> TenantStats {
        self.measured(tenant, heaps, bytes);
        let usage = self.usage(tenant);
        let now = Instant::now();
        let calls_last_minute = usage
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|t| now.duration_since(**t) < MINUTE)
            .count() as u64;
        TenantStats {
            id: tenant.id().to_string(),
            heaps,
            stored_bytes: bytes,
            calls_in_flight: usage.in_flight.load(Ordering::Relaxed),
            calls_last_minute,
            quotas: QuotaLimits {
                heaps: self.quotas.heaps,
                stored_bytes: self.quotas.stored_bytes,
                concurrent_calls: self.quotas.concurrent_calls,
                calls_per_minute: self.quotas.calls_per_minute,
            },
        }
    }

    /// Every tenant seen since start, as Prometheus text.
    pub(super) fn render(&self) -> String {
        let usage: Vec<(Tenant, Arc<Usage>)> = {
            let usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
            let mut all: Vec<_> = usage
                .iter()
                .map(|(t, u)| (t.clone(), Arc::clone(u)))
                .collect();
            all.sort_by(|a, b| a.0.id().cmp(b.0.id()));
            all
        };
        if usage.is_empty() {
            return String::new();
        }
        let mut text = String::new();
        let families: [(&str, &str, &str); 4] = [
            (
                "mcp_v8_tenant_calls_total",
                "counter",
                "run_js calls admitted, per tenant.",
            ),
            (
                "mcp_v8_tenant_calls_in_flight",
                "gauge",
                "run_js calls running, per tenant.",
            ),
            (
                "mcp_v8_tenant_heaps",
                "gauge",
                "Heaps per tenant, when last measured.",
            ),
            (
                "mcp_v8_tenant_stored_bytes",
                "gauge",
                "Bytes of a tenant's heaps in the store, when last measured.",
            ),
        ];
        for (i, (name, kind, help)) in families.iter().enumerate() {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (tenant, usage) in &usage {
                let (heaps, bytes) = *usage.stored.lock().unwrap_or_else(PoisonError::into_inner);
                let value = match i {
                    0 => usage.calls.load(Ordering::Relaxed),
                    1 => usage.in_flight.load(Ordering::Relaxed),
                    2 => heaps,
                    _ => bytes,
                };
                let _ = writeln!(text, "{name}{{tenant=\"{}\"}} {value}", escape(tenant.id()));
            }
        }
        let name = "mcp_v8_tenant_quota_refusals_total";
        let _ = writeln!(
            text,
            "# HELP {name} Calls refused by a quota, per tenant and quota.\n# TYPE {name} counter"
        );
        for (tenant, usage) in &usage {
            let refused = usage.refused.lock().unwrap_or_else(PoisonError::into_inner);
            for (quota, count) in refused.iter() {
                let _ = writeln!(
                    text,
                    "{name}{{tenant=\"{}\",quota=\"{}\"}} {count}",
                    escape(tenant.id()),
                    quota.label()
                );
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_quotas_hold_and_free_up() {
        let tenants = Tenants::new(Quotas {
            concurrent_calls: Some(2),
            calls_per_minute: Some(3),
            ..Quotas::default()
        });
        let (a, b) = (Tenant::new("a"), Tenant::new("b"));
        let first = tenants.admit(Some(&a)).unwrap();
        let _second = tenants.admit(Some(&a)).unwrap();
        let e = tenants.admit(Some(&a)).unwrap_err();
        assert_eq!(e.quota, Quota::ConcurrentCalls);
        assert!(
            e.to_string().contains("--tenant-max-concurrent-calls"),
            "{e}"
        );
        // Another tenant and the server are not affected.
        let _other = tenants.admit(Some(&b)).unwrap();
        for _ in 0..10 {
            drop(tenants.admit(None).unwrap());
        }
        drop(first);
        let _third = tenants.admit(Some(&a)).unwrap();
        drop(_third);
        let e = tenants.admit(Some(&a)).unwrap_err();
        assert_eq!(e.quota, Quota::CallsPerMinute);
        let text = tenants.render();
        assert!(
            text.contains("mcp_v8_tenant_calls_total{tenant=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "mcp_v8_tenant_quota_refusals_total{tenant=\"a\",quota=\"calls_per_minute\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn storage_quotas_refuse_at_the_limit() {
        let tenants = Tenants::new(Quotas {
            heaps: Some(2),
            stored_bytes: Some(1000),
            ..Quotas::default()
        });
        let a = Tenant::new("a\"quoted\"");
        assert!(tenants.may_store(&a, 1, 10, true).is_ok());
        assert!(tenants.may_store(&a, 2, 10, false).is_ok());
        assert_eq!(
            tenants.may_store(&a, 2, 10, true).unwrap_err().quota,
            Quota::Heaps
        );
        let e = tenants.may_store(&a, 1, 1000, false).unwrap_err();
        assert_eq!(e.quota, Quota::StoredBytes);
        assert!(tenants.render().contains("tenant=\"a\\\"quoted\\\"\""));
    }
}

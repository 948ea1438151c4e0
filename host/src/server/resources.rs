//! Heaps as `heap://<name>` resources (listed, templated, read as their metadata) and whole
//! results as `output://<id>` resources.

use std::time::Duration;

use rmcp::model::{
    CacheScope, ErrorData, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate,
};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use serde_json::json;

use super::args::HeapInfo;
use super::handler::{cache_hints, STATIC_TTL};
use super::{McpServer, Mode, PAGE_SIZE};
use crate::outputs;
use crate::runtime::CallError;

const RESOURCE_SCHEME: &str = "heap://";
/// The resource template of a heap; completions fill in `heap`.
pub(super) const HEAP_TEMPLATE: &str = "heap://{heap}";

impl McpServer {
    pub(super) async fn resources_page(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        // Every call may add or change a heap.
        let hints = cache_hints(&context, Duration::ZERO, CacheScope::Private);
        if self.mode == Mode::Stateless {
            let mut none = ListResourcesResult::with_all_items(Vec::new());
            (none.ttl_ms, none.cache_scope) = hints;
            return Ok(none);
        }
        let cursor = request.and_then(|r| r.cursor);
        let owner = self.owner(&context)?;
        let (heaps, next_cursor) = self
            .runtime
            .list_page(&owner, cursor.as_deref(), PAGE_SIZE)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let resources = heaps
            .into_iter()
            .map(|listed| {
                let m = listed.meta;
                Resource::new(format!("{RESOURCE_SCHEME}{}", m.name), m.name.clone())
                    .with_description(format!("mcp-v8 heap '{}'", m.name))
                    .with_mime_type("application/json")
            })
            .collect();
        let mut page = ListResourcesResult::with_all_items(resources);
        page.next_cursor = next_cursor;
        (page.ttl_ms, page.cache_scope) = hints;
        Ok(page)
    }

    pub(super) async fn resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let hints = cache_hints(&context, STATIC_TTL, CacheScope::Public);
        if self.mode == Mode::Stateless {
            let mut none = ListResourceTemplatesResult::with_all_items(Vec::new());
            (none.ttl_ms, none.cache_scope) = hints;
            return Ok(none);
        }
        let template = ResourceTemplate::new(HEAP_TEMPLATE, "heap")
            .with_title("A heap")
            .with_description(
                "A saved heap's metadata: stored and raw size, version, last write, store",
            )
            .with_mime_type("application/json");
        let mut result = ListResourceTemplatesResult::with_all_items(vec![template]);
        (result.ttl_ms, result.cache_scope) = hints;
        Ok(result)
    }

    pub(super) async fn read(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        if uri.starts_with(outputs::SCHEME) {
            let Some(text) = self.outputs.get(&self.owner(&context)?, &uri) else {
                return Err(ErrorData::resource_not_found(
                    format!("no result kept as {uri} (results are kept for 10 minutes)"),
                    None,
                ));
            };
            let mut result = ReadResourceResult::new(vec![ResourceContents::text(
                text.to_string(),
                uri.clone(),
            )
            .with_mime_type("text/plain")]);
            // What a call returned never changes; it is the caller's.
            (result.ttl_ms, result.cache_scope) =
                cache_hints(&context, outputs::RETENTION, CacheScope::Private);
            return Ok(result.into());
        }
        let Some(name) = uri
            .strip_prefix(RESOURCE_SCHEME)
            .filter(|_| self.mode == Mode::Heaps)
        else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri}"),
                None,
            ));
        };
        let owner = self.owner(&context)?;
        let listed = match self.runtime.describe(&owner, name).await {
            Ok(Some(listed)) => listed,
            Ok(None) => {
                return Err(ErrorData::resource_not_found(
                    format!("no heap named '{name}'"),
                    None,
                ))
            }
            Err(CallError::InvalidName(e)) => {
                return Err(ErrorData::invalid_params(e.to_string(), None))
            }
            Err(e) => return Err(ErrorData::internal_error(e.to_string(), None)),
        };
        let backend = self.runtime.storage().info();
        let version = listed.meta.version.to_string();
        let info = HeapInfo::from(listed);
        let body = json!({
            "heap": info.heap,
            "size": info.size,
            "raw_size": info.raw_size,
            "version": version,
            "last_modified_ms": info.last_modified_ms,
            "storage": backend.name,
        });
        let mut result =
            ReadResourceResult::new(vec![ResourceContents::text(body.to_string(), uri.clone())
                .with_mime_type("application/json")]);
        // A heap's metadata changes with every call on it.
        (result.ttl_ms, result.cache_scope) =
            cache_hints(&context, Duration::ZERO, CacheScope::Private);
        Ok(result.into())
    }
}

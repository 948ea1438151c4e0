//! Loads storage plugins: shared libraries exporting an mcp-v8 root module.
//!
//! Every failure is one line naming the library and the cause. The server first reads a
//! plugin's root module in a child process ([`load_checked`]): abi_stable follows pointers
//! from the exported symbol, so a malformed library would crash whoever reads it, and only
//! a child's crash can be reported instead of suffered.

use std::path::Path;
use std::process::{Command, Stdio};

use abi_stable::library::{
    lib_header_from_path, AbiHeader, LibHeader, LibraryError, RootModule,
    ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use abi_stable::sabi_types::VersionNumber;
use abi_stable::std_types::{RResult, RStr};
use mcp_v8_plugin_api::ffi::ForeignHeapStore;
use mcp_v8_plugin_api::plugin::PluginModuleRef;
use mcp_v8_plugin_api::StoreError;

use crate::start::StartError;

/// Loads the plugin library at `path` and opens its store with `config` (a JSON object).
/// `name` is the plugin's name in the configuration, for messages.
pub fn load(
    name: &str,
    path: &Path,
    config: &serde_json::Value,
) -> Result<ForeignHeapStore, StartError> {
    // Messages name the library as the configuration gave it.
    let given = path;
    let path = &absolute(given).map_err(StartError::plugin(name, given))?;
    let module = root_module(path).map_err(StartError::plugin(name, given))?;
    let config = config.to_string();
    let store = match (module.open())(RStr::from_str(&config)) {
        RResult::ROk(store) => store,
        RResult::RErr(e) => {
            let e = StoreError::from(e);
            let why = format!("the plugin refused to open its store: {e}");
            return Err(StartError::plugin(name, given)(why));
        }
    };
    let store = ForeignHeapStore::new(store);
    tracing::info!(
        plugin = name,
        path = %path.display(),
        exports = %(module.name())(),
        version = %(module.version())(),
        "storage plugin loaded"
    );
    Ok(store)
}

/// [`load`], after reading the root module in a child process (`program check-plugin
/// PATH`): a library that would crash the reader crashes only the child.
pub fn load_checked(
    program: &Path,
    name: &str,
    path: &Path,
    config: &serde_json::Value,
) -> Result<ForeignHeapStore, StartError> {
    let absolute = absolute(path).map_err(StartError::plugin(name, path))?;
    check_in_child(program, &absolute).map_err(StartError::plugin(name, path))?;
    load(name, path, config)
}

/// The name and version a plugin library declares, after checking it in a child process
/// as [`load_checked`] does (so a malformed library cannot crash the caller).
pub fn identify(program: &Path, path: &Path) -> Result<(String, String), String> {
    let absolute = absolute(path)?;
    check_in_child(program, &absolute)?;
    let module = root_module(&absolute)?;
    Ok((
        (module.name())().to_string(),
        (module.version())().to_string(),
    ))
}

/// What `mcp-v8 check-plugin PATH` does: reads the plugin's root module without opening a
/// store. `Err` is the one-line cause.
pub fn check(path: &Path) -> Result<(), String> {
    root_module(&absolute(path)?).map(|_| ())
}

fn check_in_child(program: &Path, path: &Path) -> Result<(), String> {
    let output = Command::new(program)
        .arg("check-plugin")
        .arg(path)
        // Nothing of the server's environment (storage secrets, tokens) goes to the child.
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot start {} to check the plugin: {e}",
                program.display()
            )
        })?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !said.is_empty() {
        return Err(said);
    }
    use std::os::unix::process::ExitStatusExt;
    Err(match output.status.signal() {
        Some(signal) => format!(
            "reading its root module crashed the checking process (signal {signal}): the \
             exported `{}` symbol is malformed (e.g. a valid abi_stable header followed by \
             garbage), so it was not loaded",
            ROOT_MODULE_LOADER_NAME_WITH_NUL.trim_end_matches('\0')
        ),
        None => format!(
            "checking the library failed without a reason ({})",
            output.status
        ),
    })
}

/// An existing library's absolute path, so that dlopen never searches the system library
/// paths instead.
fn absolute(path: &Path) -> Result<std::path::PathBuf, String> {
    if !path.is_file() {
        return Err("the library file does not exist".into());
    }
    std::fs::canonicalize(path).map_err(|e| format!("cannot resolve the path: {e}"))
}

/// Reads and checks a plugin's root module.
fn root_module(path: &Path) -> Result<PluginModuleRef, String> {
    probe(path)?;
    let header = lib_header_from_path(path).map_err(describe)?;
    check_identity(header)?;
    header
        .init_root_module::<PluginModuleRef>()
        .map_err(describe)
}

/// Checks with `dlopen` that the file is a shared library exporting an abi_stable root
/// module, which gives clearer messages than abi_stable's own checks.
fn probe(path: &Path) -> Result<(), String> {
    // SAFETY: loading a library runs its initialisers; the operator chose this library as a
    // plugin, which is exactly what loading it means. It is unloaded again at the end of scope.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("not a loadable shared library: {e}"))?;
    // SAFETY: only the symbol's presence is checked; the pointer is never dereferenced.
    let symbol = unsafe { library.get::<*const ()>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) };
    symbol
        .map(|_| ())
        .map_err(|_| "not an mcp-v8 storage plugin: it exports no plugin root module".into())
}

/// Checks that the library is a storage plugin and names both plugin-api versions when they
/// cannot work together (abi_stable would only report a layout mismatch for some of them).
fn check_identity(header: &LibHeader) -> Result<(), String> {
    let consts = header.root_mod_consts();
    if consts.base_name().as_str() != PluginModuleRef::BASE_NAME {
        return Err(format!(
            "not an mcp-v8 storage plugin: it is an abi_stable library of another kind ({})",
            consts.name()
        ));
    }
    let theirs = header.version_strings();
    let ours = PluginModuleRef::VERSION_STRINGS;
    let compatible = match (VersionNumber::new(ours), VersionNumber::new(theirs)) {
        (Ok(ours), Ok(theirs)) => ours.is_loosely_compatible(theirs),
        _ => false,
    };
    if compatible {
        Ok(())
    } else {
        Err(incompatible(theirs.version, ours.version))
    }
}

fn incompatible(theirs: impl std::fmt::Display, ours: impl std::fmt::Display) -> String {
    format!(
        "built against mcp-v8-plugin-api {theirs}, but this mcp-v8 uses mcp-v8-plugin-api \
         {ours}; rebuild the plugin against a compatible plugin-api"
    )
}

fn describe(error: LibraryError) -> String {
    let text = match error {
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => return incompatible(actual_version, expected_version),
        LibraryError::InvalidAbiHeader(found) => return describe_header(&found),
        LibraryError::AbiInstability(detail) => {
            return format!(
                "its root module does not match this mcp-v8's storage contract (not an mcp-v8 \
                 storage plugin, or built against an incompatible mcp-v8-plugin-api): {}",
                layout_mismatch(&detail.to_string())
            )
        }
        other => other.to_string(),
    };
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        "abi_stable refused the library without saying why".into()
    } else {
        line
    }
}

/// The header abi_stable found where the root module should be, explained.
fn describe_header(found: &AbiHeader) -> String {
    let ours = AbiHeader::VALUE;
    if found.magic_string != ours.magic_string {
        return format!(
            "not an mcp-v8 storage plugin: it exports `{}`, but that is not an abi_stable \
             library header (a symbol of another type under the same name)",
            ROOT_MODULE_LOADER_NAME_WITH_NUL.trim_end_matches('\0')
        );
    }
    format!(
        "built with abi_stable {}.{}, but this mcp-v8 uses abi_stable {}.{}; rebuild the \
         plugin against this mcp-v8's mcp-v8-plugin-api",
        found.abi_major, found.abi_minor, ours.abi_major, ours.abi_minor
    )
}

/// What abi_stable's layout report says differs, on one line: each "Error:" block of the
/// report with its expected and found values.
fn layout_mismatch(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let value_after = |from: usize, label: &str| -> Option<&str> {
        let at = from + lines[from..].iter().position(|l| *l == label)?;
        lines.get(at + 1).copied().filter(|l| !l.is_empty())
    };
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(what) = line.strip_prefix("Error:") else {
            continue;
        };
        let mut text = what.trim().to_string();
        if let (Some(expected), Some(actual)) =
            (value_after(i, "Expected:"), value_after(i, "Found:"))
        {
            text.push_str(&format!(" (expected {expected}, found {actual})"));
        }
        if !found.contains(&text) {
            found.push(text);
        }
    }
    if found.is_empty() {
        return "abi_stable reports different layouts without naming the difference".into();
    }
    found.truncate(3);
    found.join("; ")
}

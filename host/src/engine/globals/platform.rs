//! The WinterTC globals that stand on their own — `atob`, `btoa`, `crypto` and `Crypto`
//! (`getRandomValues`, `randomUUID`), `structuredClone`, `Blob`, `File`, `FormData`, `self`,
//! `navigator` and `Navigator`, `reportError` — made on first use by `platform.js`
//! ([`PLATFORM`]) over one native function ([`platform`]) for what needs the host: the run's
//! secure random bytes, which come from a key on the run's tape so that a replay draws the
//! same ones ([`SecureRandom`]); V8's own serializer, which `structuredClone` is defined by;
//! and a Blob's state, kept where that serializer can read it without running JavaScript.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;

/// See the file: it defines the globals over [`platform`].
const PLATFORM: &str = include_str!("../platform.js");

/// The globals `platform.js` defines.
const NAMES: [&str; 12] = [
    "atob",
    "btoa",
    "crypto",
    "Crypto",
    "structuredClone",
    "Blob",
    "File",
    "FormData",
    "self",
    "navigator",
    "Navigator",
    "reportError",
];

/// What `navigator.userAgent` says.
const USER_AGENT: &str = concat!("mcp-v8/", env!("CARGO_PKG_VERSION"));

/// Adds the globals a heap lacks, once per heap, as stand-ins that define them on first use.
pub(in crate::engine) fn install_platform(scope: &mut v8::HandleScope) -> Option<()> {
    install_lazily(scope, "mcp-v8 platform", &NAMES, ("platform", platform), 2)
}

/// `platform(op, a, b)`, for `platform.js` only:
///
/// * 0 — `fill(view)`: fills the view with the run's secure random bytes; returns it.
/// * 1 — `clone(value, transfer)`: `[true, copy]` by V8's serializer (Blobs and Files as
///   their bytes and attributes), with the ArrayBuffers in `transfer` moved to the copy (and
///   detached), or `[false, why]` when it cannot be cloned.
/// * 2 — `install()`: defines the globals ([`PLATFORM`]; for [`install_lazily`]).
/// * 3 — `brand(blob, state)`: keeps a Blob's state (`[bytes, type]`, and a File's name and
///   lastModified) under a private key, where structuredClone finds it.
/// * 4 — `state(blob)`: that state, or `undefined` if `blob` is no Blob.
/// * 5 — `prototypes(Blob.prototype, File.prototype)`: where structuredClone makes Blobs again.
pub(super) fn platform<'s>(
    scope: &mut v8::HandleScope<'s>,
    args: v8::FunctionCallbackArguments<'s>,
    mut rv: v8::ReturnValue,
) {
    match args.get(0).int32_value(scope) {
        Some(0) => {
            let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(args.get(1)) else {
                return throw_type_error(scope, "The provided value is not an ArrayBuffer view");
            };
            let mut bytes = vec![0; view.byte_length()];
            secure_random(scope, &mut bytes);
            if let Some(buffer) = view.buffer(scope) {
                if let Some(data) = buffer.data().filter(|_| !bytes.is_empty()) {
                    let offset = view.byte_offset();
                    // SAFETY: the view's bytes lie within its buffer (`byte_offset` and
                    // `byte_length` are V8's own), nothing else runs while they are written,
                    // and `bytes` has exactly `byte_length` of them.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            data.as_ptr().cast::<u8>().add(offset),
                            bytes.len(),
                        )
                    };
                }
            }
            rv.set(view.into());
        }
        Some(1) => {
            if let Some(result) = clone(scope, args.get(1), args.get(2)) {
                rv.set(result);
            }
        }
        Some(2) => {
            let global = scope.get_current_context().global(scope);
            let Some(native) = named_function(scope, "platform", 3, platform) else {
                return;
            };
            let Some(agent) = v8::String::new(scope, USER_AGENT) else {
                return;
            };
            run_setup(
                scope,
                PLATFORM,
                &[global.into(), native.into(), agent.into()],
            );
        }
        Some(3) => {
            let (Ok(blob), Some(key)) = (
                v8::Local::<v8::Object>::try_from(args.get(1)),
                blob_state_key(scope),
            ) else {
                return;
            };
            blob.set_private(scope, key, args.get(2));
        }
        Some(4) => {
            if let Ok(blob) = v8::Local::<v8::Object>::try_from(args.get(1)) {
                if let Some(state) = blob_state(scope, blob) {
                    rv.set(state.into());
                }
            }
        }
        Some(5) => {
            let global = scope.get_current_context().global(scope);
            for (file, prototype) in [(false, args.get(1)), (true, args.get(2))] {
                if let Some(key) = prototype_key(scope, file) {
                    global.set_private(scope, key, prototype);
                }
            }
        }
        _ => {}
    }
}

/// Fills `bytes` from the run's secure random source, made from its tape's key on first use.
fn secure_random(scope: &mut v8::HandleScope, bytes: &mut [u8]) {
    match scope.get_slot_mut::<RunState>() {
        Some(state) => {
            let random = match &mut state.secure {
                Some(random) => random,
                None => state.secure.insert(SecureRandom::new(&state.deck.key())),
            };
            random.fill(bytes);
        }
        // Only between runs (code run while a heap is set up), where nothing is recorded.
        None => SecureRandom::new(&fresh_key()).fill(bytes),
    }
}

/// What V8's serializer could not clone, for the `DataCloneError`; and the Blobs and Files
/// it meets, written as their bytes and attributes ([`Blobs`] reads them back).
#[derive(Default)]
struct Refusal(Rc<RefCell<Option<String>>>);

/// The private key of a Blob's state: `[bytes, type]`, and a File's `name` and
/// `lastModified` after them ([`platform`], ops 3 and 4).
fn blob_state_key<'s>(scope: &mut v8::HandleScope<'s>) -> Option<v8::Local<'s, v8::Private>> {
    let name = v8::String::new(scope, "mcp-v8 blob")?;
    Some(v8::Private::for_api(scope, Some(name)))
}

/// The private keys of the global under which `Blob.prototype` and `File.prototype` are kept
/// for structuredClone ([`platform`], op 5).
fn prototype_key<'s>(
    scope: &mut v8::HandleScope<'s>,
    file: bool,
) -> Option<v8::Local<'s, v8::Private>> {
    let name = v8::String::new(scope, if file { "mcp-v8 File" } else { "mcp-v8 Blob" })?;
    Some(v8::Private::for_api(scope, Some(name)))
}

/// A Blob's state, if `object` is one.
fn blob_state<'s>(
    scope: &mut v8::HandleScope<'s>,
    object: v8::Local<'s, v8::Object>,
) -> Option<v8::Local<'s, v8::Array>> {
    let key = blob_state_key(scope)?;
    let state = object.get_private(scope, key)?;
    v8::Local::<v8::Array>::try_from(state).ok()
}

impl v8::ValueSerializerImpl for Refusal {
    fn throw_data_clone_error<'s>(
        &self,
        scope: &mut v8::HandleScope<'s>,
        message: v8::Local<'s, v8::String>,
    ) {
        *self.0.borrow_mut() = Some(message.to_rust_string_lossy(scope));
        scope.throw_exception(message.into());
    }

    fn has_custom_host_object(&self, _isolate: &mut v8::Isolate) -> bool {
        true
    }

    fn is_host_object<'s>(
        &self,
        scope: &mut v8::HandleScope<'s>,
        object: v8::Local<'s, v8::Object>,
    ) -> Option<bool> {
        let key = blob_state_key(scope)?;
        object.has_private(scope, key)
    }

    // A Blob as its state: how many fields, then each (bytes, then strings, then a number),
    // read without running any JavaScript.
    fn write_host_object<'s>(
        &self,
        scope: &mut v8::HandleScope<'s>,
        object: v8::Local<'s, v8::Object>,
        serializer: &dyn v8::ValueSerializerHelper,
    ) -> Option<bool> {
        let state = blob_state(scope, object)?;
        let length = state.length();
        serializer.write_uint32(length);
        for i in 0..length {
            let field = state.get_index(scope, i)?;
            if let Ok(view) = v8::Local::<v8::Uint8Array>::try_from(field) {
                let mut bytes = vec![0; view.byte_length()];
                let copied = view.copy_contents(&mut bytes);
                bytes.truncate(copied);
                serializer.write_uint64(bytes.len() as u64);
                serializer.write_raw_bytes(&bytes);
            } else if field.is_number() {
                serializer.write_double(field.number_value(scope)?);
            } else {
                let text = field.to_rust_string_lossy(scope);
                serializer.write_uint64(text.len() as u64);
                serializer.write_raw_bytes(text.as_bytes());
            }
        }
        Some(true)
    }
}

/// Makes again the Blobs and Files [`Refusal`] wrote: objects of their prototypes with their
/// state, made without running any JavaScript.
struct Blobs;

impl v8::ValueDeserializerImpl for Blobs {
    fn read_host_object<'s>(
        &self,
        scope: &mut v8::HandleScope<'s>,
        deserializer: &dyn v8::ValueDeserializerHelper,
    ) -> Option<v8::Local<'s, v8::Object>> {
        let mut length = 0u32;
        if !deserializer.read_uint32(&mut length) || !(length == 2 || length == 4) {
            return None;
        }
        let raw = || -> Option<&[u8]> {
            let mut size = 0u64;
            if !deserializer.read_uint64(&mut size) {
                return None;
            }
            deserializer.read_raw_bytes(usize::try_from(size).ok()?)
        };
        let bytes = raw()?;
        let buffer = array_buffer_of(scope, bytes);
        let mut fields: Vec<v8::Local<v8::Value>> =
            vec![v8::Uint8Array::new(scope, buffer, 0, bytes.len())?.into()];
        let kind = raw()?;
        fields.push(v8::String::new(scope, &String::from_utf8_lossy(kind))?.into());
        let file = length == 4;
        if file {
            let name = raw()?;
            fields.push(v8::String::new(scope, &String::from_utf8_lossy(name))?.into());
            let mut modified = 0f64;
            if !deserializer.read_double(&mut modified) {
                return None;
            }
            fields.push(v8::Number::new(scope, modified).into());
        }
        let global = scope.get_current_context().global(scope);
        let key = prototype_key(scope, file)?;
        let prototype = global.get_private(scope, key)?;
        let object = v8::Object::new(scope);
        if prototype.is_object() {
            object.set_prototype(scope, prototype)?;
        }
        let state = v8::Array::new_with_elements(scope, &fields);
        let key = blob_state_key(scope)?;
        object.set_private(scope, key, state.into())?;
        Some(object)
    }
}

/// `structuredClone(value, {transfer})` (see [`platform`], op 1). An exception thrown while
/// reading `value` (a getter's) is thrown on.
fn clone<'s>(
    scope: &mut v8::HandleScope<'s>,
    value: v8::Local<'s, v8::Value>,
    transfer: v8::Local<'s, v8::Value>,
) -> Option<v8::Local<'s, v8::Value>> {
    use v8::{ValueDeserializerHelper, ValueSerializerHelper};
    let refused = |scope: &mut v8::HandleScope<'s>, why: &str| {
        let no = v8::Boolean::new(scope, false);
        let why = v8::String::new(scope, why)?;
        Some(v8::Array::new_with_elements(scope, &[no.into(), why.into()]).into())
    };
    let mut buffers: Vec<v8::Local<v8::ArrayBuffer>> = Vec::new();
    if let Ok(list) = v8::Local::<v8::Array>::try_from(transfer) {
        for i in 0..list.length() {
            let item = list.get_index(scope, i)?;
            let Ok(buffer) = v8::Local::<v8::ArrayBuffer>::try_from(item) else {
                return refused(scope, "Only ArrayBuffers can be transferred.");
            };
            if buffers.iter().any(|b| b.strict_equals(buffer.into())) {
                return refused(
                    scope,
                    "An ArrayBuffer is listed twice in the transfer list.",
                );
            }
            if buffer.was_detached() || !buffer.is_detachable() {
                return refused(
                    scope,
                    "An ArrayBuffer in the transfer list cannot be detached.",
                );
            }
            buffers.push(buffer);
        }
    }
    let refusal = Refusal::default();
    let why = Rc::clone(&refusal.0);
    let context = scope.get_current_context();
    // The serialized value, or why it cannot be cloned (`None`: an exception, thrown on).
    let serialized: Result<Vec<u8>, Option<String>> = {
        let tc = &mut v8::TryCatch::new(scope);
        let serializer = v8::ValueSerializer::new(tc, Box::new(refusal));
        for (id, buffer) in buffers.iter().enumerate() {
            serializer.transfer_array_buffer(u32::try_from(id).ok()?, *buffer);
        }
        serializer.write_header();
        if serializer.write_value(context, value) == Some(true) {
            Ok(serializer.release())
        } else {
            let refused = why.borrow_mut().take();
            if refused.is_none() {
                tc.rethrow();
            }
            Err(refused)
        }
    };
    let bytes = match serialized {
        Ok(bytes) => bytes,
        Err(Some(why)) => return refused(scope, &why),
        Err(None) => return None,
    };
    let stores: Vec<_> = buffers.iter().map(|b| b.get_backing_store()).collect();
    for buffer in &buffers {
        let _ = buffer.detach(None);
    }
    let deserializer = v8::ValueDeserializer::new(scope, Box::new(Blobs), &bytes);
    for (id, store) in stores.iter().enumerate() {
        let moved = v8::ArrayBuffer::with_backing_store(scope, store);
        deserializer.transfer_array_buffer(u32::try_from(id).ok()?, moved);
    }
    let copy = match deserializer.read_header(context) {
        Some(true) => deserializer.read_value(context),
        _ => None,
    };
    let Some(copy) = copy else {
        return refused(scope, "The value could not be read back.");
    };
    let yes = v8::Boolean::new(scope, true);
    Some(v8::Array::new_with_elements(scope, &[yes.into(), copy]).into())
}

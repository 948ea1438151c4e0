// Makes the WinterTC globals that stand on their own (see `globals::platform`), each only where
// the heap has none of that name: `atob`, `btoa`, `crypto` (`getRandomValues`, `randomUUID`),
// `Crypto`, `structuredClone`, `Blob`, `File`, `FormData`, `self`, `navigator`, `reportError`. `native(op, a, b)` does what
// needs the host: 0 fills a view with the run's secure random bytes, 1 clones a value with V8's
// own serializer (`[true, clone]`, or `[false, why]` for what cannot be cloned), 3 and 4 keep
// and read a Blob's state, 5 tells it Blob's and File's prototypes (see globals/platform.rs).
(global, native, userAgent) => {
  'use strict';

  const { defineProperty } = Object;
  const TypeErrorCtor = TypeError;
  const ErrorCtor = Error;
  const isView = ArrayBuffer.isView;
  const toStringTag = Symbol.toStringTag;
  const fromCharCode = String.fromCharCode;
  const apply = Reflect.apply;
  const charCodeAt = String.prototype.charCodeAt;
  const typedArrayTag = Object.getOwnPropertyDescriptor(
    Object.getPrototypeOf(Uint8Array.prototype), toStringTag).get;
  const consoleError = global.console && global.console.error;

  const define = (name, value) => {
    if (!Object.prototype.hasOwnProperty.call(global, name)) {
      defineProperty(global, name, { value, writable: true, configurable: true });
    }
  };
  const tag = (C, name) => defineProperty(C.prototype, toStringTag, { value: name, configurable: true });
  // DOMException comes with the web globals (made on first use).
  const domException = (message, name) => {
    const DOMExceptionCtor = global.DOMException;
    if (typeof DOMExceptionCtor === 'function') return new DOMExceptionCtor(message, name);
    const e = new ErrorCtor(message);
    e.name = name;
    return e;
  };
  const required = (args, n, what) => {
    if (args < n) throw new TypeErrorCtor(`${what}: ${n} argument${n > 1 ? 's' : ''} required, but only ${args} present.`);
  };

  // ---- atob, btoa: forgiving-base64 (HTML, "Base64 utility methods") ----
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const sextet = new Int16Array(128).fill(-1);
  for (let i = 0; i < 64; i++) sextet[apply(charCodeAt, alphabet, [i])] = i;

  function btoa(data) {
    required(arguments.length, 1, "Failed to execute 'btoa'");
    const text = `${data}`;
    let out = '';
    const code = (i) => apply(charCodeAt, text, [i]);
    for (let i = 0; i < text.length; i++) {
      if (code(i) > 0xff) {
        throw domException('The string to be encoded contains characters outside of the Latin1 range.', 'InvalidCharacterError');
      }
    }
    let i = 0;
    for (; i + 2 < text.length; i += 3) {
      const n = (code(i) << 16) | (code(i + 1) << 8) | code(i + 2);
      out += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + alphabet[(n >> 6) & 63] + alphabet[n & 63];
    }
    if (i + 1 === text.length) {
      const n = code(i) << 16;
      out += `${alphabet[n >> 18]}${alphabet[(n >> 12) & 63]}==`;
    } else if (i + 2 === text.length) {
      const n = (code(i) << 16) | (code(i + 1) << 8);
      out += `${alphabet[n >> 18]}${alphabet[(n >> 12) & 63]}${alphabet[(n >> 6) & 63]}=`;
    }
    return out;
  }

  function atob(data) {
    required(arguments.length, 1, "Failed to execute 'atob'");
    const bad = () => domException('The string to be decoded is not correctly encoded.', 'InvalidCharacterError');
    const text = `${data}`;
    // ASCII whitespace goes; then one or two `=` at the end of a multiple of four.
    const codes = [];
    for (let i = 0; i < text.length; i++) {
      const c = apply(charCodeAt, text, [i]);
      if (c === 0x09 || c === 0x0a || c === 0x0c || c === 0x0d || c === 0x20) continue;
      codes.push(c);
    }
    let length = codes.length;
    if (length % 4 === 0 && length > 0 && codes[length - 1] === 0x3d) {
      length -= codes[length - 2] === 0x3d ? 2 : 1;
    }
    if (length % 4 === 1) throw bad();
    let out = '';
    let buffer = 0;
    let bits = 0;
    for (let i = 0; i < length; i++) {
      const c = codes[i];
      const value = c < 128 ? sextet[c] : -1;
      if (value < 0) throw bad();
      buffer = (buffer << 6) | value;
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out += fromCharCode((buffer >> bits) & 0xff);
      }
    }
    return out;
  }

  define('atob', atob);
  define('btoa', btoa);

  // ---- crypto: getRandomValues, randomUUID (Web Crypto) ----
  const integerArrays = new Set(['Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array',
    'Uint16Array', 'Int32Array', 'Uint32Array', 'BigInt64Array', 'BigUint64Array']);
  const hex = [];
  for (let i = 0; i < 256; i++) hex.push((i < 16 ? '0' : '') + i.toString(16));
  let constructing = false;

  class Crypto {
    constructor() {
      if (!constructing) throw new TypeErrorCtor('Illegal constructor');
    }
    getRandomValues(array) {
      if (!(this instanceof Crypto)) throw new TypeErrorCtor('Illegal invocation');
      required(arguments.length, 1, "Failed to execute 'getRandomValues' on 'Crypto'");
      const kind = isView(array) ? apply(typedArrayTag, array, []) : undefined;
      if (!integerArrays.has(kind)) {
        throw domException("The provided ArrayBufferView is not an integer-type array.", 'TypeMismatchError');
      }
      if (array.byteLength > 65536) {
        throw domException(`The ArrayBufferView's byte length (${array.byteLength}) exceeds the number of bytes of entropy available via this API (65536).`, 'QuotaExceededError');
      }
      native(0, array);
      return array;
    }
    randomUUID() {
      if (!(this instanceof Crypto)) throw new TypeErrorCtor('Illegal invocation');
      const b = native(0, new Uint8Array(16));
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      let out = '';
      for (let i = 0; i < 16; i++) {
        if (i === 4 || i === 6 || i === 8 || i === 10) out += '-';
        out += hex[b[i]];
      }
      return out;
    }
  }
  tag(Crypto, 'Crypto');
  constructing = true;
  const crypto = new Crypto();
  constructing = false;
  define('Crypto', Crypto);
  define('crypto', crypto);

  // ---- structuredClone (HTML), by V8's serializer ----
  function structuredClone(value, options = undefined) {
    required(arguments.length, 1, "Failed to execute 'structuredClone'");
    let transfer = [];
    if (options !== undefined && options !== null) {
      if (typeof options !== 'object') throw new TypeErrorCtor("Failed to execute 'structuredClone': The provided value is not of type 'StructuredSerializeOptions'.");
      if (options.transfer !== undefined) {
        if (options.transfer === null || typeof options.transfer !== 'object') {
          throw new TypeErrorCtor("Failed to execute 'structuredClone': The provided value cannot be converted to a sequence.");
        }
        transfer = [...options.transfer];
      }
    }
    const [ok, result] = native(1, value, transfer);
    if (!ok) throw domException(result, 'DataCloneError');
    return result;
  }
  define('structuredClone', structuredClone);

  // ---- Blob, File (File API) ----
  // Bytes as a Blob holds them; strings are UTF-8 (as USVStrings).
  const Uint8 = Uint8Array;
  let encoder;
  const utf8 = (text) => {
    encoder ??= new global.TextEncoder();
    return encoder.encode(text);
  };
  let decoder;
  const fromUtf8 = (bytes) => {
    decoder ??= new global.TextDecoder();
    return decoder.decode(bytes);
  };
  const BYTES = Symbol.for('mcp-v8 blob bytes');
  const blobType = (type) => {
    const text = type === undefined ? '' : `${type}`;
    for (let i = 0; i < text.length; i++) {
      const c = apply(charCodeAt, text, [i]);
      if (c < 0x20 || c > 0x7e) return '';
    }
    return text.toLowerCase();
  };
  const partBytes = (part, endings) => {
    if (part instanceof ArrayBuffer) return new Uint8(part.slice(0));
    if (isView(part)) return new Uint8(part.buffer.slice(part.byteOffset, part.byteOffset + part.byteLength));
    if (part instanceof Blob) return part[BYTES]();
    let text = `${part}`;
    if (endings === 'native') text = text.replace(/\r\n|\r/g, '\n');
    return utf8(text);
  };
  const concat = (chunks) => {
    let size = 0;
    for (const c of chunks) size += c.length;
    const out = new Uint8(size);
    let at = 0;
    for (const c of chunks) { out.set(c, at); at += c.length; }
    return out;
  };

  // A Blob's state — [bytes, type] and, for a File, name and lastModified — is kept by the
  // host under a private key (`native(2..)`), so that structuredClone can copy it and make a
  // Blob again without running JavaScript.
  const brand = (blob, ...state) => native(3, blob, state);
  const state = (blob) => {
    const s = native(4, blob);
    if (s === undefined) throw new TypeErrorCtor('Illegal invocation');
    return s;
  };
  class Blob {
    constructor(blobParts = undefined, options = undefined) {
      if (options !== undefined && options !== null && typeof options !== 'object' && typeof options !== 'function') {
        throw new TypeErrorCtor("Failed to construct 'Blob': The provided value is not of type 'BlobPropertyBag'.");
      }
      const chunks = [];
      if (blobParts !== undefined) {
        if (blobParts === null || (typeof blobParts !== 'object' && typeof blobParts !== 'function')
          || typeof blobParts[Symbol.iterator] !== 'function') {
          throw new TypeErrorCtor("Failed to construct 'Blob': The provided value cannot be converted to a sequence.");
        }
        // Each part converted as it is iterated (WebIDL's sequence<BlobPart>), before the options.
        const parts = [];
        for (const part of blobParts) {
          parts.push(part instanceof ArrayBuffer || isView(part) || part instanceof Blob ? part : `${part}`);
        }
        const endings = options?.endings === undefined ? 'transparent' : `${options.endings}`;
        if (endings !== 'transparent' && endings !== 'native') {
          throw new TypeErrorCtor(`Failed to construct 'Blob': '${endings}' is not a valid value for 'endings'.`);
        }
        for (const part of parts) chunks.push(partBytes(part, endings));
      }
      brand(this, concat(chunks), blobType(options?.type));
    }
    get size() { return state(this)[0].length; }
    get type() { return state(this)[1]; }
    slice(start = undefined, end = undefined, contentType = undefined) {
      const bytes = state(this)[0];
      const size = bytes.length;
      const at = (n, otherwise) => {
        if (n === undefined) return otherwise;
        n = Math.trunc(Number(n)) || 0;
        return n < 0 ? Math.max(size + n, 0) : Math.min(n, size);
      };
      const from = at(start, 0);
      const to = at(end, size);
      return new Blob([bytes.subarray(from, Math.max(from, to))], { type: contentType });
    }
    text() {
      try { return Promise.resolve(fromUtf8(state(this)[0])); } catch (e) { return Promise.reject(e); }
    }
    arrayBuffer() {
      try { return Promise.resolve(state(this)[0].slice().buffer); } catch (e) { return Promise.reject(e); }
    }
    bytes() {
      try { return Promise.resolve(state(this)[0].slice()); } catch (e) { return Promise.reject(e); }
    }
    stream() {
      const ReadableStreamCtor = global.ReadableStream;
      if (typeof ReadableStreamCtor !== 'function') {
        throw new TypeErrorCtor('Blob.stream: streams are not supported here yet; use arrayBuffer(), bytes() or text()');
      }
      const bytes = state(this)[0].slice();
      return new ReadableStreamCtor({ start(c) { if (bytes.length) c.enqueue(bytes); c.close(); } });
    }
    // For fetch bodies: a copy of the bytes.
    [BYTES]() { return state(this)[0].slice(); }
  }
  tag(Blob, 'Blob');
  define('Blob', Blob);

  class File extends Blob {
    constructor(fileBits, fileName, options = undefined) {
      required(arguments.length, 2, "Failed to construct 'File'");
      super(fileBits, options);
      const [bytes, type] = state(this);
      const modified = options?.lastModified;
      const lastModified = modified === undefined ? Date.now() : Number(BigInt.asIntN(64, BigInt(Math.trunc(Number(modified)) || 0)));
      brand(this, bytes, type, `${fileName}`.toWellFormed(), lastModified);
    }
    get name() {
      const s = state(this);
      if (s.length < 4) throw new TypeErrorCtor('Illegal invocation');
      return s[2];
    }
    get lastModified() {
      const s = state(this);
      if (s.length < 4) throw new TypeErrorCtor('Illegal invocation');
      return s[3];
    }
    get webkitRelativePath() { return ''; }
  }
  tag(File, 'File');
  define('File', File);
  // Where structuredClone makes Blobs and Files again.
  native(5, Blob.prototype, File.prototype);

  // ---- FormData (XHR) ----
  // An entry's value: a string, or a File (a Blob becomes one named "blob").
  const entryValue = (value, filename, argc) => {
    if (value instanceof Blob) {
      if (!(value instanceof File) || argc > 2) {
        return new File([value], filename === undefined ? (value instanceof File ? value.name : 'blob') : `${filename}`,
          { type: value.type, lastModified: value instanceof File ? value.lastModified : undefined });
      }
      return value;
    }
    return `${value}`.toWellFormed();
  };
  class FormData {
    #list = [];
    constructor(form = undefined, submitter = undefined) {
      if (form !== undefined) throw new TypeErrorCtor("Failed to construct 'FormData': parameter 1 is not of type 'HTMLFormElement'.");
      void submitter;
    }
    append(name, value, filename = undefined) {
      required(arguments.length, 2, "Failed to execute 'append' on 'FormData'");
      this.#list.push([`${name}`.toWellFormed(), entryValue(value, filename, arguments.length)]);
    }
    delete(name) {
      name = `${name}`.toWellFormed();
      this.#list = this.#list.filter(([n]) => n !== name);
    }
    get(name) {
      name = `${name}`.toWellFormed();
      const entry = this.#list.find(([n]) => n === name);
      return entry === undefined ? null : entry[1];
    }
    getAll(name) {
      name = `${name}`.toWellFormed();
      return this.#list.filter(([n]) => n === name).map(([, v]) => v);
    }
    has(name) {
      name = `${name}`.toWellFormed();
      return this.#list.some(([n]) => n === name);
    }
    set(name, value, filename = undefined) {
      required(arguments.length, 2, "Failed to execute 'set' on 'FormData'");
      name = `${name}`.toWellFormed();
      const entry = [name, entryValue(value, filename, arguments.length)];
      const first = this.#list.findIndex(([n]) => n === name);
      if (first < 0) {
        this.#list.push(entry);
      } else {
        this.#list = this.#list.filter(([n], i) => n !== name || i === first);
        this.#list[first] = entry;
      }
    }
    forEach(callback, thisArg = undefined) {
      for (const [n, v] of this.#list) apply(callback, thisArg, [v, n, this]);
    }
    *entries() { for (let i = 0; i < this.#list.length; i++) yield [...this.#list[i]]; }
    *keys() { for (const [n] of this.entries()) yield n; }
    *values() { for (const [, v] of this.entries()) yield v; }
    [Symbol.iterator]() { return this.entries(); }
  }
  tag(FormData, 'FormData');
  define('FormData', FormData);

  // ---- self, navigator, reportError ----
  define('self', global);
  class Navigator {
    constructor() {
      if (!constructing) throw new TypeErrorCtor('Illegal constructor');
    }
    get userAgent() { return userAgent; }
  }
  tag(Navigator, 'Navigator');
  constructing = true;
  const navigator = new Navigator();
  constructing = false;
  define('Navigator', Navigator);
  define('navigator', navigator);

  // Reports an error as an uncaught one is reported, without throwing it.
  function reportError(error) {
    required(arguments.length, 1, "Failed to execute 'reportError'");
    if (typeof consoleError === 'function') apply(consoleError, global.console, ['Uncaught', error]);
  }
  define('reportError', reportError);
}

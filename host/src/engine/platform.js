// Makes the WinterTC globals that stand on their own (see `globals::platform`), each only where
// the heap has none of that name: `atob`, `btoa`, `crypto` (`getRandomValues`, `randomUUID`),
// `Crypto`, `structuredClone`, `self`, `navigator`, `reportError`. `native(op, a, b)` does what
// needs the host: 0 fills a view with the run's secure random bytes, 1 clones a value with V8's
// own serializer (`[true, clone]`, or `[false, why]` for what cannot be cloned).
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

// Makes the web platform's globals that go with `fetch` (see `globals::web`), each only where
// the heap has none of that name. `native(op, a, b)` does what must not be written twice here:
// the WHATWG URL parser (0 parse, 1 set a part), form encoding (2 parse, 3 serialize) and
// UTF-8 (4 encode, 5 decode), and 7 gives up on a host call. `ask(3, head, body)` is the host call that makes a request: its
// promise resolves to `{status, statusText, url, redirected, headers, body}` or rejects with
// `{kind, message}`. Bodies are whole (no streams): the host reads a response to its end,
// within the server's limit.
(global, native, ask) => {
  'use strict';

  // Built-ins as they were when these were made: code that replaces them later does not
  // change how a request is sent or a response read.
  const { parse: parseJSON, stringify } = JSON;
  const { defineProperty, keys: ownKeys } = Object;
  const then = Promise.prototype.then;
  const after = (promise, done, failed) => Reflect.apply(then, promise, [done, failed]);
  const PromiseCtor = Promise;
  const TypeErrorCtor = TypeError;
  const RangeErrorCtor = RangeError;
  const ErrorCtor = Error;
  const Uint8 = Uint8Array;
  const ArrayBufferCtor = ArrayBuffer;
  const isView = ArrayBuffer.isView;
  const isArray = Array.isArray;
  const iterator = Symbol.iterator;
  const toStringTag = Symbol.toStringTag;
  const setTimer = global.setTimeout;
  const apply = Reflect.apply;

  const define = (name, value) => {
    if (!Object.prototype.hasOwnProperty.call(global, name)) {
      defineProperty(global, name, { value, writable: true, configurable: true });
    }
  };
  const tag = (C, name) => defineProperty(C.prototype, toStringTag, { value: name, configurable: true });
  const str = (v) => `${v}`;
  // A USVString: lone surrogates become U+FFFD, as the host reads them too.
  const usv = (v) => str(v).toWellFormed();
  const bytesOf = (text) => native(4, text);

  // ---- DOMException, Event, EventTarget (as much as AbortSignal needs) ----
  // WebIDL's legacy codes: [constant, code, name]; three constants have no name.
  const legacy = [['INDEX_SIZE_ERR', 1, 'IndexSizeError'], ['DOMSTRING_SIZE_ERR', 2],
    ['HIERARCHY_REQUEST_ERR', 3, 'HierarchyRequestError'], ['WRONG_DOCUMENT_ERR', 4, 'WrongDocumentError'],
    ['INVALID_CHARACTER_ERR', 5, 'InvalidCharacterError'], ['NO_DATA_ALLOWED_ERR', 6],
    ['NO_MODIFICATION_ALLOWED_ERR', 7, 'NoModificationAllowedError'], ['NOT_FOUND_ERR', 8, 'NotFoundError'],
    ['NOT_SUPPORTED_ERR', 9, 'NotSupportedError'], ['INUSE_ATTRIBUTE_ERR', 10, 'InUseAttributeError'],
    ['INVALID_STATE_ERR', 11, 'InvalidStateError'], ['SYNTAX_ERR', 12, 'SyntaxError'],
    ['INVALID_MODIFICATION_ERR', 13, 'InvalidModificationError'], ['NAMESPACE_ERR', 14, 'NamespaceError'],
    ['INVALID_ACCESS_ERR', 15, 'InvalidAccessError'], ['VALIDATION_ERR', 16],
    ['TYPE_MISMATCH_ERR', 17, 'TypeMismatchError'], ['SECURITY_ERR', 18, 'SecurityError'],
    ['NETWORK_ERR', 19, 'NetworkError'], ['ABORT_ERR', 20, 'AbortError'],
    ['URL_MISMATCH_ERR', 21, 'URLMismatchError'], ['QUOTA_EXCEEDED_ERR', 22, 'QuotaExceededError'],
    ['TIMEOUT_ERR', 23, 'TimeoutError'], ['INVALID_NODE_TYPE_ERR', 24, 'InvalidNodeTypeError'],
    ['DATA_CLONE_ERR', 25, 'DataCloneError']];
  const codes = {};
  for (const [, code, name] of legacy) if (name) codes[name] = code;
  class DOMException extends ErrorCtor {
    #name;
    constructor(message = '', name = 'Error') {
      super(str(message));
      this.#name = str(name);
    }
    get name() { return this.#name; }
    get code() { return codes[this.#name] ?? 0; }
  }
  for (const [constant, code] of legacy) {
    defineProperty(DOMException, constant, { value: code, enumerable: true });
    defineProperty(DOMException.prototype, constant, { value: code, enumerable: true });
  }
  define('DOMException', DOMException);
  const DOMExceptionCtor = DOMException;

  class Event {
    #type;
    #target = null;
    constructor(type, init = {}) {
      if (arguments.length === 0) throw new TypeErrorCtor("Event: 1 argument required, but only 0 present.");
      this.#type = str(type);
      this.bubbles = !!init.bubbles;
      this.cancelable = !!init.cancelable;
      this.defaultPrevented = false;
      this.timeStamp = 0;
    }
    get type() { return this.#type; }
    get target() { return this.#target; }
    get currentTarget() { return this.#target; }
    preventDefault() { if (this.cancelable) this.defaultPrevented = true; }
    stopPropagation() {}
    stopImmediatePropagation() {}
    static targetOf(event, target) { event.#target = target; }
  }
  const setTarget = Event.targetOf;
  delete Event.targetOf;
  tag(Event, 'Event');
  define('Event', Event);

  class EventTarget {
    #listeners = new Map();
    addEventListener(type, listener, options) {
      if (listener === null || listener === undefined) return;
      type = str(type);
      const once = typeof options === 'object' && options !== null && !!options.once;
      const signal = typeof options === 'object' && options !== null ? options.signal : undefined;
      if (signal !== undefined && signal.aborted) return;
      let list = this.#listeners.get(type);
      if (list === undefined) this.#listeners.set(type, list = []);
      if (list.some((l) => l.listener === listener)) return;
      const entry = { listener, once };
      list.push(entry);
      if (signal !== undefined) signal.addEventListener('abort', () => this.removeEventListener(type, listener));
    }
    removeEventListener(type, listener) {
      const list = this.#listeners.get(str(type));
      if (list === undefined) return;
      const i = list.findIndex((l) => l.listener === listener);
      if (i >= 0) list.splice(i, 1);
    }
    dispatchEvent(event) {
      if (!(event instanceof Event)) throw new TypeErrorCtor("EventTarget.dispatchEvent: the argument is not an Event");
      setTarget(event, this);
      const handler = this[`on${event.type}`];
      if (typeof handler === 'function') {
        try { apply(handler, this, [event]); } catch (e) { reportError(e); }
      }
      for (const entry of [...(this.#listeners.get(event.type) ?? [])]) {
        if (entry.once) this.removeEventListener(event.type, entry.listener);
        try {
          const l = entry.listener;
          if (typeof l === 'function') apply(l, this, [event]);
          else if (l !== null && typeof l.handleEvent === 'function') apply(l.handleEvent, l, [event]);
        } catch (e) { reportError(e); }
      }
      return !event.defaultPrevented;
    }
  }
  // An exception in a listener is reported, as a browser does, and the others still run.
  const reportError = (e) => { try { console.error(e); } catch {} };
  tag(EventTarget, 'EventTarget');
  define('EventTarget', EventTarget);

  // ---- AbortController, AbortSignal ----
  let making = false;
  class AbortSignal extends EventTarget {
    #aborted = false;
    #reason = undefined;
    constructor() {
      if (!making) throw new TypeErrorCtor('Illegal constructor');
      super();
      making = false;
      this.onabort = null;
    }
    get aborted() { return this.#aborted; }
    get reason() { return this.#reason; }
    throwIfAborted() { if (this.#aborted) throw this.#reason; }
    static abort(reason) {
      const signal = newSignal();
      signal.#abort(reason);
      return signal;
    }
    static timeout(ms) {
      const signal = newSignal();
      setTimer(() => signal.#abort(new DOMExceptionCtor('The operation timed out.', 'TimeoutError')), Number(ms));
      return signal;
    }
    static any(signals) {
      const signal = newSignal();
      for (const s of signals) {
        if (s.aborted) { signal.#abort(s.reason); return signal; }
      }
      for (const s of signals) s.addEventListener('abort', () => signal.#abort(s.reason), { once: true });
      return signal;
    }
    static abortWith(signal, reason) { signal.#abort(reason); }
    #abort(reason) {
      if (this.#aborted) return;
      this.#aborted = true;
      this.#reason = reason === undefined ? new DOMExceptionCtor('This operation was aborted', 'AbortError') : reason;
      this.dispatchEvent(new Event('abort'));
    }
  }
  const abortWith = AbortSignal.abortWith;
  delete AbortSignal.abortWith;
  const newSignal = () => { making = true; return new AbortSignal(); };
  tag(AbortSignal, 'AbortSignal');
  define('AbortSignal', AbortSignal);

  class AbortController {
    #signal = newSignal();
    get signal() { return this.#signal; }
    abort(reason) { abortWith(this.#signal, reason); }
  }
  tag(AbortController, 'AbortController');
  define('AbortController', AbortController);

  // ---- TextEncoder, TextDecoder (UTF-8, the only encoding the encoding standard encodes) ----
  class TextEncoder {
    get encoding() { return 'utf-8'; }
    encode(input = '') { return bytesOf(usv(input)); }
    encodeInto(source, destination) {
      if (!(destination instanceof Uint8)) throw new TypeErrorCtor('TextEncoder.encodeInto: the destination is not a Uint8Array');
      let read = 0;
      let written = 0;
      for (const point of usv(source)) {
        const bytes = bytesOf(point);
        if (written + bytes.length > destination.length) break;
        destination.set(bytes, written);
        written += bytes.length;
        read += point.length;
      }
      return { read, written };
    }
  }
  tag(TextEncoder, 'TextEncoder');
  define('TextEncoder', TextEncoder);

  const utf8Labels = new Set(['unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'utf-8', 'utf8', 'x-unicode20utf8']);
  class TextDecoder {
    #fatal;
    #ignoreBOM;
    #held = new Uint8(0);
    #started = false;
    constructor(label = 'utf-8', options = {}) {
      const name = str(label).trim().toLowerCase();
      if (!utf8Labels.has(name)) throw new RangeErrorCtor(`TextDecoder: the encoding "${label}" is not supported here (only UTF-8)`);
      this.#fatal = !!(options && options.fatal);
      this.#ignoreBOM = !!(options && options.ignoreBOM);
    }
    get encoding() { return 'utf-8'; }
    get fatal() { return this.#fatal; }
    get ignoreBOM() { return this.#ignoreBOM; }
    decode(input = new Uint8(0), options = {}) {
      let bytes;
      if (input instanceof ArrayBufferCtor) bytes = new Uint8(input);
      else if (isView(input)) bytes = new Uint8(input.buffer, input.byteOffset, input.byteLength);
      else throw new TypeErrorCtor('TextDecoder.decode: the input is not an ArrayBuffer or a view of one');
      if (this.#held.length > 0) {
        const joined = new Uint8(this.#held.length + bytes.length);
        joined.set(this.#held);
        joined.set(bytes, this.#held.length);
        bytes = joined;
      }
      const stream = !!(options && options.stream);
      const flags = (this.#fatal ? 1 : 0) | (stream ? 2 : 0) | (this.#ignoreBOM || this.#started ? 4 : 0);
      const decoded = native(5, bytes, flags);
      if (decoded === null) {
        this.#held = new Uint8(0);
        this.#started = false;
        throw new TypeErrorCtor('TextDecoder.decode: the data is not valid UTF-8');
      }
      const [text, held] = decoded;
      this.#held = held > 0 ? bytes.slice(bytes.length - held) : new Uint8(0);
      this.#started = stream && (this.#started || bytes.length > held);
      return text;
    }
  }
  tag(TextDecoder, 'TextDecoder');
  define('TextDecoder', TextDecoder);
  const decoder = new TextDecoder();
  // application/x-www-form-urlencoded keeps a leading byte order mark.
  const keepBom = new TextDecoder('utf-8', { ignoreBOM: true });

  // ---- URLSearchParams, URL ----
  class URLSearchParams {
    #list = [];
    #url = null;
    constructor(init = '') {
      if (init instanceof URLSearchParams) {
        this.#list = init.#list.map(([n, v]) => [n, v]);
      } else if (typeof init === 'object' && init !== null) {
        if (typeof init[iterator] === 'function') {
          for (const pair of init) {
            const p = [...pair];
            if (p.length !== 2) throw new TypeErrorCtor('URLSearchParams: each pair must have exactly two items');
            this.#list.push([usv(p[0]), usv(p[1])]);
          }
        } else {
          for (const key of ownKeys(init)) this.#list.push([usv(key), usv(init[key])]);
        }
      } else {
        let text = usv(init);
        if (text.startsWith('?')) text = text.slice(1);
        this.#list = native(2, text);
      }
    }
    static attach(params, url) { params.#url = url; }
    static replace(params, search) { params.#list = native(2, search.startsWith('?') ? search.slice(1) : search); }
    #update() { if (this.#url !== null) setSearch(this.#url, this.toString()); }
    get size() { return this.#list.length; }
    append(name, value) { this.#list.push([usv(name), usv(value)]); this.#update(); }
    delete(name, value) {
      name = usv(name);
      this.#list = this.#list.filter(([n, v]) => n !== name || (value !== undefined && v !== usv(value)));
      this.#update();
    }
    get(name) { name = usv(name); const p = this.#list.find(([n]) => n === name); return p === undefined ? null : p[1]; }
    getAll(name) { name = usv(name); return this.#list.filter(([n]) => n === name).map(([, v]) => v); }
    has(name, value) { name = usv(name); return this.#list.some(([n, v]) => n === name && (value === undefined || v === usv(value))); }
    set(name, value) {
      name = usv(name);
      value = usv(value);
      const i = this.#list.findIndex(([n]) => n === name);
      if (i < 0) this.#list.push([name, value]);
      else this.#list = this.#list.filter(([n], j) => n !== name || j === i).map((p, j) => (j === i ? [name, value] : p));
      this.#update();
    }
    sort() {
      // Stable, by UTF-16 code units, as the standard says.
      this.#list = this.#list.map((p, i) => [p, i]).sort(([a, i], [b, j]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : i - j)).map(([p]) => p);
      this.#update();
    }
    forEach(callback, thisArg) { for (const [n, v] of this.#list) apply(callback, thisArg, [v, n, this]); }
    *entries() { for (const [n, v] of this.#list) yield [n, v]; }
    *keys() { for (const [n] of this.#list) yield n; }
    *values() { for (const [, v] of this.#list) yield v; }
    [iterator]() { return this.entries(); }
    toString() { return native(3, this.#list); }
  }
  const attachParams = URLSearchParams.attach;
  const replaceParams = URLSearchParams.replace;
  delete URLSearchParams.attach;
  delete URLSearchParams.replace;
  tag(URLSearchParams, 'URLSearchParams');
  define('URLSearchParams', URLSearchParams);

  // A URL's parts, as `native(0, ...)` gives them: href, origin, protocol, username, password,
  // host, hostname, port, pathname, search, hash.
  let setSearch;
  class URL {
    #parts;
    #params = null;
    constructor(url, base) {
      if (arguments.length === 0) throw new TypeErrorCtor("URL: 1 argument required, but only 0 present.");
      const parts = base === undefined ? native(0, usv(url)) : native(0, usv(url), usv(base));
      if (parts === null) throw new TypeErrorCtor(`Invalid URL: ${str(url)}${base === undefined ? '' : ` (base ${str(base)})`}`);
      this.#parts = parts;
    }
    static canParse(url, base) { return (base === undefined ? native(0, usv(url)) : native(0, usv(url), usv(base))) !== null; }
    static parse(url, base) { try { return new URL(url, base); } catch { return null; } }
    #set(part, value) {
      const parts = native(1, this.#parts[0], part, usv(value));
      if (parts !== null) this.#parts = parts;
      if (this.#params !== null && part === 'search') replaceParams(this.#params, this.#parts[9]);
    }
    static setSearchOf(url, search) { url.#set('search', search); }
    get href() { return this.#parts[0]; }
    set href(value) {
      const parts = native(0, usv(value));
      if (parts === null) throw new TypeErrorCtor(`Invalid URL: ${str(value)}`);
      this.#parts = parts;
      if (this.#params !== null) replaceParams(this.#params, parts[9]);
    }
    get origin() { return this.#parts[1]; }
    get protocol() { return this.#parts[2]; }
    set protocol(v) { this.#set('protocol', v); }
    get username() { return this.#parts[3]; }
    set username(v) { this.#set('username', v); }
    get password() { return this.#parts[4]; }
    set password(v) { this.#set('password', v); }
    get host() { return this.#parts[5]; }
    set host(v) { this.#set('host', v); }
    get hostname() { return this.#parts[6]; }
    set hostname(v) { this.#set('hostname', v); }
    get port() { return this.#parts[7]; }
    set port(v) { this.#set('port', v); }
    get pathname() { return this.#parts[8]; }
    set pathname(v) { this.#set('pathname', v); }
    get search() { return this.#parts[9]; }
    set search(v) { this.#set('search', v); }
    get hash() { return this.#parts[10]; }
    set hash(v) { this.#set('hash', v); }
    get searchParams() {
      if (this.#params === null) {
        this.#params = new URLSearchParams(this.#parts[9]);
        attachParams(this.#params, this);
      }
      return this.#params;
    }
    toString() { return this.#parts[0]; }
    toJSON() { return this.#parts[0]; }
  }
  const setSearchOf = URL.setSearchOf;
  delete URL.setSearchOf;
  setSearch = (url, search) => setSearchOf(url, search === '' ? '' : `?${search}`);
  tag(URL, 'URL');
  define('URL', URL);

  // ---- Headers ----
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const headerName = (name) => {
    name = str(name);
    if (!TOKEN.test(name)) throw new TypeErrorCtor(`Headers: "${name}" is not a valid header name`);
    return name.toLowerCase();
  };
  const headerValue = (value) => {
    value = str(value).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '');
    // eslint-disable-next-line no-control-regex
    if (/[\0\r\n]/.test(value) || /[^\u0000-\u00ff]/.test(value)) throw new TypeErrorCtor(`Headers: "${value}" is not a valid header value`);
    return value;
  };
  class Headers {
    #list = [];
    #immutable = false;
    constructor(init) {
      if (init === undefined || init === null) return;
      if (init instanceof Headers) {
        this.#list = init.#list.map(([n, v]) => [n, v]);
      } else if (typeof init === 'object' && typeof init[iterator] === 'function') {
        for (const pair of init) {
          const p = [...pair];
          if (p.length !== 2) throw new TypeErrorCtor('Headers: each header must be a [name, value] pair');
          this.append(p[0], p[1]);
        }
      } else if (typeof init === 'object') {
        for (const key of ownKeys(init)) this.append(key, init[key]);
      } else {
        throw new TypeErrorCtor('Headers: the init is not an object');
      }
    }
    static freeze(headers) { headers.#immutable = true; return headers; }
    static list(headers) { return headers.#list; }
    #check() { if (this.#immutable) throw new TypeErrorCtor('Headers: these headers are immutable'); }
    append(name, value) { this.#check(); this.#list.push([headerName(name), headerValue(value)]); }
    delete(name) { this.#check(); name = headerName(name); this.#list = this.#list.filter(([n]) => n !== name); }
    get(name) {
      name = headerName(name);
      const values = this.#list.filter(([n]) => n === name).map(([, v]) => v);
      return values.length === 0 ? null : values.join(', ');
    }
    getSetCookie() { return this.#list.filter(([n]) => n === 'set-cookie').map(([, v]) => v); }
    has(name) { name = headerName(name); return this.#list.some(([n]) => n === name); }
    set(name, value) {
      this.#check();
      name = headerName(name);
      value = headerValue(value);
      const i = this.#list.findIndex(([n]) => n === name);
      if (i < 0) this.#list.push([name, value]);
      else this.#list = this.#list.filter(([n], j) => n !== name || j === i).map((p, j) => (j === i ? [name, value] : p));
    }
    // Sorted and combined, as the standard iterates them (set-cookie stays one per value).
    *entries() {
      const names = [...new Set(this.#list.map(([n]) => n))].sort();
      for (const name of names) {
        if (name === 'set-cookie') for (const v of this.getSetCookie()) yield [name, v];
        else yield [name, this.get(name)];
      }
    }
    *keys() { for (const [n] of this.entries()) yield n; }
    *values() { for (const [, v] of this.entries()) yield v; }
    forEach(callback, thisArg) { for (const [n, v] of this.entries()) apply(callback, thisArg, [v, n, this]); }
    [iterator]() { return this.entries(); }
  }
  const freezeHeaders = Headers.freeze;
  const listOf = Headers.list;
  delete Headers.freeze;
  delete Headers.list;
  tag(Headers, 'Headers');
  define('Headers', Headers);

  // ---- Bodies, Request, Response ----
  // A body as bytes and the content type it implies.
  // Blob and FormData come with the other web globals, made on first use: a body can only be
  // one once they are made, so looking here never makes them.
  const BLOB_BYTES = Symbol.for('mcp-v8 blob bytes');
  const made = (name) => {
    const d = Object.getOwnPropertyDescriptor(global, name);
    return d !== undefined && typeof d.value === 'function' ? d.value : undefined;
  };
  const isA = (value, name) => {
    const C = made(name);
    return C !== undefined && value instanceof C;
  };
  // multipart/form-data (HTML's encoding algorithm), with a boundary from crypto.
  const multipart = (form) => {
    const boundary = `----mcp-v8-${global.crypto.randomUUID()}`;
    const escape = (text) => text.replace(/\n/g, '%0A').replace(/\r/g, '%0D').replace(/"/g, '%22');
    const chunks = [];
    for (const [name, value] of form) {
      let head = `--${boundary}\r\nContent-Disposition: form-data; name="${escape(name)}"`;
      if (typeof value === 'string') {
        chunks.push(bytesOf(`${head}\r\n\r\n${value.replace(/\r\n|\r|\n/g, '\r\n')}\r\n`));
      } else {
        head += `; filename="${escape(value.name)}"\r\nContent-Type: ${value.type || 'application/octet-stream'}\r\n\r\n`;
        chunks.push(bytesOf(head), value[BLOB_BYTES](), bytesOf('\r\n'));
      }
    }
    chunks.push(bytesOf(`--${boundary}--\r\n`));
    const BlobCtor = made('Blob');
    return [new BlobCtor(chunks)[BLOB_BYTES](), `multipart/form-data; boundary=${boundary}`];
  };
  const extract = (body) => {
    if (body instanceof ArrayBufferCtor) return [new Uint8(body.slice(0)), null];
    if (isView(body)) return [new Uint8(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength)), null];
    if (body instanceof URLSearchParams) return [bytesOf(body.toString()), 'application/x-www-form-urlencoded;charset=UTF-8'];
    if (isA(body, 'Blob')) return [body[BLOB_BYTES](), body.type === '' ? null : body.type];
    if (isA(body, 'FormData')) return multipart(body);
    if (typeof body === 'object' && body !== null && typeof body.getReader === 'function') {
      throw new TypeErrorCtor('fetch: streamed bodies are not supported here; send a string, bytes, a Blob, FormData or URLSearchParams');
    }
    return [bytesOf(usv(body)), 'text/plain;charset=UTF-8'];
  };

  const BODY = Symbol('body');
  const bodyMethods = (C, what) => {
    const take = (self) => {
      const state = self[BODY];
      if (state.used) return PromiseCtor.reject(new TypeErrorCtor(`${what}: the body has already been read`));
      state.used = state.bytes !== null;
      return PromiseCtor.resolve(state.bytes === null ? new Uint8(0) : state.bytes);
    };
    const methods = {
      arrayBuffer() { return after(take(this), (b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)); },
      bytes() { return after(take(this), (b) => new Uint8(b)); },
      text() { return after(take(this), (b) => decoder.decode(b)); },
      json() { return after(take(this), (b) => parseJSON(decoder.decode(b))); },
      blob() {
        const type = this.headers.get('content-type') ?? '';
        return after(take(this), (b) => new global.Blob([b], { type }));
      },
      formData() {
        const type = (this.headers.get('content-type') ?? '').toLowerCase();
        if (!type.startsWith('application/x-www-form-urlencoded')) {
          return PromiseCtor.reject(new TypeErrorCtor(`${what}.formData: only application/x-www-form-urlencoded bodies are read as FormData here`));
        }
        return after(take(this), (b) => {
          const form = new global.FormData();
          for (const [name, value] of new URLSearchParams(keepBom.decode(b))) form.append(name, value);
          return form;
        });
      },
    };
    for (const name of ownKeys(methods)) {
      defineProperty(C.prototype, name, { value: methods[name], writable: true, configurable: true });
    }
    defineProperty(C.prototype, 'bodyUsed', { get() { return this[BODY].used; }, configurable: true });
  };

  const METHODS = new Set(['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH']);
  const REDIRECTS = new Set(['follow', 'error', 'manual']);
  class Request {
    #method;
    #url;
    #headers;
    #redirect;
    #signal;
    constructor(input, init = {}) {
      if (arguments.length === 0) throw new TypeErrorCtor("Request: 1 argument required, but only 0 present.");
      init = init ?? {};
      let body = null;
      if (input instanceof Request) {
        this.#method = input.#method;
        this.#url = input.#url;
        this.#headers = new Headers(input.#headers);
        this.#redirect = input.#redirect;
        this.#signal = input.#signal;
        if (input[BODY].used) throw new TypeErrorCtor('Request: the body of the request given has already been read');
        body = input[BODY].bytes;
      } else {
        const parsed = native(0, usv(input));
        if (parsed === null) throw new TypeErrorCtor(`Request: "${str(input)}" is not an absolute URL`);
        if (parsed[3] !== '' || parsed[4] !== '') throw new TypeErrorCtor('Request: a URL with credentials is not allowed; send an Authorization header');
        this.#url = parsed[0];
        this.#method = 'GET';
        this.#headers = new Headers();
        this.#redirect = 'follow';
        this.#signal = undefined;
      }
      if (init.method !== undefined) {
        const method = str(init.method);
        if (!TOKEN.test(method)) throw new TypeErrorCtor(`Request: "${method}" is not a valid method`);
        const upper = method.toUpperCase();
        if (upper === 'CONNECT' || upper === 'TRACE' || upper === 'TRACK') throw new TypeErrorCtor(`Request: the method ${upper} is forbidden`);
        this.#method = METHODS.has(upper) ? upper : method;
      }
      if (init.headers !== undefined) this.#headers = new Headers(init.headers);
      if (init.redirect !== undefined) {
        if (!REDIRECTS.has(str(init.redirect))) throw new TypeErrorCtor(`Request: redirect must be "follow", "error" or "manual"`);
        this.#redirect = str(init.redirect);
      }
      if (init.signal !== undefined && init.signal !== null) {
        if (!(init.signal instanceof AbortSignal)) throw new TypeErrorCtor('Request: signal is not an AbortSignal');
        this.#signal = init.signal;
      }
      if (init.body !== undefined && init.body !== null) {
        if (this.#method === 'GET' || this.#method === 'HEAD') throw new TypeErrorCtor('Request: a GET or HEAD request cannot have a body');
        const [bytes, type] = extract(init.body);
        body = bytes;
        if (type !== null && !this.#headers.has('content-type')) this.#headers.set('content-type', type);
      }
      this[BODY] = { bytes: body, used: false };
      if (this.#signal === undefined) this.#signal = newSignal();
    }
    get method() { return this.#method; }
    get url() { return this.#url; }
    get headers() { return this.#headers; }
    get redirect() { return this.#redirect; }
    get signal() { return this.#signal; }
    clone() {
      if (this[BODY].used) throw new TypeErrorCtor('Request.clone: the body has already been read');
      return new Request(this);
    }
  }
  defineProperty(Request.prototype, BODY, { writable: true, value: null });
  bodyMethods(Request, 'Request');
  tag(Request, 'Request');
  define('Request', Request);

  const NULL_BODY = new Set([101, 103, 204, 205, 304]);
  const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);
  let fromHost = null;
  class Response {
    #status;
    #statusText;
    #headers;
    #url = '';
    #redirected = false;
    #type = 'default';
    constructor(body = null, init = {}) {
      init = init ?? {};
      if (fromHost !== null) {
        const r = fromHost;
        fromHost = null;
        this.#status = r.status;
        this.#statusText = r.statusText;
        this.#headers = freezeHeaders(new Headers(r.headers));
        this.#url = r.url;
        this.#redirected = r.redirected;
        this.#type = 'basic';
        this[BODY] = { bytes: new Uint8(r.body), used: false };
        return;
      }
      const status = init.status === undefined ? 200 : Number(init.status);
      if (!(status >= 200 && status <= 599 && Math.trunc(status) === status)) throw new RangeErrorCtor(`Response: status ${init.status} is not in the range 200 to 599`);
      this.#status = status;
      this.#statusText = init.statusText === undefined ? '' : str(init.statusText);
      this.#headers = new Headers(init.headers);
      let bytes = null;
      if (body !== null && body !== undefined) {
        if (NULL_BODY.has(status)) throw new TypeErrorCtor(`Response: a response with status ${status} cannot have a body`);
        const [b, type] = extract(body);
        bytes = b;
        if (type !== null && !this.#headers.has('content-type')) this.#headers.set('content-type', type);
      }
      this[BODY] = { bytes, used: false };
    }
    static error() {
      const r = new Response(null, { status: 200 });
      r.#status = 0;
      r.#type = 'error';
      freezeHeaders(r.#headers);
      return r;
    }
    static json(data, init = {}) {
      const text = stringify(data);
      if (text === undefined) throw new TypeErrorCtor('Response.json: the data cannot be written as JSON');
      const headers = new Headers(init?.headers);
      if (!headers.has('content-type')) headers.set('content-type', 'application/json');
      return new Response(text, { ...init, headers });
    }
    static redirect(url, status = 302) {
      if (!REDIRECT_STATUS.has(status)) throw new RangeErrorCtor(`Response.redirect: ${status} is not a redirect status`);
      const parsed = native(0, usv(url));
      if (parsed === null) throw new TypeErrorCtor(`Response.redirect: "${str(url)}" is not an absolute URL`);
      const r = new Response(null, { status, headers: { location: parsed[0] } });
      freezeHeaders(r.#headers);
      return r;
    }
    static fromHost(r) { fromHost = r; return new Response(); }
    get status() { return this.#status; }
    get ok() { return this.#status >= 200 && this.#status <= 299; }
    get statusText() { return this.#statusText; }
    get headers() { return this.#headers; }
    get url() { return this.#url; }
    get redirected() { return this.#redirected; }
    get type() { return this.#type; }
    clone() {
      if (this[BODY].used) throw new TypeErrorCtor('Response.clone: the body has already been read');
      const copy = new Response(null, { status: 200 });
      copy.#status = this.#status;
      copy.#statusText = this.#statusText;
      copy.#headers = new Headers(this.#headers);
      copy.#url = this.#url;
      copy.#redirected = this.#redirected;
      copy.#type = this.#type;
      copy[BODY] = { bytes: this[BODY].bytes === null ? null : new Uint8(this[BODY].bytes), used: false };
      return copy;
    }
  }
  const responseFromHost = Response.fromHost;
  delete Response.fromHost;
  defineProperty(Response.prototype, BODY, { writable: true, value: null });
  bodyMethods(Response, 'Response');
  tag(Response, 'Response');
  define('Response', Response);

  // ---- fetch ----
  function fetch(input, init = undefined) {
    let request;
    try {
      request = new Request(input, init);
    } catch (e) {
      return PromiseCtor.reject(e);
    }
    const url = request.url;
    if (!url.startsWith('http:') && !url.startsWith('https:')) {
      return PromiseCtor.reject(new TypeErrorCtor(`fetch ${url}: only http: and https: URLs can be fetched`, { cause: { kind: 'denied' } }));
    }
    const signal = request.signal;
    if (signal.aborted) return PromiseCtor.reject(signal.reason);
    const head = stringify({ method: request.method, url, headers: listOf(request.headers), redirect: request.redirect });
    const body = request[BODY].bytes;
    request[BODY].used = body !== null;
    return new PromiseCtor((resolve, reject) => {
      const asked = ask(3, head, body === null ? undefined : body);
      // An abort settles the promise now and tells the host it may drop the request.
      const onAbort = () => {
        native(7, asked);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      after(asked,
        (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(responseFromHost(r));
        },
        (failure) => {
          signal.removeEventListener('abort', onAbort);
          reject(new TypeErrorCtor(`fetch ${request.method} ${url}: ${failure.message}`, { cause: { kind: failure.kind } }));
        });
    });
  }
  define('fetch', fetch);
}

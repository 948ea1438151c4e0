// Makes the `tools` global and `ToolError` (see `globals::tools`). `ask(kind, a, b, c)` is the
// native host call: kind 0 calls tool `b` of server `a` with arguments `c` (JSON text), 1
// searches the catalogue for `a`, 2 describes tool `a` ("server.tool"). Its promise resolves to
// the host's answer as JSON text, or rejects with `{ kind, message }`.
(global, ask) => {
  'use strict';

  // Built-ins as they were when `tools` was made: code that replaces them later does not
  // change how a tool's result is read.
  const { parse, stringify } = JSON;
  const { defineProperty, freeze } = Object;
  const then = Promise.prototype.then;
  const isArray = Array.isArray;
  const reject = (e) => Promise.reject(e);
  const after = (promise, done, failed) => Reflect.apply(then, promise, [done, failed]);

  class ToolError extends Error {
    constructor(message, details = {}) {
      super(message);
      defineProperty(this, 'name', { value: 'ToolError', writable: true, configurable: true });
      this.server = details.server;
      this.tool = details.tool;
      this.kind = details.kind;
      this.result = details.result;
    }
  }

  const textOf = (result) => {
    const parts = [];
    for (const item of isArray(result.content) ? result.content : []) {
      if (item !== null && typeof item === 'object' && item.type === 'text') parts.push(String(item.text));
    }
    return parts.length === 0 ? undefined : parts.join('\n');
  };

  // A tool's result as code wants it: its structured content, else its text (as JSON when
  // it is JSON), else the raw result (images, resources).
  const unwrap = (server, tool, result) => {
    if (result.isError === true) {
      const text = textOf(result);
      throw new ToolError(`${server}.${tool} failed: ${text === undefined ? 'the tool reported an error' : text}`,
        { server, tool, kind: 'tool', result });
    }
    if (result.structuredContent !== undefined && result.structuredContent !== null) return result.structuredContent;
    const text = textOf(result);
    if (text === undefined) return result;
    try {
      return parse(text);
    } catch {
      return text;
    }
  };

  const call = (server, tool, args, raw) => {
    if (args !== undefined && (args === null || typeof args !== 'object' || isArray(args))) {
      return reject(new ToolError(`${server}.${tool}: the arguments must be an object`, { server, tool, kind: 'arguments' }));
    }
    let text;
    try {
      text = stringify(args === undefined ? {} : args);
    } catch (e) {
      return reject(new ToolError(`${server}.${tool}: the arguments cannot be sent as JSON (${e && e.message})`,
        { server, tool, kind: 'arguments' }));
    }
    return after(ask(0, server, tool, text),
      (answer) => {
        const result = parse(answer);
        return raw ? result : unwrap(server, tool, result);
      },
      (failure) => {
        throw new ToolError(`${server}.${tool}: ${failure.message}`, { server, tool, kind: failure.kind });
      });
  };

  const catalogue = (kind, text) => after(ask(kind, String(text), '', ''), parse, (failure) => {
    throw new ToolError(failure.message, { kind: failure.kind });
  });
  const search = function $search(query = '') { return catalogue(1, query); };
  const describe = function $describe(name) { return catalogue(2, name); };

  // Names a server or tool cannot have here: what the language and rendering look up on any
  // object (`await tools.x` reads `then`).
  const reserved = new Set(['then', 'toJSON', 'toString', 'valueOf', 'constructor', 'inspect', '__proto__']);
  const servers = new Map();
  const serverNamed = (server) => {
    let found = servers.get(server);
    if (found !== undefined) return found;
    const functions = new Map();
    found = new Proxy(freeze(Object.create(null)), {
      get(_, tool) {
        if (typeof tool !== 'string' || reserved.has(tool)) return undefined;
        let f = functions.get(tool);
        if (f === undefined) {
          f = { [tool]: (args) => call(server, tool, args, false) }[tool];
          defineProperty(f, 'raw', { value: (args) => call(server, tool, args, true) });
          functions.set(tool, f);
        }
        return f;
      },
      set() { return false; },
    });
    servers.set(server, found);
    return found;
  };
  const tools = new Proxy(freeze(Object.create(null)), {
    get(_, name) {
      if (typeof name !== 'string' || reserved.has(name)) return undefined;
      if (name === '$search') return search;
      if (name === '$describe') return describe;
      return serverNamed(name);
    },
    set() { return false; },
  });
  defineProperty(global, 'tools', { value: tools, writable: true, configurable: true });
  defineProperty(global, 'ToolError', { value: ToolError, writable: true, configurable: true });
}

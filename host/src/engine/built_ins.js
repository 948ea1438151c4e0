// Run once in every heap that lacks them (see `globals::complete_built_ins`): the built-ins
// V8 installs only in contexts it will not snapshot. Each is defined as the built-in is
// (writable, configurable, not enumerable; its name and length), unless the heap already has
// one of that name, or no longer has the object it belongs on. `isError` comes from the
// engine: [[ErrorData]] cannot be seen from JavaScript.
(global, isError) => {
  'use strict';
  const { apply, defineProperty, getOwnPropertyDescriptor } = Reflect;
  const isObject = (v) => (typeof v === 'object' && v !== null) || typeof v === 'function';
  const define = (owner, name, value) => {
    const target = global[owner];
    if (isObject(target) && getOwnPropertyDescriptor(target, name) === undefined) {
      defineProperty(target, name, { value, writable: true, configurable: true });
    }
  };
  const TypeErrorCtor = TypeError;

  define('Error', 'isError', isError);

  // Promise.try (ECMA-262 27.2.4.8).
  define('Promise', 'try', {
    try(callback, ...args) {
      const C = this;
      if (!isObject(C)) throw new TypeErrorCtor('Promise.try called on a non-object');
      let resolve, reject;
      const promise = new C((res, rej) => {
        if (resolve !== undefined || reject !== undefined) {
          throw new TypeErrorCtor('Promise executor has already been invoked with non-undefined arguments');
        }
        resolve = res;
        reject = rej;
      });
      if (typeof resolve !== 'function' || typeof reject !== 'function') {
        throw new TypeErrorCtor('Promise resolve or reject function is not callable');
      }
      let status;
      try {
        status = { value: apply(callback, undefined, args) };
      } catch (error) {
        apply(reject, undefined, [error]);
        return promise;
      }
      apply(resolve, undefined, [status.value]);
      return promise;
    },
  }.try);

  // What they use, taken now: code that patches a prototype later does not reach them.
  const { fromCodePoint } = String;
  const { codePointAt, charCodeAt, padStart } = String.prototype;
  const numberToString = Number.prototype.toString;
  const { isInteger } = Number;
  const { is } = Object;

  // Atomics.pause (ECMA-262 25.4.14): a hint to the processor; here it only checks N.
  define('Atomics', 'pause', {
    pause(...n) {
      const N = n[0];
      if (N !== undefined && (typeof N !== 'number' || !(isInteger(N) || is(N, -0)))) {
        throw new TypeErrorCtor('Atomics.pause: N must be undefined or an integral Number');
      }
    },
  }.pause);

  // RegExp.escape (ECMA-262 22.2.5.1).
  const hex = (c, width) => apply(padStart, apply(numberToString, c, [16]), [width, '0']);
  const set = (...codePoints) => {
    const table = { __proto__: null };
    for (let i = 0; i < codePoints.length; i++) table[codePoints[i]] = true;
    return table;
  };
  // SyntaxCharacter and '/'.
  const syntax = set(0x5E, 0x24, 0x5C, 0x2E, 0x2A, 0x2B, 0x3F, 0x28, 0x29, 0x5B, 0x5D, 0x7B, 0x7D, 0x7C, 0x2F);
  const control = { __proto__: null, 9: 't', 10: 'n', 11: 'v', 12: 'f', 13: 'r' };
  // The other punctuators, WhiteSpace (Zs included) and LineTerminator.
  const toEscape = set(
    0x2C, 0x2D, 0x3D, 0x3C, 0x3E, 0x23, 0x26, 0x21, 0x25, 0x3A, 0x3B, 0x40, 0x7E, 0x27, 0x60, 0x22,
    0x09, 0x0B, 0x0C, 0x20, 0xA0, 0xFEFF, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005,
    0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x202F, 0x205F, 0x3000, 0x0A, 0x0D, 0x2028, 0x2029,
  );
  const encode = (cp) => {
    const c = fromCodePoint(cp);
    if (syntax[cp]) return '\\' + c;
    if (control[cp] !== undefined) return '\\' + control[cp];
    if (toEscape[cp] || (cp >= 0xD800 && cp <= 0xDFFF)) {
      if (cp <= 0xFF) return '\\x' + hex(cp, 2);
      let out = '';
      for (let i = 0; i < c.length; i++) out += '\\u' + hex(apply(charCodeAt, c, [i]), 4);
      return out;
    }
    return c;
  };
  define('RegExp', 'escape', {
    escape(S) {
      if (typeof S !== 'string') throw new TypeErrorCtor('RegExp.escape requires a string');
      let escaped = '';
      for (let i = 0; i < S.length;) {
        const cp = apply(codePointAt, S, [i]);
        i += cp > 0xFFFF ? 2 : 1;
        const alphanumeric = (cp >= 0x30 && cp <= 0x39) || (cp >= 0x41 && cp <= 0x5A) || (cp >= 0x61 && cp <= 0x7A);
        escaped += escaped === '' && alphanumeric ? '\\x' + hex(cp, 2) : encode(cp);
      }
      return escaped;
    },
  }.escape);
}

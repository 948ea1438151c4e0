// Run once in every fresh heap (see `globals::PRELUDE`). `track(object, kind, forget)` tells
// the engine about an object V8 cannot snapshot; before a save the engine calls `forget` and
// checks that every tracked object is gone.
(track) => {
  'use strict';

  // FinalizationRegistry without registrations: V8 aborts on a snapshot holding one with an
  // unregister token or a collected target, and its callbacks would never run here anyway.
  // Shaped as the built-in is: a constructor that checks its argument before it makes the
  // object, methods that check their receiver, `register.length` 2.
  const weakly = (v) => (typeof v === 'object' && v !== null) || typeof v === 'function' ||
    (typeof v === 'symbol' && Symbol.keyFor(v) === undefined);
  const isObject = (v) => (typeof v === 'object' && v !== null) || typeof v === 'function';
  const { create, defineProperty } = Object;
  // Each registry's unregister tokens; a registry is what has an entry here.
  const registries = new WeakMap();
  const tokensOf = (registry, method) => {
    const tokens = isObject(registry) ? registries.get(registry) : undefined;
    if (tokens === undefined) {
      throw new TypeError(`FinalizationRegistry.prototype.${method}: receiver is not a FinalizationRegistry`);
    }
    return tokens;
  };
  const FinalizationRegistry = function FinalizationRegistry(cleanup) {
    if (new.target === undefined) throw new TypeError("Constructor FinalizationRegistry requires 'new'");
    if (typeof cleanup !== 'function') {
      throw new TypeError('FinalizationRegistry: cleanup must be callable');
    }
    const proto = new.target.prototype;
    const registry = create(isObject(proto) ? proto : registryPrototype);
    registries.set(registry, new WeakMap());
    return registry;
  };
  const registryPrototype = FinalizationRegistry.prototype;
  const methods = {
    register(target, held, token) {
      const tokens = tokensOf(this, 'register');
      if (!weakly(target)) throw new TypeError('FinalizationRegistry.prototype.register: invalid target');
      if (Object.is(target, held)) {
        throw new TypeError('FinalizationRegistry.prototype.register: target and holdings must not be same');
      }
      if (token !== undefined) {
        if (!weakly(token)) throw new TypeError('FinalizationRegistry.prototype.register: invalid unregister token');
        tokens.set(token, true);
      }
    },
    unregister(token) {
      const tokens = tokensOf(this, 'unregister');
      if (!weakly(token)) throw new TypeError('FinalizationRegistry.prototype.unregister: invalid unregister token');
      return tokens.delete(token);
    },
  };
  defineProperty(methods.register, 'length', { value: 2 });
  for (const name of ['register', 'unregister']) {
    defineProperty(registryPrototype, name, { value: methods[name], writable: true, configurable: true });
  }
  defineProperty(registryPrototype, Symbol.toStringTag, { value: 'FinalizationRegistry', configurable: true });
  defineProperty(FinalizationRegistry, 'prototype', { writable: false });
  defineProperty(globalThis, 'FinalizationRegistry',
    { value: FinalizationRegistry, writable: true, configurable: true });

  // Intl objects hold ICU state that V8 cannot snapshot. Each constructor makes a stand-in
  // that keeps how it was made (`recipes`) and makes the real object when first used
  // (`reals`); before a save, `forget` drops every real object at once, and the next call
  // makes them again. What the stand-ins hand out (bound `format`, `compare`) goes through
  // them too, so nothing real stays reachable.
  let reals = new WeakMap();
  const recipes = new WeakMap();
  const forget = () => { reals = new WeakMap(); };
  const real = (standIn) => {
    let object = reals.get(standIn);
    if (object === undefined) {
      const recipe = recipes.get(standIn);
      if (recipe === undefined) throw new TypeError('Intl method called on an incompatible receiver');
      object = Reflect.construct(recipe.Real, recipe.args);
      track(object, recipe.kind, forget);
      reals.set(standIn, object);
    }
    return object;
  };
  const copy = (value) => Array.isArray(value) ? [...value]
    : (typeof value === 'object' && value !== null) ? { ...value } : value;
  const legacyCallable = new Set(['Collator', 'DateTimeFormat', 'NumberFormat']);
  const standIns = new Map();

  const standInFor = (name) => {
    const Real = Intl[name];
    const kind = 'Intl.' + name;
    const StandIn = function (...args) {
      if (new.target === undefined) {
        if (!legacyCallable.has(name)) throw new TypeError(`Constructor ${kind} requires 'new'`);
        return Reflect.construct(wrapped, args);
      }
      // Made once now, so that bad arguments throw here, as they would natively.
      const object = Reflect.construct(Real, args);
      track(object, kind, forget);
      const self = Reflect.construct(Object, [], new.target);
      recipes.set(self, { Real, args: args.map(copy), kind });
      reals.set(self, object);
      return self;
    };
    const wrapped = new Proxy(StandIn, {});
    const proto = StandIn.prototype;
    const bound = new WeakMap();
    for (const key of Reflect.ownKeys(Real.prototype)) {
      if (key === 'constructor') continue;
      const d = Object.getOwnPropertyDescriptor(Real.prototype, key);
      if (d.get) {
        const get = function () {
          const value = Reflect.apply(d.get, real(this), []);
          if (typeof value !== 'function') return value;
          // A function bound to the real object (format, compare): hand out one bound to
          // the stand-in instead, the same one each time.
          let functions = bound.get(this);
          if (!functions) bound.set(this, functions = new Map());
          if (!functions.has(key)) {
            const standIn = this;
            const forward = (...a) => Reflect.apply(Reflect.apply(d.get, real(standIn), []), undefined, a);
            Object.defineProperty(forward, 'name', { value: value.name });
            functions.set(key, forward);
          }
          return functions.get(key);
        };
        Object.defineProperty(proto, key, { get, configurable: d.configurable, enumerable: d.enumerable });
      } else if (typeof d.value === 'function') {
        const method = {
          [key](...a) { return rewrap(Reflect.apply(d.value, real(this), a)); },
        }[key];
        Object.defineProperty(method, 'length', { value: d.value.length });
        Object.defineProperty(proto, key, { ...d, value: method });
      } else {
        Object.defineProperty(proto, key, d);
      }
    }
    Object.defineProperty(proto, 'constructor', { value: wrapped, writable: true, configurable: true });
    for (const key of Reflect.ownKeys(Real)) {
      if (key === 'prototype') continue;
      Object.defineProperty(StandIn, key, Object.getOwnPropertyDescriptor(Real, key));
    }
    standIns.set(Real, wrapped);
    Object.defineProperty(Intl, name, { ...Object.getOwnPropertyDescriptor(Intl, name), value: wrapped });
  };

  // Results that are themselves Intl objects: a Locale (maximize, minimize) becomes a
  // stand-in; segments and their iterators cannot, so they are only tracked.
  const RealLocale = Intl.Locale;
  const RealSegmenter = Intl.Segmenter;
  const rewrap = (value) => {
    if (value instanceof RealLocale) return new (standIns.get(RealLocale))(value.toString());
    if (typeof value === 'object' && value !== null &&
        Object.getPrototypeOf(value) === segmentsPrototype) {
      return track(value, 'Intl.Segmenter segments');
    }
    return value;
  };
  const segmentsPrototype = Object.getPrototypeOf(new RealSegmenter().segment(''));
  const iterate = segmentsPrototype[Symbol.iterator];
  Object.defineProperty(segmentsPrototype, Symbol.iterator, {
    value: {
      [Symbol.iterator]() { return track(Reflect.apply(iterate, this, []), 'Intl.Segmenter iterator'); },
    }[Symbol.iterator],
    writable: true,
    configurable: true,
  });

  for (const name of Object.getOwnPropertyNames(Intl)) {
    const value = Intl[name];
    if (typeof value === 'function' && value.prototype) standInFor(name);
  }
}

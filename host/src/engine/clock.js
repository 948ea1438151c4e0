// The clock code sees (see `globals::install_clock`): `Date.now()`, `new Date()`, `Date()` and
// `performance.now()` read the call's clock, which is real time since the call started plus
// the time skipped forward by timers (a 10-second setTimeout fires at once, and the clock shows
// the 10 seconds as passed).
(wallNow, elapsed) => {
  'use strict';
  const RealDate = Date;
  const VirtualDate = new Proxy(RealDate, {
    construct: (target, args, newTarget) =>
      Reflect.construct(target, args.length === 0 ? [wallNow()] : args, newTarget),
    apply: () => new RealDate(wallNow()).toString(),
  });
  Object.defineProperty(RealDate, 'now', {
    value: { now() { return wallNow(); } }.now,
    writable: true,
    configurable: true,
  });
  Object.defineProperty(RealDate.prototype, 'constructor',
    { value: VirtualDate, writable: true, configurable: true });
  Object.defineProperty(globalThis, 'Date',
    { value: VirtualDate, writable: true, configurable: true });
  const performance = {
    now() { return elapsed(); },
    get timeOrigin() { return wallNow() - elapsed(); },
  };
  Object.defineProperty(performance, Symbol.toStringTag, { value: 'Performance' });
  Object.defineProperty(globalThis, 'performance',
    { value: performance, writable: true, configurable: true });
}

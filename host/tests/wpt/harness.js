// What WPT's generated worker wrapper gives a test (../shared/wpt/README.md, "How a test is
// run"), for the runner in main.rs and for node.cjs alike: `GLOBAL`, `location`, `META_TITLE`,
// a `fetch` that resolves relative URLs against the test's, and the results, kept in
// `__wpt`. `load(name, source)` (for node.cjs) runs one file as a classic script; what it
// throws is kept as the harness's error, as a browser reports an uncaught exception.
(config) => {
  'use strict';
  const g = globalThis;
  g.GLOBAL = { isWindow: () => false, isWorker: () => true, isShadowRealm: () => false };
  if (config.title) g.META_TITLE = config.title;
  const href = config.href + config.search;
  const base = new URL(href);
  g.location = {
    href, origin: base.origin, protocol: base.protocol, host: base.host, hostname: base.hostname,
    port: base.port, pathname: base.pathname, search: config.search, hash: '',
    toString() { return href; },
  };
  const realFetch = g.fetch;
  g.fetch = (input, init) => realFetch(typeof input === 'string' || input instanceof URL
    ? new URL(input, href).href : input, init);
  const state = { results: [], errors: [], finished: null };
  let settle;
  state.finished = new Promise((resolve) => { settle = resolve; });
  state.load = (name, source, run) => {
    try {
      run(source, name);
    } catch (e) {
      state.errors.push(`${name}: ${e && e.name}: ${e && e.message}`);
    }
  };
  state.hook = () => {
    g.add_result_callback((t) => state.results.push({ name: t.name, status: t.status, message: t.message }));
    g.add_completion_callback((tests, status) => settle({ status: status.status, message: status.message }));
  };
  // Ends the file: `done()`, then waits for the harness (the runner bounds the time).
  state.end = async () => {
    try { g.done(); } catch (e) { state.errors.push(`done: ${e}`); }
    const status = await state.finished;
    // Well-formed, for the runner's JSON parser (names may hold lone surrogates).
    const text = (k, v) => (typeof v === 'string' ? v.toWellFormed() : v);
    return JSON.stringify({ status, results: state.results, errors: state.errors }, text);
  };
  return state;
}

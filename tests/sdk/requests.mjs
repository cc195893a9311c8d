// What the SDK tests share: a quiet matrix-js-sdk, and a record of every request
// the clients made, printed when a step fails.

import { logger as sdkLogger } from 'matrix-js-sdk/lib/logger.js';

// matrix-js-sdk logs every sync at debug level: silence its global logger and the
// children made from it later, and give each client a silent logger of its own.
sdkLogger.methodFactory = () => () => {};
sdkLogger.disableAll();
export const silent = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, log() {}, getChild: () => silent };

/// Every request the SDK made, in the order it made them, with the status it got.
export const requests = [];

/// A fetch that records the SDK's requests (and the bodies of failed ones).
export function recordingFetch(who) {
  return async (input, init = {}) => {
    const url = new URL(input instanceof Request ? input.url : input);
    const entry = { who, method: init.method ?? 'GET', path: url.pathname + url.search, status: 'pending' };
    requests.push(entry);
    try {
      const res = await fetch(input, init);
      entry.status = res.status;
      if (!res.ok) {
        entry.request = typeof init.body === 'string' ? init.body.slice(0, 500) : undefined;
        entry.response = (await res.clone().text()).slice(0, 500);
      }
      return res;
    } catch (err) {
      entry.status = err.name;
      throw err;
    }
  };
}

export function formatRequests(list) {
  return list
    .map((r) => {
      const path = r.path.replace(/access_token=[^&]+/, 'access_token=…');
      let line = `${r.who.padEnd(5)} ${r.method.padEnd(6)} ${path} -> ${r.status}`;
      if (r.request) line += `\n        request:  ${r.request}`;
      if (r.response) line += `\n        response: ${r.response}`;
      return line;
    })
    .join('\n');
}

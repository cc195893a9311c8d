// Starts a homeserver on a free loopback port for the SDK test and the client bench:
// `glia node` (the default), or a Synapse for comparison and for developing the
// tests against a homeserver known to be right.
//
//   const server = await startServer('glia');  // or 'glia=target/release/glia', 'synapse', 'url=http://…'
//   ... server.url ...                          // http://127.0.0.1:PORT; server.pid: its process
//   await server.stop();
//
// For federation, a `glia relay` and nodes connected to it, each of which can be
// stopped and started again on the same port and data directory:
//
//   const relay = await startRelay();                          // relay.url: ws://127.0.0.1:PORT/
//   const node = await startGlia(undefined, { relays: [relay.url], name: 'node A' });
//   await relay.stop({ keepData: true }); await relay.start(); // or relay.restart()
//   await node.waitForLog(/connected/, { from: mark });        // mark = node.mark(), taken before
//
// GLIA_BIN names another glia binary. Synapse is installed on first use into a
// virtualenv under target/synapse/ (pip, from PyPI) and runs on SQLite in a temporary
// directory, with open registration and its rate limits raised out of the way.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';

export const root = path.resolve(import.meta.dirname, '../..');

export const SYNAPSE_VERSION = '1.163.2';
const venv = path.join(root, 'target/synapse/venv');
const python = path.join(venv, 'bin/python');

/// `kind` is 'glia', 'glia=PATH' (that binary), 'synapse', or 'url=URL' for a
/// homeserver already running there (left running).
export async function startServer(kind = process.env.GLIA_TEST_SERVER ?? 'glia') {
  const [name, arg] = [kind.split('=')[0], kind.split('=').slice(1).join('=')];
  if (name === 'glia') return startGlia(arg || undefined);
  if (name === 'synapse') return startSynapse();
  if (name === 'url' && arg) return { kind: 'url', url: arg.replace(/\/$/, ''), async stop() {} };
  throw new Error(`unknown homeserver kind ${kind}: want glia, glia=PATH, synapse or url=URL`);
}

/// `glia node` on 127.0.0.1:0 with a fresh data directory; resolves once it prints
/// the address it listens on (and, given relays, once each has welcomed it).
///
/// Options, all optional: `relays` (relay URLs, each passed as `--relay URL`),
/// `data` (a data directory to use and keep; by default a fresh one, removed by
/// `stop()`), `listen` (default `127.0.0.1:0`), `name` (in logs and errors) and
/// `echo` (copy the process's output to this one's stderr, prefixed with the name;
/// by default only without a name, as before).
export async function startGlia(bin = process.env.GLIA_BIN ?? 'target/debug/glia', options = {}) {
  const { relays = [], name = 'glia node' } = options;
  const node = new GliaProcess({
    ...options,
    bin,
    kind: 'glia',
    name,
    prefix: 'glia-sdk-',
    args: (listen, data) => ['node', '--listen', listen, '--data', data, ...relays.flatMap((url) => ['--relay', url])],
    ready: /^glia: serving .* at (http:\/\/\S+?)\/?$/,
    waitFor: relays.map((url) => new RegExp(`^glia: relay ${escapeRegExp(url)}: connected$`)),
  });
  await node.start().catch(async (err) => {
    await node.stop(); // removes the data directory made for it
    throw err;
  });
  return node;
}

/// `glia relay` on 127.0.0.1:0 (or `listen`) with a fresh data directory (or
/// `data`); resolves once it prints its `ws://ADDR/` URL. `restart()` brings it
/// back on the same port and data directory, mailbox included.
export async function startRelay(options = {}) {
  const relay = new GliaProcess({
    bin: process.env.GLIA_BIN ?? 'target/debug/glia',
    name: 'relay',
    echo: false,
    ...options,
    kind: 'relay',
    prefix: 'glia-relay-',
    args: (listen, data) => ['relay', '--listen', listen, '--data', data],
    ready: /^glia: relay at (ws:\/\/\S+)$/,
  });
  await relay.start().catch(async (err) => {
    await relay.stop();
    throw err;
  });
  return relay;
}

/// One `glia` process that can be stopped and started again on the same address
/// and data directory. Every line it writes (stdout and stderr, across restarts)
/// is kept in `log`, for waiting on (`waitForLog`) and for failure reports.
export class GliaProcess {
  constructor({ bin, kind, name, prefix, args, ready, waitFor = [], data, listen = '127.0.0.1:0', echo }) {
    this.bin = path.resolve(root, bin);
    Object.assign(this, { kind, name, prefix, args, ready, waitFor, data, listen });
    this.ownsData = !data; // a directory made here is removed by stop()
    this.echo = echo ?? name === 'glia node';
    this.log = [];
    this.listeners = new Set();
    this.child = undefined;
    this.url = undefined;
  }

  get pid() {
    return this.child?.pid;
  }

  get running() {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  /// Spawns the process and resolves once it prints its address (and the lines
  /// in `waitFor`); the first start binds `listen`, later ones the address it got.
  async start(ms = 30_000) {
    if (this.running) throw new Error(`${this.name} is already running`);
    if (!existsSync(this.bin)) throw new Error(`${this.bin} is missing: cargo build --bin glia`);
    this.data ??= await mkdtemp(path.join(tmpdir(), this.prefix));
    const from = this.log.length;
    const child = spawn(this.bin, this.args(this.listen, this.data), { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => this.#line(line));
    }
    const died = this.exited.then((code) => {
      throw new Error(`${this.name} exited with ${code} before it was ready:\n${this.log.slice(from).join('\n')}`);
    });
    died.catch(() => {}); // only raced below: a later exit is no error here
    try {
      const [, url] = await Promise.race([this.waitForLog(this.ready, { from, ms }), died]);
      this.url = url;
      // Restarts listen where the first start did, even if that was port 0.
      this.listen = new URL(url).host;
      await Promise.race([Promise.all(this.waitFor.map((re) => this.waitForLog(re, { from, ms }))), died]);
    } catch (err) {
      child.kill('SIGKILL');
      await this.exited;
      throw err;
    }
    return this;
  }

  /// Ends the process with SIGINT (SIGKILL if it has not exited within 10 s);
  /// removes the data directory made for it unless `keepData`.
  async stop({ keepData = false } = {}) {
    if (this.child) {
      if (this.running) this.child.kill('SIGINT');
      await withTimeout(this.exited, 10_000, `${this.name} to exit`).catch(async () => {
        this.child.kill('SIGKILL');
        await this.exited;
      });
    }
    if (!keepData && this.ownsData && this.data) {
      await rm(this.data, { recursive: true, force: true });
      this.data = undefined;
    }
  }

  /// Stops the process (keeping its data) and starts it again on the same
  /// address and data directory.
  async restart() {
    await this.stop({ keepData: true });
    return this.start();
  }

  /// Where `log` ends now: pass it as `from` to wait only for lines after it.
  mark() {
    return this.log.length;
  }

  /// Resolves with the match of the first line at or after `from` (default: any
  /// line to come) that matches `pattern`; rejects after `ms`.
  waitForLog(pattern, { from = this.log.length, ms = 15_000 } = {}) {
    const found = this.log.slice(from).map((line) => line.match(pattern)).find(Boolean);
    if (found) return Promise.resolve(found);
    let listener;
    const seen = new Promise((resolve) => {
      listener = (line) => {
        const match = line.match(pattern);
        if (match) resolve(match);
      };
      this.listeners.add(listener);
    });
    return withTimeout(seen, ms, `${this.name} to log ${pattern}`).finally(() => this.listeners.delete(listener));
  }

  #line(line) {
    this.log.push(line);
    if (this.echo) process.stderr.write(this.name === 'glia node' ? `${line}\n` : `[${this.name}] ${line}\n`);
    for (const listener of this.listeners) listener(line);
  }
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/// Installs Synapse into target/synapse/venv unless it is there already.
export async function ensureSynapse() {
  const have = existsSync(python) && (await run(python, ['-c', 'import synapse; print(synapse.__version__)'], { quiet: true }).catch(() => ''));
  if (have && have.startsWith(SYNAPSE_VERSION)) return python;
  console.error(`installing Synapse ${SYNAPSE_VERSION} into ${path.relative(root, venv)}`);
  if (!existsSync(python)) await run('python3', ['-m', 'venv', venv]);
  await run(python, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', `matrix-synapse==${SYNAPSE_VERSION}`]);
  return python;
}

/// Rate limits Synapse would otherwise apply to the test's and the bench's traffic.
const UNLIMITED = { per_second: 1_000_000, burst_count: 1_000_000 };
const RATE_LIMITS = {
  rc_message: UNLIMITED,
  rc_registration: UNLIMITED,
  rc_login: { address: UNLIMITED, account: UNLIMITED, failed_attempts: UNLIMITED },
  rc_joins: { local: UNLIMITED, remote: UNLIMITED },
  rc_joins_per_room: UNLIMITED,
  rc_invites: { per_room: UNLIMITED, per_user: UNLIMITED, per_issuer: UNLIMITED },
  rc_room_creation: UNLIMITED,
  rc_presence: { per_user: UNLIMITED },
  rc_delayed_event_mgmt: UNLIMITED,
  rc_key_requests: UNLIMITED,
  rc_profile: UNLIMITED,
  rc_admin_redaction: UNLIMITED,
  rc_3pid_validation: UNLIMITED,
};

/// A Synapse on SQLite in a temporary directory, listening on a free loopback port.
export async function startSynapse() {
  await ensureSynapse();
  const dir = await mkdtemp(path.join(tmpdir(), 'glia-synapse-'));
  try {
    const port = await freePort();
    const base = path.join(dir, 'homeserver.yaml');
    await run(
      python,
      ['-m', 'synapse.app.homeserver', '--server-name', 'localhost', '--config-path', base,
        '--data-directory', dir, '--generate-config', '--report-stats=no'],
      { cwd: dir, quiet: true },
    );
    // Quieter logs: the generated log config writes INFO to homeserver.log.
    const logConfig = path.join(dir, 'localhost.log.config');
    await writeFile(logConfig, (await readFile(logConfig, 'utf8')).replace(/level: INFO/g, 'level: WARNING'));
    // JSON is YAML: a second config file whose top-level keys override the first.
    const overrides = path.join(dir, 'overrides.yaml');
    await writeFile(overrides, JSON.stringify({
      listeners: [{
        port, bind_addresses: ['127.0.0.1'], type: 'http', tls: false, x_forwarded: false,
        resources: [{ names: ['client'], compress: false }],
      }],
      database: { name: 'sqlite3', args: { database: path.join(dir, 'homeserver.db') } },
      enable_registration: true,
      enable_registration_without_verification: true,
      report_stats: false,
      trusted_key_servers: [],
      suppress_key_server_warning: true,
      ...RATE_LIMITS,
    }, null, 1));
    const child = spawn(python, ['-m', 'synapse.app.homeserver', '-c', base, '-c', overrides], {
      cwd: dir,
      // Synapse puts the git revision around its own files in its version; the venv
      // sits inside glia's repository, whose revision is not Synapse's.
      env: { ...process.env, GIT_CEILING_DIRECTORIES: path.join(root, 'target') },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk) => { stderr = (stderr + chunk).slice(-4000); });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    const url = `http://127.0.0.1:${port}`;
    const stop = async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await withTimeout(exited, 15_000, 'Synapse to exit').catch(() => child.kill('SIGKILL'));
      await rm(dir, { recursive: true, force: true });
    };
    try {
      await withTimeout(
        Promise.race([
          waitForVersions(url, exited),
          exited.then((code) => { throw new Error(`Synapse exited with ${code}:\n${stderr}`); }),
        ]),
        60_000,
        'Synapse to answer /versions',
      );
    } catch (err) {
      await stop();
      throw err;
    }
    return { kind: 'synapse', url, pid: child.pid, stop };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/// Polls GET /_matrix/client/versions until it answers 200; Synapse prints nothing
/// dependable once it listens. Each poll waits for the previous answer or refusal.
async function waitForVersions(url, exited) {
  let gone = false;
  exited.then(() => { gone = true; });
  while (!gone) {
    try {
      const res = await fetch(`${url}/_matrix/client/versions`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/// A port nothing listens on right now (the OS picks it).
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/// Runs a command and resolves with its stdout; rejects with its output on failure.
function run(cmd, args, { cwd = root, quiet = false } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', quiet ? 'pipe' : 'inherit'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => { out += c; });
    child.stderr?.on('data', (c) => { err += c; });
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}\n${out}${err}`));
    });
  });
}

/// Rejects after `ms` unless `promise` settles first.
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

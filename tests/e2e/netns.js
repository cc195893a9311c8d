// A private network for tests that need WebRTC: ICE never offers loopback, and
// tests must not use this machine's own address, so each host (the server and
// each browser) gets a network namespace of its own, all on one bridge on a
// test subnet. Needs root and iproute2; made and removed by the test itself.

import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const SUBNET = '10.213.0';
const PREFIX = 'glia-e2e-';

const ip = (...args) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });

function removeNetns(ns) {
  try {
    ip('netns', 'del', ns);
  } catch {
    // Already gone.
  }
}

/// Why namespaces cannot be made here, or null if they can.
export function netnsUnavailable() {
  const probe = `${PREFIX}${process.pid}-probe`;
  try {
    ip('netns', 'add', probe);
    ip('netns', 'del', probe);
    return null;
  } catch (err) {
    return `network namespaces are not available (${String(err.stderr ?? err.message).trim()})`;
  }
}

/// Makes a namespace per name, the first also holding the bridge; each host is
/// `{ ns, address, chromium }`, `chromium` a script that runs Chromium inside
/// the host's namespace (Playwright's `executablePath`). `remove()` takes it
/// all down, and runs at exit too if the test did not get to it.
export function createNetwork(names) {
  sweep();
  const dir = mkdtempSync(path.join(tmpdir(), PREFIX));
  const made = [];
  const remove = () => {
    made.splice(0).forEach(removeNetns);
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', remove);
  try {
    const hosts = Object.fromEntries(names.map((name, n) => {
      const ns = `${PREFIX}${process.pid}-${name}`;
      ip('netns', 'add', ns);
      made.push(ns);
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      const chromium = path.join(dir, `chromium-${name}`);
      writeFileSync(chromium, `#!/bin/sh\nexec ip netns exec ${ns} /usr/bin/chromium "$@"\n`);
      chmodSync(chromium, 0o755);
      return [name, { ns, address: `${SUBNET}.${n + 1}`, chromium }];
    }));
    const [hub, ...others] = Object.values(hosts);
    ip('-n', hub.ns, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', hub.ns, 'addr', 'add', `${hub.address}/24`, 'dev', 'br0');
    ip('-n', hub.ns, 'link', 'set', 'br0', 'up');
    others.forEach((host, n) => {
      const port = `port${n}`;
      ip('-n', host.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port, 'netns', hub.ns);
      ip('-n', hub.ns, 'link', 'set', port, 'master', 'br0', 'up');
      ip('-n', host.ns, 'addr', 'add', `${host.address}/24`, 'dev', 'eth0');
      ip('-n', host.ns, 'link', 'set', 'eth0', 'up');
      // WebRTC gathers candidates only on an interface with a default route.
      ip('-n', host.ns, 'route', 'add', 'default', 'via', hub.address);
    });
    return { hosts, remove };
  } catch (err) {
    remove();
    throw err;
  }
}

/// Removes the namespaces of earlier runs whose process died without cleaning up.
function sweep() {
  const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((l) => l.split(' ')[0]);
  for (const ns of names) {
    const pid = ns.startsWith(PREFIX) && Number(ns.slice(PREFIX.length).split('-')[0]);
    if (pid && pid !== process.pid && !alive(pid)) removeNetns(ns);
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

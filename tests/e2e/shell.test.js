// The shell page around the stock client: its status panel, the client's own
// sign-in, which still works beside the one-click account (driven across two
// browsers in hydrogen.test.js), and the account offered again after signing out.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, openShell, withShell } from './browser.js';

const shell = withShell({ before, after });
const WAIT_MS = 60_000;

test('the server name copies with its button', async () => {
  const { page, glia } = shell;
  await shell.browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: glia.url });
  const serverName = await page.textContent('#server-name');
  assert.match(serverName, /^[0-9a-f]{64}$/);
  await page.click('[data-copy="server-name"]');
  await page.waitForSelector('[data-copy="server-name"]:text("Copied")');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), serverName);
});

test('peers show with their path, and none without', async () => {
  const { page } = shell;
  assert.equal(await page.textContent('#peers'), 'none');
  const direct = 'a'.repeat(64);
  const relayed = 'b'.repeat(64);
  // The transport's status as www/transport.js reports it, peers included,
  // read back in the same task: the page's own transport reports too.
  const shown = await page.evaluate(async ([peers, direct, relayed]) => {
    const { showTransport } = await import('/status.js');
    showTransport({ owner: true, relays: [], peers });
    const text = (key, path) => document.querySelector(`#peers li[data-key="${key}"][data-path="${path}"]`)?.textContent;
    return { count: document.body.dataset.peers, direct: text(direct, 'direct'), relayed: text(relayed, 'relayed') };
  }, [[{ key: direct, path: 'direct' }, { key: relayed, path: 'relayed' }], direct, relayed]);
  assert.equal(shown.count, '2');
  assert.match(shown.direct, /direct \(WebRTC\)/);
  assert.match(shown.relayed, /relayed/);
});

test('the frames queued are asked of the worker: a count, or unknown when it does not say', async () => {
  const { page } = shell;
  const shown = await page.waitForFunction(() => {
    const text = document.getElementById('queued').textContent;
    return text !== '…' && text;
  }, null, { timeout: WAIT_MS });
  const queued = await shown.jsonValue();
  assert.match(queued, /^(\d+|unknown)$/);
  const attribute = await page.evaluate(() => document.body.dataset.queued);
  assert.equal(attribute, queued === 'unknown' ? undefined : queued);
});

test("the client's own sign-in works, and the panel shows who signed in", async () => {
  const { page } = shell;
  await page.waitForFunction(() => document.body.dataset.account === 'offered', null, { timeout: WAIT_MS });
  const challenge = await api(page, 'POST', '/_matrix/client/v3/register', { username: 'carol', password: 'correct horse' });
  const registered = await api(page, 'POST', '/_matrix/client/v3/register',
    { username: 'carol', password: 'correct horse', inhibit_login: true, auth: { type: 'm.login.dummy', session: challenge.json.session } });
  assert.equal(registered.status, 200, JSON.stringify(registered.json));

  await page.locator('#username').fill('carol');
  await page.locator('#password').fill('correct horse');
  await page.locator('button[type=submit]', { hasText: 'Log In' }).click();
  await page.waitForFunction((id) => document.body.dataset.userId === id, registered.json.user_id, { timeout: WAIT_MS });
  assert.equal(await page.textContent('#user-id'), registered.json.user_id);
  assert.equal(await page.isVisible('[data-copy="user-id"]'), true);
  assert.equal(await page.isVisible('#account'), false, 'no account offered once signed in');
  assert.equal(await page.evaluate(() => document.body.dataset.account), undefined);
});

test('signing out of the client offers an account again, and one click signs it in', async () => {
  const { page } = shell;
  const before = await page.evaluate(() => document.body.dataset.userId);
  await page.locator('.LeftPanel a.settings').click();
  await page.locator('.Settings button', { hasText: 'Log out' }).click();
  await page.locator('.LogoutScreen button.destructive', { hasText: 'Log out' }).click();
  await page.waitForFunction(() => document.body.dataset.account === 'offered' && !document.body.dataset.userId,
    null, { timeout: WAIT_MS });
  assert.equal(await page.textContent('#user-id'), 'not signed in');

  await page.click('#create-account');
  await page.waitForFunction(() => document.body.dataset.account === 'created' && document.body.dataset.userId,
    null, { timeout: WAIT_MS });
  assert.notEqual(await page.evaluate(() => document.body.dataset.userId), before);
  await page.locator('.SessionView').waitFor({ timeout: WAIT_MS });
});

test('the panel asks the browser to keep its storage and shows whether it does', async () => {
  const { browser, glia } = shell;
  const storage = async (page) => {
    await page.waitForFunction(() => document.body.dataset.storage, null, { timeout: WAIT_MS });
    return page.evaluate(() => [document.body.dataset.storage, document.getElementById('storage').textContent]);
  };
  // Headless Chromium keeps no site's storage of its own accord.
  const [kept, text] = await storage(shell.page);
  assert.equal(kept, 'best-effort');
  assert.match(text, /^best effort: the browser may clear it all when the disk runs short \(install glia as an app, or bookmark it, and Chromium keeps it\); [\d.]+ (bytes|kB|MB) used of [\d.]+ GB$/);
  // As Chromium does for a site people bookmark or install, it grants the
  // request (for as long as this DevTools session lasts).
  const cdp = await browser.context.newCDPSession(shell.page);
  await cdp.send('Browser.grantPermissions', { origin: new URL(glia.url).origin, permissions: ['durableStorage'] });
  const page = await openShell(browser.context, glia.url, { newPage: true });
  try {
    const [kept, text] = await storage(page);
    assert.equal(kept, 'persistent');
    assert.match(text, /^kept; [\d.]+ (bytes|kB|MB) used of [\d.]+ GB$/);
  } finally {
    await page.close();
    await cdp.detach();
  }
});

test('the page can be installed as an app', async () => {
  const cdp = await shell.browser.context.newCDPSession(shell.page);
  try {
    const { installabilityErrors } = await cdp.send('Page.getInstallabilityErrors');
    assert.deepEqual(installabilityErrors, []);
    const manifest = await cdp.send('Page.getAppManifest');
    assert.deepEqual(manifest.errors, []);
    assert.equal(JSON.parse(manifest.data).name, 'glia');
  } finally {
    await cdp.detach();
  }
});

// The one-click account: an account on this node, registered through the
// Client-Server API as any client would (glia asks for the m.login.dummy stage
// only), with a generated name and a strong random password, and the
// client signed in with it. The password is shown once so the user can keep it;
// nothing stores it. `data-account` on the body says where this stands:
// offered, creating, created or failed.

const REGISTER = '/_matrix/client/v3/register';
const LOWER = 'abcdefghijklmnopqrstuvwxyz0123456789';
const MIXED = `${LOWER}ABCDEFGHIJKLMNOPQRSTUVWXYZ`;

/// Wires the panel's account offer to `signIn(username, password)`, which signs
/// the client in. Returns `offer(yes)`: whether to offer an account now
/// (while no one is signed in to the client).
export function setUpAccount(signIn) {
  const offer = document.getElementById('account');
  const button = document.getElementById('create-account');
  const error = document.getElementById('account-error');
  const kept = document.getElementById('new-password');
  const body = document.body;

  button.addEventListener('click', async () => {
    button.disabled = true;
    error.hidden = true;
    body.dataset.account = 'creating';
    try {
      const account = await register();
      document.getElementById('new-user-id').textContent = account.userId;
      document.getElementById('kept-password').textContent = account.password;
      kept.hidden = false;
      offer.hidden = true;
      const failure = await signIn(account.username, account.password);
      if (failure) throw new Error(`the account is made, but the client could not sign in (${failure})`);
      body.dataset.account = 'created';
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      offer.hidden = false;
      body.dataset.account = 'failed';
    } finally {
      button.disabled = false;
    }
  });
  document.getElementById('password-kept').addEventListener('click', () => {
    kept.hidden = true;
    document.getElementById('kept-password').textContent = '';
  });

  return (yes) => {
    if (body.dataset.account === 'creating') return;
    offer.hidden = !yes;
    if (yes) body.dataset.account = 'offered';
    else if (body.dataset.account === 'offered') delete body.dataset.account;
  };
}

/// Registers a new account (without a device: the client makes its own when it
/// signs in) and resolves with its user ID, name and password.
async function register() {
  const username = `user-${random(LOWER, 8)}`;
  const password = random(MIXED, 24);
  const request = { username, password, inhibit_login: true };
  const challenge = await post(REGISTER, request);
  if (!challenge.json.flows?.some((flow) => flow.stages.length === 1 && flow.stages[0] === 'm.login.dummy')) {
    throw new Error(`this node asks for more than a click to register (${challenge.json.error ?? challenge.status})`);
  }
  const done = await post(REGISTER, { ...request, auth: { type: 'm.login.dummy', session: challenge.json.session } });
  if (done.status !== 200) throw new Error(`registering failed: ${done.json.error ?? done.status}`);
  return { userId: done.json.user_id, username, password };
}

async function post(path, body) {
  const res = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

/// `length` characters of `alphabet`, each uniformly random (bytes that would
/// favour the first characters are drawn again).
function random(alphabet, length) {
  const limit = 256 - (256 % alphabet.length);
  let out = '';
  while (out.length < length) {
    for (const byte of crypto.getRandomValues(new Uint8Array(length))) {
      if (byte < limit && out.length < length) out += alphabet[byte % alphabet.length];
    }
  }
  return out;
}

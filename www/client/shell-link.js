// The client's side of its link with the shell page that embeds it (www/shell.js):
// it tells the shell which of Hydrogen's screens is up and who is signed in, and
// signs in when the shell asks (the one-click account). Messages rather than
// shared objects, so neither page reaches into the other's code.

import { PasswordLoginMethod } from 'hydrogen-view-sdk';

export function linkToShell(root, platform) {
  const tell = (message) => window.parent.postMessage({ glia: 'client', ...message }, location.origin);
  // One report after another, so the shell hears the screens in the order they came.
  let reported = Promise.resolve();
  const report = () => (reported = reported.then(async () => {
    const section = root.activeSection;
    const session = section === 'session' ? await platform.sessionInfoStorage.get(root.sessionViewModel.id) : null;
    tell({ section, userId: session?.userId });
  }));
  window.addEventListener('message', async ({ data, origin, ports }) => {
    if (origin !== location.origin) return;
    // The shell loads the client before its own scripts, which may miss the
    // first report: they ask for it again.
    if (data?.glia === 'report') return report();
    if (data?.glia !== 'sign-in') return;
    const failure = await signIn(root, data).catch((err) => String(err));
    ports[0]?.postMessage({ failure });
  });
  root.on('change', (field) => field === 'activeSection' && report());
  report();
}

/// Signs in through Hydrogen's own login screen, as its password form does, so
/// the session is Hydrogen's from the start. Resolves with Hydrogen's login
/// failure, or null once the session is loading.
async function signIn(root, { username, password }) {
  if (['session', 'loading'].includes(root.activeSection)) return 'someone is signed in already';
  // From the session picker (after signing out, say), as its own Sign In link does.
  if (root.activeSection === 'picker') root.navigation.push('login');
  const login = await until(root, () => root.loginViewModel);
  // Hydrogen asks the homeserver for its login flows first; its password form
  // appears once it has them.
  await until(login, () => login.passwordLoginViewModel);
  return login.attemptLogin(new PasswordLoginMethod({ homeserver: location.origin, username, password }));
}

/// Resolves with `value()` once it is truthy, looking again at each change `vm` emits.
function until(vm, value) {
  return new Promise((resolve) => {
    if (value()) return resolve(value());
    const stop = vm.disposableOn('change', () => {
      if (!value()) return;
      stop();
      resolve(value());
    });
  });
}

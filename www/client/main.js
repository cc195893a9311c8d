// The stock Matrix client, Hydrogen (npm hydrogen-view-sdk, unmodified), booted the
// way Hydrogen's own index.html boots it, with this origin as its homeserver: glia's
// Service Worker answers its /_matrix requests. It runs in the shell page itself,
// in an element beside the status panel (www/shell.js): in an iframe of its own
// its first /sync came 50–90 ms later in benches/cold-start.mjs, as the frame's
// navigation began after the page's and Hydrogen booted slower inside it.
// scripts/build-web bundles this module with esbuild into client.js.

import { FeatureSet, PasswordLoginMethod, Platform, RootViewModel, createNavigation, createRouter } from 'hydrogen-view-sdk';

// Olm (npm @matrix-org/olm, copied beside the theme by scripts/build-web) is
// what gives Hydrogen end-to-end encryption; it runs on the page's thread, as
// Hydrogen does when `assetPaths` names no worker.
const assetPaths = {
  downloadSandbox: 'assets/download-sandbox.html',
  olm: { wasm: 'assets/olm.wasm', wasmBundle: 'assets/olm.js', legacyBundle: 'assets/olm_legacy.js' },
};

/// Hydrogen with glia's Service Worker in place of its own. Registered here, Hydrogen's
/// worker would replace glia's, which holds this scope (answering the Matrix paths
/// and letting the rest through), so `assetPaths` names none; but 0.3.1 still
/// reports every session's credentials to `updateService` without checking it is
/// there, and its settings offer an update check through it.
class GliaPlatform extends Platform {
  get updateService() {
    return {
      version: this.version,
      buildHash: 'hydrogen-view-sdk',
      updateAuthData() {},
      // The client's files pass through glia's worker, so updating the app is
      // updating that worker's registration.
      checkForUpdate: () => navigator.serviceWorker.getRegistration().then((r) => r?.update()),
    };
  }
}

/// Starts Hydrogen in `container`; `onChange({ section, userId })` hears which of
/// its screens is up (`login`, `picker`, `loading`, `session`...) and who is
/// signed in, in the order they came. Resolves with `{ signIn(username,
/// password) }` once the client is up.
export async function startClient(container, { onChange }) {
  const platform = new GliaPlatform({ container, assetPaths, config: { defaultHomeServer: location.origin } });
  await platform.init();
  const features = await FeatureSet.load(platform.settingsStorage);
  const navigation = createNavigation();
  platform.setNavigation(navigation);
  const urlRouter = createRouter({ navigation, history: platform.history });
  urlRouter.attach();
  const root = new RootViewModel({ platform, urlRouter, navigation, features });
  await root.load();
  platform.createAndMountRootView(root);

  let reported = Promise.resolve();
  const report = () => (reported = reported.then(async () => {
    const section = root.activeSection;
    const session = section === 'session' ? await platform.sessionInfoStorage.get(root.sessionViewModel.id) : null;
    onChange({ section, userId: session?.userId });
  }));
  root.on('change', (field) => field === 'activeSection' && report());
  report();
  return { signIn: (username, password) => signIn(root, { username, password }).catch((err) => String(err)) };
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

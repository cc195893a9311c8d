// The stock Matrix client, Hydrogen (npm hydrogen-view-sdk, unmodified), booted the
// way Hydrogen's own index.html boots it, with this origin as its homeserver: glia's
// Service Worker answers its /_matrix requests. scripts/build-web bundles this
// module with esbuild. The shell page embeds this page and talks to it through
// ./shell-link.js.

import { FeatureSet, Platform, RootViewModel, createNavigation, createRouter } from 'hydrogen-view-sdk';
import { linkToShell } from './shell-link.js';

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

async function main() {
  const platform = new GliaPlatform({
    container: document.body,
    assetPaths,
    config: { defaultHomeServer: location.origin },
  });
  await platform.init();
  const features = await FeatureSet.load(platform.settingsStorage);
  const navigation = createNavigation();
  platform.setNavigation(navigation);
  const urlRouter = createRouter({ navigation, history: platform.history });
  urlRouter.attach();
  const root = new RootViewModel({ platform, urlRouter, navigation, features });
  await root.load();
  platform.createAndMountRootView(root);
  linkToShell(root, platform);
}

main().catch((err) => console.error('glia client:', err));

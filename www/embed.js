// The stock client (www/client/), embedded in a same-origin iframe rather than
// loaded into this page. This page must stay loaded for as long as the browser is
// a node, since it owns the transport (www/transport.js, by Web Locks), while
// Hydrogen treats its page as its own: it routes through the URL's hash and
// reloads or leaves the page (feature toggles, SSO). And Hydrogen's stylesheet,
// written for a page of its own, stays out of the shell's. Same origin and inside
// the worker's scope, so glia's Service Worker answers the client's /_matrix
// requests as it answers this page's. The iframe side is www/client/shell-link.js.

/// Loads the client into `frame` (unless index.html has begun to); `onChange({
/// section, userId })` hears which of Hydrogen's screens is up (`login`,
/// `loading`, `session`...) and who is signed in.
export function embedClient(frame, { onChange }) {
  window.addEventListener('message', ({ data, source }) => {
    if (source !== frame.contentWindow || data?.glia !== 'client') return;
    onChange({ section: data.section, userId: data.userId });
  });
  if (frame.getAttribute('src')) {
    // Started early: the screen it reported before this listened is asked again.
    frame.contentWindow.postMessage({ glia: 'report' }, location.origin);
  } else {
    frame.src = 'client/';
    frame.hidden = false;
  }
  return {
    /// Signs the client in; resolves with null, or with why it could not.
    signIn(username, password) {
      return new Promise((resolve) => {
        const channel = new MessageChannel();
        channel.port1.onmessage = ({ data }) => resolve(data.failure);
        frame.contentWindow.postMessage({ glia: 'sign-in', username, password }, location.origin, [channel.port2]);
      });
    },
  };
}

// The media bench's workload, with nothing but `fetch` and `performance`: run from
// Node against `glia node` and inside a page against the Service Worker homeserver
// (benches/media.mjs). Uploads and downloads a file of `mib` MiB `runs` times, and
// times the first thumbnail (800×600, scaled) of the JPEG `jpeg` (a Uint8Array).

import { Client, median } from './client-workload.mjs';

export async function mediaWorkload(base, { mib, runs, jpeg }) {
  const user = await Client.register(base, `media${Math.random().toString(36).slice(2, 8)}`);
  const auth = { Authorization: `Bearer ${user.token}` };
  const upload = async (bytes, type) => {
    const res = await fetch(`${base}/_matrix/media/v3/upload`, {
      method: 'POST', headers: { ...auth, 'Content-Type': type }, body: bytes,
    });
    if (!res.ok) throw new Error(`upload: ${res.status} ${await res.text()}`);
    return (await res.json()).content_uri.slice('mxc://'.length);
  };
  const get = async (path) => {
    const res = await fetch(`${base}/_matrix/client/v1/media/${path}`, { headers: auth });
    if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
    return new Uint8Array(await res.arrayBuffer());
  };
  const file = new Uint8Array(mib << 20);
  for (let i = 0; i < file.length; i += 4096) file[i] = i % 251;
  const uploads = [];
  const downloads = [];
  for (let run = 0; run < runs; run++) {
    let start = performance.now();
    const id = await upload(file, 'application/octet-stream');
    uploads.push(mib / ((performance.now() - start) / 1000));
    start = performance.now();
    const got = await get(`download/${id}`);
    downloads.push(mib / ((performance.now() - start) / 1000));
    if (got.length !== file.length) throw new Error(`downloaded ${got.length} of ${file.length} bytes`);
  }
  const photo = await upload(jpeg, 'image/jpeg');
  const start = performance.now();
  const thumbnail = await get(`thumbnail/${photo}?width=800&height=600&method=scale`);
  const thumbnailMs = performance.now() - start;
  if (!thumbnail.length) throw new Error('an empty thumbnail');
  return { upload: median(uploads), download: median(downloads), thumbnailMs };
}

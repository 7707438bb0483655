// A component that unmounts and mounts again, with the real @directus/sdk realtime() client: every line
// "sub" on stdin subscribes to articles (fields id, title, status), "unsub" ends the newest subscription.
// Prints every subscription message as one JSON line with the mount number, and "ready" after each
// command was carried out. Usage: node sdk-remount.mjs <http://host:port> <static token>
import { createDirectus, realtime, staticToken } from '@directus/sdk';
import WebSocket from 'ws';
import readline from 'node:readline';

const [url, token] = process.argv.slice(2);
const client = createDirectus(url, { globals: { WebSocket } })
  .with(staticToken(token))
  .with(realtime({ authMode: 'handshake', reconnect: false }));
await client.connect();

let mount = 0;
let current = null;
const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (line === 'sub') {
    const n = ++mount;
    const { subscription, unsubscribe } = await client.subscribe('articles', {
      query: { fields: ['id', 'title', 'status'] },
    });
    current = unsubscribe;
    (async () => {
      for await (const msg of subscription) {
        console.log(JSON.stringify({ mount: n, ...msg }));
      }
    })();
  } else if (line === 'unsub' && current) {
    current();
    current = null;
  } else if (line === 'quit') {
    break;
  }
  console.log(JSON.stringify({ ready: line }));
}
client.disconnect();
process.exit(0);

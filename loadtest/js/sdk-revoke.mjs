// Two subscriptions of one @directus/sdk realtime() client, articles and messages. Prints every message
// each subscription's iterator yields as one JSON line tagged with the collection, and a "threw" line if
// an iterator throws (the SDK throws a `subscribe` error into every open subscription). Runs until
// killed. Usage: node sdk-revoke.mjs <http://host:port> <static token>
import { createDirectus, realtime, staticToken } from '@directus/sdk';
import WebSocket from 'ws';

const [url, token] = process.argv.slice(2);
const client = createDirectus(url, { globals: { WebSocket } })
  .with(staticToken(token))
  .with(realtime({ authMode: 'handshake', reconnect: false }));
await client.connect();

for (const collection of ['articles', 'messages']) {
  const { subscription } = await client.subscribe(collection, {
    query: { fields: ['id'] },
  });
  (async () => {
    try {
      for await (const msg of subscription) {
        console.log(JSON.stringify({ sub: collection, ...msg }));
      }
    } catch (e) {
      console.log(JSON.stringify({ sub: collection, threw: e }));
    }
  })();
}

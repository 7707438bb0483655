// Subscribes with the real @directus/sdk realtime() client to one collection with the given query and
// prints every subscription message as one JSON line (init with its data, then events).
// Usage: node sdk-query.mjs <http://host:port> <static token> <collection> '<query as JSON>'
import { createDirectus, realtime, staticToken } from '@directus/sdk';
import WebSocket from 'ws';

const [url, token, collection, query] = process.argv.slice(2);
const client = createDirectus(url, { globals: { WebSocket } })
  .with(staticToken(token))
  .with(realtime({ authMode: 'handshake' }));

await client.connect();
const { subscription } = await client.subscribe(collection, { query: JSON.parse(query) });
for await (const msg of subscription) {
  console.log(JSON.stringify(msg));
}

// Drives the gateway with the real @directus/sdk realtime() client and prints every subscription message
// as one JSON line: init, then events. The SDK reconnects and re-subscribes on its own when the socket
// drops. Usage: node sdk-events.mjs <http://host:port> <static token>
import { createDirectus, realtime, staticToken } from '@directus/sdk';
import WebSocket from 'ws';

const [url, token] = process.argv.slice(2);
const client = createDirectus(url, { globals: { WebSocket } })
  .with(staticToken(token))
  .with(realtime({ authMode: 'handshake', reconnect: { delay: 200, retries: 50 } }));

await client.connect();
const { subscription } = await client.subscribe('articles', {
  query: { fields: ['id', 'title'], filter: { status: { _eq: 'published' } } },
});
for await (const msg of subscription) {
  if (msg.event === 'init') {
    console.log(JSON.stringify({ type: msg.type, event: msg.event, uid: msg.uid, rows: msg.data.length }));
  } else {
    console.log(JSON.stringify(msg));
  }
}

// Drives the gateway with the real @directus/sdk realtime() client:
// log in over REST, connect (handshake auth), subscribe, receive init, unsubscribe.
// Usage: node sdk-smoke.mjs <http://host:port> <email> <password>
// Prints one JSON line per observation; exits non-zero on any failure.
import { authentication, createDirectus, realtime } from '@directus/sdk';
import WebSocket from 'ws';

const [url, email, password] = process.argv.slice(2);
const fail = (msg) => { console.log(JSON.stringify({ error: String(msg) })); process.exit(1); };
const timer = setTimeout(() => fail('timed out'), 20000);

const client = createDirectus(url, { globals: { WebSocket } })
  .with(authentication('json'))
  .with(realtime({ authMode: 'handshake' }));

try {
  await client.login({ email, password });
  await client.connect();
  const { subscription, unsubscribe } = await client.subscribe('articles', {
    query: { fields: ['id', 'title', 'status'], filter: { status: { _eq: 'published' } }, sort: ['id'] },
  });
  for await (const msg of subscription) {
    console.log(JSON.stringify(msg));
    if (msg.event === 'init') {
      unsubscribe();
      break;
    }
  }
  client.disconnect();
  clearTimeout(timer);
  process.exit(0);
} catch (e) {
  fail(e?.message ?? JSON.stringify(e));
}

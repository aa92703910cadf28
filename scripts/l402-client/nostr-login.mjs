// Logs in to a sluice gateway the way a Nostr web client does, with
// nostr-tools (the library NIP-07 extensions and Nostr apps build on):
// a signed challenge for an identity token, then NIP-98 signed requests.
// Prints one JSON line of what the gateway answered. Run by sluice's tests.
import { generateSecretKey, getPublicKey, finalizeEvent } from 'nostr-tools/pure';
import { getToken } from 'nostr-tools/nip98';

const base = process.env.SLUICE_URL;
const sk = generateSecretKey();
const pubkey = getPublicKey(sk);
const sign = (e) => finalizeEvent(e, sk);
const now = () => Math.floor(Date.now() / 1000);

const challenge = await (await fetch(`${base}/v1/identity/challenge`, { method: 'POST' })).json();
const login = sign({ kind: 22242, created_at: now(), tags: [['challenge', challenge.nonce]], content: '' });
const verify = await fetch(`${base}/v1/identity/verify`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ event: login }),
});
const verified = await verify.json();
const replay = await fetch(`${base}/v1/identity/verify`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ event: login }),
});

const meUrl = `${base}/v1/identity/me`;
const meByToken = await (await fetch(meUrl, { headers: { 'X-Nostr-Token': verified.token } })).json();

const auth = await getToken(meUrl, 'GET', sign, true);
const meByNip98 = await fetch(meUrl, { headers: { Authorization: auth } });
const meNip98 = await meByNip98.json();
const nip98Replay = await fetch(meUrl, { headers: { Authorization: auth } });

const estimateUrl = `${base}/v1/estimate`;
const payload = { model: 'fake-model', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 };
const estimateAuth = await getToken(estimateUrl, 'POST', sign, true, payload);
const estimate = await fetch(estimateUrl, {
  method: 'POST',
  headers: { Authorization: estimateAuth, 'content-type': 'application/json' },
  body: JSON.stringify(payload),
});
const est = await estimate.json();

console.log(JSON.stringify({
  pubkey,
  verify_status: verify.status,
  verified_pubkey: verified.pubkey,
  tier: verified.tier,
  replay_status: replay.status,
  me_by_token: meByToken.pubkey,
  nip98_status: meByNip98.status,
  me_by_nip98: meNip98.pubkey,
  nip98_replay_status: nip98Replay.status,
  estimate_status: estimate.status,
  estimate_free_tier: est.free_tier,
}));

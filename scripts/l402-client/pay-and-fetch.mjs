// A third-party L402 client against `sluice serve`: Alby's fetchWithL402 reads the
// WWW-Authenticate challenge, pays the invoice with the wallet below (a second LNbits
// wallet, through LNbits' own API) and retries with the credential it builds itself.
//
//   SLUICE_URL=http://127.0.0.1:PORT LNBITS_URL=... LNBITS_ADMIN_KEY=... node pay-and-fetch.mjs
import { fetchWithL402 } from "@getalby/lightning-tools";

const { SLUICE_URL, LNBITS_URL, LNBITS_ADMIN_KEY, SLUICE_MODEL = "fake-model" } = process.env;
if (!SLUICE_URL || !LNBITS_URL || !LNBITS_ADMIN_KEY) {
  console.error("set SLUICE_URL, LNBITS_URL and LNBITS_ADMIN_KEY");
  process.exit(2);
}

let paid = 0;
const wallet = {
  async payInvoice({ invoice }) {
    const r = await fetch(`${LNBITS_URL}/api/v1/payments`, {
      method: "POST",
      headers: { "X-Api-Key": LNBITS_ADMIN_KEY, "Content-Type": "application/json" },
      body: JSON.stringify({ out: true, bolt11: invoice }),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(`LNbits refused the payment: ${r.status} ${JSON.stringify(body)}`);
    let preimage = body.preimage;
    if (!preimage) {
      const s = await (await fetch(`${LNBITS_URL}/api/v1/payments/${body.payment_hash}`, {
        headers: { "X-Api-Key": LNBITS_ADMIN_KEY },
      })).json();
      preimage = s.preimage;
    }
    paid += 1;
    return { preimage, fees_paid: 0 };
  },
};

const request = {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify({
    model: SLUICE_MODEL,
    messages: [{ role: "user", content: "What is the capital of France?" }],
  }),
};
const r = await fetchWithL402(`${SLUICE_URL}/v1/chat/completions`, request, { wallet });
const text = await r.text();
if (r.status !== 200) {
  console.error(`sluice answered ${r.status}: ${text}`);
  process.exit(1);
}
const body = JSON.parse(text);
console.log(JSON.stringify({
  status: r.status,
  invoices_paid: paid,
  answer: body.choices[0].message.content,
  cost_msat: body.usage.cost_msat,
}));

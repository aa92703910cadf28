// OpenAI's own SDK against `sluice serve`, paying from a session: the macaroon is
// the API key. Lists the models, asks once, streams once; then reads the
// gateway's OpenAPI document and validates it as OpenAPI 3.1.
//
//   SLUICE_URL=http://127.0.0.1:PORT SLUICE_MACAROON=... node openai-sdk.mjs
import OpenAI from "openai";
import { Validator } from "@seriousme/openapi-schema-validator";

const { SLUICE_URL, SLUICE_MACAROON, SLUICE_MODEL = "fake-model" } = process.env;
if (!SLUICE_URL || !SLUICE_MACAROON) {
  console.error("set SLUICE_URL and SLUICE_MACAROON");
  process.exit(2);
}

const client = new OpenAI({ baseURL: `${SLUICE_URL}/v1`, apiKey: SLUICE_MACAROON, maxRetries: 0 });
const messages = [{ role: "user", content: "What is the capital of France?" }];

const models = [];
for await (const m of client.models.list()) models.push(m.id);

const { data: answer, response } = await client.chat.completions
  .create({ model: SLUICE_MODEL, messages, max_tokens: 20 })
  .withResponse();

let streamed = "";
let final = null;
const stream = await client.chat.completions.create({
  model: SLUICE_MODEL,
  messages,
  max_tokens: 20,
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) final = chunk;
}

let refused = null;
try {
  await new OpenAI({ baseURL: `${SLUICE_URL}/v1`, apiKey: "not-a-macaroon", maxRetries: 0 })
    .chat.completions.create({ model: SLUICE_MODEL, messages });
} catch (e) {
  refused = { status: e.status, code: e.code ?? e.error?.code ?? null };
}

const doc = await (await fetch(`${SLUICE_URL}/openapi.json`)).json();
const validation = await new Validator().validate(doc);

console.log(JSON.stringify({
  models,
  answer: answer.choices[0].message.content,
  finish_reason: answer.choices[0].finish_reason,
  usage: answer.usage,
  receipt: answer.sluice,
  cost_header: response.headers.get("x-sluice-cost-msat"),
  streamed,
  stream_usage: final?.usage ?? null,
  stream_receipt: final?.sluice ?? null,
  refused,
  openapi_version: doc.openapi,
  openapi_valid: validation.valid,
  openapi_errors: validation.errors ?? null,
}));

// The OpenAI Node SDK against keycap, configured as its docs say: `baseURL` and `apiKey`.
// Run by keycap/tests/it/sdk.rs with KEYCAP_BASE_URL and KEYCAP_TOKEN; exits non-zero on any
// error.
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.KEYCAP_BASE_URL,
  apiKey: process.env.KEYCAP_TOKEN,
});
const model = "mock/cheap";

const chat = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "What is a budget?" }],
  max_tokens: 8,
});
assert.equal(chat.choices[0].message.content.split(" ").length, 8);
console.log("chat", chat.usage.cost);

let text = "";
const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Stream it." }],
  max_tokens: 6,
  stream: true,
});
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
}
assert.equal(text.split(" ").length, 6);
console.log("chat-stream", JSON.stringify(text));

const response = await client.responses.create({
  model,
  input: "What is a cap?",
  max_output_tokens: 7,
});
assert.equal(response.output_text.split(" ").length, 7);
console.log("responses", response.usage.cost);

const events = await client.responses.create({
  model,
  input: "Stream a reply.",
  max_output_tokens: 5,
  stream: true,
});
let deltas = 0;
let completed = null;
for await (const event of events) {
  if (event.type === "response.output_text.delta") deltas += 1;
  if (event.type === "response.completed") completed = event.response;
}
assert.equal(deltas, 5);
assert.ok(completed && completed.usage.cost > 0);
console.log("responses-stream", completed.usage.cost);

const embeddings = await client.embeddings.create({
  model: "openai/text-embedding-3-small",
  input: ["a budget is a plan", "a cap is a limit"],
});
assert.equal(embeddings.data.length, 2);
assert.equal(embeddings.data[0].embedding.length, 8);
console.log("embeddings", embeddings.usage.cost);

await assert.rejects(
  client.chat.completions.create({
    model: "openai/gpt-4o-mini",
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 5,
  }),
  (error) =>
    error instanceof OpenAI.PermissionDeniedError && error.message.includes("not allowed for this key"),
);
console.log("refused 403");

// The Vercel AI SDK against keycap, configured as README.md shows: `createOpenAI` with the
// gateway's base URL (its `openai(model)` speaks the Responses API, `openai.chat(model)` chat
// completions, `openai.embedding(model)` embeddings) and `createAnthropic` (the Messages API,
// the key sent as `x-api-key`). Run by keycap/tests/it/sdk.rs with KEYCAP_BASE_URL and
// KEYCAP_TOKEN; exits non-zero on any error.
import assert from "node:assert/strict";
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { embedMany, generateText, streamText } from "ai";

const baseURL = process.env.KEYCAP_BASE_URL;
const apiKey = process.env.KEYCAP_TOKEN;
const openai = createOpenAI({ baseURL, apiKey });
const anthropic = createAnthropic({ baseURL, apiKey });

const responses = await generateText({
  model: openai("mock/cheap"),
  prompt: "What is a budget?",
  maxOutputTokens: 7,
});
assert.equal(responses.text.split(" ").length, 7);
assert.equal(responses.usage.outputTokens, 7);
console.log("responses", responses.usage.inputTokens, responses.usage.outputTokens);

const streamed = streamText({
  model: openai("mock/cheap"),
  prompt: "Stream a reply.",
  maxOutputTokens: 5,
});
let text = "";
for await (const part of streamed.textStream) text += part;
assert.equal(text.split(" ").length, 5);
console.log("responses-stream", JSON.stringify(text));

const chat = await generateText({
  model: openai.chat("mock/cheap"),
  prompt: "Chat, please.",
  maxOutputTokens: 4,
});
assert.equal(chat.text.split(" ").length, 4);
console.log("chat", chat.usage.outputTokens);

const messages = await generateText({
  model: anthropic("mock/cheap"),
  prompt: "Through the Messages API.",
  maxOutputTokens: 6,
});
assert.equal(messages.text.split(" ").length, 6);
console.log("messages", messages.usage.outputTokens);

const { embeddings } = await embedMany({
  model: openai.embedding("openai/text-embedding-3-small"),
  values: ["a budget is a plan", "a cap is a limit"],
});
assert.equal(embeddings.length, 2);
console.log("embeddings", embeddings[0].length);

// Streams one chat completion with the official OpenAI Node library and prints how it ended.
// Usage: node openai_stream.mjs BASE_URL MAX_TOKENS
// Prints one line: `completed <n> <finish_reason>` or `error <type> <message>`.
import OpenAI from "openai";

const [baseURL, maxTokens] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
let n = 0;
let finish = null;
try {
  const stream = await client.chat.completions.create({
    model: "sim-llm",
    messages: [{ role: "user", content: "hello" }],
    max_tokens: Number(maxTokens),
    stream: true,
  });
  for await (const chunk of stream) {
    if (chunk.choices?.[0]?.delta?.content) n += 1;
    if (chunk.choices?.[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
  }
  console.log(`completed ${n} ${finish}`);
} catch (e) {
  const type = e?.error?.type ?? e?.type ?? e?.constructor?.name;
  console.log(`error ${type} ${e.message}`);
}

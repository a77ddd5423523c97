// Streams one completion with the official OpenAI Node library and prints what it received.
// Usage: node openai_handoff.mjs BASE_URL chat|completions INCLUDE_USAGE(0|1) SEED
// Prints one JSON line: result (completed|error), text, finish, usage, ids, roles, error.
import OpenAI from "openai";

const [baseURL, api, includeUsage, seedArg] = process.argv.slice(2);
const seed = Number(seedArg);
const client = new OpenAI({ baseURL, apiKey: "handoff-test-token", maxRetries: 0 });
const out = { result: null, text: "", finish: null, usage: null, ids: [], roles: 0, error: null };
const params = { model: "sim-llm", stream: true, seed };
if (includeUsage === "1") params.stream_options = { include_usage: true };
try {
  const stream =
    api === "chat"
      ? await client.chat.completions.create({
          messages: [{ role: "user", content: `tell me a long story number ${seed}` }],
          ...params,
        })
      : await client.completions.create({ prompt: `once upon a time number ${seed}`, ...params });
  for await (const chunk of stream) {
    if (!out.ids.includes(chunk.id)) out.ids.push(chunk.id);
    if (chunk.usage) {
      const u = chunk.usage;
      out.usage = [u.prompt_tokens, u.completion_tokens, u.total_tokens];
    }
    for (const c of chunk.choices ?? []) {
      if (api === "chat") {
        if (c.delta?.role) out.roles += 1;
        out.text += c.delta?.content ?? "";
      } else {
        out.text += c.text ?? "";
      }
      if (c.finish_reason) out.finish = c.finish_reason;
    }
  }
  out.result = "completed";
} catch (e) {
  out.result = "error";
  out.error = `${e?.error?.type ?? e?.type ?? e?.constructor?.name} ${e.message}`;
}
console.log(JSON.stringify(out));

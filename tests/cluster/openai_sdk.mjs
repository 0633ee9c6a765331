// Drives Shoal's HTTP API with the official `openai` npm package (installed by
// tests/cluster/http_test.cpp). Usage: node openai_sdk.mjs BASE_URL API_KEY MODEL
// Prints one line per check; exits non-zero on the first failure.
import OpenAI from 'openai';

const [baseURL, apiKey, model] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
};

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

// A completion.
const c = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 12, temperature: 0 });
if (c.object !== 'text_completion') fail(`completion object is ${c.object}`);
if (typeof c.choices?.[0]?.text !== 'string' || c.choices[0].text.length === 0) fail(`no completion text: ${JSON.stringify(c)}`);
if (!(c.usage?.completion_tokens > 0) || c.usage.total_tokens !== c.usage.prompt_tokens + c.usage.completion_tokens) {
  fail(`bad usage: ${JSON.stringify(c.usage)}`);
}
console.log(`completion ok: ${JSON.stringify(c.choices[0].text)} usage ${JSON.stringify(c.usage)}`);

// A streamed chat completion: content arrives in many chunks, each as it is generated.
const stream = await client.chat.completions.create({
  model,
  messages: [{ role: 'user', content: 'Tell me a story about a cat.' }],
  max_tokens: 48,
  temperature: 0,
  ignore_eos: true,
  stream: true,
});
let chunks = 0;
let text = '';
let finish = null;
const arrivals = [];
for await (const chunk of stream) {
  if (chunk.object !== 'chat.completion.chunk') fail(`chunk object is ${chunk.object}`);
  const choice = chunk.choices[0];
  if (choice?.delta?.content) {
    chunks += 1;
    text += choice.delta.content;
    arrivals.push(process.hrtime.bigint());
  }
  if (choice?.finish_reason) finish = choice.finish_reason;
}
if (chunks < 4) fail(`the stream brought its text in ${chunks} chunk(s), not incrementally`);
const distinct = new Set(arrivals.map(String)).size;
if (distinct < 4) fail(`only ${distinct} distinct arrival times for ${chunks} chunks`);
if (finish !== 'length') fail(`finish_reason ${finish}, expected length`);
console.log(`stream ok: ${chunks} content chunks, ${distinct} distinct arrival times, text ${JSON.stringify(text)}`);

// models.list().
const ids = [];
for await (const m of client.models.list()) ids.push(m.id);
if (!ids.includes(model)) fail(`models.list() gave ${JSON.stringify(ids)}, without ${model}`);
console.log(`models ok: ${JSON.stringify(ids)}`);

// An invalid key.
const bad = new OpenAI({ baseURL, apiKey: 'not-a-key', maxRetries: 0 });
try {
  await bad.completions.create({ model, prompt: 'x', max_tokens: 1 });
  fail('an invalid key was accepted');
} catch (e) {
  if (!(e instanceof OpenAI.AuthenticationError)) fail(`invalid key raised ${e?.constructor?.name}: ${e}`);
  console.log(`invalid key ok: ${e.constructor.name} ${e.status}`);
}
console.log('ALL OK');

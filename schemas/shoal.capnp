# Shoal's client API. Clients bootstrap a `Shoal` capability from the gateway's TCP port
# (Cap'n Proto two-party RPC). Limits: the gateway reads at most 64 MiB per message and 64 levels
# of nesting; larger or deeper messages are refused.
@0xd48fb5bb922bd8de;

$import "/capnp/c++.capnp".namespace("shoal::rpc");

struct Sampling {
  temperature @0 :Float32 = 1.0;     # 0 = greedy
  topK @1 :Int32 = 0;                # 0 = off
  topP @2 :Float32 = 1.0;            # 1 = off
  minP @3 :Float32 = 0.0;
  repetitionPenalty @4 :Float32 = 1.0;
  presencePenalty @5 :Float32 = 0.0;
  frequencyPenalty @6 :Float32 = 0.0;
  seed @7 :UInt64;
  hasSeed @8 :Bool = false;
}

struct GenerateRequest {
  model @0 :Text;                    # "" = the cluster's default model
  prompt @1 :Text;                   # used when promptIds is empty
  promptIds @2 :List(Int32);
  sampling @3 :Sampling;
  maxTokens @4 :Int32 = 128;
  ignoreEos @5 :Bool = false;
  stop @6 :List(Text);               # stop strings; the text ends before the first match
  stopTokenIds @7 :List(Int32);
  priority @8 :Int32 = 0;            # higher is scheduled first
  kind @9 :Text = "generate";        # generate | score | embed: selects the replica pool
  addSpecial @10 :Bool = true;       # add BOS as the tokenizer says
  specialsAsText @11 :Bool = false;  # treat special-token strings in the prompt as text
  requestId @12 :Text;               # optional; the router assigns one when empty
  apiKey @13 :Text;                  # the caller's API key (tenants and domains)
  noCache @14 :Bool = false;         # neither answer from nor fill the answer cache
}

struct Chunk {
  tokenIds @0 :List(Int32);
  text @1 :Text;                     # complete UTF-8 only
  index @2 :Int32;                   # position of tokenIds[0] in the generation
  cached @3 :Bool;                   # served from the answer cache
}

struct Summary {
  requestId @0 :Text;
  finishReason @1 :Text;             # length | stop | eos | cancelled | error
  errorCode @2 :Text;                # errc name when finishReason == "error"
  errorMessage @3 :Text;
  promptTokens @4 :Int32;
  completionTokens @5 :Int32;
  queueSeconds @6 :Float64;
  ttftSeconds @7 :Float64;
  totalSeconds @8 :Float64;
  replica @9 :Text;
  cached @10 :Bool;
}

struct Error {
  code @0 :Text;                     # invalid_argument | out_of_range | not_found | overloaded | unavailable | ...
  message @1 :Text;
}

struct Completion {
  requestId @0 :Text;
  tokenIds @1 :List(Int32);
  text @2 :Text;
  summary @3 :Summary;
}

struct ModelInfo {
  name @0 :Text;
  contextLength @1 :Int32;
  replicas @2 :Int32;
  healthyReplicas @3 :Int32;
}

struct Health {
  live @0 :Bool;                     # the gateway's event loop answers
  ready @1 :Bool;                    # at least one healthy replica with KV capacity
  detail @2 :Text;
  replicas @3 :List(ReplicaHealth);
}

struct ReplicaHealth {
  name @0 :Text;
  model @1 :Text;
  healthy @2 :Bool;
  detail @3 :Text;
  kvUsage @4 :Float64;
  waiting @5 :Int32;
  running @6 :Int32;
}

struct ChatMessage {
  role @0 :Text;                     # system | user | assistant | tool
  content @1 :Text;
}

struct ChatRequest {
  # The gateway renders the model's chat template and generates from the rendered text.
  messages @0 :List(ChatMessage);
  messagesJson @1 :Text;             # alternative to `messages`: a JSON array of message objects
                                     # (for fields beyond role/content, e.g. tool calls)
  toolsJson @2 :Text;                # optional JSON array of tool definitions
  addGenerationPrompt @3 :Bool = true;
  generation @4 :GenerateRequest;    # model, sampling, limits; its prompt fields are ignored
}

interface TokenSink {
  chunk @0 (chunk :Chunk) -> stream;
  done @1 (summary :Summary);
}

interface GenerationHandle {
  cancel @0 ();
}

struct AdminRequest {
  apiKey @0 :Text;
  op @1 :Text;                       # query | export | blocks | unblock | purge_cache
  tenant @2 :Text;                   # filter / target ("" = the caller's own for non-admin keys)
  principal @3 :Text;                # filter, or the principal ("tenant/key id") to unblock
  operation @4 :Text;                # filter: the audited operation
  since @5 :Text;                    # filter: ISO-8601 UTC, inclusive
  until @6 :Text;
  limit @7 :UInt64;                  # 0 = all
}

interface Shoal {
  # Streams chunks to `sink` as tokens are produced, then `done`. A refused request returns
  # `error` set and never calls the sink. Dropping the handle or the connection cancels.
  generate @0 (request :GenerateRequest, sink :TokenSink) -> (handle :GenerationHandle, error :Error, requestId :Text);
  complete @1 (request :GenerateRequest) -> (completion :Completion, error :Error);
  tokenize @2 (model :Text, text :Text, addSpecial :Bool = true) -> (ids :List(Int32), error :Error);
  models @3 () -> (models :List(ModelInfo));
  health @4 () -> (health :Health);
  chat @5 (request :ChatRequest, sink :TokenSink) -> (handle :GenerationHandle, error :Error, requestId :Text);
  # Administrative operations (audited): audit records as JSON lines, blocks, unblock, cache purge.
  admin @6 (request :AdminRequest) -> (lines :List(Text), error :Error);
}

//! The OpenAI wire format: request fields the simulator reads, streamed chunks, whole responses
//! and error bodies.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};

/// Which completion endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completion,
}

/// The fields of a completion request the simulator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompletionRequest {
    pub model: Option<String>,
    pub stream: bool,
    pub max_tokens: Option<u32>,
    pub include_usage: bool,
    pub prompt_tokens: u32,
    /// The request's `seed`: with one, the generation is a function of the seed and the
    /// prompt (see [`CompletionRequest::prompt_hash`]).
    pub seed: Option<u64>,
    /// Tokens of our own output the request already carries at its end (a continuation:
    /// chat with `continue_final_message`, or a completion prompt ending in generated text).
    /// Generation resumes at this index.
    pub already: u32,
    /// FNV-1a of the prompt's words without the continued part: the same for a request and
    /// its continuations.
    pub prompt_hash: u64,
}

/// A request the simulator refuses with 400, in OpenAI's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest {
    pub message: String,
    pub param: Option<&'static str>,
}

impl BadRequest {
    fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            message: message.into(),
            param,
        }
    }
}

/// Reads a completion request body.
pub(crate) fn parse_request(kind: Kind, body: &[u8]) -> Result<CompletionRequest, BadRequest> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        BadRequest::new(
            format!("request body is not valid JSON: {e}; send a JSON object"),
            None,
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(BadRequest::new("request body must be a JSON object", None));
    };
    let present = |k: &str| obj.get(k).filter(|v| !v.is_null());

    let mut words: Vec<&str> = Vec::new();
    let continued: Option<Vec<&str>>;
    match kind {
        Kind::Chat => {
            let msgs = match present("messages") {
                Some(Value::Array(msgs)) if !msgs.is_empty() => msgs,
                Some(_) => {
                    return Err(BadRequest::new(
                        "`messages` must be a non-empty array of chat messages",
                        Some("messages"),
                    ));
                }
                None => {
                    return Err(BadRequest::new(
                        "missing required field `messages`",
                        Some("messages"),
                    ));
                }
            };
            let flag = |key: &'static str, default: bool| match present(key) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(BadRequest::new(
                    format!("`{key}` must be true or false"),
                    Some(key),
                )),
            };
            let continue_final = flag("continue_final_message", false)?;
            let generation_prompt = flag("add_generation_prompt", true)?;
            // vLLM's checks, with its wording.
            if continue_final && generation_prompt {
                return Err(BadRequest::new(
                    "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                    Some("continue_final_message"),
                ));
            }
            let last = msgs.len() - 1;
            if continue_final && msgs[last].get("role").and_then(Value::as_str) != Some("assistant")
            {
                return Err(BadRequest::new(
                    "`continue_final_message` needs the last message to be the assistant's",
                    Some("messages"),
                ));
            }
            for m in &msgs[..if continue_final { last } else { msgs.len() }] {
                if let Some(c) = m.get("content") {
                    collect_words(c, &mut words);
                }
            }
            continued = continue_final.then(|| {
                let mut w = Vec::new();
                if let Some(c) = msgs[last].get("content") {
                    collect_words(c, &mut w);
                }
                w
            });
        }
        Kind::Completion => match present("prompt") {
            Some(p @ (Value::String(_) | Value::Array(_))) => {
                // A prompt that ends in the start of our own output is a continuation: the
                // text is appended as generated (our tokens end in a space, so it may be glued
                // to the prompt's last word).
                let single = match p {
                    Value::String(t) => Some(t.as_str()),
                    Value::Array(items) if items.len() == 1 => items[0].as_str(),
                    _ => None,
                };
                match single.map(|t| (t, generated_suffix(t))) {
                    Some((t, Some(at))) => {
                        words.extend(t[..at].split_whitespace());
                        continued = Some(t[at..].split_whitespace().collect());
                    }
                    _ => {
                        collect_words(p, &mut words);
                        continued = None;
                    }
                }
            }
            Some(_) => {
                return Err(BadRequest::new(
                    "`prompt` must be a string or an array of strings or token ids",
                    Some("prompt"),
                ));
            }
            None => {
                return Err(BadRequest::new(
                    "missing required field `prompt`",
                    Some("prompt"),
                ));
            }
        },
    }
    let continued = continued.unwrap_or_default();
    let prompt_tokens = words.len() + continued.len();
    // Only a continuation that is exactly the start of our output resumes it.
    let already = if continued
        .iter()
        .enumerate()
        .all(|(i, w)| u32::try_from(i).is_ok_and(|i| word(i) == *w))
    {
        u32::try_from(continued.len()).unwrap_or(u32::MAX)
    } else {
        0
    };
    let prompt_hash = words.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, w| {
        w.bytes()
            .chain(std::iter::once(b' '))
            .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    });
    let seed = match present("seed") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .map(|i| u64::from_ne_bytes(i.to_ne_bytes()))
                .ok_or_else(|| {
                    BadRequest::new(format!("`seed` must be an integer, got {v}"), Some("seed"))
                })?,
        ),
    };

    let model = match present("model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(BadRequest::new("`model` must be a string", Some("model"))),
    };
    let stream = match present("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(BadRequest::new(
                "`stream` must be true or false",
                Some("stream"),
            ));
        }
    };
    let limit = |key: &'static str| -> Result<Option<u32>, BadRequest> {
        match present(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
                _ => Err(BadRequest::new(
                    format!("`{key}` must be a whole number of at least 1, got {v}"),
                    Some(key),
                )),
            },
        }
    };
    let max_tokens = match (limit("max_tokens")?, limit("max_completion_tokens")?) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let include_usage = match present("stream_options") {
        None => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(BadRequest::new(
                    "`stream_options.include_usage` must be true or false",
                    Some("stream_options"),
                ));
            }
        },
        Some(_) => {
            return Err(BadRequest::new(
                "`stream_options` must be an object",
                Some("stream_options"),
            ));
        }
    };
    Ok(CompletionRequest {
        model,
        stream,
        max_tokens,
        include_usage,
        prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
        seed,
        already,
        prompt_hash,
    })
}

/// A rough tokenisation: words in strings, one per token id, text parts of content arrays.
fn collect_words<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.extend(s.split_whitespace()),
        Value::Number(_) => out.push("#"),
        Value::Array(items) => items.iter().for_each(|i| collect_words(i, out)),
        Value::Object(o) => {
            if let Some(t) = o.get("text") {
                collect_words(t, out);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// Where the start of our own output (`text(k)` for the largest `k`) ends `prompt`, if it
/// does.
fn generated_suffix(prompt: &str) -> Option<usize> {
    let first = word(0);
    prompt.match_indices(first).map(|(at, _)| at).find(|&at| {
        let rest = &prompt[at..];
        let k = u32::try_from(rest.split_whitespace().count()).unwrap_or(0);
        rest == text_range(0..k)
    })
}

/// Filler words; all plain ASCII, so they need no JSON escaping.
const WORDS: [&str; 64] = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "while",
    "a",
    "server",
    "drains",
    "its",
    "queue",
    "and",
    "every",
    "stream",
    "finishes",
    "cleanly",
    "before",
    "pod",
    "exits",
    "so",
    "nobody",
    "notices",
    "that",
    "node",
    "was",
    "replaced",
    "during",
    "night",
    "load",
    "balancers",
    "converge",
    "slowly",
    "but",
    "requests",
    "keep",
    "arriving",
    "until",
    "endpoints",
    "are",
    "gone",
    "tokens",
    "flow",
    "at",
    "steady",
    "pace",
    "from",
    "model",
    "to",
    "client",
    "through",
    "gate",
    "which",
    "counts",
    "each",
    "one",
    "with",
    "care",
    "lame",
    "duck",
    "mode",
    "ends",
];

/// The filler word of token `index` (0-based); deterministic.
pub(crate) fn word(index: u32) -> &'static str {
    // 37 is coprime with 64: the sequence visits every word before repeating.
    WORDS[(index as usize).wrapping_mul(37).wrapping_add(11) % WORDS.len()]
}

/// The whole generated text of `n` tokens, as the streamed deltas concatenate to.
#[cfg(test)]
pub(crate) fn text(n: u32) -> String {
    text_range(0..n)
}

/// The generated text of tokens `range`, as their streamed deltas concatenate to.
pub(crate) fn text_range(range: std::ops::Range<u32>) -> String {
    let mut s = String::with_capacity(range.len() * 8);
    for i in range {
        s.push_str(word(i));
        s.push(' ');
    }
    s
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishReason {
    Stop,
    Length,
    Abort,
}

impl FinishReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// Token counts reported in `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": u64::from(self.prompt_tokens) + u64::from(self.completion_tokens),
        })
    }
}

/// The `id` of a response: `chatcmpl-N` or `cmpl-N`.
pub(crate) fn response_id(kind: Kind, n: u64) -> String {
    match kind {
        Kind::Chat => format!("chatcmpl-{n}"),
        Kind::Completion => format!("cmpl-{n}"),
    }
}

/// The server-sent event that ends every stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// Builds the server-sent events of one streamed response. The common prefix is rendered once;
/// each token event costs one allocation of exactly its size.
#[derive(Debug, Clone)]
pub(crate) struct Chunks {
    kind: Kind,
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":[`
    head: Bytes,
}

const TAIL: &[u8] = b"}]}\n\n";

impl Chunks {
    pub(crate) fn new(kind: Kind, id: &str, created: u64, model: &str) -> Self {
        let object = match kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut head = BytesMut::with_capacity(128 + model.len());
        head.put_slice(b"data: {\"id\":");
        head.put_slice(Value::from(id).to_string().as_bytes());
        head.put_slice(b",\"object\":\"");
        head.put_slice(object.as_bytes());
        head.put_slice(b"\",\"created\":");
        head.put_slice(created.to_string().as_bytes());
        head.put_slice(b",\"model\":");
        head.put_slice(Value::from(model).to_string().as_bytes());
        head.put_slice(b",\"choices\":[");
        Self {
            kind,
            head: head.freeze(),
        }
    }

    fn event(&self, parts: &[&[u8]]) -> Bytes {
        let len = self.head.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut b = BytesMut::with_capacity(len);
        b.put_slice(&self.head);
        for p in parts {
            b.put_slice(p);
        }
        b.freeze()
    }

    /// The chat stream's first event: the assistant role with empty content.
    pub(crate) fn role(&self) -> Bytes {
        self.event(&[
            b"{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null",
            TAIL,
        ])
    }

    /// The event carrying token `index`.
    pub(crate) fn token(&self, index: u32) -> Bytes {
        let w = word(index).as_bytes();
        match self.kind {
            Kind::Chat => self.event(&[
                b"{\"index\":0,\"delta\":{\"content\":\"",
                w,
                b" \"},\"logprobs\":null,\"finish_reason\":null",
                TAIL,
            ]),
            Kind::Completion => self.event(&[
                b"{\"index\":0,\"text\":\"",
                w,
                b" \",\"logprobs\":null,\"finish_reason\":null",
                TAIL,
            ]),
        }
    }

    /// The event with an empty delta and the finish reason.
    pub(crate) fn finish(&self, reason: FinishReason) -> Bytes {
        let open: &[u8] = match self.kind {
            Kind::Chat => b"{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"",
            Kind::Completion => {
                b"{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\""
            }
        };
        self.event(&[open, reason.as_str().as_bytes(), b"\"", TAIL])
    }

    /// The usage event of `stream_options.include_usage`: no choices, only `usage`.
    pub(crate) fn usage(&self, usage: Usage) -> Bytes {
        let u = usage.to_json().to_string();
        self.event(&[b"],\"usage\":", u.as_bytes(), b"}\n\n"])
    }
}

/// The whole (non-streamed) response body.
pub(crate) fn full_response(
    kind: Kind,
    id: &str,
    created: u64,
    model: &str,
    tokens: std::ops::Range<u32>,
    reason: FinishReason,
    prompt_tokens: u32,
) -> Bytes {
    let usage = Usage {
        prompt_tokens,
        completion_tokens: tokens.len() as u32,
    }
    .to_json();
    let content = text_range(tokens);
    let v = match kind {
        Kind::Chat => json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": null,
                "finish_reason": reason.as_str(),
            }],
            "usage": usage,
        }),
        Kind::Completion => json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "text": content,
                "logprobs": null,
                "finish_reason": reason.as_str(),
            }],
            "usage": usage,
        }),
    };
    Bytes::from(v.to_string())
}

/// `GET /v1/models`.
pub(crate) fn models(model: &str, created: u64) -> Bytes {
    Bytes::from(
        json!({
            "object": "list",
            "data": [{"id": model, "object": "model", "created": created, "owned_by": "lameduck"}],
        })
        .to_string(),
    )
}

/// An OpenAI-style error body.
pub(crate) fn error_body(message: &str, kind: &str, param: Option<&str>, code: Value) -> Bytes {
    Bytes::from(
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
            .to_string(),
    )
}

/// The 503 of a draining server, exactly as vLLM-style clients see it.
pub(crate) fn shutting_down_body() -> Bytes {
    Bytes::from_static(
        br#"{"error":{"message":"server is shutting down","type":"server_shutdown","code":503}}"#,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_event(b: &Bytes) -> Value {
        let s = std::str::from_utf8(b).unwrap();
        assert!(s.starts_with("data: "), "{s:?}");
        assert!(s.ends_with("\n\n"), "{s:?}");
        assert_eq!(s.matches('\n').count(), 2, "one line per event: {s:?}");
        serde_json::from_str(&s["data: ".len()..s.len() - 2]).unwrap()
    }

    #[test]
    fn chat_chunks_have_openai_shape() {
        let c = Chunks::new(Kind::Chat, "chatcmpl-7", 1_700_000_000, "m\"odel");
        let role = parse_event(&c.role());
        assert_eq!(
            role,
            json!({"id":"chatcmpl-7","object":"chat.completion.chunk","created":1_700_000_000u64,
                   "model":"m\"odel","choices":[{"index":0,"delta":{"role":"assistant","content":""},
                   "logprobs":null,"finish_reason":null}]})
        );
        let tok = parse_event(&c.token(0));
        assert_eq!(tok["object"], "chat.completion.chunk");
        assert_eq!(
            tok["choices"][0]["delta"],
            json!({"content": format!("{} ", word(0))})
        );
        assert_eq!(tok["choices"][0]["finish_reason"], Value::Null);
        for (reason, s) in [
            (FinishReason::Stop, "stop"),
            (FinishReason::Length, "length"),
            (FinishReason::Abort, "abort"),
        ] {
            let fin = parse_event(&c.finish(reason));
            assert_eq!(fin["choices"][0]["delta"], json!({}));
            assert_eq!(fin["choices"][0]["finish_reason"], s);
            assert_eq!(fin["id"], "chatcmpl-7");
        }
        let usage = parse_event(&c.usage(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
        }));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens":3,"completion_tokens":4,"total_tokens":7})
        );
        assert_eq!(usage["model"], "m\"odel");
    }

    #[test]
    fn completion_chunks_have_openai_shape() {
        let c = Chunks::new(Kind::Completion, "cmpl-1", 5, "sim");
        let tok = parse_event(&c.token(3));
        assert_eq!(
            tok,
            json!({"id":"cmpl-1","object":"text_completion","created":5,"model":"sim",
                   "choices":[{"index":0,"text":format!("{} ", word(3)),"logprobs":null,"finish_reason":null}]})
        );
        let fin = parse_event(&c.finish(FinishReason::Length));
        assert_eq!(fin["choices"][0]["text"], "");
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn streamed_deltas_concatenate_to_the_full_text() {
        let c = Chunks::new(Kind::Chat, "x", 0, "m");
        let streamed: String = (0..100)
            .map(|i| {
                parse_event(&c.token(i))["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(streamed, text(100));
        let distinct: std::collections::HashSet<_> = (0..64).map(word).collect();
        assert_eq!(distinct.len(), 64);
    }

    #[test]
    fn full_responses() {
        let v: Value = serde_json::from_slice(&full_response(
            Kind::Chat,
            "chatcmpl-1",
            9,
            "m",
            0..3,
            FinishReason::Length,
            2,
        ))
        .unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], text(3));
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
        let v: Value = serde_json::from_slice(&full_response(
            Kind::Completion,
            "cmpl-1",
            9,
            "m",
            0..2,
            FinishReason::Stop,
            0,
        ))
        .unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], text(2));
    }

    #[test]
    fn parses_requests() {
        let r = parse_request(
            Kind::Chat,
            br#"{"model":"x","messages":[{"role":"user","content":"hello there you"},
                {"role":"user","content":[{"type":"text","text":"two words"}]}],
                "stream":true,"max_tokens":9,"max_completion_tokens":12,
                "stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            CompletionRequest {
                model: Some("x".into()),
                stream: true,
                max_tokens: Some(9),
                include_usage: true,
                prompt_tokens: 5,
                seed: None,
                already: 0,
                prompt_hash: r.prompt_hash,
            }
        );
        let r = parse_request(Kind::Completion, br#"{"prompt":[[1,2,3],[4]]}"#).unwrap();
        assert_eq!(r.prompt_tokens, 4);
        assert!(!r.stream);
        assert_eq!(r.max_tokens, None);
        let r = parse_request(
            Kind::Completion,
            br#"{"prompt":"a b","max_tokens":null,"stream":null}"#,
        )
        .unwrap();
        assert_eq!((r.prompt_tokens, r.max_tokens), (2, None));
    }

    #[test]
    fn continuations_resume_after_our_own_output() {
        let prefix = text(3);
        let chat = format!(
            r#"{{"messages":[{{"role":"user","content":"tell me more"}},
                {{"role":"assistant","content":"{prefix}"}}],
                "continue_final_message":true,"add_generation_prompt":false,"seed":7}}"#
        );
        let r = parse_request(Kind::Chat, chat.as_bytes()).unwrap();
        assert_eq!((r.already, r.seed, r.prompt_tokens), (3, Some(7), 6));
        let plain = parse_request(
            Kind::Chat,
            br#"{"messages":[{"role":"user","content":"tell me more"}],"seed":7}"#,
        )
        .unwrap();
        assert_eq!(plain.already, 0);
        assert_eq!(plain.prompt_hash, r.prompt_hash, "same prompt, same draw");
        // A final assistant message that is not our output resumes nothing.
        let other =
            br#"{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"hello"}],
            "continue_final_message":true,"add_generation_prompt":false}"#;
        assert_eq!(parse_request(Kind::Chat, other).unwrap().already, 0);
        // vLLM refuses continue_final_message with the default add_generation_prompt.
        let both =
            br#"{"messages":[{"role":"assistant","content":"x"}],"continue_final_message":true}"#;
        assert_eq!(
            parse_request(Kind::Chat, both).unwrap_err().param,
            Some("continue_final_message")
        );
        let completion = format!(r#"{{"prompt":"say it{}"}}"#, text(4));
        let r = parse_request(Kind::Completion, completion.as_bytes()).unwrap();
        assert_eq!((r.already, r.prompt_tokens), (4, 6));
        let base = parse_request(Kind::Completion, br#"{"prompt":"say it"}"#).unwrap();
        assert_eq!(base.prompt_hash, r.prompt_hash);
    }

    #[test]
    fn rejects_bad_requests_with_the_param() {
        let cases: &[(Kind, &[u8], Option<&str>)] = &[
            (Kind::Chat, b"{not json", None),
            (Kind::Chat, b"[1]", None),
            (Kind::Chat, b"{}", Some("messages")),
            (Kind::Chat, br#"{"messages":[]}"#, Some("messages")),
            (Kind::Chat, br#"{"messages":"hi"}"#, Some("messages")),
            (Kind::Completion, br#"{"messages":[{}]}"#, Some("prompt")),
            (Kind::Completion, br#"{"prompt":5}"#, Some("prompt")),
            (
                Kind::Completion,
                br#"{"prompt":"x","max_tokens":0}"#,
                Some("max_tokens"),
            ),
            (
                Kind::Completion,
                br#"{"prompt":"x","max_completion_tokens":-3}"#,
                Some("max_completion_tokens"),
            ),
            (
                Kind::Completion,
                br#"{"prompt":"x","max_tokens":1.5}"#,
                Some("max_tokens"),
            ),
            (
                Kind::Completion,
                br#"{"prompt":"x","stream":"yes"}"#,
                Some("stream"),
            ),
            (
                Kind::Completion,
                br#"{"prompt":"x","model":3}"#,
                Some("model"),
            ),
            (
                Kind::Completion,
                br#"{"prompt":"x","stream_options":{"include_usage":1}}"#,
                Some("stream_options"),
            ),
        ];
        for (kind, body, param) in cases {
            let e = parse_request(*kind, body).unwrap_err();
            assert_eq!(e.param, *param, "{}", String::from_utf8_lossy(body));
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn error_bodies() {
        let v: Value = serde_json::from_slice(&shutting_down_body()).unwrap();
        assert_eq!(
            v,
            json!({"error":{"message":"server is shutting down","type":"server_shutdown","code":503}})
        );
        let v: Value =
            serde_json::from_slice(&error_body("m", "invalid_request_error", None, Value::Null))
                .unwrap();
        assert_eq!(
            v,
            json!({"error":{"message":"m","type":"invalid_request_error","param":null,"code":null}})
        );
    }
}

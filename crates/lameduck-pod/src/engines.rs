//! What lameduck knows about inference servers: how to recognise one (by its image and the
//! program it runs, never by a mere mention in an environment variable or an argument), which
//! port it listens on by default, how that port is set (a flag, an environment variable, an
//! address), its health endpoint, and how long its requests run.
//!
//! The same table is printed in `docs/inject.md`; a test keeps the two in step.

use std::time::Duration;

use k8s_openapi::api::core::v1 as core;

/// How a server is told its listening port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSetting {
    /// A command-line flag whose value is the port (`--port 8000`, `--http-port=8000`).
    Flag(&'static str),
    /// A command-line flag whose value is `host:port` or `:port` (`--address :8080`).
    FlagAddress(&'static str),
    /// An environment variable holding the port (`PORT=8080`).
    Env(&'static str),
    /// An environment variable holding `host:port` (`OLLAMA_HOST=0.0.0.0:11434`).
    EnvAddress(&'static str),
}

impl PortSetting {
    /// How a person would write it, for messages and docs.
    pub fn describe(self, port: u16) -> String {
        match self {
            PortSetting::Flag(f) => format!("`{f} {port}`"),
            PortSetting::FlagAddress(f) => format!("`{f} 0.0.0.0:{port}`"),
            PortSetting::Env(e) => format!("env `{e}={port}`"),
            PortSetting::EnvAddress(e) => format!("env `{e}=0.0.0.0:{port}`"),
        }
    }
}

/// What kind of work an engine serves, which decides how long its requests are assumed to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Text generation: streamed completions of minutes.
    Generation,
    /// Embeddings, reranking: seconds.
    Embedding,
    /// A model server for any framework (Triton, KServe's servers): assume generation.
    Mixed,
    /// An LLM gateway that relays generations from elsewhere (LiteLLM): as long as they are.
    Gateway,
}

/// Request length assumed for a generation server when nothing says otherwise.
pub const ASSUMED_GENERATION: Duration = Duration::from_secs(150);
/// Request length assumed for an embedding server.
pub const ASSUMED_EMBEDDING: Duration = Duration::from_secs(30);

impl Work {
    /// The longest request assumed for this kind of work.
    pub fn assumed_request(self) -> Duration {
        match self {
            Work::Embedding => ASSUMED_EMBEDDING,
            Work::Generation | Work::Mixed | Work::Gateway => ASSUMED_GENERATION,
        }
    }
}

/// One inference server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engine {
    /// Short id (`vllm`).
    pub id: &'static str,
    /// Its name for people (`vLLM`).
    pub name: &'static str,
    /// Image name patterns, matched against the image's last path segment (without tag or
    /// digest): `x` matches exactly, `x*` a prefix, `*x` a suffix. A pattern containing `/`
    /// is matched against the whole repository path as a prefix (`nvcr.io/nim/`).
    pub images: &'static [&'static str],
    /// Programs it runs as (basename of the executable), and Python modules run with `-m`
    /// (written `-m module`).
    pub programs: &'static [&'static str],
    /// How its port is set, in order of preference (the first is the one added when none is
    /// written).
    pub port: &'static [PortSetting],
    /// The port it listens on when nothing sets one, in its official image.
    pub default_port: u16,
    /// Its health endpoint (readiness).
    pub health: &'static str,
    /// What it serves.
    pub work: Work,
    /// A note for people about its port or shutdown, shown in docs and messages.
    pub note: &'static str,
}

use PortSetting::{Env, EnvAddress, Flag, FlagAddress};

/// Every server lameduck recognises.
pub const ENGINES: &[Engine] = &[
    Engine {
        id: "vllm",
        name: "vLLM",
        images: &[
            "vllm-openai",
            "vllm",
            "vllm-*",
            "*-vllm",
            "llm-d",
            "llm-d-*",
        ],
        programs: &["vllm", "-m vllm.entrypoints.openai.api_server"],
        port: &[Flag("--port")],
        default_port: 8000,
        health: "/health",
        work: Work::Generation,
        note: "a port in a `--config` file is not visible to inject: write `--port` on the command line; VLLM_PORT is an internal port, not the API's",
    },
    Engine {
        id: "sglang",
        name: "SGLang",
        images: &["sglang", "sglang-*"],
        programs: &["-m sglang.launch_server", "sglang"],
        port: &[Flag("--port")],
        default_port: 30000,
        health: "/health",
        work: Work::Generation,
        note: "",
    },
    Engine {
        id: "tgi",
        name: "Text Generation Inference",
        images: &["text-generation-inference", "tgi-*"],
        programs: &["text-generation-launcher"],
        port: &[Flag("--port"), Env("PORT")],
        default_port: 80,
        health: "/health",
        work: Work::Generation,
        note: "the image sets PORT=80; the launcher alone defaults to 3000",
    },
    Engine {
        id: "tei",
        name: "Text Embeddings Inference",
        images: &["text-embeddings-inference", "tei-*"],
        programs: &["text-embeddings-router"],
        port: &[Flag("--port"), Env("PORT")],
        default_port: 80,
        health: "/health",
        work: Work::Embedding,
        note: "the image sets PORT=80; the router alone defaults to 3000",
    },
    Engine {
        id: "triton",
        name: "Triton Inference Server",
        images: &["tritonserver", "*-tritonserver"],
        programs: &["tritonserver"],
        port: &[Flag("--http-port")],
        default_port: 8000,
        health: "/v2/health/ready",
        work: Work::Mixed,
        note: "gRPC (--grpc-port, 8001) and metrics (--metrics-port, 8002) stay on their ports",
    },
    Engine {
        id: "llamacpp",
        name: "llama.cpp server",
        images: &["llama.cpp", "llama-cpp", "llama-server*", "llama.cpp-*"],
        programs: &["llama-server"],
        port: &[Flag("--port"), Env("LLAMA_ARG_PORT")],
        default_port: 8080,
        health: "/health",
        work: Work::Generation,
        note: "",
    },
    Engine {
        id: "ollama",
        name: "Ollama",
        images: &["ollama"],
        programs: &["ollama"],
        port: &[EnvAddress("OLLAMA_HOST")],
        default_port: 11434,
        health: "/",
        work: Work::Generation,
        note: "Ollama has no port flag: it listens where OLLAMA_HOST says (the image sets 0.0.0.0:11434)",
    },
    Engine {
        id: "nim",
        name: "NVIDIA NIM",
        images: &["nvcr.io/nim/"],
        programs: &[],
        port: &[Env("NIM_SERVER_PORT")],
        default_port: 8000,
        health: "/v1/health/ready",
        work: Work::Generation,
        note: "NIM takes its port from NIM_SERVER_PORT only",
    },
    Engine {
        id: "litellm",
        name: "LiteLLM proxy",
        images: &["litellm", "litellm-*"],
        programs: &["litellm", "prod_entrypoint.sh"],
        port: &[Flag("--port"), Env("PORT")],
        default_port: 4000,
        health: "/health/readiness",
        work: Work::Gateway,
        note: "",
    },
    Engine {
        id: "vllm-router",
        name: "vLLM production-stack router",
        images: &["lmstack-router", "vllm-router", "production-stack-router"],
        programs: &["vllm-router", "-m vllm_router.app"],
        port: &[Flag("--port")],
        default_port: 8001,
        health: "/health",
        work: Work::Gateway,
        note: "",
    },
    Engine {
        id: "sglang-router",
        name: "SGLang router",
        images: &["sglang-router"],
        programs: &["-m sglang_router.launch_router", "sglang-router"],
        port: &[Flag("--port")],
        default_port: 30000,
        health: "/health",
        work: Work::Gateway,
        note: "",
    },
    Engine {
        id: "lmdeploy",
        name: "LMDeploy",
        images: &["lmdeploy"],
        programs: &["lmdeploy"],
        port: &[Flag("--server-port")],
        default_port: 23333,
        health: "/health",
        work: Work::Generation,
        note: "",
    },
    Engine {
        id: "trtllm",
        name: "TensorRT-LLM server",
        images: &["tensorrt-llm", "tensorrt_llm", "release"],
        programs: &["trtllm-serve"],
        port: &[Flag("--port")],
        default_port: 8000,
        health: "/health",
        work: Work::Generation,
        note: "",
    },
    Engine {
        id: "localai",
        name: "LocalAI",
        images: &["localai", "local-ai"],
        programs: &["local-ai"],
        port: &[
            FlagAddress("--address"),
            EnvAddress("LOCALAI_ADDRESS"),
            EnvAddress("ADDRESS"),
        ],
        default_port: 8080,
        health: "/readyz",
        work: Work::Generation,
        note: "",
    },
    Engine {
        id: "xinference",
        name: "Xinference",
        images: &["xinference"],
        programs: &["xinference-local"],
        port: &[Flag("--port")],
        default_port: 9997,
        health: "/status",
        work: Work::Generation,
        note: "",
    },
    Engine {
        id: "kserve-huggingface",
        name: "KServe Hugging Face server",
        images: &["huggingfaceserver"],
        programs: &["-m huggingfaceserver"],
        port: &[Flag("--http_port")],
        default_port: 8080,
        health: "/v2/health/ready",
        work: Work::Generation,
        note: "",
    },
];

/// The table of [`ENGINES`] as `docs/inject.md` prints it (a test keeps the two in step).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| server | recognised by image | or by program | port set by | default port | health | requests assumed |\n|---|---|---|---|---:|---|---:|\n",
    );
    for e in ENGINES {
        let code = |v: &[&str]| {
            if v.is_empty() {
                "—".to_owned()
            } else {
                v.iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let ports: Vec<String> = e
            .port
            .iter()
            .map(|p| match p {
                PortSetting::Flag(f) => format!("`{f} PORT`"),
                PortSetting::FlagAddress(f) => format!("`{f} HOST:PORT`"),
                PortSetting::Env(n) => format!("env `{n}`"),
                PortSetting::EnvAddress(n) => format!("env `{n}=HOST:PORT`"),
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | `{}` | {} s |\n",
            e.name,
            code(e.images),
            code(e.programs),
            ports.join(", "),
            e.default_port,
            e.health,
            e.work.assumed_request().as_secs()
        ));
    }
    out
}

/// The engine with this id.
pub fn by_id(id: &str) -> Option<&'static Engine> {
    ENGINES.iter().find(|e| e.id == id)
}

/// The repository path of an image reference, without registry port, tag or digest
/// (`ghcr.io/ggml-org/llama.cpp:server` → `ghcr.io/ggml-org/llama.cpp`).
pub fn image_repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A tag is after the last `:` that comes after the last `/` (a registry port is before).
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

fn pattern_matches(pattern: &str, repo: &str) -> bool {
    if pattern.contains('/') {
        return repo.starts_with(pattern);
    }
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if let Some(p) = pattern.strip_suffix('*') {
        last.starts_with(p)
    } else if let Some(s) = pattern.strip_prefix('*') {
        last.ends_with(s)
    } else {
        last == pattern
    }
}

/// The engine whose image this is.
pub fn by_image(image: &str) -> Option<&'static Engine> {
    let repo = image_repository(image).to_ascii_lowercase();
    // `release` alone (TensorRT-LLM's NGC image) is too generic: only with the NGC path.
    ENGINES.iter().find(|e| {
        e.images.iter().any(|p| {
            pattern_matches(p, &repo) && (*p != "release" || repo.contains("tensorrt-llm"))
        })
    })
}

/// The programs a container runs: the basename of its command's first word, the module of a
/// `python -m`, and, for a shell command (`sh -c "…"`), the same for every command in its
/// script. Looked up in `command` first, then `args` when there is no command (the image's
/// entrypoint then runs with them; an entrypoint that is a shell or a script is transparent).
pub fn programs(c: &core::Container) -> Vec<String> {
    let mut out = Vec::new();
    let has_command = c.command.as_ref().is_some_and(|v| !v.is_empty());
    // Without a command the image's entrypoint runs with the args: they name a program only
    // when they start with one (`args: [tritonserver, …]` for an entrypoint that execs them).
    if !has_command
        && c.args
            .as_ref()
            .and_then(|a| a.first())
            .is_none_or(|a| a.starts_with('-'))
    {
        return out;
    }
    let argv: Vec<&str> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(String::as_str)
        .collect();
    collect_programs(&argv, &mut out);
    out
}

fn basename(w: &str) -> &str {
    w.rsplit('/').next().unwrap_or(w)
}

fn is_shell(w: &str) -> bool {
    matches!(basename(w), "sh" | "bash" | "dash" | "ash" | "zsh")
}

fn is_python(w: &str) -> bool {
    let b = basename(w);
    b == "python" || b.starts_with("python3") || b == "python2" || b == "uv" || b == "uvicorn"
}

/// Programs of one argv (recursing into `sh -c SCRIPT` and wrappers such as `exec`, `env`,
/// `tini --`, `dumb-init`).
fn collect_programs(argv: &[&str], out: &mut Vec<String>) {
    let mut i = 0;
    while i < argv.len() {
        let w = argv[i].trim();
        let b = basename(w);
        if matches!(
            b,
            "exec" | "env" | "tini" | "dumb-init" | "nohup" | "--" | "time" | "numactl"
        ) || w.starts_with('-') && i > 0 && matches!(basename(argv[i - 1]), "tini" | "dumb-init")
            || w.contains('=') && !w.starts_with('-')
        {
            i += 1;
            continue;
        }
        if is_shell(w) {
            if let Some(script) = argv[i + 1..]
                .iter()
                .position(|a| a.starts_with('-') && a.contains('c'))
                .and_then(|p| argv.get(i + 1 + p + 1))
            {
                for line in shell_commands(script) {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    collect_programs(&words, out);
                }
            } else if let Some(script) = argv[i + 1..].iter().find(|a| !a.starts_with('-')) {
                // `bash start.sh …`: the script is the program.
                out.push(basename(script).to_owned());
            }
            return;
        }
        if is_python(w) {
            if let Some(m) = argv[i + 1..].iter().position(|a| *a == "-m") {
                if let Some(module) = argv.get(i + 1 + m + 1) {
                    out.push(format!("-m {module}"));
                }
            } else if let Some(script) = argv.get(i + 1) {
                out.push(basename(script).trim_end_matches(".py").to_owned());
            }
            return;
        }
        out.push(b.to_owned());
        return;
    }
}

/// The simple commands of a shell script: split at newlines, `;`, `&&`, `||`, `|`, `&`.
fn shell_commands(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = script.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\n' | ';' | '|' | '&' => {
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
                while chars.peek().is_some_and(|c| matches!(c, '|' | '&')) {
                    chars.next();
                }
            }
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
                cur.push(' ');
            }
            '"' | '\'' | '(' | ')' | '{' | '}' => cur.push(' '),
            _ => cur.push(ch),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out.retain(|c| {
        let first = c.split_whitespace().next().unwrap_or("");
        !matches!(
            first,
            "if" | "then"
                | "fi"
                | "else"
                | "do"
                | "done"
                | "echo"
                | "export"
                | "set"
                | "cd"
                | "mkdir"
                | "cp"
                | "ln"
                | "trap"
                | "wait"
                | "sleep"
                | "for"
                | "while"
                | "test"
                | "["
                | "rm"
                | "touch"
                | "cat"
                | "true"
                | "false"
        )
    });
    out
}

/// The engine a program or module is.
pub fn by_program(program: &str) -> Option<&'static Engine> {
    ENGINES.iter().find(|e| e.programs.contains(&program))
}

/// How a container was recognised as an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Its image.
    Image,
    /// The program it runs.
    Program,
}

/// The engine a container runs, from its image and the program it runs (the program wins
/// when both say something: a generic image running `vllm serve` is vLLM). Environment
/// variables and arguments that merely mention an engine are not evidence: a router with
/// `INFERENCE_ENGINE=vllm` is not vLLM.
pub fn identify(c: &core::Container) -> Option<(&'static Engine, Evidence)> {
    let from_program = programs(c)
        .iter()
        .find_map(|p| by_program(p))
        .map(|e| (e, Evidence::Program));
    // With an explicit command whose last program is something else (a router shipped in the
    // engine's image, say), the image says little. A script (`start.sh`) may well start the
    // engine: the image decides then.
    let command_runs_other = c.command.as_ref().is_some_and(|cmd| !cmd.is_empty())
        && from_program.is_none()
        && programs(c)
            .last()
            .is_some_and(|p| !p.ends_with(".sh") && !p.starts_with("entrypoint"));
    from_program.or_else(|| {
        if command_runs_other {
            return None;
        }
        c.image
            .as_deref()
            .and_then(by_image)
            .map(|e| (e, Evidence::Image))
    })
}

/// Whether a container requests a GPU (or another accelerator).
pub fn wants_accelerator(c: &core::Container) -> bool {
    c.resources.as_ref().is_some_and(|r| {
        r.limits
            .iter()
            .flatten()
            .chain(r.requests.iter().flatten())
            .any(|(k, _)| {
                k.ends_with("/gpu")
                    || k.starts_with("aws.amazon.com/neuron")
                    || k == "google.com/tpu"
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(image: &str, command: &[&str], args: &[&str]) -> core::Container {
        let v = |s: &[&str]| (!s.is_empty()).then(|| s.iter().map(|s| s.to_string()).collect());
        core::Container {
            name: "c".into(),
            image: Some(image.into()),
            command: v(command),
            args: v(args),
            ..Default::default()
        }
    }

    fn id(c: &core::Container) -> Option<&'static str> {
        identify(c).map(|(e, _)| e.id)
    }

    #[test]
    fn images_are_recognised_by_repository() {
        for (image, want) in [
            ("vllm/vllm-openai:v0.9.0", Some("vllm")),
            ("docker.io/vllm/vllm-openai@sha256:abc", Some("vllm")),
            ("lmsysorg/sglang:v0.4.6-cu124", Some("sglang")),
            (
                "ghcr.io/huggingface/text-generation-inference:3.0",
                Some("tgi"),
            ),
            (
                "ghcr.io/huggingface/text-embeddings-inference:cpu-1.6",
                Some("tei"),
            ),
            (
                "nvcr.io/nvidia/tritonserver:24.08-trtllm-python-py3",
                Some("triton"),
            ),
            ("ghcr.io/ggml-org/llama.cpp:server-cuda", Some("llamacpp")),
            ("ollama/ollama:0.5.7", Some("ollama")),
            ("nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3", Some("nim")),
            ("ghcr.io/berriai/litellm:main-stable", Some("litellm")),
            ("registry.local:5000/ml/vllm-openai:latest", Some("vllm")),
            ("nginx:1.27", None),
            ("myorg/llm-router:1", None),
            ("python:3.12", None),
        ] {
            assert_eq!(by_image(image).map(|e| e.id), want, "{image}");
        }
    }

    #[test]
    fn programs_are_found_through_shells_and_wrappers() {
        let c = container(
            "python:3.12",
            &["/bin/sh", "-c"],
            &["pip install x && exec python3 -m vllm.entrypoints.openai.api_server --port 8000"],
        );
        assert_eq!(id(&c), Some("vllm"));
        let c = container(
            "ubuntu",
            &[
                "bash",
                "-c",
                "set -e\nollama serve &\nsleep 5\nollama pull llama3\nwait",
            ],
            &[],
        );
        assert_eq!(id(&c), Some("ollama"));
        let c = container(
            "img",
            &["tini", "--", "/usr/bin/llama-server"],
            &["-m", "x.gguf"],
        );
        assert_eq!(id(&c), Some("llamacpp"));
        let c = container(
            "lmsysorg/sglang:latest",
            &["python3", "-m", "sglang.launch_server"],
            &[],
        );
        assert_eq!(id(&c), Some("sglang"));
    }

    #[test]
    fn a_mention_is_not_an_engine() {
        // A router whose environment and arguments name the engine it routes to.
        let mut router = container(
            "ghcr.io/example/inference-router:1",
            &["/router"],
            &["--engine", "vllm", "--backend=http://vllm:8000"],
        );
        router.env = Some(vec![core::EnvVar {
            name: "INFERENCE_ENGINE".into(),
            value: Some("vllm".into()),
            ..Default::default()
        }]);
        assert_eq!(id(&router), None);
        // Something else run from the engine's image.
        let c = container(
            "lmsysorg/sglang:latest",
            &["python3", "-m", "mycompany.router"],
            &[],
        );
        assert_eq!(id(&c), None);
        // SGLang's own router is a gateway of its own.
        let c = container(
            "lmsysorg/sglang:latest",
            &["python3", "-m", "sglang_router.launch_router"],
            &[],
        );
        assert_eq!(id(&c), Some("sglang-router"));
    }

    #[test]
    fn the_docs_print_this_table() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/inject.md"))
                .expect("docs/inject.md");
        let table = markdown_table();
        assert!(
            docs.contains(&format!(
                "<!-- engines:start -->\n{table}<!-- engines:end -->"
            )),
            "docs/inject.md must hold this table between its engines markers:\n{table}"
        );
    }

    #[test]
    fn repositories_drop_tags_and_digests_but_not_registry_ports() {
        assert_eq!(image_repository("a.io:5000/x/y:1.2"), "a.io:5000/x/y");
        assert_eq!(image_repository("a.io:5000/x/y"), "a.io:5000/x/y");
        assert_eq!(image_repository("y@sha256:00"), "y");
    }
}

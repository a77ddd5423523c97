"""Checks the lameduck image as a user would run it (scripts/image builds it; .ci/run runs this).

    check_image.py IMAGE OCI_ARCHIVE VERSION

- its OCI config: user 65532, the entrypoint, PATH, the OCI labels (skopeo, from the archive);
- its files: the binary, passwd/group/hosts and the CA bundle, and nothing else (no shell);
- `lameduck --version` in it (podman with runc, no network, read-only root filesystem);
- wrapper mode's init container: `copy-binary` into a mounted volume, and the copy runs;
- the gate wrapping engine-sim in it (host network, read-only, non-root), one streamed chat
  completion through it with the official OpenAI client from the host, then SIGTERM: the
  gate drains and the container exits 0.
Every failure says what was expected and what was seen.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import openai

image, archive, version = sys.argv[1:4]
RUN = ["podman", "run", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
       "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--read-only"]


def sh(*args, check=True):
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(args)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


def expect(what, ok, seen):
    if not ok:
        sys.exit(f"FAIL: {what}; seen: {seen}")
    print(f"ok: {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The OCI config, read from the exported archive.
config = json.loads(sh("skopeo", "inspect", "--config", f"oci-archive:{archive}").stdout)["config"]
expect("runs as 65532:65532", config.get("User") == "65532:65532", config.get("User"))
expect("entrypoint is the binary", config.get("Entrypoint") == ["/usr/local/bin/lameduck"],
       config.get("Entrypoint"))
expect("PATH finds `lameduck`", "PATH=/usr/local/bin" in config.get("Env", []), config.get("Env"))
labels = config.get("Labels") or {}
for key, want in [("org.opencontainers.image.version", version),
                  ("org.opencontainers.image.licenses", "Apache-2.0"),
                  ("org.opencontainers.image.source", "https://github.com/lameduck-dev/lameduck")]:
    expect(f"label {key}={want}", labels.get(key) == want, labels.get(key))

# The files: exactly what the Containerfile puts there.
ctr = sh("buildah", "from", "--pull-never", image).stdout.strip()
try:
    root = sh("buildah", "mount", ctr).stdout.strip()
    files = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, fs in os.walk(root) for f in fs)
    want = ["etc/group", "etc/hosts", "etc/passwd", "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/lameduck"]
    expect("the image holds the binary and four /etc files, no shell", files == want, files)
    mode = os.stat(os.path.join(root, "usr/local/bin/lameduck")).st_mode
    expect("the binary is executable by all and writable by none but root",
           mode & 0o555 == 0o555 and mode & 0o022 == 0, oct(mode))
finally:
    sh("buildah", "umount", ctr, check=False)
    sh("buildah", "rm", ctr, check=False)

out = sh(*RUN, "--rm", "--network", "none", image, "--version")
expect(f"`lameduck --version` says {version}", version in out.stdout, out.stdout + out.stderr)

# Wrapper mode's init container: `lameduck copy-binary /lameduck/bin` into a shared volume (the
# command `lameduck inject --mode wrapper` writes), then the copy runs outside the image.
with tempfile.TemporaryDirectory() as vol:
    os.chmod(vol, 0o777)
    out = sh(*RUN, "--rm", "--network", "none", "-v", f"{vol}:/lameduck/bin", image,
             "copy-binary", "/lameduck/bin")
    copied = os.path.join(vol, "lameduck")
    expect("copy-binary put the binary into the volume", os.path.isfile(copied), out.stdout + out.stderr)
    ran = sh(copied, "--version")
    expect("the copied binary runs outside the image", version in ran.stdout, ran.stdout)

# The gate in front of engine-sim, inside the container.
proxy, admin, engine = free_port(), free_port(), free_port()
name = f"lameduck-check-{os.getpid()}"
gate = subprocess.Popen(
    [*RUN, "--name", name, "--network", "host", image,
     "gate", "--listen", f"127.0.0.1:{proxy}", "--admin", f"127.0.0.1:{admin}",
     "--upstream", f"http://127.0.0.1:{engine}", "--grace-period", "20",
     "--", "lameduck", "engine-sim", "--listen", f"127.0.0.1:{engine}",
     "--tokens-per-second", "200", "--output-tokens", "40"],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
try:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if gate.poll() is not None or time.monotonic() > deadline:
            gate.kill()
            out, err = gate.communicate()
            sys.exit(f"FAIL: the gate in the image never became ready:\n{out}{err}")
        time.sleep(0.2)
    print("ok: the gate in the image is ready")
    pid = sh("podman", "inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    with open(f"/proc/{pid}/status") as f:
        uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
    expect("the gate runs as uid 65532", uid == "65532", uid)

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy}/v1", api_key="none", max_retries=0)
    stream = client.chat.completions.create(
        model="sim-llm", stream=True, max_tokens=40,
        messages=[{"role": "user", "content": "hello from the image check"}])
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    expect("a streamed completion came through the gate in the image",
           finish in ("length", "stop") and len(text) > 0, (finish, text[:80]))

    sh("podman", "kill", "--signal", "TERM", name)
    try:
        gate.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gate.kill()
        sys.exit("FAIL: the gate in the image did not exit within 60 s of SIGTERM")
    out, err = gate.communicate()
    expect("SIGTERM: the gate drained and the container exited 0", gate.returncode == 0,
           f"exit {gate.returncode}\n{err[-2000:]}")
    expect("the drain report is on stderr", '"drain report"' in err or "Drain report" in err,
           err[-1000:])
finally:
    if gate.poll() is None:
        gate.kill()
    sh("podman", "rm", "--force", name, check=False)
print("image check: all passed")

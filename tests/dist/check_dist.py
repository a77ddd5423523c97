"""Checks what scripts/dist writes, the way krew would use it (krew itself cannot be fetched here).

    check_dist.py target/dist VERSION

- the manifest: krew's Plugin v1alpha2 fields, the version, the archive's URL and sha256;
- the archive: exactly the files the manifest installs, the binary executable;
- an install as krew does it (each `from` copied to `to`, `kubectl-lameduck` linked to `bin`
  on the PATH), then `kubectl-lameduck --help` and `kubectl-lameduck drain --help`, which must
  name themselves `kubectl lameduck`.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import yaml

out, version = sys.argv[1:3]


def expect(what, ok, seen):
    if not ok:
        sys.exit(f"FAIL: {what}; seen: {seen}")
    print(f"ok: {what}")


manifest = yaml.safe_load(open(os.path.join(out, "lameduck.yaml")))
expect("a krew Plugin v1alpha2 named lameduck",
       (manifest.get("apiVersion"), manifest.get("kind"), manifest["metadata"].get("name"))
       == ("krew.googlecontainertools.github.com/v1alpha2", "Plugin", "lameduck"), manifest)
spec = manifest["spec"]
expect(f"version v{version}", spec.get("version") == f"v{version}", spec.get("version"))
short = spec.get("shortDescription", "")
expect("a short description under krew's 50 characters", 0 < len(short) <= 50, short)
expect("a homepage and a description", bool(spec.get("homepage")) and bool(spec.get("description")), spec)
(platform,) = spec["platforms"]
expect("the platform is linux/amd64",
       platform["selector"]["matchLabels"] == {"os": "linux", "arch": "amd64"}, platform["selector"])
archive = os.path.join(out, f"lameduck-v{version}-linux-amd64.tar.gz")
expect("the URL names the archive", platform["uri"].endswith("/" + os.path.basename(archive)), platform["uri"])
expect("the URL is the release of this version", f"/download/v{version}/" in platform["uri"], platform["uri"])
digest = hashlib.sha256(open(archive, "rb").read()).hexdigest()
expect("the sha256 is the archive's", platform.get("sha256") == digest, (platform.get("sha256"), digest))

with tarfile.open(archive) as tar:
    members = {m.name: m for m in tar.getmembers()}
    expect("the archive holds lameduck, LICENSE and README.md",
           sorted(members) == ["LICENSE", "README.md", "lameduck"], sorted(members))
    expect("the binary is executable", members["lameduck"].mode & 0o111 == 0o111, oct(members["lameduck"].mode))
    expect("times and owners are zeroed (reproducible)",
           all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members.values()),
           [(m.name, m.mtime, m.uid) for m in members.values()])
    with tempfile.TemporaryDirectory() as tmp:
        unpacked, install, path = (os.path.join(tmp, d) for d in ("unpacked", "install", "bin"))
        tar.extractall(unpacked, filter="data")
        os.makedirs(install)
        os.makedirs(path)
        for f in platform["files"]:
            dest = os.path.join(install, f["to"])
            if f["to"] == ".":
                dest = os.path.join(install, os.path.basename(f["from"]))
            shutil.copy2(os.path.join(unpacked, f["from"]), dest)
        target = os.path.join(install, platform["bin"])
        expect("bin is one of the installed files", os.path.isfile(target), platform["bin"])
        os.symlink(target, os.path.join(path, "kubectl-lameduck"))
        env = {**os.environ, "PATH": path + os.pathsep + os.environ.get("PATH", "")}
        for args in (["--help"], ["drain", "--help"]):
            p = subprocess.run(["kubectl-lameduck", *args], capture_output=True, text=True, env=env, timeout=30)
            expect(f"kubectl-lameduck {' '.join(args)} runs and names itself `kubectl lameduck`",
                   p.returncode == 0 and "kubectl lameduck" in p.stdout, p.stdout[:300] + p.stderr[:300])
print("dist check: all passed")

"""The project's container images, built on this machine (`make images`, `mouthmap images`).

Each target of the Dockerfile is built with the classic builder on the host network
(``docker build --network host``: every connection stays on loopback, no bridge is needed),
tagged ``VERSION`` and ``VERSION-COMMIT`` (``triton-cpu``: ``VERSION-cpu`` ...). A build
goes to a temporary tag first and gets the release tags only when it succeeded, so a failed
build never leaves a half-built image under them.

The base: the public ``python:3.11-slim-bookworm`` where it can be had (already present, or
pulled), else a stand-in made here from Debian packages (``docker/debian-base.Dockerfile``
over a ``debootstrap --variant=minbase bookworm`` root file system), made once and reused.
PyTorch's CPU wheel is taken from a local wheelhouse named in pip's configuration when there
is one (served to the build over loopback HTTP), else from PyTorch's CPU index.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mouthmap import __version__
from mouthmap.pipeline.params import repo_root

log = logging.getLogger(__name__)

# target -> (repository, tag suffix), in the Dockerfile's order: the classic builder builds
# every stage above a target, so each build adds its own stages to those already built
TARGETS: dict[str, tuple[str, str]] = {
    "proxy": ("mouthmap/proxy", ""),
    "triton-cpu": ("mouthmap/triton", "-cpu"),
    "pipeline": ("mouthmap/pipeline", ""),
}
PUBLIC_BASE = "python:3.11-slim-bookworm"
DEBIAN_BASE = "mouthmap/python:3.11-bookworm"  # the stand-in made here
ROOTFS_IMAGE = "mouthmap/debian:bookworm-minbase"
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
# the wheelhouse's URL is a build argument, part of the layer cache's key: a fixed port keeps
# the install layer cached from one build to the next (another port only when it is taken)
WHEELHOUSE_PORT = 47211

Echo = Callable[[str], None]


class ImageError(RuntimeError):
    """A build step failed: which one, why, and the command that retries it."""

    def __init__(self, step: str, message: str, retry: str | None = None) -> None:
        super().__init__(message)
        self.step, self.message, self.retry = step, message, retry

    def __str__(self) -> str:
        again = f"\n  retry: {self.retry}" if self.retry else ""
        return f"{self.step}: {self.message}{again}"


@dataclass
class Built:
    target: str
    tags: list[str]
    seconds: float
    size_mb: float
    log: Path


# --- docker ------------------------------------------------------------------------------------


def _docker(*args: str, check: bool = True, timeout: float | None = 120, **kw):
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True,
                              timeout=timeout, **kw)  # fmt: skip
    except FileNotFoundError:
        raise ImageError(
            "docker", "the docker command is not installed",
            "apt-get install docker.io (or scripts/docker.sh up)",
        ) from None  # fmt: skip
    if check and proc.returncode:
        raise ImageError(f"docker {args[0]}", (proc.stderr or proc.stdout).strip()[-2000:])
    return proc


def daemon_problem() -> str | None:
    """Why no image can be built here (None: a Docker daemon answers)."""
    if shutil.which("docker") is None:
        return "the docker command is not installed (apt-get install docker.io)"
    proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    if proc.returncode or not proc.stdout.strip():
        why = (proc.stderr or "no answer").strip().splitlines()[-1]
        return f"no Docker daemon answers ({why})"
    return None


def require_daemon() -> None:
    if problem := daemon_problem():
        raise ImageError(
            "docker daemon", problem,
            "start one as root: scripts/docker.sh up  (dockerd --bridge=none --iptables=false)",
        )  # fmt: skip


def image_exists(ref: str) -> bool:
    return _docker("image", "inspect", ref, check=False).returncode == 0


def image_size_mb(ref: str) -> float:
    out = _docker("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip()
    return int(out) / 1e6


# --- the base ----------------------------------------------------------------------------------


def choose_base(mode: str = "auto", echo: Echo = print) -> str:
    """The ``PYTHON_IMAGE`` to build on: ``public`` (pulled if needed), ``debian`` (the stand-in,
    made if missing) or ``auto`` (public when present or pullable, else the stand-in)."""
    if mode not in ("auto", "public", "debian"):
        raise ImageError("base", f"unknown base {mode!r}: use auto, public or debian")
    if mode in ("auto", "public"):
        if image_exists(PUBLIC_BASE):
            return PUBLIC_BASE
        pull = _docker("pull", PUBLIC_BASE, check=False, timeout=300)
        if pull.returncode == 0:
            return PUBLIC_BASE
        if mode == "public":
            raise ImageError(f"pull {PUBLIC_BASE}", pull.stderr.strip()[-500:],
                             "mouthmap images build --base debian")  # fmt: skip
        echo(f"  {PUBLIC_BASE} cannot be pulled here: building on {DEBIAN_BASE} (Debian packages)")
    if not image_exists(DEBIAN_BASE):
        make_debian_base(echo=echo)
    return DEBIAN_BASE


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (the one debootstrap can reach)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        with contextlib.suppress(OSError):
            text = path.read_text()
            if m := re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M):
                return m.group(1)
            if m := re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s+\S+", text, re.M):
                return m.group(1)
    return DEFAULT_MIRROR


def make_debian_base(mirror: str | None = None, echo: Echo = print) -> str:
    """``mouthmap/python:3.11-bookworm`` from Debian packages: debootstrap (about 30-100 s),
    ``docker import``, then ``docker/debian-base.Dockerfile`` for Python and the CAs."""
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        raise ImageError("debootstrap", "debootstrap is not installed",
                         "apt-get install debootstrap (or scripts/docker.sh up)")  # fmt: skip
    if os.geteuid() != 0:
        raise ImageError("debootstrap", "making a root file system needs root",
                         "sudo mouthmap images base")  # fmt: skip
    mirror = mirror or apt_mirror()
    with tempfile.TemporaryDirectory(prefix="mouthmap-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        echo(f"  debootstrap --variant=minbase {DEBIAN_SUITE} from {mirror}")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [debootstrap, "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if proc.returncode:
            raise ImageError("debootstrap", (proc.stderr or proc.stdout).strip()[-1500:],
                             "mouthmap images base")  # fmt: skip
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/info", "usr/share/locale"):  # fmt: skip
            for item in (rootfs / junk).glob("*"):  # the directories stay, as apt expects
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        echo(f"  root file system in {time.perf_counter() - t0:.0f} s; docker import")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "-", ROOTFS_IMAGE], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=900)  # fmt: skip
        tar.wait()
        if imported.returncode or tar.returncode:
            raise ImageError("docker import", imported.stderr.strip()[-1500:],
                             "mouthmap images base")  # fmt: skip
        context = Path(tmp) / "context"
        (context / "ca-certificates").mkdir(parents=True)
        for crt in sorted(LOCAL_CAS.glob("*.crt")) if LOCAL_CAS.is_dir() else []:
            shutil.copy(crt, context / "ca-certificates" / crt.name)
        shutil.copy(repo_root() / "docker" / "debian-base.Dockerfile", context / "Dockerfile")
        _build(["--build-arg", f"ROOTFS_IMAGE={ROOTFS_IMAGE}", str(context)], DEBIAN_BASE,
               Path(tmp) / "base.log", "base", echo)  # fmt: skip
    echo(f"  made {DEBIAN_BASE} ({image_size_mb(DEBIAN_BASE):.0f} MB)")
    return DEBIAN_BASE


# --- building ----------------------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True,
                          timeout=60).stdout.strip()  # fmt: skip


def git_commit(short: int = 7) -> str:
    """The checkout's commit (``-dirty`` when it has uncommitted changes), or ``unknown``."""
    try:
        sha = _git("rev-parse", f"--short={short}", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return (sha or "unknown") + ("-dirty" if dirty else "")


def tags_for(target: str, version: str = __version__, commit: str | None = None) -> list[str]:
    repo, suffix = TARGETS[target]
    commit = commit or git_commit()
    return [f"{repo}:{version}{suffix}", f"{repo}:{version}{suffix}-{commit}"]


def _local_wheelhouses() -> list[Path]:
    """Directories of wheels that pip's own configuration names (find-links), if any."""
    try:
        conf = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                              text=True, timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        conf = ""
    names = re.findall(r"find-links='([^']+)'", conf) + os.environ.get("PIP_FIND_LINKS", "").split()
    dirs = [Path(n.removeprefix("file://")) for n in names]
    return list(dict.fromkeys(d for d in dirs if d.is_dir() and any(d.glob("*.whl"))))


@contextlib.contextmanager
def serve_wheelhouse(dirs: Sequence[Path]) -> Iterator[str]:
    """The wheels of ``dirs`` as a find-links page on loopback for the build (``""``: none)."""
    if not dirs:
        yield ""
        return
    with tempfile.TemporaryDirectory(prefix="mouthmap-wheels-") as tmp:
        for d in dirs:
            for whl in d.glob("*.whl"):
                with contextlib.suppress(FileExistsError):
                    os.symlink(whl, Path(tmp) / whl.name)
        handler = functools.partial(_QuietHandler, directory=tmp)
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELHOUSE_PORT), handler)
        except OSError:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the build log says what was fetched
        pass


def _build(args: list[str], tag: str, log_path: Path, step: str, echo: Echo) -> None:
    """``docker build`` (classic builder, host network) into ``tag``; each ``Step N/M`` line is
    echoed, everything goes to ``log_path``."""
    cmd = ["docker", "build", "--network", "host", "--force-rm", "-t", tag, *args]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as logf:
        logf.write("$ " + " ".join(cmd) + "\n")
        logf.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)  # fmt: skip
        tail: list[str] = []
        for line in proc.stdout:
            logf.write(line)
            tail = (tail + [line.rstrip()])[-30:]
            if line.startswith("Step "):
                echo(f"    {line.rstrip()[:110]}")
        rc = proc.wait()
    if rc:
        raise ImageError(f"build {step}", "\n".join(tail), f"see {log_path}; then make images")


def build(
    target: str,
    base: str,
    *,
    wheels_url: str = "",
    version: str = __version__,
    commit: str | None = None,
    no_cache: bool = False,
    log_dir: Path | None = None,
    echo: Echo = print,
) -> Built:
    """One Dockerfile target, tagged ``tags_for(target)`` only once it built."""
    if target not in TARGETS:
        raise ImageError("build", f"unknown target {target!r}: use {', '.join(TARGETS)}")
    root = repo_root()
    commit = commit or git_commit()
    tags = tags_for(target, version, commit)
    temp = f"{TARGETS[target][0]}:building-{os.getpid()}"
    log_path = (log_dir or root / "runs" / "images") / f"{target}.log"
    args = [
        "--target", target, "-f", str(root / "Dockerfile"),
        "--build-arg", f"PYTHON_IMAGE={base}", "--build-arg", f"GIT_COMMIT={commit}",
        "--build-arg", f"PIP_FIND_LINKS={wheels_url}",
        *(["--no-cache"] if no_cache else []), str(root),
    ]  # fmt: skip
    echo(f"  {target}: docker build (log {log_path})")
    t0 = time.perf_counter()
    try:
        _build(args, temp, log_path, target, echo)
        for tag in tags:
            _docker("tag", temp, tag)
    finally:
        _docker("rmi", "--no-prune", temp, check=False)  # the release tags keep the image
    seconds = round(time.perf_counter() - t0, 1)
    return Built(target, tags, seconds, round(image_size_mb(tags[0]), 1), log_path)


def build_all(
    targets: Sequence[str] = tuple(TARGETS),
    base: str = "auto",
    *,
    no_cache: bool = False,
    log_dir: Path | None = None,
    echo: Echo = print,
) -> list[Built]:
    """Every target (shared layers are built once); the Docker daemon must run."""
    require_daemon()
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ImageError("build", f"unknown target(s) {unknown}: use {', '.join(TARGETS)}")
    echo("base image")
    python_image = choose_base(base, echo)
    echo(f"  {python_image}")
    commit = git_commit()
    built = []
    with serve_wheelhouse(_local_wheelhouses()) as url:
        if url:
            echo(f"  local wheelhouse for the build: {url}")
        for target in targets:
            b = build(target, python_image, wheels_url=url, commit=commit, no_cache=no_cache,
                      log_dir=log_dir, echo=echo)  # fmt: skip
            echo(f"  {target}: {', '.join(b.tags)}  {b.size_mb:.0f} MB  in {b.seconds:.0f} s")
            built.append(b)
    return built


def listing() -> list[dict[str, str]]:
    """The project's images present here: repository, tag, size, age."""
    out = _docker("images", "--format", "{{.Repository}}\t{{.Tag}}\t{{.Size}}\t{{.CreatedSince}}",
                  "mouthmap/*").stdout  # fmt: skip
    rows = []
    for line in out.splitlines():
        repo, tag, size, age = (line.split("\t") + ["", "", "", ""])[:4]
        rows.append({"image": f"{repo}:{tag}", "size": size, "created": age})
    return rows
